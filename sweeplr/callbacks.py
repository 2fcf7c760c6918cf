"""Hydra callbacks: what happens around jobs and sweeps, outside any one run's code.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. Hydra builds them for every run,
sweeps or not, so this module imports nothing heavy at the top.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class PreflightCallback(Callback):
    """Before a run or sweep starts: what would otherwise fail late, or with a traceback.

    A closed standard output (``... | head``) stops the printing from here on, not the sweep;
    a launcher that cannot run here says so in one line before any job starts; a job's log
    file that cannot be written (a full disk) is one warning line, not a traceback per record.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        from sweeplr.console import guard_stdout

        guard_stdout()
        problem = _unwritable("hydra.run.dir", config.hydra.run.dir)
        if problem:
            sys.exit(problem)

    job_hooks_read = "hydra"  # its job hook reads no config (plugins/job_runner.py)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from sweeplr.console import quiet_log_file_errors

        quiet_log_file_errors()  # the job's log files, as Hydra has just set them up

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import shutil

        from sweeplr.console import guard_stdout
        from sweeplr.plugins.failures import refuse

        guard_stdout()
        problem = _unwritable("hydra.sweep.dir", config.hydra.sweep.dir)
        if problem:
            refuse(config, problem)
        tracker = _tracker_problem(config)
        if tracker:  # every job would fail on it: say it once, before the first
            refuse(config, tracker)
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if launcher.endswith("SlurmLauncher") and shutil.which("srun") is None:
            refuse(
                config,
                "error: launcher=slurm needs a SLURM cluster, and this machine has no srun; "
                "allowed: launcher=batch, joblib or submitit_local here",
            )


def _tracker_problem(config: DictConfig) -> str | None:
    """The error line when the sweep's ``logger=`` cannot log from here (package, store)."""
    logger = OmegaConf.select(config, "logger")
    if logger is None or logger.get("name") == "none":
        return None
    from sweeplr.errors import SweeplrError
    from sweeplr.trackers import check

    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None) or "."
    try:
        check(logger, cwd)
    except SweeplrError as exc:
        return f"error: {exc}"
    return None


def _unwritable(key: str, path: str) -> str | None:
    """The error line when the directory a run or sweep writes into cannot be made there.

    Hydra would otherwise fail in its own ``mkdir`` or first write, with a traceback. Nothing is
    created here: the nearest existing folder on the way must be a directory one can write to.
    """
    import os

    from sweeplr.records import nearest_existing

    folder = nearest_existing(path)
    if not folder.is_dir():
        reason = os.strerror(errno.ENOTDIR)
    elif not os.access(folder, os.W_OK):
        reason = "read-only" if _read_only_mount(folder) else "no permission to write"
    else:
        return None
    return f"error: {key}={path} cannot be written ({reason}); allowed: a directory you can write"


def _read_only_mount(folder: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


class JobRecordCallback(Callback):
    """What each job of a run or sweep leaves beside its record, whatever its task is.

    A job whose task raised gets a ``metrics.json`` with status ``failed`` and the error, so the
    summary lists it as failed, with why, instead of as a job that never ran; a run that wrote
    a record of its own keeps it, and an interrupt (Ctrl-C, SIGTERM) leaves none, so a resumed
    sweep runs that job again. A trial's job that finished keeps its return value in
    ``job_return.json``: a resume tells a finished trial's value to the study instead of running
    it again when the process that ran it died before telling.
    """

    # Its job hook reads the Hydra node only: a launcher that shares that node between jobs
    # (sweeplr_batch) passes it without a copy of the job's task values (plugins/job_runner.py).
    job_hooks_read = "hydra"

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from sweeplr.pruning import trial_number
        from sweeplr.records import write_job_return

        completed = job_return.status == JobStatus.COMPLETED
        if completed and trial_number(config.hydra.job.env_set) is None:
            return  # not a trial of sweeplr_optuna: nothing would read it (and an fsync)
        run_dir = OmegaConf.select(config, "hydra.runtime.output_dir")
        if completed and run_dir:
            try:
                write_job_return(run_dir, job_return._return_value)
            except OSError as exc:
                log.warning(f"sweeplr: job return not kept: {exc}")
            return
        error = job_return._return_value
        if job_return.status != JobStatus.FAILED or not isinstance(error, Exception):
            return
        from sweeplr.errors import SweeplrError, first_line
        from sweeplr.experiment import job_fields
        from sweeplr.pruning import trial_link
        from sweeplr.records import write_failure

        # A user mistake's line says it all; anything else is named by its type.
        message = first_line(error)
        if not isinstance(error, SweeplrError):
            message = f"{type(error).__name__}: {message}"
        try:
            fields = job_fields(config.hydra, trial_link(config.hydra))
            write_failure(config.hydra.runtime.output_dir, message, fields)
        except Exception as exc:  # noqa: BLE001 - a record of a failure must not fail the sweep
            log.warning(f"sweeplr: no record of the failed job: {exc}")


def optuna_study(config: DictConfig) -> Any:
    """The sweep's Optuna study when the sweeplr Optuna sweeper ran it, else None."""
    if OmegaConf.select(config, "hydra.sweeper.storage", default=None) is None:
        return None  # a grid: no study, and no import of Optuna (a second of a sweep's end)
    from sweeplr.studies import load_sweep_study

    return load_sweep_study(OmegaConf.select(config, "hydra.sweeper") or {})


def _holds_runs(sweep_dir: Path) -> bool:
    from sweeplr.errors import SweeplrError
    from sweeplr.results import run_dirs

    try:
        return bool(run_dirs(sweep_dir))
    except SweeplrError:
        return False


def study_values(study: Any) -> dict[int, list[float]]:
    """Each finished trial's values, as the task returned them, by trial number."""
    return {t.number: list(t.values) for t in study.get_trials(deepcopy=False) if t.values}


class TrackerCallback(Callback):
    """At the end of ``--multirun`` with ``logger=mlflow``: close the sweep's parent run.

    Listed before ``summary`` in the config, so it runs after it (Hydra calls end hooks in
    reverse) and the summary and pictures are there to attach. Runs in the launching process,
    whatever the launcher; the parent run itself is made by the sweep's first job to log.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        logger = OmegaConf.select(config, "logger")
        if logger is None or logger.get("name") != "mlflow":
            return
        try:
            from sweeplr.trackers import finish_sweep

            cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=".")
            finish_sweep(logger, Path(str(cwd)) / str(config.hydra.sweep.dir))
        except Exception as exc:  # noqa: BLE001 - never fail a finished sweep
            from sweeplr.errors import first_line

            log.warning(f"sweeplr: the MLflow parent run was not closed: {first_line(exc)}")


class SummaryCallback(Callback):
    """At the end of ``--multirun``, write ``summary.csv`` in the sweep directory and print it.

    Hydra calls ``on_multirun_end`` also when a sweep is interrupted or fails, so the runs that
    did finish are still summarised. A summary is a convenience: whatever goes wrong here is
    logged as one warning line and never turns a finished sweep into a failed one.
    """

    def __init__(self, top: int = 20) -> None:
        self.top = top

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here: Hydra builds its callbacks for every run, sweeps or not, and pandas
        # costs 0.4 s of a single run's start-up.
        from sweeplr.plugins.failures import was_refused
        from sweeplr.records import METRICS_FILE
        from sweeplr.results import (
            add_trial_values,
            compact,
            format_table,
            load_sweep,
            with_trial_states,
            write_summary,
        )
        from sweeplr.schema import UNFINISHED

        if was_refused(config):  # the sweep's one error line says why; nothing of it to summarise
            return
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            if not _holds_runs(sweep_dir):  # a sweep that stopped before its first job: the
                return  # reason is the sweep's own error, printed next; no summary to speak of
            _keep_command(sweep_dir)
            df = load_sweep(sweep_dir)
            study = optuna_study(config)
            if study is not None:
                # The study's word on each trial, over what the records imply (a run that ended
                # after its worker's last tell, before a kill, was re-queued: FAIL).
                df = with_trial_states(df, {t.number: t.state.name for t in study.trials})
                if len(study.directions) > 1:
                    front = {t.number for t in study.best_trials}
                    df = add_trial_values(df, study_values(study), front)
            path = write_summary(sweep_dir, df)
            if df["status"].isin(UNFINISHED).all():
                # A sweep stopped before any run (a bad value): a table of blanks says nothing.
                print(f"sweeplr: {path}: none of the {len(df)} runs wrote {METRICS_FILE}")
                return
            print(f"sweeplr: {path} ({_shown_runs(len(df), self.top)})")
            print(format_table(compact(df), "table", self.top))
        except Exception as exc:  # noqa: BLE001 - a summary must never fail the sweep
            from sweeplr.errors import first_line

            log.warning(f"sweeplr: no sweep summary: {first_line(exc)}")
            return
        if config.get("plots", True):
            try:
                from sweeplr.report import draw_sweep

                report = draw_sweep(sweep_dir, df, study)[-1]
                print(f"sweeplr: pictures and {report} (open it in a browser)")
            except Exception as exc:  # noqa: BLE001 - nor its pictures (the summary is written)
                from sweeplr.errors import first_line

                log.warning(f"sweeplr: no pictures: {first_line(exc)}")


def _keep_command(sweep_dir: Path) -> None:
    """Keep this process's command line in the sweep directory for its report: Hydra's files
    keep the task's and Hydra's overrides apart, which loses the order they were typed in.
    Here, at the end, and not at the start, so that a sweep refused before its first job
    (another sweep's directory) leaves that sweep's command alone."""
    import sys

    from sweeplr.records import write_command

    try:
        write_command(sweep_dir, sys.argv)
    except OSError as exc:  # the report falls back to the command rebuilt from Hydra's files
        log.warning(f"sweeplr: the command line was not kept: {exc}")


def _shown_runs(count: int, top: int) -> str:
    """What the table below the summary line holds: its runs, in words."""
    if count == 1:
        return "its one run below"
    shown = f"best {top} of {count}" if count > top else f"all {count}"
    return f"{shown} runs below, best first"
