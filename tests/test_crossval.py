"""k-fold cross-validation as a batch dimension: scikit-learn's stratified folds, each
configuration's folds as members of one pass, fold means and standard deviations, the refit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeplr.data import stratified_folds
from sweeplr.errors import SweeplrError
from sweeplr.runner import train_runs
from tests.conftest import run_train
from tests.test_sklearn_parity import BC, spec_of


@pytest.mark.parametrize(("n", "folds", "classes"), [(381, 5, 2), (100, 3, 3), (57, 7, 4)])
def test_folds_are_scikit_learns_stratified_k_fold(n, folds, classes):
    from sklearn.model_selection import StratifiedKFold

    y = np.random.RandomState(n).randint(0, classes, n)
    y[:classes] = np.arange(classes)[::-1]  # classes first seen out of code order
    fold_of_row = stratified_folds(y, folds)
    for f, (_, held) in enumerate(StratifiedKFold(folds).split(np.zeros(n), y)):
        assert np.array_equal(np.flatnonzero(fold_of_row == f), held)


def test_more_folds_than_the_smallest_class_is_one_line():
    y = np.array([0] * 20 + [1] * 3)
    with pytest.raises(SweeplrError, match=r"^cv=4 is more folds .* \(3\); allowed: 2 <= cv <= 3$"):
        stratified_folds(y, 4)


@pytest.mark.parametrize("dataset", ["breast_cancer", "iris"])
def test_cv_objective_is_the_mean_of_folds_trained_alone(dataset):
    """The batched pass equals each fold trained alone on its own rows (the reference path)."""
    base = (*BC, f"dataset={dataset}", "cv=3", "epochs=60", "optimizer=adam", "lr=0.05")
    specs = [spec_of(*base, f"lr={lr}") for lr in (0.05, 0.2)]
    batched = train_runs(specs)
    reference = train_runs([spec_of(*base, f"lr={lr}", "engine=reference") for lr in (0.05, 0.2)])
    for ours, ref in zip(batched, reference, strict=True):
        assert ours.cv["folds"] == 3
        for metric in ("loss", "accuracy"):
            assert ours.metrics["val"][metric] == pytest.approx(
                ref.metrics["val"][metric], rel=1e-5
            )
            assert ours.cv["val_std"][metric] == pytest.approx(
                ref.cv["val_std"][metric], rel=1e-4, abs=1e-7
            )
        assert ours.objective == pytest.approx(ours.metrics["val"]["loss"])
        assert ours.metrics["test"]["loss"] == pytest.approx(ref.metrics["test"]["loss"], rel=1e-5)
        assert ours.data.splits.X_val.shape[0] == 0  # the folds are the validation data


def test_cv_refit_is_the_configuration_trained_on_the_whole_training_part():
    folded = train_runs([spec_of(*BC, "cv=4", "epochs=40", "lr=0.1")])[0]
    whole = train_runs([spec_of(*BC, "val_size=0", "objective=train_loss", "epochs=40", "lr=0.1")])[
        0
    ]
    assert torch.equal(folded.model.linear.weight, whole.model.linear.weight)
    assert folded.metrics["test"] == whole.metrics["test"]
    assert folded.metrics["val"] != whole.metrics["val"]


def test_cv_pruning_sees_fold_means_and_stops_every_fold():
    seen: list[tuple[int, float]] = []

    def on_log(epoch, train_loss, val_loss, val_accuracy):
        seen.append((epoch, val_loss))
        return epoch >= 20

    spec = spec_of(*BC, "cv=3", "epochs=100", "lr=0.1")
    pruned, kept = train_runs([spec, spec_of(*BC, "cv=3", "epochs=100", "lr=0.3")], [on_log, None])
    assert pruned.status == "pruned" and pruned.epochs_run == 20
    assert kept.status == "completed" and kept.epochs_run == 100
    assert [epoch for epoch, _ in seen] == [10, 20]
    assert pruned.metrics["test"]["loss"] is None  # nothing refit
    assert seen[-1][1] == pytest.approx(pruned.history["val_loss"][-1])


def test_a_diverged_fold_makes_the_configuration_diverged_and_spares_the_others():
    base = (*BC, "cv=3", "epochs=20", "standardize=false")
    diverged, fine = train_runs([spec_of(*base, "lr=1e39"), spec_of(*base, "lr=1e-6")])
    assert diverged.status == "diverged" and diverged.objective == float("inf")
    assert all(v is None for split in diverged.metrics.values() for v in split.values())
    assert fine.status == "completed" and fine.metrics["test"]["loss"] is not None


@pytest.mark.slow
def test_cv_record_and_summary_carry_mean_and_std(tmp_path: Path):
    proc = run_train(
        tmp_path,
        "--multirun",
        "lr=0.1,0.3",
        "cv=3",
        "epochs=50",
        *BC,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "sweep/0/metrics.json").read_text())
    assert record["cv"]["folds"] == 3 and record["data"]["n_val"] == 0
    assert record["objective"]["value"] == record["metrics"]["val"]["loss"]
    import pandas as pd

    table = pd.read_csv(tmp_path / "sweep/summary.csv")
    assert {"val_loss_std", "val_accuracy_std", "cv"} <= set(table.columns)
    assert (table["val_loss_std"] > 0).all()


def test_each_fold_is_scored_on_its_held_out_rows_and_the_curves_are_fold_means():
    """cross_validate against the folds trained one by one and scored by hand."""
    from sweeplr.crossval import cross_validate
    from sweeplr.fitting import DeviceData, Member, train_members
    from sweeplr.schema import METRICS
    from sweeplr.training import evaluate

    spec = spec_of(*BC, "cv=3", "epochs=30", "lr=0.1")
    data = DeviceData.load(spec)
    (result,) = cross_validate([spec], data, [None])
    fold_of_row = stratified_folds(data.splits.y_train, 3)
    X, y = data.train
    scores, curves = [], []
    for fold in range(3):
        (alone,) = train_members([Member(spec, fold_of_row != fold)], data, [None])
        held = torch.from_numpy(fold_of_row == fold)
        scores.append(evaluate(alone.model, X[held], y[held]))
        curves.append(alone.history["val_loss"])
    assert result.folds == 3
    for metric in METRICS:
        values = [s[metric] for s in scores]
        assert result.val[metric] == pytest.approx(np.mean(values), rel=1e-5)
        assert result.std[metric] == pytest.approx(np.std(values), rel=1e-3, abs=1e-7)
    assert result.trained.history["val_loss"] == pytest.approx(np.mean(curves, axis=0), rel=1e-5)
