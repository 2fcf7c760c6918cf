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
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from sweeplr import __version__
from sweeplr.errors import SweeplrError, first_line
from sweeplr.schema import COMPLETED, FAILED

if TYPE_CHECKING:
    from sweeplr.runner import Outcome

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.pt"
JOB_RETURN_FILE = "job_return.json"  # what a sweep's job returned: its trial's value, on resume
SUPERSEDED_FILE = "superseded.json"  # a killed trial's folder, whose trial was run again
# A sweep's command line as its process got it, for its report: Hydra's own files keep the
# task's and Hydra's overrides apart, so the order they were typed in is kept only here.
COMMAND_FILE = "command.json"
# A grid's planned jobs, each one's overrides by job number: its summary lists those not run.
PLANNED_JOBS_FILE = "jobs.json"
SCHEMA_VERSION = 1


class _OneSync:
    """Inside `one_sync`: the paths written, made durable together when the block ends."""

    active = False
    paths: ClassVar[list[Path]] = []


@contextmanager
def one_sync() -> Iterator[None]:
    """Files that `atomic_write` writes in the block are made durable by one sync at its end.

    A sweep's job writes three or four files; an fsync each is 2-4 ms on this machine's disk,
    more than a short trial's training. The batched launcher runs a launch's jobs in this block
    and returns (and the sweeper tells the study) only after the sync, so nothing the study is
    told rests on a file not yet on disk; a crash inside the block loses only untold trials,
    which a resume runs again. Each file is still written whole and renamed into place.
    """
    if _OneSync.active:
        yield
        return
    _OneSync.active, _OneSync.paths = True, []
    try:
        yield
    finally:
        paths, _OneSync.active, _OneSync.paths = _OneSync.paths, False, []
        if paths and hasattr(os, "sync"):
            os.sync()  # one flush of every file system: cheaper than an fsync per file
        else:
            for path in paths:  # no sync() on Windows
                _fsync_path(path)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDWR)  # Windows commits only a handle open for writing
    except OSError:  # replaced or removed since: its newer writer synced it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nearest_existing(path: str | Path) -> Path:
    """``path`` made absolute, or its nearest ancestor that exists: where writing it would
    begin. Checking that folder tells whether ``path`` can be made without creating anything."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def require_writable(key: str, value: str, folder: str | Path) -> None:
    """One line naming ``key=value`` when ``folder`` cannot be made and written; nothing is
    created here. Checked before the work whose result would go there."""
    probe = nearest_existing(folder)
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return
    reason = "not a directory" if not probe.is_dir() else "no permission to write"
    raise SweeplrError(
        f"{key}={value} cannot be written ({probe}: {reason}); allowed: a place you can write"
    )


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    Inside `one_sync` the fsync waits for the block's end."""
    path = Path(path)
    # A name no other writer picks, created exclusively; mode 0666 less the umask, as any
    # file the user writes (mkstemp's 0600 would hide records from a group's readers).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:  # the folder first (a sweep's job writes three files into one)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if not _OneSync.active:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if _OneSync.active:
            _OneSync.paths.append(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def read_yaml(path: str | Path) -> Any:
    """A YAML file of a run or config (``.hydra/*.yaml``), or None when it cannot be read or
    parsed. By libyaml's parser where PyYAML has it: a sweep's report reads thousands of these,
    and the pure-Python one took 2.5 minutes for 10,000 runs."""
    import yaml  # (here: most commands never read one)

    try:
        return yaml.load(
            Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def indented_json(value: Any, level: int = 0) -> str:
    """``json.dumps(json_safe(value), indent=2, allow_nan=False)``, byte for byte (tested).

    Written out because with ``indent`` the standard library encodes in pure Python, and slowly:
    0.5 ms a record here, and a sweep's every job writes one (bench/README.md). Scalars are
    spelt as its encoder spells them."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value) if math.isfinite(value) else "null"
    if isinstance(value, Mapping | list | tuple):
        if not value:
            return "{}" if isinstance(value, Mapping) else "[]"
        inner = "\n" + "  " * (level + 1)
        if isinstance(value, Mapping):
            items = [
                f"{encode_basestring_ascii(str(k))}: {indented_json(v, level + 1)}"
                for k, v in value.items()
            ]
            return "{" + inner + ("," + inner).join(items) + "\n" + "  " * level + "}"
        items = [indented_json(v, level + 1) for v in value]
        return "[" + inner + ("," + inner).join(items) + "\n" + "  " * level + "]"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> Path:
    text = indented_json({"schema": SCHEMA_VERSION, **record})
    return atomic_write_text(Path(run_dir) / METRICS_FILE, text + "\n")


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json``; a one-line error if it is absent, unreadable or no record."""
    path = Path(run_dir) / METRICS_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SweeplrError(f"{path} does not exist; allowed: a run directory") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweeplrError(f"{path} is corrupt: {first_line(exc)}") from exc
    except OSError as exc:  # a symlink loop, a directory, no permission...
        raise SweeplrError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    problem = record_problem(record, complete=True)
    if problem:
        raise SweeplrError(f"{path} is not a run record: {problem}")
    return record


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def record_problem(record: Any, complete: bool = False) -> str | None:
    """What makes ``record`` no ``metrics.json`` of this schema (valid JSON or not), or None.

    A failed job's record holds its status and error only; a trained run's all that the
    summary reads (``complete``: and all that ``sweeplr show`` prints).
    """
    if not isinstance(record, dict):
        return "not an object"
    if not isinstance(record.get("status"), str):
        return "no status"
    if record["status"] == FAILED:
        return None if isinstance(record.get("error"), str) else "a failure without an error"
    checks = {
        "metrics": lambda m: (
            isinstance(m, dict)
            and all(
                isinstance(m.get(s), dict) and all(_number(v) for v in m[s].values())
                for s in ("train", "val", "test")
            )
        ),
        "objective": lambda o: (
            isinstance(o, dict)
            and _number(o.get("value"))
            and isinstance(o.get("name"), str)
            and o.get("direction") in ("minimize", "maximize")
        ),
        "hyperparameters": lambda h: isinstance(h, dict),
        "epochs_run": lambda e: isinstance(e, int) and not isinstance(e, bool),
        "wall_seconds": _number,
    }
    if complete:  # what `sweeplr show` prints besides
        checks["data"] = lambda d: (
            isinstance(d, dict) and all(k in d for k in ("n_train", "n_val", "n_test"))
        )
    for key, ok in checks.items():
        if key not in record or not ok(record[key]):
            return f"its {key!r} is missing or of the wrong type"
    for key, kind in (("overrides", list), ("trial", dict), ("job", dict)):
        if key in record and not isinstance(record[key], kind):
            return f"its {key!r} is of the wrong type"
    return None


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
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise SweeplrError(f"{path} could not be loaded: {first_line(exc)}") from exc
    if not isinstance(payload, dict):  # a list or a tensor loads safely too
        raise SweeplrError(
            f"{path} is not a sweeplr model (a {type(payload).__name__}, not a dict); "
            "allowed: a run's model.pt"
        )
    return payload


def kept_best_epoch(outcome: Outcome) -> int | None:
    """Early stopping's best checked epoch when the run kept its weights, else None.

    A run keeps them when it completes with ``early_stopping.restore_best`` (stopped early or
    not); with ``restore_best=false``, or pruned, it ends with its last epoch's weights, and a
    ``best_epoch`` beside them would name weights the run does not hold."""
    restored = outcome.status == COMPLETED and outcome.spec.early_stopping.restore_best
    return outcome.best_epoch if restored else None


def run_record(outcome: Outcome, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` of a trained run; ``extra`` adds the job's fields (job, trial...)."""
    spec, splits = outcome.spec, outcome.data.splits
    return {
        "status": outcome.status,
        "epochs_run": outcome.epochs_run,
        "diverged_epoch": outcome.diverged_epoch,
        "best_epoch": kept_best_epoch(outcome),
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
        **({"cv": outcome.cv} if outcome.cv is not None else {}),
        **({"weights": _sparsity(outcome)} if spec.penalty.l1_ratio > 0 else {}),
        **extra,
    }


def _sparsity(outcome: Outcome) -> dict[str, int]:
    """How many of the model's weights (the bias aside) an L1 penalty set exactly to zero."""
    weight = outcome.model.linear.weight
    return {"count": weight.numel(), "zero": int((weight == 0).sum())}


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


def write_job_return(run_dir: str | Path, value: Any) -> Path | None:
    """Keep what a job returned beside its run, so a resume can tell its trial even when the
    process that ran it died before the sweeper did. None when the value is not numbers."""
    try:
        numbers = [float(v) for v in value] if isinstance(value, list | tuple) else float(value)
    except (TypeError, ValueError):
        return None
    text = json.dumps({"return_value": json_safe(numbers)}, allow_nan=False)
    return atomic_write_text(Path(run_dir) / JOB_RETURN_FILE, text + "\n")


def read_job_return(run_dir: str | Path) -> Any | None:
    """The value a finished job returned (see :func:`write_job_return`), else None."""
    try:
        return json.loads((Path(run_dir) / JOB_RETURN_FILE).read_text())["return_value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_superseded(run_dir: str | Path, trial: int) -> None:
    """Say that a killed trial's folder was left for a retry of its trial.

    Its ``job_return.json`` is what makes a job finished: a record written just before the kill,
    without it, is superseded too (the study never heard of it; its retry holds the result).
    """
    if Path(run_dir).is_dir():
        atomic_write_text(Path(run_dir) / SUPERSEDED_FILE, json.dumps({"trial": trial}) + "\n")


def write_command(sweep_dir: str | Path, argv: Sequence[str]) -> Path:
    """Keep a sweep's command line (``sys.argv``, in its order) in its directory."""
    text = json.dumps({"argv": [str(arg) for arg in argv]})
    return atomic_write_text(Path(sweep_dir) / COMMAND_FILE, text + "\n")


def read_command(sweep_dir: str | Path) -> list[str] | None:
    """The command line `write_command` kept; None when there is none or it is damaged."""
    try:
        argv = json.loads((Path(sweep_dir) / COMMAND_FILE).read_text())["argv"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return None
    return argv


def write_planned_jobs(sweep_dir: str | Path, jobs: Sequence[Sequence[str]]) -> Path:
    """Keep a grid's planned jobs (each one's overrides, by job number) in its directory."""
    text = json.dumps({"jobs": [[str(o) for o in job] for job in jobs]})
    return atomic_write_text(Path(sweep_dir) / PLANNED_JOBS_FILE, text + "\n")


def read_planned_jobs(sweep_dir: str | Path) -> list[list[str]] | None:
    """The jobs `write_planned_jobs` kept; None when there are none or the file is damaged."""
    try:
        jobs = json.loads((Path(sweep_dir) / PLANNED_JOBS_FILE).read_text())["jobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(jobs, list) or not all(
        isinstance(job, list) and all(isinstance(o, str) for o in job) for job in jobs
    ):
        return None
    return jobs
