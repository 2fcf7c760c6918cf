"""``hydra/sweeper=sweeplr_grid``: Hydra's basic grid sweeper, with failed jobs as results.

Four differences from the basic sweeper:

- a job that fails does not stop the sweep: every batch runs, and the sweep ends non-zero
  afterwards (after ``on_multirun_end``, so ``summary.csv`` lists the failures). A failure that
  is a user mistake (sweeplr's one-line ``SweeplrError``) ends it with one line per failed job
  and no traceback; any other error is raised as the basic sweeper raises it;
- it refuses a sweep directory that already holds a sweep's runs (one line), instead of
  overwriting their folders and mixing both sweeps in one summary;
- the basic sweeper composes every job once to validate its batch, and the launcher composes it
  again to run it (about 0.17 s per job here, more than training one). ``sweeplr_batch``
  composes a launch's jobs before it runs any, so its launch is that validation: skipped then;
- a sweep given that expands to one job (``lr=range(0.001,0.1)``: range steps by 1) says so
  in one warning line, and runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from sweeplr.errors import SweeplrError
from sweeplr.plugins.batch_launcher import BatchLauncher
from sweeplr.plugins.failures import end_with_failures, refuse


@dataclass
class SweeplrGridSweeperConf(BasicSweeperConf):
    _target_: str = "sweeplr.plugins.grid_sweeper.SweeplrGridSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplr_grid", node=SweeplrGridSweeperConf, provider="sweeplr"
)


def refuse_a_used_directory(sweep_dir: Path) -> None:
    """A grid never writes into a directory that holds another sweep's runs: its job numbers
    would overwrite their folders, and the summary would mix the two sweeps. Raises
    :class:`SweeplrError` naming the directory."""
    used = (sweep_dir / "multirun.yaml").exists() or (
        sweep_dir.is_dir()
        and any(child.is_dir() and child.name.isdigit() for child in sweep_dir.iterdir())
    )
    if used:
        raise SweeplrError(
            f"hydra.sweep.dir={sweep_dir} already holds another sweep's runs; allowed: "
            "a new directory (by default every launch gets its own)"
        )


def one_job_warning(overrides: Sequence[Override]) -> str | None:
    """Why a sweep expands to one job when it was given a sweep (``lr=range(0.001,0.1)``: one
    value, its step being 1); None when no sweep was given (``--multirun lr=0.1``)."""
    sweeps = [o for o in overrides if o.is_discrete_sweep()]
    if not sweeps:
        return None
    override = sweeps[0]
    value = next(override.sweep_string_iterator())
    why = ""
    if override.is_range_sweep():
        step = override.value().step  # type: ignore[union-attr]
        why = f": range steps by {step:g}" + (
            " unless given range(start,stop,step)" if step == 1 else ""
        )
    return f"this sweep runs 1 job: {override.input_line} expands to one value, {value}{why}"


class SweeplrGridSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if not isinstance(self.launcher, BatchLauncher):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> Any:
        """The basic sweeper's loop, going on past failed jobs."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        params_conf = [*self._parse_config(), *arguments]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(params_conf)
        self.overrides = self.split_arguments(parsed, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            refuse_a_used_directory(sweep_dir)
        except SweeplrError as exc:
            refuse(self.config, f"error: {exc}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if sum(len(batch) for batch in self.overrides) == 1:
            warning = one_job_warning(parsed)
            if warning is not None:
                print(f"warning: {warning}", file=sys.stderr)
        returns: list[Sequence[JobReturn]] = []
        initial_job_idx = 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                initial_job_idx += len(batch)
                returns.append(results)
        except KeyboardInterrupt:
            from sweeplr.console import end_interrupted

            end_interrupted(f"the finished runs are kept in {sweep_dir}")
        failed = [r for batch in returns for r in batch if r.status == JobStatus.FAILED]
        if failed:
            end_with_failures(failed)
        return returns
