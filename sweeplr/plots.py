"""Pictures of runs and sweeps: ``sweeplr plot``. No Hydra, no display.

A run gets its loss curve and, for 2-feature data, its decision boundary drawn over the raw
training and test points (the tutorial's pictures). A sweep gets the objective against the
learning rate and the validation-loss curves of its best runs; an Optuna study its history,
parallel coordinates and parameter importances, drawn here in the same style as the rest rather
than by optuna.visualization (grey ggplot, "Objective Value", pruned trials hidden). Every PNG is
rendered in memory and written atomically, so a reader (the HTML report, a browser) never sees
half a file. Only ``Figure`` is used, never pyplot: no backend is chosen, and matplotlib's
settings change only while a figure is built (`slide_fonts`), then are restored. As in ``sweeplr.predict``, torch and scikit-learn are imported only where they are used.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from sweeplr.errors import SweeplrError
from sweeplr.importance import PendingImportances, importances
from sweeplr.predict import TrainedModel, model_from_payload
from sweeplr.records import HISTORY_FILE, atomic_write, load_model_payload, read_metrics
from sweeplr.results import FIXED_COLUMNS, load_sweep, run_dirs
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED

if TYPE_CHECKING:
    import optuna

DPI = 100
# Text sized for a slide: a picture is shown at about its pixel size (its inches x DPI), beside
# others, so matplotlib's 10-point default reads small. Set while a figure is built (the text
# of an artist takes its size when made), never globally.
SLIDE_FONTS = {
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
TOP_RUNS = 5
GRID_TICKS = 8  # at most this many distinct lrs: the lr axis is labelled at each of them
HISTORY_PNG, PARALLEL_PNG, IMPORTANCE_PNG = (
    "optuna_history.png",
    "optuna_parallel.png",
    "optuna_importance.png",
)
# Columns of a sweep table that describe a run's outcome or place, not its configuration.
OUTCOME_COLUMNS = frozenset(FIXED_COLUMNS)
# Settings that do not make a different configuration: runs differing only here are repeats.
REPEAT_COLUMNS = frozenset({"seed"})
# How each outcome is drawn wherever runs or trials are points (sweep scatter, Optuna pictures).
MARKERS = {COMPLETED: "o", PRUNED: "v", DIVERGED: "X"}
DIVERGED_COLOR = "tab:red"  # as the lr finder marks diverged lrs
# Both ends dark enough to see on white: viridis' top (near-yellow) is cut off.
OBJECTIVE_CMAP = mcolors.LinearSegmentedColormap.from_list(
    "sweeplr_objective", matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256))
)


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
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


class _PlainLogFormatter(mticker.LogFormatter):
    """Labels the ticks matplotlib's log formatter would, as plain numbers."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _log_if_wide(
    ax: Axes, values: Sequence[np.ndarray], decades: float = LOG_SCALE_DECADES
) -> None:
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
    _log_if_wide(ax, [frame[c].to_numpy() for c in drawn], LOSS_CURVE_DECADES)
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


def split_params(table: pd.DataFrame) -> tuple[list[str], dict[str, Any]]:
    """A sweep table's configuration columns: those that vary, and the constant ones' values.
    (A multi-objective study's ``value_0``, ``value_1``, ... are outcomes, not settings.)"""
    params = [
        c for c in table.columns if c not in OUTCOME_COLUMNS and not str(c).startswith("value_")
    ]
    varying = [c for c in params if table[c].astype(str).nunique() > 1]
    constant = {c: table[c].iloc[0] for c in params if c not in varying}
    return varying, constant


def varying_params(table: pd.DataFrame) -> list[str]:
    """The configuration columns whose value differs between runs, swept ones first."""
    return split_params(table)[0]


def repeat_groups(table: pd.DataFrame) -> list[str] | None:
    """The columns that tell a sweep's configurations apart when it repeats each over seeds;
    None when no two runs differ only in ``seed``."""
    varying = varying_params(table)
    if "seed" not in varying:
        return None
    by = [c for c in varying if c != "seed"]
    if not by:  # a seed sweep of one configuration: group by anything constant
        by = [c for c in ("dataset", "optimizer", "lr") if c in table][:1]
    if not by:
        return None
    counts = table.groupby([table[c].astype(str) for c in by]).size()
    return by if counts.max() > 1 else None


def ranked_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with an objective value, best first."""
    done = table[(table["status"] == COMPLETED) & table["objective"].notna()]
    ascending = table.attrs.get("direction", "minimize") == "minimize"
    return done.sort_values("objective", ascending=ascending, kind="stable")


def resolve_run_dir(sweep_dir: Path, run_dir: Any) -> Path:
    """A table's ``run_dir`` as a path that exists from here (it may be relative to the sweep)."""
    path = Path(str(run_dir))
    return path if path.is_absolute() or path.exists() else sweep_dir / path


def _objective_label(table: pd.DataFrame) -> tuple[str, str]:
    """The sweep's objective name and direction (older or empty tables may hold neither)."""
    return (
        table.attrs.get("objective_name") or "objective",
        table.attrs.get("direction") or "minimize",
    )


def _series_keys(table: pd.DataFrame, x: str = "lr") -> list[str]:
    """Columns whose equal values make runs one series along ``x``: every varying setting but
    ``x`` and the repeats' seed. Runs equal in all of them differ only in ``x`` (and seed)."""
    varying, _ = split_params(table)
    return [c for c in varying if c != x and c not in REPEAT_COLUMNS]


# The x axis of a sweep's objective picture: the lr, or, in a sweep of a penalty's strength at
# one lr (LogisticRegressionCV's search; L-BFGS has no lr to tune), C.
SWEEP_AXES = {"lr": "learning rate", "C": "C (the penalty's inverse strength)"}


def sweep_axis(table: pd.DataFrame) -> str:
    """``lr``, unless the lr is one value and C is several: then ``C``."""

    def distinct(column: str) -> int:
        return pd.to_numeric(table[column], errors="coerce").nunique() if column in table else 0

    return "C" if distinct("lr") <= 1 and distinct("C") > 1 else "lr"


def _optimizer_names(table: pd.DataFrame) -> pd.Series:
    """Each run's optimizer as text; "" where a run has none (a failed job's row, or a table
    without the column), so that names sort and index colours alike."""
    if "optimizer" not in table:
        return pd.Series("", table.index)
    return table["optimizer"].astype(object).where(table["optimizer"].notna(), "").astype(str)


def _optimizer_colors(table: pd.DataFrame) -> dict[str, Any]:
    names = sorted(_optimizer_names(table).unique())
    return {name: f"C{k % 10}" for k, name in enumerate(names)}


def _draw_lr_panel(
    ax: Axes,
    table: pd.DataFrame,
    column: str,
    colors: dict[str, Any],
    bounds: tuple[float, float],
    x: str = "lr",
) -> None:
    """One panel of :func:`objective_vs_lr_figure`: lines for series, points for the rest."""
    keys = _series_keys(table, x)
    optimizer = _optimizer_names(table)
    done = table[table["status"] == COMPLETED]
    scattered = []
    groups = done.groupby([done[k].astype(str) for k in keys], sort=True) if keys else [((), done)]
    for _, runs in groups:
        stats = runs.groupby(x)[column].agg(["mean", "std", "count"]).dropna(subset="mean")
        if len(stats) < 2:  # one lr: nothing to join
            scattered.append(runs)
            continue
        color = colors[optimizer[runs.index[0]]]
        ax.plot(stats.index, stats["mean"], "-", color=color, alpha=0.8, zorder=2)
        if (stats["count"] > 1).any():  # repeats: mean ± std, never past what the metric allows
            spread = stats["std"].fillna(0.0)
            low, high = (
                (stats["mean"] - spread).clip(*bounds),
                (stats["mean"] + spread).clip(*bounds),
            )
            ax.fill_between(stats.index, low, high, color=color, alpha=0.18, linewidth=0)
    # Every run is its own marker, whether or not it is part of a line.
    for status in (COMPLETED, PRUNED):
        runs = table[(table["status"] == status) & table[column].notna()]
        if runs.empty:
            continue
        ax.scatter(
            runs[x],
            runs[column],
            marker=MARKERS[status],
            s=36 if status == COMPLETED else 44,
            c=[colors[o] for o in optimizer[runs.index]],
            edgecolors="k" if status == COMPLETED else "none",
            linewidths=0.4,
            alpha=0.9 if status == COMPLETED else 0.6,
            zorder=3,
        )
    diverged = table[table["status"] == DIVERGED]
    if not diverged.empty:  # no value to place them by: at the top edge, as the lr finder does
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            diverged[x],
            np.full(len(diverged), 0.97),
            marker=MARKERS[DIVERGED],
            s=50,
            color=DIVERGED_COLOR,
            transform=top,
            zorder=3,
        )
        # Placed in axes coordinates, they do not widen the lr axis themselves.
        ax.update_datalim(np.column_stack([diverged[x], np.zeros(len(diverged))]), updatey=False)
        ax.autoscale_view()


def _legend_handles(table: pd.DataFrame, colors: dict[str, Any]) -> list[Line2D]:
    """Colours name optimizers, markers name outcomes: one entry for each that is drawn."""
    handles = [
        Line2D([], [], color=c, marker="s", linestyle="", label=name)
        for name, c in colors.items()
        if name
    ]
    labels = {
        COMPLETED: "completed",
        PRUNED: "pruned (at last reported value)",
        DIVERGED: "diverged (at the top edge)",
    }
    present = set(table["status"])
    for status, label in labels.items():
        if status in present:
            color = DIVERGED_COLOR if status == DIVERGED else "0.4"
            handles.append(Line2D([], [], color=color, marker=MARKERS[status], ls="", label=label))
    return handles


@slide_fonts
def objective_vs_lr_figure(table: pd.DataFrame, x: str = "lr") -> Figure:
    """The objective and the test accuracy of every run against its learning rate (log x), or
    against another setting ``x`` of `SWEEP_AXES` (C).

    Colour is the optimizer, the marker the outcome: pruned runs sit at the last objective
    they reported, diverged ones at the top edge. Runs that differ only in lr (and seed) are
    joined by a line of their mean, with a ± std band over seeds; runs that differ in anything
    else (an Optuna study's epochs and weight decay) stay unjoined points.
    """
    objective_name, direction = _objective_label(table)
    table = table.assign(
        **{c: pd.to_numeric(table[c], errors="coerce") for c in (x, "objective", "test_accuracy")}
    )
    accuracy_like = not objective_name.endswith("_loss")
    panels = (
        (
            "objective",
            f"{objective_name} ({direction})",
            (0.0, 1.0) if accuracy_like else (0, np.inf),
        ),
        ("test_accuracy", "test accuracy", (0.0, 1.0)),
    )
    colors = _optimizer_colors(table)
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (column, label, bounds) in zip(axes, panels, strict=True):
        _draw_lr_panel(ax, table, column, colors, bounds, x)
        if column == "objective" and not accuracy_like:
            _log_if_wide(ax, [table.loc[table["status"] != DIVERGED, column].to_numpy(dtype=float)])
        ax.set_xscale("log")
        lrs = np.sort(table[x].dropna().unique())
        if len(lrs) <= GRID_TICKS:  # a grid's few lrs: each one named, where its runs are
            ax.set_xticks(lrs, [_short(float(lr)) for lr in lrs])
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_xlabel(SWEEP_AXES[x])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles = _legend_handles(table, colors)
    if handles:
        below(fig, handles, columns=len(handles))
    counts = table["status"].value_counts()
    shown = ", ".join(f"{counts[s]} {s}" for s in (COMPLETED, PRUNED, DIVERGED) if s in counts)
    fig.suptitle(
        f"{objective_name} and test accuracy against {SWEEP_AXES[x].split(' (')[0]} "
        f"({shown}; {len(table)} runs)"
    )
    return fig


def _plot_objective_vs_lr(table: pd.DataFrame, out_path: Path, x: str = "lr") -> Path:
    return save_figure(objective_vs_lr_figure(table, x), out_path)


def _run_loss_name(sweep_dir: Path, run_dir: Any) -> str:
    """The loss of a sweep's run, from the class count its record holds."""
    try:
        record = read_metrics(resolve_run_dir(sweep_dir, run_dir))
        return loss_name(len(record["data"]["class_names"]))
    except (SweeplrError, OSError, KeyError, TypeError):
        return "loss"  # an old or damaged record: the picture is still worth drawing


@slide_fonts
def top_val_loss_figure(table: pd.DataFrame, sweep_dir: Path) -> Figure:
    """The validation-loss curves (training loss without a validation split) of the sweep's
    best runs, best first; in a sweep that repeats settings over seeds, of its best settings:
    each one curve, the mean over its completed seeds with a ± std band, their count named."""
    by = repeat_groups(table)
    ranked = ranked_runs(table)
    if by is None:
        groups = [ranked.iloc[[i]] for i in range(min(TOP_RUNS, len(ranked)))]
        shown = varying_params(table)
    else:  # one entry per setting, ranked by its mean objective
        groups = [runs for _, runs in ranked.groupby([ranked[c].astype(str) for c in by])]
        minimize = table.attrs.get("direction", "minimize") == "minimize"
        groups.sort(key=lambda runs: runs["objective"].mean(), reverse=not minimize)
        groups = groups[:TOP_RUNS]
        shown = by
    curves = [_history_curves(sweep_dir, runs) for runs in groups]
    has_val = any(frame.attrs["has_val"] for frame in curves)
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.subplots()
    for runs, frame in zip(groups, curves, strict=True):
        params = ", ".join(f"{c}={_short(runs[c].iloc[0])}" for c in shown)
        objective = runs["objective"]
        if by is None:
            label = f"job {runs['job'].iloc[0]}" + (f": {params}" if params else "")
            label += f" ({_short(objective.iloc[0])})"
        else:
            spread = f" ± {objective.std():.2g}" if len(runs) > 1 else ""
            label = f"{params}: {_short(objective.mean())}{spread} ({len(runs)} seeds)"
        mean = frame.mean(axis=1)
        [line] = ax.plot(mean.index, mean, label=label)
        if frame.shape[1] > 1:
            std = frame.std(axis=1)
            ax.fill_between(
                mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0
            )
    values = [frame.to_numpy(dtype=float) for frame in curves]
    _log_if_wide(ax, values, LOSS_CURVE_DECADES)
    lbfgs = "optimizer" in ranked and len(ranked) and (ranked["optimizer"] == "lbfgs").all()
    ax.set_xlabel("iteration" if lbfgs else "epoch")
    loss = _run_loss_name(sweep_dir, ranked["run_dir"].iloc[0]) if len(ranked) else "loss"
    ax.set_ylabel(f"{loss} (val)" if has_val else f"{loss} (train; no validation split)")
    objective_name, _ = _objective_label(table)
    if by is None:
        best = f"the {len(groups)} best runs" if len(groups) > 1 else "the best run"
        ax.set_title(f"{best} by {objective_name}")
    else:
        best = f"the {len(groups)} best settings" if len(groups) > 1 else "the best setting"
        ax.set_title(f"{best} by mean {objective_name}; mean ± std over their seeds")
    ax.grid(alpha=0.3, which="both")
    if curves:
        below(fig, ax.get_lines(), columns=1)
    else:
        ax.text(0.5, 0.5, "no completed run", ha="center", transform=ax.transAxes)
    return fig


def _history_curves(sweep_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs' validation loss by epoch (training loss when none had a validation split), a
    column per run, at the epochs all of them logged."""
    histories = [pd.read_csv(resolve_run_dir(sweep_dir, r) / HISTORY_FILE) for r in runs["run_dir"]]
    has_val = any(h["val_loss"].notna().any() for h in histories)
    column = "val_loss" if has_val else "train_loss"
    frame = pd.concat([h.set_index("epoch")[column] for h in histories], axis=1).dropna()
    frame.attrs["has_val"] = has_val
    return frame


def _plot_top_val_loss(table: pd.DataFrame, sweep_dir: Path, out_path: Path) -> Path:
    return save_figure(top_val_loss_figure(table, sweep_dir), out_path)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_sweep(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> list[Path]:
    """``objective_vs_lr.png`` (``objective_vs_C.png`` in a sweep of C at one lr, see
    `sweep_axis`) and ``top_val_loss.png`` in the sweep directory.

    ``table`` is the sweep's table as :func:`sweeplr.results.load_sweep` returns it (read from
    ``sweep_dir`` when not given).
    """
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    if table.empty:
        raise SweeplrError(f"{sweep_dir} holds no runs; allowed: a sweep directory")
    x = sweep_axis(table)
    return [
        _plot_objective_vs_lr(table, sweep_dir / f"objective_vs_{x}.png", x),
        _plot_top_val_loss(table, sweep_dir, sweep_dir / "top_val_loss.png"),
    ]


def study_objective_name(study: optuna.Study, out_dir: str | Path | None = None) -> str:
    """What the study's value is: its metric name, its ``objective`` user attr, or the
    ``objective`` of a run record in ``out_dir``; "objective" when nothing says."""
    if study.metric_names:
        return str(study.metric_names[0])
    for key in ("objective", "objective_name"):
        if study.user_attrs.get(key):
            return str(study.user_attrs[key])
    try:
        found = run_dirs(out_dir) if out_dir is not None else []
    except SweeplrError:
        found = []
    for run_dir in found:
        try:
            return str(read_metrics(run_dir)["objective"]["name"])
        except (SweeplrError, OSError, KeyError, TypeError):
            continue  # a failed job's record: the next run says it
    return "objective"


def study_trials(study: optuna.Study) -> pd.DataFrame:
    """One row per completed or pruned trial: ``number``, ``status``, ``value`` (a pruned
    trial's last reported one) and its parameters; trials with no value to show are left out."""
    import optuna

    state = optuna.trial.TrialState
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)):
        if trial.state == state.COMPLETE:
            value, status = trial.value, COMPLETED
        elif trial.intermediate_values:
            value, status = trial.intermediate_values[max(trial.intermediate_values)], PRUNED
        else:
            continue
        rows.append({"number": trial.number, "status": status, "value": value, **trial.params})
    return pd.DataFrame(rows, columns=["number", "status", "value"] if not rows else None)


def _is_wide(values: np.ndarray) -> bool:
    """True when the positive values span more than ``LOG_SCALE_DECADES`` powers of ten."""
    values = values[np.isfinite(values)]
    return bool(values.size and (values > 0).all()) and (
        values.max() / values.min() > 10**LOG_SCALE_DECADES
    )


@slide_fonts
def optuna_history_figure(trials: pd.DataFrame, name: str, direction: str) -> Figure:
    """Each trial's value by trial number (pruned ones at their last report) and the best
    completed value so far."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    ax = fig.subplots()
    for status, color, label in (
        (COMPLETED, "C0", "completed"),
        (PRUNED, "C1", "pruned (last reported value)"),
    ):
        rows = trials[trials["status"] == status]
        if not rows.empty:
            ax.scatter(
                rows["number"],
                rows["value"],
                marker=MARKERS[status],
                s=36,
                color=color,
                edgecolors="k" if status == COMPLETED else "none",
                linewidths=0.4,
                alpha=0.9 if status == COMPLETED else 0.7,
                label=label,
                zorder=3,
            )
    done = trials[trials["status"] == COMPLETED].sort_values("number")
    best = done["value"].cummin() if direction == "minimize" else done["value"].cummax()
    ax.step(done["number"], best, where="post", color="C2", label=f"best {name} so far")
    _log_if_wide(ax, [trials["value"].to_numpy(dtype=float)])
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_ylabel(f"{name} ({direction})")
    n_pruned = int((trials["status"] == PRUNED).sum())
    ax.set_title(f"optimisation history: {len(done)} completed, {n_pruned} pruned trials")
    ax.grid(alpha=0.3, which="both")
    below(fig, ax.get_legend_handles_labels()[0])
    return fig


def _category_key(choice: str) -> tuple[int, float, str]:
    """Numeric choices in numeric order (100 < 300 < 1000), then the rest alphabetically."""
    try:
        return (0, float(choice), "")
    except ValueError:
        return (1, 0.0, choice)


def _axis_positions(
    values: pd.Series, log: bool, categorical: bool
) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """A parallel-coordinates axis: each value's height in [0, 1] and the ticks to label it.

    Numbers are scaled linearly (or in log10 when ``log``) from min to max; categories (and
    anything not a number) are spread evenly in order. A constant axis sits at the middle.
    """
    numeric = pd.to_numeric(values, errors="coerce")
    is_text = values.map(lambda v: isinstance(v, bool | str)).any()
    if not categorical and numeric.notna().all() and not is_text:
        scaled = np.log10(numeric.to_numpy(dtype=float)) if log else numeric.to_numpy(dtype=float)
        low, high = scaled.min(), scaled.max()
        span = high - low
        heights = (scaled - low) / span if span > 0 else np.full(len(scaled), 0.5)
        ticks = [(0.0, low), (0.5, (low + high) / 2), (1.0, high)] if span > 0 else [(0.5, low)]
        return heights, [(h, _short(float(10**v if log else v))) for h, v in ticks]
    text = values.astype(str)
    choices = sorted(text.unique(), key=_category_key)
    place = {
        c: (k / (len(choices) - 1) if len(choices) > 1 else 0.5) for k, c in enumerate(choices)
    }
    return text.map(place).to_numpy(dtype=float), [(place[c], c) for c in choices]


@slide_fonts
def optuna_parallel_figure(
    trials: pd.DataFrame,
    params: Sequence[str],
    name: str,
    direction: str,
    log_params: frozenset[str] = frozenset(),
    categorical: frozenset[str] = frozenset(),
) -> Figure:
    """Parallel coordinates: one line per trial through the objective and each parameter.

    Completed trials are coloured by their value, the best drawn last (on top); pruned trials are
    grey and dashed, at their last reported value. Axis names are written in full.
    """
    values = trials["value"].to_numpy(dtype=float)
    log_value = _is_wide(values)
    columns = [("value", f"{name}\n({direction})", log_value)]
    columns += [(p, p, p in log_params) for p in params]
    placed = [_axis_positions(trials[c], log, c in categorical) for c, _, log in columns]
    heights = np.stack([h for h, _ in placed], axis=1)
    x = np.arange(len(columns))

    fig = Figure(figsize=(max(8.0, 2.0 * len(columns) + 1.5), 5.5), layout="constrained")
    ax = fig.subplots()
    done = trials["status"].to_numpy() == COMPLETED
    norm_cls = mcolors.LogNorm if log_value else mcolors.Normalize
    norm = norm_cls(values[done].min(), values[done].max()) if done.any() else norm_cls(0, 1)
    for k in np.flatnonzero(~done):
        ax.plot(x, heights[k], color="0.55", linestyle="--", linewidth=1, alpha=0.7, zorder=1)
    # Best last, so the good trials are not buried under the many bad ones.
    order = np.flatnonzero(done)[np.argsort(values[done])]
    order = order[::-1] if direction == "minimize" else order
    for k in order:
        ax.plot(x, heights[k], color=OBJECTIVE_CMAP(norm(values[k])), linewidth=1.6, zorder=2)
    for position, (_, ticks) in zip(x, placed, strict=True):
        ax.axvline(position, color="k", linewidth=0.8, zorder=0)
        for height, text in ticks:
            ax.text(
                position + 0.04,
                height,
                text,
                fontsize="small",
                va="center",
                zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
            )
    ax.set_xticks(x, [label for _, label, _ in columns])
    if max(len(label) for _, label, _ in columns) > 16:  # long names: slanted, never cut
        ax.tick_params(axis="x", labelrotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.15, x[-1] + 0.45)
    ax.set_ylim(-0.05, 1.05)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=OBJECTIVE_CMAP), ax=ax, label=name)
    handles = [Line2D([], [], color=OBJECTIVE_CMAP(0.5), label="completed (colour: value)")]
    if (~done).any():
        handles.append(Line2D([], [], color="0.55", ls="--", label="pruned (last reported value)"))
    below(fig, handles)
    n_pruned = int((~done).sum())
    ax.set_title(f"parallel coordinates: {int(done.sum())} completed, {n_pruned} pruned trials")
    return fig


@slide_fonts
def optuna_importance_figure(importances: dict[str, float], name: str, n_trials: int) -> Figure:
    """Each parameter's share of the objective's variance (fANOVA), largest at the top."""
    fig = Figure(figsize=(8, 1.2 + 0.5 * len(importances)), layout="constrained")
    ax = fig.subplots()
    ordered = sorted(importances.items(), key=lambda item: item[1])
    bars = ax.barh([p for p, _ in ordered], [v for _, v in ordered], color="C0")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel(f"importance for {name} (fANOVA; sums to 1)")
    ax.set_title(f"hyperparameter importance over {n_trials} completed trials")
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_optuna_study(
    study: optuna.Study,
    out_dir: str | Path,
    objective_name: str | None = None,
    pending: PendingImportances | None = None,
) -> list[Path]:
    """``optuna_history.png``, ``optuna_parallel.png`` and ``optuna_importance.png``, drawn from
    the study's trials in sweeplr's style, each skipped when the study is too small for it to
    say anything. ``objective_name`` labels the value (else read from the study or the runs).

    The history needs a completed trial; parallel coordinates need >= 2 (one trial is one
    line); importances need >= 2 completed trials and >= 2 parameters that vary.
    ``pending``: the importances, started beside this process (`sweeplr.importance`).
    """
    import optuna

    out_dir = Path(out_dir)
    trials = study_trials(study)
    complete = trials[trials["status"] == COMPLETED]
    if complete.empty:
        return []
    name = objective_name or study_objective_name(study, out_dir)
    direction = study.direction.name.lower()
    params = sorted(c for c in trials.columns if c not in ("number", "status", "value"))
    varying = [p for p in params if complete[p].astype(str).nunique() > 1]
    written = [save_figure(optuna_history_figure(trials, name, direction), out_dir / HISTORY_PNG)]
    if len(complete) >= 2:
        distributions = {
            p: d for t in study.get_trials(deepcopy=False) for p, d in t.distributions.items()
        }
        log_params = frozenset(p for p, d in distributions.items() if getattr(d, "log", False))
        categorical = frozenset(
            p
            for p, d in distributions.items()
            if isinstance(d, optuna.distributions.CategoricalDistribution)
        )
        fig = optuna_parallel_figure(trials, params, name, direction, log_params, categorical)
        written.append(save_figure(fig, out_dir / PARALLEL_PNG))
    if len(complete) >= 2 and len(varying) >= 2:
        found = (
            pending.result()
            if pending is not None
            else importances(study.get_trials(deepcopy=False), direction)
        )
        fig = optuna_importance_figure(found, name, len(complete))
        written.append(save_figure(fig, out_dir / IMPORTANCE_PNG))
    elif pending is not None:
        pending.cancel()
    return written


@slide_fonts
def plot_lr_find(
    rows: Sequence[dict[str, Any]],
    suggestion: float | None,
    ylabel: str,
    out_path: str | Path,
    title: str,
) -> Path:
    """The lr finder's picture: each lr's final ``loss`` (``rows`` as in ``lr_find.csv``) on a
    log lr axis, diverged lrs marked at the top, the ``suggestion`` marked."""
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    done = [r for r in rows if r["status"] != DIVERGED and r["loss"] is not None]
    losses = np.asarray([r["loss"] for r in done], dtype=float)
    ax.plot([r["lr"] for r in done], losses, marker="o", markersize=3, label="final loss")
    ax.set_xscale("log")
    if losses.size and (losses > 0).all():  # a loss of exactly 0 has no place on a log axis
        _log_if_wide(ax, [losses])
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
    if suggestion is not None:
        ax.axvline(
            suggestion, color="tab:green", linestyle="--", label=f"suggested lr {suggestion:.3g}"
        )
    ax.set_xlabel("learning rate (each its own run from the same start)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    below(fig, ax.get_legend_handles_labels()[0])
    return save_figure(fig, out_path)
