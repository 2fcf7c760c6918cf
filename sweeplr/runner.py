"""Train many configurations of one data set and evaluate them: specs in, outcomes out. No Hydra.

:func:`train_runs` takes :class:`~sweeplr.spec.RunSpec` values that share a :func:`batch_key`
and trains them in one pass (``sweeplr.fitting``: the batched engine, batched L-BFGS, or
``torch.optim`` one after another for ``engine=reference``) -- with ``cv``, on their folds and
then refit (``sweeplr.crossval``) -- then evaluates every model on every split. Writing records and talking to Hydra or Optuna happen
above this module; a callback per configuration is the only way in while training runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sweeplr.crossval import CrossValidated, cross_validate
from sweeplr.fitting import DeviceData, Member, resolve_device, train_members
from sweeplr.model import LogisticRegression
from sweeplr.schema import COMPLETED, DIVERGED, SPLITS
from sweeplr.spec import RunSpec, batch_key, data_key
from sweeplr.training import LogCallback, Trained, evaluate_models

__all__ = ["DeviceData", "Outcome", "batch_key", "data_key", "resolve_device", "train_runs"]

SMALL_DATA_ELEMENTS = 1 << 20  # below this many training values, one CPU thread is fastest


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
    cv: dict[str, Any] | None = None  # cross-validation: folds, and each val metric's std

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


def train_runs(
    specs: Sequence[RunSpec],
    on_logs: Sequence[LogCallback | None] | None = None,
    data: DeviceData | None = None,
) -> list[Outcome]:
    """Train specs that share a :func:`batch_key` in one pass; evaluate each on every split.

    ``on_logs[k]`` is called at every logged epoch of configuration k as ``(epoch, train_loss,
    val_loss, val_accuracy)`` and may return True to stop it (status ``pruned``); with ``cv``
    it sees the means over the configuration's folds. ``data`` is the specs' data set when the
    caller has it loaded already.
    """
    if len({batch_key(s) for s in specs}) != 1:
        raise ValueError("train_runs needs specs with one batch_key")
    base = specs[0]
    callbacks = list(on_logs or [None] * len(specs))
    data = data or DeviceData.load(base, configs=len(specs))
    started = time.perf_counter()  # the pass: training and evaluation, not data loading
    threads = torch.get_num_threads()
    if data.device.type == "cpu" and data.train[0].numel() < SMALL_DATA_ELEMENTS:
        # Thread start-up and hand-off cost far more than the arithmetic on small data:
        # measured 2 ms/epoch with 2 threads against 0.3 ms with one on blobs. Given back
        # after: the caller's process (a notebook, the next group) keeps its own setting.
        torch.set_num_threads(1)
    try:
        outcomes = _train_and_evaluate(specs, data, callbacks)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - started
    for outcome in outcomes:
        outcome.wall_seconds = wall / len(specs)
        outcome.batch_wall_seconds = wall
    return outcomes


def _train_and_evaluate(
    specs: Sequence[RunSpec], data: DeviceData, callbacks: Sequence[LogCallback | None]
) -> list[Outcome]:
    """The pass itself. Evaluated before the caller gives the threads back: on small data a
    second thread's hand-off costs more than the arithmetic here too."""
    if specs[0].cv is not None:
        folded = cross_validate(specs, data, callbacks)
        outcomes = _evaluated(specs, [result.trained for result in folded], data)
        for outcome, result in zip(outcomes, folded, strict=True):
            _with_folds(outcome, result)
        return outcomes
    trained = train_members([Member(spec) for spec in specs], data, callbacks)
    return _evaluated(specs, trained, data)


def _evaluated(
    specs: Sequence[RunSpec], results: Sequence[Trained], data: DeviceData
) -> list[Outcome]:
    """``results`` with their metrics on every split (none for a diverged model), the models of
    a pass evaluated together."""
    fine = [i for i, result in enumerate(results) if result.status != DIVERGED]
    metrics: list[dict[str, Any]] = [{} for _ in results]
    for name, (X, y) in zip(SPLITS, (data.train, data.val, data.test), strict=True):
        for i, scores in zip(
            fine, evaluate_models([results[i].model for i in fine], X, y), strict=True
        ):
            metrics[i][name] = scores
    outcomes = []
    for spec, result, split_metrics in zip(specs, results, metrics, strict=True):
        if result.status == DIVERGED:
            split_metrics = {name: _no_metrics() for name in SPLITS}
        outcomes.append(
            Outcome(
                spec,
                result.status,
                result.epochs_run,
                result.diverged_epoch,
                result.history,
                split_metrics,
                result.model,
                data,
                wall_seconds=0.0,
                batch_configs=len(specs),
                batch_wall_seconds=0.0,
                best_epoch=result.best_epoch,
            )
        )
    return outcomes


def _with_folds(outcome: Outcome, result: CrossValidated) -> None:
    """A cross-validated configuration: validation metrics are its folds' means; train and
    test metrics its refit model's (none when it was pruned or diverged: nothing was refit)."""
    if result.trained.status != COMPLETED:
        outcome.metrics["train"] = outcome.metrics["test"] = _no_metrics()
    if result.trained.status != DIVERGED:  # (diverged, in a fold or the refit: no metrics)
        outcome.metrics["val"] = result.val
    outcome.cv = {"folds": result.folds, "val_std": result.std}


def _no_metrics() -> dict[str, float | None]:
    """Metrics of a diverged model: all missing, rather than numbers computed from NaN weights."""
    return {"loss": None, "accuracy": None, "roc_auc": None, "f1": None}
