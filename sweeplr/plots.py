"""Pictures of runs and sweeps: ``sweeplr plot``. No Hydra, no display.

A run gets its loss curve and, for 2-feature data, its decision boundary drawn over the raw
training and test points (the tutorial's pictures). A sweep gets the objective against the
learning rate and the validation-loss curves of its best runs. Every PNG is rendered in memory
and written atomically, so a reader (the HTML report, a browser) never sees half a file.
As in ``sweeplr.predict``, torch and scikit-learn are imported only where they are used.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from sweeplr.errors import SweeplrError
from sweeplr.predict import TrainedModel, model_from_payload
from sweeplr.records import HISTORY_FILE, atomic_write, load_model_payload
from sweeplr.results import FIXED_COLUMNS, load_sweep
from sweeplr.schema import COMPLETED, DIVERGED

if TYPE_CHECKING:
    import optuna

DPI = 100
LOG_SCALE_DECADES = 2  # a loss falling by more than this many powers of ten is drawn log-y
MESH_POINTS = 250  # per axis: fine enough for smooth region edges, cheap to predict
TOP_RUNS = 5
# Columns of a sweep table that describe a run's outcome or place, not its configuration.
OUTCOME_COLUMNS = frozenset(FIXED_COLUMNS)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render to PNG in memory, then write atomically; no software/URL metadata in the file."""

    buffer = io.BytesIO()
    # bbox "tight": optuna's figures place rotated labels and colorbars past the edges.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _log_if_wide(ax: Axes, values: Sequence[np.ndarray]) -> None:
    """Log-y when the positive values span more than ``LOG_SCALE_DECADES`` powers of ten."""
    finite = np.concatenate([np.empty(0), *(np.asarray(v, dtype=float).ravel() for v in values)])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size and finite.max() / finite.min() > 10**LOG_SCALE_DECADES:
        ax.set_yscale("log")


def plot_loss(history: str | Path | pd.DataFrame, out_path: str | Path, title: str = "") -> Path:
    """Training and (when the run had a validation split) validation loss against epoch, and
    the lr on a second axis when a schedule moved it."""
    frame = history if isinstance(history, pd.DataFrame) else pd.read_csv(history)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    curves = [("train_loss", "train"), ("val_loss", "validation")]
    drawn = [c for c, _ in curves if c in frame and frame[c].notna().any()]
    lines = []
    for column, label in curves:
        if column in drawn:
            lines += ax.plot(frame["epoch"], frame[column], label=f"{label} loss")
    _log_if_wide(ax, [frame[c].to_numpy() for c in drawn])
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    lr = frame["lr"].dropna() if "lr" in frame else pd.Series(dtype=float)
    if lr.nunique() > 1:
        lr_ax = ax.twinx()
        lines += lr_ax.plot(
            frame["epoch"], frame["lr"], color="0.45", linestyle="--", linewidth=1, label="lr"
        )
        lr_ax.set_ylabel("learning rate")
    if lines:
        ax.legend(lines, [line.get_label() for line in lines])
    else:
        ax.text(0.5, 0.5, "no finite loss logged", ha="center", transform=ax.transAxes)
    return save_figure(fig, out_path)


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
    axes[0].legend(loc="best", fontsize="small")
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
    title = f"{cfg.dataset.name}, {cfg.optimizer.name} {lr}: {status}"
    written = [plot_loss(run_dir / HISTORY_FILE, run_dir / "loss.png", title)]
    if status == DIVERGED or payload["n_features"] != 2:
        return written
    model = model_from_payload(payload, run_dir)
    splits = split(
        load_dataset(cfg.dataset), cfg.test_size, cfg.val_size, cfg.random_state, cfg.stratify
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
    """A sweep table's configuration columns: those that vary, and the constant ones' values."""
    params = [c for c in table.columns if c not in OUTCOME_COLUMNS]
    varying = [c for c in params if table[c].astype(str).nunique() > 1]
    constant = {c: table[c].iloc[0] for c in params if c not in varying}
    return varying, constant


def ranked_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with an objective value, best first."""
    done = table[(table["status"] == COMPLETED) & table["objective"].notna()]
    ascending = table.attrs.get("direction", "minimize") == "minimize"
    return done.sort_values("objective", ascending=ascending, kind="stable")


def resolve_run_dir(sweep_dir: Path, run_dir: Any) -> Path:
    """A table's ``run_dir`` as a path that exists from here (it may be relative to the sweep)."""
    path = Path(str(run_dir))
    return path if path.is_absolute() or path.exists() else sweep_dir / path


def _plot_objective_vs_lr(table: pd.DataFrame, out_path: Path) -> Path:
    objective_name = table.attrs.get("objective_name", "objective")
    direction = table.attrs.get("direction", "minimize")
    panels = (("objective", f"{objective_name} ({direction})"), ("test_accuracy", "test accuracy"))
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    done = table[table["status"] == COMPLETED]
    done = done.assign(**{c: pd.to_numeric(done[c], errors="coerce") for c, _ in panels})
    diverged = table[table["status"] == DIVERGED]
    for ax, (column, label) in zip(axes, panels, strict=True):
        for optimizer, runs in done.groupby("optimizer", sort=True):
            stats = runs.groupby("lr")[column].agg(["mean", "std", "count"]).dropna(subset="mean")
            if stats.empty:
                continue
            several = bool((stats["count"] > 1).any())
            (line,) = ax.plot(
                stats.index,
                stats["mean"],
                "o-",
                label=f"{optimizer} (mean ± std)" if several else str(optimizer),
            )
            if several:
                spread = stats["std"].fillna(0.0)
                ax.fill_between(
                    stats.index,
                    stats["mean"] - spread,
                    stats["mean"] + spread,
                    color=line.get_color(),
                    alpha=0.2,
                )
        if not diverged.empty:
            at_bottom = blended_transform_factory(ax.transData, ax.transAxes)
            ax.plot(
                diverged["lr"],
                np.full(len(diverged), 0.02),
                "x",
                color="crimson",
                transform=at_bottom,
                label="diverged",
            )
        if column == "objective":
            _log_if_wide(ax, [done[column].to_numpy(dtype=float)])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(
        f"{objective_name} and test accuracy against learning rate "
        f"({len(done)} completed runs of {len(table)})"
    )
    return save_figure(fig, out_path)


def _plot_top_val_loss(table: pd.DataFrame, sweep_dir: Path, out_path: Path) -> Path:
    top = ranked_runs(table).head(TOP_RUNS)
    varying, _ = split_params(table)
    histories = [pd.read_csv(resolve_run_dir(sweep_dir, r) / HISTORY_FILE) for r in top["run_dir"]]
    has_val = any(h["val_loss"].notna().any() for h in histories)
    column = "val_loss" if has_val else "train_loss"
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for (_, row), history in zip(top.iterrows(), histories, strict=True):
        params = ", ".join(f"{c}={_short(row[c])}" for c in varying)
        label = f"job {row['job']}: {params}" if params else f"job {row['job']}"
        ax.plot(history["epoch"], history[column], label=f"{label} ({_short(row['objective'])})")
    _log_if_wide(ax, [h[column].to_numpy(dtype=float) for h in histories])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss" if has_val else "training loss (no validation split)")
    objective_name = table.attrs.get("objective_name", "objective")
    ax.set_title(f"the {len(top)} best runs by {objective_name}")
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no completed run", ha="center", transform=ax.transAxes)
    return save_figure(fig, out_path)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_sweep(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> list[Path]:
    """``objective_vs_lr.png`` and ``top_val_loss.png`` in the sweep directory.

    ``table`` is the sweep's table as :func:`sweeplr.results.load_sweep` returns it (read from
    ``sweep_dir`` when not given).
    """
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    if table.empty:
        raise SweeplrError(f"{sweep_dir} holds no runs; allowed: a sweep directory")
    return [
        _plot_objective_vs_lr(table, sweep_dir / "objective_vs_lr.png"),
        _plot_top_val_loss(table, sweep_dir, sweep_dir / "top_val_loss.png"),
    ]


def plot_optuna_study(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    """``optuna_history.png``, ``optuna_parallel.png`` and ``optuna_importance.png``: optuna's
    own pictures, each skipped when the study is too small for it to say anything.

    The history needs a completed trial; parallel coordinates need >= 2 (one trial is one
    line); importances need >= 2 completed trials and >= 2 parameters that vary.
    """
    if "matplotlib.pyplot" not in sys.modules:
        # optuna's plots go through pyplot; Agg needs no display (CI, SSH, cron). Chosen here,
        # not at import: a notebook that imported pyplot keeps its own backend.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    out_dir = Path(out_dir)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    names = {name for trial in complete for name in trial.params}
    varying = [n for n in names if len({repr(t.params.get(n)) for t in complete}) > 1]
    plots = [("optuna_history.png", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2:
        plots.append(("optuna_parallel.png", optuna_plots.plot_parallel_coordinate))
    if len(complete) >= 2 and len(varying) >= 2:
        plots.append(("optuna_importance.png", optuna_plots.plot_param_importances))
    written = []
    for name, plot in plots:
        # optuna switches the global style to ggplot; rc_context puts the caller's back.
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Trials with equal values give an axis of zero height; matplotlib widens it.
            warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
            fig = plot(study).figure
            try:
                fig.set_size_inches(9, 5.5)
                written.append(save_figure(fig, out_dir / name))
            finally:
                plt.close(fig)
    return written


def plot_lr_find(
    rows: Sequence[dict[str, Any]],
    suggestion: float | None,
    ylabel: str,
    out_path: str | Path,
    title: str,
) -> Path:
    """The lr finder's picture: each lr's final ``loss`` (``rows`` as in ``lr_find.csv``) on a
    log lr axis, diverged lrs marked at the top, the ``suggestion`` marked."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
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
    ax.legend(loc="center left")
    return save_figure(fig, out_path)
