"""Batched, closed-form-gradient training of many logistic-regression configurations at once.

Logistic regression is so small that a conventional training step (``nn.Linear`` forward,
autograd backward, ``torch.optim`` step) spends almost all of its time in Python and dispatcher
overhead.  This engine trains K configurations of the *same* data set in one pass:

* the K weight matrices are stacked, so the logits of every configuration come from one matmul
  ``W_all @ X^T`` and the weight gradients from one matmul ``dZ @ X`` -- X is read twice per
  step however large K is, and on large data once: there the step walks X in groups of rows
  that stay in cache from the logits to the gradient, on every thread at once;
* the gradient of the mean (binary) cross-entropy is written in closed form, so no autograd
  graph is built;
* the optimizer updates are the exact update rules of ``torch.optim.SGD`` / ``Adam`` / ``AdamW``
  written as in-place tensor ops whose hyperparameters are per-configuration tensors, so a grid
  over learning rates is a single call.

Each configuration may also weight the rows (``sample_weight``: class weights, dataset row
weights, cross-validation fold masks) and carry its own penalty (`Penalty`: an L2 term in the
gradient, an L1 term by a proximal step after each update, which gives exact zeros); ``val``
may carry per-configuration row masks (k-fold validation).  Those runs take the plain unfused
step, extended with the weights and penalties; the fast paths below stay as they are.

On CUDA, binary steps without row weights or penalties run a fused Triton kernel that reads X
once for all K configurations (`sweeplr.kernels`; the plain step where it does not apply or
fails), and small-data plain epochs replay CUDA graphs (`_GraphedEpochs`).

Configurations whose loss becomes non-finite are detected every ``check_every`` epochs and
removed from the batch (so they cannot slow down or contaminate the others); a callback can
prune configurations early.  Epochs that are neither checked, logged nor reported run back to
back, on small binary full batches in a loop with fewer ops (on 670 x 2 rows an epoch is about
ten microseconds of op dispatch, so per-epoch bookkeeping and every op count).  The module
deliberately does not import Hydra: it is the numeric core, and the sweep layer maps
configurations onto it.
"""

from __future__ import annotations

import collections
import functools
import math
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sweeplr.schema import COMPLETED, DIVERGED, PRUNED, Status

OptimizerKind = Literal["sgd", "adam", "adamw"]
HParam = float | Sequence[float] | Tensor
"""A hyperparameter: one value shared by all K configurations, or one value per configuration."""

ReportCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor], "Tensor | Sequence[bool] | None"]
"""``on_report(epoch, active_mask[K], train_loss[K], val_loss[K], val_accuracy[K]) -> stop[K]``
(see `train_batched`); the validation scores are NaN unless the epoch is also a logged one."""

_BIAS_CORRECTION_CHUNK = 64  # Adam bias corrections are tabulated this many steps at a time.
# Fused steps (see _Workspace): what one group of rows may take of a core's L2 cache, the most
# rows of a batched matrix-vector block, and when a step is fused (see _fuses).
_CACHE_BYTES = 3 << 19
_MAX_BLOCK_ROWS = 2048
_FUSED_MIN_X_BYTES = 24 << 20
_FUSED_MIN_GROUPS = 2
_MAX_CHUNKS = 64
_MAX_SLOT_BYTES = 32 << 20
# Fused steps run on all threads while these get at least this many cores' worth of CPU time
# between them, else on one, trying all again after _TRY_MIN to _TRY_MAX steps (_WorkerCount).
_PARALLEL_CORES = 1.2
_TRY_MIN, _TRY_MAX = 4, 256
# Plain epochs of a binary full batch with at most this many values in X run with a sign-folded
# copy of X (see _FoldedBinarySteps): 4 MiB in float32, and where an epoch is short enough for
# its op count to matter.
_FOLD_MAX_ELEMENTS = 1 << 20
# Plain full-batch epochs on CUDA with at most this many values in X replay CUDA graphs (see
# _GraphedEpochs): there an epoch is launch overhead (133 us eagerly for 670 x 2 on an H200);
# on larger data the kernels' own time dominates and graphs would only add memory.
_GRAPH_MAX_ELEMENTS = 1 << 22
_GRAPH_CACHE = 4  # graphs kept per run: chunks of plain epochs mostly repeat one (start, length)
# Tests run _GraphedEpochs' bookkeeping on the CPU, its graph bodies eagerly (no capture).
_GRAPHS_ON_CPU = False
_worker_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool): _worker_executor
# The fused Triton step (`sweeplr.kernels`) runs where X is on CUDA; tests set this to run it
# on the CPU through Triton's interpreter (TRITON_INTERPRET=1 before triton is imported).
_TRITON_ON_CPU = False
_kernels_state: list[object] = []  # [the kernels module or None]: imported once, when first used
# Variants of the Triton step that failed here (`BinaryStep.variant`: dtype, shape class,
# product mode): later workspaces take the plain step for them, other variants still run.
_kernel_failures: set[tuple[object, ...]] = set()


def _kernels() -> types.ModuleType | None:
    """`sweeplr.kernels`, or None where Triton is missing or broken (the plain step then)."""
    if not _kernels_state:
        try:
            from sweeplr import kernels
        except Exception:  # noqa: BLE001 - ImportError, or a Triton that fails to initialise
            _kernels_state.append(None)
        else:
            _kernels_state.append(kernels)
    module = _kernels_state[0]
    return module if isinstance(module, types.ModuleType) else None


def _kernel_applies(run: _Run, x: Tensor) -> bool:
    """Whether steps on ``x`` take the fused Triton kernel: binary, unweighted and without
    penalties, float32/64 with unit column stride, on CUDA (or forced onto the interpreter).
    Multi-class runs, row weights and penalties take the plain step."""
    return (
        (x.is_cuda or _TRITON_ON_CPU)
        and not run.extended
        and len(run.targets) == 1
        and x.dtype in (torch.float32, torch.float64)
        and x.stride(1) == 1
        and _kernels() is not None
    )


def _fused_sizes(ko: int, n_features: int, itemsize: int, multiclass: bool) -> tuple[int, int]:
    """``(group rows, block rows)`` of a fused step with ``ko`` = K*out logits per row.

    A group's X rows and its logit and gradient buffers (three for multi-class) take at most
    `_CACHE_BYTES`, 1.5 MiB of the 2 MiB L2 per core of the machine measured (AMD EPYC, 2
    cores), so that they are still in L2 when the gradient reads them.  There, a second
    matrix-vector pass over each group just read cost 0.4 of a pass from memory for 1.6 MiB
    groups, 0.7 for 6 MiB and 1.0 for 12 MiB or more: the 32 MiB L3, shared with the other
    processes, kept almost nothing.  Among groups that fit, the size mattered little (one
    thread: K=1 within 4% for 3854-6144 rows, 5-15% slower for 2048; K=8 Adam within 7% for
    1024-4096; K=64 Adam within 5% for 512-2048), and larger groups mean fewer ops.  K*out == 1
    splits a group into equal blocks of at most `_MAX_BLOCK_ROWS` rows, for batched products.
    (The machine later reported 512 KiB of L2 per core; 1.5 MiB groups still took the least
    CPU time on one thread, 1M x 100: 384 KiB / 768 KiB / 3 MiB took 1.24 / 1.03 / 1.03x at
    K=1 and 1.39 / 1.08 / 1.11x at K=8 Adam.)
    """
    per_row = (n_features + (3 if multiclass else 2) * ko) * itemsize
    rows = max(1, _CACHE_BYTES // per_row)
    blocks = -(-rows // _MAX_BLOCK_ROWS)
    block = rows // blocks
    return block * blocks, block


def _fuses(nb: int, rows: int, n_features: int, ko: int, itemsize: int, multiclass: bool) -> bool:
    """Whether a step on ``nb`` rows is fused (in groups of ``rows``; see `_Workspace`).

    Unfused, a step reads X twice and its logit buffers ([K*out, nb], two or three) leave L2.
    On small data that costs less than the fused step's extra ops (X partly stays in L3), so a
    step is fused only when X exceeds `_FUSED_MIN_X_BYTES` or the buffers `_CACHE_BYTES`, and
    when it makes at least `_FUSED_MIN_GROUPS` groups.  Measured on one
    thread (F = 100 float32), fused against unfused: K=1 0.8x as fast at 32,000 rows (13 MB),
    as fast at 64,000 and 1.2-1.4x as fast from 128,000; K=8 Adam as fast at 8,000-32,000
    rows and 1.2x at 64,000; K=64 Adam 1.15x as fast from 8,000 rows on.
    """
    x_bytes = nb * n_features * itemsize
    buffer_bytes = nb * (3 if multiclass else 2) * ko * itemsize
    big = x_bytes > _FUSED_MIN_X_BYTES or buffer_bytes > _CACHE_BYTES
    return big and nb >= _FUSED_MIN_GROUPS * rows


def _n_chunks(n_groups: int, slot_bytes: int) -> int:
    """How many chunks of consecutive groups a fused step's ``n_groups`` groups are cut into,
    each with a weight-gradient slot of ``slot_bytes`` (K*out > 1; see `_Workspace`).

    It depends on the problem's sizes only, never on the thread count, so that every thread
    count adds the same partial sums in the same order.  More chunks than threads let a thread
    that runs slower (another process holds its core) take fewer of them; `_MAX_CHUNKS` keeps
    the slots' reduction small, and `_MAX_SLOT_BYTES` their memory."""
    return min(n_groups, _MAX_CHUNKS, max(1, _MAX_SLOT_BYTES // slot_bytes))


def _worker_executor(workers: int) -> ThreadPoolExecutor:
    """A pool of at least ``workers`` threads for the workers of fused steps, kept for reuse."""
    global _worker_pool
    if _worker_pool is None or _worker_pool[0] < workers:
        if _worker_pool is not None:
            _worker_pool[1].shutdown(wait=False)
        _worker_pool = (workers, ThreadPoolExecutor(workers, thread_name_prefix="sweeplr-fused"))
    return _worker_pool[1]


def logged_epochs(epochs: int, log_every: int) -> list[int]:
    """The epochs a history records: every ``log_every``-th and the last, and, before the first
    of those, the log-spaced 1, 2, 5, 10, 20, 50, ... (none when ``log_every`` is 0).

    The early rows let a curve logged rarely (the tutorial's every 10,000 of 200,000 epochs)
    still show its first epochs' drop. They are recorded only: early stopping, plateau
    schedules and pruning keep to the ``log_every`` grid, so a run trains as without them.
    """
    if log_every <= 0 or epochs <= 0:
        return []
    first = min(log_every, epochs)
    early = [m * 10**e for e in range(len(str(first))) for m in (1, 2, 5) if m * 10**e < first]
    regular = list(range(log_every, epochs + 1, log_every))
    if epochs % log_every:
        regular.append(epochs)
    return early + regular


def n_outputs(n_classes: int) -> int:
    """Number of logits: one for binary classification (BCE), one per class otherwise (CE)."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    return 1 if n_classes == 2 else n_classes


def linear_init(
    n_features: int,
    n_classes: int,
    seeds: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Initial ``(weight [K, out, F], bias [K, out])``, one configuration per seed.

    Entry k is exactly what ``torch.manual_seed(seeds[k]); torch.nn.Linear(n_features, out,
    dtype=dtype)`` produces, so a reference model built that way starts from the same point as
    the engine.  The layers are literally constructed (rather than re-implementing Kaiming-uniform
    initialisation) so that this stays true if torch changes its default init.  The global CPU
    RNG state is restored afterwards. Only the CPU generator is seeded, which is all that
    ``torch.manual_seed`` seeds for a CPU layer: its CUDA part records a stack trace per call
    while CUDA is not initialised (a third of the init's time in a 1,000-seed grid).
    """
    out = n_outputs(n_classes)
    weights, biases = [], []
    with torch.random.fork_rng(devices=[]):
        for seed in seeds:
            torch.random.default_generator.manual_seed(seed)
            layer = torch.nn.Linear(n_features, out, dtype=dtype)
            weights.append(layer.weight.detach())
            biases.append(layer.bias.detach())
    return torch.stack(weights).to(device), torch.stack(biases).to(device)


def dataloader_permutation(generator: torch.Generator, n: int) -> Tensor:
    """Sample order of one epoch of ``DataLoader(ds, shuffle=True, generator=generator)``.

    Consumes the generator exactly as one full iteration over such a loader does (with
    ``num_workers=0`` and ``len(ds) == n``), so the engine and a DataLoader-based reference loop
    driven by equally seeded generators see the same batches in every epoch:

    1. creating the iterator draws one int64 (the worker base seed);
    2. ``RandomSampler`` yields ``torch.randperm(n)``;
    3. exhausting the sampler draws a second ``randperm(n)``, of which it yields the first
       ``num_samples % n``, i.e. none.

    ``tests/test_engine.py`` checks this against a real DataLoader, so a change in torch's
    sampling is caught there.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    perm = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return perm


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer kind and per-configuration hyperparameters, with ``torch.optim`` semantics.

    Every numeric field is a scalar (shared) or a length-K sequence/tensor (one value per
    configuration).  ``None`` means the ``torch.optim`` default of the kind: SGD
    ``momentum=0, dampening=0, weight_decay=0``; Adam ``betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0``; AdamW the same but ``weight_decay=1e-2``.  Options of another kind
    (e.g. ``momentum`` for Adam) are rejected rather than silently ignored.  Weight decay applies
    to weight and bias alike, as with ``torch.optim.X(model.parameters())``.
    """

    kind: OptimizerKind
    lr: HParam
    momentum: HParam | None = None
    dampening: HParam | None = None
    nesterov: bool = False
    weight_decay: HParam | None = None
    betas: tuple[HParam, HParam] | None = None
    eps: HParam | None = None


class LrSchedule(Protocol):
    """Each configuration's lr over the epochs (``sweeplr.schedules.BatchSchedule``)."""

    def lr(self, epoch: int) -> np.ndarray | None:
        """Every configuration's lr for ``epoch`` (1-based, float64 [K]); None: unchanged."""

    def observe(self, metrics: Mapping[str, np.ndarray], active: np.ndarray) -> None:
        """Called after every ``log_every``-th epoch (and the last) with its metrics ([K] each,
        by history column); not after the early rows of `logged_epochs`."""


@dataclass(frozen=True)
class Penalty:
    """Per-configuration regularisation of the weights (never the bias), each ``>= 0``.

    Configuration k minimises ``data_loss_k + l2[k]/2 * ||W_k||^2 + l1[k] * ||W_k||_1``, with
    scikit-learn's C and l1_ratio mapped by the caller (``l2 = (1 - l1_ratio) / (C n)``,
    ``l1 = l1_ratio / (C n)``).  ``l2`` enters the gradient; ``l1`` is applied by a proximal
    step after each optimizer update (see `train_batched`).  A scalar is shared by all K
    configurations; a configuration without a penalty of a kind has 0 there.
    """

    l2: HParam = 0.0
    l1: HParam = 0.0


@dataclass(frozen=True)
class EarlyStopping:
    """Per configuration: stop once ``watch`` has not improved by more than ``min_delta`` for
    ``patience`` checks in a row (None: never stop early), at every ``log_every``-th epoch
    and the last, as Lightning's and Keras' callbacks count; ``restore_best``: end with the
    weights of the best checked epoch, stopped early or not. ``watch`` is ``val_loss`` (lower
    is better) or ``val_accuracy`` (higher). A configuration that stops early ends
    ``completed``, with ``best_epoch`` set."""

    patience: Sequence[int | None]
    min_delta: Sequence[float]
    watch: Sequence[str]
    restore_best: Sequence[bool]


@dataclass(frozen=True)
class History:
    """Metrics at the logged epochs (every ``log_every`` epochs and the final one, after the
    early rows 1, 2, 5, ...: see `logged_epochs`).

    The tensors are ``[T, K]`` with ``T = len(epochs)``, on the CPU.  ``train_loss[t, k]`` is
    the loss of epoch ``epochs[t]`` as training saw it: the full-batch loss before that epoch's
    update, or the mean of the epoch's mini-batch losses -- with row weights the weighted data
    loss, and never a penalty term (see `train_batched`).
    ``val_loss``/``val_accuracy`` are evaluated with the parameters at the end of that epoch;
    ``lr`` (float64) is the lr the epoch trained with. Entries after a configuration stopped
    (pruned, diverged, or early) are NaN.
    """

    epochs: list[int]
    train_loss: Tensor
    val_loss: Tensor | None
    val_accuracy: Tensor | None
    lr: Tensor


@dataclass(frozen=True)
class EngineResult:
    """Outcome of `train_batched` for K configurations (index k matches the inputs).

    ``status[k]`` is ``"completed"``, ``"diverged"`` (its train loss became non-finite, or the
    final update made its parameters non-finite) or ``"pruned"`` (stopped by ``on_report``).
    ``diverged_epoch[k]`` is the first (1-based) epoch whose train loss was non-finite -- or the
    last epoch if only the final update broke the parameters -- and ``None`` otherwise.
    ``epochs_run[k]`` is the number of epochs until the configuration stopped (its diverged or
    pruning epoch included).  ``weight``/``bias`` of a diverged configuration are its state when
    the divergence was detected and carry no meaning.
    """

    weight: Tensor
    bias: Tensor
    status: list[Status]
    epochs_run: list[int]
    diverged_epoch: list[int | None]
    history: History
    best_epoch: list[int | None]  # early stopping's best logged epoch (None without it)


def train_batched(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    optimizer: OptimizerConfig,
    epochs: int,
    *,
    batch_size: int | None = None,
    shuffle_seed: int = 0,
    val: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor] | None = None,
    log_every: int = 0,
    on_report: ReportCallback | None = None,
    report_every: int = 1,
    check_every: int = 10,
    lr_schedule: LrSchedule | None = None,
    early_stopping: EarlyStopping | None = None,
    sample_weight: Tensor | None = None,
    penalty: Penalty | None = None,
) -> EngineResult:
    """Train K logistic-regression configurations on ``(X, y)`` simultaneously.

    Each configuration k behaves like ``nn.Linear(F, out)`` initialised to ``(weight[k],
    bias[k])``, trained for ``epochs`` epochs with ``torch.optim`` of ``optimizer.kind`` and its
    k-th hyperparameters on the mean BCE-with-logits (``n_classes == 2``, one logit) or mean
    cross-entropy (C > 2 logits) loss -- or, with ``sample_weight`` s, ``(1/n) sum_i s_ki
    loss_ki`` (divided by the row count n, not by ``sum(s)``: torch's
    ``BCEWithLogitsLoss(weight=s, reduction="mean")``; the same for cross-entropy), plus
    ``penalty``.

    Args:
        X: ``[n, F]`` features; the engine runs on its device and dtype.
        y: ``[n]`` int64 class codes ``0..n_classes-1``.
        n_classes: number of classes (2 = binary).
        weight: ``[K, out, F]`` initial weights (``nn.Linear.weight`` layout); not modified.
        bias: ``[K, out]`` initial biases; not modified.
        optimizer: optimizer kind (shared) and per-configuration hyperparameters.
        epochs: number of passes over the data.
        batch_size: ``None`` for full-batch gradient descent; otherwise mini-batches in the order
            of ``DataLoader(TensorDataset(X, y), batch_size, shuffle=True, generator=g)`` with
            ``g = torch.Generator().manual_seed(shuffle_seed)`` (see `dataloader_permutation`),
            shared by all configurations so that they can share each matmul.
        shuffle_seed: seed of that generator.
        val: optional ``(X_val, y_val)`` whose loss and accuracy are recorded at logged epochs,
            or ``(X_val, y_val, val_weight)`` with ``val_weight`` ``[K, n_val]`` (X's dtype,
            >= 0, usually 0/1 masks: a k-fold member's held-out rows): configuration k's scores
            are then the weighted means ``sum(w*l) / sum(w)`` over its rows.
        log_every: record `History` every this many epochs (and at the last one, and at the
            early epochs of `logged_epochs`); 0 disables.
        on_report: called every ``report_every`` epochs as ``on_report(epoch, active_mask,
            train_loss, val_loss, val_accuracy)`` with fresh CPU tensors of length K, NaN where
            inactive (the validation scores are NaN too unless ``val`` is given and the epoch is
            also a logged one); configurations for which it returns True are stopped with
            status ``"pruned"``.
        report_every: period of ``on_report``.
        check_every: how often (in epochs) the per-epoch losses, kept in a small buffer, are
            synchronised to the host and checked for non-finite values.  Larger values save a
            host sync per epoch; the recorded divergence epoch is exact either way.
        lr_schedule: each configuration's lr per epoch (replacing ``optimizer.lr`` from the
            first epoch on); it observes the metrics of every ``log_every``-th epoch (plateau
            schedules).
        early_stopping: per-configuration early stopping at every ``log_every``-th epoch and
            the last (needs ``val``).
        sample_weight: row weights ``s >= 0``, ``[n]`` (shared) or ``[K, n]`` (one row per
            configuration), X's dtype and device; mini-batches take their rows' weights and
            still divide by their row count.  The recorded train loss is this weighted loss.
        penalty: per-configuration L2/L1 on the weights (not the bias).  ``l2[k] * W_k`` is
            added to the gradient; the recorded train loss stays the data loss (no penalty
            term), so metrics stay comparable across penalties.  L1 is a proximal step after
            each optimizer update: SGD soft-thresholds W by ``lr_k * l1[k]`` (the current lr),
            which is proximal gradient descent; Adam/AdamW by ``step_size_k * l1[k] / denom``
            per coordinate (``step_size = lr / (1 - beta1^t)``, ``denom = sqrt(v /
            (1 - beta2^t)) + eps``): the proximal step in the diagonal metric Adam's update
            uses, not an exact solution of the penalised problem per step.

    Weighted or penalised runs use the plain unfused step (neither the fused nor the folded
    fast path); each configuration's rows stay independent of the others'.
    """
    _validate_inputs(X, y, n_classes, weight, bias, epochs, batch_size, val, sample_weight)
    for name, value in (("log_every", log_every), ("report_every", report_every)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    if on_report is not None and report_every < 1:
        raise ValueError("on_report needs report_every >= 1")
    if early_stopping is not None and val is None:
        raise ValueError("early stopping needs val")
    with torch.no_grad():
        run = _Run(
            X,
            y,
            n_classes,
            weight,
            bias,
            optimizer,
            batch_size,
            shuffle_seed,
            val,
            sample_weight=sample_weight,
            penalty=penalty,
        )
        run.lr_schedule, run.early = lr_schedule, early_stopping
        return run.train(epochs, log_every, on_report, report_every, check_every)


def _validate_inputs(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    epochs: int,
    batch_size: int | None,
    val: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor] | None,
    sample_weight: Tensor | None = None,
) -> None:
    """Fail early, with a readable message, on shapes/dtypes the kernels would mangle."""
    out = n_outputs(n_classes)
    if X.ndim != 2 or not X.is_floating_point():
        raise ValueError(f"X must be a 2-D floating tensor, got {tuple(X.shape)} {X.dtype}")
    n, n_features = X.shape
    if n == 0:
        raise ValueError("X has no rows")
    if val is not None and len(val) not in (2, 3):
        raise ValueError("val must be (X_val, y_val) or (X_val, y_val, val_weight)")
    pairs = [(X, y)] if val is None else [(X, y), (val[0], val[1])]
    for features, labels in pairs:
        if features.ndim != 2 or features.shape[1] != n_features:
            raise ValueError(f"features must be [n, {n_features}], got {tuple(features.shape)}")
        if features.dtype != X.dtype or features.device != X.device:
            raise ValueError("all feature tensors must share X's dtype and device")
        if labels.shape != (features.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 [{features.shape[0]}], got {labels.dtype}")
        if labels.device != X.device:
            raise ValueError("labels must be on X's device")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes})")
    if weight.ndim != 3 or weight.shape[1:] != (out, n_features):
        raise ValueError(f"weight must be [K, {out}, {n_features}], got {tuple(weight.shape)}")
    if bias.shape != weight.shape[:2]:
        raise ValueError(f"bias must be [K, {out}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dtype != X.dtype or t.device != X.device:
            raise ValueError(f"{name} must share X's dtype and device")
    if weight.shape[0] == 0:
        raise ValueError("need at least one configuration")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    k = weight.shape[0]
    if sample_weight is not None:
        if sample_weight.shape not in ((n,), (k, n)):
            raise ValueError(
                f"sample_weight must be [{n}] or [{k}, {n}], got {tuple(sample_weight.shape)}"
            )
        _check_row_weights("sample_weight", sample_weight, X)
    if val is not None and len(val) == 3:
        val_weight, n_val = val[2], val[0].shape[0]
        if val_weight.shape != (k, n_val):
            raise ValueError(f"val_weight must be [{k}, {n_val}], got {tuple(val_weight.shape)}")
        _check_row_weights("val_weight", val_weight, X)
        if not bool((val_weight > 0).any(1).all()):
            raise ValueError("val_weight must give every configuration a row with weight > 0")


def _check_row_weights(name: str, w: Tensor, X: Tensor) -> None:
    """Row weights must match X's dtype and device and be finite and non-negative."""
    if w.dtype != X.dtype or w.device != X.device:
        raise ValueError(f"{name} must share X's dtype and device, got {w.dtype} on {w.device}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")


def per_config(name: str, value: HParam, k: int, *, nonnegative: bool = False) -> Tensor:
    """A hyperparameter as a float64 CPU vector of length K (a scalar is shared by all K),
    finite, and ``>= 0`` when ``nonnegative``."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if t.ndim == 0:
        t = t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"{name} must be a scalar or have length {k}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0")
    return t


def _resolve_hparams(cfg: OptimizerConfig, k: int) -> dict[str, Tensor]:
    """Per-configuration float64 hyperparameters with torch.optim's defaults and checks."""
    if cfg.kind not in ("sgd", "adam", "adamw"):
        raise ValueError(f"unknown optimizer kind {cfg.kind!r}")
    sgd = cfg.kind == "sgd"
    foreign = ("betas", "eps") if sgd else ("momentum", "dampening")
    for name in foreign:
        if getattr(cfg, name) is not None:
            raise ValueError(f"{name} is not an option of {cfg.kind}")
    if cfg.nesterov and not sgd:
        raise ValueError(f"nesterov is not an option of {cfg.kind}")
    default_wd = 1e-2 if cfg.kind == "adamw" else 0.0
    wd = default_wd if cfg.weight_decay is None else cfg.weight_decay
    hp = {"lr": per_config("lr", cfg.lr, k), "weight_decay": per_config("weight_decay", wd, k)}
    if sgd:
        hp["momentum"] = per_config("momentum", 0.0 if cfg.momentum is None else cfg.momentum, k)
        damp = 0.0 if cfg.dampening is None else cfg.dampening
        hp["dampening"] = per_config("dampening", damp, k)
    else:
        beta1, beta2 = (0.9, 0.999) if cfg.betas is None else cfg.betas
        hp["beta1"] = per_config("beta1", beta1, k)
        hp["beta2"] = per_config("beta2", beta2, k)
        hp["eps"] = per_config("eps", 1e-8 if cfg.eps is None else cfg.eps, k)
        for name in ("beta1", "beta2"):
            if bool(((hp[name] < 0) | (hp[name] >= 1)).any()):
                raise ValueError(f"{name} must lie in [0, 1)")
    for name in ("lr", "weight_decay", "momentum", "eps"):
        if name in hp and bool((hp[name] < 0).any()):
            raise ValueError(f"{name} must be >= 0")
    if cfg.nesterov and bool(((hp["momentum"] <= 0) | (hp["dampening"] != 0)).any()):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return hp


def _soft_threshold(w: Tensor, t: Tensor) -> None:
    """``w <- sign(w) * max(|w| - t, 0)`` in place, for thresholds ``t >= 0`` broadcasting to w.

    Written ``w - clamp(w, -t, t)``: exactly 0 where ``|w| <= t``, and elsewhere ``w - t`` or
    ``w + t``, the same roundings as the sign/max form; a NaN stays NaN in its own row.
    """
    w.sub_(torch.clamp(w, torch.neg(t), t))


class _SGD:
    """``torch.optim.SGD`` (``_single_tensor_sgd``) with per-configuration hyperparameters.

    Hyperparameter tensors are ``[Ka, 1, 1]`` so that they broadcast over ``[Ka, out, F+1]``.
    Products are formed as in torch (``alpha * other``), so each configuration gets torch's
    update up to floating-point contraction differences in the kernels.
    """

    def __init__(self, hp: dict[str, Tensor], nesterov: bool, like: Tensor) -> None:
        def col(t: Tensor) -> Tensor:
            return t.to(like.dtype).to(like.device).view(-1, 1, 1)

        self.nesterov = nesterov
        self.neg_lr = col(-hp["lr"])
        self.weight_decay = col(hp["weight_decay"]) if bool(hp["weight_decay"].any()) else None
        momentum = hp["momentum"]
        self.momentum = col(momentum) if bool(momentum.any()) else None
        # torch skips the buffer when momentum == 0, i.e. uses the plain gradient; with a shared
        # buffer that is buf = 0 * buf + 1 * grad, so such configurations get no dampening.
        self.one_minus_dampening = col(torch.where(momentum > 0, 1 - hp["dampening"], 1.0))
        # Allocated here, not on the first step: a step may run under torch.inference_mode
        # (see _FoldedBinarySteps), and a buffer created there could not be updated outside it.
        self.buf = torch.empty_like(like) if self.momentum is not None else None
        self.started = False

    def step(self, p: Tensor, g: Tensor) -> None:
        """One update of all active configurations; ``g`` is scratch and may be overwritten."""
        if self.weight_decay is not None:
            g.addcmul_(p, self.weight_decay)
        if self.momentum is not None:
            assert self.buf is not None
            if not self.started:  # torch: buf = grad.clone() on the first step, no dampening
                self.buf.copy_(g)
                self.started = True
            else:
                self.buf.mul_(self.momentum).addcmul_(g, self.one_minus_dampening)
            if self.nesterov:
                g.addcmul_(self.buf, self.momentum)
            else:
                g = self.buf
        p.addcmul_(g, self.neg_lr)

    def prox_l1(self, w: Tensor, l1: Tensor) -> None:
        """After `step`: L1's proximal step on the weights ``w`` ([Ka, out, F] view of the
        parameters) with strengths ``l1`` ([Ka, 1, 1]): soft-threshold by ``lr * l1``."""
        _soft_threshold(w, torch.mul(self.neg_lr, l1).neg_())

    def set_lr(self, lr: Tensor) -> None:
        """New lrs (float64 [Ka]) for the active configurations, from the next step on."""
        self.neg_lr = (-lr).to(self.neg_lr.dtype).to(self.neg_lr.device).view(-1, 1, 1)

    def select(self, keep: Tensor) -> None:
        """Keep only the configurations at positions ``keep`` (after some stopped)."""
        for name in ("neg_lr", "weight_decay", "momentum", "one_minus_dampening", "buf"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep))


class _Adam:
    """``torch.optim.Adam``/``AdamW`` (``_single_tensor_adam``, no amsgrad), batched over K.

    Follows torch's order of operations: decoupled decay ``p *= 1 - lr*wd`` (AdamW) or L2
    ``g += wd*p`` (Adam); ``m.lerp_(g, 1-beta1)``; ``v = v*beta2 + (1-beta2)*g*g``;
    ``denom = sqrt(v) / sqrt(1-beta2^t) + eps``; ``p += (-lr/(1-beta1^t)) * m / denom``.  The
    scalar factors are computed in float64 and rounded to the parameter dtype, like the Python
    floats torch passes to its kernels; the bias corrections are tabulated for a chunk of steps
    at a time to keep them off the per-step path.
    """

    def __init__(self, hp: dict[str, Tensor], decoupled: bool, like: Tensor) -> None:
        def col(t: Tensor) -> Tensor:
            return t.to(like.dtype).to(like.device).view(-1, 1, 1)

        lr, wd = hp["lr"], hp["weight_decay"]
        has_wd = bool(wd.any())
        self.col = col
        self.wd64 = wd if decoupled and has_wd else None
        self.decay = col(1 - lr * wd) if self.wd64 is not None else None
        self.l2 = col(wd) if has_wd and not decoupled else None
        self.one_minus_beta1 = col(1 - hp["beta1"])
        self.beta2 = col(hp["beta2"])
        self.one_minus_beta2 = col(1 - hp["beta2"])
        self.eps = col(hp["eps"])
        # float64 copies on the CPU (which every backend has) for the bias-correction tables
        self.lr64, self.beta1_64, self.beta2_64 = lr, hp["beta1"], hp["beta2"]
        self.exp_avg = torch.zeros_like(like)
        self.exp_avg_sq = torch.zeros_like(like)
        self.denom = torch.empty_like(like)
        self.scratch = torch.empty_like(like)
        self.step_count = 0
        # (-lr/(1-beta1^t), sqrt(1-beta2^t)) for t = table_start, ..., [chunk, Ka, 1, 1] each;
        # None before the first step and after the batch shrank.
        self.table_start = 0
        self.tables: tuple[Tensor, Tensor] | None = None

    def set_lr(self, lr: Tensor) -> None:
        """New lrs (float64 [Ka]) for the active configurations, from the next step on: the
        step sizes are tabulated again, and AdamW's decay ``1 - lr*wd`` follows the lr."""
        self.lr64 = lr
        self.tables = None
        if self.wd64 is not None:
            self.decay = self.col(1 - lr * self.wd64)

    def _tabulate(self) -> tuple[Tensor, Tensor]:
        """Bias-correction factors for `_BIAS_CORRECTION_CHUNK` steps from the current one."""
        self.table_start = self.step_count
        return self.factors(self.step_count, _BIAS_CORRECTION_CHUNK)

    def factors(self, first: int, count: int) -> tuple[Tensor, Tensor]:
        """``(-lr/(1-beta1^t), sqrt(1-beta2^t))`` for steps ``t = first, ..., first+count-1``:
        ``[count, Ka, 1, 1]`` each, on the parameters' device and in their dtype."""
        like = self.exp_avg
        steps = torch.arange(first, first + count, dtype=torch.float64)[:, None]
        bc1 = 1 - self.beta1_64[None, :] ** steps  # [count, Ka]
        bc2 = 1 - self.beta2_64[None, :] ** steps
        shape = (count, -1, 1, 1)
        neg_step_size = (-(self.lr64 / bc1)).to(like.dtype).to(like.device).view(shape)
        return neg_step_size, bc2.sqrt().to(like.dtype).to(like.device).view(shape)

    def step(self, p: Tensor, g: Tensor) -> None:
        """One update of all active configurations; ``g`` is scratch and may be overwritten."""
        self.step_count += 1
        row = self.step_count - self.table_start
        tables = self.tables
        if tables is None or row >= _BIAS_CORRECTION_CHUNK:
            tables = self.tables = self._tabulate()
            row = 0
        neg_step_size, bc2_sqrt = tables
        self.update(p, g, neg_step_size[row], bc2_sqrt[row])

    def update(self, p: Tensor, g: Tensor, neg_step_size: Tensor, bc2_sqrt: Tensor) -> None:
        """`step`'s update with this step's bias-correction factors (``[Ka, 1, 1]`` each) given,
        and the step count left to the caller (CUDA graphs replay it; see `_GraphedEpochs`)."""
        if self.decay is not None:
            p.mul_(self.decay)
        if self.l2 is not None:
            g.addcmul_(p, self.l2)
        self.exp_avg.lerp_(g, self.one_minus_beta1)
        torch.mul(g, self.one_minus_beta2, out=self.scratch)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(self.scratch, g)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.div_(bc2_sqrt).add_(self.eps)
        self.neg_step_size = neg_step_size  # this step's, for prox_l1
        torch.mul(self.exp_avg, self.neg_step_size, out=self.scratch)
        p.addcdiv_(self.scratch, self.denom)

    def prox_l1(self, w: Tensor, l1: Tensor) -> None:
        """After `step`: L1's proximal step on the weights ``w`` ([Ka, out, F] view of the
        parameters) with strengths ``l1`` ([Ka, 1, 1]) in the diagonal metric of the update
        ``p -= step_size * m / denom``: per coordinate, soft-threshold by
        ``step_size * l1 / denom`` (the prox of ``l1 * ||w||_1`` under the norm
        ``sum denom_i / step_size * w_i^2``)."""
        threshold = torch.mul(self.neg_step_size, l1).neg_()
        _soft_threshold(w, threshold.div(self.denom[..., : w.shape[2]]))

    def select(self, keep: Tensor) -> None:
        """Keep only the configurations at positions ``keep`` (after some stopped)."""
        names = (
            "decay",
            "l2",
            "one_minus_beta1",
            "beta2",
            "one_minus_beta2",
            "eps",
            "lr64",
            "wd64",
            "beta1_64",
            "beta2_64",
            "exp_avg",
            "exp_avg_sq",
        )
        for name in names:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep.to(t.device)))
        self.denom = torch.empty_like(self.exp_avg)
        self.scratch = torch.empty_like(self.exp_avg)
        self.tables = None


class _Workspace:
    """Buffers and views for steps on ``nb`` rows with the current ``Ka`` configurations.

    ``x``/``targets`` are X and the run's targets for the full batch, and buffers that
    `_Run._mini_batch_epoch` fills for mini-batches.  All per-step temporaries are preallocated:
    on large data a fresh allocation per op costs page faults on every epoch.

    A binary step on CUDA without row weights or penalties is one fused Triton kernel (see
    `_kernel_applies`), which needs none of the buffers here.  Otherwise a step on few rows (see
    `_fuses`), or off the CPU, is one logits matmul over all rows, the loss kernel on all
    logits, and one gradient matmul: the fewest ops.  On many rows that
    reads X from memory twice, so the step is *fused* instead: the rows are cut
    into groups (`_Group`, sized by `_fused_sizes` to stay in one core's L2 cache) and each
    group's logits, loss kernel and gradient run back to back, so X comes from memory once.
    The groups are cut into *chunks* of consecutive groups, more than there are threads (see
    `_n_chunks`), and each torch thread runs a *worker* (`_Worker`: its own buffers) that takes
    the next chunk whenever it is free (see `_Run._fused_loss_and_grad`), so a thread slowed
    down by another process takes fewer chunks instead of holding up the step.  Each group
    writes its loss and bias-gradient sums to its own row of ``sums`` (binary) or
    ``loss_parts``/``bias_parts``, and, for K*out == 1, its weight gradient to its own rows of
    ``parts``; with K*out > 1 each chunk accumulates the weight gradient in its row of
    ``chunk_gw``.  A few reductions per step then give the loss and G; they add the same terms
    in the same order whatever the thread count and whichever worker ran which chunk, so runs
    stay bit-identical.

    With K*out == 1 the products are matrix-vector products, which MKL runs well below memory
    bandwidth as one ``[1, F] @ [F, rows]`` call; as batched products over blocks the whole
    epoch ran 10-15% faster.
    """

    def __init__(self, run: _Run, nb: int) -> None:
        ka, out, fp1 = run.P.shape
        ko, n_features = ka * out, fp1 - 1
        like = run.P
        p2, g2 = run.P.view(ko, fp1), run.G.view(ko, fp1)
        self.pw, self.pb = p2[:, :n_features], p2[:, n_features:]
        self.gw, self.gb = g2[:, :n_features], g2[:, n_features]
        self.ka, self.ko, self.multiclass = ka, ko, out > 1
        self.inv_n = 1.0 / nb
        self.x: Tensor
        self.targets: tuple[Tensor, ...]
        if run.batch_size is None:
            self.x, self.targets = run.X, run.targets
        else:
            self.x = like.new_empty(nb, n_features)
            self.targets = tuple(t.new_empty(*t.shape[:-1], nb) for t in run.targets)
        self.xt = self.x.t()
        # Row weights [1 or Ka, nb] (see _Run.sw), filled per mini-batch like the targets.
        self.sw: Tensor | None = None
        if run.sw is not None:
            self.sw = run.sw if run.batch_size is None else like.new_empty(run.sw.shape[0], nb)
        self.chunks: list[list[_Group]] = []  # fused steps: see the class docstring
        self.workers: list[_Worker] = []
        self.worker_count = _WorkerCount()
        self.nb = nb
        self.ls: Tensor | None = None
        # The fused Triton step (see _kernel_applies) needs none of the whole-batch buffers
        # (at K=64 on 10M rows they would take 2.5 GB); `plain_buffers` makes them if it fails.
        self.kernel = None
        if _kernel_applies(run, self.x):
            kernels = _kernels()
            assert kernels is not None
            kernel = kernels.BinaryStep(self.x, ko)
            if kernel.variant not in _kernel_failures:
                self.kernel = kernel
                return
        itemsize = like.element_size()
        rows, self.block = _fused_sizes(ko, n_features, itemsize, self.multiclass)
        fused = _fuses(nb, rows, n_features, ko, itemsize, self.multiclass)
        # Weighted or penalised runs take the unfused step: the fused kernels stay as measured.
        if not fused or like.device.type != "cpu" or run.extended:
            self.plain_buffers()
            return
        starts = range(0, nb, rows)
        n_groups = len(starts)
        self.rows = rows
        self.inv_n_vec = like.new_full((n_groups,), self.inv_n)
        if self.multiclass:
            self.loss_parts = like.new_empty(n_groups, ka)
            self.bias_parts = like.new_empty(n_groups, ko)
        else:
            self.sums = like.new_empty(n_groups, 2 * ko)
        n_chunks = _n_chunks(n_groups, ko * n_features * itemsize)
        if ko == 1:  # a row per full block and per group remainder, in row order
            self.parts = like.new_empty(n_groups * -(-rows // self.block), 1, n_features)
            self.n_parts = 0
        else:
            self.chunk_gw = like.new_empty(n_chunks, ko, n_features)
        for c in range(n_chunks):  # n_groups // n_chunks or one more groups each
            chunk: list[_Group] = []
            for g in range(c * n_groups // n_chunks, (c + 1) * n_groups // n_chunks):
                stop = min(starts[g] + rows, nb)
                chunk.append(_Group(self, g, starts[g], stop, c, first_in_chunk=not chunk))
            self.chunks.append(chunk)
        if ko == 1:
            self.parts = self.parts[: self.n_parts]
            self.inv_n_parts = like.new_full((self.n_parts,), self.inv_n)

    def worker(self, index: int) -> _Worker:
        """The buffers of the ``index``-th thread running this workspace's chunks."""
        while len(self.workers) <= index:
            self.workers.append(_Worker(self, self.rows))
        return self.workers[index]

    def plain_buffers(self) -> None:
        """The whole-batch buffers of unfused steps."""
        like, nb, ka, ko = self.pw, self.nb, self.ka, self.ko
        self.kernel = None
        self.ones = like.new_ones(nb)
        self.z = like.new_empty(ko, nb)
        self.ls = like.new_empty(ka, ko // ka, nb) if self.multiclass else None
        self.dz = self.z if self.ls is None else self.ls.view(ko, nb)
        # binary: sigmoid(u); multi-class: log-probabilities of the labels
        self.scratch = like.new_empty(ko, nb) if self.ls is None else like.new_empty(ka, 1, nb)
        self.inv_n_vec = like.new_full((nb,), self.inv_n)
        if self.ls is not None:  # gather index of the labels, [Ka, 1, nb]
            self.label_index = self.targets[0].view(1, 1, nb).expand(ka, 1, nb)

    def forward(self) -> Tensor:
        """Logits ``z = W x^T + b``, ``[Ka*out, nb]`` (unfused steps)."""
        return torch.addmm(self.pb, self.pw, self.xt, out=self.z)

    def backward(self) -> None:
        """Gradient from ``dz`` (which holds n * dL/dz) into the run's G (unfused steps)."""
        self.gw.addmm_(self.dz, self.x, beta=0, alpha=self.inv_n)
        torch.mv(self.dz, self.inv_n_vec, out=self.gb)


class _FoldedBinarySteps:
    """Plain full-batch epochs of a binary problem on small data: the same step, fewer ops.

    A *plain* epoch is neither logged, reported nor the end of a divergence-check window: it
    needs the update, and of the loss only whether it is finite (see `_Run._loss_and_grad`).
    On small data an epoch costs what its op calls cost in dispatch, about a microsecond each
    (the arithmetic on 670 x 2 values is far cheaper), so this loop makes fewer, cheaper calls
    -- 7 instead of 9 for one configuration -- and gives the parameters bit for bit what
    `_Run._full_batch_epoch` gives:

    * the label signs s = 1 - 2y = +-1 are folded into copies of X and of the 1/n vector, so
      the gradient is ``sigmoid(u) @ (s*X)`` and ``sigmoid(u) @ (s/n)`` without first forming
      ``dz = s*sigmoid(u)``: each product only changes sign, negation is exact and commutes
      with rounding, and the matmuls have the same shapes and strides, so they return the same
      bits;
    * with one configuration, the finiteness surrogate sum(u * sigmoid(u)) is one dot product
      instead of a product and a sum.  Only its finiteness is used: it is non-finite exactly
      when some u is (inf * 1, -inf * 0 and NaN products) or the sum overflows, as before; the
      two roundings could only disagree on a sum within rounding error of the float maximum;
    * the loop runs under ``torch.inference_mode``, which skips autograd's dispatch in every
      call (measured: 10-20% of this loop).  Every op writes into tensors made outside it, so
      no inference tensor reaches the rest of the run (`_SGD` preallocates its momentum buffer
      for this; `_Adam`'s bias-correction tables made here are only ever read).

    It costs a copy of X, hence small data only (`_FOLD_MAX_ELEMENTS`).
    """

    def __init__(self, ws: _Workspace) -> None:
        (sign,) = ws.targets
        self.ws = ws
        self.xs = ws.x * sign.unsqueeze(1)  # contiguous like ws.x (checked by `applies`)
        self.s_inv_n = sign * ws.inv_n_vec
        self.sigmoid_flat = ws.scratch.view(-1)

    @staticmethod
    def applies(run: _Run, ws: _Workspace) -> bool:
        x = ws.x
        return (
            run.batch_size is None
            and not run.extended  # row weights and penalties are only in the plain step
            and not ws.chunks  # a fused workspace has no whole-batch logit buffers
            and ws.kernel is None  # nor has the Triton step's
            and ws.ls is None
            and x.is_contiguous()
            and x.numel() <= _FOLD_MAX_ELEMENTS
        )

    def run(
        self,
        loss_cols: Sequence[Tensor],
        step: Callable[[Tensor, Tensor], None],
        p: Tensor,
        g: Tensor,
    ) -> None:
        """One plain epoch per ``loss_cols`` entry, which gets its finiteness surrogate;
        ``step(p, g)`` is the optimizer's update of the run's parameters ``p``."""
        ws = self.ws
        (sign,) = ws.targets
        z, sig, ones, xs, s_inv_n = ws.z, ws.scratch, ws.ones, self.xs, self.s_inv_n
        pb, pw, xt, gw, gb, inv_n = ws.pb, ws.pw, ws.xt, ws.gw, ws.gb, ws.inv_n
        addmm, sigmoid, mv = torch.addmm, torch.sigmoid, torch.mv
        one_config = z.shape[0] == 1
        with torch.inference_mode():
            for col in loss_cols:
                addmm(pb, pw, xt, out=z)
                z.mul_(sign)  # u = s*z
                sigmoid(z, out=sig)
                if one_config:
                    mv(z, self.sigmoid_flat, out=col)
                else:
                    mv(z.mul_(sig), ones, out=col)
                gw.addmm_(sig, xs, beta=0, alpha=inv_n)
                mv(sig, s_inv_n, out=gb)
                step(p, g)


class _GraphedEpochs:
    """Plain full-batch epochs on CUDA as replays of captured CUDA graphs (small data).

    On small data a CUDA epoch costs its kernel launches, not its arithmetic; a graph of a
    chunk of epochs is launched with one call.  A chunk of plain epochs (see `_Run.train`)
    starts at a ring position and has a length that mostly repeat (``check_every - 1`` epochs
    from position 0), so one graph per ``(start, length)`` is captured, its epochs writing
    their ring columns directly.  The graph replays exactly the eager epoch's ops -- the
    Triton step, the sign-folded loop or the plain step, then the optimizer -- so results are
    bit for bit the eager ones.  Per-step Python state is taken out of the graph: Adam's
    bias-correction factors for the chunk's steps are copied into the graph's static buffers
    before each replay (`_Adam.factors`, `_Adam.update`) and its step count advanced after;
    SGD's first momentum step (a copy, not an update) runs eagerly first.

    A new ``(start, length)`` first runs eagerly (Triton compiles, cuBLAS initialises on the
    capture stream), is captured the next time and replayed from then on.  If a capture fails,
    the run goes on eagerly.  A workspace, parameter or ring change (a configuration stopped)
    makes a new object, so graphs never see stale buffers.
    """

    def __init__(self, run: _Run, ws: _Workspace, folded: _FoldedBinarySteps | None) -> None:
        self.run, self.ws, self.folded = run, ws, folded
        self.P, self.ring = run.P, run.ring
        self.adam = isinstance(run.opt, _Adam)
        self.on_cuda = run.P.is_cuda
        self.stream = torch.cuda.Stream(run.P.device) if self.on_cuda else None
        # (start, length) -> [graph or None (not captured yet), Adam's factor buffers]
        self.entries: dict[tuple[int, int], list[object]] = {}
        self.failed = False

    @staticmethod
    def applies(run: _Run) -> bool:
        return (
            (run.X.is_cuda or _GRAPHS_ON_CPU)
            and run.batch_size is None
            and not run.extended
            and run.lr_schedule is None  # (plain epochs only run without one anyway)
            and run.X.numel() <= _GRAPH_MAX_ELEMENTS
        )

    def current(self, run: _Run, ws: _Workspace) -> bool:
        return self.ws is ws and self.P is run.P and self.ring is run.ring

    def _body(self, cols: Sequence[Tensor], factors: tuple[Tensor, Tensor] | None) -> None:
        """The chunk's epochs: each writes its ring column and updates the parameters."""
        run, ws = self.run, self.ws
        opt = run.opt
        for j, col in enumerate(cols):
            if factors is not None:
                assert isinstance(opt, _Adam)
                nss, bc2 = factors[0][j], factors[1][j]
                step: Callable[[Tensor, Tensor], None] = functools.partial(
                    _adam_update, opt, nss=nss, bc2=bc2
                )
            else:
                step = opt.step
            if self.folded is not None:
                self.folded.run([col], step, run.P, run.G)
            else:
                run._loss_and_grad(ws, col, False)
                step(run.P, run.G)

    def run_chunk(self, start: int, count: int) -> bool:
        """Epochs ``start .. start+count-1`` of the ring; False: the caller runs them eagerly
        (SGD's first momentum step, or a failed capture)."""
        run = self.run
        opt = run.opt
        if isinstance(opt, _SGD) and opt.momentum is not None and not opt.started:
            return False
        cols = run.ring_cols[start : start + count]
        key = (start, count)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= _GRAPH_CACHE:
                if self.on_cuda:  # no graph is freed while a replay may still run
                    torch.cuda.current_stream(self.P.device).synchronize()
                self.entries.clear()
            buffers = None
            if self.adam:
                assert isinstance(opt, _Adam)
                buffers = tuple(t.clone() for t in opt.factors(1, count))
            entry = self.entries[key] = [None, buffers]
            fresh = True
        else:
            fresh = False
        graph, buffers = entry
        if buffers is not None:  # this chunk's steps' factors into the graph's buffers
            assert isinstance(opt, _Adam) and isinstance(buffers, tuple)
            for buf, value in zip(buffers, opt.factors(opt.step_count + 1, count), strict=True):
                buf.copy_(value)
        factors = buffers if isinstance(buffers, tuple) else None
        if not self.on_cuda:  # tests: the bodies eagerly, as a replay would run them
            self._body(cols, factors)
        elif fresh:  # warm-up on the capture stream
            self._on_stream(lambda: self._body(cols, factors))
        else:
            if graph is None:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self._body(cols, factors)
                except Exception as error:  # noqa: BLE001 - then eagerly, as without graphs
                    warnings.warn(
                        f"sweeplr: CUDA graph capture failed ({error!r}); running eagerly",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.failed = True
                    return False
                entry[0] = graph
            assert isinstance(graph, torch.cuda.CUDAGraph)
            graph.replay()
        if self.adam:
            assert isinstance(opt, _Adam)
            opt.step_count += count
        return True

    def _on_stream(self, fn: Callable[[], None]) -> None:
        assert self.stream is not None
        current = torch.cuda.current_stream(self.P.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            fn()
        current.wait_stream(self.stream)


def _adam_update(opt: _Adam, p: Tensor, g: Tensor, *, nss: Tensor, bc2: Tensor) -> None:
    opt.update(p, g, nss, bc2)


class _WorkerCount:
    """How many workers a workspace's fused steps run on: all of torch's T threads, or one.

    On a quiet machine T workers get T cores and the step is faster.  When other processes
    hold the cores, our threads share what is left: under Linux's autogroup scheduling
    another session's job gets as much CPU as all our threads together, so T workers get
    about one core between them, and only wait for each other on top.  So each step on T
    workers measures the CPU time its workers got over its wall time (``cores``), and while
    that is below `_PARALLEL_CORES` the steps run on one worker.  Then, now and then, one step
    tries T workers again: if they get the cores, T it is; if not, the next try waits twice as
    many steps (from `_TRY_MIN` up to `_TRY_MAX`).  On a quiet machine nothing is tried, and a
    loaded machine is followed within a step and left within `_TRY_MAX` steps.  The numbers do
    not depend on the count (see `_Run._fused_loss_and_grad`).
    """

    def __init__(self) -> None:
        self.all_threads = True  # the count in use
        self.interval = self.steps_left = _TRY_MIN  # on one worker: steps until the next try

    def workers(self, threads: int) -> int:
        """The next step's worker count with ``threads`` torch threads."""
        return threads if self.all_threads or self.steps_left == 0 else 1

    def measured(self, n_workers: int, cores: float) -> None:
        """A step ran on ``n_workers`` workers, which got ``cores`` cores' worth of CPU time."""
        if n_workers == 1:
            self.steps_left -= 1
            return
        parallel = cores >= _PARALLEL_CORES
        if parallel and not self.all_threads:  # a try that found the cores
            self.interval = _TRY_MIN
        elif not parallel:  # the first step on one worker, or a try that did not find them
            self.interval = _TRY_MIN if self.all_threads else min(2 * self.interval, _TRY_MAX)
            self.steps_left = self.interval
        self.all_threads = parallel


class _Worker:
    """One thread's buffers for the groups of a fused step it runs, one group at a time (so they
    stay in its core's cache), and their views for a group of ``m`` rows (`_Buffers`)."""

    def __init__(self, ws: _Workspace, rows: int) -> None:
        like, ko, ka = ws.pw, ws.ko, ws.ka
        self.ws = ws
        # binary: logits, then loss terms, and dz; multi-class: logits (ls_buf: log-softmax, dz)
        self.z_buf = like.new_empty((1 if ws.multiclass else 2) * ko * rows)
        self.ones_buf = like.new_ones(rows)
        if ws.multiclass:
            self.ls_buf = like.new_empty(ko * rows)
            self.lp_buf = like.new_empty(ka * rows)
        self.views: dict[int, _Buffers] = {}  # by group length: all groups but the last share one

    def buffers(self, m: int) -> _Buffers:
        views = self.views.get(m)
        if views is None:
            views = self.views[m] = _Buffers(self, m)
        return views


class _Buffers:
    """Views of a worker's buffers for a group of ``m`` rows.

    They start at offset 0 of the worker's buffers, so they are contiguous whatever the group's
    length (the last group is usually shorter), and lie alike in every worker's buffers (torch
    aligns every allocation to 64 bytes): a group's ops see the same shapes, strides and alignment
    whichever thread runs them, and give the same bits.
    """

    def __init__(self, worker: _Worker, m: int) -> None:
        ws = worker.ws
        ko, ka = ws.ko, ws.ka
        self.ones = worker.ones_buf[:m]
        self.z = worker.z_buf[: ko * m].view(ko, m)
        self.dz: Tensor
        if ws.multiclass:
            self.z3 = self.z.view(ka, -1, m)
            self.ls = worker.ls_buf[: ko * m].view(ka, -1, m)
            self.dz = self.ls.view(ko, m)
            self.label_log_prob = worker.lp_buf[: ka * m].view(ka, 1, m)
        else:
            # [loss terms; dz] as one [2*ko, m] matrix: one mv sums both per configuration.
            self.both = worker.z_buf[: 2 * ko * m].view(2 * ko, m)
            self.z, self.dz = self.both[:ko], self.both[ko:]
        if ko == 1:  # the batched matrix-vector blocks of `_Group`
            blocks = m // ws.block
            main = blocks * ws.block
            self.z3_blocks = self.z[:, :main].view(blocks, 1, ws.block)
            self.dz3_blocks = self.dz[:, :main].view(blocks, 1, ws.block)
            self.z_rest, self.dz_rest = self.z[:, main:], self.dz[:, main:]


class _Group:
    """Views of X, the targets and the step's partial sums for the rows ``[start, stop)`` of a
    fused step, the ``index``-th group, in chunk ``chunk``."""

    def __init__(
        self, ws: _Workspace, index: int, start: int, stop: int, chunk: int, first_in_chunk: bool
    ) -> None:
        self.m = m = stop - start
        ka = ws.ka
        self.x = ws.x[start:stop]
        self.xt = self.x.t()
        if ws.multiclass:
            self.label_index = ws.targets[0][start:stop].view(1, 1, m).expand(ka, 1, m)
            self.neg_onehot = ws.targets[1][:, start:stop]
            self.loss_row, self.bias_row = ws.loss_parts[index], ws.bias_parts[index]
        else:
            self.sign = ws.targets[0][start:stop]
            self.sums_row = ws.sums[index]
        if ws.ko > 1:  # the chunk's share of the weight gradient; its first group: beta 0
            self.gw, self.beta = ws.chunk_gw[chunk], 0 if first_in_chunk else 1
            return
        block = ws.block
        self.blocks = blocks = m // block
        main = blocks * block
        x3 = self.x[:main].view(blocks, block, self.x.shape[1])
        self.x3, self.x3t = x3, x3.transpose(1, 2)
        self.pw3, self.pb3 = ws.pw.unsqueeze(0).expand(blocks, 1, -1), ws.pb.unsqueeze(0)
        self.part_blocks = ws.parts[ws.n_parts : ws.n_parts + blocks]
        ws.n_parts += blocks
        self.rest = main < m
        self.x_rest, self.xt_rest = self.x[main:], self.xt[:, main:]
        if self.rest:
            self.part_rest = ws.parts[ws.n_parts]
            ws.n_parts += 1

    def run(self, ws: _Workspace, buf: _Buffers, want_loss: bool) -> None:
        """The loss kernels of `_Run._loss_and_grad` on the group's rows, in ``buf``."""
        self.forward(ws, buf)
        if ws.multiclass:
            ls = torch.log_softmax(buf.z3, 1, out=buf.ls)
            label_log_prob = torch.gather(ls, 1, self.label_index, out=buf.label_log_prob)
            torch.mv(label_log_prob.view(ws.ka, -1), buf.ones, out=self.loss_row)
            ls.exp_().add_(self.neg_onehot)
            torch.mv(buf.dz, buf.ones, out=self.bias_row)
        else:
            u = buf.z.mul_(self.sign)
            sigmoid_u = torch.sigmoid(u, out=buf.dz)
            if want_loss:
                torch.add(F.softplus(u), u - u, out=u)
            else:
                u.mul_(sigmoid_u)
            sigmoid_u.mul_(self.sign)
            torch.mv(buf.both, buf.ones, out=self.sums_row)  # loss terms and dz, summed
        self.backward(ws, buf)

    def forward(self, ws: _Workspace, buf: _Buffers) -> None:
        """Logits of the group's rows into ``buf.z``."""
        if ws.ko > 1:
            torch.addmm(ws.pb, ws.pw, self.xt, out=buf.z)
            return
        if self.blocks:
            torch.baddbmm(self.pb3, self.pw3, self.x3t, out=buf.z3_blocks)
        if self.rest:
            torch.addmm(ws.pb, ws.pw, self.xt_rest, out=buf.z_rest)

    def backward(self, ws: _Workspace, buf: _Buffers) -> None:
        """The group's share of the weight gradient (from ``buf.dz`` = n * dL/dz)."""
        if ws.ko > 1:
            self.gw.addmm_(buf.dz, self.x, beta=self.beta, alpha=ws.inv_n)
            return
        if self.blocks:
            torch.bmm(buf.dz3_blocks, self.x3, out=self.part_blocks)
        if self.rest:
            torch.mm(buf.dz_rest, self.x_rest, out=self.part_rest)


class _Run:
    """State of one `train_batched` call: the *active* configurations, stacked.

    Stopped configurations are written to ``final`` and removed from every per-configuration
    tensor (``_stop``), so the epoch loop never masks, and NaNs of a diverged configuration can
    reach no other row: every op is row-wise in the configuration dimension.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        n_classes: int,
        weight: Tensor,
        bias: Tensor,
        optimizer: OptimizerConfig,
        batch_size: int | None,
        shuffle_seed: int,
        val: tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor] | None,
        *,
        sample_weight: Tensor | None = None,
        penalty: Penalty | None = None,
    ) -> None:
        k = weight.shape[0]
        self.X = X
        self.val = None if val is None else (val[0], val[1])
        # Per-configuration tensors beyond the optimizer's, selected in _stop with the rest:
        # validation row weights [Ka, n_val]; row weights [1, n] (shared) or [Ka, n]; the
        # penalties' strengths as [Ka, 1, 1] columns, None when no configuration has one.
        self.val_w = val[2] if val is not None and len(val) == 3 else None
        self.sw = None if sample_weight is None else sample_weight.reshape(-1, X.shape[0])
        self.sw_per_config = sample_weight is not None and sample_weight.ndim == 2
        self.l2: Tensor | None = None
        self.l1: Tensor | None = None
        if penalty is not None:
            for name in ("l2", "l1"):
                strength = per_config(
                    f"penalty.{name}", getattr(penalty, name), k, nonnegative=True
                )
                if bool(strength.any()):
                    setattr(self, name, strength.to(X.dtype).to(X.device).view(-1, 1, 1))
        self.extended = self.sw is not None or self.l2 is not None or self.l1 is not None
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(shuffle_seed)
        # Parameters of configuration k live in P[k] = [W | b]: [out, F+1].  One tensor means
        # one op per optimizer update for weight and bias together.
        self.P = torch.cat([weight, bias.unsqueeze(-1)], dim=2)
        self.G = torch.empty_like(self.P)
        self.final = self.P.clone()
        hp = _resolve_hparams(optimizer, k)
        if optimizer.kind == "sgd":
            self.opt: _SGD | _Adam = _SGD(hp, optimizer.nesterov, self.P)
        else:
            self.opt = _Adam(hp, optimizer.kind == "adamw", self.P)
        self.active = list(range(k))
        self.active_t = torch.arange(k, device=X.device)
        self.status: list[Status] = [COMPLETED] * k
        self.epochs_run = [0] * k
        self.diverged_epoch: list[int | None] = [None] * k
        self.lr_now = hp["lr"].numpy().copy()  # every configuration's lr, float64, by index
        self.lr_schedule: LrSchedule | None = None
        self.early: EarlyStopping | None = None
        self.best_epoch: list[int | None] = [None] * k
        # Targets in the form the loss kernels want (see _loss_and_grad): binary (1 - 2y,),
        # multi-class (y, -onehot(y)^T).
        self.targets: tuple[Tensor, ...]
        if n_classes == 2:
            self.targets = (1 - 2 * y.to(X.dtype),)
        else:
            self.targets = (y, -F.one_hot(y, n_classes).to(X.dtype).t().contiguous())
        self.workspaces: dict[int, _Workspace] = {}
        self.folded: _FoldedBinarySteps | None = None  # the plain epochs' kernel, if it applies
        self.graphed: _GraphedEpochs | None = None  # their CUDA graphs, if they apply
        self.graphs_failed = False
        # Epoch train loss = ring value / loss_divisor: full batch stores the loss sum; mini-
        # batch the mean over batches of sum_j / n_j, via these weights 1 / (n_j * n_batches).
        n = X.shape[0]
        if batch_size is None:
            self.loss_divisor = float(n)
        else:
            self.loss_divisor = 1.0
            sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
            self.batch_weights = X.new_tensor([1 / (nb * len(sizes)) for nb in sizes])

    # ----- per-step kernels ------------------------------------------------------------------

    def _workspace(self, nb: int) -> _Workspace:
        ws = self.workspaces.get(nb)
        if ws is None:
            ws = self.workspaces[nb] = _Workspace(self, nb)
        return ws

    def _loss_and_grad(self, ws: _Workspace, loss_sum_out: Tensor, want_loss: bool) -> None:
        """Forward; summed loss per configuration into ``loss_sum_out``; gradient into G.

        The loss is *summed*, as torch's mean reduction does before dividing, so that it
        overflows to inf exactly when torch's would; the division happens where the value is
        read.  The 1/n of the gradient is folded into the gradient matmul and bias reduction.

        Binary, with s = 1 - 2y: BCE(z, y) = softplus(s*z) and sigmoid(z) - y = s*sigmoid(s*z),
        so one scaled copy u = s*z gives both (more accurately than sigmoid(z) - y for confident
        predictions).  torch's BCE is NaN for an infinite logit even where softplus(u) is 0, so
        u - u (NaN exactly there) is added.  Epochs that are neither logged nor reported need
        only the loss's finiteness: silu(u) = u * sigmoid(u) is finite exactly when u is and
        within O(1) of softplus(u), so its sum overflows when the loss's would; it reuses the
        sigmoid the gradient needs, so the check costs one multiply instead of a softplus (a
        fifth of the whole epoch at K=64).

        Multi-class: log-softmax gives the loss (its entries at the labels, gathered) and the
        gradient softmax - onehot.  The loss is always computed: as in torch, a -inf logit leaves
        it finite or not depending on the label.

        Fused steps (see `_Workspace`) run the same kernels group by group.
        """
        if ws.chunks:
            self._fused_loss_and_grad(ws, loss_sum_out, want_loss)
            return
        if ws.kernel is not None:
            try:
                ws.kernel(ws.pw, ws.pb, ws.targets[0], loss_sum_out, ws.gw, ws.gb, want_loss)
                return
            except Exception as error:  # noqa: BLE001 - a Triton that cannot compile it here
                # The step below overwrites whatever the kernel wrote; no later workspace tries
                # this variant again.
                warnings.warn(
                    f"sweeplr: the fused Triton step failed ({error!r}); using the plain step",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _kernel_failures.add(ws.kernel.variant)
                ws.plain_buffers()
        z = ws.forward()  # [Ka*out, nb]
        if ws.ls is None:
            (sign,) = ws.targets
            u = z.mul_(sign)
            sigmoid_u = torch.sigmoid(u, out=ws.scratch)
            # softplus(u) is the BCE; silu(u) = u * sigmoid(u) the cheap finiteness surrogate
            per_sample = F.softplus(u).add_(u - u) if want_loss else u.mul_(sigmoid_u)
            if ws.sw is not None:  # s * loss, and s * dL/dz below
                per_sample.mul_(ws.sw)
            torch.mv(per_sample, ws.ones, out=loss_sum_out)
            torch.mul(sigmoid_u, sign, out=z)
            if ws.sw is not None:
                z.mul_(ws.sw)
        else:
            ls = torch.log_softmax(z.view(ws.ka, -1, z.shape[1]), 1, out=ws.ls)
            label_log_prob = torch.gather(ls, 1, ws.label_index, out=ws.scratch)
            sw3 = None if ws.sw is None else ws.sw.unsqueeze(1)  # [1 or Ka, 1, nb]
            if sw3 is not None:
                label_log_prob.mul_(sw3)
            torch.mv(label_log_prob.view(ws.ka, -1), ws.ones, out=loss_sum_out).neg_()
            ls.exp_().add_(ws.targets[1])
            if sw3 is not None:
                ls.mul_(sw3)
        ws.backward()

    def _plain_epochs(self, count: int) -> None:
        """``count`` epochs that are neither logged, reported nor end a check window: their
        losses are only checked for finiteness later, so they go into the ring in one go."""
        cols = self.ring_cols[self.ring_pos : self.ring_pos + count]
        self.ring_pos += count
        if self.batch_size is not None:
            for col in cols:
                self._mini_batch_epoch(col, False)
            return
        ws = self._workspace(self.X.shape[0])
        if self.folded is None or self.folded.ws is not ws:
            self.folded = _FoldedBinarySteps(ws) if _FoldedBinarySteps.applies(self, ws) else None
        if not self.graphs_failed and _GraphedEpochs.applies(self):
            if self.graphed is None or not self.graphed.current(self, ws):
                self.graphed = _GraphedEpochs(self, ws, self.folded)
            start = self.ring_pos - count
            if self.graphed.run_chunk(start, count):
                return
            if self.graphed.failed:  # a capture failed: this run goes on eagerly
                self.graphs_failed = True
            else:  # SGD's first momentum step, eagerly; then the others as a graph
                self._full_batch_epoch(cols[0], False)
                if count == 1 or self.graphed.run_chunk(start + 1, count - 1):
                    return
                self.graphs_failed = True
                cols = cols[1:]
        if self.folded is not None:
            self.folded.run(cols, self.opt.step, self.P, self.G)
            return
        for col in cols:
            self._full_batch_epoch(col, False)

    @staticmethod
    def _fused_loss_and_grad(ws: _Workspace, loss_sum_out: Tensor, want_loss: bool) -> None:
        """`_loss_and_grad` of a fused step: the chunks' groups, then the reductions.

        With T torch threads, T workers take chunks in turn from one queue, whichever is free
        first (the calling thread, and T - 1 threads of `_worker_executor`; torch ops release
        the GIL), or one worker where T did not get the cores (`_WorkerCount`).  Each op runs
        on one thread: torch's thread count is 1 meanwhile, as with `sweeplr.runner`'s
        small-data passes (so not for concurrent calls from several Python threads).  Letting
        each op use all threads instead puts an OpenMP barrier in each of the thousands of
        per-group ops; on the shared 2-core machine measured, a barrier waits whenever another
        process holds one of the cores, and the epoch took 4-18x one ``X @ w`` instead of
        1.2-2x.  Workers wait for each other once per step, and a worker whose core another
        process holds takes fewer chunks (with one static share of the groups per thread, the
        step waited for the slowed one: 2 threads took 1.9x the time of one).  Which worker runs
        a chunk changes no number: each group and chunk writes its own partial sums, reduced in
        row order.
        """
        chunks = ws.chunks
        threads = torch.get_num_threads()
        counted = threads > 1 and len(chunks) > 1
        n_workers = min(ws.worker_count.workers(threads), len(chunks)) if counted else 1
        queue = collections.deque(chunks)  # popleft is atomic: each chunk runs once
        futures: list[Future[float]] = []
        if threads > 1:
            torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            if n_workers > 1:
                pool = _worker_executor(n_workers - 1)
                for index in range(1, n_workers):
                    futures.append(
                        pool.submit(_Run._run_chunks, ws, ws.worker(index), queue, want_loss)
                    )
            cpu = _Run._run_chunks(ws, ws.worker(0), queue, want_loss)
            cpu += sum(future.result() for future in futures)
            if counted:
                ws.worker_count.measured(n_workers, cpu / (time.perf_counter() - start))
            _Run._reduce_fused(ws, loss_sum_out)
        finally:
            queue.clear()  # a failed step: the other workers stop after their current chunk
            for future in futures:  # all workers are done before the thread count returns
                future.exception()
            if threads > 1:
                torch.set_num_threads(threads)

    @staticmethod
    def _reduce_fused(ws: _Workspace, loss_sum_out: Tensor) -> None:
        """The loss and G from the groups' and chunks' partial sums, in row order."""
        ko = ws.ko
        if ws.multiclass:
            torch.sum(ws.loss_parts, 0, out=loss_sum_out).neg_()
            torch.mv(ws.bias_parts.t(), ws.inv_n_vec, out=ws.gb)
        else:
            torch.sum(ws.sums[:, :ko], 0, out=loss_sum_out)
            torch.mv(ws.sums[:, ko:].t(), ws.inv_n_vec, out=ws.gb)
        if ko == 1:
            torch.mv(ws.parts.view(-1, ws.parts.shape[2]).t(), ws.inv_n_parts, out=ws.gw[0])
        else:
            torch.sum(ws.chunk_gw, 0, out=ws.gw)

    @staticmethod
    def _run_chunks(
        ws: _Workspace, worker: _Worker, queue: collections.deque[list[_Group]], want_loss: bool
    ) -> float:
        """The loss kernels of `_loss_and_grad` on the groups of chunks taken from ``queue``
        until it is empty, each chunk's in row order, in ``worker``'s buffers; returns the CPU
        seconds the calling thread got meanwhile."""
        start = time.thread_time()
        with torch.no_grad():  # thread-local: the pool's threads do not inherit train_batched's
            while True:
                try:
                    chunk = queue.popleft()
                except IndexError:  # no chunk left
                    return time.thread_time() - start
                for g in chunk:
                    g.run(ws, worker.buffers(g.m), want_loss)

    def _full_batch_epoch(self, loss_out: Tensor, want_loss: bool) -> None:
        """One step on all of X; ``loss_out`` gets the loss *sum* (see ``loss_divisor``)."""
        ws = self._workspace(self.X.shape[0])
        self._loss_and_grad(ws, loss_out, want_loss)
        self._step()

    def _step(self) -> None:
        """The optimizer's update from G, with the penalties on the weights (not the bias):
        ``l2 * W`` added to the gradient before, L1's proximal step after (see `Penalty`)."""
        if self.l2 is None and self.l1 is None:
            self.opt.step(self.P, self.G)
            return
        n_features = self.P.shape[2] - 1
        if self.l2 is not None:
            self.G[..., :n_features].addcmul_(self.P[..., :n_features], self.l2)
        self.opt.step(self.P, self.G)
        if self.l1 is not None:
            self.opt.prox_l1(self.P[..., :n_features], self.l1)

    def _mini_batch_epoch(self, loss_out: Tensor, want_loss: bool) -> None:
        """One step per mini-batch; ``loss_out`` gets the mean of the batch means."""
        n = self.X.shape[0]
        bs = self.batch_size
        assert bs is not None
        perm = dataloader_permutation(self.generator, n).to(self.X.device)
        batch_sums = self.P.new_empty(len(self.active), self.batch_weights.shape[0])
        for j, start in enumerate(range(0, n, bs)):
            idx = perm[start : start + bs]
            ws = self._workspace(idx.shape[0])
            torch.index_select(self.X, 0, idx, out=ws.x)
            for full, buf in zip(self.targets, ws.targets, strict=True):
                torch.index_select(full, full.ndim - 1, idx, out=buf)
            if self.sw is not None:
                assert ws.sw is not None
                torch.index_select(self.sw, 1, idx, out=ws.sw)
            self._loss_and_grad(ws, batch_sums[:, j], want_loss)
            self._step()
        # sum_j sum_j / (n_j * n_batches): each term is at most a finite batch mean, so this
        # is non-finite exactly when some batch loss is, like the reference's Python mean.
        torch.mv(batch_sums, self.batch_weights, out=loss_out)

    # ----- bookkeeping -----------------------------------------------------------------------

    def _stop(
        self, positions: list[int], status: Status, epochs: list[int], weights: Tensor | None = None
    ) -> None:
        """Freeze the active configurations at ``positions`` and drop them from the batch.

        Their final parameters are their current ones, or ``weights`` (``[K, out, F+1]``, by
        configuration index: early stopping's best).
        """
        if not positions:
            return
        for pos, epoch in zip(positions, epochs, strict=True):
            k = self.active[pos]
            self.status[k] = status
            self.epochs_run[k] = epoch
            if status == DIVERGED:
                self.diverged_epoch[k] = epoch
        stopped = torch.tensor(positions, device=self.P.device)
        indices = self.active_t[stopped]
        source = self.P[stopped] if weights is None else weights.index_select(0, indices)
        self.final.index_copy_(0, indices, source)
        dropped = set(positions)
        kept = [i for i in range(len(self.active)) if i not in dropped]
        keep = torch.tensor(kept, dtype=torch.int64, device=self.P.device)
        self.active = [self.active[i] for i in kept]
        self.active_t = self.active_t[keep]
        self.P = self.P.index_select(0, keep)
        self.G = torch.empty_like(self.P)
        self._set_ring(self.ring.index_select(0, keep))
        self.opt.select(keep)
        if self.sw is not None and self.sw_per_config:
            self.sw = self.sw.index_select(0, keep)
        for name in ("val_w", "l2", "l1"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep))
        self.workspaces.clear()

    def _set_ring(self, ring: Tensor) -> None:
        """``ring[:, j]``: train loss of the j-th epoch since the last divergence check."""
        self.ring = ring
        self.ring_cols = ring.unbind(1)

    def _check_divergence(self, epoch: int) -> None:
        """Stop configurations with a non-finite loss in the epochs since the last check.

        One host sync per check: a non-finite sum of the buffered losses (all >= 0) is the cheap
        signal; only then is the buffer searched for each configuration's first bad epoch.
        """
        window = self.ring[:, : self.ring_pos]
        first_epoch = epoch - self.ring_pos + 1
        self.ring_pos = 0
        if window.shape[1] == 0 or math.isfinite(window.sum().item()):
            return
        bad = ~torch.isfinite(window)
        positions = bad.any(1).nonzero().flatten().tolist()
        first_bad = bad.to(torch.uint8).argmax(1).tolist()
        self._stop(positions, DIVERGED, [first_epoch + first_bad[i] for i in positions])

    def _evaluate(self) -> tuple[Tensor, Tensor]:
        """Validation loss and accuracy of the active configurations, ``[Ka]`` each: means
        over the validation rows, or weighted means over each configuration's (``val_w``)."""
        assert self.val is not None
        xv, yv = self.val
        ka, out, fp1 = self.P.shape
        p2 = self.P.view(ka * out, fp1)
        z = torch.addmm(p2[:, fp1 - 1 :], p2[:, : fp1 - 1], xv.t())
        if out == 1:
            target = yv.to(z.dtype).expand_as(z)
            loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
            correct = (z > 0) == yv.bool()
        else:
            z3 = z.view(ka, out, -1)
            loss = F.cross_entropy(z3, yv.expand(ka, -1), reduction="none")
            correct = z3.argmax(1) == yv
        accuracy = correct.to(z.dtype)
        w = self.val_w
        if w is None:
            return loss.mean(1), accuracy.mean(1)
        total = w.sum(1)
        # Rows outside a configuration's set count 0 even where their loss is inf (0 * inf).
        weighted_loss = torch.where(w > 0, loss * w, 0.0).sum(1) / total
        return weighted_loss, (accuracy * w).sum(1) / total

    def train(
        self,
        epochs: int,
        log_every: int,
        on_report: ReportCallback | None,
        report_every: int,
        check_every: int,
    ) -> EngineResult:
        """The epoch loop; see `train_batched`."""
        k = len(self.active)
        like = self.P
        self._set_ring(like.new_empty(k, check_every))
        self.ring_pos = 0
        logged = logged_epochs(epochs, log_every)
        hist_epochs: list[int] = []
        hist = like.new_full((1 if self.val is None else 3, len(logged), k), math.nan)
        hist_lr = np.full((len(logged), k), math.nan)
        if self.early is not None:
            self._start_early_stopping()
        epoch_loss = like.new_empty(k)
        epoch = 0
        while epoch < epochs:
            if self.lr_schedule is None:  # (a schedule is asked for every epoch's lr)
                # Run the epochs before the next logged, reported, checked or last one in one go.
                special = min(
                    logged[len(hist_epochs)] if len(hist_epochs) < len(logged) else epochs,
                    (epoch // report_every + 1) * report_every if on_report is not None else epochs,
                    epoch + check_every - self.ring_pos,
                    epochs,
                )
                if special - 1 > epoch:
                    self._plain_epochs(special - 1 - epoch)
                    epoch = special - 1
            epoch += 1
            logging = bool(logged) and epoch == logged[len(hist_epochs)]
            reporting = on_report is not None and epoch % report_every == 0
            if self.lr_schedule is not None:
                self._schedule_lr(epoch)
            loss_out = self.ring_cols[self.ring_pos]
            self.ring_pos += 1
            if self.batch_size is None:
                self._full_batch_epoch(loss_out, logging or reporting)
            else:
                self._mini_batch_epoch(loss_out, logging or reporting)
            if logging:
                t = len(hist_epochs)
                hist_epochs.append(epoch)
                hist_lr[t, self.active] = self.lr_now[self.active]
                hist[0, t].index_copy_(0, self.active_t, loss_out / self.loss_divisor)
                if self.val is not None:
                    val_loss, val_accuracy = self._evaluate()
                    hist[1, t].index_copy_(0, self.active_t, val_loss)
                    hist[2, t].index_copy_(0, self.active_t, val_accuracy)
            if reporting:
                epoch_loss.fill_(math.nan)
                epoch_loss.index_copy_(0, self.active_t, loss_out / self.loss_divisor)
            if reporting or self.ring_pos == check_every or epoch == epochs:
                self._check_divergence(epoch)
            if reporting and self.active:
                assert on_report is not None
                # The validation scores of this epoch, for callbacks that prune on them.
                val_now = (
                    hist[1:, len(hist_epochs) - 1] if logging and self.val is not None else None
                )
                self._report(on_report, epoch, epoch_loss.cpu(), val_now)
            watching = logging and (epoch % log_every == 0 or epoch == epochs)  # not early rows
            if (
                watching
                and self.active
                and (self.early is not None or self.lr_schedule is not None)
            ):
                self._watch(epoch, hist[:, len(hist_epochs) - 1])
            if not self.active:
                break
        return self._finish(epoch, hist_epochs, hist, hist_lr)

    # ----- schedules and early stopping --------------------------------------------------------

    def _schedule_lr(self, epoch: int) -> None:
        """Give the active configurations this epoch's lr, when the schedule changed one."""
        assert self.lr_schedule is not None
        row = self.lr_schedule.lr(epoch)
        if row is not None:
            self.lr_now = np.asarray(row, dtype=np.float64).copy()
            self.opt.set_lr(torch.from_numpy(self.lr_now[self.active]))

    def _start_early_stopping(self) -> None:
        assert self.early is not None
        k = len(self.status)
        sign = [1.0 if w == "val_loss" else -1.0 for w in self.early.watch]
        self.es_sign = np.asarray(sign)  # compare sign * value: lower is better
        self.es_best = np.full(k, math.inf)
        self.es_wait = np.zeros(k, dtype=np.int64)
        self.best_P = self.P.clone()

    def _watch(self, epoch: int, logged: Tensor) -> None:
        """After a logged epoch: early stopping's bookkeeping, then plateau schedules."""
        columns = ("train_loss", "val_loss", "val_accuracy")[: logged.shape[0]]
        values = logged.cpu().numpy()
        metrics = dict(zip(columns, values, strict=True))
        if self.early is not None:
            self._early_stop(epoch, metrics)
        if self.lr_schedule is not None and self.active:
            active = np.zeros(len(self.status), dtype=bool)
            active[self.active] = True
            self.lr_schedule.observe(metrics, active)

    def _early_stop(self, epoch: int, metrics: Mapping[str, np.ndarray]) -> None:
        """Track each active configuration's best watched value; stop the patient ones."""
        early = self.early
        assert early is not None
        improved, done = [], []
        for pos, k in enumerate(self.active):
            if early.patience[k] is None:
                continue
            value = self.es_sign[k] * metrics[early.watch[k]][k]
            if value < self.es_best[k] - early.min_delta[k]:  # NaN never improves
                self.es_best[k] = value
                self.best_epoch[k] = epoch
                self.es_wait[k] = 0
                improved.append(pos)
            else:
                self.es_wait[k] += 1
                if self.es_wait[k] >= early.patience[k]:
                    done.append(pos)
        if improved:
            at = torch.tensor(improved, device=self.P.device)
            self.best_P.index_copy_(0, self.active_t[at], self.P[at])
        stopping = [self.active[pos] for pos in done]
        for restore in (True, False):  # by configuration index: positions move as they stop
            group = [k for k in stopping if early.restore_best[k] == restore]
            positions = [self.active.index(k) for k in group]
            self._stop(
                positions, COMPLETED, [epoch] * len(positions), self.best_P if restore else None
            )

    def _report(
        self, on_report: ReportCallback, epoch: int, loss: Tensor, val: Tensor | None
    ) -> None:
        """Call ``on_report`` (with fresh tensors it may keep) and prune what it flags."""
        active_mask = torch.zeros(loss.shape[0], dtype=torch.bool)
        active_mask[self.active] = True
        loss = torch.where(active_mask, loss, math.nan)
        if val is None:
            val = torch.full((2, loss.shape[0]), math.nan)
        val_loss, val_accuracy = (torch.where(active_mask, v.cpu(), math.nan) for v in val)
        stop = on_report(epoch, active_mask.clone(), loss, val_loss, val_accuracy)
        if stop is None:
            return
        stop = torch.as_tensor(stop, dtype=torch.bool).cpu()
        if stop.shape != active_mask.shape:
            raise ValueError(f"on_report must return {active_mask.shape[0]} flags")
        positions = [i for i, k in enumerate(self.active) if stop[k]]
        self._stop(positions, PRUNED, [epoch] * len(positions))

    def _finish(
        self, last_epoch: int, hist_epochs: list[int], hist: Tensor, hist_lr: np.ndarray
    ) -> EngineResult:
        """Final parameter check, gather all configurations, and clean the history."""
        if self.active:
            broken = ~torch.isfinite(self.P).flatten(1).all(1)
            positions = broken.nonzero().flatten().tolist()
            self._stop(positions, DIVERGED, [last_epoch] * len(positions))
            early = self.early
            restore = [
                k
                for k in self.active
                if early is not None and early.restore_best[k] and self.best_epoch[k] is not None
            ]
            if restore:
                positions = [self.active.index(k) for k in restore]
                self._stop(positions, COMPLETED, [last_epoch] * len(positions), self.best_P)
            self._stop(list(range(len(self.active))), COMPLETED, [last_epoch] * len(self.active))
        hist = hist[:, : len(hist_epochs)].cpu()
        lr = torch.from_numpy(hist_lr[: len(hist_epochs)])
        logged = torch.tensor(hist_epochs, dtype=torch.int64)
        for k in range(len(self.status)):
            after = logged > self.epochs_run[k]
            hist[:, after, k] = math.nan
            lr[after, k] = math.nan
        n_features = self.final.shape[2] - 1
        return EngineResult(
            weight=self.final[..., :n_features].contiguous(),
            bias=self.final[..., n_features].contiguous(),
            status=self.status,
            epochs_run=self.epochs_run,
            diverged_epoch=self.diverged_epoch,
            history=History(
                epochs=hist_epochs,
                train_loss=hist[0],
                val_loss=hist[1] if self.val is not None else None,
                val_accuracy=hist[2] if self.val is not None else None,
                lr=lr,
            ),
            best_epoch=self.best_epoch,
        )
