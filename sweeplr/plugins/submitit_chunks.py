"""launcher=slurm and submitit_local: one Slurm job (process) per chunk of a launch's jobs.

The launchers are ``hydra/launcher=sweeplr_slurm`` and ``sweeplr_submitit_local``.

hydra-submitit-launcher submits every job of a launch as its own Slurm job (array task), so each
trains one configuration and a 1,000-configuration grid is 1,000 Slurm jobs: on a cluster,
sweeplr would lose the batching it exists for. These launchers group a launch's jobs into
chunks of consecutive jobs, submit one Slurm job (array task; a process with submitit's local
executor) per chunk, and run each chunk's jobs there through sweeplr's batch launcher
(:class:`~sweeplr.plugins.batch_launcher.BatchLauncher`): each job keeps Hydra's job contract
(its task function, files, log, callbacks and ``JobReturn``), a failed job fails alone, and the
jobs of a chunk that can share a training pass train together.

``chunk_size`` (null by default) is the number of jobs per chunk. The default gives each chunk
about one training pass's worth of jobs: the launch's jobs over the number of distinct batch keys
among them (:func:`sweeplr.spec.batch_key`: jobs that could never share a pass run in parallel,
jobs that could go together), at most ``max_batch``.

Waiting for the chunks reads their result files, and for Slurm asks ``squeue`` whether a chunk
still runs: never ``sacct``, which fails on clusters without accounting and fills the log with
its warnings (hydra-submitit-launcher's wait asks it). A chunk whose Slurm job ended without a
result (``scancel``, node loss, time limit) fails each of its jobs with one line saying so,
and the chunks that finished keep their runs; an Optuna study's resume runs those trials again.

Imports nothing heavy: Hydra imports every plugin of the environment when any app starts.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from sweeplr.plugins.batch_launcher import JOB_RUNNERS, BatchLauncher, JobComposer

try:
    from hydra_plugins.hydra_submitit_launcher.config import (
        BaseQueueConf,
        LocalQueueConf,
        SlurmQueueConf,
    )
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ImportError:  # hydra-submitit-launcher ([cluster]) missing: nothing registered below
    BaseSubmititLauncher = Launcher  # type: ignore[misc,assignment]
    SlurmQueueConf = LocalQueueConf = BaseQueueConf = None  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a chunk's result file is looked for
SQUEUE_POLL_S = 2.0  # how often squeue is asked which chunks still run


def default_chunk_size(batch_keys: Sequence[Any], max_batch: int) -> int:
    """Jobs per chunk when the user sets none: about one training pass each (module doc)."""
    passes = max(1, len(set(batch_keys)))
    return max(1, min(max_batch, math.ceil(len(batch_keys) / passes)))


def chunk_ranges(n_jobs: int, chunk_size: int) -> list[range]:
    """The launch's job positions, in chunks of consecutive jobs."""
    return [range(start, min(start + chunk_size, n_jobs)) for start in range(0, n_jobs, chunk_size)]


class _ChunkedLauncher(BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher, submitting chunks of jobs run by the batch launcher."""

    def __init__(
        self,
        chunk_size: int | None = None,
        max_batch: int = 256,
        job_runner: str = "shared",
        **params: Any,
    ) -> None:
        super().__init__(**params)
        from sweeplr.errors import SweeplrError

        if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
            raise SweeplrError(
                f"hydra.launcher.chunk_size={chunk_size} is invalid; allowed: an integer >= 1, "
                "or null (about one training pass per chunk)"
            )
        if job_runner not in JOB_RUNNERS:  # said here, not by every chunk
            raise SweeplrError(
                f"hydra.launcher.job_runner={job_runner} is unknown; allowed: "
                + ", ".join(JOB_RUNNERS)
            )
        self.chunk_size = chunk_size
        self.max_batch = max_batch
        self.job_runner = job_runner

    def setup(  # the base's, here too for the stand-in base without the extra
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def __call__(  # type: ignore[override]
        self,
        chunk_overrides: list[list[str]],
        initial_job_idx: int,
        singleton_state: dict[type, Singleton],
    ) -> list[JobReturn]:
        """Run one chunk, in its Slurm job (or local process), through the batch launcher."""
        assert self.hydra_context is not None and self.task_function is not None
        assert self.config is not None
        Singleton.set_state(singleton_state)
        batch = BatchLauncher(
            max_batch=min(self.max_batch, len(chunk_overrides)), job_runner=self.job_runner
        )
        batch.setup(
            hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
        )
        return list(batch.launch(chunk_overrides, initial_job_idx))

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        overrides = [list(job) for job in job_overrides]
        size = self.chunk_size or default_chunk_size(self._batch_keys(overrides), self.max_batch)
        chunks = chunk_ranges(len(overrides), size)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        one, many = (
            ("Slurm job", "Slurm jobs") if self._EXECUTOR == "slurm" else ("process", "processes")
        )
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        if len(chunks) == 1:
            log.info(f"{len(overrides)} jobs in one {one}")
        else:
            log.info(f"{len(overrides)} jobs in {len(chunks)} {many} of {size} jobs at most")
        for idx, job in enumerate(overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(job))}")
        state = Singleton.get_state()
        submitted = self._executor().map_array(
            self,
            [[overrides[i] for i in chunk] for chunk in chunks],
            [initial_job_idx + chunk.start for chunk in chunks],
            [state] * len(chunks),
        )
        returns: list[JobReturn] = []
        for chunk, job, outcome in zip(chunks, submitted, self._wait(submitted), strict=True):
            if outcome is None:
                returns.extend(job.result())
            else:
                log.error(f"chunk of jobs #{initial_job_idx + chunk.start}.. : {outcome}")
                returns.extend(_failed(initial_job_idx + i, overrides[i], outcome) for i in chunk)
        return returns

    def _batch_keys(self, overrides: list[list[str]]) -> list[Any]:
        """Each job's batch key, composed as the batch launcher composes it (None for a job
        that is not one of sweeplr's runs)."""
        from sweeplr.spec import batch_key, run_spec

        assert self.hydra_context is not None and self.config is not None
        composer = JobComposer(self.hydra_context.config_loader, self.config)
        keys: list[Any] = []
        for idx, job in enumerate(overrides):
            try:
                keys.append(batch_key(run_spec(composer.job(idx, job).task_config)))
            except Exception:  # noqa: BLE001 - its job says why, where it runs
                keys.append(None)
        return keys

    def _executor(self) -> Any:
        """submitit's executor with the launcher's parameters, as hydra-submitit-launcher
        builds it (its ``launch`` builds it inline)."""
        import submitit

        params = dict(self.params)
        init_keys = {"max_num_timeout", "python"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params.pop("submitit_folder"),
            **{f"{self._EXECUTOR}_{k}": params.pop(k) for k in init_keys if k in params},
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )
        return executor

    def _wait(self, jobs: Sequence[Any]) -> list[str | None]:
        """Wait for every chunk: None for one that left its result, else why it has none."""
        outcomes: dict[int, str | None] = {}
        next_queue_check = time.monotonic() + SQUEUE_POLL_S
        while len(outcomes) < len(jobs):
            pending = [i for i in range(len(jobs)) if i not in outcomes]
            for i in pending:
                if jobs[i].paths.result_pickle.exists():
                    outcomes[i] = _error_of(jobs[i])
            if time.monotonic() >= next_queue_check:
                for i in self._ended([i for i in pending if i not in outcomes], jobs):
                    # Ended after the look above: its result may have come since.
                    exists = jobs[i].paths.result_pickle.exists()
                    outcomes[i] = _error_of(jobs[i]) if exists else _died(jobs[i])
                next_queue_check = time.monotonic() + SQUEUE_POLL_S
            if len(outcomes) < len(jobs):
                time.sleep(POLL_S)
        return [outcomes[i] for i in range(len(jobs))]

    def _ended(self, pending: list[int], jobs: Sequence[Any]) -> list[int]:
        """The chunks among ``pending`` no longer queued or running."""
        if not pending:
            return []
        if self._EXECUTOR != "slurm":
            return [i for i in pending if jobs[i].done()]  # the local process has ended
        queued = _squeue({str(jobs[i].job_id).split("_")[0] for i in pending})
        if queued is None:
            return []  # squeue did not answer: ask again later
        return [i for i in pending if str(jobs[i].job_id) not in queued]


def _squeue(array_ids: set[str]) -> set[str] | None:
    """The tasks of ``array_ids`` that Slurm still has queued or running; None: no answer."""
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i", "--jobs", ",".join(array_ids)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue fails on a job id it no longer knows: every task of the array has ended
        return set() if "Invalid job id" in out.stderr else None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _error_of(job: Any) -> str | None:
    """None when the chunk's function returned; else its error's last line."""
    outcome, result = job._get_outcome_and_result()  # submitit's reading of the result file
    if outcome == "success":
        return None
    lines = [line for line in str(result).splitlines() if line.strip()]
    return f"its {job_kind(job)} {job.job_id} failed: {lines[-1] if lines else 'no message'}"


def _died(job: Any) -> str:
    """Why a chunk's job ended without a result, as far as the scheduler still knows."""
    state = ""
    if job_kind(job) == "Slurm job":
        out = subprocess.run(
            ["scontrol", "--oneliner", "show", "job", str(job.job_id)],
            capture_output=True,
            text=True,
            check=False,
        )
        fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
        state = fields.get("JobState", "")
    said = f" ({state})" if state else ""
    return (
        f"its {job_kind(job)} {job.job_id} ended without a result{said}: cancelled, its node "
        f"lost or its time limit reached (its log: {job.paths.stderr})"
    )


def job_kind(job: Any) -> str:
    return "Slurm job" if type(job).__name__ == "SlurmJob" else "process"


def _failed(idx: int, overrides: list[str], why: str) -> JobReturn:
    """The return of a job whose chunk ended without running it to the end."""
    from sweeplr.errors import SweeplrError

    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
    ret.return_value = SweeplrError(f"not run: {why}")
    ret.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": idx, "id": str(idx)}}})
    return ret


class ChunkedSlurmLauncher(_ChunkedLauncher):
    _EXECUTOR = "slurm"


class ChunkedLocalLauncher(_ChunkedLauncher):
    _EXECUTOR = "local"


if SlurmQueueConf is not None:

    @dataclass
    class ChunkedSlurmConf(SlurmQueueConf):
        _target_: str = "sweeplr.plugins.submitit_chunks.ChunkedSlurmLauncher"
        chunk_size: int | None = None  # jobs per Slurm job; null: about one training pass each
        max_batch: int = 256  # jobs trained together in one pass, at most (and per chunk)
        job_runner: str = "shared"  # as sweeplr_batch's (sweeplr/plugins/batch_launcher.py)

    @dataclass
    class ChunkedLocalConf(LocalQueueConf):
        _target_: str = "sweeplr.plugins.submitit_chunks.ChunkedLocalLauncher"
        chunk_size: int | None = None  # jobs per process; null: about one training pass each
        max_batch: int = 256
        job_runner: str = "shared"

    for name, node in (
        ("sweeplr_slurm", ChunkedSlurmConf),
        ("sweeplr_submitit_local", ChunkedLocalConf),
    ):
        ConfigStore.instance().store(
            group="hydra/launcher", name=name, node=node, provider="sweeplr"
        )
