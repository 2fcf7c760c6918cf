import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from sweeplr.metrics import classification_metrics


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learn(n_classes, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 200)
    logits = rng.normal(size=(200, n_classes)) + np.eye(n_classes)[y] * rng.uniform(0, 2)
    logits[:20] = np.round(logits[:20])  # ties in the scores
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = classification_metrics(proba, y, 0.5)
    if n_classes == 2:
        auc = roc_auc_score(y, proba[:, 1])
        f1 = f1_score(y, proba.argmax(1))
    else:
        auc = roc_auc_score(y, proba, multi_class="ovr", labels=range(n_classes))
        f1 = f1_score(y, proba.argmax(1), average="macro", labels=range(n_classes), zero_division=0)
    assert got["roc_auc"] == pytest.approx(auc, abs=1e-12)
    assert got["f1"] == pytest.approx(f1, abs=1e-12)
    assert got["accuracy"] == pytest.approx((proba.argmax(1) == y).mean())


def test_undefined_and_diverged_metrics_are_missing():
    one_class = classification_metrics(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 1]), 0.3)
    assert one_class["roc_auc"] is None and one_class["accuracy"] == 0.5
    nan = classification_metrics(np.full((2, 2), np.nan), np.array([0, 1]), float("nan"))
    assert nan == {"loss": None, "accuracy": None, "roc_auc": None, "f1": None}


def test_average_ranks_equal_scipy():
    from scipy.stats import rankdata

    from sweeplr.metrics import average_ranks

    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=300), 1)  # many ties
    np.testing.assert_array_equal(average_ranks(values), rankdata(values))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_metrics_of_many_models_are_each_models_metrics(n_classes):
    """The rows version gives, model by model, exactly what the one-model version gives: ties,
    a diverged model and a split with one class included."""
    from sweeplr.metrics import classification_metrics_rows

    rng = np.random.default_rng(n_classes)
    k, n = 7, 60
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(k, n, n_classes))
    logits[:, :15] = np.round(logits[:, :15])  # ties within each model's scores
    proba = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    proba[3] = np.nan  # a diverged model
    losses = [0.1 * i for i in range(k)]
    losses[3] = float("nan")
    for labels in (y, np.ones(n, dtype=np.int64)):  # the second: one class only
        rows = classification_metrics_rows(proba, labels, losses)
        for i in range(k):
            assert rows[i] == classification_metrics(proba[i], labels, losses[i])
    assert (
        classification_metrics_rows(proba[:, :0], y[:0], losses)
        == [classification_metrics(proba[0, :0], y[:0], 0.0)] * k
    )


def test_average_ranks_of_rows_equal_each_rows_ranks():
    from sweeplr.metrics import average_ranks, average_ranks_rows

    rng = np.random.default_rng(1)
    values = np.round(rng.normal(size=(5, 40)), 1)
    expected = np.stack([average_ranks(row) for row in values])
    np.testing.assert_array_equal(average_ranks_rows(values), expected)
