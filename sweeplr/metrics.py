"""Classification metrics of one split, computed from class probabilities.

Written with numpy rather than scikit-learn's metric functions: these run for every split of
every run of a sweep, and sklearn's input validation costs more a call than training a blobs
run takes (bench/README.md). ``tests/test_metrics.py`` checks them against scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("loss", "accuracy", "roc_auc", "f1")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(starts_group) - 1]
    return ranks


def binary_roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None if one class only."""
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(score)
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_scores(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class F1 (0 where a class is neither present nor predicted)."""
    counts = np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes)
    confusion = counts.reshape(n_classes, n_classes)
    tp = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2TP + FP + FN
    return np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)


def classification_metrics(
    proba: np.ndarray, y: np.ndarray, loss: float
) -> dict[str, float | None]:
    """Loss (as computed by the model on logits), accuracy, ROC AUC and F1 (macro if C > 2).

    ROC AUC is one-vs-rest macro for C > 2, as scikit-learn's ``multi_class="ovr"``. A metric
    that is undefined on this split (ROC AUC with one class present) or non-finite (a diverged
    model) is ``None``, which JSON and pandas both carry as missing.
    """
    if len(y) == 0:
        return dict.fromkeys(METRIC_NAMES)
    n_classes = proba.shape[1]
    out: dict[str, float | None] = {"loss": loss if math.isfinite(loss) else None}
    if not np.isfinite(proba).all():
        return out | {"accuracy": None, "roc_auc": None, "f1": None}
    predicted = proba.argmax(axis=1)
    out["accuracy"] = float((predicted == y).mean())
    if n_classes == 2:
        out["roc_auc"] = binary_roc_auc(y == 1, proba[:, 1])
        out["f1"] = float(f1_scores(y, predicted, 2)[1])
    else:
        per_class = [binary_roc_auc(y == c, proba[:, c]) for c in range(n_classes)]
        defined = [score for score in per_class if score is not None]
        out["roc_auc"] = float(np.mean(defined)) if len(defined) == n_classes else None
        out["f1"] = float(f1_scores(y, predicted, n_classes).mean())
    return out


def average_ranks_rows(values: np.ndarray) -> np.ndarray:
    """:func:`average_ranks` of every row of ``values`` [K, n] at once."""
    k, n = values.shape
    order = np.argsort(values, axis=1, kind="mergesort")
    ordered = np.take_along_axis(values, order, axis=1)
    starts_group = np.ones((k, n), dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    flat = starts_group.ravel()  # a group never spans two rows: each row starts one
    starts = np.flatnonzero(flat)
    ends = np.r_[starts[1:], k * n]
    first = starts - (starts // n) * n  # positions within the row
    average = (first + (ends - (starts // n) * n) + 1) / 2
    ranks = np.empty((k, n))
    np.put_along_axis(ranks, order, average[np.cumsum(flat) - 1].reshape(k, n), axis=1)
    return ranks


def binary_roc_auc_rows(is_positive: np.ndarray, scores: np.ndarray) -> list[float | None]:
    """:func:`binary_roc_auc` of one labelling against every row of ``scores`` [K, n]."""
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return [None] * len(scores)
    ranks = average_ranks_rows(scores)
    auc = (ranks[:, is_positive].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return [float(a) for a in auc]


def classification_metrics_rows(
    proba: np.ndarray, y: np.ndarray, losses: Sequence[float]
) -> list[dict[str, float | None]]:
    """:func:`classification_metrics` of K models' probabilities [K, n, C] on one split, the
    same numbers computed for all of them at once (a sweep evaluates thousands)."""
    k, n, n_classes = proba.shape
    if n == 0:
        return [dict.fromkeys(METRIC_NAMES) for _ in range(k)]
    finite = np.isfinite(proba).all(axis=(1, 2))
    out: list[dict[str, float | None]] = [
        {"loss": loss if math.isfinite(loss) else None} for loss in losses
    ]
    rows = np.flatnonzero(finite)
    for i in np.flatnonzero(~finite):
        out[i] |= {"accuracy": None, "roc_auc": None, "f1": None}
    if len(rows) == 0:
        return out
    proba = proba[rows]
    predicted = proba.argmax(axis=2)
    accuracy = (predicted == y).mean(axis=1)
    # Per-class true positives and 2TP + FP + FN, for each model.
    hits = predicted == y
    classes = np.arange(n_classes)
    tp = ((predicted[:, :, None] == classes) & hits[:, :, None]).sum(axis=1).astype(np.float64)
    in_pred = (predicted[:, :, None] == classes).sum(axis=1)
    in_true = np.bincount(y, minlength=n_classes)
    denominator = in_pred + in_true
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if n_classes == 2:
        aucs = binary_roc_auc_rows(y == 1, proba[:, :, 1])
        f1_values = f1[:, 1]
    else:
        per_class = [binary_roc_auc_rows(y == c, proba[:, :, c]) for c in range(n_classes)]
        aucs = [
            None
            if any(p[i] is None for p in per_class)
            else float(np.mean([p[i] for p in per_class]))
            for i in range(len(rows))
        ]
        f1_values = f1.mean(axis=1)
    for j, i in enumerate(rows):
        out[i] |= {
            "accuracy": float(accuracy[j]),
            "roc_auc": aucs[j],
            "f1": float(f1_values[j]),
        }
    return out
