"""``run(cfg)``, what ``train.py`` calls: the Hydra edge of one job.

It reads the job's place in Hydra's machinery (output directory, number, overrides, the Optuna
trial it reports to), gets its configuration trained by the runner -- or picks up the outcome
that an earlier job of the same launch trained together with it (``sweeplr.siblings``) --
writes the run record, prints, and returns the objective sweepers optimise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeplr import trackers
from sweeplr.config import config_values, data_path_from, plain_dicts
from sweeplr.console import (
    end_interrupted,
    end_with_error,
    format_report,
    job_line,
    show,
)
from sweeplr.errors import SweeplrError
from sweeplr.pruning import trial_link
from sweeplr.records import write_run
from sweeplr.runner import Outcome, train_runs
from sweeplr.schema import DIVERGED
from sweeplr.siblings import on_log, published_spec, shared_outcome
from sweeplr.spec import run_spec

if TYPE_CHECKING:
    from sweeplr.studies import TrialLink


def run(cfg: DictConfig) -> float:
    """Train one configuration as a Hydra job; return the objective sweepers optimise.

    A user mistake (bad value, bad data file) ends a single run with one line and no traceback;
    in a sweep it raises, so the job comes back FAILED with that line and the others go on.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg: Any = HydraConfig.get()  # read as the DictConfig it is
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    logger = cfg.get("logger")
    start_dir = _start_dir(hydra_cfg)
    num = hydra_cfg.job.get("num")  # (each read of Hydra's node goes through OmegaConf)
    overrides = _task_overrides(hydra_cfg)
    # once: the spec, the comparison and the record read it
    values = data_path_from(config_values(cfg), start_dir)
    try:
        spec = published_spec(num, values) or run_spec(values, overrides)
        if logger is not None and logger.name != "none":  # before training: a tracker that
            trackers.check(logger, start_dir, run_dir)  # cannot log costs no run
        trial = trial_link(hydra_cfg)
        outcome = (
            shared_outcome(num, spec, start_dir)
            or train_runs(
                [spec], [on_log(spec, trial, progress=bool(cfg.progress) and not multirun)]
            )[0]
        )
    except SweeplrError as exc:
        if multirun:
            raise
        end_with_error(f"error: {exc}")
    except KeyboardInterrupt:
        if multirun:
            raise  # the sweeper hands its trials back first
        end_interrupted("the run stopped before writing its record; run it again")
    try:
        fields = job_fields(hydra_cfg, trial, overrides)
        record = write_run(run_dir, outcome, plain_dicts(values), fields)
    except OSError as exc:  # a full disk, a read-only or vanished folder: say which, once
        message = f"could not write the record in {run_dir}: {exc.strerror or exc}"
        if multirun:
            raise SweeplrError(message) from exc
        end_with_error(f"error: {message}")
    if trial is not None and outcome.status == DIVERGED:
        trial.stop(DIVERGED, outcome.diverged_epoch)  # the sweeper tells Optuna it was pruned
    if multirun:
        _track(logger, run_dir, record, outcome, hydra_cfg)
        show(job_line(record, num, record["overrides"]))
        return outcome.objective
    show(format_report(record, run_dir))
    if cfg.plots:  # a sweep draws its pictures once, at its end
        from sweeplr.plots import plot_run

        pictures = plot_run(run_dir)
        show(f"  pictures: {', '.join(p.name for p in pictures)}")
    _track(logger, run_dir, record, outcome, hydra_cfg)  # after the pictures: MLflow keeps them
    return outcome.objective


def _track(
    logger: Any, run_dir: Path, record: dict[str, Any], outcome: Outcome, hydra_cfg: Any
) -> None:
    """Send a written run to its tracker. The record is what counts: a tracker that fails now
    (a locked or vanished store) costs one warning line, never the run or its sweep."""
    if logger is None or logger.name == "none":
        return
    from hydra.types import RunMode

    sweep_dir = None
    if hydra_cfg.mode == RunMode.MULTIRUN:  # a relative one is the start folder's, in any worker
        sweep_dir = _start_dir(hydra_cfg) / hydra_cfg.sweep.dir
    try:
        trackers.log_run(
            logger,
            run_dir,
            record,
            outcome.history,
            base_dir=_start_dir(hydra_cfg),
            sweep_dir=sweep_dir,
            run_name=" ".join(record["overrides"]) or run_dir.name,
        )
    except Exception as exc:  # noqa: BLE001 - a tracker's own errors come in many types
        from sweeplr.errors import first_line

        show(
            f"warning: logger={logger.name} did not log {run_dir}: "
            f"{type(exc).__name__}: {first_line(exc)}",
            logging.WARNING,
        )


def _start_dir(hydra_cfg: Any) -> Path:
    """The folder train.py started in, where relative tracker paths point, in any worker."""
    return Path(OmegaConf.select(hydra_cfg, "runtime.cwd", default=None) or Path.cwd())


def _task_overrides(hydra_cfg: Any) -> list[str]:
    """The job's task overrides, as typed (Hydra's ``overrides.task``)."""
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task)
    assert isinstance(overrides, list)  # Hydra keeps them as a list of strings
    return overrides


def job_fields(
    hydra_cfg: Any, trial: TrialLink | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """What a record says about its Hydra job: number, overrides (read from ``hydra_cfg`` when
    not given), Optuna trial."""
    fields: dict[str, Any] = {
        "job": {"num": hydra_cfg.job.get("num")},
        "overrides": _task_overrides(hydra_cfg) if overrides is None else overrides,
    }
    if trial is not None:
        fields["trial"] = {"number": trial.number, "study": trial.study_name}
    return fields
