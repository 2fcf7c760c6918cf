"""k-fold cross-validation as a batch dimension. No Hydra.

``cv=K`` cuts the training part into K stratified folds (scikit-learn's ``StratifiedKFold``).
Every configuration becomes K members of one training pass -- the folds share X and differ only
by which rows count -- and each member is validated on its held-out fold. A configuration's
validation metrics are the means over its folds (their standard deviations go into the record),
and its final model is refit on the whole training part with the same settings, as
``LogisticRegressionCV(refit=True)`` does, before its train and test metrics are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sweeplr.data import stratified_folds
from sweeplr.fitting import DeviceData, Member, train_members
from sweeplr.schema import COMPLETED, DIVERGED, METRICS, PRUNED
from sweeplr.spec import RunSpec
from sweeplr.training import HISTORY_COLUMNS, LogCallback, Trained, evaluate


@dataclass
class CrossValidated:
    """A configuration after cross-validation.

    ``trained`` is the refit model (a pruned or diverged configuration has none to refit: then
    its first stopped fold's); ``val`` the fold means of the validation metrics, ``std`` their
    standard deviations (``numpy.std``, as scikit-learn's ``cv_results_``).
    """

    trained: Trained
    val: dict[str, float | None]
    std: dict[str, float | None]
    folds: int


def cross_validate(
    specs: Sequence[RunSpec], data: DeviceData, on_logs: Sequence[LogCallback | None]
) -> list[CrossValidated]:
    """Train ``specs`` (one batch key, ``cv`` folds) on their folds in one pass, then refit
    the completed ones on the whole training part in a second pass."""
    n_folds = specs[0].cv
    assert n_folds is not None
    X, y = data.train
    fold_of_row = stratified_folds(data.splits.y_train, n_folds)
    members = [Member(spec, fold_of_row != f) for spec in specs for f in range(n_folds)]
    groups = [range(i * n_folds, (i + 1) * n_folds) for i in range(len(specs))]
    fold_runs = train_members(members, data, on_logs, groups)
    results: list[CrossValidated] = []
    to_refit: list[int] = []
    for i, group in enumerate(groups):
        runs = [fold_runs[m] for m in group]
        statuses = {run.status for run in runs}
        status = DIVERGED if DIVERGED in statuses else PRUNED if PRUNED in statuses else COMPLETED
        if status == DIVERGED:
            scores = [dict.fromkeys(METRICS)]
        else:
            scores = []
            for m in group:
                held = torch.from_numpy(members[m].held_out).to(X.device)
                scores.append(evaluate(fold_runs[m].model, X[held], y[held]))
        val, std = _mean_and_std(scores)
        first = next((run for run in runs if run.status == status), runs[0])
        results.append(CrossValidated(_fold_mean(runs, first, status), val, std, n_folds))
        if status == COMPLETED:
            to_refit.append(i)
    if to_refit:
        refits = train_members([Member(specs[i]) for i in to_refit], data, [None] * len(to_refit))
        for i, refit in zip(to_refit, refits, strict=True):
            refit.history = results[i].trained.history  # the folds' curves: what was validated
            results[i].trained = refit  # (a refit that diverged makes the configuration so)
    return results


def _mean_and_std(
    scores: Sequence[dict[str, float | None]],
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for metric in METRICS:
        values = [s[metric] for s in scores]
        numbers = [v for v in values if v is not None]
        if len(numbers) < len(values):  # e.g. ROC AUC of a fold holding one class
            mean[metric] = std[metric] = None
            continue
        mean[metric] = float(np.mean(numbers))
        std[metric] = float(np.std(numbers))
    return mean, std


def _fold_mean(runs: Sequence[Trained], first: Trained, status: str) -> Trained:
    """One configuration's folds as one run: the mean of their logged curves, epoch by epoch.

    The folds of a configuration stop together (a pruner stops them all; a diverged fold makes
    the configuration diverged), so their logged epochs agree up to the first one's stop.
    """
    length = min(len(run.history["epoch"]) for run in runs)
    history = {"epoch": first.history["epoch"][:length]}
    for column in HISTORY_COLUMNS[1:]:
        history[column] = [
            float(np.mean([run.history[column][t] for run in runs])) for t in range(length)
        ]
    return Trained(
        first.model,
        status,
        first.epochs_run,
        first.diverged_epoch,
        history,
        first.best_epoch,
    )
