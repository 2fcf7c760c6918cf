import numpy as np
import pandas as pd
import pytest

from sweeplr.data import (
    Standardizer,
    load_breast_cancer,
    load_csv,
    load_iris,
    make_blobs,
    make_synthetic,
    scale_splits,
    split,
)
from sweeplr.errors import SweeplrError


def test_blobs_are_linearly_separable_with_named_classes():
    table = make_blobs()
    assert table.X.shape == (1000, 2) and table.X.dtype == np.float32
    assert table.class_names == ("red", "blue")
    assert table.feature_names == ("x1", "x2")
    # The separating line x1 + x2 = 0 splits the two groups (centres at (2,2) and (-2,-2)).
    predicted_blue = (table.X.sum(axis=1) < 0).astype(int)
    assert (predicted_blue == table.y).mean() > 0.99


def test_split_matches_the_tutorial_then_carves_validation():
    table = make_blobs()
    splits = split(table, test_size=0.33, val_size=0.2, random_state=42)
    assert len(splits.y_test) == 330
    assert len(splits.y_train) + len(splits.y_val) == 670
    assert len(splits.y_val) == 134
    # The test part is exactly the tutorial's: train_test_split(test_size=0.33, random_state=42).
    from sklearn.model_selection import train_test_split

    _, X_test, _, _ = train_test_split(table.X, table.y, test_size=0.33, random_state=42)
    np.testing.assert_array_equal(splits.X_test, X_test)


def test_no_validation_part_when_val_size_is_zero():
    splits = split(make_blobs(), val_size=0.0)
    assert len(splits.y_train) == 670 and len(splits.y_val) == 0


def test_standardizer_uses_training_statistics_only():
    splits = split(make_blobs())
    scaled, scaler = scale_splits(splits, standardize=True)
    np.testing.assert_allclose(scaled.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.X_train.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(scaler.mean, splits.X_train.mean(axis=0), rtol=1e-5)
    assert abs(scaled.X_test.mean()) > 1e-4  # test data is not re-centred on itself


def test_constant_feature_is_not_divided_by_zero():
    X = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], np.float32)
    scaler = Standardizer.fit(X)
    assert np.isfinite(scaler.transform(X)).all()


def test_bundled_datasets():
    bc = load_breast_cancer()
    assert bc.X.shape == (569, 30) and bc.class_names == ("malignant", "benign")
    iris = load_iris()
    assert iris.n_classes == 3 and iris.class_names[0] == "setosa"
    syn = make_synthetic(n_samples=200, n_features=5, n_informative=3, n_classes=3)
    assert syn.X.shape == (200, 5) and syn.n_classes == 3


def test_csv_with_string_classes(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(
        {"a": [1, 2, 3, 4], "b": [0.5, 0.1, 0.2, 0.3], "label": ["no", "yes", "no", "yes"]}
    ).to_csv(path, index=False)
    table = load_csv(path, "label")
    assert table.class_names == ("no", "yes")
    assert table.feature_names == ("a", "b")
    np.testing.assert_array_equal(table.y, [0, 1, 0, 1])


def test_parquet_and_feature_subset(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "y": [0, 1]}).to_parquet(path)
    assert load_csv(path, "y", features=["b"]).feature_names == ("b",)


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        ({"a": [1, 2], "y": [0, 1]}, {"target": "label"}, "dataset.target=label is not a column"),
        ({"a": [1, "x"], "y": [0, 1]}, {"target": "y"}, "non-numeric value 'x'"),
        ({"a": [1.0, None, 3.0], "y": [0, 1, 0]}, {"target": "y"}, "missing value in column 'a'"),
        ({"a": [1, 2, 3], "y": [1, 1, 1]}, {"target": "y"}, "single class"),
        ({"a": [1, 2], "y": [0, 1]}, {"target": "y", "features": ["zz"]}, "'zz'"),
    ],
)
def test_csv_mistakes_get_one_line_errors(tmp_path, frame, kwargs, message):
    path = tmp_path / "d.csv"
    pd.DataFrame(frame).to_csv(path, index=False)
    with pytest.raises(SweeplrError, match=message) as info:
        load_csv(path, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_rows_can_be_dropped_explicitly(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "y": [0, 1, 0, 1]}).to_csv(path, index=False)
    table = load_csv(path, "y", missing="drop")
    assert len(table.y) == 3


def test_missing_file(tmp_path):
    with pytest.raises(SweeplrError, match="does not exist"):
        load_csv(tmp_path / "nope.csv", "y")


def test_too_few_rows_for_the_split():
    tiny = make_blobs(n_samples=4)
    with pytest.raises(SweeplrError, match="too few"):
        split(tiny, test_size=0.33, val_size=0.2)


def test_blobs_and_split_are_scikit_learns_numbers():
    from sklearn.datasets import make_blobs as sk_make_blobs

    from sweeplr.data import BLOB_CENTERS, shuffle_split

    for n, std, seed in ((1000, 1.0, 0), (7, 2.5, 3)):
        X, y = sk_make_blobs(n_samples=n, centers=BLOB_CENTERS, cluster_std=std, random_state=seed)
        table = make_blobs(n, std, seed)
        np.testing.assert_array_equal(table.X, X.astype(np.float32))
        np.testing.assert_array_equal(table.y, y)
    from sklearn.model_selection import train_test_split

    for n, size, seed in ((1000, 0.33, 42), (670, 0.2, 42), (11, 0.5, 7)):
        index = np.arange(n)
        sk_train, sk_test = train_test_split(index, test_size=size, random_state=seed)
        train, test = shuffle_split(n, size, seed)
        np.testing.assert_array_equal(train, sk_train)
        np.testing.assert_array_equal(test, sk_test)


@pytest.mark.parametrize(
    ("features", "weight", "message"),
    [
        (["a", "y"], None, r"^dataset.features=\[a,y\] names the target column 'y'; allowed: "),
        (["a", "a"], None, r"^dataset.features=\[a,a\] names 'a' twice; allowed: each column once"),
        (["a", "w"], "w", r"^dataset.features=\[a,w\] names the weight column 'w'; allowed: "),
    ],
)
def test_a_feature_list_naming_the_target_weight_or_a_column_twice_is_one_line(
    tmp_path, features, weight, message
):
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "w": [1.0, 1.0, 1.0], "y": [0, 1, 0]}).to_csv(path)
    with pytest.raises(SweeplrError, match=message):
        load_csv(path, "y", features=features, weight=weight)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e39"])  # 1e39: finite, but not in float32
def test_a_feature_cell_that_is_not_a_finite_float32_is_named(tmp_path, cell):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b,y\n1,2,0\n3,{cell},1\n5,6,0\n")
    with pytest.raises(SweeplrError) as error:
        load_csv(path, "y")
    shown = f"{float(cell):g}"
    assert f"column 'b' has value {shown} (row 1), not a finite float32;" in str(error.value)


def test_row_weights_that_are_0_on_every_training_row_are_one_line(tmp_path):
    n = 30
    blobs = make_blobs(n_samples=n)
    path = tmp_path / "d.csv"
    # Which rows the split holds out: read off a column of row numbers, split as a feature.
    frame = pd.DataFrame({"x1": blobs.X[:, 0], "x2": blobs.X[:, 1], "y": blobs.y, "m": range(n)})
    frame.to_csv(path, index=False)
    table = load_csv(path, "y", features=["x1", "x2", "m"])
    held = split(table, test_size=0.33, val_size=0.2)
    outside_training = set(held.X_val[:, 2]) | set(held.X_test[:, 2])
    frame["w"] = [1.0 if i in outside_training else 0.0 for i in range(n)]
    frame.to_csv(path, index=False)
    weighted = load_csv(path, "y", features=["x1", "x2"], weight="w")
    assert weighted.weight is not None and weighted.weight.any()  # some weight, none training
    with pytest.raises(SweeplrError, match=r"^dataset.weight=w is 0 on every training row"):
        split(weighted, test_size=0.33, val_size=0.2)
