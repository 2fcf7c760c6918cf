"""``hydra/launcher=sweeplr_batch``: Hydra's basic launcher, with jobs that can train together.

Every job runs in this process and in order with Hydra's job contract, exactly as under the basic
launcher: its own config and ``.hydra/`` files, its log file, ``hydra.job.chdir``, ``env_set``,
callbacks with its own config, and a ``JobReturn`` with its status and whatever its task
function returned or raised. Three things differ:

- the launch's jobs are composed before the first runs (``JobComposer``: one full composition
  per distinct set of structural overrides) and published in ``sweeplr.job_batch``, so that
  sweeplr's ``run`` can train the configurations that share a pass together, once, and each
  job's own ``run`` picks up its result;
- jobs run through :func:`sweeplr.plugins.job_runner.run_shared_job`, which keeps Hydra's job
  contract while sharing what does not change between two jobs (``job_runner: shared``, the
  default); ``job_runner: hydra`` runs them through Hydra's own ``run_job``;
- jobs go in chunks of ``max_batch``, which bounds memory and the size of a training pass.

A task that is not sweeplr's runs as under the basic launcher. Imports nothing heavy: Hydra
imports every plugin of the environment when any Hydra app starts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.nodes import ValueNode

from sweeplr.plugins.job_runner import JobLogs, SharedJob, interpolates, run_shared_job
from sweeplr.plugins.job_template import JobTemplate, Op

log = logging.getLogger(__name__)

# `key=number` in the forms Hydra's grammar reads as an int or a float: parsed without it.
PLAIN_NUMBER = re.compile(
    r"^(?P<key>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)="
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$"
)
INTEGER = re.compile(r"^[-+]?\d+$")
# Hydra nodes whose change Hydra itself must see in a full composition: the sweep's launcher and
# sweeper must not change per job, and aliases are fixed by the primary config.
CONTROLLER_KEYS = ("hydra.launcher", "hydra.sweeper", "hydra.aliases")
ENV_SET = "hydra.job.env_set"
TOP_KEY_END = re.compile(r"[.\[]")  # where a config path's top-level key ends (`a` of `a.b[0]`)
JOB_RUNNERS = ("shared", "hydra")

ValueOp = tuple[str, int | float] | Override  # a plain number's (key, value), or Hydra's parse


@dataclass
class BatchLauncherConf:
    _target_: str = "sweeplr.plugins.batch_launcher.BatchLauncher"
    max_batch: int = 256  # jobs composed, published and trained together, at most
    # shared: Hydra's job contract at a fraction of its cost per job (sweeplr/plugins/job_runner);
    # hydra: every job through hydra.core.utils.run_job, as the basic launcher runs it
    job_runner: str = "shared"


ConfigStore.instance().store(
    group="hydra/launcher", name="sweeplr_batch", node=BatchLauncherConf, provider="sweeplr"
)


def _operation(op: ValueOp) -> Op:
    """Apply a value override to a config as composition applies it."""
    if isinstance(op, tuple):
        key, number = op
        *path, name = key.split(".")

        def set_number(cfg: DictConfig) -> None:
            # OmegaConf.update's setattr ends in the leaf node's own _set_value (its type's
            # check and conversion: an int into a float field is a float); called directly when
            # the leaf is there and writable, it skips the parents' checks that cannot fail
            # then, a third of the cost. Anything else goes through update itself.
            node: Any = cfg
            for part in (*path, name):
                node = node._get_node(part) if isinstance(node, DictConfig) else None
            if isinstance(node, ValueNode) and not node._get_flag("readonly"):
                node._set_value(number)
            else:
                OmegaConf.update(cfg, key, number, merge=True)

        return set_number
    return lambda cfg: ConfigLoaderImpl._apply_overrides_to_config([op], cfg)


class JobComposer:
    """Compose a launch's jobs as ``load_sweep_config`` does, sharing the expensive part.

    Overrides that change structure (config-group choices, deletions or additions of a group,
    a package, sweep syntax, the sweep's launcher or sweeper) and value overrides of the Hydra
    node other than ``hydra.job.env_set`` entries are composed by Hydra, once per distinct tuple
    of them: a :class:`JobTemplate`. A job's other value overrides (``a.b=1``, ``+a.b=1``,
    ``++a.b=1``, ``~a.b``; ``++hydra.job.env_set.X=1``) are applied to the job's copies by
    Hydra's own ``_apply_overrides_to_config`` (plain numbers by the ``OmegaConf.update`` it
    makes), in order, as composition applies them last; the ``hydra.overrides`` lists are those
    composition records. Anything that fails falls back to a full composition, so the user sees
    Hydra's own message. ``_apply_overrides_to_config`` is private to Hydra; hydra-core is
    pinned, and the launcher suites in tests/ run on every change.
    """

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader = config_loader
        self.master = master
        self.groups = set(master.hydra.runtime.choices.keys())
        hydra_overrides = OmegaConf.to_container(master.hydra.overrides.hydra)
        assert isinstance(hydra_overrides, list)  # Hydra's overrides.hydra: a list of strings
        self.master_hydra_overrides = hydra_overrides
        self.parser = OverridesParser.create()
        self.templates: dict[tuple[str, ...], JobTemplate] = {}
        self.parsed: dict[str, Override] = {}
        self.values: dict[str, ValueOp | None] = {}

    def _parse(self, text: str) -> Override:
        """Hydra's parse of one override, once per distinct text."""
        override = self.parsed.get(text)
        if override is None:
            override = self.parsed[text] = self.parser.parse_overrides([text])[0]
        return override

    def _value_op(self, text: str) -> ValueOp | None:
        """How composition applies ``text`` to the finished config: ``(key, number)`` for a
        plain number, the parsed override for another value operation, None when it is
        structural."""
        if text in self.values:
            return self.values[text]
        op: ValueOp | None
        number = PLAIN_NUMBER.match(text)
        if number and number["key"] not in self.groups and not number["key"].startswith("hydra"):
            # The common case in sweeps (lr=0.0123) without the grammar: as Hydra reads it.
            raw = number["value"]
            op = (number["key"], int(raw) if INTEGER.match(raw) else float(raw))
        else:
            override = self._parse(text)
            key = override.key_or_group
            structural = (
                override.package is not None
                or override.is_sweep_override()
                or key in self.groups
                or key.startswith(CONTROLLER_KEYS)
                # A dotted key is a config path, never a group (groups nest with '/'); an
                # undotted one added or deleted may be a group only the repository knows.
                or ("." not in key and (override.is_add() or override.is_delete()))
            )
            op = None if structural else override
        self.values[text] = op
        return op

    def _is_hydra(self, text: str) -> bool:
        op = self.values.get(text)
        return False if isinstance(op, tuple) else self._parse(text).is_hydra_override()

    def _split(self, overrides: list[str]) -> tuple[list[str], list[ValueOp], list[Override]]:
        """What Hydra composes (a template's overrides), the task's value operations, and the
        ``hydra.job.env_set`` entries each job sets on its template's Hydra node."""
        ops = [self._value_op(text) for text in overrides]
        touching_env = [
            op
            for op in ops
            if isinstance(op, Override) and op.key_or_group.partition(".env_set")[0] == "hydra.job"
        ]
        env = [
            op
            for op in touching_env
            if op.key_or_group.startswith(ENV_SET + ".")
            and not op.is_delete()
            and "${" not in (op.input_line or "")  # resolved at run time by run_job itself
        ]
        if len(env) != len(touching_env):
            env = []  # env_set changed as a whole too: Hydra composes it all, in order
        composed: list[str] = []
        task: list[ValueOp] = []
        for text, op in zip(overrides, ops, strict=True):
            if op is None or (not isinstance(op, tuple) and self._is_hydra(text)):
                if not any(op is entry for entry in env):
                    composed.append(text)
            else:
                task.append(op)
        return composed, task, env

    def job(self, idx: int, overrides: Sequence[str]) -> SharedJob:
        """Job ``idx`` of the launch, sharing its template with the jobs composed alike."""
        overrides = list(overrides)
        composed, task, env = self._split(overrides)
        template = self.templates.get(tuple(composed))
        if template is None:
            template = self.templates[tuple(composed)] = JobTemplate(
                self.loader.load_sweep_config(self.master, composed)
            )
        env_values = {op.key_or_group[len(ENV_SET) + 1 :]: op.value() for op in env}
        job = SharedJob(
            idx,
            template,
            task_ops=[_operation(op) for op in task],
            env_ops=[_operation(op) for op in env],
            task_overrides=[text for text in overrides if not self._is_hydra(text)],
            hydra_overrides=[
                *self.master_hydra_overrides,
                *(text for text in overrides if self._is_hydra(text)),
            ],
            touched={
                TOP_KEY_END.split(op[0] if isinstance(op, tuple) else op.key_or_group, maxsplit=1)[
                    0
                ]
                for op in task
            },
            env={**template.base_env, **env_values},
            # env_set with interpolations (run_job resolves them in HydraConfig's copy only, not in
            # the config its callbacks get), or copied variables with entries set per job (their
            # order): composed whole and run through Hydra's run_job
            exact=not (interpolates(template.base_env) or (env and template.env_copy)),
        )
        try:
            job.task_config  # noqa: B018 - made now: a bad value fails in Hydra's own words
        except Exception:  # noqa: BLE001 - Hydra's own composition says it best
            return self.whole(idx, overrides)
        return job if job.exact else self.whole(idx, overrides)

    def whole(self, idx: int, overrides: Sequence[str]) -> SharedJob:
        """Job ``idx`` composed by Hydra from all of its overrides (no value applied later)."""
        template = JobTemplate(self.loader.load_sweep_config(self.master, list(overrides)))
        recorded = template.hydra_plain["overrides"]
        return SharedJob(
            idx,
            template,
            task_ops=[],
            env_ops=[],
            task_overrides=list(recorded["task"]),
            hydra_overrides=list(recorded["hydra"]),
            touched=set(),
            env=dict(template.base_env),
            exact=not interpolates(template.base_env),
        )


class BatchLauncher(Launcher):
    def __init__(self, max_batch: int = 256, job_runner: str = "shared") -> None:
        super().__init__()
        if job_runner not in JOB_RUNNERS:
            from sweeplr.errors import SweeplrError

            raise SweeplrError(
                f"hydra.launcher.job_runner={job_runner} is unknown; allowed: "
                + ", ".join(JOB_RUNNERS)
            )
        self.max_batch = max_batch
        self.job_runner = job_runner
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.composer: JobComposer | None = None
        self.logs = JobLogs()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from sweeplr.console import guard_stdout
        from sweeplr.job_batch import PublishedJob, published
        from sweeplr.records import one_sync

        guard_stdout()  # a closed standard output ends the printing, not the jobs
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        self._configure_launcher_log()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, in batches of {self.max_batch}")
        if self.composer is None:  # kept across launches: an Optuna sweep launches many
            self.composer = JobComposer(self.hydra_context.config_loader, self.config)
        sweeper = self.config.hydra.sweeper
        returns: list[JobReturn] = []
        for start in range(0, len(job_overrides), self.max_batch):
            jobs: dict[int, SharedJob] = {}
            for idx, overrides in enumerate(
                job_overrides[start : start + self.max_batch], initial_job_idx + start
            ):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                jobs[idx] = self.composer.job(idx, overrides)
            run = self._runner()
            launched = {
                idx: PublishedJob(job.task_config, job.env, sweeper) for idx, job in jobs.items()
            }
            # one_sync: the jobs' record files reach the disk together before the launch
            # returns (and a sweeper tells anyone), not one fsync per file.
            with published(launched, self.max_batch), one_sync():
                returns.extend(run(job) for job in jobs.values())
            # Each job configured its own logging; the launcher logs as Hydra again (the basic
            # launcher does this after every job, but nothing logs between two jobs here).
            self._configure_launcher_log()
        return returns

    def _runner(self) -> Callable[[SharedJob], JobReturn]:
        """How a composed job runs: shared, or through Hydra's ``run_job`` (see the module)."""
        assert self.hydra_context is not None and self.task_function is not None
        context, task = self.hydra_context, self.task_function

        def shared(job: SharedJob) -> JobReturn:
            if not job.exact:
                return hydra(job)
            return run_shared_job(job, task, context, self.logs)

        def hydra(job: SharedJob) -> JobReturn:
            self.logs.forget()  # run_job configures the logging its own way
            return run_job(
                hydra_context=context,
                task_function=task,
                config=job.whole_config(),
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )

        return shared if self.job_runner == "shared" else hydra

    def _configure_launcher_log(self) -> None:
        assert self.config is not None and self.hydra_context is not None
        self.logs.forget()
        configure_log(
            self.config.hydra.hydra_logging,
            self.config.hydra.verbose,
            execution_whitelist=self.hydra_context.execution_whitelist,
        )
