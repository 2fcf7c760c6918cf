"""The jobs of one launch, published by sweeplr's launcher so that runs can train together.

Hydra's job machinery runs a launch's jobs one at a time, each through its task function. The
``sweeplr_batch`` launcher composes a launch's jobs first and publishes them here, then
hands each job to Hydra as the basic launcher does. When the first job's task calls
``sweeplr.experiment.run``, that run trains its configuration together with every published
sibling that can share the training pass (``sweeplr.siblings``) and leaves their outcomes
here; each sibling's own ``run`` then picks up its outcome (if its config still says what the
published one said) instead of training again. What a job returns and writes stays its task
function's doing: a task that never calls ``run`` costs nothing here. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PublishedJob:
    """A job of the launch in progress, as sweeplr's runs see it before it runs."""

    config: Any  # the job's task config: what its task function will be given
    env_set: Mapping[str, Any]  # its ``hydra.job.env_set`` (the Optuna trial it runs, say)
    sweeper: Any  # the launch's ``hydra.sweeper`` node


@dataclass
class LaunchedJobs:
    """Jobs of the launch in progress, and outcomes trained ahead of their jobs."""

    jobs: Mapping[int, PublishedJob]  # job number -> the job
    max_batch: int  # configurations trained together in one pass, at most
    trained: dict[int, Any] = field(default_factory=dict)  # job number -> (spec, outcome)
    data: dict[str, Any] = field(default_factory=dict)  # data key -> a loaded data set
    # job number -> its published config's spec, pruning link, values and batch key (None: it
    # cannot train here), worked out once per launch rather than once per training pass
    members: dict[int, Any] = field(default_factory=dict)


_current: LaunchedJobs | None = None


@contextmanager
def published(jobs: Mapping[int, PublishedJob], max_batch: int) -> Iterator[LaunchedJobs]:
    """Make ``jobs`` the current launch's jobs for the ``with`` block."""
    global _current
    previous, _current = _current, LaunchedJobs(jobs, max_batch)
    try:
        yield _current
    finally:
        _current = previous


def current() -> LaunchedJobs | None:
    """The launch in progress in this process, if sweeplr's launcher runs one."""
    return _current
