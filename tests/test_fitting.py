"""One training pass of members: the solvers' settings from a spec (row weights, penalty
strengths) and a pass's members watched and stopped by group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeplr.fitting import penalty_strengths
from tests.test_sklearn_parity import BC, spec_of


def test_penalty_strengths_are_scikit_learns_objective_over_c_n():
    assert penalty_strengths(spec_of("penalty=l2", "penalty.C=0.5"), 100) == (0.02, 0.0)
    assert penalty_strengths(spec_of("penalty=l1", "penalty.C=2"), 50) == (0.0, 0.01)
    l2, l1 = penalty_strengths(
        spec_of("penalty=elasticnet", "penalty.C=1", "penalty.l1_ratio=0.25"), 10
    )
    assert (l2, l1) == pytest.approx((0.075, 0.025))
    assert penalty_strengths(spec_of(), 10) == (0.0, 0.0)


def test_members_with_the_same_class_weights_share_one_weight_vector():
    """A [K, n] matrix of equal rows would cost K times the memory (10M rows x 64: 2.5 GB)."""
    from sweeplr import fitting

    specs = [spec_of(*BC, "class_weight=balanced", f"lr={lr}") for lr in (0.1, 0.2, 0.3)]
    data = fitting.DeviceData.load(specs[0])
    n = len(data.train[1])
    members = [fitting.Member(s) for s in specs]
    shared = fitting._engine_weights(members, data, [n] * 3)
    assert shared is not None and shared.shape == (n,)
    mixed = [*members, fitting.Member(spec_of(*BC, "lr=0.4"))]
    matrix = fitting._engine_weights(mixed, data, [n] * 4)
    assert matrix is not None and matrix.shape == (4, n)
    assert torch.equal(matrix[0], shared) and bool((matrix[3] == 1).all())


def test_row_weights_are_the_class_weight_times_the_data_sets_row_weight(tmp_path):
    import pandas as pd
    from sklearn.utils.class_weight import compute_class_weight

    from sweeplr.fitting import DeviceData, row_weights

    rng = np.random.RandomState(0)
    label = rng.choice(["cat", "dog", "eel"], size=120, p=[0.5, 0.3, 0.2])
    w = rng.choice([0.5, 1.0, 3.0], size=120)
    path = tmp_path / "rows.csv"
    pd.DataFrame({"a": rng.normal(size=120), "w": w, "label": label}).to_csv(path, index=False)
    csv = ("dataset=csv", f"dataset.path={path}", "dataset.target=label", "device=cpu")
    data = DeviceData.load(spec_of(*csv))
    assert row_weights(spec_of(*csv), data) is None  # every row weighs 1

    splits = data.splits
    balanced = compute_class_weight("balanced", classes=np.unique(splits.y_train), y=splits.y_train)
    got = row_weights(spec_of(*csv, "class_weight=balanced"), data)
    assert got == pytest.approx(balanced[splits.y_train], rel=1e-6)
    named = row_weights(spec_of(*csv, "class_weight={dog: 4}"), data)
    names = np.asarray(splits.class_names)[splits.y_train]
    assert named.tolist() == [4.0 if n == "dog" else 1.0 for n in names]

    weighted = DeviceData.load(spec_of(*csv, "dataset.weight=w"))
    assert weighted.splits.w_train is not None and set(weighted.splits.w_train) <= {0.5, 1.0, 3.0}
    both = row_weights(spec_of(*csv, "dataset.weight=w", "class_weight={dog: 4}"), weighted)
    dog = np.asarray(weighted.splits.class_names)[weighted.splits.y_train] == "dog"
    assert both.tolist() == (weighted.splits.w_train * np.where(dog, 4.0, 1.0)).tolist()


def test_a_group_callback_sees_its_members_mean_and_stops_them_all():
    from sweeplr.fitting import DeviceData, Member, train_members

    spec = spec_of(*BC, "epochs=60", "lr=0.1")
    data = DeviceData.load(spec, configs=3)
    n = len(data.train[1])
    rows = [np.arange(n) % 2 == 0, np.arange(n) % 2 == 1, np.arange(n) % 3 != 0]
    members = [Member(spec, r) for r in rows]  # (a pass's members all have rows, or none)
    seen: list[tuple[int, float]] = []

    def on_group(epoch: int, train_loss: float, val_loss: float, val_accuracy: float) -> bool:
        seen.append((epoch, train_loss))
        return epoch >= 20

    stopped_0, stopped_1, free = train_members(members, data, [on_group, None], [[0, 1], [2]])
    assert [epoch for epoch, _ in seen] == [10, 20]
    assert stopped_0.status == stopped_1.status == "pruned"
    assert stopped_0.epochs_run == stopped_1.epochs_run == 20
    assert free.status == "completed" and free.epochs_run == 60
    mean = np.mean([stopped_0.history["train_loss"][-1], stopped_1.history["train_loss"][-1]])
    assert seen[-1][1] == pytest.approx(mean, rel=1e-5)


def test_a_member_is_validated_on_the_rows_it_does_not_learn_from():
    from sweeplr.fitting import Member

    rows = np.array([True, False, True, False])
    assert Member(spec_of(), rows).held_out.tolist() == [False, True, False, True]
    assert Member(spec_of()).held_out is None
