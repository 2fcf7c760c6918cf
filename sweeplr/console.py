"""What a run prints: the report block of a single run, one line per job of a sweep, progress.

Reads records only (a ``metrics.json`` as a dict), so ``sweeplr show`` can print a finished
run's block again without torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from sweeplr.schema import METRICS, SPLITS


def format_report(record: Mapping[str, Any], run_dir: str | Path) -> str:
    """The short block printed at the end of a single run."""
    hp = record["hyperparameters"]
    data = record["data"]
    diverged = record.get("diverged_epoch")
    best = record.get("best_epoch")
    schedule = hp.get("scheduler", "constant")
    lines = [
        f"sweeplr: {record['status']} after {record['epochs_run']} epochs in "
        f"{record['wall_seconds']:.2f} s"
        + (f" (loss non-finite at epoch {diverged})" if diverged else "")
        + (f" (early stopping: best epoch {best})" if best else ""),
        (
            f"  {hp['dataset']} ({data['n_train']} train / {data['n_val']} val / "
            f"{data['n_test']} test rows), {hp['optimizer']} lr={hp['lr']:g}"
            + ("" if schedule == "constant" else f" ({schedule})")
            + f", seed={record['seed']}"
        ),
        f"  {'split':<6}" + "".join(f"{name:>10}" for name in METRICS),
    ]

    def cell(value: float | None) -> str:
        return f"{value:>10.4f}" if value is not None else f"{'-':>10}"

    for name in SPLITS:
        values = record["metrics"][name]
        lines.append(f"  {name:<6}" + "".join(cell(values[m]) for m in METRICS))
    objective = record["objective"]
    value = "-" if objective["value"] is None else f"{objective['value']:.6g}"
    lines.append(f"  objective {objective['name']} = {value} ({objective['direction']})")
    lines.append(f"  record: {Path(run_dir).resolve()}")
    return "\n".join(lines)


def job_line(record: Mapping[str, Any], job_num: Any, overrides: Sequence[str]) -> str:
    """One line per job of a sweep: its status, objective and overrides."""
    objective = record["objective"]
    return (
        f"[job {job_num}] {record['status']} {objective['name']}={objective['value']} "
        f"({' '.join(overrides)})"
    )


def progress_printer(epochs: int, stream: TextIO | None = None) -> Any:
    """A one-line progress display for a terminal, refreshed at most every 0.2 s."""
    out = stream or sys.stderr
    last = [0.0]

    def show(epoch: int, train_loss: float, val_loss: float, val_accuracy: float) -> bool:
        now = time.monotonic()
        if now - last[0] >= 0.2 or epoch == epochs:
            last[0] = now
            out.write(
                f"\repoch {epoch}/{epochs}  train loss {train_loss:.4f}  "
                f"val loss {val_loss:.4f}  val acc {val_accuracy:.3f}"
            )
            if epoch == epochs:
                out.write("\n")
            out.flush()
        return False

    return show
