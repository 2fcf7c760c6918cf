"""Learning-rate schedules: ``torch.optim.lr_scheduler``'s, per configuration of a batch. No Hydra.

:func:`torch_scheduler` is the one place a :class:`~sweeplr.spec.ScheduleSpec` becomes a
torch scheduler. The reference path steps it on its real optimizer; :class:`BatchSchedule` steps
it on a stand-in optimizer holding one parameter group per configuration, and hands the batched
engine each configuration's lr for each epoch. Both therefore follow torch's own arithmetic,
float for float. Schedulers step once an epoch (after it), and ReduceLROnPlateau once per logged
epoch, on the objective's validation metric.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.optim import lr_scheduler

from sweeplr.spec import ScheduleSpec

Scheduler = Any  # lr_scheduler.LRScheduler or lr_scheduler.ReduceLROnPlateau


def is_constant(schedule: ScheduleSpec) -> bool:
    """A schedule that never changes the lr."""
    return schedule.name == "constant" and schedule.warmup_epochs == 0


def torch_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: ScheduleSpec,
    epochs: int,
    mode: Literal["min", "max"] = "min",
) -> Scheduler | None:
    """The ``torch.optim.lr_scheduler`` for ``schedule`` over ``epochs`` epochs, or None.

    ``mode`` (``min``/``max``) is the watched metric's direction, for ReduceLROnPlateau. A
    warm-up is ``LinearLR`` chained before the schedule with ``SequentialLR``. OneCycleLR leaves
    the momentum alone (``cycle_momentum=False``): here a schedule schedules the lr.
    """
    name, warmup = schedule.name, schedule.warmup_epochs
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=schedule.gamma,
            patience=schedule.patience,
            threshold=schedule.threshold,
            min_lr=schedule.min_lr,
        )
    if name == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=epochs,
            pct_start=schedule.pct_start,
            div_factor=schedule.div_factor,
            final_div_factor=schedule.final_div_factor,
            cycle_momentum=False,
        )
    with warnings.catch_warnings():
        # SequentialLR steps its first scheduler at construction; torch warns about that.
        warnings.simplefilter("ignore", UserWarning)
        main: Scheduler | None = None
        if name == "step":
            main = lr_scheduler.StepLR(optimizer, schedule.step_size, schedule.gamma)
        elif name == "cosine":
            main = lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=epochs - warmup, eta_min=schedule.min_lr
            )
        if warmup == 0:
            return main
        warm = lr_scheduler.LinearLR(
            optimizer, start_factor=schedule.warmup_start_factor, total_iters=warmup
        )
        if main is None:
            return warm
        return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def step_scheduler(scheduler: Scheduler, metric: float | None = None) -> None:
    """One scheduler step (ReduceLROnPlateau takes the watched metric)."""
    with warnings.catch_warnings():
        # A stand-in optimizer never steps; torch warns that the schedule runs ahead of it.
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            assert metric is not None, "a plateau schedule steps on its watched metric"
            scheduler.step(metric)
        else:
            scheduler.step()


class _StandIn(torch.optim.Optimizer):
    """An optimizer that is only its parameter groups' lrs, for a scheduler to step.

    It skips ``Optimizer.__init__``: its ``add_param_group`` imports ``torch._dynamo`` the first
    time, 1.3 s here, for an object that never optimizes anything. Schedulers read and write
    ``param_groups`` alone (the tests hold the lrs equal to those on a real SGD, bit for bit).
    """

    def __init__(self, lrs: Sequence[float]) -> None:  # no super().__init__(), see above
        self.defaults: dict[str, Any] = {}
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups = [{"params": [], "lr": float(lr)} for lr in lrs]

    def step(self, closure: Any = None) -> None:  # type: ignore[override]  # never steps
        return None


class BatchSchedule:
    """Each configuration's lr in each epoch, from its own schedule, as torch would set it.

    Configurations with the same schedule share one stand-in optimizer (a parameter group
    each) and their lrs are tabulated for every epoch up front; a plateau schedule gets one
    per configuration, stepped on that configuration's metric by :meth:`observe`.
    """

    def __init__(
        self,
        lrs: Sequence[float],
        schedules: Sequence[ScheduleSpec],
        epochs: int,
        modes: Sequence[Literal["min", "max"]],
        watch: Sequence[str | None],
    ) -> None:
        k = len(lrs)
        self.watch = list(watch)
        self.table = np.tile(np.asarray(lrs, dtype=np.float64), (epochs, 1))  # [epoch-1, k]
        self.plateaus: dict[int, tuple[torch.optim.Optimizer, Scheduler]] = {}
        by_schedule: dict[tuple[Any, ...], list[int]] = {}
        for i, schedule in enumerate(schedules):
            if schedule.name == "plateau":
                optimizer = _StandIn([lrs[i]])
                self.plateaus[i] = (
                    optimizer,
                    torch_scheduler(optimizer, schedule, epochs, modes[i]),
                )
            elif not is_constant(schedule):
                by_schedule.setdefault(tuple(vars(schedule).items()), []).append(i)
        for members in by_schedule.values():
            optimizer = _StandIn([lrs[i] for i in members])
            scheduler = torch_scheduler(optimizer, schedules[members[0]], epochs)
            for epoch in range(epochs):
                if epoch:
                    step_scheduler(scheduler)
                self.table[epoch, members] = [g["lr"] for g in optimizer.param_groups]
        changes = np.ones(epochs, dtype=bool)
        changes[1:] = (self.table[1:] != self.table[:-1]).any(axis=1)
        self.changes = changes
        self.pending = False  # a plateau changed an lr since the last epoch began
        self.current = self.table[0].copy() if k else np.zeros(0)

    def lr(self, epoch: int) -> np.ndarray | None:
        """Every configuration's lr for ``epoch`` (1-based), or None when none changed."""
        if not (self.changes[epoch - 1] or self.pending):
            return None
        row = self.table[epoch - 1].copy()
        for i, (optimizer, _) in self.plateaus.items():
            row[i] = optimizer.param_groups[0]["lr"]
        self.pending = False
        self.current = row
        return row

    def observe(self, metrics: Mapping[str, np.ndarray], active: np.ndarray) -> None:
        """Step the plateau schedules of the active configurations on their watched metric
        (``metrics``: a logged epoch's values by history column, [K] each)."""
        for i, (optimizer, scheduler) in self.plateaus.items():
            if active[i]:
                before = optimizer.param_groups[0]["lr"]
                watched = self.watch[i]
                assert watched is not None, "a plateau schedule watches a metric"
                step_scheduler(scheduler, float(metrics[watched][i]))
                self.pending |= optimizer.param_groups[0]["lr"] != before
