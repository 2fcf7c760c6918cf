"""TensorBoard event files for one run: its history as scalars, its hyperparameters as hparams.

Written with torch's own ``SummaryWriter`` (it needs the ``tensorboard`` package, the extra of
the same name). The hparams summaries go into the same event file as the scalars, not into the
timestamped subfolder ``SummaryWriter.add_hparams`` makes, so one run is one folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplr.trackers.logged import final_metrics, series

FINAL_PREFIX = "final/"  # the hparams metrics: last values, apart from the per-epoch curves


def write_events(
    log_dir: Path, record: Mapping[str, Any], history: Mapping[str, list[Any]]
) -> Path:
    """Write ``log_dir``'s event file: per-epoch scalars, then hparams with the final metrics."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    curves = series(history)
    last_epoch = int(record.get("epochs_run") or 0)
    final = {FINAL_PREFIX + k: v for k, v in final_metrics(record).items()}
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for column, points in curves.items():
            for epoch, value in points:
                writer.add_scalar(column, value, epoch)
        experiment, start, end = hparams(hparam_values(record), final)
        file_writer = writer._get_file_writer()  # the same file as the scalars
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for tag, value in final.items():  # the HPARAMS tab reads a metric from its scalar
            writer.add_scalar(tag, value, last_epoch)
    return log_dir


def hparam_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters as TensorBoard takes them: numbers, strings, booleans (None shown)."""
    values: dict[str, Any] = {}
    for name, value in record.get("hyperparameters", {}).items():
        values[name] = value if isinstance(value, bool | int | float | str) else str(value)
    values["status"] = str(record.get("status"))
    return values
