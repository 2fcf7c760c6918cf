"""How a sweep ends when jobs failed: one line per user mistake, else the job's own error."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra.core.utils import JobReturn

from sweeplr.errors import SweeplrError, first_line


def failure_line(ret: JobReturn) -> str:
    """``job N (overrides): message``: which job failed and why, in one line."""
    num = ret.hydra_cfg.hydra.job.num if ret.hydra_cfg is not None else "?"
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
