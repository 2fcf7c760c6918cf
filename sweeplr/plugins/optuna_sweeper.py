"""``hydra/sweeper=sweeplr_optuna``: Hydra's Optuna sweeper, made resumable and prunable.

It keeps the stock plugin's search-space syntax and samplers, and adds what the stock plugin
lacks (see the sweeps section of the README):
- resume: the study lives in a persistent storage (a journal file in the sweep directory by
  default); rerunning the same command continues it up to ``n_trials`` in total, re-queueing
  trials whose process died, and numbering run directories by trial so none is overwritten;
- pruning: each job gets its trial number (``trial=N``) and reports to the trial through the
  shared storage, stopping when ``hydra.sweeper.pruner`` says so;
- divergence: a diverged run is told to Optuna as PRUNED (a bad result the sampler learns
  from), never as a value that could rank best;
- the best trial is written to ``optimization_results.yaml`` with its run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.trial import TrialState

from sweeplr.config import OBJECTIVES
from sweeplr.records import METRICS_FILE, atomic_write_text

if TYPE_CHECKING:
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
PRUNER_TARGETS = ("optuna.pruners.*",)


def make_pruner(cfg: Any) -> optuna.pruners.BasePruner | None:
    """The configured Optuna pruner (only ``optuna.pruners`` classes may be named)."""
    return instantiate(cfg, _execution_whitelist_=PRUNER_TARGETS) if cfg else None


@dataclass
class SweeplrOptunaConf(OptunaSweeperConf):
    _target_: str = "sweeplr.plugins.optuna_sweeper.SweeplrOptunaSweeper"
    direction: Any = "auto"  # auto: minimise or maximise as the run's `objective` needs
    n_jobs: int = 1  # trials asked per batch (parallel launchers run a batch at once)
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


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quote(value: str) -> str:
    """Quote a value for a Hydra override (storage URLs hold ':' and '/')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_outcome(ret: JobReturn) -> tuple[TrialState, list[float] | None, dict[str, Any] | None]:
    """Trial state and value of a finished job, from its run record."""
    if ret.status != JobStatus.COMPLETED:
        return TrialState.FAIL, None, None
    path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / METRICS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return TrialState.FAIL, None, None
    status = record.get("status")
    value = record.get("objective", {}).get("value")
    if status == "completed" and value is not None:
        return TrialState.COMPLETE, [float(value)], record
    # pruned, and diverged runs: told as PRUNED so samplers learn the region is bad.
    return TrialState.PRUNED, None, record


class SweeplrOptunaSweeper(Sweeper):
    """Optuna search over ``hydra.sweeper.params`` with resume, pruning and divergence handling."""

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

    def _direction(self) -> str:
        direction = self.impl.direction
        if str(direction) == "auto":
            return OBJECTIVES[self.config.objective]
        return direction if isinstance(direction, str) else direction.name

    def _sampler(self, n_existing: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; a seeded one is re-seeded past the trials already run, so a
        resumed study does not propose the same configurations again."""
        cfg = OmegaConf.create(OmegaConf.to_container(self.sampler_cfg))
        if cfg.get("seed") is not None and n_existing:
            cfg.seed = int(cfg.seed) + n_existing
        return instantiate(cfg, _execution_whitelist_=SAMPLER_TARGETS)

    def sweep(self, arguments: list[str]) -> None:
        impl, config = self.impl, self.config
        # Here, not at the top: Hydra imports every plugin at start-up, and studies needs
        # SQLAlchemy, which a run that sweeps nothing should not pay for.
        from sweeplr.studies import (
            STORAGE_ERRORS,
            Heartbeat,
            budget_used,
            open_storage,
            requeue,
            requeue_stale_trials,
            storage_url,
            study_lock,
        )

        params_conf = [*impl._parse_sweeper_params_config(), *arguments]
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:
            distributions.pop(name, None)

        study_name = impl.study_name or default_study_name(
            list(config.hydra.overrides.task), config.hydra.sweeper
        )
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.study_name = study_name
        sweep_dir = Path(str(config.hydra.sweep.dir))
        url = storage_url(impl.storage, sweep_dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.storage = url
            # Jobs re-compose their config: give them the resolved study and storage.
            config.hydra.overrides.hydra.extend(
                [
                    f"hydra.sweeper.study_name={quote(study_name)}",
                    f"hydra.sweeper.storage={quote(url)}",
                ]
            )
        pruner = make_pruner(self.pruner_cfg)
        direction = self._direction()
        try:
            with study_lock(url, sweep_dir, study_name):
                study = optuna.create_study(
                    study_name=study_name,
                    storage=open_storage(url),
                    direction=direction,
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
            f"Study {study_name} ({direction}) in {url}: {n_existing} trials so far"
            + (f", re-queued stale trials {requeued}" if requeued else "")
            + ". Rerun the same command to resume it."
        )

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
                overrides = [
                    (*job, f"trial={trial.number}")
                    for trial, job in zip(
                        in_flight,
                        # Fixed values travel as overrides, not as one stored attribute per value
                        # and trial: every storage write costs a lock and an fsync.
                        impl._configure_trials(
                            in_flight,
                            distributions,
                            {},
                            [*(f"{k}={v}" for k, v in fixed_params.items()), *fixed_overrides],
                        ),
                        strict=True,
                    )
                ]
                returns = impl.launcher.launch(overrides, initial_job_idx=in_flight[0].number)
                self._tell_all(study, in_flight, returns, heartbeat)
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

    def _is_grid(self) -> bool:
        return str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler")

    def _grid_sampler(self, distributions: dict[str, Any]) -> optuna.samplers.BaseSampler:
        space = {
            name: OptunaSweeperImpl._to_grid_sampler_choices(d) for name, d in distributions.items()
        }
        self.impl.n_trials = min(self.impl.n_trials, math.prod(len(c) for c in space.values()))
        return optuna.samplers.GridSampler(space, seed=self.sampler_cfg.get("seed"))

    def _tell_all(
        self,
        study: optuna.Study,
        trials: list[optuna.Trial],
        returns: list[JobReturn],
        heartbeat: Heartbeat,
    ) -> None:
        failures = []
        for trial, ret in zip(trials, returns, strict=True):
            heartbeat.discard(trial._trial_id)
            state, values, record = job_outcome(ret)
            if record is not None:
                if record["status"] != "completed":  # COMPLETE says it; a write fewer a trial
                    study._storage.set_trial_user_attr(trial._trial_id, "status", record["status"])
                study._storage.set_trial_user_attr(
                    trial._trial_id, "run_dir", str(ret.hydra_cfg.hydra.runtime.output_dir)
                )
            study.tell(trial, state=state, values=values)
            if record is not None:
                record["trial"] = {
                    "number": trial.number,
                    "study": study.study_name,
                    "state": state.name,
                }
                path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / METRICS_FILE
                atomic_write_text(path, json.dumps(record, indent=2) + "\n")
            if ret.status == JobStatus.FAILED:
                failures.append(ret)
                log.warning(f"Trial {trial.number} failed: {ret._return_value!r}")
        if failures and len(failures) / len(returns) > self.impl.max_failure_rate:
            _ = failures[0].return_value  # re-raises the job's exception with its traceback

    def _write_results(self, study: optuna.Study, sweep_dir: Path, url: str) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": url,
            "trials": {k: v for k, v in counts.items() if v},
        }
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed:
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
            log.warning("No trial completed: no best trial")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results))
        )
