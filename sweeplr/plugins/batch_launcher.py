"""``hydra/launcher=sweeplr_batch``: Hydra's basic launcher, with jobs that can train together.

Every job runs through Hydra's job machinery (``hydra.core.utils.run_job``), in this process
and in order, exactly as with the basic launcher: its own config and ``.hydra/`` files, its log
file, ``hydra.job.chdir``, callbacks with its own config, and a ``JobReturn`` with its status
and whatever its task function returned or raised. Two things differ:

- the launch's jobs are composed before the first runs (``JobComposer``, one full composition
  per distinct set of structural overrides), and published in ``sweeplr.job_batch``, so that
  sweeplr's ``run`` can train the configurations that share a pass together, once, and each
  job's own ``run`` picks up its result;
- jobs go in chunks of ``max_batch``, which bounds memory and the size of a training pass.

A task that is not sweeplr's runs as under the basic launcher. Imports nothing heavy: Hydra
imports every plugin of the environment when any Hydra app starts.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Sequence
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
from omegaconf import DictConfig, OmegaConf, open_dict

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


@dataclass
class BatchLauncherConf:
    _target_: str = "sweeplr.plugins.batch_launcher.BatchLauncher"
    max_batch: int = 256  # jobs composed, published and trained together, at most


ConfigStore.instance().store(
    group="hydra/launcher", name="sweeplr_batch", node=BatchLauncherConf, provider="sweeplr"
)


class JobComposer:
    """Compose job configs as ``load_sweep_config`` does, sharing the expensive part.

    Overrides that change structure (config-group choices, deletions or additions of a group,
    a package, sweep syntax, the sweep's launcher or sweeper) select a full composition by
    Hydra, cached per distinct tuple of them. Value overrides (``a.b=1``, ``+a.b=1``,
    ``++a.b=1``, ``~a.b``, on the task or the Hydra node) are then applied to a copy by Hydra's
    own ``_apply_overrides_to_config`` (plain numbers by the ``OmegaConf.update`` it makes),
    in order, as composition applies them last; the copy's ``hydra.overrides`` lists are
    rebuilt as composition records them. Anything that fails falls back to a full composition,
    so the user sees Hydra's own message. ``_apply_overrides_to_config`` is private to Hydra;
    hydra-core is pinned, and the launcher suites in tests/ run on every change.
    """

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader = config_loader
        self.master = master
        self.groups = set(master.hydra.runtime.choices.keys())
        self.master_hydra_overrides = OmegaConf.to_container(master.hydra.overrides.hydra)
        self.parser = OverridesParser.create()
        # Pickled, because unpickling copies a config in a third of the time deepcopy takes.
        self.compositions: dict[tuple[str, ...], bytes] = {}
        self.parsed: dict[str, Override] = {}
        self.values: dict[str, tuple[str, int | float] | Override | None] = {}

    def _parse(self, text: str) -> Override:
        """Hydra's parse of one override, once per distinct text."""
        override = self.parsed.get(text)
        if override is None:
            override = self.parsed[text] = self.parser.parse_overrides([text])[0]
        return override

    def _value_op(self, text: str) -> tuple[str, int | float] | Override | None:
        """How composition applies ``text`` to the finished config: ``(key, number)`` for a
        plain number, the parsed override for another value operation, None when it is
        structural."""
        op = self.values.get(text, False)
        if op is not False:
            return op
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

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        overrides = list(overrides)
        ops = [self._value_op(text) for text in overrides]
        structural = tuple(text for text, op in zip(overrides, ops, strict=True) if op is None)
        if structural not in self.compositions:
            self.compositions[structural] = pickle.dumps(
                self.loader.load_sweep_config(self.master, list(structural))
            )
        cfg = pickle.loads(self.compositions[structural])
        try:
            for op in ops:
                if isinstance(op, tuple):
                    OmegaConf.update(cfg, op[0], op[1], merge=True)
                elif op is not None:
                    ConfigLoaderImpl._apply_overrides_to_config([op], cfg)
        except Exception:  # noqa: BLE001 - Hydra's own composition says it best
            return self.loader.load_sweep_config(self.master, overrides)
        hydra = [self._is_hydra(text) for text in overrides]
        job_hydra = [text for text, is_hydra in zip(overrides, hydra, strict=True) if is_hydra]
        with open_dict(cfg.hydra):
            if job_hydra != [text for text in structural if self._is_hydra(text)]:
                cfg.hydra.overrides.hydra = self.master_hydra_overrides + job_hydra
            cfg.hydra.overrides.task = [
                text for text, is_hydra in zip(overrides, hydra, strict=True) if not is_hydra
            ]
        return cfg


class BatchLauncher(Launcher):
    def __init__(self, max_batch: int = 256) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.composer: JobComposer | None = None

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
        from sweeplr.job_batch import published
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
        returns: list[JobReturn] = []
        for start in range(0, len(job_overrides), self.max_batch):
            configs = {}
            for idx, overrides in enumerate(
                job_overrides[start : start + self.max_batch], initial_job_idx + start
            ):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                config = self.composer.compose(overrides)
                with open_dict(config):
                    config.hydra.job.id = str(idx)
                    config.hydra.job.num = idx
                configs[idx] = config
            # one_sync: the jobs' record files reach the disk together before the launch
            # returns (and a sweeper tells anyone), not one fsync per file.
            with published(configs, self.max_batch), one_sync():
                for config in configs.values():
                    returns.append(
                        run_job(
                            hydra_context=self.hydra_context,
                            task_function=self.task_function,
                            config=config,
                            job_dir_key="hydra.sweep.dir",
                            job_subdir_key="hydra.sweep.subdir",
                        )
                    )
            # Each run_job configured its job's logging; the launcher logs as Hydra again (the
            # basic launcher does this after every job, but nothing logs between two jobs).
            self._configure_launcher_log()
        return returns

    def _configure_launcher_log(self) -> None:
        assert self.config is not None and self.hydra_context is not None
        configure_log(
            self.config.hydra.hydra_logging,
            self.config.hydra.verbose,
            execution_whitelist=self.hydra_context.execution_whitelist,
        )
