"""Train many configurations of one data set and evaluate them: specs in, outcomes out. No Hydra.

:func:`train_runs` takes :class:`~sweeplr.config.RunSpec` values that share a :func:`batch_key`
and trains them in one pass of the batched engine (``engine=batched``), or one after another
with ``torch.optim`` (``engine=reference``, the oracle the engine is tested against), then
evaluates every model on every split. Writing records and talking to Hydra or Optuna happen
above this module; a callback per configuration is the only way in while training runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sweeplr.config import RunSpec
from sweeplr.data import Splits, Standardizer, load_dataset, scale_splits, split
from sweeplr.engine import (
    EarlyStopping,
    EngineResult,
    OptimizerConfig,
    linear_init,
    train_batched,
)
from sweeplr.errors import SweeplrError
from sweeplr.model import LogisticRegression
from sweeplr.schedules import BatchSchedule, is_constant
from sweeplr.schema import DIVERGED, SPLITS
from sweeplr.training import LogCallback, OptimizerSpec, evaluate, train

SMALL_DATA_ELEMENTS = 1 << 20  # below this many training values, one CPU thread is fastest


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SweeplrError(f"device={name} is not available on this machine; allowed: auto, cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SweeplrError("device=mps is not available on this machine; allowed: auto, cpu")
    return torch.device(name)


def data_key(spec: RunSpec) -> str:
    """Specs with equal keys train and evaluate on the same tensors."""
    return json.dumps(
        [
            spec.dataset,
            spec.test_size,
            spec.val_size,
            spec.random_state,
            spec.stratify,
            spec.standardize,
            spec.device,
        ],
        sort_keys=True,
        default=str,
    )


def batch_key(spec: RunSpec) -> str:
    """Specs with equal keys can share one batched training pass.

    Learning rate and the optimizer's coefficients are per configuration in the engine. The
    seed only sets the initial weights when training is full batch (each configuration gets its
    own), but it also orders the mini-batches, which a batch must share.
    """
    shared = [
        data_key(spec),
        spec.optimizer,
        spec.nesterov,
        spec.epochs,
        spec.batch_size,
        spec.log_every,
        spec.engine,
        None if spec.batch_size is None else spec.seed,
    ]
    return json.dumps(shared, default=str)


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
    def load(cls, spec: RunSpec) -> DeviceData:
        """Load, split and scale the spec's data set, then move it to the spec's device."""
        device = resolve_device(spec.device)
        table = load_dataset(spec.dataset)
        splits = split(table, spec.test_size, spec.val_size, spec.random_state, spec.stratify)
        splits, scaler = scale_splits(splits, spec.standardize)

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


@dataclass
class Outcome:
    """A trained configuration: how training ended, its model, history and metrics."""

    spec: RunSpec
    status: str
    epochs_run: int
    diverged_epoch: int | None
    history: dict[str, list[Any]]  # epoch, train_loss, val_loss, val_accuracy, lr per logged epoch
    metrics: dict[str, dict[str, float | None]]  # split -> loss, accuracy, roc_auc, f1
    model: LogisticRegression
    data: DeviceData
    wall_seconds: float  # this configuration's share of its pass: pass time / configurations
    batch_configs: int  # configurations trained in the same pass
    batch_wall_seconds: float  # the pass: training and evaluation, data loading excluded
    best_epoch: int | None = None  # early stopping's best logged epoch

    @property
    def objective_value(self) -> float | None:
        """The objective metric's value; None when the run diverged."""
        split_name, metric = self.spec.objective.split("_", 1)
        return self.metrics[split_name][metric]

    @property
    def objective(self) -> float:
        """The value returned to sweepers: a diverged run gets the worst possible value."""
        value = self.objective_value
        if value is None:
            return math.inf if self.spec.direction == "minimize" else -math.inf
        return float(value)


@dataclass
class _Trained:
    model: LogisticRegression
    status: str
    epochs_run: int
    diverged_epoch: int | None
    history: dict[str, list[Any]]
    best_epoch: int | None


def optimizer_spec(spec: RunSpec) -> OptimizerSpec:
    """The ``torch.optim`` settings of a spec (the reference path's optimizer)."""
    return OptimizerSpec(
        name=spec.optimizer,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
        betas=spec.betas,
        eps=spec.eps,
    )


def train_runs(
    specs: Sequence[RunSpec],
    on_logs: Sequence[LogCallback | None] | None = None,
    data: DeviceData | None = None,
) -> list[Outcome]:
    """Train specs that share a :func:`batch_key` in one pass; evaluate each on every split.

    ``on_logs[k]`` is called at every logged epoch of configuration k as ``(epoch, train_loss,
    val_loss, val_accuracy)`` and may return True to stop it (status ``pruned``). ``data`` is
    the specs' data set when the caller has it loaded already.
    """
    if len({batch_key(s) for s in specs}) != 1:
        raise ValueError("train_runs needs specs with one batch_key")
    base = specs[0]
    callbacks = list(on_logs or [None] * len(specs))
    data = data or DeviceData.load(base)
    started = time.perf_counter()  # the pass: training and evaluation, not data loading
    threads = torch.get_num_threads()
    if data.device.type == "cpu" and data.train[0].numel() < SMALL_DATA_ELEMENTS:
        # Thread start-up and hand-off cost far more than the arithmetic on small data:
        # measured 2 ms/epoch with 2 threads against 0.3 ms with one on blobs. Given back
        # after: the caller's process (a notebook, the next group) keeps its own setting.
        torch.set_num_threads(1)
    try:
        if base.engine == "reference":
            trained = [_train_reference(s, data, callbacks[k]) for k, s in enumerate(specs)]
        else:
            trained = _train_batched(specs, data, callbacks)
        # Evaluated before the threads are given back: on small data a second thread's
        # hand-off costs more than the arithmetic here too (and stalls on a busy machine).
        outcomes = [
            _evaluated(spec, result, data, len(specs))
            for spec, result in zip(specs, trained, strict=True)
        ]
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - started
    for outcome in outcomes:
        outcome.wall_seconds = wall / len(specs)
        outcome.batch_wall_seconds = wall
    return outcomes


def _evaluated(spec: RunSpec, result: _Trained, data: DeviceData, batch_configs: int) -> Outcome:
    """``result`` with its metrics on every split (none for a diverged model)."""
    diverged = result.status == DIVERGED
    metrics = {
        name: _no_metrics() if diverged else evaluate(result.model, X, y)
        for name, (X, y) in zip(SPLITS, (data.train, data.val, data.test), strict=True)
    }
    return Outcome(
        spec,
        result.status,
        result.epochs_run,
        result.diverged_epoch,
        result.history,
        metrics,
        result.model,
        data,
        wall_seconds=0.0,
        batch_configs=batch_configs,
        batch_wall_seconds=0.0,
        best_epoch=result.best_epoch,
    )


def _no_metrics() -> dict[str, float | None]:
    """Metrics of a diverged model: all missing, rather than numbers computed from NaN weights."""
    return {"loss": None, "accuracy": None, "roc_auc": None, "f1": None}


def _train_reference(spec: RunSpec, data: DeviceData, on_log: LogCallback | None) -> _Trained:
    """``engine=reference``: torch.optim and autograd, one configuration at a time."""
    torch.manual_seed(spec.seed)
    splits = data.splits
    model = LogisticRegression(splits.n_features, splits.n_classes).to(data.device)
    result = train(
        model,
        *data.train,
        *data.val,
        optimizer_spec(spec),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
        log_every=spec.log_every,
        on_log=on_log,
        schedule=None if is_constant(spec.scheduler) else spec.scheduler,
        early_stopping=spec.early_stopping if spec.early_stopping.patience is not None else None,
        watch=spec.watched,
    )
    history = result.history
    return _Trained(
        model,
        result.status,
        result.epochs_run,
        result.diverged_epoch,
        {
            "epoch": history.epoch,
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
            "val_accuracy": history.val_accuracy,
            "lr": history.lr,
        },
        result.best_epoch,
    )


def _engine_optimizer(specs: Sequence[RunSpec]) -> OptimizerConfig:
    """One engine optimizer with a value per configuration for every hyperparameter."""
    kind = specs[0].optimizer
    common: dict[str, Any] = {
        "lr": [s.lr for s in specs],
        "weight_decay": [s.weight_decay for s in specs],
    }
    if kind == "sgd":
        return OptimizerConfig(
            kind, momentum=[s.momentum for s in specs], nesterov=specs[0].nesterov, **common
        )
    return OptimizerConfig(
        kind,
        betas=([s.betas[0] for s in specs], [s.betas[1] for s in specs]),
        eps=[s.eps for s in specs],
        **common,
    )


def _train_batched(
    specs: Sequence[RunSpec], data: DeviceData, on_logs: Sequence[LogCallback | None]
) -> list[_Trained]:
    """``engine=batched``: every configuration in one pass of the closed-form engine."""
    base = specs[0]
    splits = data.splits
    X_train, y_train = data.train
    weight, bias = linear_init(
        splits.n_features,
        splits.n_classes,
        [s.seed for s in specs],
        dtype=X_train.dtype,
        device=data.device,
    )
    has_val = len(data.val[1]) > 0

    def report(
        epoch: int,
        active: torch.Tensor,
        train_loss: torch.Tensor,
        val_loss: torch.Tensor,
        val_accuracy: torch.Tensor,
    ) -> list[bool]:
        stops = [False] * len(specs)
        for k, callback in enumerate(on_logs):
            if callback is not None and bool(active[k]):
                stops[k] = bool(
                    callback(
                        epoch, float(train_loss[k]), float(val_loss[k]), float(val_accuracy[k])
                    )
                )
        return stops

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
        val=data.val if has_val else None,
        log_every=base.log_every,
        on_report=report if any(c is not None for c in on_logs) else None,
        report_every=base.log_every,
        check_every=base.log_every,
        lr_schedule=_batch_schedule(specs),
        early_stopping=_early_stopping(specs),
    )
    trained = []
    for k in range(len(specs)):
        model = LogisticRegression(splits.n_features, splits.n_classes).to(data.device)
        with torch.no_grad():
            model.linear.weight.copy_(result.weight[k])
            model.linear.bias.copy_(result.bias[k])
        trained.append(
            _Trained(
                model,
                result.status[k],
                result.epochs_run[k],
                result.diverged_epoch[k],
                _history_of(result, k),
                result.best_epoch[k],
            )
        )
    return trained


def _batch_schedule(specs: Sequence[RunSpec]) -> BatchSchedule | None:
    """Each configuration's lr per epoch from its schedule; None when every lr is constant."""
    if all(is_constant(s.scheduler) for s in specs):
        return None
    return BatchSchedule(
        [s.lr for s in specs],
        [s.scheduler for s in specs],
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


def _history_of(result: EngineResult, k: int) -> dict[str, list[Any]]:
    """History rows of configuration k, up to the epoch it stopped at."""
    history = result.history
    rows = [t for t, epoch in enumerate(history.epochs) if epoch <= result.epochs_run[k]]

    def column(values: torch.Tensor | None) -> list[float]:
        if values is None:
            return [math.nan] * len(rows)
        return [float(values[t, k]) for t in rows]

    return {
        "epoch": [history.epochs[t] for t in rows],
        "train_loss": column(history.train_loss),
        "val_loss": column(history.val_loss),
        "val_accuracy": column(history.val_accuracy),
        "lr": column(history.lr),
    }
