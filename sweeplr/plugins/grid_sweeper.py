"""``hydra/sweeper=sweeplr_grid``: Hydra's basic grid sweeper, with failed jobs as results.

Five differences from the basic sweeper:

- a job that fails does not stop the sweep: every batch runs, and the sweep ends non-zero
  afterwards (after ``on_multirun_end``, so ``summary.csv`` lists the failures). A failure that
  is a user mistake (sweeplr's one-line ``SweeplrError``) ends it with one line per failed job
  and no traceback; any other error is raised as the basic sweeper raises it;
- the same grid into the same ``hydra.sweep.dir`` resumes it: a job with a finished record
  (completed, diverged or pruned) is kept as it is, and only the others run (never run,
  interrupted, failed: a failed job's folder is moved aside first). The same grid is the same
  job list, each job's overrides by number, as the directory's ``multirun.yaml`` expands to;
- a different sweep into a directory that holds sweeplr records is refused (one line), instead
  of overwriting their folders and mixing both sweeps in one summary. Folders without records
  (a task that writes none) are run again, as the basic sweeper does;
- the basic sweeper composes every job once to validate its batch, and the launcher composes it
  again to run it (about 0.17 s per job here, more than training one). ``sweeplr_batch``
  composes a launch's jobs before it runs any, so its launch is that validation: skipped then;
- a sweep given that expands to one job (``lr=range(0.001,0.1)``: range steps by 1) says so
  in one warning line, and runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
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

log = logging.getLogger(__name__)


@dataclass
class SweeplrGridSweeperConf(BasicSweeperConf):
    _target_: str = "sweeplr.plugins.grid_sweeper.SweeplrGridSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplr_grid", node=SweeplrGridSweeperConf, provider="sweeplr"
)


# Sweepers whose directories number their jobs as this one does, one job per point.
GRID_SWEEPERS = (BasicSweeperConf._target_, SweeplrGridSweeperConf._target_)
RETRIED_DIR = ".retried"  # failed jobs' folders, moved aside before their job runs again


@dataclass
class Resume:
    """What a grid finds in its directory: the jobs it keeps, the folders it moves aside."""

    kept: set[int]
    retried: list[Path]


def expand(
    parser: OverridesParser, params: Mapping[str, Any], args: Sequence[str]
) -> list[list[str]]:
    """A grid's jobs, each one's overrides, by job number, as the basic sweeper expands them
    from ``hydra.sweeper.params`` and the command's overrides."""
    parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *args])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def earlier_sweep(sweep_dir: Path) -> Any:
    """The ``hydra`` node of the directory's ``multirun.yaml`` (Hydra's copy of the config of
    the sweep it holds), None when there is none or it is damaged."""
    from sweeplr.records import read_yaml

    node = read_yaml(sweep_dir / "multirun.yaml")
    hydra = node.get("hydra") if isinstance(node, dict) else None
    return hydra if isinstance(hydra, dict) else None


def earlier_jobs(sweep_dir: Path, parser: OverridesParser) -> list[list[str]] | None:
    """The jobs of the grid the directory holds, as its ``multirun.yaml`` expands; None when
    there is none, or it is another sweeper's, or it is unreadable."""
    hydra = earlier_sweep(sweep_dir)
    try:
        sweeper, task = hydra["sweeper"], hydra["overrides"]["task"]
        if sweeper["_target_"] not in GRID_SWEEPERS:
            return None
        return expand(parser, sweeper.get("params") or {}, task)
    except Exception:  # noqa: BLE001 - a damaged file, a value Hydra no longer parses: not ours
        return None


def plan_resume(
    sweep_dir: Path, jobs: Sequence[Sequence[str]], earlier: list[list[str]] | None
) -> Resume:
    """Which of ``jobs`` the directory already holds finished records of.

    Raises :class:`SweeplrError` when it holds sweeplr records (or another sweeper's sweep: an
    Optuna study's) and ``earlier``, the jobs of the sweep it holds, are not ``jobs``: rerunning
    their job numbers would overwrite another sweep's runs.
    """
    from sweeplr.records import METRICS_FILE
    from sweeplr.run_rows import read_run, run_dirs
    from sweeplr.schema import COMPLETED, DIVERGED, PRUNED

    folders = []
    if sweep_dir.is_dir():
        with suppress(SweeplrError):  # no run folders
            folders = run_dirs(sweep_dir)
    recorded = [read_run(f, sweep_dir) for f in folders if (f / METRICS_FILE).exists()]
    sweeper = (earlier_sweep(sweep_dir) or {}).get("sweeper")
    target = sweeper.get("_target_") if isinstance(sweeper, dict) else None
    another_sweeper = target is not None and target not in GRID_SWEEPERS
    if not recorded and not another_sweeper:
        return Resume(set(), [])  # nothing of sweeplr's: run every job, as the basic sweeper
    finished = [r for r in recorded if r.status in (COMPLETED, DIVERGED, PRUNED)]
    strangers = [
        r
        for r in finished
        if r.job is None or not r.job < len(jobs) or r.overrides != list(jobs[r.job])
    ]
    if earlier != [list(job) for job in jobs] or strangers:
        raise SweeplrError(
            f"hydra.sweep.dir={sweep_dir} already holds another sweep's runs; allowed: the "
            "same command, to finish that sweep, or a new directory (by default every launch "
            "gets its own)"
        )
    retried = [r.path for r in recorded if r not in finished and r.path is not None]
    return Resume({r.job for r in finished if r.job is not None}, retried)


def move_aside(sweep_dir: Path, folders: Sequence[Path]) -> None:
    """Move failed jobs' folders into ``.retried/`` before their jobs run again: a rerun never
    writes over a record, even a failed one. ``NAME.K``, K counting the job's tries."""
    for folder in folders:
        tries = 1
        while (target := sweep_dir / RETRIED_DIR / f"{folder.name}.{tries}").exists():
            tries += 1
        target.parent.mkdir(exist_ok=True)
        folder.rename(target)


def launches(todo: Sequence[int], size: int | None) -> list[tuple[int, int]]:
    """The job numbers ``todo`` as launches: ``(first, count)`` of consecutive jobs, at most
    ``size`` a launch (Hydra's ``max_batch_size``; None or -1: no limit)."""
    spans: list[tuple[int, int]] = []
    for num in todo:
        first, count = spans[-1] if spans else (-2, 0)
        if num == first + count and (size in (None, -1) or count < size):
            spans[-1] = (first, count + 1)
        else:
            spans.append((num, 1))
    return spans


def refuse_a_used_directory(sweep_dir: Path) -> None:
    """An Optuna study's first claim of a directory (`sweeplr.study_session.claim_sweep_dir`)
    never takes one that holds another sweep's runs: its trial numbers would overwrite their
    folders, and the summary would mix the two sweeps. Raises :class:`SweeplrError` naming the
    directory. (A grid resumes its own directory: `plan_resume`.)"""
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
        """The basic sweeper's loop, going on past failed jobs and past finished ones."""
        from sweeplr.records import write_planned_jobs

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(parsed, self.max_batch_size)
        jobs = [job for batch in self.overrides for job in batch]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            resume = plan_resume(sweep_dir, jobs, earlier_jobs(sweep_dir, parser))
        except SweeplrError as exc:
            refuse(self.config, f"error: {exc}")
        move_aside(sweep_dir, resume.retried)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_planned_jobs(sweep_dir, jobs)
        if len(jobs) == 1:
            warning = one_job_warning(parsed)
            if warning is not None:
                print(f"warning: {warning}", file=sys.stderr)
        todo = [num for num in range(len(jobs)) if num not in resume.kept]
        if resume.kept:
            rest = f"running the other {len(todo)}" if todo else "nothing left to run"
            log.info(
                f"Resuming {sweep_dir}: {len(resume.kept)} of {len(jobs)} jobs have a finished "
                f"record, kept; {rest}"
            )
        returns: list[Sequence[JobReturn]] = []
        try:
            for first, count in launches(todo, self.max_batch_size):
                batch = jobs[first : first + count]
                self.validate_batch_is_legal(batch)
                returns.append(self.launcher.launch(batch, initial_job_idx=first))
        except KeyboardInterrupt:
            from sweeplr.console import end_interrupted

            end_interrupted(
                f"the finished runs are kept in {sweep_dir}; the same command with "
                f"hydra.sweep.dir={sweep_dir} runs the rest"
            )
        failed = [r for batch in returns for r in batch if r.status == JobStatus.FAILED]
        if failed:
            end_with_failures(failed)
        return returns
