"""One run directory, read as one row of a sweep's table (`sweeplr.results.load_sweep`).

A run's row holds what its record says (status, objective, metrics, hyperparameters, trial);
a run that never wrote ``metrics.json``, or wrote a damaged one, still gets a row, with what
Hydra's ``overrides.yaml`` says and status ``missing`` or ``corrupt``. The swept columns are
named from the overrides typed, as the record names the same quantity. Reads files only.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeplr.errors import SweeplrError
from sweeplr.records import (
    METRICS_FILE,
    SUPERSEDED_FILE,
    read_planned_jobs,
    read_yaml,
    record_problem,
)
from sweeplr.schema import (
    COMPLETED,
    CORRUPT,
    DIVERGED,
    FAILED,
    HYPERPARAMETERS,
    METRIC_COLUMNS,
    METRICS,
    MISSING,
    NOT_RUN,
    PRUNED,
    SPLITS,
    SUPERSEDED,
)

log = logging.getLogger(__name__)

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# Columns a run always has; an override key that would collide with one is renamed.
FIXED_COLUMNS = (
    "job",
    "status",
    "error",
    "objective",
    *METRIC_COLUMNS,
    *(f"val_{metric}_std" for metric in METRICS),
    "epochs_run",
    "best_epoch",
    "wall_seconds",
    "trial",
    "trial_state",
    "pareto",
    "sweep_dir",
    "run_dir",
)
# Override keys naming a record's hyperparameter under another name (``optimizer.X`` is X).
OVERRIDE_ALIASES = {
    "optimizer.name": "optimizer",
    "dataset.name": "dataset",
    "penalty.name": "penalty",
    "objective": "objective_name",  # the metric's name; the ``objective`` column is its value
}
# The Optuna trial state a run's status is told as (sweeplr_optuna tells diverged as PRUNED).
TRIAL_STATES = {COMPLETED: "COMPLETE", PRUNED: "PRUNED", DIVERGED: "PRUNED", FAILED: "FAIL"}


class RunDirectory:
    """What one run directory says about its run, before it becomes a row.

    ``path`` is None for a grid's planned job that never started (`not_run`): no folder, and
    ``overrides`` and ``job`` from the grid's plan.
    """

    def __init__(
        self,
        path: Path | None,
        sweep: Path,
        status: str,
        record: dict[str, Any] | None,
        planned: tuple[int, Sequence[str]] | None = None,
    ) -> None:
        self.path = path
        self.sweep = sweep
        self.status = status
        self.record = record or {}
        overrides = self.record.get("overrides")
        if planned is not None:
            overrides = list(planned[1])
        elif not isinstance(overrides, list) and path is not None:
            # the run crashed first: Hydra's copy still exists
            overrides = _read_overrides(path / OVERRIDES_FILE)
        self.overrides = [str(o) for o in overrides or []]
        number = planned[0] if planned is not None else None
        if number is None and path is not None:
            number = job_number(path.name)
        if number is None:
            num = (self.record.get("job") or {}).get("num")
            number = num if isinstance(num, int) else None
        self.job = number


def read_run(path: Path, sweep: Path) -> RunDirectory:
    if (path / SUPERSEDED_FILE).exists():  # a retry of its trial holds the result: no row's worth
        return RunDirectory(path, sweep, SUPERSEDED, None)
    metrics = path / METRICS_FILE
    try:
        record = json.loads(metrics.read_text())
    except FileNotFoundError:
        return RunDirectory(path, sweep, MISSING, None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s); listed with status %s", metrics, exc, CORRUPT)
        return RunDirectory(path, sweep, CORRUPT, None)
    problem = record_problem(record)
    if problem:
        log.warning("%s is not a run record (%s); listed with status %s", metrics, problem, CORRUPT)
        return RunDirectory(path, sweep, CORRUPT, None)
    return RunDirectory(path, sweep, str(record["status"]), record)


def run_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """The run directories under a sweep directory, by job number; ``[path]`` for a run's own.

    A job directory is a non-hidden folder named by a number or holding ``metrics.json`` or
    ``.hydra/``: Hydra creates it before the job starts, so an empty numbered folder is a
    job that never finished, not clutter.
    """
    root = Path(path)
    if not root.exists():
        raise SweeplrError(f"{root} does not exist; allowed: a sweep directory or a run directory")
    if not root.is_dir():
        raise SweeplrError(f"{root} is not a directory; allowed: a sweep or run directory")
    if is_run_dir(root):
        return [root]
    found = [
        child
        for child in root.iterdir()
        if child.is_dir()
        and not child.name.startswith(".")
        and (job_number(child.name) is not None or is_run_dir(child))
    ]
    if not found:
        raise SweeplrError(
            f"{root} holds no run directories (numbered job folders with {METRICS_FILE} or "
            ".hydra/); allowed: a sweep directory or a run directory"
        )
    return sorted(found, key=lambda p: (job_number(p.name) is None, job_number(p.name), p.name))


def not_run(sweep: Path, runs: Sequence[RunDirectory]) -> list[RunDirectory]:
    """A row for each job the grid of ``sweep`` planned and never started (a sweep stopped by
    Ctrl-C before them): it has no folder, so only the grid's plan names it."""
    planned = read_planned_jobs(sweep) or []
    started = {run.job for run in runs}
    unnumbered = {tuple(run.overrides) for run in runs if run.job is None}
    return [
        RunDirectory(None, sweep, NOT_RUN, None, planned=(num, overrides))
        for num, overrides in enumerate(planned)
        if num not in started and tuple(overrides) not in unnumbered
    ]


def _read_overrides(path: Path) -> list[Any]:
    overrides = read_yaml(path)
    return overrides if isinstance(overrides, list) else []


def table_rows(
    runs: Sequence[RunDirectory], *, with_sweep_dir: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with their columns in the documented order, and the swept columns."""
    hyper_names = dict.fromkeys(HYPERPARAMETERS)  # names known even if every run crashed
    for run in runs:
        hyper_names.update(dict.fromkeys(run.record.get("hyperparameters") or {}))
    parsed = [_parse_overrides(run.overrides, hyper_names) for run in runs]
    swept_names = list(dict.fromkeys(k for overrides in parsed for k in overrides))
    has_trial = any("trial" in run.record for run in runs)
    has_error = any(run.status == FAILED for run in runs)
    has_best_epoch = any(run.record.get("best_epoch") is not None for run in runs)
    has_cv = any(run.record.get("cv") for run in runs)
    rows = []
    for run, overrides in zip(runs, parsed, strict=True):
        record = run.record
        hyper = record.get("hyperparameters") or {}
        metrics = record.get("metrics") or {}
        objective = (record.get("objective") or {}).get("value")
        row: dict[str, Any] = {"job": run.job}
        for name in swept_names:
            # The record's value is the one the run used; the override is all a crashed run has.
            row[name] = hyper[name] if name in hyper else overrides.get(name)
        row["status"] = run.status
        if has_error:
            row["error"] = record.get("error")
        row["objective"] = math.nan if objective is None else float(objective)
        for split in SPLITS:
            values = metrics.get(split) or {}
            for metric in METRICS:
                value = values.get(metric)
                row[f"{split}_{metric}"] = math.nan if value is None else float(value)
        if has_cv:  # cross-validation: the spread over folds of each val metric (a mean)
            spread = (record.get("cv") or {}).get("val_std") or {}
            for metric in METRICS:
                value = spread.get(metric)
                row[f"val_{metric}_std"] = math.nan if value is None else float(value)
        row["epochs_run"] = record.get("epochs_run")
        if has_best_epoch:
            row["best_epoch"] = record.get("best_epoch")
        row["wall_seconds"] = record.get("wall_seconds")
        for name in hyper_names:
            if name not in row:
                row[name] = hyper.get(name)
        if has_trial:
            row["trial"] = (record.get("trial") or {}).get("number")
            row["trial_state"] = TRIAL_STATES.get(run.status)
        if with_sweep_dir:
            row["sweep_dir"] = str(run.sweep)
        row["run_dir"] = None if run.path is None else str(run.path)
        rows.append(row)
    swept = _order_swept(swept_names, rows)
    order = ["job", *swept, *(k for k in rows[0] if k != "job" and k not in swept)]
    return [{k: row[k] for k in order} for row in rows], swept


def _parse_overrides(overrides: Iterable[str], hyper_names: Mapping[str, None]) -> dict[str, Any]:
    """``lr=0.1`` -> ``{"lr": 0.1}``, keyed by the record's column name for the same quantity."""
    parsed = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.lstrip("+")
        if not sep or not key or key.startswith("~"):  # a deletion sets nothing to show
            continue
        parsed[_column_name(key, hyper_names)] = _parse_value(raw)
    return parsed


def _column_name(key: str, hyper_names: Mapping[str, None]) -> str:
    group, _, leaf = key.partition(".")
    if key in OVERRIDE_ALIASES:
        return OVERRIDE_ALIASES[key]
    if group in ("optimizer", "penalty") and leaf in hyper_names:
        return leaf
    if key in FIXED_COLUMNS:
        return f"{key}_override"
    return key


def _parse_value(raw: str) -> Any:
    """A Python literal where the text is one (``0.1``, ``2``, Hydra's ``null``), else the text."""
    hydra_words = {"null": None, "true": True, "false": False}
    if raw.lower() in hydra_words:
        return hydra_words[raw.lower()]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw
    return tuple(value) if isinstance(value, list) else value  # hashable, for grouping


def _order_swept(names: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Swept columns whose values differ between runs first, then those set the same in all."""

    def varies(name: str) -> bool:
        return len({_hashable(row.get(name)) for row in rows}) > 1

    return [n for n in names if varies(n)] + [n for n in names if not varies(n)]


def _hashable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return repr(value) if isinstance(value, dict | list) else value


def objective_attrs(runs: Sequence[RunDirectory]) -> dict[str, Any]:
    """The sweep's objective name and direction: the most common, with a warning if they differ."""
    seen = Counter(
        (objective.get("name"), objective.get("direction"))
        for objective in (run.record.get("objective") for run in runs)
        if isinstance(objective, dict)
    )
    if not seen:
        return {"objective_name": None, "direction": None}
    (name, direction), _ = seen.most_common(1)[0]
    if len(seen) > 1:
        others = ", ".join(f"{n} ({d})" for n, d in seen if (n, d) != (name, direction))
        log.warning(
            "runs optimise different objectives; ranking by %s (%s), not %s",
            name,
            direction,
            others,
        )
    return {"objective_name": name, "direction": direction}


def job_number(name: str) -> int | None:
    return int(name) if name.isascii() and name.isdigit() else None


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file() or (path / ".hydra").is_dir()
