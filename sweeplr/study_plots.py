"""Pictures of an Optuna study: its history, parallel coordinates and parameter
importances, drawn in the style of `sweeplr.plots` rather than by optuna.visualization (grey
ggplot, "Objective Value", pruned trials hidden). No Hydra, no display; Optuna is imported
where it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sweeplr.errors import SweeplrError
from sweeplr.importance import PendingImportances, importances
from sweeplr.plots import (
    LOG_SCALE_DECADES,
    MARKERS,
    below,
    log_if_wide,
    save_figure,
    short_label,
    slide_fonts,
)
from sweeplr.records import read_metrics
from sweeplr.results import run_dirs
from sweeplr.schema import COMPLETED, PRUNED

if TYPE_CHECKING:
    import optuna

HISTORY_PNG, PARALLEL_PNG, IMPORTANCE_PNG = (
    "optuna_history.png",
    "optuna_parallel.png",
    "optuna_importance.png",
)
# Both ends dark enough to see on white: viridis' top (near-yellow) is cut off.
OBJECTIVE_CMAP = mcolors.LinearSegmentedColormap.from_list(
    "sweeplr_objective", matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256))
)


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
    log_if_wide(ax, [trials["value"].to_numpy(dtype=float)])
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
        return heights, [(h, short_label(float(10**v if log else v))) for h, v in ticks]
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
        ax.axvline(float(position), color="k", linewidth=0.8, zorder=0)
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
    line); importances need >= 2 completed trials and >= 2 parameters that vary. A
    multi-objective study has no one value to draw: none (the summary marks its Pareto front).
    ``pending``: the importances, started beside this process (`sweeplr.importance`).
    """
    import optuna

    if len(study.directions) > 1:
        if pending is not None:
            pending.cancel()
        return []
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
