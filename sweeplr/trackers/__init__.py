"""Trackers users already use: a run's numbers sent to TensorBoard or MLflow (``logger=``).

``sweeplr.experiment.run`` calls :func:`check` before training (a missing package, an
unwritable place or an MLflow server that does not answer is one line, not a lost run) and
:func:`log_run` after it writes the run's record, in every job whatever the launcher; a sweep's
end calls :func:`finish_sweep`. The packages are extras, imported only when their tracker is
selected. No Hydra here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplr.config import LOGGERS
from sweeplr.errors import SweeplrError
from sweeplr.trackers.logged import SERIES, final_metrics, series

__all__ = ["SERIES", "check", "final_metrics", "finish_sweep", "log_run", "series"]

# tracker -> the module it needs, which is also the name of the extra that installs it
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check(logger: Any, base_dir: str | Path, run_dir: str | Path | None = None) -> None:
    """Raise :class:`SweeplrError` with one line when ``logger`` cannot log from here.

    ``base_dir`` is the folder train.py was started from (relative paths are read from it);
    ``run_dir`` the run's directory, where TensorBoard writes.
    """
    name = str(logger.name)
    if name not in LOGGERS:
        raise SweeplrError(f"logger={name} is unknown; allowed: {', '.join(LOGGERS)}")
    if name == "none":
        return
    from sweeplr.records import require_writable

    package = PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise SweeplrError(
            f"logger={name} needs the {package} package, which is not installed; "
            f'allowed: pip install -e ".[{package}]", or logger=none'
        )
    if name == "tensorboard" and run_dir is not None:
        require_writable("logger.subdir", str(logger.subdir), Path(run_dir) / str(logger.subdir))
    if name == "mlflow":
        from sweeplr.trackers.mlflow_log import check_server, store_folder, tracking_uri

        uri = tracking_uri(logger.tracking_uri, base_dir)
        folder = store_folder(uri)
        if folder is not None:
            require_writable("logger.tracking_uri", str(logger.tracking_uri or uri), folder)
        check_server(uri, str(logger.tracking_uri))


def log_run(
    logger: Any,
    run_dir: str | Path,
    record: Mapping[str, Any],
    history: Mapping[str, list[Any]],
    *,
    base_dir: str | Path,
    sweep_dir: str | Path | None = None,
    run_name: str | None = None,
) -> None:
    """Send one written run to ``logger``'s tracker; ``sweep_dir`` when it is a sweep's job."""
    name = str(logger.name)
    if name == "tensorboard":
        from sweeplr.trackers.tensorboard_log import write_events

        write_events(Path(run_dir) / str(logger.subdir), record, history)
    elif name == "mlflow":
        from sweeplr.trackers.mlflow_log import log_mlflow_run

        log_mlflow_run(
            logger,
            Path(run_dir),
            record,
            history,
            base_dir=Path(base_dir),
            sweep_dir=None if sweep_dir is None else Path(sweep_dir),
            run_name=run_name,
        )


def finish_sweep(logger: Any, sweep_dir: str | Path) -> None:
    """At a sweep's end: MLflow's parent run gets the summary and pictures, and is closed."""
    if str(logger.name) == "mlflow":
        from sweeplr.trackers.mlflow_log import finish_parent

        finish_parent(Path(sweep_dir))
