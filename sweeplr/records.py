"""The run record: ``metrics.json``, ``history.csv`` and ``model.pt`` in a run's directory.

This module is the record's schema: :func:`write_run` lays out a trained run's record,
:func:`write_failure` a failed job's, :func:`read_metrics` reads one back. Every file is
written to a temporary name in the same directory and renamed into place, ``metrics.json``
last, so a reader (the summary table, a crashed sweep's resume) sees a whole record or none.
Imports no torch until a model is saved or loaded.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sweeplr import __version__
from sweeplr.errors import SweeplrError, first_line
from sweeplr.schema import FAILED

if TYPE_CHECKING:
    from sweeplr.runner import Outcome

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.pt"
SCHEMA_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a record should be as readable as any file the user writes.
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    text = json.dumps(json_safe({"schema": SCHEMA_VERSION, **record}), indent=2, allow_nan=False)
    return atomic_write_text(Path(run_dir) / METRICS_FILE, text + "\n")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json``; a one-line error if it is absent or unreadable."""
    path = Path(run_dir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SweeplrError(f"{path} does not exist; allowed: a run directory") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweeplrError(f"{path} is corrupt: {exc}") from exc


def write_history(run_dir: str | Path, columns: Mapping[str, list[float] | list[int]]) -> Path:
    """One CSV row per logged epoch; columns in the order given."""
    names = list(columns)
    lines = [",".join(names)]
    for row in zip(*(columns[n] for n in names), strict=True):
        lines.append(",".join("" if v is None or math.isnan(v) else repr(v) for v in row))
    return atomic_write_text(Path(run_dir) / HISTORY_FILE, "\n".join(lines) + "\n")


def save_model(run_dir: str | Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` of plain tensors, numbers, strings, lists and dicts (loads weights_only)."""
    import torch  # here: the tables and pictures that only read records need no torch

    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return atomic_write(Path(run_dir) / MODEL_FILE, lambda handle: handle.write(buffer.getvalue()))


def load_model_payload(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise SweeplrError(f"{path} does not exist; allowed: a run directory holding {MODEL_FILE}")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise SweeplrError(f"{path} could not be loaded: {first_line(exc)}") from exc


def run_record(outcome: Outcome, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` of a trained run; ``extra`` adds the job's fields (job, trial...)."""
    spec, splits = outcome.spec, outcome.data.splits
    return {
        "status": outcome.status,
        "epochs_run": outcome.epochs_run,
        "diverged_epoch": outcome.diverged_epoch,
        "best_epoch": outcome.best_epoch,
        "wall_seconds": round(outcome.wall_seconds, 4),
        "seed": spec.seed,
        "hyperparameters": spec.hyperparameters(),
        "metrics": outcome.metrics,
        "objective": {
            "name": spec.objective,
            "direction": spec.direction,
            "value": outcome.objective_value,
        },
        "data": {
            "n_train": len(splits.y_train),
            "n_val": len(splits.y_val),
            "n_test": len(splits.y_test),
            "n_features": splits.n_features,
            "class_names": list(splits.class_names),
        },
        "device": str(outcome.data.device),
        "sweeplr_version": __version__,
        "batch": {
            "configs": outcome.batch_configs,
            "wall_seconds": round(outcome.batch_wall_seconds, 4),
        },
        **extra,
    }


def write_run(
    run_dir: str | Path, outcome: Outcome, config: Any, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Write a trained run's whole record into ``run_dir``; returns ``metrics.json``'s content.

    ``config`` is the run's composed config as plain data, kept in ``model.pt`` so the model can
    be rebuilt and its data set reloaded later.
    """
    import torch  # here: the tables and pictures that only read records need no torch

    data = outcome.data
    splits = data.splits
    write_history(run_dir, outcome.history)
    save_model(
        run_dir,
        {
            "state_dict": {k: v.detach().cpu() for k, v in outcome.model.state_dict().items()},
            "n_features": splits.n_features,
            "n_classes": splits.n_classes,
            "class_names": list(splits.class_names),
            "feature_names": list(splits.feature_names),
            "scaler_mean": torch.from_numpy(data.scaler.mean),
            "scaler_scale": torch.from_numpy(data.scaler.scale),
            "status": outcome.status,
            "config": config,
            "sweeplr_version": __version__,
        },
    )
    record = run_record(outcome, extra)
    write_metrics(run_dir, record)  # last: its presence means the whole record is there
    return record


def write_failure(run_dir: str | Path, error: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Record a job that raised, unless the run already wrote a record of its own."""
    record = {"status": FAILED, "error": error, "sweeplr_version": __version__, **extra}
    path = Path(run_dir) / METRICS_FILE
    if path.exists():  # never overwrite a record
        return read_metrics(run_dir)
    write_metrics(run_dir, record)
    return record
