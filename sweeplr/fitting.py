"""One training pass: *members* that share a batch key, trained together. No Hydra.

A member is a configuration (a :class:`~sweeplr.spec.RunSpec`) and the training rows it
learns from: all of them, or, in k-fold cross-validation, all but its held-out fold. Every
member's loss is scikit-learn's objective on the mean scale,

    (1/n_k) * sum over its rows of  s_i * loss_i  +  penalty(W) / (C * n_k),

with ``s_i`` the class weight of row i's class times its ``dataset.weight``, and ``n_k`` the
member's row count. The batched engine trains all members at once: they share X, and a
member's rows are its row weights (zero outside them), scaled by ``n / n_k`` so that the
engine's mean over all ``n`` rows is the member's mean. The reference path trains each
member alone on its own rows with ``torch.optim`` -- the oracle the engine is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from sweeplr.batched import (
    EarlyStopping,
    EngineResult,
    History,
    OptimizerConfig,
    OptimizerKind,
    Penalty,
    ReportCallback,
    linear_init,
    train_batched,
    train_lbfgs,
)
from sweeplr.data import Splits, Standardizer, class_weights, load_dataset, scale_splits, split
from sweeplr.errors import SweeplrError
from sweeplr.model import LogisticRegression
from sweeplr.schedules import BatchSchedule, is_constant
from sweeplr.spec import RunSpec, class_weight_text
from sweeplr.training import (
    LogCallback,
    TorchOptimizer,
    Trained,
    train,
    train_lbfgs_reference,
)
from sweeplr.validation import OPTIMIZER_OPTIONS

# device=auto's crossover (provisional until bench/gpu_check.py measures it on a lent GPU):
# CUDA only when a pass's work, rows x features x K x epochs, exceeds AUTO_CUDA_MIN_WORK and one
# epoch's, rows x features x K, exceeds AUTO_CUDA_MIN_EPOCH_WORK.  Derivation: CUDA costs a
# fixed ~1.6 s per process (H200: `python train.py` took 6.5 s with auto->cuda, 4.9 s on the
# CPU), and on large data its epochs are ~100x cheaper than the CPU's, so it wins once the
# CPU pass would take longer than ~1.6 s.  The CPU engine does ~1.8e9 work units/s at K=1 and
# ~1.3e10 at K=64 (2-core AMD EPYC: 400k x 100 SGD 22 ms/epoch, 100k x 100 x 64 Adam 50 ms),
# so the break-even lies between 3e9 and 2e10: 1e10 loses at most a few seconds either way.
# On tiny data a CUDA epoch is pure launch overhead (133 us eager, ~30 us with CUDA graphs, vs
# ~15 us for 670 x 2 on the CPU), so epochs must also be big enough for the GPU's bandwidth to
# count: 2.5e5 units take the CPU ~140 us (at 1.8e9/s), a CUDA epoch's overhead.
# blobs (670 x 2 x 1 x 1000 = 1.3e6) stays on the CPU; 10M x 100 x 1 x 100 = 1e11 goes to CUDA.
AUTO_CUDA_MIN_WORK = 1e10
AUTO_CUDA_MIN_EPOCH_WORK = 2.5e5


def lbfgs_dtype(device: torch.device) -> torch.dtype:
    """The dtype L-BFGS solves in: float64, as scikit-learn's lbfgs does (MPS has none).

    Its stopping tests compare loss changes and steps with ``tolerance_change`` (1e-9), below
    float32's resolution of a loss near 0.1 (7e-9): in float32 they fire on rounding noise, so
    the iteration count, and with it the weights, moved with the CPU's order of summation
    (breast_cancer, C=1: 25 iterations on one x86-64 CPU, 26 with MKL's conditional
    numerical reproducibility mode). The data stays float32; only the pass's copy is float64.
    """
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class Workload:
    """The size of one training pass, for device=auto (see `auto_device`)."""

    rows: int
    features: int
    configs: int  # K: the configurations trained together (cv folds included)
    epochs: int

    @property
    def per_epoch(self) -> float:
        return float(self.rows) * self.features * self.configs

    @property
    def total(self) -> float:
        return self.per_epoch * self.epochs


def auto_device(workload: Workload | None, cuda_available: bool | None = None) -> torch.device:
    """device=auto: CUDA when it is available and the pass is big enough to repay its fixed
    cost (`AUTO_CUDA_MIN_WORK`, `AUTO_CUDA_MIN_EPOCH_WORK`); the CPU otherwise.  An unknown
    workload (None) takes CUDA when available, as before the crossover existed."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return torch.device("cpu")
    if workload is None:
        return torch.device("cuda")
    big = workload.total > AUTO_CUDA_MIN_WORK and workload.per_epoch > AUTO_CUDA_MIN_EPOCH_WORK
    return torch.device("cuda" if big else "cpu")


def resolve_device(name: str, workload: Workload | None = None) -> torch.device:
    """The device of ``device=name``: ``auto`` chooses by ``workload`` (see `auto_device`)."""
    if name == "auto":
        return auto_device(workload)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SweeplrError(f"device={name} is not available on this machine; allowed: auto, cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SweeplrError("device=mps is not available on this machine; allowed: auto, cpu")
    return torch.device(name)


@dataclass
class DeviceData:
    """The splits of one data set as tensors on the training device."""

    splits: Splits
    scaler: Standardizer
    device: torch.device
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def load(cls, spec: RunSpec, configs: int = 1) -> DeviceData:
        """Load, split and scale the spec's data set, then move it to the spec's device;
        device=auto chooses it from the training rows and features, ``configs`` (the pass's
        configurations) and the spec's epochs.  The spec keeps ``auto``; ``device`` is the
        choice (what records show)."""
        data = spec.data
        table = load_dataset(data.dataset)
        splits = split(table, data.test_size, data.val_size, data.random_state, data.stratify)
        splits, scaler = scale_splits(splits, data.standardize)
        rows, features = splits.X_train.shape
        folds = spec.cv or 1  # k-fold members train in the same pass
        device = resolve_device(spec.device, Workload(rows, features, configs * folds, spec.epochs))

        def tensors(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)

        return cls(
            splits,
            scaler,
            device,
            tensors(splits.X_train, splits.y_train),
            tensors(splits.X_val, splits.y_val),
            tensors(splits.X_test, splits.y_test),
        )

    def to_dtype(self, dtype: torch.dtype) -> DeviceData:
        """The same data with ``dtype`` features (a copy, unless they already have it)."""

        def cast(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return pair[0].to(dtype), pair[1]

        return DeviceData(
            self.splits, self.scaler, self.device, cast(self.train), cast(self.val), cast(self.test)
        )


@dataclass(frozen=True)
class Member:
    """A configuration and the training rows it learns from (``rows``: bool [n]; None: all)."""

    spec: RunSpec
    rows: np.ndarray | None = None

    @property
    def held_out(self) -> np.ndarray | None:
        """The rows it is validated on, in cross-validation: the ones it does not learn from."""
        return None if self.rows is None else ~self.rows


def torch_optimizer(spec: RunSpec) -> TorchOptimizer:
    """The ``torch.optim`` settings of a spec (the reference path's optimizer)."""
    opt = spec.optimizer
    options = {name: getattr(opt, name) for name in OPTIMIZER_OPTIONS[opt.name]}
    return TorchOptimizer(opt.name, spec.lr, **options)  # (the others are at their defaults)


def row_weights(spec: RunSpec, data: DeviceData) -> np.ndarray | None:
    """``s_i`` of every training row (class weight x ``dataset.weight``); None: all 1."""
    splits = data.splits
    weights = None
    per_class = class_weights(spec.class_weight, splits.y_train, splits.class_names)
    if per_class is not None:
        weights = per_class[splits.y_train]
    if splits.w_train is not None:
        weights = splits.w_train if weights is None else weights * splits.w_train
    return weights


def penalty_strengths(spec: RunSpec, n_rows: int) -> tuple[float, float]:
    """``(l2, l1)`` on the mean-loss scale: scikit-learn's ``penalty / C`` divided by ``n_k``."""
    penalty = spec.penalty
    if penalty.name == "none":
        return 0.0, 0.0
    scale = 1.0 / (penalty.C * n_rows)
    return (1.0 - penalty.l1_ratio) * scale, penalty.l1_ratio * scale


def train_members(
    members: Sequence[Member],
    data: DeviceData,
    on_logs: Sequence[LogCallback | None],
    groups: Sequence[Sequence[int]] | None = None,
) -> list[Trained]:
    """Train ``members`` (one batch key) in one pass of the spec's engine.

    ``groups[g]`` lists the members that ``on_logs[g]`` watches (a configuration's folds); it
    sees their mean train and validation scores, and stopping it stops all of them. Without
    ``groups`` each callback watches its own member. The reference path trains members one at
    a time, so there a callback only runs for a group of one.
    """
    groups = [[m] for m in range(len(members))] if groups is None else groups
    if members[0].spec.engine == "reference":
        watching = {group[0]: on_logs[g] for g, group in enumerate(groups) if len(group) == 1}
        return [_train_reference(m, data, watching.get(i)) for i, m in enumerate(members)]
    return _train_batched(members, data, on_logs, groups)


# ----- the batched engine -------------------------------------------------------------------


def _member_rows(members: Sequence[Member], n: int) -> list[int]:
    return [n if m.rows is None else int(m.rows.sum()) for m in members]


def _engine_weights(
    members: Sequence[Member], data: DeviceData, counts: Sequence[int]
) -> torch.Tensor | None:
    """The engine's ``sample_weight``: None, ``[n]`` shared by all, or ``[K, n]``.

    Members that share their weights (the same class weights over all rows) share one vector:
    a [K, n] matrix of equal rows would cost K times the memory for nothing.
    """
    n = len(data.splits.y_train)
    by_class_weight: dict[str | None, np.ndarray | None] = {}
    vectors = []
    for member, count in zip(members, counts, strict=True):
        key = class_weight_text(member.spec.class_weight)
        if key not in by_class_weight:
            by_class_weight[key] = row_weights(member.spec, data)
        weights = by_class_weight[key]
        if member.rows is not None:  # its fold's rows, scaled so that a mean over n is theirs
            weights = (1.0 if weights is None else weights) * member.rows * (n / count)
        vectors.append(weights)
    if all(v is None for v in vectors):
        return None
    X = data.train[0]
    first = vectors[0]
    if all(v is first for v in vectors[1:]):
        return torch.from_numpy(np.asarray(first)).to(dtype=X.dtype, device=X.device)
    matrix = np.stack([np.ones(n) if v is None else v for v in vectors])
    return torch.from_numpy(matrix).to(dtype=X.dtype, device=X.device)


def _engine_penalty(members: Sequence[Member], counts: Sequence[int]) -> Penalty | None:
    strengths = [penalty_strengths(m.spec, c) for m, c in zip(members, counts, strict=True)]
    if not any(l2 or l1 for l2, l1 in strengths):
        return None
    return Penalty(l2=[s[0] for s in strengths], l1=[s[1] for s in strengths])


def _engine_val(members: Sequence[Member], data: DeviceData) -> tuple[torch.Tensor, ...] | None:
    """Each member's validation data: the val split, or (cv) its held-out rows of X."""
    if members[0].rows is None:
        return data.val if len(data.val[1]) > 0 else None
    X, y = data.train
    held = np.stack([cast(np.ndarray, m.held_out) for m in members]).astype(np.float64)
    return X, y, torch.from_numpy(held).to(dtype=X.dtype, device=X.device)


def _engine_optimizer(specs: Sequence[RunSpec]) -> OptimizerConfig:
    """One engine optimizer with a value per configuration for each option of its kind (one
    for all where the pass shares it: ``nesterov``; ``betas`` as a pair of lists)."""
    opts = [s.optimizer for s in specs]
    kind = cast(OptimizerKind, opts[0].name)  # (validated: one of the engine's, or lbfgs)
    values: dict[str, Any] = {"lr": [s.lr for s in specs]}
    for name in OPTIMIZER_OPTIONS[kind]:
        column = [getattr(opt, name) for opt in opts]
        values[name] = column[0] if name == "nesterov" else column
    if "betas" in values:
        values["betas"] = tuple(list(beta) for beta in zip(*values["betas"], strict=True))
    return OptimizerConfig(kind, **values)


def _group_report(
    on_logs: Sequence[LogCallback | None], groups: Sequence[Sequence[int]], k: int
) -> ReportCallback:
    """The engine's ``on_report``: each callback sees its group's mean scores."""

    def report(
        epoch: int,
        active: torch.Tensor,
        train_loss: torch.Tensor,
        val_loss: torch.Tensor,
        val_accuracy: torch.Tensor,
    ) -> list[bool]:
        stops = [False] * k
        for callback, group in zip(on_logs, groups, strict=True):
            live = [m for m in group if bool(active[m])]
            if callback is None or not live:
                continue
            at = torch.tensor(live)
            means = (float(values[at].mean()) for values in (train_loss, val_loss, val_accuracy))
            if callback(epoch, *means):
                for m in group:
                    stops[m] = True
        return stops

    return report


def _train_batched(
    members: Sequence[Member],
    data: DeviceData,
    on_logs: Sequence[LogCallback | None],
    groups: Sequence[Sequence[int]],
) -> list[Trained]:
    """``engine=batched``: every member in one pass of the closed-form engine (or L-BFGS)."""
    specs = [m.spec for m in members]
    base = specs[0]
    splits = data.splits
    weight, bias = linear_init(
        splits.n_features,
        splits.n_classes,
        [s.seed for s in specs],
        dtype=data.train[0].dtype,
        device=data.device,
    )
    if base.optimizer.name == "lbfgs":  # the same initial weights, solved in float64
        data = data.to_dtype(lbfgs_dtype(data.device))
        weight, bias = weight.to(data.train[0].dtype), bias.to(data.train[0].dtype)
    X_train, y_train = data.train
    counts = _member_rows(members, len(y_train))
    common: dict[str, Any] = {
        "sample_weight": _engine_weights(members, data, counts),
        "penalty": _engine_penalty(members, counts),
        "val": _engine_val(members, data),
        "log_every": base.log_every,
        "on_report": (
            _group_report(on_logs, groups, len(members))
            if any(c is not None for c in on_logs)
            else None
        ),
        "report_every": base.log_every,
    }
    if base.optimizer.name == "lbfgs":
        result = train_lbfgs(
            X_train,
            y_train,
            splits.n_classes,
            weight,
            bias,
            lr=[s.lr for s in specs],
            max_iter=base.epochs,
            history_size=base.optimizer.history_size,
            tolerance_grad=base.optimizer.tolerance_grad,
            tolerance_change=base.optimizer.tolerance_change,
            **common,
        )
    else:
        result = train_batched(
            X_train,
            y_train,
            splits.n_classes,
            weight,
            bias,
            _engine_optimizer(specs),
            base.epochs,
            batch_size=base.batch_size,
            shuffle_seed=base.seed,
            check_every=base.log_every,
            lr_schedule=_batch_schedule(specs),
            early_stopping=_early_stopping(specs),
            **common,
        )
    columns = _history_columns(result.history)
    return [_member_of(result, k, splits, data.device, columns) for k in range(len(specs))]


def _member_of(
    result: EngineResult,
    k: int,
    splits: Splits,
    device: torch.device,
    columns: dict[str, list[list[float]] | None],
) -> Trained:
    """Configuration k of an engine result, as a model of its own (``columns``: the result's
    history by configuration, `_history_columns`)."""
    model = LogisticRegression(splits.n_features, splits.n_classes).to(device)
    with torch.no_grad():
        model.linear.weight.copy_(result.weight[k])
        model.linear.bias.copy_(result.bias[k])
    return Trained(
        model,
        result.status[k],
        result.epochs_run[k],
        result.diverged_epoch[k],
        _history_of(result, k, columns),
        result.best_epoch[k],
    )


def _batch_schedule(specs: Sequence[RunSpec]) -> BatchSchedule | None:
    """Each configuration's lr per epoch from its schedule; None when every lr is constant."""
    if all(is_constant(s.schedule) for s in specs):
        return None
    return BatchSchedule(
        [s.lr for s in specs],
        [s.schedule for s in specs],
        specs[0].epochs,
        ["max" if s.watched == "val_accuracy" else "min" for s in specs],
        [s.watched for s in specs],
    )


def _early_stopping(specs: Sequence[RunSpec]) -> EarlyStopping | None:
    """The engine's early stopping for the specs that ask for it; None when none does."""
    if all(s.early_stopping.patience is None for s in specs):
        return None
    return EarlyStopping(
        patience=[s.early_stopping.patience for s in specs],
        min_delta=[s.early_stopping.min_delta for s in specs],
        watch=[s.watched or "val_loss" for s in specs],
        restore_best=[s.early_stopping.restore_best for s in specs],
    )


def _history_columns(history: History) -> dict[str, list[list[float]] | None]:
    """Each history tensor as Python floats by configuration, read once for the whole pass
    (reading ``values[t, k]`` one element at a time cost more than a small pass's training)."""
    return {
        name: None if values is None else values.T.tolist()
        for name, values in (
            ("train_loss", history.train_loss),
            ("val_loss", history.val_loss),
            ("val_accuracy", history.val_accuracy),
            ("lr", history.lr),
        )
    }


def _history_of(
    result: EngineResult, k: int, columns: dict[str, list[list[float]] | None]
) -> dict[str, list[Any]]:
    """History rows of configuration k, up to the epoch it stopped at."""
    epochs = result.history.epochs
    rows = sum(1 for epoch in epochs if epoch <= result.epochs_run[k])  # (epochs ascend)

    def column(name: str) -> list[float]:
        values = columns[name]
        return [math.nan] * rows if values is None else values[k][:rows]

    return {
        "epoch": epochs[:rows],
        "train_loss": column("train_loss"),
        "val_loss": column("val_loss"),
        "val_accuracy": column("val_accuracy"),
        "lr": column("lr"),
    }


# ----- the reference path -------------------------------------------------------------------


def _train_reference(member: Member, data: DeviceData, on_log: LogCallback | None) -> Trained:
    """``engine=reference``: torch.optim and autograd on the member's own rows."""
    spec = member.spec
    features = data.train[0].dtype
    if spec.optimizer.name == "lbfgs":
        data = data.to_dtype(lbfgs_dtype(data.device))
    X, y = data.train
    weights = row_weights(spec, data)
    if member.rows is None:
        X_val, y_val = data.val
    else:
        held = torch.from_numpy(member.held_out).to(X.device)
        X_val, y_val = X[held], y[held]
        X, y = X[~held], y[~held]
        weights = None if weights is None else weights[member.rows]
    sample_weight = None if weights is None else torch.from_numpy(weights).to(X)
    l2, l1 = penalty_strengths(spec, len(y))
    torch.manual_seed(spec.seed)
    splits = data.splits
    # initialised in float32 as the batched engine's weights are, then cast to X's dtype
    model = LogisticRegression(splits.n_features, splits.n_classes).to(data.device, X.dtype)
    if spec.optimizer.name == "lbfgs":
        result = train_lbfgs_reference(
            model,
            X,
            y,
            X_val,
            y_val,
            lr=spec.lr,
            max_iter=spec.epochs,
            history_size=spec.optimizer.history_size,
            tolerance_grad=spec.optimizer.tolerance_grad,
            tolerance_change=spec.optimizer.tolerance_change,
            sample_weight=sample_weight,
            l2=l2,
            log_every=spec.log_every,
            on_log=on_log,
        )
    else:
        result = train(
            model,
            X,
            y,
            X_val,
            y_val,
            torch_optimizer(spec),
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            seed=spec.seed,
            log_every=spec.log_every,
            on_log=on_log,
            schedule=None if is_constant(spec.schedule) else spec.schedule,
            early_stopping=spec.early_stopping
            if spec.early_stopping.patience is not None
            else None,
            watch=spec.watched,
            sample_weight=sample_weight,
            l2=l2,
            l1=l1,
        )
    model.to(features)  # (in place) in the features' dtype, as the batched path's models are
    return result
