"""Pictures of a sweep: the objective against the learning rate (or C) and the
validation-loss curves of its best runs, in the style of `sweeplr.plots`. No Hydra, no display.

Also the reading of a sweep's table that the pictures and the report share: which columns were
swept, which runs repeat a configuration over seeds, the runs ranked best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from sweeplr.errors import SweeplrError
from sweeplr.plots import (
    LOSS_CURVE_DECADES,
    MARKERS,
    below,
    log_if_wide,
    loss_name,
    save_figure,
    short_label,
    slide_fonts,
)
from sweeplr.records import HISTORY_FILE, read_metrics
from sweeplr.results import load_sweep
from sweeplr.run_rows import FIXED_COLUMNS
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED

TOP_RUNS = 5
GRID_TICKS = 8  # at most this many distinct lrs: the lr axis is labelled at each of them
# Columns of a sweep table that describe a run's outcome or place, not its configuration.
OUTCOME_COLUMNS = frozenset(FIXED_COLUMNS)
# Settings that do not make a different configuration: runs differing only here are repeats.
REPEAT_COLUMNS = frozenset({"seed"})
DIVERGED_COLOR = "tab:red"  # as the lr finder marks diverged lrs


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
    if keys:
        labels = [done[k].astype(str) for k in keys]
        # Only a series of two lrs or more is a line. Found for all series at once: an Optuna
        # study's series are mostly one run each, and a groupby apiece cost seconds.
        joined = (done.groupby(labels, sort=True)[x].transform("nunique") >= 2).to_numpy()
        done = done[joined]
        groups: Any = done.groupby([label[joined] for label in labels], sort=True)
    else:
        groups = [((), done)]
    for _, runs in groups:
        stats = runs.groupby(x)[column].agg(["mean", "std", "count"]).dropna(subset="mean")
        if len(stats) < 2:  # one lr: nothing to join
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
            log_if_wide(ax, [table.loc[table["status"] != DIVERGED, column].to_numpy(dtype=float)])
        ax.set_xscale("log")
        drawn = table[table["status"].isin((COMPLETED, PRUNED, DIVERGED))]
        lrs = np.sort(drawn[x].dropna().unique())  # (a failed job's lr may be anything)
        if len(lrs) <= GRID_TICKS:  # a grid's few lrs: each one named, where its runs are
            ax.set_xticks(lrs, [short_label(float(lr)) for lr in lrs])
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
        params = ", ".join(f"{c}={short_label(runs[c].iloc[0])}" for c in shown)
        objective = runs["objective"]
        if by is None:
            label = f"job {runs['job'].iloc[0]}" + (f": {params}" if params else "")
            label += f" ({short_label(objective.iloc[0])})"
        else:
            spread = f" ± {objective.std():.2g}" if len(runs) > 1 else ""
            label = f"{params}: {short_label(objective.mean())}{spread} ({len(runs)} seeds)"
        mean = frame.mean(axis=1)
        [line] = ax.plot(mean.index, mean, label=label)
        if frame.shape[1] > 1:
            std = frame.std(axis=1)
            ax.fill_between(
                mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0
            )
    values = [frame.to_numpy(dtype=float) for frame in curves]
    log_if_wide(ax, values, LOSS_CURVE_DECADES)
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


def plot_sweep(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> list[Path]:
    """``objective_vs_lr.png`` (``objective_vs_C.png`` in a sweep of C at one lr, see
    `sweep_axis`) and ``top_val_loss.png`` in the sweep directory.

    ``table`` is the sweep's table as :func:`sweeplr.results.load_sweep` returns it (read from
    ``sweep_dir`` when not given). None when no run completed, was pruned or diverged.
    """
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    if table.empty:
        raise SweeplrError(f"{sweep_dir} holds no runs; allowed: a sweep directory")
    if not table["status"].isin((COMPLETED, PRUNED, DIVERGED)).any():
        return []  # every run failed or never ran: no value and no lr of a run to place
    x = sweep_axis(table)
    return [
        _plot_objective_vs_lr(table, sweep_dir / f"objective_vs_{x}.png", x),
        _plot_top_val_loss(table, sweep_dir, sweep_dir / "top_val_loss.png"),
    ]
