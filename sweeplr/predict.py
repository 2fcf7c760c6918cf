"""Use a trained run on new data: ``sweeplr predict``. No Hydra.

A run's ``model.pt`` holds everything a prediction needs (weights, the training part's scaler,
class and feature names), so new data goes in as raw feature values, exactly as the data set
holds them, and comes out as class names: the user never repeats the scaling by hand.

torch and scikit-learn (through ``sweeplr.data``) are imported where they are used:
``sweeplr.plots`` imports this module, and a sweep's pictures and report should not wait
seconds for them. ``sweeplr predict`` itself is `sweeplr.cli.cmd_predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweeplr.errors import SweeplrError, first_line
from sweeplr.records import MODEL_FILE, load_model_payload
from sweeplr.results import load_sweep
from sweeplr.schema import COMPLETED, DIVERGED

if TYPE_CHECKING:
    from sweeplr.data import Standardizer
    from sweeplr.model import LogisticRegression


@dataclass(frozen=True)
class TrainedModel:
    """A run's model with what it needs to take raw features: the scaler and the names."""

    model: LogisticRegression
    scaler: Standardizer
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def features(
        self, X: np.ndarray | pd.DataFrame | Sequence[float], source: str = "input"
    ) -> np.ndarray:
        """Raw features as a float32 [n, F] matrix in the saved order; one-line errors otherwise.

        float32 because the model was trained on float32: the same arithmetic as in training
        gives the same probabilities, bit for bit. ``source`` names the input in error messages.
        """
        from sweeplr.data import numeric_features

        expected = f"{self.n_features} features ({', '.join(self.feature_names)})"
        if isinstance(X, pd.DataFrame):
            frame = X.rename(columns=str)
            columns = ", ".join(self.feature_names)
            extra = [c for c in frame.columns if c not in self.feature_names]
            if extra:
                raise SweeplrError(
                    f"{source}: unexpected column {extra[0]!r}; "
                    f"expected exactly the columns {columns}"
                )
            missing = [c for c in self.feature_names if c not in frame.columns]
            if missing:
                raise SweeplrError(
                    f"{source}: column {missing[0]!r} is missing; expected the columns {columns}"
                )
            matrix = numeric_features(frame, self.feature_names, source)
        else:
            try:
                matrix = np.asarray(X, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise SweeplrError(
                    f"{source} is not numeric ({first_line(exc)}); expected {expected}"
                ) from exc
            if matrix.ndim == 1:
                matrix = matrix[None, :]
            if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
                got = matrix.shape[-1] if matrix.ndim == 2 else f"shape {matrix.shape}"
                raise SweeplrError(f"{source}: expected {expected}, got {got}")
        # Row-major like the training data: torch's matmul sums in another order for a
        # column-major input (what a DataFrame gives), which changes the last bits.
        matrix = np.ascontiguousarray(matrix)
        bad = ~np.isfinite(matrix)
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            value = matrix[row, col]
            found = "a missing value" if np.isnan(value) else f"value {value}"
            raise SweeplrError(
                f"{source}: feature {self.feature_names[col]!r} has {found} (row {row}); "
                "expected a finite number in every cell"
            )
        return matrix

    def predict_proba(self, X: np.ndarray | pd.DataFrame | Sequence[float]) -> np.ndarray:
        """Class probabilities [n, C] (columns in ``class_names`` order) for raw features."""
        import torch

        scaled = self.scaler.transform(self.features(X))
        with torch.no_grad():
            return self.model.predict_proba(torch.from_numpy(scaled)).numpy()

    def predict(self, X: np.ndarray | pd.DataFrame | Sequence[float]) -> np.ndarray:
        """The most probable class name of each row."""
        return np.asarray(self.class_names, dtype=object)[self.predict_proba(X).argmax(axis=1)]


def load_run(run_dir: str | Path) -> TrainedModel:
    """The model of a finished run, ready for raw features; refuses a diverged run's NaN weights."""

    return model_from_payload(load_model_payload(run_dir), Path(run_dir))


def model_from_payload(payload: dict[str, Any], run_dir: Path) -> TrainedModel:
    """:func:`load_run` on an already loaded ``model.pt`` payload (``plot_run`` reads it once);
    ``run_dir`` names the run in error messages."""
    import torch

    from sweeplr.data import Standardizer
    from sweeplr.model import LogisticRegression

    if payload.get("status") == DIVERGED:
        raise SweeplrError(
            f"{run_dir} holds a diverged run (its weights are not finite); "
            "allowed: a completed run, e.g. the best run of a sweep (--best)"
        )
    n_features, n_classes = _checked_shapes(payload, run_dir)
    model = LogisticRegression(n_features, n_classes)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise SweeplrError(f"{run_dir}/{MODEL_FILE} has non-finite weights; allowed: a usable run")
    return TrainedModel(
        model=model,
        scaler=Standardizer(payload["scaler_mean"].numpy(), payload["scaler_scale"].numpy()),
        class_names=tuple(payload["class_names"]),
        feature_names=tuple(payload["feature_names"]),
    )


# A model.pt is checked before any of its numbers sizes an allocation: a damaged or hostile
# file that loads safely (weights_only) must not ask for gigabytes.
MAX_FEATURES = 1_000_000
MAX_CLASSES = 100_000


def _checked_shapes(payload: Any, run_dir: Path) -> tuple[int, int]:
    """``(n_features, n_classes)`` of a payload whose parts agree, or a one-line error."""
    import torch

    path = f"{run_dir}/{MODEL_FILE}"

    def bad(why: str) -> SweeplrError:
        return SweeplrError(f"{path} is not a sweeplr model ({why}); allowed: a run's model.pt")

    if not isinstance(payload, dict):
        raise bad("not a dict")
    keys = ("state_dict", "n_features", "n_classes", "class_names", "feature_names")
    missing = [k for k in (*keys, "scaler_mean", "scaler_scale") if k not in payload]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    n_features, n_classes = payload["n_features"], payload["n_classes"]
    if not (isinstance(n_features, int) and 1 <= n_features <= MAX_FEATURES):
        raise bad(f"n_features={n_features!r}")
    if not (isinstance(n_classes, int) and 2 <= n_classes <= MAX_CLASSES):
        raise bad(f"n_classes={n_classes!r}")
    out = 1 if n_classes == 2 else n_classes
    shapes = {"linear.weight": (out, n_features), "linear.bias": (out,)}
    state = payload["state_dict"]
    if not isinstance(state, dict) or set(state) != set(shapes):
        raise bad("its state_dict is not a linear layer's")
    for name, shape in shapes.items():
        if not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != shape:
            raise bad(f"{name} is not {shape}")
    for name in ("scaler_mean", "scaler_scale"):
        if not isinstance(payload[name], torch.Tensor) or payload[name].shape != (n_features,):
            raise bad(f"{name} is not ({n_features},)")
    for name, size in (("class_names", n_classes), ("feature_names", n_features)):
        if not isinstance(payload[name], list | tuple) or len(payload[name]) != size:
            raise bad(f"{name} does not hold {size} names")
    return n_features, n_classes


def best_run_dir(sweep_dir: str | Path) -> Path:
    """The sweep's best completed run: the top row of :func:`sweeplr.results.load_sweep`.

    That table ranks completed runs first (pruned and diverged ones are not comparable), so
    a top row that is not completed means no run of the sweep completed.
    """
    top = load_sweep(sweep_dir).iloc[0]
    if top["status"] != COMPLETED or pd.isna(top["objective"]):
        raise SweeplrError(
            f"{sweep_dir} holds no completed run with an objective value; "
            "allowed: a sweep directory with at least one completed run"
        )
    return Path(top["run_dir"])


def parse_point(values: Sequence[str], trained: TrainedModel) -> np.ndarray:
    expected = f"{trained.n_features} numbers ({', '.join(trained.feature_names)})"
    if len(values) != trained.n_features:
        raise SweeplrError(
            f"expected {trained.n_features} features ({', '.join(trained.feature_names)}), "
            f"got {len(values)}"
        )
    point = []
    for value in values:
        try:
            point.append(float(value))
        except ValueError as exc:
            raise SweeplrError(f"value {value!r} is not a number; expected {expected}") from exc
    return np.asarray(point)


def predictions_frame(
    trained: TrainedModel, frame: pd.DataFrame, source: str = "input"
) -> pd.DataFrame:
    """The input rows with their predicted class and one ``p_<class>`` column per class."""
    proba = trained.predict_proba(trained.features(frame, source))
    out = frame.copy()
    out["predicted"] = np.asarray(trained.class_names, dtype=object)[proba.argmax(axis=1)]
    for k, name in enumerate(trained.class_names):
        out[f"p_{name}"] = proba[:, k]
    return out
