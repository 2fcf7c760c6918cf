"""Pictures of runs, and the style every sweeplr picture shares: ``sweeplr plot RUN_DIR``.

A run gets its loss curve and, for 2-feature data, its decision boundary drawn over the raw
training and test points (the tutorial's pictures); the lr finder its loss by lr. A sweep's
pictures are `sweeplr.sweep_plots`', an Optuna study's `sweeplr.study_plots`'; they draw in
the style set here. No Hydra, no display. Every PNG is rendered in memory and written
atomically, so a reader (the HTML report, a browser) never sees half a file. Only ``Figure``
is used, never pyplot: no backend is chosen, and matplotlib's settings change only while a
figure is built (`slide_fonts`), then are restored. As in ``sweeplr.predict``, torch and
scikit-learn are imported only where they are used.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from sweeplr.errors import SweeplrError
from sweeplr.predict import TrainedModel, model_from_payload
from sweeplr.records import HISTORY_FILE, atomic_write, load_model_payload, read_metrics
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

DPI = 100
# Text sized for a slide: a picture is shown at about its pixel size (its inches x DPI), beside
# others, so matplotlib's 10-point default reads small. Set while a figure is built (the text
# of an artist takes its size when made), never globally.
SLIDE_FONTS: dict[RcKeyType, Any] = {
    "font.size": 13,
    "axes.titlesize": 15,
    "axes.labelsize": 14,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 12,
    "figure.titlesize": 15,
}
LOG_SCALE_DECADES = 1  # values spanning more than this many powers of ten are drawn log-y
# Loss against epoch: the first epochs' loss is often several times the end's, and a linear
# axis then spends the picture on that spike and flattens the part worth reading.
LOSS_CURVE_DECADES = 0.5
MESH_POINTS = 250  # per axis: fine enough for smooth region edges, cheap to predict
# How each outcome is drawn wherever runs or trials are points (sweep scatter, Optuna pictures).
MARKERS = {COMPLETED: "o", PRUNED: "v", DIVERGED: "X"}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def slide_fonts(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Build a figure with `SLIDE_FONTS`."""

    @functools.wraps(draw)
    def drawn(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.rc_context(SLIDE_FONTS):
            return draw(*args, **kwargs)

    return drawn


def below(fig: Figure, handles: Sequence[Any], columns: int = 3) -> None:
    """The figure's legend under its axes, where it covers no data."""
    labels = [h.get_label() for h in handles]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(handles)))


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render to PNG in memory, then write atomically; no software/URL metadata in the file."""

    buffer = io.BytesIO()
    # bbox "tight": rotated axis names may reach past the edges; cut, they would be unreadable.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")

    def write(handle: BinaryIO) -> None:
        handle.write(buffer.getvalue())

    return atomic_write(path, write)


class _PlainLogFormatter(mticker.LogFormatter):
    """Labels the ticks matplotlib's log formatter would, as plain numbers."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_if_wide(ax: Axes, values: Sequence[np.ndarray], decades: float = LOG_SCALE_DECADES) -> None:
    """Log-y when the positive values span more than ``decades`` powers of ten."""
    finite = np.concatenate([np.empty(0), *(np.asarray(v, dtype=float).ravel() for v in values)])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size and finite.max() / finite.min() > 10**decades:
        ax.set_yscale("log")
        # Plain numbers (0.04, not 4 x 10^-2): a loss axis is read, not admired.
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        # Within two decades, every minor tick labelled: the end of a loss curve is readable.
        ax.yaxis.set_minor_locator(mticker.LogLocator(subs=(1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_minor_formatter(
            _PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 2))
        )


def loss_name(n_classes: int | None) -> str:
    """What the loss is, for axis labels: the model's loss depends on the number of classes."""
    if n_classes is None:
        return "loss"
    return "binary cross-entropy" if n_classes == 2 else "cross-entropy"


def dataset_title(dataset: Any) -> str:
    """A data set's name for titles: a CSV/Parquet file by its file name, not "csv"."""
    path = getattr(dataset, "path", None) if dataset.name == "csv" else None
    return Path(str(path)).name if path else str(dataset.name)


def short_label(value: Any) -> str:
    """A value as an axis or legend label: floats to 4 significant figures."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_loss(
    history: str | Path | pd.DataFrame,
    out_path: str | Path,
    title: str = "",
    loss: str = "loss",
    step: str = "epoch",
    best_epoch: int | None = None,
    kept: bool = True,
) -> Path:
    """``loss.png``: `loss_figure` of a run's history (``history.csv`` or its frame)."""
    frame = history if isinstance(history, pd.DataFrame) else pd.read_csv(history)
    return save_figure(loss_figure(frame, title, loss, step, best_epoch, kept), out_path)


@slide_fonts
def loss_figure(
    frame: pd.DataFrame,
    title: str = "",
    loss: str = "loss",
    step: str = "epoch",
    best_epoch: int | None = None,
    kept: bool = True,
) -> Figure:
    """Training and (when the run had a validation split) validation loss against epoch, and
    the lr on a second axis when a schedule moved it. ``loss`` names the loss on the y axis,
    ``step`` what the x axis counts (L-BFGS counts iterations). ``best_epoch``: early
    stopping's best epoch, marked, and said to be the one whose weights the run ``kept``."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    curves = [("train_loss", "train"), ("val_loss", "val")]
    drawn = [c for c, _ in curves if c in frame and frame[c].notna().any()]
    lines = []
    for column, label in curves:
        if column in drawn:
            lines += ax.plot(frame["epoch"], frame[column], label=f"{loss} ({label})")
    log_if_wide(ax, [frame[c].to_numpy() for c in drawn], LOSS_CURVE_DECADES)
    if best_epoch is not None:
        what = f"early stopping's best {step} {best_epoch}" + (", weights kept" if kept else "")
        lines.append(ax.axvline(best_epoch, color="k", linestyle=":", linewidth=1.5, label=what))
        at = frame[frame["epoch"] == best_epoch]
        if drawn and not at.empty:  # the watched curve's value there
            ax.plot(best_epoch, at[drawn[-1]].iloc[0], "o", color="k", markersize=6, zorder=3)
    ax.set_xlabel(step)
    ax.set_ylabel(loss)
    ax.set_title(title or loss)
    ax.grid(alpha=0.3, which="both")
    lr = frame["lr"].dropna() if "lr" in frame else pd.Series(dtype=float)
    if lr.nunique() > 1:
        lr_ax = ax.twinx()
        lines += lr_ax.plot(
            frame["epoch"], frame["lr"], color="0.45", linestyle="--", linewidth=1, label="lr"
        )
        lr_ax.set_ylabel("learning rate")
    if lines:
        below(fig, lines, columns=2)
    else:
        ax.text(0.5, 0.5, "no finite loss logged", ha="center", transform=ax.transAxes)
    return fig


def class_colors(class_names: Sequence[str]) -> list[Any]:
    """Each class's own name as its colour when all names are distinct colours ("red", "blue");
    otherwise a qualitative colormap. Only named colours count: "0" would be black in matplotlib.
    """
    named = [mcolors.CSS4_COLORS.get(n.lower()) for n in class_names]
    if None not in named and len(set(named)) == len(named):
        return named
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(len(class_names))]


def boundary_line(model: TrainedModel) -> tuple[np.ndarray, float]:
    """A binary model's boundary in RAW feature coordinates: ``a @ x + c = 0``.

    The model sees standardised x' = (x - mean) / scale, so its logit w @ x' + b equals
    a @ x + c with a = w / scale and c = b - sum(w * mean / scale). The second class
    (``class_names[1]``) is predicted exactly where a @ x + c > 0.
    """
    if len(model.class_names) != 2:
        raise SweeplrError(
            f"a boundary line needs 2 classes, the run has {len(model.class_names)}; "
            "allowed: binary data (plot_decision_boundary draws regions otherwise)"
        )
    w = model.model.linear.weight.detach().double().numpy()[0]
    b = float(model.model.linear.bias.detach().double()[0])
    mean = model.scaler.mean.astype(np.float64)
    scale = model.scaler.scale.astype(np.float64)
    return w / scale, b - float(np.sum(w * mean / scale))


def _extent(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners of the points' bounding box, padded by 5% (at least 0.5)."""
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.maximum(0.05 * (high - low), 0.5 * (high == low))
    return low - pad, high + pad


def _line_points(a: np.ndarray, c: float, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """Two points of a @ x + c = 0 spanning the box, solved for the steeper coordinate."""
    if not np.any(a):
        return None  # a constant model has no boundary
    if abs(a[1]) >= abs(a[0]):
        x1 = np.array([low[0], high[0]])
        return np.stack([x1, -(a[0] * x1 + c) / a[1]], axis=1)
    x2 = np.array([low[1], high[1]])
    return np.stack([-(a[1] * x2 + c) / a[0], x2], axis=1)


@slide_fonts
def plot_decision_boundary(
    model: TrainedModel,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    out_path: str | Path,
) -> Path:
    """Train and test points (raw features, coloured by class name) over the model's regions.

    Binary models also get their boundary line, computed in closed form by :func:`boundary_line`;
    multi-class models get region edges from a mesh of predictions.
    """
    if model.n_features != 2:
        raise SweeplrError(
            f"a decision boundary picture needs 2 features, the run has {model.n_features}"
        )
    names = model.class_names
    colors = class_colors(names)
    low, high = _extent(np.concatenate([X_train, X_test]))
    xx, yy = np.meshgrid(*(np.linspace(low[i], high[i], MESH_POINTS) for i in range(2)))
    proba = model.predict_proba(np.stack([xx.ravel(), yy.ravel()], axis=1))
    regions = proba.argmax(axis=1).reshape(xx.shape)
    levels = np.arange(len(names) + 1) - 0.5
    line = _line_points(*boundary_line(model), low, high) if len(names) == 2 else None

    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    panels = (("train", X_train, y_train), ("test", X_test, y_test))
    for ax, (label, X, y) in zip(axes, panels, strict=True):
        ax.contourf(xx, yy, regions, levels=levels, colors=colors, alpha=0.18)
        if len(names) > 2:  # edges where a class stops being the most probable one
            for k in range(len(names)):
                margin = proba[:, k] - np.delete(proba, k, axis=1).max(axis=1)
                ax.contour(
                    xx, yy, margin.reshape(xx.shape), levels=[0.0], colors="k", linewidths=0.8
                )
        elif line is not None:
            ax.plot(line[:, 0], line[:, 1], "k-", linewidth=1.2, label="boundary (p = 0.5)")
        for k, name in enumerate(names):
            points = X[y == k]
            ax.scatter(
                points[:, 0],
                points[:, 1],
                s=14,
                color=colors[k],
                label=name,
                edgecolors="k",
                linewidths=0.3,
            )
        accuracy = float(np.mean(model.predict(X) == np.asarray(names, dtype=object)[y]))
        ax.set_title(f"{label}: {len(y)} points, accuracy {accuracy:.4f}")
        ax.set_xlabel(model.feature_names[0])
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
    axes[0].set_ylabel(model.feature_names[1])
    axes[0].legend(loc="best")
    return save_figure(fig, out_path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """``loss.png`` and, for 2-feature data, ``decision_boundary.png`` in the run directory.

    The raw train/test points are re-created from the config saved in ``model.pt``; a data file
    that changed since training (a CSV edited in place) is refused rather than drawn wrongly.
    A diverged run gets the loss plot only: its weights are NaN.
    """
    from omegaconf import OmegaConf

    from sweeplr.data import Standardizer, load_dataset, split

    run_dir = Path(run_dir)
    payload = load_model_payload(run_dir)
    cfg = OmegaConf.create(payload["config"])
    status = payload["status"]
    schedule = OmegaConf.select(cfg, "scheduler.name", default="constant")
    lr = f"lr={cfg.lr:g}" + ("" if schedule == "constant" else f" ({schedule})")
    title = f"{dataset_title(cfg.dataset)}, {cfg.optimizer.name} {lr}: {status}"
    loss = loss_name(len(payload["class_names"]))
    step = "iteration" if cfg.optimizer.name == "lbfgs" else "epoch"
    early = OmegaConf.select(cfg, "early_stopping", default=None)
    best = read_metrics(run_dir).get("best_epoch") if early and early.patience is not None else None
    kept = bool(early.restore_best) if best is not None else False
    loss_png = run_dir / "loss.png"
    written = [plot_loss(run_dir / HISTORY_FILE, loss_png, title, loss, step, best, kept)]
    if status == DIVERGED or payload["n_features"] != 2:
        return written
    model = model_from_payload(payload, run_dir)
    # with cv the whole training part trained the final model: no val part was carved off
    val_size = 0.0 if OmegaConf.select(cfg, "cv", default=None) else cfg.val_size
    splits = split(
        load_dataset(cfg.dataset), cfg.test_size, val_size, cfg.random_state, cfg.stratify
    )
    refit = Standardizer.fit(splits.X_train) if cfg.standardize else model.scaler
    if (splits.class_names, splits.feature_names) != (
        model.class_names,
        model.feature_names,
    ) or not np.allclose(refit.mean, model.scaler.mean, rtol=1e-5, atol=1e-6):
        raise SweeplrError(
            f"the data set of {run_dir} differs from the one it was trained on; "
            "allowed: the unchanged data set (its decision boundary would be drawn on other data)"
        )
    written.append(
        plot_decision_boundary(
            model,
            splits.X_train,
            splits.y_train,
            splits.X_test,
            splits.y_test,
            run_dir / "decision_boundary.png",
        )
    )
    return written


@slide_fonts
def plot_lr_find(
    rows: Sequence[dict[str, Any]],
    suggestion: float | None,
    ylabel: str,
    out_path: str | Path,
    title: str,
) -> Path:
    """The lr finder's picture (:func:`lr_find_figure`), saved to ``out_path``."""
    return save_figure(lr_find_figure(rows, suggestion, ylabel, title), out_path)


def lr_find_figure(
    rows: Sequence[dict[str, Any]], suggestion: float | None, ylabel: str, title: str
) -> Figure:
    """Each lr's final ``loss`` (``rows`` as in ``lr_find.csv``) on a log lr axis that spans
    every lr tried, diverged lrs marked at the top, the ``suggestion`` marked."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    done = [r for r in rows if r["status"] != DIVERGED and r["loss"] is not None]
    losses = np.asarray([r["loss"] for r in done], dtype=float)
    if done:
        ax.plot([r["lr"] for r in done], losses, marker="o", markersize=3, label="final loss")
    if losses.size and (losses > 0).all():  # a loss of exactly 0 has no place on a log axis
        log_if_wide(ax, [losses])
    diverged = [r["lr"] for r in rows if r["status"] == DIVERGED]
    if diverged:
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            diverged,
            [0.97] * len(diverged),
            marker="x",
            color="tab:red",
            transform=top,
            label="diverged",
        )
    if not done:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "every lr diverged", ha="center", transform=ax.transAxes)
    # Set, not autoscaled: markers placed in axes coordinates (the diverged lrs) do not widen
    # an axis, which would then cover the finished lrs only, or nothing.
    lrs = np.asarray([r["lr"] for r in rows], dtype=float)
    margin = max((lrs.max() / lrs.min()) ** 0.04, 1.5)
    ax.set_xlim(lrs.min() / margin, lrs.max() * margin)
    if suggestion is not None:
        ax.axvline(
            suggestion, color="tab:green", linestyle="--", label=f"suggested lr {suggestion:.3g}"
        )
    ax.set_xlabel("learning rate (each its own run from the same start)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    below(fig, ax.get_legend_handles_labels()[0])
    return fig
