"""scikit-learn parity: k-fold CV in the batch, penalties, class and row weights, L-BFGS.

What a user of ``LogisticRegressionCV`` / ``LogisticRegression`` types here, checked against
scikit-learn itself, the reference path, and the one-line errors for settings that cannot
apply.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeplr.data import load_dataset, scale_splits, split
from sweeplr.errors import SweeplrError
from sweeplr.runner import train_runs
from sweeplr.spec import run_spec
from tests.conftest import compose_config, run_train

BC = ("dataset=breast_cancer", "device=cpu", "progress=false", "plots=false")


def spec_of(*overrides: str):
    return run_spec(compose_config(*overrides), overrides)


def sklearn_split(standardize: bool = True):
    """breast_cancer's tutorial split, scaled as sweeplr scales it (float32)."""
    spec = spec_of(*BC, "val_size=0", "objective=train_loss")
    splits, _ = scale_splits(
        split(
            load_dataset(spec.data.dataset), spec.data.test_size, 0.0, spec.data.random_state, False
        ),
        standardize,
    )
    return splits


def objective(model, X: np.ndarray, y: np.ndarray, C: float, w: np.ndarray | None = None) -> float:
    """scikit-learn's binary objective ``C * sum(s_i * loss_i) + ||W||^2 / 2`` in float64."""
    weight = model.linear.weight.detach().double().numpy()[0]
    bias = float(model.linear.bias.detach().double()[0])
    z = X.astype(np.float64) @ weight + bias
    losses = np.logaddexp(0.0, z) - y * z
    s = np.ones_like(losses) if w is None else w
    return C * float(np.sum(s * losses)) + 0.5 * float(weight @ weight)


def sklearn_objective(est, X: np.ndarray, y: np.ndarray, C: float, w=None) -> float:
    z = X.astype(np.float64) @ est.coef_[0] + est.intercept_[0]
    s = np.ones(len(y)) if w is None else w
    return C * float(np.sum(s * (np.logaddexp(0.0, z) - y * z))) + 0.5 * float(
        est.coef_[0] @ est.coef_[0]
    )


def sklearn_lbfgs(X, y, C=1.0, **kwargs):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return LogisticRegression(C=C, tol=1e-10, max_iter=10_000, **kwargs).fit(X, y)


# --- penalties, class and row weights ---------------------------------------------------------


def test_lbfgs_l2_reaches_scikit_learns_objective_and_predictions():
    splits = sklearn_split()
    outcome = train_runs(
        [spec_of(*BC, "val_size=0", "objective=train_loss", "optimizer=lbfgs", "penalty=l2")]
    )[0]
    est = sklearn_lbfgs(splits.X_train, splits.y_train, C=1.0)
    ours = objective(outcome.model, splits.X_train, splits.y_train, 1.0)
    theirs = sklearn_objective(est, splits.X_train, splits.y_train, 1.0)
    assert ours <= theirs * (1 + 1e-5)
    with torch.no_grad():
        logits = outcome.model(torch.from_numpy(splits.X_test)).squeeze(-1).numpy()
    assert np.array_equal((logits > 0).astype(int), est.predict(splits.X_test))


def test_lbfgs_l2_multinomial_matches_scikit_learn_on_iris():
    """Three classes: scikit-learn's multinomial objective, C * sum(CE) + ||W||^2 / 2 over
    all classes' weights (W is [3, 4], as sweeplr's softmax model has it)."""
    from scipy.special import logsumexp

    overrides = ("dataset=iris", "val_size=0", "objective=train_loss", "device=cpu")
    outcome = train_runs([spec_of(*overrides, "optimizer=lbfgs", "penalty=l2")])[0]
    splits = outcome.data.splits
    X, y = splits.X_train.astype(np.float64), splits.y_train
    est = sklearn_lbfgs(splits.X_train, y, C=1.0)

    def multinomial(W: np.ndarray, b: np.ndarray) -> float:
        z = X @ W.T + b
        return float(np.sum(logsumexp(z, axis=1) - z[np.arange(len(y)), y]) + 0.5 * np.sum(W**2))

    weight = outcome.model.linear.weight.detach().double().numpy()
    bias = outcome.model.linear.bias.detach().double().numpy()
    assert multinomial(weight, bias) <= multinomial(est.coef_, est.intercept_) * (1 + 1e-5)
    with torch.no_grad():
        ours = outcome.model(torch.from_numpy(splits.X_test)).argmax(1).numpy()
    assert np.array_equal(ours, est.predict(splits.X_test))


def test_balanced_class_weight_matches_scikit_learn():
    splits = sklearn_split()
    outcome = train_runs(
        [
            spec_of(
                *BC,
                "val_size=0",
                "objective=train_loss",
                "optimizer=lbfgs",
                "penalty=l2",
                "penalty.C=0.5",
                "class_weight=balanced",
            )
        ]
    )[0]
    y = splits.y_train
    est = sklearn_lbfgs(splits.X_train, y, C=0.5, class_weight="balanced")
    s = (len(y) / (2 * np.bincount(y)))[y]
    ours = objective(outcome.model, splits.X_train, y, 0.5, s)
    assert ours <= sklearn_objective(est, splits.X_train, y, 0.5, s) * (1 + 1e-5)


def test_a_batch_may_mix_penalties_and_class_weights():
    """Each configuration of a mixed batch equals itself trained alone."""
    settings = [
        ("penalty=none",),
        ("penalty=l2", "penalty.C=0.1"),
        ("penalty=l1", "penalty.C=0.05"),
        ("penalty=elasticnet", "penalty.l1_ratio=0.5", "class_weight=balanced"),
        ("class_weight={malignant:3,benign:1}",),
    ]
    base = (*BC, "epochs=80", "lr=0.3")
    together = train_runs([spec_of(*base, *s) for s in settings])
    for alone_settings, mixed in zip(settings, together, strict=True):
        alone = train_runs([spec_of(*base, *alone_settings)])[0]
        torch.testing.assert_close(
            mixed.model.linear.weight, alone.model.linear.weight, rtol=1e-5, atol=1e-6
        )
    l1_weights = together[2].model.linear.weight
    assert int((l1_weights == 0).sum()) > 0  # the proximal step zeroes weights exactly


def test_lbfgs_stops_at_the_same_iteration_in_a_batch_and_alone():
    """L-BFGS solves in float64, so a configuration's iterations do not hang on the batch's
    shape (in float32, breast_cancer C=10 took 43 iterations alone and 45 beside C=1 and 100)."""
    settings = [f"penalty.C={c}" for c in (1, 10, 100)]
    base = (*BC, "optimizer=lbfgs", "penalty=l2")
    together = train_runs([spec_of(*base, s) for s in settings])
    for setting, mixed in zip(settings, together, strict=True):
        alone = train_runs([spec_of(*base, setting)])[0]
        assert mixed.epochs_run == alone.epochs_run
        torch.testing.assert_close(
            mixed.model.linear.weight, alone.model.linear.weight, rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize(
    "settings",
    [
        ("optimizer=lbfgs", "penalty=l2", "penalty.C=0.3", "class_weight=balanced"),
        ("optimizer=lbfgs", "cv=3", "penalty=l2"),
        ("optimizer=sgd", "lr=0.3", "penalty=l1", "penalty.C=0.05", "class_weight=balanced"),
        ("optimizer=adamw", "lr=0.05", "penalty=elasticnet", "penalty.l1_ratio=0.5", "cv=3"),
        ("optimizer=sgd", "lr=0.3", "cv=3", "class_weight={malignant:3,benign:1}"),
    ],
)
def test_the_reference_path_agrees_with_the_batched_engine(settings):
    """engine=reference (torch.optim, torch's LBFGS, autograd) is the oracle of every setting.

    Every run follows the reference epoch for epoch: L-BFGS too, since both solve in float64
    (`sweeplr.fitting.lbfgs_dtype`), where its stopping tests (a loss change below 1e-9) do not
    fire on rounding noise.
    """
    base = (*BC, "epochs=40", *settings)
    batched = train_runs([spec_of(*base)])[0]
    reference = train_runs([spec_of(*base, "engine=reference")])[0]
    assert batched.epochs_run == reference.epochs_run
    torch.testing.assert_close(
        batched.model.linear.weight, reference.model.linear.weight, rtol=2e-4, atol=2e-5
    )
    assert batched.objective == pytest.approx(reference.objective, rel=1e-4)
    if "penalty=l1" in settings:
        zeros = batched.model.linear.weight == 0
        assert zeros.any() and torch.equal(zeros, reference.model.linear.weight == 0)


def test_row_weights_come_from_a_csv_column(tmp_path: Path):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)
    w = rng.choice([0.5, 1.0, 3.0], size=200)
    import pandas as pd

    path = tmp_path / "rows.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "w": w, "label": y}).to_csv(
        path, index=False
    )
    overrides = (
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.target=label",
        "dataset.weight=w",
        "val_size=0",
        "objective=train_loss",
        "optimizer=lbfgs",
        "penalty=l2",
        "standardize=false",
        "device=cpu",
    )
    outcome = train_runs([spec_of(*overrides)])[0]
    splits = outcome.data.splits
    assert splits.feature_names == ("a", "b", "c")
    weight_of = dict(zip(X[:, 0].astype(np.float32).tolist(), w.tolist(), strict=True))
    assert splits.w_train.tolist() == [weight_of[a] for a in splits.X_train[:, 0].tolist()]
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(
        splits.X_train, splits.y_train, sample_weight=splits.w_train
    )
    ours = objective(outcome.model, splits.X_train, splits.y_train, 1.0, splits.w_train)
    theirs = sklearn_objective(est, splits.X_train, splits.y_train, 1.0, splits.w_train)
    assert ours <= theirs * (1 + 1e-5)


# --- settings that cannot apply: one line each -----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cv=1"], "cv=1 is invalid; allowed: null (one validation split) or an integer >= 2"),
        (["penalty=elasticnet", "penalty.l1_ratio=2"], "penalty.l1_ratio=2 is out of range"),
        (["penalty=l2", "penalty.C=0"], "penalty.C=0 is invalid; allowed: a finite number > 0"),
        (["penalty.C=0.5"], "penalty.C=0.5 does not apply to penalty=none"),
        (["penalty=l2", "penalty.l1_ratio=0.5"], "penalty.l1_ratio=0.5 does not apply"),
        (["optimizer=lbfgs", "batch_size=64"], "batch_size=64 does not apply to optimizer=lbfgs"),
        (["optimizer=lbfgs", "penalty=l1"], "penalty=l1 does not apply to optimizer=lbfgs"),
        (["optimizer=lbfgs", "optimizer.weight_decay=0.1"], "optimizer.weight_decay=0.1 does not"),
        (["optimizer=sgd", "optimizer.history_size=5"], "optimizer.history_size=5 does not apply"),
        (["optimizer=lbfgs", "scheduler=cosine"], "scheduler=cosine does not apply to optimizer"),
        (["cv=5", "val_size=0.1"], "val_size=0.1 does not apply with cv=5"),
        (["cv=5", "early_stopping.patience=3"], "early_stopping does not apply with cv=5"),
        (["class_weight={red:0}"], "class_weight.red=0 is invalid; allowed: a finite number > 0"),
        (["class_weight=heavy"], "class_weight=heavy is invalid; allowed: null, balanced"),
    ],
)
def test_settings_that_cannot_apply_name_the_value(overrides, message):
    with pytest.raises(SweeplrError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        spec_of(*overrides)


def test_data_dependent_settings_fail_before_training():
    with pytest.raises(
        SweeplrError, match=r"^class_weight names class 'purple'.*allowed: red, blue$"
    ):
        train_runs([spec_of("class_weight={purple:2}", "epochs=5", "device=cpu")])
    with pytest.raises(SweeplrError, match=r"^cv=40 is more folds"):
        train_runs([spec_of("dataset=iris", "cv=40", "epochs=5", "device=cpu")])


@pytest.mark.slow
def test_bad_fold_count_from_the_command_line_is_one_line(tmp_path: Path):
    proc = run_train(tmp_path, "dataset=iris", "cv=40", "plots=false")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        (
            "error: cv=40 is more folds than the training part's smallest class has rows (31); "
            "allowed: 2 <= cv <= 31"
        )
    ]
    assert proc.stdout == ""


@pytest.mark.slow
def test_logistic_cv_preset_runs_an_optuna_search_over_c_with_folds_and_a_pruner(tmp_path: Path):
    sweep = tmp_path / "study"
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=logistic_cv",
        "dataset=breast_cancer",
        "pruner=median",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 6 and set(table["status"]) <= {"completed", "pruned"}
    assert table["C"].nunique() == 6 and (table["optimizer"] == "lbfgs").all()
    assert (table["cv"] == 5).all() and table["val_loss_std"].notna().any()
    assert (sweep / "objective_vs_C.png").is_file()
    best = table.iloc[0]
    record = json.loads((tmp_path / best["run_dir"] / "metrics.json").read_text())
    assert record["cv"]["folds"] == 5 and record["hyperparameters"]["penalty"] == "l2"
