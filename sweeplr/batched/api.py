"""What callers of the batched solvers see: hyperparameter, penalty, early-stopping and result
types, the logged epochs, and the initial parameters. No solver code, no Hydra."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from sweeplr.schema import Status

HParam = float | Sequence[float] | Tensor
"""A hyperparameter: one value shared by all K configurations, or one value per configuration."""

ReportCallback = Callable[[int, Tensor, Tensor, Tensor, Tensor], "Tensor | Sequence[bool] | None"]
"""``on_report(epoch, active_mask[K], train_loss[K], val_loss[K], val_accuracy[K]) -> stop[K]``
(see `train_batched`); the validation scores are NaN unless the epoch is also a logged one."""


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
            torch.default_generator.manual_seed(seed)
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


class LrSchedule(Protocol):
    """Each configuration's lr over the epochs (``sweeplr.schedules.BatchSchedule``)."""

    def lr(self, epoch: int) -> npt.NDArray[np.float64] | None:
        """Every configuration's lr for ``epoch`` (1-based, float64 [K]); None: unchanged."""

    def observe(
        self, metrics: Mapping[str, npt.NDArray[np.float64]], active: npt.NDArray[np.bool_]
    ) -> None:
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
