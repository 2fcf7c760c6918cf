"""One sweep process's part in an Optuna study, from claiming its directory to handing back. No
Hydra.

The sweeplr_optuna sweeper turns its config into a :class:`StudyPlan`, opens a
:class:`StudySession` on it and loops: ask a batch, launch its jobs, tell their outcomes. The
session holds everything between those steps that must survive a crash or a second worker:

- :func:`claim_sweep_dir`: one study per sweep directory (trial numbers name run folders);
- :meth:`StudySession.open`: repair a torn journal, load or create the study, tell or re-queue
  the trials whose worker died (:meth:`~StudySession.requeue_stale`);
- :meth:`~StudySession.next_batch`: ask up to ``n_jobs`` trials, each marked as this worker's
  before it is RUNNING, as many as the budget and the sampler allow;
- :meth:`~StudySession.tell_batch`: tell each trial its value, FAIL or PRUNED;
- :meth:`~StudySession.hand_back`: on Ctrl-C or a crash, the trials in flight go back to the
  study (told, if their job had finished; re-queued, if not), so a resume runs them again.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeplr.errors import SweeplrError, first_line
from sweeplr.records import atomic_write_text, mark_superseded, read_job_return
from sweeplr.studies import (
    STOPPED_ATTR,
    STORAGE_ERRORS,
    Heartbeat,
    ask_marked,
    budget_used,
    dashboard_command,
    load_study_code,
    one_fsync,
    open_storage,
    public_storage,
    repair_journal,
    requeue,
    requeue_stale_trials,
    storage_url,
    study_lock,
    trial_id,
)

log = logging.getLogger(__name__)

STUDY_MARK = ".sweeplr-study.json"
# Samplers whose proposals do not depend on results: nothing is lost by asking many at once.
BLIND_SAMPLERS = ("RandomSampler", "GridSampler", "QMCSampler", "BruteForceSampler")
# After its start-up trials, a learning sampler's batch is at most this fraction of the trials
# it has results of (measured: bench/README.md, P3).
RESULTS_PER_PROPOSAL = 4

Samplers = Callable[[int], optuna.samplers.BaseSampler]


def claim_sweep_dir(
    sweep_dir: Path, study_name: str, url: str, check_unused: Callable[[Path], None]
) -> None:
    """Mark ``sweep_dir`` as the study's; :class:`SweeplrError` when another study's runs are
    there, or when ``check_unused`` (raising :class:`SweeplrError`) finds other runs in a
    directory no study has marked yet.

    Trial numbers name run folders; two studies in one directory would write into each
    other's folders and mix in one summary.
    """
    mark = sweep_dir / STUDY_MARK
    # The default journal lies in the directory: named so, the mark survives a moved directory.
    storage = "journal in this directory" if url == storage_url(None, sweep_dir) else url
    ours = {"study_name": study_name, "storage": storage}
    try:
        theirs = json.loads(mark.read_text())
    except FileNotFoundError:
        theirs = None
    except (OSError, ValueError):
        theirs = {"study_name": "?", "storage": "an unreadable .sweeplr-study.json"}
    if theirs is None:
        if not (sweep_dir / "optuna.journal").exists():  # a study from before the mark is ours
            check_unused(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(mark, json.dumps(ours) + "\n")
    elif theirs != ours:
        raise SweeplrError(
            f"hydra.sweep.dir={sweep_dir} holds study {theirs.get('study_name')} in "
            f"{theirs.get('storage')}; allowed: that study's storage and name, or another "
            "hydra.sweep.dir"
        )


def batch_limit(sampler_cfg: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> int:
    """How many trials the sampler can propose well at once; ``n_jobs`` caps it.

    A batch's proposals are made without one another's results. A sampler that learns nothing
    (random, grid, QMC) loses nothing by that, and neither do a learning sampler's random
    start-up trials (``n_startup_trials``), which go in one batch. After them a batch is at most
    a quarter of the results the sampler has: early on, when each result moves the model most,
    proposals are made one or two at a time, and batches grow as results add up. Pending trials
    count as bad results (TPE's ``constant_liar``, on in sweep=optuna), so that a batch's
    proposals spread out instead of piling onto one point. Ratios measured in bench/README.md.
    """
    if str(sampler_cfg.get("_target_", "")).endswith(BLIND_SAMPLERS):
        return sys.maxsize
    learned = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pending = sum(t.state == TrialState.RUNNING for t in trials)  # other workers' trials
    startup = int(sampler_cfg.get("n_startup_trials") or 0)
    if learned + pending < startup:
        return startup - learned - pending
    return max(1, learned // RESULTS_PER_PROPOSAL)


def trial_values(returned: Any, n_directions: int) -> list[float]:
    """A task's return value as the trial's values, or ValueError as the stock plugin says it."""
    if n_directions == 1:
        try:
            return [float(returned)]
        except (ValueError, TypeError):
            raise ValueError(f"Return value must be float-castable. Got '{returned}'.") from None
    try:
        values = [float(v) for v in returned]
    except (ValueError, TypeError):
        raise ValueError(
            f"Return value must be a list or tuple of float-castable values. Got '{returned}'."
        ) from None
    if len(values) != n_directions:
        raise ValueError(
            "The number of the values and the number of the objectives are"
            f" mismatched. Expect {n_directions}, but actually {len(values)}."
        )
    return values


def checked_values(returned: Any, n_directions: int) -> list[float]:
    """:func:`trial_values`, refusing NaN as Optuna does (a FAIL, whatever the warning filters)."""
    values = trial_values(returned, n_directions)
    if any(math.isnan(v) for v in values):
        raise ValueError(f"The value {returned} is not acceptable: NaN is no result to rank.")
    return values


def check_pruning(pruner: optuna.pruners.BasePruner | None, directions: Sequence[str]) -> None:
    """:class:`SweeplrError` for a pruner on a study of several directions: Optuna prunes
    single-objective studies only (``Trial.report`` raises ``NotImplementedError``), so the
    sweep is refused before its study or directory is touched."""
    if pruner is not None and len(directions) > 1:
        raise SweeplrError(
            f"hydra.sweeper.pruner={type(pruner).__name__} is invalid with "
            f"hydra.sweeper.direction=[{','.join(directions)}]; allowed: no pruner "
            "(pruner=null) with several directions, or one direction"
        )


@dataclass(frozen=True)
class StudyPlan:
    """What a sweep asks of its study: which one, where, and how much."""

    study_name: str
    url: str  # from sweeplr.studies.storage_url
    sweep_dir: Path
    n_trials: int  # in total, over every worker and resume; re-queued trials do not count
    directions: tuple[str, ...] = ("minimize",)
    n_jobs: int = 1  # the most trials asked per batch
    max_failure_rate: float = 0.0  # of a batch's jobs; past it, jobs that raised end the sweep
    sampler_cfg: Mapping[str, Any] = field(default_factory=dict)  # read by batch_limit
    heartbeat_interval: float = 10.0  # seconds between liveness stamps of a running trial
    grace_period: float = 60.0  # a trial silent this long (on another host) is stale
    # Run folders are named by trial number, so a trial whose worker died after its job had
    # finished is told from the folder's job_return.json instead of being run again.
    trial_dirs: bool = True


@dataclass(frozen=True)
class JobOutcome:
    """What one job of a batch did, as its trial is told it."""

    value: Any  # what the task returned, or the exception it raised
    raised: bool = False
    run_dir: str | None = None


class StudySession:
    """This process's part in an Optuna study: opened with :meth:`open`, used in a ``with``
    block (the trials in flight are handed back when it ends with an exception)."""

    def __init__(
        self,
        plan: StudyPlan,
        study: optuna.Study,
        storage: BaseStorage,
        samplers: Samplers | None = None,
    ) -> None:
        self.plan = plan
        self.study = study
        self.storage = storage
        self._samplers = samplers
        self._batch: list[optuna.Trial] = []  # the trials in flight
        self._beating: dict[int, int] = {}  # trial number -> storage id, for the heartbeat
        self._heartbeat = Heartbeat(storage, plan.heartbeat_interval)

    @classmethod
    def open(
        cls,
        plan: StudyPlan,
        pruner: optuna.pruners.BasePruner | None = None,
        samplers: Samplers | None = None,
    ) -> StudySession:
        """Repair the journal, load the study (or create it), settle or re-queue its stale
        trials, and log where it stands. ``samplers(number)`` is the sampler that proposes the
        trial numbered ``number`` (see :func:`sweeplr.studies.ask_marked`).

        Raises :class:`SweeplrError` for a damaged journal, one of ``STORAGE_ERRORS`` for a
        storage out of reach."""
        check_pruning(pruner, plan.directions)
        with study_lock(plan.url, plan.sweep_dir, plan.study_name):
            repaired = repair_journal(plan.url)
            if repaired:
                log.warning(f"sweeplr: {repaired}")
            storage = open_storage(plan.url)
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                # "minimize" or "maximize", as configured: a wrong one is Optuna's ValueError
                directions=cast(list[Any], list(plan.directions)),
                pruner=pruner,
                load_if_exists=True,
            )
            session = cls(plan, study, storage, samplers)
            requeued = session.requeue_stale()
            standing = session._standing(requeued)
        log.info(standing)
        return session

    def _standing(self, requeued: list[int]) -> str:
        """Where the study stands as this worker joins it: one line for the log."""
        plan = self.plan
        trials = self.study.get_trials(deepcopy=False)
        full = budget_used(trials) >= plan.n_trials and not any(
            t.state == TrialState.WAITING for t in trials
        )
        return (
            f"Study {plan.study_name} ({', '.join(plan.directions)}) in "
            f"{public_storage(plan.url)}: {len(trials)} trials so far"
            + (f", re-queued stale trials {requeued}" if requeued else "")
            + (
                f"; it has all its {plan.n_trials} trials (hydra.sweeper.n_trials=N for more)."
                if full
                else ". Rerun the same command to resume it."
            )
        )

    def requeue_stale(self) -> list[int]:
        """Tell the stale trials whose job had finished; fail the others and queue their
        parameters again. Returns the numbers re-queued. Call under the study's lock."""
        return requeue_stale_trials(self.study, self.storage, self.plan.grace_period, self._settle)

    def _settle(self, trial: FrozenTrial) -> bool:
        """Tell a RUNNING trial whose job finished (its ``job_return.json`` is there) and return
        True; for one that did not, mark its folder superseded (a retry runs it) and return
        False. Needs run folders named by trial; others are always run again."""
        if trial.state != TrialState.RUNNING or not self.plan.trial_dirs:
            return False
        run_dir = self.plan.sweep_dir / str(trial.number)
        returned = read_job_return(run_dir)
        if returned is None:
            mark_superseded(run_dir, trial.number)
            return False
        stopped = trial.user_attrs.get(STOPPED_ATTR)
        stored_id = self._trial_id(trial.number)
        self.storage.set_trial_user_attr(stored_id, "run_dir", str(run_dir.absolute()))
        if stopped:
            self.storage.set_trial_user_attr(stored_id, "status", stopped["status"])
            self._safe_tell(trial.number, state=TrialState.PRUNED)
        else:
            try:
                values = checked_values(returned, len(self.plan.directions))
            except ValueError:
                self._safe_tell(trial.number, state=TrialState.FAIL)
            else:
                self._safe_tell(trial.number, values=values)
        log.info(f"sweeplr: trial {trial.number} had finished before its worker stopped: told")
        return True

    @contextmanager
    def next_batch(self) -> Iterator[list[optuna.Trial]]:
        """The next batch's trials, asked under the study's lock and marked as this worker's;
        empty once the budget is spent. The block suggests their parameters: the batch's
        trials, parameters and worker stamps reach the disk with one fsync at its end, before
        any of their run folders is written."""
        with one_fsync(self.plan.url):
            with study_lock(self.plan.url, self.plan.sweep_dir, self.plan.study_name):
                self._ask_batch()
            yield list(self._batch)

    def _ask_batch(self) -> None:
        plan = self.plan
        trials = self.study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        room = max(0, plan.n_trials - budget_used(trials)) + waiting
        size = min(plan.n_jobs, room, batch_limit(plan.sampler_cfg, trials))
        self._batch = []
        for _ in range(size):  # one by one: a crash hands back those asked so far
            self._batch.append(ask_marked(self.study, self.storage, self._samplers))
        for trial in self._batch:
            self._beating[trial.number] = self._trial_id(trial.number)
            self._heartbeat.add(self._beating[trial.number])

    def tell_batch(self, outcomes: Sequence[JobOutcome]) -> list[int]:
        """Tell each trial of the batch in flight its job's outcome, with one fsync.

        Returns the positions of the jobs that raised when the batch's failures pass
        ``max_failure_rate``: the sweep ends on them, as the stock plugin's does. A value Optuna
        cannot take is a FAIL trial too, logged, and the search goes on."""
        for trial in self._batch:
            self._heartbeat.discard(self._beating.pop(trial.number))
        with one_fsync(self.plan.url):
            failed = [
                position
                for position, (trial, outcome) in enumerate(zip(self._batch, outcomes, strict=True))
                if self._tell(trial, outcome)
            ]
        self._batch = []
        if not failed or len(failed) / len(outcomes) <= self.plan.max_failure_rate:
            return []
        log.error(
            f"Failed {len(failed)} times out of {len(outcomes)} "
            f"with max_failure_rate={self.plan.max_failure_rate}."
        )
        return [position for position in failed if outcomes[position].raised]

    def _tell(self, trial: optuna.Trial, outcome: JobOutcome) -> bool:
        """Tell one trial its outcome; True when it counts as a failure."""
        if outcome.run_dir is not None:
            trial.set_user_attr("run_dir", str(outcome.run_dir))
        # The job set it through its own handle on the trial (TrialLink.stop); this one's
        # cached attributes predate it, so read the stored trial afresh.
        stored_id = self._trial_id(trial.number)
        stopped = self.storage.get_trial_user_attrs(stored_id).get(STOPPED_ATTR)
        if outcome.raised and not isinstance(outcome.value, optuna.TrialPruned):
            self._safe_tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {first_line(outcome.value)}")
            return True
        if outcome.raised or stopped:
            if stopped:  # pruned or diverged: the summary and Optuna's pictures say which
                trial.set_user_attr("status", stopped["status"])
            self._safe_tell(trial, state=TrialState.PRUNED)
            return False
        try:
            values = checked_values(outcome.value, len(self.plan.directions))
        except ValueError as exc:
            self._safe_tell(trial, state=TrialState.FAIL)
            log.warning(f"Failed experiment: {exc}")
            return True
        self._safe_tell(trial, values=values)
        return False

    def _safe_tell(self, trial: optuna.Trial | int, **kwargs: Any) -> None:
        """``study.tell``; the grid sampler's ``study.stop()`` at the last grid point, which
        raises outside ``study.optimize``, is expected (Optuna stores the trial first), whatever
        the last point's state: a value, PRUNED or FAIL."""
        try:
            self.study.tell(trial, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    def hand_back(self) -> None:
        """Return the trials in flight to the study: one whose job had finished is told, the
        others re-queued, so a resume runs them again."""
        plan = self.plan
        with study_lock(plan.url, plan.sweep_dir, plan.study_name):
            for trial in self._batch:
                stored_id = self._beating.pop(trial.number, None)
                if stored_id is None:  # being told: the heartbeat let it go
                    stored_id = self._trial_id(trial.number)
                self._heartbeat.discard(stored_id)
                frozen = self.storage.get_trial(stored_id)
                if frozen.state == TrialState.RUNNING and not self._settle(frozen):
                    requeue(self.study, self.storage, frozen)
            self._batch = []

    def close(self) -> None:
        self._heartbeat.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Hand back the trials in flight when the block ends with Ctrl-C or a crash; not
        when the storage itself is lost (nothing reaches it)."""
        try:
            if error is not None and not isinstance(error, STORAGE_ERRORS):
                self.hand_back()
        finally:
            self.close()

    def _trial_id(self, number: int) -> int:
        return trial_id(self.storage, self.plan.study_name, number)

    def write_results(self) -> None:
        """``optimization_results.yaml`` in the sweep directory, as the stock plugin writes
        it, with the study's name, storage and how to open it; the best trial(s) logged."""
        from omegaconf import OmegaConf

        study, url = self.study, self.plan.url
        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            # as optuna-dashboard takes it (and optuna.load_study, for a database)
            "storage": public_storage(url),
            "load_study": load_study_code(url, study.study_name),
            "dashboard": dashboard_command(url),
            "trials": {k: v for k, v in counts.items() if v},
        }
        if not any(t.state == TrialState.COMPLETE for t in trials):
            log.warning("No trial completed: no best trial")
        elif len(study.directions) == 1:
            results |= self._best()
        else:
            results["solutions"] = self._pareto_front()
        log.info(f"Dashboard: {results['dashboard']}")
        sweep_dir = self.plan.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results))
        )

    def _best(self) -> dict[str, Any]:
        best = self.study.best_trial
        log.info(f"Best trial {best.number}: value {best.value} params {best.params}")
        log.info(f"Best run: {best.user_attrs.get('run_dir')}")
        return {
            "best_params": best.params,
            "best_value": best.value,
            "best_trial": best.number,
            "best_run_dir": best.user_attrs.get("run_dir"),
        }

    def _pareto_front(self) -> list[dict[str, Any]]:
        best_trials = self.study.best_trials
        log.info(f"Number of Pareto solutions: {len(best_trials)}")
        for t in best_trials:
            log.info(f"    Trial {t.number}: values {t.values}, params {t.params}")
        return [
            {
                "params": t.params,
                "values": t.values,
                "trial": t.number,
                "run_dir": t.user_attrs.get("run_dir"),
            }
            for t in best_trials
        ]
