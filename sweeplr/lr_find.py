"""An lr finder that trains every lr. No Hydra.

:func:`find_lr` trains a log-spaced range of learning rates, each its own configuration of one
batched pass with the same data, initial weights and budget, and suggests the lr whose run
ended with the lowest loss. Unlike Lightning's ``Tuner.lr_find`` and fastai's ``lr_find``, which
raise the lr step by step inside one run, no point of the curve inherits the training state of
the smaller lrs before it: each point is what that lr does from the start.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sweeplr.errors import SweeplrError
from sweeplr.records import atomic_write_text, require_writable
from sweeplr.schema import COMPLETED, DIVERGED
from sweeplr.spec import EarlyStoppingSpec, RunSpec

CSV_FILE = "lr_find.csv"
PICTURE_FILE = "lr_find.png"
COLUMNS = ("lr", "status", "loss", "train_loss", "val_loss", "val_accuracy", "diverged_epoch")


@dataclass
class LrFinding:
    """What each lr did with the budget, and the lr it suggests."""

    rows: list[dict[str, float | int | str | None]]  # one per lr, by COLUMNS
    metric: str  # what ``loss`` is: val_loss, or train_loss without a validation split
    epochs: int
    suggestion: float | None  # None when every lr diverged

    @property
    def diverged(self) -> int:
        return sum(row["status"] == DIVERGED for row in self.rows)


def lr_range(min_lr: float, max_lr: float, num: int) -> list[float]:
    """``num`` learning rates spaced evenly on a log scale, ``min_lr`` to ``max_lr`` inclusive."""
    if not (math.isfinite(min_lr) and math.isfinite(max_lr) and 0 < min_lr < max_lr):
        raise SweeplrError(
            f"lr range {min_lr:g}..{max_lr:g} is empty; allowed: 0 < --min-lr < --max-lr"
        )
    if num < 2:
        raise SweeplrError(f"--num={num} is too few; allowed: an integer >= 2")
    return [float(lr) for lr in np.geomspace(min_lr, max_lr, num)]


def check_budget(epochs: int) -> None:
    """Each lr's epochs, ``--epochs``: at least one."""
    if epochs < 1:
        raise SweeplrError(f"--epochs={epochs} is invalid; allowed: an integer >= 1")


def check_out_dir(out_dir: Path, shown: str) -> None:
    """``out_dir`` (``--out``, ``shown`` as typed) can take a finding: checked before the
    lrs train, so a finding is never trained only to be lost."""
    if (out_dir / CSV_FILE).exists():
        raise SweeplrError(f"{out_dir} already holds {CSV_FILE}; allowed: a new --out directory")
    require_writable("--out", shown, out_dir)


def find_lr(spec: RunSpec, lrs: list[float], epochs: int) -> LrFinding:
    """Train ``spec`` once for every lr in ``lrs`` (one batched pass), ``epochs`` epochs each.

    The schedule of ``spec`` applies to each lr; early stopping does not (every lr gets the
    same budget). The suggestion is the lr with the lowest final validation loss (training loss
    without a validation split) among the runs that did not diverge.
    """
    from sweeplr.runner import train_runs  # torch: only when the finder runs

    check_budget(epochs)
    if spec.optimizer.name == "lbfgs":
        raise SweeplrError(
            "sweeplr lr-find does not apply to optimizer=lbfgs: its line search chooses every "
            "step (lr only scales the first); allowed: optimizer=sgd, adam or adamw"
        )
    no_stopping = EarlyStoppingSpec()
    specs = [replace(spec, lr=lr, epochs=epochs, early_stopping=no_stopping) for lr in lrs]
    outcomes = train_runs(specs)
    # with cv the folds' mean validation loss (there is no fixed validation part)
    has_val = outcomes[0].data.splits.y_val.size or spec.cv is not None
    metric = "val_loss" if has_val else "train_loss"
    split_name = metric.split("_")[0]
    rows: list[dict[str, float | int | str | None]] = []
    finished: list[tuple[float, float]] = []  # (loss, lr) of the lrs that completed
    for lr, outcome in zip(lrs, outcomes, strict=True):
        metrics = outcome.metrics
        loss = metrics[split_name]["loss"]
        if outcome.status == COMPLETED and loss is not None:
            finished.append((loss, lr))
        rows.append(
            {
                "lr": lr,
                "status": outcome.status,
                "loss": loss,
                "train_loss": metrics["train"]["loss"],
                "val_loss": metrics["val"]["loss"],
                "val_accuracy": metrics["val"]["accuracy"],
                "diverged_epoch": outcome.diverged_epoch,
            }
        )
    best = min(finished, key=lambda f: f[0], default=None)  # the smaller lr on a tie
    suggestion = None if best is None else float(best[1])
    return LrFinding(rows, metric, epochs, suggestion)


def write_finding(finding: LrFinding, out_dir: Path, title: str) -> tuple[Path, Path]:
    """``lr_find.csv`` and ``lr_find.png`` in ``out_dir``, which must not hold a finding yet."""
    from sweeplr.plots import plot_lr_find  # matplotlib: only to draw

    out_dir = Path(out_dir)
    check_out_dir(out_dir, str(out_dir))
    lines: list[list[object]] = [list(COLUMNS)]
    for row in finding.rows:
        lines.append(["" if row[c] is None else row[c] for c in COLUMNS])
    table = _csv_text(lines)
    ylabel = f"{finding.metric} after {finding.epochs} epochs"
    try:
        csv_path = atomic_write_text(out_dir / CSV_FILE, table)
        picture = plot_lr_find(
            finding.rows, finding.suggestion, ylabel, out_dir / PICTURE_FILE, title
        )
    except OSError as exc:  # a disk that fills or a folder that vanished since the check
        raise SweeplrError(f"could not write in {out_dir}: {exc.strerror or exc}") from None
    return csv_path, picture


def _csv_text(lines: list[list[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()
