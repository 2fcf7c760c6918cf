"""``hydra/sweeper=sweeplr_optuna``: Hydra's Optuna sweeper for any app, resumable and prunable.

It keeps the stock plugin's search-space syntax, samplers and results file, takes each trial's
value from what the task function returns (a float, or a list for a list of directions), and
adds what the stock plugin lacks (see the README's Optuna section):

- resume: the study lives in a persistent storage (a journal file in the sweep directory by
  default); rerunning the same command continues it up to ``n_trials`` in total, re-queueing
  trials whose process died; run directories are named by trial, so none is overwritten;
- pruning for any app: each job learns its trial number (``hydra.job.env_set.SWEEPLR_TRIAL``)
  and reports to it with ``sweeplr.pruning.report(step, value)``, stopping when
  ``hydra.sweeper.pruner`` says so; such a trial, or one whose task raised
  ``optuna.TrialPruned``, is told PRUNED;
- divergence: a job that reports a non-finite value, or a sweeplr run that diverged, is told
  PRUNED (a bad result the sampler learns from), never a value that could rank best;
- failures: a job that raised is told FAIL and counts toward ``max_failure_rate``.

Imports nothing heavy at the top: Hydra imports every plugin when any Hydra app starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweeplr.errors import SweeplrError, first_line
from sweeplr.plugins.failures import end_with_failures, refuse
from sweeplr.pruning import TRIAL_ENV, make_pruner
from sweeplr.schema import OBJECTIVES

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# Keys of the sweeper config that do not change what a study searches, so they are left out of
# the default study name: rerunning with more trials or workers continues the same study. The
# storage is not one of them: the same search in another storage is another study, in another
# directory.
NAME_NEUTRAL_KEYS = (
    "n_trials",
    "n_jobs",
    "study_name",
    "heartbeat_interval",
    "grace_period",
    "max_failure_rate",
)
SAMPLER_TARGETS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*")
# Samplers whose proposals do not depend on results: nothing is lost by asking many at once.
BLIND_SAMPLERS = ("RandomSampler", "GridSampler", "QMCSampler", "BruteForceSampler")
# After its start-up trials, a learning sampler's batch is at most this fraction of the trials
# it has results of (measured: bench/README.md, P3).
RESULTS_PER_PROPOSAL = 4
HYDRA_DEFAULT_SUBDIR = "${hydra.job.num}"
TRIAL_SUBDIR = "${hydra.job.env_set." + TRIAL_ENV + "}"


@dataclass
class SweeplrOptunaConf(OptunaSweeperConf):
    _target_: str = "sweeplr.plugins.optuna_sweeper.SweeplrOptunaSweeper"
    # auto: the direction of the app's sweeplr `objective` key if it has one, else minimize
    direction: Any = "auto"
    # The most trials asked per batch (a batch is one launch); a learning sampler gets fewer
    # while it has few results (see `batch_limit`). 1 here: a batch pays off only with a
    # launcher that runs its jobs together or in parallel, and sweep=optuna, whose launcher
    # trains them together, sets 16; under the basic launcher a batch would only hold back
    # the results TPE and the pruner learn from.
    n_jobs: int = 1
    pruner: Any = None  # e.g. {_target_: optuna.pruners.MedianPruner}
    heartbeat_interval: float = 10.0  # seconds between liveness stamps of a running trial
    grace_period: float = 60.0  # a trial silent this long (on another host) is stale


ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplr_optuna", node=SweeplrOptunaConf, provider="sweeplr"
)


def default_study_name(task_overrides: list[str], sweeper_cfg: DictConfig) -> str:
    """A name that is the same whenever the same search is asked for again."""
    searched = {
        k: v for k, v in OmegaConf.to_container(sweeper_cfg).items() if k not in NAME_NEUTRAL_KEYS
    }
    text = json.dumps([sorted(task_overrides), searched], sort_keys=True, default=str)
    return "optuna-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def batch_limit(sampler_cfg: Any, trials: Sequence[FrozenTrial]) -> int:
    """How many trials the sampler can propose well at once; ``n_jobs`` caps it.

    A batch's proposals are made without one another's results. A sampler that learns nothing
    (random, grid, QMC) loses nothing by that, and neither do a learning sampler's random
    start-up trials (``n_startup_trials``), which go in one batch. After them a batch is at most
    a quarter of the results the sampler has: early on, when each result moves the model most,
    proposals are made one or two at a time, and batches grow as results add up. Pending trials
    count as bad results (TPE's ``constant_liar``, on in sweep=optuna), so that a batch's
    proposals spread out instead of piling onto one point. Ratios measured in bench/README.md.
    """
    from optuna.trial import TrialState

    if str(sampler_cfg.get("_target_", "")).endswith(BLIND_SAMPLERS):
        return sys.maxsize
    learned = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pending = sum(t.state == TrialState.RUNNING for t in trials)  # other workers' trials
    startup = int(sampler_cfg.get("n_startup_trials") or 0)
    if learned + pending < startup:
        return startup - learned - pending
    return max(1, learned // RESULTS_PER_PROPOSAL)


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quote(value: str) -> str:
    """Quote a value for a Hydra override (storage URLs hold ':' and '/')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


STUDY_MARK = ".sweeplr-study.json"


def claim_sweep_dir(sweep_dir: Path, study_name: str, url: str) -> None:
    """Mark ``sweep_dir`` as the study's; :class:`SweeplrError` when another study's (or a
    grid's) runs are there.

    Trial numbers name run folders; two studies in one directory would write into each
    other's folders and mix in one summary.
    """
    from sweeplr.plugins.grid_sweeper import refuse_a_used_directory
    from sweeplr.records import atomic_write_text
    from sweeplr.studies import storage_url

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
            refuse_a_used_directory(sweep_dir)  # a grid's runs are not
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(mark, json.dumps(ours) + "\n")
    elif theirs != ours:
        raise SweeplrError(
            f"hydra.sweep.dir={sweep_dir} holds study {theirs.get('study_name')} in "
            f"{theirs.get('storage')}; allowed: that study's storage and name, or another "
            "hydra.sweep.dir"
        )


class SweeplrOptunaSweeper(Sweeper):
    """Optuna search over ``hydra.sweeper.params`` with resume, pruning and failure handling."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: Any = None,
        heartbeat_interval: float = 10.0,
        grace_period: float = 60.0,
    ) -> None:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        # The stock implementation parses the search space and turns trials into overrides.
        self.impl = OptunaSweeperImpl(
            None,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            custom_search_space,
            params,
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _directions(self) -> list[str]:
        """The study's directions; ``auto`` follows the app's sweeplr ``objective`` if any."""
        if str(self.impl.direction) == "auto":
            objective = self.config.get("objective")
            return [
                OBJECTIVES.get(objective, "minimize") if isinstance(objective, str) else "minimize"
            ]
        return self.impl._get_directions()

    def _samplers(self) -> Any:
        """``number -> sampler``: the configured sampler, seeded with ``seed + number`` for the
        trial numbered ``number`` when it has a seed.

        The number is the trial's own, fixed under the study's lock as it is asked (a new
        trial's is the study's trial count then; a queued one keeps its number), so two
        workers started together, or a resumed sweep, never replay one sequence of proposals,
        and the same command proposes the same trials again.
        """
        from hydra.utils import instantiate

        cfg = OmegaConf.create(OmegaConf.to_container(self.sampler_cfg))
        seed = cfg.get("seed")
        if seed is None:
            sampler = instantiate(cfg, _execution_whitelist_=SAMPLER_TARGETS)
            return lambda number: sampler
        make = instantiate(cfg, _partial_=True, _execution_whitelist_=SAMPLER_TARGETS)
        return lambda number: make(seed=int(seed) + number)

    def _is_grid(self) -> bool:
        return str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler")

    def _grid_sampler(self, distributions: dict[str, Any]) -> optuna.samplers.BaseSampler:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        space = {
            name: OptunaSweeperImpl._to_grid_sampler_choices(d) for name, d in distributions.items()
        }
        self.impl.n_trials = min(self.impl.n_trials, math.prod(len(c) for c in space.values()))
        return optuna.samplers.GridSampler(space, seed=self.sampler_cfg.get("seed"))

    def _settle_master_config(self, study_name: str) -> tuple[Path, str]:
        """Write the study's name and storage (and, with Hydra's default, a run directory per
        trial) into the sweep's config, as Hydra overrides too: jobs re-compose their config
        from them. Returns the sweep directory (it may name the study) and the storage URL."""
        from sweeplr.studies import storage_url

        config = self.config
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.study_name = study_name
            sweep_dir = Path(str(config.hydra.sweep.dir))
            url = storage_url(self.impl.storage, sweep_dir)
            config.hydra.sweeper.storage = url
            hydra_overrides = [
                f"hydra.sweeper.study_name={quote(study_name)}",
                f"hydra.sweeper.storage={quote(url)}",
            ]
            subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
            if subdir == HYDRA_DEFAULT_SUBDIR:
                # Job numbers restart with every process; trial numbers never repeat, so a
                # resumed study never writes into a finished trial's directory.
                config.hydra.sweep.subdir = TRIAL_SUBDIR
                hydra_overrides.append(f"hydra.sweep.subdir={TRIAL_SUBDIR}")
            raw_subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
            self.trial_dirs = raw_subdir == TRIAL_SUBDIR
            config.hydra.overrides.hydra.extend(hydra_overrides)
        return sweep_dir, url

    def sweep(self, arguments: list[str]) -> None:
        # Here, not at the top: Hydra imports every plugin at start-up, and a run that sweeps
        # nothing should not pay for Optuna and SQLAlchemy.
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
        from optuna.trial import TrialState

        from sweeplr.studies import (
            STORAGE_ERRORS,
            Heartbeat,
            ask_marked,
            budget_used,
            one_fsync,
            open_storage,
            public_storage,
            repair_journal,
            requeue,
            requeue_stale_trials,
            study_lock,
            trial_id,
        )

        impl, config = self.impl, self.config
        for name in ("n_trials", "n_jobs"):
            value = getattr(impl, name)
            if value < 1:
                refuse(
                    config,
                    f"error: hydra.sweeper.{name}={value} is invalid; allowed: an integer >= 1",
                )
        params_conf = [*impl._parse_sweeper_params_config(), *arguments]
        for text in params_conf:  # a space Optuna cannot take: one line naming it, as typed
            try:
                create_params_from_overrides([text])
            except ValueError as exc:
                refuse(
                    config, f"error: {text} is not a search space Optuna takes: {first_line(exc)}"
                )
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:
            distributions.pop(name, None)

        study_name = impl.study_name or default_study_name(
            OmegaConf.to_container(config.hydra.overrides.task), config.hydra.sweeper
        )
        sweep_dir, url = self._settle_master_config(study_name)
        try:
            claim_sweep_dir(sweep_dir, study_name, url)
        except SweeplrError as exc:
            refuse(config, f"error: {exc}")
        pruner = make_pruner(self.pruner_cfg)
        directions = self._directions()
        try:
            with study_lock(url, sweep_dir, study_name):
                repaired = repair_journal(url)
                if repaired:
                    log.warning(f"sweeplr: {repaired}")
                storage = open_storage(url)
                study = optuna.create_study(
                    study_name=study_name,
                    storage=storage,
                    directions=directions,
                    pruner=pruner,
                    load_if_exists=True,
                )
                settle = partial(self._settle, study, storage, sweep_dir, len(directions))
                requeued = requeue_stale_trials(study, storage, self.grace_period, settle)
                existing = study.get_trials(deepcopy=False)
                n_existing = len(existing)
                full = budget_used(existing) >= impl.n_trials and not any(
                    t.state == TrialState.WAITING for t in existing
                )
        except SweeplrError as exc:
            refuse(config, f"error: {exc}")
        except STORAGE_ERRORS as exc:
            refuse(config, f"error: hydra.sweeper.storage={url} is unreachable: {first_line(exc)}")
        if self._is_grid():
            grid = self._grid_sampler(distributions)
            samplers = lambda number: grid  # one sampler walks the whole grid
        else:
            samplers = self._samplers()
        log.info(
            f"Study {study_name} ({', '.join(directions)}) in {public_storage(url)}: "
            f"{n_existing} trials so far"
            + (f", re-queued stale trials {requeued}" if requeued else "")
            + (
                f"; it has all its {impl.n_trials} trials (hydra.sweeper.n_trials=N for more)."
                if full
                else ". Rerun the same command to resume it."
            )
        )
        fixed = [*(f"{k}={v}" for k, v in fixed_params.items()), *fixed_overrides]

        heartbeat = Heartbeat(storage, self.heartbeat_interval)
        in_flight: list[optuna.Trial] = []
        ids: dict[int, int] = {}  # trial number -> storage id, for the heartbeat
        # SIGTERM (a scheduler's stop, `kill`) takes the same way out as Ctrl-C, below.
        previous_sigterm = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        try:
            while True:
                # The batch's trials, parameters and worker stamps reach the disk with one
                # fsync, before any of their run folders is written.
                with one_fsync(url):
                    with study_lock(url, sweep_dir, study_name):
                        trials = study.get_trials(deepcopy=False)
                        waiting = sum(t.state == TrialState.WAITING for t in trials)
                        room = max(0, impl.n_trials - budget_used(trials)) + waiting
                        batch = min(impl.n_jobs, room, batch_limit(self.sampler_cfg, trials))
                        if batch == 0:
                            break
                        in_flight = []
                        for _ in range(batch):
                            in_flight.append(ask_marked(study, storage, samplers))
                        for trial in in_flight:
                            ids[trial.number] = trial_id(storage, study_name, trial.number)
                            heartbeat.add(ids[trial.number])
                    # Fixed values travel as overrides, not as one stored attribute per value
                    # and trial.
                    job_overrides = impl._configure_trials(in_flight, distributions, {}, fixed)
                overrides = [
                    (*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
                    for trial, job in zip(in_flight, job_overrides, strict=True)
                ]
                returns = impl.launcher.launch(overrides, initial_job_idx=in_flight[0].number)
                for trial in in_flight:
                    heartbeat.discard(ids.pop(trial.number))
                with one_fsync(url):
                    self._tell_all(study, storage, in_flight, returns, len(directions))
                in_flight = []
        except STORAGE_ERRORS as exc:
            lost = (
                "the disk is full"  # the journal or a record: either way, nothing to retry
                if getattr(exc, "errno", None) == errno.ENOSPC
                else f"lost the study storage {url}: {first_line(exc)}"
            )
            sys.exit(
                f"error: {lost}; the finished runs are kept in {sweep_dir}; "
                "rerun the same command to resume"
            )
        except BaseException:
            # Ctrl-C or a crash: hand the trials in flight back so a resume runs them again.
            with study_lock(url, sweep_dir, study_name):
                for trial in in_flight:
                    stored_id = ids.pop(trial.number, None)
                    if stored_id is None:  # its launch had begun: the heartbeat let it go
                        stored_id = trial_id(storage, study_name, trial.number)
                    heartbeat.discard(stored_id)
                    frozen = storage.get_trial(stored_id)
                    settled = self._settle(study, storage, sweep_dir, len(directions), frozen)
                    if frozen.state == TrialState.RUNNING and not settled:
                        requeue(study, storage, frozen)
            if isinstance(sys.exc_info()[1], KeyboardInterrupt):  # Ctrl-C, SIGTERM
                from sweeplr.console import end_interrupted

                end_interrupted(
                    f"the finished runs are kept in {sweep_dir}, the trials in flight were "
                    "handed back; rerun the same command to resume"
                )
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            heartbeat.close()
        self._write_results(study, sweep_dir, url)

    def _settle(
        self,
        study: optuna.Study,
        storage: BaseStorage,
        sweep_dir: Path,
        n_directions: int,
        trial: FrozenTrial,
    ) -> bool:
        """Tell a RUNNING trial whose job finished (its ``job_return.json`` is there) and return
        True; for one that did not, mark its folder superseded (a retry runs it) and return
        False. Needs run folders named by trial; others are always run again."""
        from optuna.trial import TrialState

        from sweeplr.records import mark_superseded, read_job_return
        from sweeplr.studies import STOPPED_ATTR, trial_id

        if trial.state != TrialState.RUNNING or not self.trial_dirs:
            return False
        run_dir = sweep_dir / str(trial.number)
        returned = read_job_return(run_dir)
        if returned is None:
            mark_superseded(run_dir, trial.number)
            return False
        stopped = trial.user_attrs.get(STOPPED_ATTR)
        stored_id = trial_id(storage, study.study_name, trial.number)
        storage.set_trial_user_attr(stored_id, "run_dir", str(run_dir.absolute()))
        if stopped:
            storage.set_trial_user_attr(stored_id, "status", stopped["status"])
            self._safe_tell(study, trial.number, state=TrialState.PRUNED)
        else:
            try:
                values = checked_values(returned, n_directions)
            except ValueError:
                self._safe_tell(study, trial.number, state=TrialState.FAIL)
            else:
                self._safe_tell(study, trial.number, values=values)
        log.info(f"sweeplr: trial {trial.number} had finished before its worker stopped: told")
        return True

    def _tell_all(
        self,
        study: optuna.Study,
        storage: BaseStorage,
        trials: Sequence[optuna.Trial],
        returns: Sequence[JobReturn],
        n_directions: int,
    ) -> None:
        """Tell every trial of a batch its outcome; stop the sweep past ``max_failure_rate``."""
        failures: list[JobReturn | ValueError] = []
        for trial, ret in zip(trials, returns, strict=True):
            failure = self._tell(study, storage, trial, ret, n_directions)
            if failure is not None:
                failures.append(failure)
        if failures and len(failures) / len(returns) > self.impl.max_failure_rate:
            log.error(
                f"Failed {len(failures)} times out of {len(returns)} "
                f"with max_failure_rate={self.impl.max_failure_rate}."
            )
            # As the stock plugin: jobs that raised end the sweep; a value Optuna cannot take
            # is a FAIL trial, logged, and the search goes on.
            failed_jobs = [f for f in failures if isinstance(f, JobReturn)]
            if failed_jobs:
                end_with_failures(failed_jobs)

    def _tell(
        self,
        study: optuna.Study,
        storage: BaseStorage,
        trial: optuna.Trial,
        ret: JobReturn,
        n_directions: int,
    ) -> JobReturn | ValueError | None:
        """Tell one trial its outcome; returns the failure, if it counts as one."""
        import optuna
        from optuna.trial import TrialState

        from sweeplr.plugins.job_runner import hydra_field
        from sweeplr.studies import STOPPED_ATTR, trial_id

        run_dir = hydra_field(ret, "runtime.output_dir")
        if run_dir is not None:
            trial.set_user_attr("run_dir", str(run_dir))
        # The job set it through its own handle on the trial (TrialLink.stop); this one's
        # cached attributes predate it, so read the stored trial afresh.
        stored_id = trial_id(storage, study.study_name, trial.number)
        stopped = storage.get_trial_user_attrs(stored_id).get(STOPPED_ATTR)
        if ret.status == JobStatus.FAILED and not isinstance(ret._return_value, optuna.TrialPruned):
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {first_line(ret._return_value)}")
            return ret
        if ret.status == JobStatus.FAILED or stopped:
            if stopped:  # pruned or diverged: the summary and Optuna's pictures say which
                trial.set_user_attr("status", stopped["status"])
            self._safe_tell(study, trial, state=TrialState.PRUNED)
            return None
        try:
            values = checked_values(ret.return_value, n_directions)
        except ValueError as exc:
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Failed experiment: {exc}")
            return exc
        self._safe_tell(study, trial, values=values)
        return None

    @staticmethod
    def _safe_tell(study: optuna.Study, trial: optuna.Trial | int, **kwargs: Any) -> None:
        """``study.tell``; the grid sampler's ``study.stop()`` at the last grid point, which
        raises outside ``study.optimize``, is expected (Optuna stores the trial first)."""
        try:
            study.tell(trial, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise

    def _write_results(self, study: optuna.Study, sweep_dir: Path, url: str) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
        from sweeplr.studies import dashboard_command, load_study_code, public_storage

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
            best = study.best_trial
            results |= {
                "best_params": best.params,
                "best_value": best.value,
                "best_trial": best.number,
                "best_run_dir": best.user_attrs.get("run_dir"),
            }
            log.info(f"Best trial {best.number}: value {best.value} params {best.params}")
            log.info(f"Best run: {best.user_attrs.get('run_dir')}")
        else:
            best_trials = study.best_trials
            results["solutions"] = [
                {
                    "params": t.params,
                    "values": t.values,
                    "trial": t.number,
                    "run_dir": t.user_attrs.get("run_dir"),
                }
                for t in best_trials
            ]
            log.info(f"Number of Pareto solutions: {len(best_trials)}")
            for t in best_trials:
                log.info(f"    Trial {t.number}: values {t.values}, params {t.params}")
        log.info(f"Dashboard: {results['dashboard']}")
        from sweeplr.records import atomic_write_text

        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results))
        )
