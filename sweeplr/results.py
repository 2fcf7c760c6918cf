"""A sweep's run records as one pandas table: load, rank, group over seeds, print, save.

Every run directory of a sweep becomes one row, including runs that never wrote
``metrics.json`` (status ``missing``) or wrote a damaged one (status ``corrupt``), so a crashed
job shows up instead of silently shrinking the sweep, and a grid's planned jobs that never
started (status ``not_run``, from its ``jobs.json``); `sweeplr.run_rows` reads each. This module
reads files only: it imports neither Hydra nor torch, so ``sweeplr summary`` and notebooks load
it quickly.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeplr.errors import SweeplrError
from sweeplr.records import atomic_write_text
from sweeplr.run_rows import (
    RunDirectory,
    not_run,
    objective_attrs,
    read_run,
    run_dirs,
    table_rows,
)
from sweeplr.schema import COMPLETED, FORMATS, HYPERPARAMETERS, METRIC_COLUMNS, PRUNED

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
PATH_COLUMNS = ("run_dir", "sweep_dir")


def load_sweep(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per run directory of one or more sweeps (or a single run directory), best first.

    ``df.attrs`` holds ``objective_name``, ``direction`` and ``swept`` (the columns set by the
    runs' command-line overrides, varying ones first). Several directories add a ``sweep_dir``
    column so rows from different sweeps stay told apart.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        raise SweeplrError("no directory given; allowed: one or more sweep or run directories")
    runs: list[RunDirectory] = []
    for sweep in paths:
        try:
            found = run_dirs(sweep)
        except SweeplrError:
            # One of several workers' directories may hold no run: the others took every trial.
            if len(paths) == 1 or not Path(sweep).is_dir():
                raise
            log.warning(f"{sweep} holds no runs; combining the other directories")
            continue
        ran = [read_run(run_dir, Path(sweep)) for run_dir in found]
        runs.extend([*ran, *not_run(Path(sweep), ran)])
    if not runs:
        raise SweeplrError(f"none of {', '.join(map(str, paths))} holds a run directory")
    rows, swept = table_rows(runs, with_sweep_dir=len(paths) > 1)
    df = pd.DataFrame(rows)
    for column in df.columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            # Integers stay integers where a missing run leaves a hole (epochs_run, seed, job).
            df[column] = df[column].astype("Int64" if df[column].isna().any() else "int64")
    df.attrs.update(objective_attrs(runs))
    df.attrs["swept"] = swept
    return sort_runs(df, "objective")


def sort_runs(df: pd.DataFrame, column: str, ascending: bool | None = None) -> pd.DataFrame:
    """Rows ordered by ``column``, best first unless ``ascending`` says otherwise.

    Missing values go last. Sorting by ``objective`` ranks completed runs, then pruned ones
    (stopped early, so not comparable: Optuna leaves them out of its best trial too), then
    diverged, missing and corrupt runs. Ties keep job order. On a grouped table, a metric
    name means its mean (``val_loss`` sorts by ``val_loss_mean``).
    """
    column = _resolve_column(df, column)
    if ascending is None:
        ascending = _best_first_ascending(column, df.attrs.get("direction"))
    keys = pd.DataFrame({"value": df[column]}, index=df.index)
    by, order = ["value"], [ascending]
    if column == "objective" and "status" in df:
        # A non-finite objective (a damaged or hand-made record) ranks with the unfinished.
        finite = np.isfinite(pd.to_numeric(df["objective"], errors="coerce").astype(float))
        unranked = ~finite | ~df["status"].isin([COMPLETED, PRUNED])
        pruned = (df["status"] == PRUNED).astype(int)
        keys.insert(0, "tier", pruned.where(~unranked, 2))
        by, order = ["tier", "value"], [True, ascending]
    for tie in ("job", "run_dir"):
        if tie in df and tie != column:
            keys[tie] = df[tie]
            by.append(tie)
            order.append(True)
    index = keys.sort_values(by, ascending=order, na_position="last", kind="stable").index
    out = df.loc[index].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def with_trial_states(df: pd.DataFrame, states: Mapping[int, str]) -> pd.DataFrame:
    """``trial_state`` as the study has it (``COMPLETE``, ``PRUNED``, ``FAIL``...), by trial."""
    if "trial" not in df:
        return df
    out = df.copy()
    out["trial_state"] = [
        None if pd.isna(t) else states.get(int(t), out.at[i, "trial_state"])
        for i, t in zip(out.index, out["trial"], strict=True)
    ]
    out.attrs = dict(df.attrs)
    return out


def add_trial_values(
    df: pd.DataFrame, values: Mapping[int, Sequence[float]], pareto: Iterable[int]
) -> pd.DataFrame:
    """A multi-objective study's columns: ``value_0``, ``value_1``, ... (what each trial's task
    returned) and ``pareto`` (True for the trials no other trial beats on every value), with
    the Pareto-optimal rows first."""
    out = df.copy()
    width = max((len(v) for v in values.values()), default=0)
    trials = out["trial"] if "trial" in out else pd.Series([None] * len(out), index=out.index)
    at = out.columns.get_loc("objective") + 1
    for i in range(width):
        column = [
            values[t][i] if t is not None and not pd.isna(t) and int(t) in values else math.nan
            for t in trials
        ]
        out.insert(at + i, f"value_{i}", column)
    front = set(pareto)
    out.insert(at + width, "pareto", [not pd.isna(t) and int(t) in front for t in trials])
    out = out.sort_values("pareto", ascending=False, kind="stable").reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def group_runs(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1) of every metric over the *completed* runs sharing
    the ``by`` values.

    Used to average over seeds: one row per configuration, ``count`` runs of which
    ``n_completed`` completed. Pruned runs stopped early and diverged, failed or missing ones
    have no comparable numbers, so they count in ``count`` but not in the statistics. Best
    ``objective_mean`` first; ``attrs["grouped_by"]`` names ``by``.
    """
    by = list(by)
    if not by:
        raise SweeplrError("no column to group by; allowed: one or more column names")
    for name in by:
        _check_column(df, name)
    metrics = [
        c
        for c in ("objective", *METRIC_COLUMNS, "epochs_run", "wall_seconds")
        if c in df and c not in by
    ]
    keys = [df[name] for name in by]
    completed = df["status"] == COMPLETED
    values = df[metrics].astype("float64").where(completed)
    grouped = values.groupby(keys, dropna=False)
    counts = pd.DataFrame(
        {
            "count": completed.groupby(keys, dropna=False).size(),
            "n_completed": completed.groupby(keys, dropna=False).sum(),
        }
    )
    means, stds = grouped.mean(), grouped.std(ddof=1)
    stats = {}
    for name in metrics:
        stats[f"{name}_mean"] = means[name]
        stats[f"{name}_std"] = stds[name]
    out = counts.join(pd.DataFrame(stats)).reset_index()
    out.attrs = {
        **{k: v for k, v in df.attrs.items() if k != "swept"},
        "grouped_by": by,
    }
    return sort_runs(out, "objective_mean") if "objective_mean" in out else out


def format_table(df: pd.DataFrame, fmt: str = "table", top: int | None = None) -> str:
    """The table as text: ``table`` for a terminal, ``markdown``, ``csv`` or ``json`` (records).

    ``table`` and ``markdown`` round floats to 4 significant digits, show paths relative to
    the current directory and put a grouped table's ``mean ± std`` in one cell per metric;
    ``csv`` and ``json`` keep every digit and every column as is, for programs.
    """
    if fmt not in FORMATS:
        raise SweeplrError(f"format {fmt!r} is invalid; allowed: {', '.join(FORMATS)}")
    if top is not None:
        df = df.head(top)
    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        rows = [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict("records")]
        return json.dumps(rows, indent=2, allow_nan=False)
    header, right, cells = _display_cells(df)
    if fmt == "markdown":
        lines = [
            _pipe_row(header),
            _pipe_row(["---:" if r else "---" for r in right]),
            *(_pipe_row(row) for row in cells),
        ]
        return "\n".join(lines)
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]

    def line(row: Sequence[str]) -> str:
        parts = [
            text.rjust(w) if r else text.ljust(w)
            for text, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(row) for row in cells)])


# What a terminal shows by default: the metrics people compare runs by (the CSV has them all).
COMPACT_METRICS = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "test_roc_auc",
    "test_f1",
)


def compact(df: pd.DataFrame) -> pd.DataFrame:
    """The columns worth a terminal's width: job, what was swept or varies, status, objective,
    the main metrics, epochs, time, trial state and run directory; constants dropped."""
    swept = list(df.attrs.get("swept", []))
    varying = [c for c in HYPERPARAMETERS if c in df and c not in swept and df[c].nunique() > 1]
    keep = [
        "job",
        *[c for c in swept if c in df and df[c].nunique(dropna=False) > 1],
        *varying,
        "status",
        "error",
        "objective",
        *(c for c in df.columns if str(c).startswith("value_")),
        "pareto",
        # with cv, a val metric is its folds' mean, and its spread stands beside it
        *(c for m in COMPACT_METRICS for c in (m, f"{m}_std")),
        "epochs_run",
        "best_epoch",
        "wall_seconds",
        "trial_state",
        "sweep_dir",
        "run_dir",
    ]
    if "job" not in df:  # a grouped table: its groups, counts, and the main metrics' mean/std
        metrics = ("objective", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
        keep = [
            *df.attrs.get("grouped_by", []),
            "count",
            "n_completed",
            *(f"{m}_{stat}" for m in metrics for stat in ("mean", "std")),
        ]
    out = df[[c for c in dict.fromkeys(keep) if c in df]]
    out.attrs = dict(df.attrs)
    return out


def write_summary(sweep_dir: str | os.PathLike[str], df: pd.DataFrame | None = None) -> Path:
    """Write ``summary.csv`` (the full table, best first) at the sweep's root, atomically.

    ``df`` is the already loaded table, if the caller has one, to avoid reading every run twice.
    """
    table = load_sweep(sweep_dir) if df is None else df
    path = Path(sweep_dir) / SUMMARY_FILE
    return atomic_write_text(path, table.to_csv(index=False))


def _check_column(df: pd.DataFrame, name: str) -> None:
    if name not in df:
        raise SweeplrError(
            f"column {name!r} does not exist; allowed: {', '.join(map(str, df.columns))}"
        )


def _resolve_column(df: pd.DataFrame, name: str) -> str:
    if name not in df and f"{name}_mean" in df:
        return f"{name}_mean"
    _check_column(df, name)
    return name


def _best_first_ascending(column: str, direction: str | None) -> bool:
    """Whether small values are the good ones, judged from the column's name."""
    base = column.removesuffix("_mean")
    if column.endswith("_std"):
        return True  # the steadiest configuration first
    if base == "objective":
        return direction != "maximize"
    # Scores are best high; losses, wall_seconds, epochs_run and anything else best low.
    return not any(word in base for word in ("accuracy", "roc_auc", "f1"))


def _display_cells(df: pd.DataFrame) -> tuple[list[str], list[bool], list[list[str]]]:
    """Header, right-alignment flags and cell texts; ``X_mean``/``X_std`` pairs merge into X."""
    columns: list[tuple[str, list[str], bool]] = []
    for name in df.columns:
        if name.endswith("_std") and f"{name.removesuffix('_std')}_mean" in df:
            continue
        if name.endswith("_mean") and f"{name.removesuffix('_mean')}_std" in df:
            base = name.removesuffix("_mean")
            texts = [
                _mean_std(mean, std)
                for mean, std in zip(df[name].tolist(), df[f"{base}_std"].tolist(), strict=True)
            ]
            columns.append((base, texts, True))
            continue
        numeric = pd.api.types.is_numeric_dtype(df[name])
        texts = [_cell(value, path=name in PATH_COLUMNS) for value in df[name].tolist()]
        columns.append((str(name), texts, numeric))
    header = [name for name, _, _ in columns]
    right = [numeric for _, _, numeric in columns]
    cells = [list(row) for row in zip(*(texts for _, texts, _ in columns), strict=True)]
    return header, right, cells


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any, *, path: bool = False) -> str:
    if _is_missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if path:
        return _relative(str(value))
    return str(value)


def _mean_std(mean: Any, std: Any) -> str:
    """``mean ± std``; the mean alone where one run leaves the spread undefined."""
    if _is_missing(mean):
        return "-"
    return _cell(float(mean)) if _is_missing(std) else f"{float(mean):.4g} ± {float(std):.4g}"


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return path


def _pipe_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _json_value(value: Any) -> Any:
    """Plain JSON: numpy scalars as numbers, NaN and infinities as null."""
    if _is_missing(value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return list(value) if isinstance(value, tuple) else value
