"""LR schedules and early stopping: torch's numbers, per configuration of a batch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.optim import lr_scheduler

from sweeplr.errors import SweeplrError
from sweeplr.runner import train_runs
from sweeplr.schedules import BatchSchedule, step_scheduler, torch_scheduler
from sweeplr.spec import ScheduleSpec, run_spec
from tests.conftest import compose_config, train_and_record

BASE = ("device=cpu", "progress=false", "log_every=1")


def spec(*overrides: str):
    return run_spec(compose_config(*BASE, *overrides))


def torch_lrs(make, lr: float, epochs: int) -> list[float]:
    """The lr of each epoch under the scheduler ``make(optimizer)`` builds, stepped as a
    torch training loop steps it: once after every epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make(optimizer)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if epoch < epochs - 1:
            scheduler.step()
    return lrs


EPOCHS = 40
SCHEDULES = {
    "constant+warmup": (
        ScheduleSpec("constant", warmup_epochs=5, warmup_start_factor=0.2),
        lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=5),
    ),
    "step": (
        ScheduleSpec("step", step_size=7, gamma=0.5),
        lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    ),
    "step+warmup": (
        ScheduleSpec("step", step_size=7, gamma=0.5, warmup_epochs=4),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
                lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
            ],
            milestones=[4],
        ),
    ),
    "cosine+warmup": (
        ScheduleSpec("cosine", min_lr=0.001, warmup_epochs=6),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=6),
                lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS - 6, eta_min=0.001),
            ],
            milestones=[6],
        ),
    ),
    "onecycle": (
        ScheduleSpec("onecycle", pct_start=0.25),
        lambda o: lr_scheduler.OneCycleLR(
            o, max_lr=0.3, total_steps=EPOCHS, pct_start=0.25, cycle_momentum=False
        ),
    ),
}


@pytest.mark.filterwarnings("ignore:The epoch parameter:UserWarning")  # SequentialLR's own
@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_lr_sequence_is_torchs(name):
    """sweeplr's schedule gives, epoch by epoch, the lrs of the torch scheduler a user would
    write by hand (a warm-up is LinearLR chained in SequentialLR)."""
    schedule, make = SCHEDULES[name]
    expected = torch_lrs(make, 0.3, EPOCHS)
    assert torch_lrs(lambda o: torch_scheduler(o, schedule, EPOCHS), 0.3, EPOCHS) == expected
    table = BatchSchedule([0.3, 0.05], [schedule, schedule], EPOCHS, ["min"] * 2, [None] * 2)
    assert table.table[:, 0].tolist() == expected  # bit for bit
    scaled = torch_lrs(make, 0.05, EPOCHS) if name != "onecycle" else None
    if scaled is not None:
        assert table.table[:, 1].tolist() == scaled


@pytest.mark.parametrize(
    "overrides",
    [
        ("scheduler=step", "scheduler.step_size=7", "scheduler.warmup_epochs=3"),
        ("scheduler=cosine", "scheduler.min_lr=0.001", "optimizer=adam", "lr=0.05"),
        ("scheduler=onecycle", "optimizer=adamw", "lr=0.1", "batch_size=64"),
        ("scheduler=constant", "scheduler.warmup_epochs=10", "optimizer.momentum=0.9"),
        (
            "scheduler=plateau",
            "scheduler.patience=1",
            "scheduler.threshold=0.5",
            "objective=val_accuracy",
            "lr=0.5",
        ),
    ],
)
def test_engine_follows_torch_optim_with_its_scheduler(overrides):
    """The batched engine's lrs and weights equal torch.optim's with the scheduler (the
    reference path, which steps torch's own scheduler on its real optimizer)."""
    engine = train_runs([spec("epochs=40", *overrides)])[0]
    reference = train_runs([spec("epochs=40", "engine=reference", *overrides)])[0]
    assert engine.history["lr"] == reference.history["lr"]
    torch.testing.assert_close(
        engine.model.linear.weight, reference.model.linear.weight, rtol=1e-4, atol=1e-5
    )
    assert engine.history["train_loss"] == pytest.approx(reference.history["train_loss"], rel=1e-4)
    assert len(set(engine.history["lr"])) > 1  # the schedule did move the lr


def test_a_plateau_drops_the_lr_when_the_metric_stalls():
    outcome = train_runs(
        [
            spec(
                "epochs=60",
                "scheduler=plateau",
                "scheduler.patience=2",
                "scheduler.gamma=0.5",
                "objective=val_accuracy",
            )
        ]
    )[0]
    lrs = outcome.history["lr"]
    assert lrs[0] == 0.01 and lrs[-1] < 0.01
    assert all(later <= earlier for earlier, later in itertools.pairwise(lrs))


def test_a_batch_mixes_schedules_and_early_stopping_each_as_alone():
    settings = [
        ("lr=0.3",),
        ("lr=0.3", "scheduler=cosine"),
        ("lr=0.1", "scheduler=step", "scheduler.step_size=5", "scheduler.warmup_epochs=2"),
        ("lr=0.5", "scheduler=plateau", "scheduler.patience=1", "objective=val_accuracy"),
        ("lr=0.2", "early_stopping.patience=3", "early_stopping.min_delta=0.002"),
        ("lr=0.4", "early_stopping.patience=2", "objective=val_accuracy"),
    ]
    specs = [spec("epochs=50", *s) for s in settings]
    together = train_runs(specs)
    for one, batched in zip(specs, together, strict=True):
        alone = train_runs([one])[0]
        assert batched.batch_configs == len(specs)
        assert (batched.epochs_run, batched.best_epoch) == (alone.epochs_run, alone.best_epoch)
        assert batched.history["lr"] == alone.history["lr"]
        torch.testing.assert_close(
            batched.model.linear.weight, alone.model.linear.weight, rtol=1e-5, atol=1e-6
        )
    stopped = [o for o in together if o.epochs_run < 50]
    assert len(stopped) >= 1 and all(o.status == "completed" for o in together)


@pytest.mark.parametrize("restore_best", [True, False])
@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_early_stopping_stops_and_keeps_the_best_weights(engine, restore_best, tmp_path):
    overrides = (
        "epochs=300",
        "lr=0.5",
        "early_stopping.patience=4",
        "early_stopping.min_delta=0.001",
        f"early_stopping.restore_best={restore_best}",
        f"engine={engine}",
    )
    _, record = train_and_record(compose_config(*BASE, *overrides), tmp_path)
    assert record["status"] == "completed"
    best_epoch = record["epochs_run"] - 4
    # The record names the best epoch when the run kept its weights (issue 22, 15).
    assert record["epochs_run"] < 300
    assert record["best_epoch"] == (best_epoch if restore_best else None)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].max() == record["epochs_run"]
    best_row = history.set_index("epoch").loc[best_epoch]
    later = history[history["epoch"] > best_epoch]
    assert (later["val_loss"] > best_row["val_loss"] - 0.001).all()  # patience ran out
    # The record's metrics are the kept weights': the best epoch's when restoring.
    same = math.isclose(record["metrics"]["val"]["loss"], best_row["val_loss"], rel_tol=1e-5)
    assert same == restore_best


def test_early_stopping_engine_equals_reference():
    overrides = (
        "epochs=200",
        "lr=0.5",
        "early_stopping.patience=3",
        "early_stopping.min_delta=0.001",
    )
    engine = train_runs([spec(*overrides)])[0]
    reference = train_runs([spec(*overrides, "engine=reference")])[0]
    assert (engine.epochs_run, engine.best_epoch) == (reference.epochs_run, reference.best_epoch)
    torch.testing.assert_close(
        engine.model.linear.weight, reference.model.linear.weight, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("scheduler=plateau", "val_size=0", "objective=train_loss"),
            "scheduler=plateau needs a validation split",
        ),
        (("scheduler=plateau", "objective=val_f1"), "objective=val_f1 has none"),
        (("scheduler=cosine", "scheduler.warmup_epochs=50", "epochs=50"), "warmup_epochs=50"),
        (
            ("scheduler=onecycle", "scheduler.warmup_epochs=3"),
            "does not apply to scheduler=onecycle",
        ),
        (("scheduler=plateau", "scheduler.warmup_epochs=3"), "does not apply to scheduler=plateau"),
        (("scheduler=step", "scheduler.step_size=0"), "scheduler.step_size=0 is invalid"),
        (("scheduler=plateau", "scheduler.gamma=1.5"), "scheduler.gamma=1.5 is invalid"),
        (("scheduler.name=linear",), "scheduler.name=linear is unknown"),
        (("early_stopping.patience=-1",), "early_stopping.patience=-1 is invalid"),
        (
            ("early_stopping.patience=3", "val_size=0", "objective=train_loss"),
            "early_stopping needs a validation split",
        ),
        (("early_stopping.patience=3", "early_stopping.min_delta=-1"), "min_delta=-1.0"),
    ],
)
def test_a_schedule_or_patience_that_cannot_apply_is_one_line(overrides, message):
    with pytest.raises(SweeplrError, match=message) as info:
        spec("epochs=60", *overrides)
    assert "\n" not in str(info.value) and "allowed" in str(info.value)


def test_step_scheduler_feeds_the_plateau_its_metric():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau = torch_scheduler(optimizer, ScheduleSpec("plateau", patience=0, gamma=0.5), 10)
    for value in (1.0, 1.0, 1.0):
        step_scheduler(plateau, value)
    assert optimizer.param_groups[0]["lr"] == 0.25
    assert np.isfinite(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    ("overrides", "owner", "message"),
    [
        (
            ("scheduler.step_size=20", "scheduler.gamma=0.5"),
            "scheduler=step",
            (
                "scheduler.step_size=20 does not apply to scheduler=constant; allowed: scheduler=step "
                "(scheduler=constant's options: warmup_epochs, warmup_start_factor)"
            ),
        ),
        (
            ("scheduler=cosine", "scheduler.patience=3"),
            "scheduler=plateau",
            "scheduler.patience=3 does not apply to scheduler=cosine; allowed: scheduler=plateau ",
        ),
        (
            ("scheduler=step", "scheduler.min_lr=1e-4"),
            "scheduler=cosine",
            (
                "scheduler.min_lr=1e-4 does not apply to scheduler=step; "
                "allowed: scheduler=cosine or plateau "
            ),
        ),
        (
            ("scheduler=onecycle", "scheduler.warmup_start_factor=0.5"),
            "scheduler=constant",
            "scheduler.warmup_start_factor=0.5 does not apply to scheduler=onecycle",
        ),
    ],
)
def test_an_option_of_another_schedule_is_one_line(overrides, owner, message):
    """As an option of another optimizer is: it would change nothing, silently."""
    with pytest.raises(SweeplrError) as info:
        run_spec(compose_config(*BASE, *overrides), overrides)
    assert str(info.value).startswith(message)
    options = [o for o in overrides if not o.startswith("scheduler=")]
    assert run_spec(compose_config(*BASE, owner, *options)).schedule.name == owner.split("=")[1]
