"""The numbers a tracker logs from a run's record and history, whichever the tracker."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# history columns sent as per-epoch metrics (``epoch`` is their step)
SERIES = ("train_loss", "val_loss", "val_accuracy", "lr")


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``{"test_accuracy": 0.97, ...}``: the record's finite metrics of every split."""
    values = {}
    for split, metrics in record.get("metrics", {}).items():
        for metric, value in metrics.items():
            if is_number(value):
                values[f"{split}_{metric}"] = float(value)
    return values


def series(history: Mapping[str, list[Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each logged column's finite ``(epoch, value)`` pairs (a diverged epoch's NaN is left out)."""
    epochs = [int(e) for e in history.get("epoch", [])]
    out = {}
    for column in SERIES:
        values = history.get(column)
        if values is not None:
            out[column] = [
                (e, float(v)) for e, v in zip(epochs, values, strict=True) if is_number(v)
            ]
    return out


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
