"""Classification metrics of one split, computed from class probabilities."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

METRIC_NAMES = ("loss", "accuracy", "roc_auc", "f1")


def classification_metrics(
    proba: np.ndarray, y: np.ndarray, loss: float
) -> dict[str, float | None]:
    """Loss (as computed by the model on logits), accuracy, ROC AUC and F1 (macro if C > 2).

    A metric that is undefined on this split (ROC AUC with one class present) or non-finite
    (a diverged model) is ``None``, which JSON and pandas both carry as missing.
    """
    if len(y) == 0:
        return dict.fromkeys(METRIC_NAMES)
    n_classes = proba.shape[1]
    finite = bool(np.isfinite(proba).all())
    out: dict[str, float | None] = {"loss": loss if math.isfinite(loss) else None}
    if not finite:
        return out | {"accuracy": None, "roc_auc": None, "f1": None}
    predicted = proba.argmax(axis=1)
    out["accuracy"] = float((predicted == y).mean())
    labels = np.arange(n_classes)
    present = np.unique(y)
    if len(present) < 2:
        out["roc_auc"] = None
    elif n_classes == 2:
        out["roc_auc"] = float(roc_auc_score(y, proba[:, 1]))
    elif len(present) == n_classes:
        # Renormalise in float64: float32 softmax rows may sum to 1 +- 1e-7, which sklearn rejects.
        p = proba.astype(np.float64)
        out["roc_auc"] = float(
            roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr", labels=labels)
        )
    else:
        out["roc_auc"] = None
    average = "binary" if n_classes == 2 else "macro"
    out["f1"] = float(f1_score(y, predicted, average=average, labels=labels, zero_division=0))
    return out
