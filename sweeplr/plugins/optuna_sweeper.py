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

The study's life (claiming the directory, repair, asking, telling, handing back) is
``sweeplr.study_session``, which knows no Hydra; this plugin turns Hydra's config into its plan,
launches each batch through Hydra's launcher and turns the jobs' returns into outcomes.

Imports nothing heavy at the top: Hydra imports every plugin when any Hydra app starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

    from sweeplr.study_session import Samplers, StudySession

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
Container = TypeVar("Container", dict, list)
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
    searched = {k: v for k, v in container(sweeper_cfg, dict).items() if k not in NAME_NEUTRAL_KEYS}
    text = json.dumps([sorted(task_overrides), searched], sort_keys=True, default=str)
    return "optuna-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def container(node: Any, kind: type[Container]) -> Container:
    """``OmegaConf.to_container(node)``, unresolved, which must be a ``kind`` (dict or list)."""
    value = OmegaConf.to_container(node, resolve=False)
    if not isinstance(value, kind):
        raise TypeError(f"{node} is no {kind.__name__}")
    return value


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def quote(value: str) -> str:
    """Quote a value for a Hydra override (storage URLs hold ':' and '/')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def claim_sweep_dir(sweep_dir: Path, study_name: str, url: str) -> None:
    """Mark ``sweep_dir`` as the study's (:func:`sweeplr.study_session.claim_sweep_dir`);
    :class:`SweeplrError` when another study's, or a grid's, runs are there."""
    from sweeplr.plugins.grid_sweeper import refuse_a_used_directory
    from sweeplr.study_session import claim_sweep_dir as claim

    claim(sweep_dir, study_name, url, check_unused=refuse_a_used_directory)


class SweeplrOptunaSweeper(Sweeper):
    """Optuna search over ``hydra.sweeper.params`` with resume, pruning and failure handling."""

    config: DictConfig  # the sweep's, from setup(), which Hydra calls before sweep()

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
        """The study's directions; ``auto`` follows the app's sweeplr ``objective`` if any.

        One direction said outright must be that objective's: maximising a loss would make
        Optuna's best trial the summary's worst. :class:`SweeplrError` if it is not."""
        objective = self.config.get("objective")
        own = OBJECTIVES.get(objective) if isinstance(objective, str) else None
        if str(self.impl.direction) == "auto":
            return [own or "minimize"]
        directions = self.impl._get_directions()
        if own is not None and len(directions) == 1 and directions[0] != own:
            raise SweeplrError(
                f"hydra.sweeper.direction={directions[0]} is invalid with "
                f"objective={objective}; allowed: {own} or auto (the objective's own direction)"
            )
        return directions

    def _samplers(self, distributions: dict[str, Any]) -> Samplers:
        """``number -> sampler``: the configured sampler, seeded with ``seed + number`` for the
        trial numbered ``number`` when it has a seed.

        The number is the trial's own, fixed under the study's lock as it is asked (a new
        trial's is the study's trial count then; a queued one keeps its number), so two
        workers started together, or a resumed sweep, never replay one sequence of proposals,
        and the same command proposes the same trials again. A grid is one sampler that walks
        the whole grid, and ``n_trials`` is at most the grid's size.
        """
        from hydra.utils import instantiate

        if str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler"):
            grid = self._grid_sampler(distributions)
            return lambda number: grid
        cfg = OmegaConf.create(container(self.sampler_cfg, dict))
        seed = cfg.get("seed")
        if seed is None:
            sampler = instantiate(cfg, _execution_whitelist_=SAMPLER_TARGETS)
            return lambda number: sampler
        make = instantiate(cfg, _partial_=True, _execution_whitelist_=SAMPLER_TARGETS)
        return lambda number: make(seed=int(seed) + number)

    def _grid_sampler(self, distributions: dict[str, Any]) -> optuna.samplers.BaseSampler:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        space = {
            name: OptunaSweeperImpl._to_grid_sampler_choices(d) for name, d in distributions.items()
        }
        self.impl.n_trials = min(self.impl.n_trials, math.prod(len(c) for c in space.values()))
        return optuna.samplers.GridSampler(space, seed=self.sampler_cfg.get("seed"))

    def _settle_master_config(self, study_name: str) -> tuple[Path, str, bool]:
        """Write the study's name and storage (and, with Hydra's default, a run directory per
        trial) into the sweep's config, as Hydra overrides too: jobs re-compose their config
        from them. Returns the sweep directory (it may name the study), the storage URL and
        whether run folders are named by trial."""
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
            subdir = container(config.hydra.sweep, dict).get("subdir")
            if subdir == HYDRA_DEFAULT_SUBDIR:
                # Job numbers restart with every process; trial numbers never repeat, so a
                # resumed study never writes into a finished trial's directory.
                config.hydra.sweep.subdir = TRIAL_SUBDIR
                hydra_overrides.append(f"hydra.sweep.subdir={TRIAL_SUBDIR}")
            raw_subdir = container(config.hydra.sweep, dict)["subdir"]
            config.hydra.overrides.hydra.extend(hydra_overrides)
        return sweep_dir, url, raw_subdir == TRIAL_SUBDIR

    def sweep(self, arguments: list[str]) -> None:
        # Here, not at the top: Hydra imports every plugin at start-up, and a run that sweeps
        # nothing should not pay for Optuna and SQLAlchemy.
        from sweeplr.studies import STORAGE_ERRORS

        self._check_budget()
        distributions, fixed = self._search_space(arguments)
        session = self._open_session(self._samplers(distributions))
        sweep_dir, url = session.plan.sweep_dir, session.plan.url
        # SIGTERM (a scheduler's stop, `kill`) takes the same way out as Ctrl-C, below.
        previous_sigterm = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        try:
            with session:  # on Ctrl-C or a crash it hands the trials in flight back
                while True:
                    with session.next_batch() as trials:
                        if not trials:
                            break
                        # Fixed values travel as overrides, not as one stored attribute per
                        # value and trial.
                        jobs = self.impl._configure_trials(trials, distributions, {}, fixed)
                    self._tell(session, self._launch(trials, jobs))
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
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM
            from sweeplr.console import end_interrupted

            end_interrupted(
                f"the finished runs are kept in {sweep_dir}, the trials in flight were "
                "handed back; rerun the same command to resume"
            )
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
        session.write_results()

    def _check_budget(self) -> None:
        for name in ("n_trials", "n_jobs"):
            value = getattr(self.impl, name)
            if value < 1:
                refuse(
                    self.config,
                    f"error: hydra.sweeper.{name}={value} is invalid; allowed: an integer >= 1",
                )

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The distributions searched and the overrides every job gets (the fixed values)."""
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        params_conf = [*self.impl._parse_sweeper_params_config(), *arguments]
        for text in params_conf:  # a space Optuna cannot take: one line naming it, as typed
            try:
                create_params_from_overrides([text])
            except ValueError as exc:
                refuse(
                    self.config,
                    f"error: {text} is not a search space Optuna takes: {first_line(exc)}",
                )
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:
            distributions.pop(name, None)
        return distributions, [*(f"{k}={v}" for k, v in fixed_params.items()), *fixed_overrides]

    def _open_session(self, samplers: Samplers) -> StudySession:
        """Name the study, write it into the sweep's config, claim the sweep directory and open
        the study; one line and exit status 1 for anything in the way."""
        from sweeplr.studies import STORAGE_ERRORS
        from sweeplr.study_session import StudyPlan, StudySession, check_pruning

        impl, config = self.impl, self.config
        study_name = impl.study_name or default_study_name(
            container(config.hydra.overrides.task, list), config.hydra.sweeper
        )
        sweep_dir, url, trial_dirs = self._settle_master_config(study_name)
        pruner = make_pruner(self.pruner_cfg)
        try:  # the settings first: a refused sweep leaves its directory unclaimed
            directions = tuple(self._directions())
            check_pruning(pruner, directions)
            claim_sweep_dir(sweep_dir, study_name, url)
        except SweeplrError as exc:
            refuse(config, f"error: {exc}")
        plan = StudyPlan(
            study_name=study_name,
            url=url,
            sweep_dir=sweep_dir,
            n_trials=impl.n_trials,
            directions=directions,
            n_jobs=impl.n_jobs,
            max_failure_rate=impl.max_failure_rate,
            sampler_cfg=self.sampler_cfg,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            trial_dirs=trial_dirs,
        )
        try:
            return StudySession.open(plan, pruner, samplers)
        except SweeplrError as exc:
            refuse(config, f"error: {exc}")
        except STORAGE_ERRORS as exc:
            refuse(config, f"error: hydra.sweeper.storage={url} is unreachable: {first_line(exc)}")

    def _launch(
        self, trials: Sequence[optuna.Trial], jobs: Sequence[Sequence[str]]
    ) -> Sequence[JobReturn]:
        """Run a batch's jobs through Hydra's launcher; each job learns its trial's number."""
        overrides = [
            (*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
            for trial, job in zip(trials, jobs, strict=True)
        ]
        launcher = self.impl.launcher
        if launcher is None:
            raise RuntimeError("the sweeper's setup() sets its launcher, before sweep()")
        return launcher.launch(overrides, initial_job_idx=trials[0].number)

    @staticmethod
    def _tell(session: StudySession, returns: Sequence[JobReturn]) -> None:
        """Tell the batch what its jobs returned; past ``max_failure_rate``, end the sweep on
        the jobs that raised."""
        from sweeplr.plugins.job_runner import hydra_field
        from sweeplr.study_session import JobOutcome

        outcomes = []
        for ret in returns:
            raised = ret.status == JobStatus.FAILED
            run_dir = hydra_field(ret, "runtime.output_dir")
            outcomes.append(
                JobOutcome(
                    value=ret._return_value if raised else ret.return_value,
                    raised=raised,
                    run_dir=None if run_dir is None else str(run_dir),
                )
            )
        failed = session.tell_batch(outcomes)
        if failed:
            end_with_failures([returns[position] for position in failed])
