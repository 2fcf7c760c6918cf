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

import hashlib
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sweeplr.errors import first_line
from sweeplr.plugins.failures import end_with_failures
from sweeplr.pruning import TRIAL_ENV, make_pruner
from sweeplr.schema import OBJECTIVES

if TYPE_CHECKING:
    import optuna

    from sweeplr.studies import Heartbeat

log = logging.getLogger(__name__)

# Keys of the sweeper config that do not change what a study searches, so they are left out of
# the default study name: rerunning with more trials or workers continues the same study.
NAME_NEUTRAL_KEYS = (
    "n_trials",
    "n_jobs",
    "storage",
    "study_name",
    "heartbeat_interval",
    "grace_period",
    "max_failure_rate",
)
SAMPLER_TARGETS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*")
HYDRA_DEFAULT_SUBDIR = "${hydra.job.num}"
TRIAL_SUBDIR = "${hydra.job.env_set." + TRIAL_ENV + "}"


@dataclass
class SweeplrOptunaConf(OptunaSweeperConf):
    _target_: str = "sweeplr.plugins.optuna_sweeper.SweeplrOptunaSweeper"
    # auto: the direction of the app's sweeplr `objective` key if it has one, else minimize
    direction: Any = "auto"
    n_jobs: int = 1  # trials asked per batch (a batch is one launch)
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

    def _sampler(self, n_existing: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; a seeded one is re-seeded past the trials already run, so a
        resumed study does not propose the same configurations again."""
        from hydra.utils import instantiate

        cfg = OmegaConf.create(OmegaConf.to_container(self.sampler_cfg))
        if cfg.get("seed") is not None and n_existing:
            cfg.seed = int(cfg.seed) + n_existing
        return instantiate(cfg, _execution_whitelist_=SAMPLER_TARGETS)

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
            budget_used,
            open_storage,
            requeue,
            requeue_stale_trials,
            study_lock,
        )

        impl, config = self.impl, self.config
        params_conf = [*impl._parse_sweeper_params_config(), *arguments]
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:
            distributions.pop(name, None)

        study_name = impl.study_name or default_study_name(
            OmegaConf.to_container(config.hydra.overrides.task), config.hydra.sweeper
        )
        sweep_dir, url = self._settle_master_config(study_name)
        pruner = make_pruner(self.pruner_cfg)
        directions = self._directions()
        try:
            with study_lock(url, sweep_dir, study_name):
                study = optuna.create_study(
                    study_name=study_name,
                    storage=open_storage(url),
                    directions=directions,
                    pruner=pruner,
                    load_if_exists=True,
                )
                requeued = requeue_stale_trials(study, self.grace_period)
                n_existing = len(study.get_trials(deepcopy=False))
        except STORAGE_ERRORS as exc:
            sys.exit(f"error: hydra.sweeper.storage={url} is unreachable: {first_line(exc)}")
        if self._is_grid():
            study.sampler = self._grid_sampler(distributions)
        else:
            study.sampler = self._sampler(n_existing)
        log.info(
            f"Study {study_name} ({', '.join(directions)}) in {url}: {n_existing} trials so far"
            + (f", re-queued stale trials {requeued}" if requeued else "")
            + ". Rerun the same command to resume it."
        )
        fixed = [*(f"{k}={v}" for k, v in fixed_params.items()), *fixed_overrides]

        heartbeat = Heartbeat(study._storage, self.heartbeat_interval)
        in_flight: list[optuna.Trial] = []
        # SIGTERM (a scheduler's stop, `kill`) takes the same way out as Ctrl-C, below.
        previous_sigterm = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        try:
            while True:
                with study_lock(url, sweep_dir, study_name):
                    trials = study.get_trials(deepcopy=False)
                    waiting = sum(t.state == TrialState.WAITING for t in trials)
                    room = max(0, impl.n_trials - budget_used(trials)) + waiting
                    batch = min(impl.n_jobs, room)
                    if batch == 0:
                        break
                    in_flight = [study.ask() for _ in range(batch)]
                    for trial in in_flight:
                        heartbeat.add(trial._trial_id)
                # Fixed values travel as overrides, not as one stored attribute per value and
                # trial: every storage write costs a lock and an fsync.
                job_overrides = impl._configure_trials(in_flight, distributions, {}, fixed)
                overrides = [
                    (*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
                    for trial, job in zip(in_flight, job_overrides, strict=True)
                ]
                returns = impl.launcher.launch(overrides, initial_job_idx=in_flight[0].number)
                self._tell_all(study, in_flight, returns, len(directions), heartbeat)
                in_flight = []
        except STORAGE_ERRORS as exc:
            sys.exit(
                f"error: lost the study storage {url}: {first_line(exc)}; the finished runs "
                f"are kept in {sweep_dir}; rerun the same command to resume"
            )
        except BaseException:
            # Ctrl-C or a crash: hand the trials in flight back so a resume runs them again.
            with study_lock(url, sweep_dir, study_name):
                for trial in in_flight:
                    heartbeat.discard(trial._trial_id)
                    frozen = study._storage.get_trial(trial._trial_id)
                    if frozen.state == TrialState.RUNNING:
                        requeue(study, frozen)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
            heartbeat.close()
        self._write_results(study, sweep_dir, url)

    def _tell_all(
        self,
        study: optuna.Study,
        trials: Sequence[optuna.Trial],
        returns: Sequence[JobReturn],
        n_directions: int,
        heartbeat: Heartbeat,
    ) -> None:
        """Tell every trial of a batch its outcome; stop the sweep past ``max_failure_rate``."""
        failures: list[JobReturn | ValueError] = []
        for trial, ret in zip(trials, returns, strict=True):
            heartbeat.discard(trial._trial_id)
            failure = self._tell(study, trial, ret, n_directions)
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
        self, study: optuna.Study, trial: optuna.Trial, ret: JobReturn, n_directions: int
    ) -> JobReturn | ValueError | None:
        """Tell one trial its outcome; returns the failure, if it counts as one."""
        import optuna
        from optuna.trial import TrialState

        from sweeplr.studies import STOPPED_ATTR

        storage = study._storage
        if ret.hydra_cfg is not None:
            run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
            storage.set_trial_user_attr(trial._trial_id, "run_dir", run_dir)
        stopped = storage.get_trial_system_attrs(trial._trial_id).get(STOPPED_ATTR)
        if ret.status == JobStatus.FAILED and not isinstance(ret._return_value, optuna.TrialPruned):
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {first_line(ret._return_value)}")
            return ret
        if ret.status == JobStatus.FAILED or stopped:
            if stopped:  # pruned or diverged: the summary and Optuna's pictures say which
                storage.set_trial_user_attr(trial._trial_id, "status", stopped["status"])
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
    def _safe_tell(study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
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
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": url,
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
        from sweeplr.records import atomic_write_text

        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results))
        )
