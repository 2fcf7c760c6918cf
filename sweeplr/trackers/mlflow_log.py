"""MLflow runs in a local SQLite store: a sweep is a parent run, each of its jobs a child.

The store defaults to ``sqlite:///mlflow.db`` in the folder train.py runs from, MLflow 3's own
default: ``mlflow ui`` started there finds it with no arguments, and every run and sweep lands in
one store, so sweeps compare side by side. MLflow 3 refuses new runs in a folder store
(``./mlruns``, its "file store" is in maintenance mode), so a SQLite file it is; artifacts go
in ``mlruns/`` beside it, as MLflow lays them out itself.

The parent run is made by the first job of a sweep to log, under a file lock, and its id kept in
``mlflow_run.json`` in the sweep's directory: the jobs of ``launcher=joblib`` or
``submitit_local`` are separate processes that share nothing but that folder, and a resumed
Optuna study (same folder) goes on in the same parent. Every write to a SQLite store holds its
lock (beside the database): SQLite takes one writer at a time, and workers that create the
store's tables at once would race.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sweeplr.errors import SweeplrError
from sweeplr.records import atomic_write_text
from sweeplr.trackers.logged import final_metrics, series

DEFAULT_DB = "mlflow.db"
SWEEP_FILE = "mlflow_run.json"  # in a sweep's directory: its parent run's store and id
ARTIFACT_FILES = ("model.pt", "metrics.json", "history.csv")
FINAL_PREFIX = "final/"  # the record's metrics, apart from the per-epoch curves of the same name
SQLITE = "sqlite:///"

_clients: dict[str, Any] = {}  # one client per store and process: opening one checks its tables


def tracking_uri(configured: str | None, base_dir: str | Path) -> str:
    """The store's URI; a relative SQLite path is read from ``base_dir``."""
    if configured is None:
        return SQLITE + str((Path(base_dir) / DEFAULT_DB).absolute())
    uri = str(configured)
    if "://" not in uri:
        raise SweeplrError(
            f"logger.tracking_uri={uri} is a folder, and MLflow 3 takes no new runs in a folder "
            "store; allowed: sqlite:///PATH.db, http(s)://SERVER, or a database URI"
        )
    if uri.startswith(SQLITE):
        path = Path(uri[len(SQLITE) :])
        return SQLITE + str(path if path.is_absolute() else (Path(base_dir) / path).absolute())
    return uri


def store_folder(uri: str) -> Path | None:
    """The folder a SQLite store's database and artifacts live in; None for other stores."""
    return Path(uri[len(SQLITE) :]).parent if uri.startswith(SQLITE) else None


def check_server(uri: str, shown: str, timeout: float = 5.0) -> None:
    """One line when the server of an ``http(s)://`` store does not take a connection: MLflow's
    client would retry for minutes after the run, and log nothing."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:  # refused, no such host, timed out; a bad port number
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise SweeplrError(
            f"logger.tracking_uri={shown} cannot be reached ({reason}); "
            "allowed: a running MLflow server, a sqlite:/// store, or logger=none"
        ) from None


@contextmanager
def _store_lock(uri: str, sweep_dir: Path | None) -> Iterator[None]:
    from filelock import FileLock

    folder = store_folder(uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        lock: Any = FileLock(str(Path(uri[len(SQLITE) :])) + ".lock")
    elif sweep_dir is not None:  # a server serialises its own writes; only the parent is ours
        lock = FileLock(str(sweep_dir / ".mlflow_run.lock"))
    else:
        lock = nullcontext()
    with lock:
        yield


def _client(uri: str) -> Any:
    if uri not in _clients:
        from mlflow import MlflowClient

        # The store's set-up lines (creating tables, migrations) are not the user's business.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        _clients[uri] = MlflowClient(tracking_uri=uri)
    return _clients[uri]


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    folder = store_folder(uri)  # artifacts beside the database, not in the worker's cwd
    location = (folder / "mlruns").as_uri() if folder is not None else None
    return client.create_experiment(name, artifact_location=location)


def _parent_run(client: Any, experiment_id: str, sweep_dir: Path, uri: str) -> str:
    """The sweep's parent run: the one ``mlflow_run.json`` names, else a new one."""
    from mlflow.exceptions import MlflowException

    path = sweep_dir / SWEEP_FILE
    try:
        saved = json.loads(path.read_text())
        if saved["tracking_uri"] == uri and saved["experiment_id"] == experiment_id:
            run = client.get_run(saved["run_id"])
            if run.info.lifecycle_stage == "active":
                if run.info.status != "RUNNING":  # a resumed study goes on in its parent
                    client.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
    except (OSError, ValueError, KeyError, TypeError, MlflowException):
        pass  # none yet, or a store that no longer holds it: a new parent
    run = client.create_run(
        experiment_id,
        run_name=sweep_dir.name,
        tags={"sweeplr.sweep_dir": str(sweep_dir.absolute()), "sweeplr.kind": "sweep"},
    )
    atomic_write_text(
        path,
        json.dumps({"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id})
        + "\n",
    )
    return run.info.run_id


def log_mlflow_run(
    logger: Any,
    run_dir: Path,
    record: Mapping[str, Any],
    history: Mapping[str, list[Any]],
    *,
    base_dir: Path,
    sweep_dir: Path | None,
    run_name: str | None,
) -> str:
    """Log one written run (a sweep's child when ``sweep_dir`` is given); returns its run id."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    uri = tracking_uri(logger.tracking_uri, base_dir)
    with _store_lock(uri, sweep_dir):
        client = _client(uri)
        experiment_id = _experiment_id(client, str(logger.experiment_name), uri)
        tags = {
            "sweeplr.run_dir": str(run_dir.absolute()),
            "sweeplr.status": str(record.get("status")),
            "sweeplr.objective": str(record.get("objective", {}).get("name")),
            "sweeplr.kind": "job" if sweep_dir is not None else "run",
        }
        if sweep_dir is not None:
            tags[MLFLOW_PARENT_RUN_ID] = _parent_run(client, experiment_id, sweep_dir, uri)
        run_id = client.create_run(
            experiment_id, run_name=(run_name or run_dir.name)[:250], tags=tags
        ).info.run_id
        now = int(time.time() * 1000)
        last = int(record.get("epochs_run") or 0)
        metrics = [
            Metric(column, value, now, epoch)
            for column, points in series(history).items()
            for epoch, value in points
        ]
        metrics += [
            Metric(FINAL_PREFIX + k, v, now, last) for k, v in final_metrics(record).items()
        ]
        params = [Param(k, str(v)) for k, v in record.get("hyperparameters", {}).items()]
        client.log_batch(run_id, params=params)
        for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        for path in _artifacts(run_dir):
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _artifacts(folder: Path, names: tuple[str, ...] = ARTIFACT_FILES) -> list[Path]:
    """The record's files and the pictures drawn so far (a sweep draws its runs' at its end)."""
    found = [folder / n for n in names if (folder / n).is_file()]
    return found + sorted(p for p in folder.glob("*.png") if p.is_file())


def finish_parent(sweep_dir: Path) -> None:
    """Give a sweep's parent run the summary, report and pictures, and mark it finished."""
    try:
        saved = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return  # no job of this sweep logged to MLflow
    uri = saved["tracking_uri"]
    with _store_lock(uri, sweep_dir):
        client = _client(uri)
        run_id = saved["run_id"]
        for path in _artifacts(sweep_dir, ("summary.csv", "report.html")):
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
