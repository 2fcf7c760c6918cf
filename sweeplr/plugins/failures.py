"""How a sweep ends early: refused before its first job, or with jobs that failed."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from sweeplr.errors import SweeplrError, first_line

# The configs of sweeps refused before their first job, in this process (one, at most, outside
# tests). Hydra calls the summary callback on the way out of any sweep, with the same config
# object; after a refusal there is nothing of that sweep's to summarise (a refused directory
# holds another sweep's runs) and the error line must be the last word, not a table.
_refused: list[DictConfig] = []


def refuse(config: DictConfig, message: str) -> NoReturn:
    """End the sweep of ``config`` before its first job with one line and exit status 1."""
    _refused.append(config)
    sys.exit(message)


def was_refused(config: DictConfig) -> bool:
    return any(refused is config for refused in _refused)


def failure_line(ret: JobReturn) -> str:
    """``job N (overrides): message``: which job failed and why, in one line."""
    from sweeplr.plugins.job_runner import hydra_field

    num = hydra_field(ret, "job.num")
    num = "?" if num is None else num
    return f"job {num} ({' '.join(ret.overrides or [])}): {first_line(ret._return_value)}"


def end_with_failures(failed: Sequence[JobReturn]) -> None:
    """End a sweep non-zero: an ``error:`` line for each job that failed on a user mistake
    (sweeplr's one-line ``SweeplrError``), then any other job's exception raised as Hydra's
    sweepers raise it, with the job's traceback."""
    mistakes = [r for r in failed if isinstance(r._return_value, SweeplrError)]
    for ret in mistakes:
        print(f"error: {failure_line(ret)}", file=sys.stderr)
    for ret in failed:
        if ret not in mistakes:
            _ = ret.return_value  # re-raises the job's exception
    sys.exit(1)
