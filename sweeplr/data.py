"""Data sets, splits and scaling. Plain numpy/scikit-learn: no Hydra, no torch.

Every loader returns a :class:`Table` (features as float32, labels as int codes 0..C-1 and the
class names those codes stand for); :func:`split` carves train/val/test the tutorial's way and
:class:`Standardizer` scales with statistics of the training part only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeplr.errors import SweeplrError, first_line
from sweeplr.schema import DATASETS

if TYPE_CHECKING:
    import pandas as pd

# scikit-learn and pandas are imported where they are needed: importing them is a third of a
# run's start-up (bench/README.md), and the tutorial's data and split need neither (see
# make_blobs and shuffle_split, which reproduce scikit-learn's numbers exactly; tests compare
# them).

# The tutorial's two groups; red sits up-right so its example point (1, 1) is red.
BLOB_CENTERS = np.array([[2.0, 2.0], [-2.0, -2.0]])
BLOB_CLASS_NAMES = ("red", "blue")


@dataclass(frozen=True)
class Table:
    """A labelled data set: ``X`` [n, features] float32, ``y`` [n] int64 codes into ``class_names``."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    weight: np.ndarray | None = None  # [n] float32 row weights in the loss (dataset.weight)
    weight_column: str | None = None  # the column ``weight`` was read from

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Splits:
    """Train, validation (possibly empty) and test parts of one :class:`Table`."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    w_train: np.ndarray | None = None  # the training rows' weights (dataset.weight), if any

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def _table(
    X: Any,
    y: np.ndarray,
    feature_names: Sequence[str],
    class_names: Sequence[Any],
    weight: np.ndarray | None = None,
    weight_column: str | None = None,
) -> Table:
    return Table(
        X=np.ascontiguousarray(X, dtype=np.float32),
        y=np.asarray(y, dtype=np.int64),
        feature_names=tuple(str(n) for n in feature_names),
        class_names=tuple(str(n) for n in class_names),
        weight=None if weight is None else np.asarray(weight, dtype=np.float32),
        weight_column=weight_column,
    )


def make_blobs(n_samples: int = 1000, cluster_std: float = 1.0, generator_seed: int = 0) -> Table:
    """The tutorial's linearly separable 2-D data: class 0 ``red``, class 1 ``blue``.

    The same numbers as ``sklearn.datasets.make_blobs(n_samples, centers=BLOB_CENTERS,
    cluster_std, random_state=generator_seed)``, drawn in the same order.
    """
    if n_samples < 2:
        raise SweeplrError(f"dataset.n_samples={n_samples} is too small; allowed: >= 2")
    rng = np.random.RandomState(generator_seed)
    n_centers = len(BLOB_CENTERS)
    per_center = [n_samples // n_centers + (i < n_samples % n_centers) for i in range(n_centers)]
    X = np.concatenate(
        [
            rng.normal(loc=center, scale=cluster_std, size=(n, BLOB_CENTERS.shape[1]))
            for center, n in zip(BLOB_CENTERS, per_center, strict=True)
        ]
    )
    y = np.repeat(np.arange(n_centers), per_center)
    order = np.arange(n_samples)
    rng.shuffle(order)
    return _table(X[order], y[order], ("x1", "x2"), BLOB_CLASS_NAMES)


def load_breast_cancer() -> Table:
    """scikit-learn's bundled copy: real data, no download."""
    from sklearn import datasets as skdatasets

    bunch = skdatasets.load_breast_cancer()
    return _table(bunch.data, bunch.target, bunch.feature_names, bunch.target_names)


def load_iris() -> Table:
    """scikit-learn's bundled iris: three classes."""
    from sklearn import datasets as skdatasets

    bunch = skdatasets.load_iris()
    return _table(bunch.data, bunch.target, bunch.feature_names, bunch.target_names)


def make_synthetic(
    n_samples: int = 10_000,
    n_features: int = 20,
    n_informative: int = 10,
    n_classes: int = 2,
    class_sep: float = 1.0,
    generator_seed: int = 0,
) -> Table:
    """``make_classification`` data of any size, for scale tests."""
    if n_informative > n_features:
        raise SweeplrError(
            f"dataset.n_informative={n_informative} exceeds dataset.n_features={n_features}; "
            "allowed: n_informative <= n_features"
        )
    if n_classes < 2:
        raise SweeplrError(f"dataset.n_classes={n_classes} is invalid; allowed: >= 2")
    for name, value in (("n_samples", n_samples), ("n_features", n_features)):
        if value < 1:
            raise SweeplrError(f"dataset.{name}={value} is invalid; allowed: an integer >= 1")
    from sklearn import datasets as skdatasets

    try:
        X, y = skdatasets.make_classification(
            n_samples=n_samples,
            n_features=n_features,
            n_informative=n_informative,
            n_redundant=0,
            n_classes=n_classes,
            class_sep=class_sep,
            random_state=generator_seed,
        )
    except ValueError as exc:  # scikit-learn's own checks: one line, named as typed here
        raise SweeplrError(f"dataset=synthetic cannot be generated: {first_line(exc)}") from None
    return _table(
        X, y, [f"f{i}" for i in range(n_features)], [f"class_{c}" for c in range(n_classes)]
    )


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension), with one-line errors for the usual mistakes."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise SweeplrError(f"dataset.path={path} {problem}; allowed: a CSV or Parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, ImportError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SweeplrError(f"dataset.path={path} could not be read: {first_line(exc)}") from exc


def numeric_features(frame: pd.DataFrame, columns: Sequence[str], source: str) -> np.ndarray:
    """Columns of ``frame`` as a float32 matrix, or a one-line error naming the first bad cell."""
    import pandas as pd

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SweeplrError(
            f"{source}: column {missing[0]!r} not found; available: {', '.join(map(str, frame.columns))}"
        )
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise SweeplrError(
                f"{source}: column {column!r} has non-numeric value {frame[column].iloc[row]!r} "
                f"(row {row}); allowed: numbers only"
            )
    values = frame[list(columns)].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    # inf, or a number past float32's range (inf once cast), makes every loss inf or NaN
    infinite = np.abs(values) > np.finfo(np.float32).max  # (NaN is not: a missing cell)
    if infinite.any():
        row, col = (int(i[0]) for i in np.nonzero(infinite))
        raise SweeplrError(
            f"{source}: column {columns[col]!r} has value {values[row, col]:g} (row {row}), "
            "not a finite float32; allowed: finite numbers below 3.4e38 in size"
        )
    return values.astype(np.float32)


def load_csv(
    path: str | Path,
    target: str,
    features: Sequence[str] | None = None,
    missing: str = "error",
    weight: str | None = None,
) -> Table:
    """A user's table: ``target`` names the label column (any values, strings allowed);
    ``weight`` a column of row weights (>= 0, not all 0), which is then no feature."""
    frame = read_frame(path)
    source = f"dataset.path={path}"
    if target not in frame.columns:
        raise SweeplrError(
            f"dataset.target={target} is not a column of {path}; "
            f"available: {', '.join(map(str, frame.columns))}"
        )
    if weight is not None and weight not in frame.columns:
        raise SweeplrError(
            f"dataset.weight={weight} is not a column of {path}; "
            f"available: {', '.join(map(str, frame.columns))}"
        )
    if weight is not None and weight == target:
        raise SweeplrError(f"dataset.weight={weight} is the target column; allowed: another column")
    if features:
        _check_feature_columns(list(features), target, weight)
    feature_columns = (
        list(features) if features else [c for c in frame.columns if c not in (target, weight)]
    )
    if not feature_columns:
        raise SweeplrError(f"{source} has no feature columns besides the target {target!r}")
    absent = [c for c in feature_columns if c not in frame.columns]
    if absent:
        raise SweeplrError(
            f"dataset.features names {absent[0]!r}, which is not a column of {path}; "
            f"available: {', '.join(map(str, frame.columns))}"
        )
    used = frame[[*feature_columns, target, *([weight] if weight is not None else [])]]
    has_missing = used.isna().any(axis=1)
    if has_missing.any():
        if missing != "drop":
            row = int(np.flatnonzero(has_missing.to_numpy())[0])
            column = str(used.columns[used.iloc[row].isna().to_numpy()][0])
            raise SweeplrError(
                f"{source}: missing value in column {column!r} (row {row}); "
                "allowed: complete rows, or dataset.missing=drop to drop incomplete rows"
            )
        used = used.loc[~has_missing]
    X = numeric_features(used, feature_columns, source)
    row_weight = None
    if weight is not None:
        row_weight = numeric_features(used, [weight], source)[:, 0]
        bad = ~np.isfinite(row_weight) | (row_weight < 0)
        if bad.any() or not row_weight.any():
            row = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            raise SweeplrError(
                f"dataset.weight={weight} has "
                + (f"value {row_weight[row]:g} (row {row})" if bad.any() else "only zeros")
                + "; allowed: finite weights >= 0, not all 0"
            )
    labels = used[target]
    class_values = sorted(labels.unique(), key=lambda v: (str(type(v)), v))
    if len(class_values) < 2:
        raise SweeplrError(
            f"dataset.target={target} has a single class {class_values[0]!r} "
            "in the data; allowed: at least 2 classes"
            if class_values
            else f"{source} has no rows"
        )
    codes = {value: code for code, value in enumerate(class_values)}
    y = labels.map(codes).to_numpy(dtype=np.int64)
    return _table(X, y, feature_columns, class_values, row_weight, weight)


def _check_feature_columns(features: list[str], target: str, weight: str | None) -> None:
    """Each feature once, and neither the label nor the row weights among them."""
    shown = f"dataset.features=[{','.join(map(str, features))}]"
    for role, column in (("target", target), ("weight", weight)):
        if column is not None and column in features:
            raise SweeplrError(
                f"{shown} names the {role} column {column!r}; "
                f"allowed: columns other than dataset.{role}"
            )
    repeated = next((c for i, c in enumerate(features) if c in features[:i]), None)
    if repeated is not None:
        raise SweeplrError(f"{shown} names {repeated!r} twice; allowed: each column once")


def load_dataset(spec: Mapping[str, Any]) -> Table:
    """Build the :class:`Table` a dataset config's values describe (``name`` picks the loader)."""
    name = spec["name"]
    if name == "blobs":
        return make_blobs(spec["n_samples"], spec["cluster_std"], spec["generator_seed"])
    if name == "breast_cancer":
        return load_breast_cancer()
    if name == "iris":
        return load_iris()
    if name == "synthetic":
        return make_synthetic(
            spec["n_samples"],
            spec["n_features"],
            spec["n_informative"],
            spec["n_classes"],
            spec["class_sep"],
            spec["generator_seed"],
        )
    if name == "csv":
        features = list(spec["features"]) if spec["features"] is not None else None
        return load_csv(spec["path"], spec["target"], features, spec["missing"], spec.get("weight"))
    raise SweeplrError(f"dataset.name={name} is unknown; allowed: {', '.join(DATASETS)}")


def split(
    table: Table,
    test_size: float = 0.33,
    val_size: float = 0.2,
    random_state: int = 42,
    stratify: bool = False,
) -> Splits:
    """Split as the tutorial does (``train_test_split(test_size=0.33, random_state=42)``), then
    carve ``val_size`` of the training part off as validation data for tuning.
    """
    n = len(table.y)
    n_test = math.ceil(test_size * n)
    n_rest = n - n_test
    n_val = math.ceil(val_size * n_rest) if val_size > 0 else 0
    if n_test < 1 or n_rest - n_val < 2 or (val_size > 0 and n_val < 1) or n_val >= n_rest:
        raise SweeplrError(
            f"the data set has {n} rows, too few for test_size={test_size} and "
            f"val_size={val_size}; allowed: enough rows for >= 2 train, >= 1 val and >= 1 test row"
        )
    # Row weights travel with their rows: as X's last column through the splits.
    X = table.X if table.weight is None else np.column_stack([table.X, table.weight])
    try:
        X_rest, X_test, y_rest, y_test = _train_test_split(
            X, table.y, test_size, random_state, stratify
        )
        if n_val:
            X_train, X_val, y_train, y_val = _train_test_split(
                X_rest, y_rest, val_size, random_state, stratify
            )
        else:
            X_train, y_train = X_rest, y_rest
            X_val, y_val = X_rest[:0], y_rest[:0]
    except ValueError as exc:  # stratify with too few members of a class
        raise SweeplrError(f"cannot split the data set: {first_line(exc)}") from exc
    if len(np.unique(y_train)) < 2:
        raise SweeplrError(
            "the training part holds a single class; allowed: data with >= 2 classes in training"
        )
    w_train = None
    if table.weight is not None:
        w_train = np.ascontiguousarray(X_train[:, -1])
        X_train, X_val, X_test = (np.ascontiguousarray(x[:, :-1]) for x in (X_train, X_val, X_test))
        if not w_train.any():  # the loss would be 0 everywhere: nothing to learn from
            raise SweeplrError(
                f"dataset.weight={table.weight_column} is 0 on every training row "
                f"({len(w_train)} rows; its weight is on validation or test rows only); "
                "allowed: a weight > 0 on some training row"
            )
    return Splits(
        X_train,
        y_train,
        X_val,
        y_val,
        X_test,
        y_test,
        table.feature_names,
        table.class_names,
        w_train,
    )


def shuffle_split(n: int, test_size: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``sklearn.model_selection.train_test_split(test_size=...,
    random_state=...)`` without stratification, index for index."""
    n_test = math.ceil(test_size * n)
    permutation = np.random.RandomState(random_state).permutation(n)
    return permutation[n_test:], permutation[:n_test]


def _train_test_split(
    X: np.ndarray, y: np.ndarray, test_size: float, random_state: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if stratify:
        from sklearn.model_selection import train_test_split

        return train_test_split(X, y, test_size=test_size, random_state=random_state, stratify=y)
    train, test = shuffle_split(len(y), test_size, random_state)
    return X[train], X[test], y[train], y[test]


@dataclass(frozen=True)
class Standardizer:
    """Per-feature ``(x - mean) / scale``, fit on training data only (no test leakage)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        mean = X.mean(axis=0, dtype=np.float64)
        scale = X.std(axis=0, dtype=np.float64)
        scale[scale == 0] = 1.0  # a constant feature stays constant instead of dividing by zero
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    @classmethod
    def identity(cls, n_features: int) -> Standardizer:
        return cls(np.zeros(n_features, np.float32), np.ones(n_features, np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(np.float32, copy=False)


def scale_splits(splits: Splits, standardize: bool) -> tuple[Splits, Standardizer]:
    """Apply a :class:`Standardizer` fit on ``splits.X_train`` (identity if not ``standardize``)."""
    scaler = (
        Standardizer.fit(splits.X_train)
        if standardize
        else Standardizer.identity(splits.n_features)
    )
    if not standardize:
        return splits, scaler
    return (
        Splits(
            scaler.transform(splits.X_train),
            splits.y_train,
            scaler.transform(splits.X_val),
            splits.y_val,
            scaler.transform(splits.X_test),
            splits.y_test,
            splits.feature_names,
            splits.class_names,
            splits.w_train,
        ),
        scaler,
    )


def class_weights(
    weights: str | Mapping[str, float] | None, y: np.ndarray, class_names: Sequence[str]
) -> np.ndarray | None:
    """Each class's weight in the loss, by class code; None when every class weighs 1.

    ``balanced`` is scikit-learn's ``n / (n_classes * count(class))`` on ``y`` (the training
    part); a mapping names classes as the data does (``red``, ``blue``; a CSV's target values).
    """
    if weights is None:
        return None
    n_classes = len(class_names)
    if weights == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        counts[counts == 0] = np.inf  # (a class absent from training gets weight 0, unused)
        return (len(y) / (n_classes * counts)).astype(np.float32)
    if isinstance(weights, str):
        raise SweeplrError(
            f"class_weight={weights} is invalid; allowed: null, balanced, or {{class name: weight}}"
        )
    unknown = [name for name in weights if name not in class_names]
    if unknown:
        raise SweeplrError(
            f"class_weight names class {unknown[0]!r}, which the data does not have; "
            f"allowed: {', '.join(class_names)}"
        )
    return np.asarray([weights.get(name, 1.0) for name in class_names], dtype=np.float32)


def stratified_folds(y: np.ndarray, n_folds: int) -> np.ndarray:
    """Each row's held-out fold, ``[n]`` ints in ``0..n_folds-1``: the folds of scikit-learn's
    ``StratifiedKFold(n_folds)`` (no shuffle, as ``LogisticRegressionCV(cv=5)`` uses), row for
    row, without importing scikit-learn (a second and a half of start-up).

    Raises a one-line error when a class has fewer rows than folds.
    """
    _, first_index, inverse = np.unique(y, return_index=True, return_inverse=True)
    # classes in order of first appearance, as scikit-learn encodes them
    _, class_order = np.unique(first_index, return_inverse=True)
    encoded = class_order[inverse]
    counts = np.bincount(encoded)
    if counts.min() < n_folds:
        raise SweeplrError(
            f"cv={n_folds} is more folds than the training part's smallest class has rows "
            f"({counts.min()}); allowed: 2 <= cv <= {counts.min()}"
        )
    ordered = np.sort(encoded)
    allocation = np.asarray(
        [np.bincount(ordered[i::n_folds], minlength=len(counts)) for i in range(n_folds)]
    )
    folds = np.empty(len(y), dtype=np.int64)
    for code in range(len(counts)):
        folds[encoded == code] = np.arange(n_folds).repeat(allocation[:, code])
    return folds
