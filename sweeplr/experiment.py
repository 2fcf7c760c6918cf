"""``run(cfg)``, what ``train.py`` calls: the Hydra edge of one job.

It reads the job's place in Hydra's machinery (output directory, number, overrides, the Optuna
trial it reports to), gets its configuration trained by the runner -- or picks up the outcome
that an earlier job of the same launch trained together with it (``sweeplr.job_batch``) --
writes the run record, prints, and returns the objective sweepers optimise.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeplr import job_batch, trackers
from sweeplr.config import config_values, plain_dicts
from sweeplr.console import (
    end_interrupted,
    end_with_error,
    format_report,
    job_line,
    progress_printer,
    show,
)
from sweeplr.errors import SweeplrError
from sweeplr.pruning import trial_link, trial_link_for
from sweeplr.records import write_run
from sweeplr.runner import DeviceData, Outcome, batch_key, data_key, train_runs
from sweeplr.schema import DIVERGED, PRUNABLE_OBJECTIVES
from sweeplr.spec import RunSpec, run_spec
from sweeplr.training import LogCallback

if TYPE_CHECKING:
    from sweeplr.studies import TrialLink


def run(cfg: DictConfig) -> float:
    """Train one configuration as a Hydra job; return the objective sweepers optimise.

    A user mistake (bad value, bad data file) ends a single run with one line and no traceback;
    in a sweep it raises, so the job comes back FAILED with that line and the others go on.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    logger = cfg.get("logger")
    values = config_values(cfg)  # once: the spec, the comparison and the record read it
    try:
        spec = _published_spec(hydra_cfg.job.get("num"), values) or run_spec(
            values, OmegaConf.to_container(hydra_cfg.overrides.task)
        )
        if logger is not None and logger.name != "none":  # before training: a tracker that
            trackers.check(logger, _start_dir(hydra_cfg), run_dir)  # cannot log costs no run
        trial = trial_link(hydra_cfg)
        outcome = (
            _shared_outcome(hydra_cfg.job.get("num"), spec)
            or train_runs(
                [spec], [_on_log(spec, trial, progress=bool(cfg.progress) and not multirun)]
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
        record = write_run(run_dir, outcome, plain_dicts(values), job_fields(hydra_cfg, trial))
    except OSError as exc:  # a full disk, a read-only or vanished folder: say which, once
        message = f"could not write the record in {run_dir}: {exc.strerror or exc}"
        if multirun:
            raise SweeplrError(message) from exc
        end_with_error(f"error: {message}")
    if trial is not None and outcome.status == DIVERGED:
        trial.stop(DIVERGED, outcome.diverged_epoch)  # the sweeper tells Optuna it was pruned
    if multirun:
        _track(logger, run_dir, record, outcome, hydra_cfg)
        show(job_line(record, hydra_cfg.job.get("num"), record["overrides"]))
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


def job_fields(hydra_cfg: Any, trial: TrialLink | None = None) -> dict[str, Any]:
    """What a record says about its Hydra job: number, overrides, Optuna trial."""
    fields: dict[str, Any] = {
        "job": {"num": hydra_cfg.job.get("num")},
        "overrides": OmegaConf.to_container(hydra_cfg.overrides.task),
    }
    if trial is not None:
        fields["trial"] = {"number": trial.number, "study": trial.study_name}
    return fields


def _on_log(spec: RunSpec, trial: TrialLink | None, *, progress: bool) -> LogCallback | None:
    """What runs at each logged epoch: reports to the trial's pruner, a terminal's progress."""
    callbacks: list[LogCallback] = []
    if progress and sys.stderr.isatty():
        callbacks.append(progress_printer(spec.epochs))
    if trial is not None and trial.has_pruner:
        if spec.objective not in PRUNABLE_OBJECTIVES:
            raise SweeplrError(
                f"objective={spec.objective} cannot be pruned on; allowed with a pruner: "
                + ", ".join(PRUNABLE_OBJECTIVES)
            )
        column = ("train_loss", "val_loss", "val_accuracy").index(spec.objective)

        def report(epoch: int, *values: float) -> bool:
            return trial.report(epoch, values[column])

        callbacks.append(report)
    if not callbacks:
        return None

    def call_all(*args: Any) -> bool:
        stops = [c(*args) for c in callbacks]  # not any(generator): each sees every epoch
        return any(stops)

    return call_all


def _published_spec(num: int | None, values: Any) -> RunSpec | None:
    """The spec worked out when this job was published, if its config still has the values it
    had then (a task may change its config before calling ``run``); else None."""
    launched = job_batch.current()
    member = launched.members.get(num) if launched is not None else None
    return member[0] if member is not None and member[2] == values else None


def _shared_outcome(num: int | None, spec: RunSpec) -> Outcome | None:
    """This job's outcome when it can train with its launch's other jobs, else None.

    The first job of a group to get here trains the whole group; the others find their outcome
    waiting. An outcome is only taken by a job whose spec is the one it was trained for (a task
    may change its config before calling ``run``).
    """
    launched = job_batch.current()
    if launched is None or num not in launched.jobs:
        return None
    if num not in launched.trained:
        _train_with_siblings(launched, num, spec)
    trained_spec, outcome = launched.trained.pop(num)
    return outcome if trained_spec == spec else None


def _train_with_siblings(launched: job_batch.LaunchedJobs, num: int, spec: RunSpec) -> None:
    """Train ``spec`` with the launch's untrained jobs that share its batch key, in job order."""
    key = batch_key(spec)
    members: list[tuple[int, RunSpec, LogCallback | None]] = [
        (num, spec, _on_log(spec, published_trial(launched.jobs[num]), progress=False))
    ]
    for other, job in launched.jobs.items():
        if len(members) >= launched.max_batch:
            break
        if other != num and other not in launched.trained:
            if other not in launched.members:
                launched.members[other] = _published_member(job)
            member = launched.members[other]
            if member is not None and batch_key(member[0]) == key:
                members.append((other, member[0], member[1]))
    data = launched.data.get(data_key(spec))
    if data is None:
        launched.data.clear()  # one data set in memory at a time
        # device=auto chooses from this pass's size; later passes on the same data share it.
        data = launched.data[data_key(spec)] = DeviceData.load(spec, configs=len(members))
    outcomes = train_runs([m[1] for m in members], [m[2] for m in members], data)
    for (member, member_spec, _), outcome in zip(members, outcomes, strict=True):
        launched.trained[member] = (member_spec, outcome)


def _published_member(
    job: job_batch.PublishedJob,
) -> tuple[RunSpec, LogCallback | None, Any] | None:
    """Spec, callback and config values of a published job, to train it with others; None if
    it cannot."""
    try:
        values = config_values(job.config)
        spec = run_spec(values)
        return spec, _on_log(spec, published_trial(job), progress=False), values
    except Exception:  # noqa: BLE001 - that job fails, or trains, in its own run
        return None


def published_trial(job: job_batch.PublishedJob) -> TrialLink | None:
    """The Optuna trial a published job will run (its Hydra node will say which)."""
    return trial_link_for(job.env_set, job.sweeper)
