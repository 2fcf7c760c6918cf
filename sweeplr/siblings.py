"""Sibling training: the jobs of one launch trained together, in one batched pass.

``sweeplr.job_batch`` holds the jobs ``sweeplr_batch`` published for the launch in progress.
The first of them whose task calls ``sweeplr.experiment.run`` trains its configuration with
every untrained sibling that shares its batch key (`sweeplr.runner.batch_key`), up to the
launcher's ``max_batch``, and leaves their outcomes there; each sibling's own ``run`` then
takes its outcome instead of training again, if its spec is still the one it was trained for
(a task may change its config before calling ``run``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplr import job_batch
from sweeplr.config import config_values, data_path_from
from sweeplr.console import progress_printer
from sweeplr.errors import SweeplrError
from sweeplr.pruning import trial_link_for
from sweeplr.runner import DeviceData, Outcome, batch_key, data_key, train_runs
from sweeplr.schema import PRUNABLE_OBJECTIVES
from sweeplr.spec import RunSpec, run_spec
from sweeplr.training import LogCallback

if TYPE_CHECKING:
    from sweeplr.studies import TrialLink


def on_log(spec: RunSpec, trial: TrialLink | None, *, progress: bool) -> LogCallback | None:
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


def published_spec(num: int | None, values: Any) -> RunSpec | None:
    """The spec worked out when this job was published, if its config still has the values it
    had then (a task may change its config before calling ``run``); else None."""
    launched = job_batch.current()
    member = launched.members.get(num) if launched is not None and num is not None else None
    return member[0] if member is not None and member[2] == values else None


def shared_outcome(num: int | None, spec: RunSpec, start_dir: str | Path) -> Outcome | None:
    """This job's outcome when it can train with its launch's other jobs, else None.

    The first job of a group to get here trains the whole group; the others find their outcome
    waiting. An outcome is only taken by a job whose spec is the one it was trained for.
    ``start_dir`` is the folder the launch started in (relative data paths are read from it).
    """
    launched = job_batch.current()
    if launched is None or num is None or num not in launched.jobs:
        return None
    if num not in launched.trained:
        _train_with_siblings(launched, num, spec, start_dir)
    trained_spec, outcome = launched.trained.pop(num)
    return outcome if trained_spec == spec else None


def _train_with_siblings(
    launched: job_batch.LaunchedJobs, num: int, spec: RunSpec, start_dir: str | Path
) -> None:
    """Train ``spec`` with the launch's untrained jobs that share its batch key, in job order."""
    key = batch_key(spec)
    members: list[tuple[int, RunSpec, LogCallback | None]] = [
        (num, spec, on_log(spec, published_trial(launched.jobs[num]), progress=False))
    ]
    for other, job in launched.jobs.items():
        if len(members) >= launched.max_batch:
            break
        if other != num and other not in launched.trained:
            if other not in launched.members:
                launched.members[other] = _published_member(job, start_dir)
            member = launched.members[other]
            if member is not None and member[3] == key:
                members.append((other, member[0], member[1]))
    data = launched.data.get(data_key(spec))
    if data is None:
        launched.data.clear()  # one data set in memory at a time
        # device=auto chooses from this pass's size; later passes on the same data share it.
        data = launched.data[data_key(spec)] = DeviceData.load(spec, configs=len(members))
    outcomes = train_runs([m[1] for m in members], [m[2] for m in members], data)
    for (member_num, member_spec, _), outcome in zip(members, outcomes, strict=True):
        launched.trained[member_num] = (member_spec, outcome)


def _published_member(
    job: job_batch.PublishedJob, start_dir: str | Path
) -> tuple[RunSpec, LogCallback | None, Any, str] | None:
    """Spec, callback, config values and batch key of a published job, to train it with
    others; None if it cannot. Its values are read as its own ``run`` will read them
    (``data_path_from``)."""
    try:
        values = data_path_from(config_values(job.config), start_dir)
        spec = run_spec(values)
        return spec, on_log(spec, published_trial(job), progress=False), values, batch_key(spec)
    except Exception:  # noqa: BLE001 - that job fails, or trains, in its own run
        return None


def published_trial(job: job_batch.PublishedJob) -> TrialLink | None:
    """The Optuna trial a published job will run (its Hydra node will say which)."""
    return trial_link_for(job.env_set, job.sweeper)
