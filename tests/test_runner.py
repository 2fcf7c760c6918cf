import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from sweeplr.data import load_dataset, split
from sweeplr.errors import SweeplrError
from sweeplr.records import load_model_payload, read_metrics
from sweeplr.runner import DeviceData, train_runs
from sweeplr.spec import run_spec
from sweeplr.validation import validate
from tests.conftest import compose_config, train_and_record


def prepare_data(cfg):
    data = DeviceData.load(run_spec(cfg))
    return data.splits, data.scaler


def test_run_writes_a_complete_record(small_cfg, tmp_path):
    _, written = train_and_record(small_cfg(), tmp_path)
    record = read_metrics(tmp_path)
    assert record == json.loads(json.dumps(written | {"schema": 1}))
    assert record["status"] == "completed" and record["epochs_run"] == 50
    for part in ("train", "val", "test"):
        assert set(record["metrics"][part]) == {"loss", "accuracy", "roc_auc", "f1"}
        assert 0 <= record["metrics"][part]["accuracy"] <= 1
    assert record["objective"] == {
        "name": "val_loss",
        "direction": "minimize",
        "value": record["metrics"]["val"]["loss"],
    }
    assert record["hyperparameters"]["optimizer"] == "sgd"
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy", "lr"]
    assert (history["lr"] == 0.01).all()  # a constant schedule
    assert history["epoch"].tolist() == [1, 2, 5, 10, 20, 30, 40, 50]  # early rows first
    payload = load_model_payload(tmp_path)
    assert payload["class_names"] == ["red", "blue"] and payload["feature_names"] == ["x1", "x2"]
    assert payload["config"]["lr"] == 0.01
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_same_config_same_seed_same_metrics(small_cfg, tmp_path):
    a = train_and_record(small_cfg("optimizer=adam", "batch_size=32"), tmp_path / "a")[1]
    b = train_and_record(small_cfg("optimizer=adam", "batch_size=32"), tmp_path / "b")[1]
    assert a["metrics"] == b["metrics"]
    c = train_and_record(small_cfg("optimizer=adam", "batch_size=32", "seed=1"), tmp_path / "c")
    assert c[1]["metrics"] != a["metrics"]


def test_divergence_is_recorded_not_raised(small_cfg, tmp_path):
    outcome, record = train_and_record(small_cfg("lr=1e38", "standardize=false"), tmp_path)
    assert record["status"] == "diverged"
    assert record["diverged_epoch"] >= 1
    assert record["objective"]["value"] is None
    assert outcome.objective == math.inf  # ranks last when minimising
    maximise, _ = train_and_record(
        small_cfg("lr=1e38", "standardize=false", "objective=val_accuracy"), tmp_path / "m"
    )
    assert maximise.objective == -math.inf


def test_multiclass_run_uses_macro_f1(small_cfg, tmp_path):
    record = train_and_record(small_cfg("dataset=iris", "stratify=true", "lr=0.5"), tmp_path)[1]
    assert record["data"]["class_names"] == ["setosa", "versicolor", "virginica"]
    assert record["metrics"]["test"]["accuracy"] > 0.8
    assert record["metrics"]["test"]["roc_auc"] is not None


def test_matches_sklearn_logistic_regression_on_breast_cancer(small_cfg, tmp_path):
    # The same split and standardisation; sklearn's default is L2 with C=1 (penalty 1/(2n)||w||^2
    # on the mean loss), so we train to convergence with the equivalent weight decay.
    cfg = small_cfg(
        "dataset=breast_cancer",
        "optimizer=adam",
        "lr=0.05",
        "epochs=3000",
        "log_every=500",
        "val_size=0.0",
        "objective=test_accuracy",
    )
    splits, _ = prepare_data(cfg)
    cfg.optimizer.weight_decay = 1.0 / len(splits.y_train)
    record = train_and_record(cfg, tmp_path)[1]
    sk = SkLogisticRegression(max_iter=5000).fit(splits.X_train, splits.y_train)
    sk_accuracy = sk.score(splits.X_test, splits.y_test)
    ours = record["metrics"]["test"]["accuracy"]
    assert abs(ours - sk_accuracy) <= 1 / len(splits.y_test) + 1e-12, (ours, sk_accuracy)


def test_saved_model_reproduces_predictions(small_cfg, tmp_path):
    from sweeplr.model import LogisticRegression

    cfg = small_cfg()
    train_and_record(cfg, tmp_path)
    payload = load_model_payload(tmp_path)
    model = LogisticRegression(payload["n_features"], payload["n_classes"])
    model.load_state_dict(payload["state_dict"])
    splits, _ = prepare_data(cfg)
    with torch.no_grad():
        accuracy = (
            model.predict_proba(torch.from_numpy(splits.X_test)).argmax(1).numpy() == splits.y_test
        ).mean()
    assert accuracy == pytest.approx(read_metrics(tmp_path)["metrics"]["test"]["accuracy"])
    raw = split(load_dataset(cfg.dataset), cfg.test_size, cfg.val_size, cfg.random_state)
    np.testing.assert_allclose(payload["scaler_mean"].numpy(), raw.X_train.mean(0), rtol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=-1", "lr=-1.0 is invalid"),
        ("epochs=0", "epochs=0 is invalid"),
        ("test_size=1.5", "test_size=1.5 is out of range"),
        ("batch_size=0", "batch_size=0 is invalid"),
        ("device=tpu", "device=tpu is invalid"),
        ("objective=val_speed", "objective=val_speed is unknown"),
        ("optimizer.momentum=1.5", "momentum=1.5 is invalid"),
    ],
)
def test_validation_names_the_bad_value(small_cfg, override, message):
    with pytest.raises(SweeplrError, match=message) as info:
        validate(small_cfg(override))
    assert "\n" not in str(info.value) and "allowed" in str(info.value)


def test_val_objective_needs_a_validation_split(small_cfg):
    with pytest.raises(SweeplrError, match="needs a validation split"):
        validate(small_cfg("val_size=0"))


def test_seed_experiment_is_the_tutorial(small_cfg):
    from tests.conftest import compose_config

    cfg = compose_config("experiment=seed")
    assert (cfg.dataset.name, cfg.optimizer.name, cfg.lr, cfg.epochs, cfg.batch_size) == (
        "blobs",
        "sgd",
        0.01,
        200_000,
        None,
    )
    assert (cfg.test_size, cfg.random_state, cfg.standardize) == (0.33, 42, False)
    validate(cfg)


def test_the_seed_experiments_history_shows_the_first_epochs():
    """The tutorial logs every 10,000 of 200,000 epochs; its curve's first drop is in the
    early rows, log-spaced, before the first of those."""
    from sweeplr.batched import logged_epochs
    from tests.conftest import compose_config

    cfg = compose_config("experiment=seed")
    early = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    assert logged_epochs(cfg.epochs, cfg.log_every) == [*early, *range(10_000, 200_001, 10_000)]


@pytest.mark.parametrize(
    ("epochs", "log_every", "logged"),
    [
        (1000, 10, [1, 2, 5, *range(10, 1001, 10)]),
        (25, 10, [1, 2, 5, 10, 20, 25]),
        (3, 10, [1, 2, 3]),
        (4, 1, [1, 2, 3, 4]),
        (7, 3, [1, 2, 3, 6, 7]),
        (50, 0, []),
    ],
)
def test_logged_epochs(epochs, log_every, logged):
    from sweeplr.batched import logged_epochs

    assert logged_epochs(epochs, log_every) == logged


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_early_history_rows_are_recorded_not_watched_or_reported(small_cfg, engine):
    """Early stopping, plateau schedules and pruning see every log_every-th epoch only: with
    min_delta 1 no check improves after the first, so the run stops at the second (epoch 20),
    not at epoch 2."""
    from sweeplr.runner import train_runs

    cfg = small_cfg(f"engine={engine}", "early_stopping.patience=1", "early_stopping.min_delta=1")
    reported = []

    def on_log(epoch, *values):
        reported.append(epoch)
        return False

    outcome = train_runs([run_spec(cfg)], [on_log])[0]
    assert outcome.history["epoch"] == [1, 2, 5, 10, 20]
    assert (outcome.epochs_run, outcome.best_epoch) == (20, 10)
    assert reported == [10, 20]


def test_lbfgs_histories_have_the_early_rows_in_both_engines(small_cfg):
    from sweeplr.runner import train_runs

    histories = [
        train_runs([run_spec(small_cfg("optimizer=lbfgs", "log_every=10", f"engine={e}"))])[0]
        for e in ("batched", "reference")
    ]
    epochs = [outcome.history["epoch"] for outcome in histories]
    assert epochs[0] == epochs[1] and epochs[0][:4] == [1, 2, 5, 10]


def test_progress_line_for_a_terminal_and_quiet_otherwise(small_cfg, tmp_path, capsys):
    import io

    from sweeplr.console import progress_printer

    stream = io.StringIO()
    show = progress_printer(50, stream)
    train_and_record(small_cfg(), tmp_path, on_log=show)
    text = stream.getvalue()
    assert text.startswith("\repoch 10/50") and "\repoch 50/50  train loss" in text
    assert "val acc" in text and text.endswith("\n")
    train_and_record(small_cfg(), tmp_path / "quiet")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["optimizer=adam", "dataset=breast_cancer", "penalty=elasticnet", "penalty.l1_ratio=0.5"],
        ["dataset=csv", "dataset.path=x.csv", "dataset.target=y", "+dataset.features=[a,b]"],
        ["class_weight={red:2,blue:1}", "early_stopping.patience=3"],
    ],
)
def test_config_values_are_what_omegaconf_reads(small_cfg, overrides):
    """The plain copy validation reads is OmegaConf's own reading, to the type."""
    from omegaconf import OmegaConf, open_dict

    from sweeplr.config import config_values

    cfg = small_cfg(*overrides)
    expected = OmegaConf.to_container(cfg, resolve=True)
    assert json.dumps(config_values(cfg)) == json.dumps(expected)
    # An interpolation is read by OmegaConf (resolved), not copied as text.
    with open_dict(cfg):
        cfg.seed = "${epochs}"
    assert config_values(cfg).seed == 50


@pytest.mark.parametrize("dataset", ["blobs", "iris"])
def test_models_evaluated_together_equal_models_evaluated_alone(dataset):
    """A pass's models are evaluated in one batched product: each model's metrics equal its own
    evaluation (exactly where no sum is involved; losses to float32 rounding)."""
    from sweeplr.model import LogisticRegression
    from sweeplr.training import evaluate, evaluate_models

    torch.manual_seed(0)
    X = torch.randn(101, 4)
    y = torch.randint(0, 2 if dataset == "blobs" else 3, (101,))
    models = [LogisticRegression(4, 2 if dataset == "blobs" else 3) for _ in range(5)]
    together = evaluate_models(models, X, y)
    for model, metrics in zip(models, together, strict=True):
        alone = evaluate(model, X, y)
        assert metrics["loss"] == pytest.approx(alone["loss"], rel=1e-6)
        for name in ("accuracy", "roc_auc", "f1"):
            assert metrics[name] == pytest.approx(alone[name], abs=1e-12), name
    assert evaluate_models(models[:1], X, y) == [evaluate(models[0], X, y)]


def test_wall_seconds_is_the_share_of_the_pass_without_data_loading(monkeypatch):
    """A fake clock: loading the data takes 100 s, the pass 6 s, for three configurations."""
    from sweeplr import runner

    now = [0.0]
    real_load = runner.DeviceData.load

    def slow_load(spec, configs=1):
        now[0] += 100.0
        return real_load(spec, configs)

    def train_members(members, data, callbacks, groups=None):
        now[0] += 6.0
        return real_train(members, data, callbacks, groups)

    real_train = runner.train_members
    monkeypatch.setattr(runner.DeviceData, "load", staticmethod(slow_load))
    monkeypatch.setattr(runner, "train_members", train_members)
    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    specs = [
        run_spec(compose_config("epochs=5", f"lr={lr}", "device=cpu")) for lr in (0.1, 0.2, 0.3)
    ]
    outcomes = train_runs(specs)
    assert [o.wall_seconds for o in outcomes] == [2.0, 2.0, 2.0]
    assert {o.batch_wall_seconds for o in outcomes} == {6.0}


def test_training_gives_back_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        train_runs([run_spec(compose_config("epochs=5", "device=cpu"))])  # small data: 1 thread
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
