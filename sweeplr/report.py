"""``report.html``: one self-contained page per sweep, to open, mail or put in slides.

Everything is inline (CSS, a few lines of script to sort the tables, PNGs as base64 data URIs),
so the page works from a file, offline, and keeps working after the sweep directory moves.
The page reads top down: the command as typed (and an Optuna sweep's search space and
sampler), what differs from the defaults, the pictures, then the tables, narrow enough for a
1400 px screen; ``summary.csv`` beside it holds every column. Where the sweep came from (the
command, the search space, the settings unlike the defaults) is `sweeplr.provenance`'s to read.
"""

from __future__ import annotations

import base64
import contextlib
import html
import logging
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sweeplr.console import show
from sweeplr.importance import start_importances
from sweeplr.plots import plot_run
from sweeplr.provenance import (
    config_changes,
    default_config,
    is_missing,
    is_optuna,
    job_hydra,
    load_study,
    run_configs,
    sampler_settings,
    sweep_command,
    yaml_text,
)
from sweeplr.records import atomic_write_text
from sweeplr.results import SUMMARY_FILE, group_runs, load_sweep
from sweeplr.study_plots import plot_optuna_study
from sweeplr.sweep_plots import (
    plot_sweep,
    ranked_runs,
    repeat_groups,
    resolve_run_dir,
    varying_params,
)

if TYPE_CHECKING:
    import optuna

REPORT_FILE = "report.html"
# The per-run table's outcome columns: the ones people compare runs by.
RUN_METRICS = (
    "status",
    "objective",
    "val_loss",
    "val_loss_std",  # cv: the folds' spread beside their mean
    "val_accuracy",
    "val_accuracy_std",
    "test_loss",
    "test_accuracy",
    "epochs_run",
)
GROUP_METRICS = ("objective", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
MAX_LISTED = 6  # more swept values than this read as a range
# Past this many columns whole numbers no longer fit 1400 px side by side: they wrap too.
MAX_WHOLE_COLUMNS = 16
# Rows of the per-run table on the page, at most: the best ones (the table is sorted best
# first); summary.csv beside it has every run. 10,000 rows made a 3.8 MB page.
MAX_PAGE_ROWS = 1000

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1336px; }
code, pre { background: #f4f4f4; padding: 0.1em 0.3em; }
pre { padding: 0.6em; white-space: pre-wrap; overflow-wrap: anywhere; }
table { border-collapse: collapse; font-size: 0.9em; max-width: 100%; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.4em; text-align: right; }
td { white-space: nowrap; }  /* a number stays whole; words wrap at _ . / to fit */
td.text, th { white-space: normal; overflow-wrap: break-word; }
table.many td, table.many th { white-space: normal; overflow-wrap: anywhere; }
td.text, th.text { text-align: left; }
th { background: #eee; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr:nth-child(odd) { background: #fafafa; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; overflow-wrap: anywhere; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
"""

# Click a header to sort by that column; again to reverse. Cells carry their raw value in
# data-v (numbers at full precision); empty cells always go last.
SORT_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    headers.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null || y === null) return (x === null) - (y === null);
          var order = typeof x === "number" && typeof y === "number"
            ? x - y : String(x).localeCompare(String(y));
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
"""


# --- values as text -------------------------------------------------------------------------


def significant(value: Any) -> str:
    """A table cell's text: floats to 4 significant figures, other values as YAML spells them,
    missing ones empty."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()
    if is_missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else yaml_text(value)


def _raw(value: Any) -> str:
    """A cell's sort key: floats at full precision so the order is exact."""
    if isinstance(value, float) and not pd.isna(value):
        return repr(float(value))
    return significant(value)


def _values_text(values: Iterable[Any]) -> str:
    """A swept parameter's values, in order; many of them as their count and range."""
    values = list(values)
    unique = list(dict.fromkeys(significant(v) or "null" for v in values))
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if len(unique) > MAX_LISTED and len(numbers):
        return f"{len(unique)} values from {numbers.min():.4g} to {numbers.max():.4g}"
    with contextlib.suppress(TypeError):  # mixed types keep the order the runs had
        unique = list(dict.fromkeys(significant(v) or "null" for v in sorted(values)))
    return ", ".join(unique)


# --- tables ---------------------------------------------------------------------------------


def _cell(text: str, raw: str, *, numeric: bool = True) -> str:
    css = "" if numeric else ' class="text"'
    shown = html.escape(text) if numeric else _breakable(text)
    return f'<td{css} data-v="{html.escape(raw)}">{shown}</td>'


def _breakable(name: str) -> str:
    """Text that may wrap after ``_``, ``.`` and ``/``: long names and paths narrow their
    column without breaking inside a word."""
    text = html.escape(name)
    for mark in "_./":
        text = text.replace(mark, f"{mark}<wbr>")
    return text


def _table(table_id: str, header: Sequence[str], rows: Iterable[str]) -> str:
    css = ' class="text"'
    head = "".join(f"<th{css if h == 'status' else ''}>{_breakable(h)}</th>" for h in header)
    many = " many" if len(header) > MAX_WHOLE_COLUMNS else ""
    return (
        f'<table id="{table_id}" class="sortable{many}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def results_table(table: pd.DataFrame) -> str:
    """One row per run: its job, what was swept, and the main metrics to 4 significant figures.
    The script makes it sortable."""
    columns = ["job", *varying_params(table), *(c for c in RUN_METRICS if c in table)]
    rows = []
    for _, row in table.head(MAX_PAGE_ROWS).iterrows():
        cells = [
            _cell(significant(row[c]), _raw(row[c]), numeric=not isinstance(row[c], str))
            for c in columns
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table("runs", columns, rows)


def _shown_rows(count: int) -> str:
    """What the page's run table leaves out, said before it."""
    if count <= MAX_PAGE_ROWS:
        return ""
    return f"The best {MAX_PAGE_ROWS} of the {count} runs are below. "


def grouped_table(table: pd.DataFrame, by: Sequence[str]) -> str:
    """One row per configuration: mean ± std over its completed repeats."""
    grouped = group_runs(table, by)
    metrics = [m for m in GROUP_METRICS if f"{m}_mean" in grouped]
    rows = []
    for _, row in grouped.iterrows():
        cells = [
            _cell(significant(row[c]), _raw(row[c]), numeric=not isinstance(row[c], str))
            for c in by
        ]
        cells.append(_cell(f"{row['n_completed']}/{row['count']}", str(row["n_completed"])))
        for metric in metrics:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            text = significant(mean)
            if text and not pd.isna(std):
                text += f" ± {std:.4g}"
            cells.append(_cell(text, _raw(mean)))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table("grouped", [*by, "completed", *metrics], rows)


def _definitions(items: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items
    )
    return f"<dl>{body}</dl>"


def _images(paths: Sequence[Path]) -> str:
    figures = []
    for path in paths:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        name = html.escape(path.name)
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
            f"<figcaption>{name}</figcaption></figure>"
        )
    return "".join(figures)


def _relative(sweep_dir: Path, run_dir: Any) -> str:
    path = resolve_run_dir(sweep_dir, run_dir).resolve()
    try:
        return str(path.relative_to(sweep_dir.resolve()))
    except ValueError:
        return str(path)


def _best_run(table: pd.DataFrame, sweep_dir: Path) -> str:
    ranked = ranked_runs(table)
    if ranked.empty:
        return "<p>No run completed with an objective value.</p>"
    best = ranked.iloc[0]
    run_dir = resolve_run_dir(sweep_dir, best["run_dir"])
    objective = table.attrs.get("objective_name", "objective")
    items = [
        ("run", _relative(sweep_dir, best["run_dir"])),
        *((c, significant(best[c])) for c in varying_params(table)),
        (
            f"{objective} ({table.attrs.get('direction', 'minimize')})",
            significant(best["objective"]),
        ),
        *((c, significant(best[c])) for c in ("test_accuracy", "test_loss") if c in best),
    ]
    return _definitions(items) + _images(sorted(run_dir.glob("*.png")))


# --- the page -------------------------------------------------------------------------------


def _command_section(sweep_dir: Path, study: optuna.Study | None) -> str:
    command, source, space, sweeper = sweep_command(sweep_dir, study)
    parts = [
        "<h2>Command</h2>",
        f"<pre>{html.escape(command)}</pre>",
        f"<p>(as typed, from {html.escape(source)})</p>",
    ]
    if space is not None and sweeper is not None:
        parts += [
            "<h2>Search space</h2>",
            _definitions((name, text) for name, text, _ in space),
            "<h2>Sampler</h2>",
            _definitions(sampler_settings(sweeper)),
        ]
    return "\n".join(parts)


def _config_section(sweep_dir: Path, table: pd.DataFrame) -> str:
    statuses = table["status"].value_counts()
    objective = table.attrs.get("objective_name", "objective")
    summary = [
        ("objective", f"{objective} ({table.attrs.get('direction', 'minimize')})"),
        ("runs", ", ".join(f"{n} {status}" for status, n in statuses.items())),
        *((c, _values_text(table[c].tolist())) for c in varying_params(table)),
    ]
    parts = ["<h2>Config</h2>", "<h3>What was swept</h3>", _definitions(summary)]
    configs = run_configs(sweep_dir)
    defaults = default_config(job_hydra(sweep_dir)) if configs else None
    parts.append("<h3>Differs from the defaults</h3>")
    if defaults is None:
        parts.append("<p>No saved config (.hydra/config.yaml) or default config to compare.</p>")
        return "\n".join(parts)
    changes = config_changes(configs, defaults)
    if not changes:
        parts.append("<p>Nothing: every setting not swept is the default.</p>")
        return "\n".join(parts)
    rows = (
        f'<tr><td class="text">{html.escape(k)}</td><td class="text">{html.escape(v)}</td>'
        f'<td class="text">{html.escape(d)}</td></tr>'
        for k, v, d in changes
    )
    parts.append(
        '<table id="changes"><thead><tr><th class="text">setting</th>'
        '<th class="text">this sweep</th><th class="text">default</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return "\n".join(parts)


def write_report(
    sweep_dir: str | Path, table: pd.DataFrame | None = None, study: optuna.Study | None = None
) -> Path:
    """Write ``report.html`` into the sweep directory: the command as typed, the config that
    differs from the defaults, the sweep's pictures, a mean ± std table when the sweep repeats
    over seeds, the per-run table and the best run, in one file with no outside references.

    ``table`` is the sweep's table as :func:`sweeplr.results.load_sweep` returns it (read from
    ``sweep_dir`` when not given); ``study`` an Optuna sweep's study (read from its storage
    when not given).
    """
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    title = f"sweeplr sweep {sweep_dir.name}"
    pictures = _images(sorted(sweep_dir.glob("*.png")))
    by = repeat_groups(table)
    grouped = ""
    if by is not None:
        grouped = (
            f"<h2>Mean ± std over seeds ({', '.join(by)}; click a header to sort)</h2>\n"
            + grouped_table(table, by)
        )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p><code>{html.escape(str(sweep_dir.resolve()))}</code></p>
{_command_section(sweep_dir, study)}
{_config_section(sweep_dir, table)}
<h2>Pictures</h2>
{pictures or "<p>No pictures yet: run sweeplr plot.</p>"}
{grouped}
<h2>Runs ({len(table)}; click a header to sort)</h2>
<p>{_shown_rows(len(table))}The main columns, to 4 significant figures;
<a href="{SUMMARY_FILE}">{SUMMARY_FILE}</a> beside this page has every run and every column at
full precision.</p>
{results_table(table)}
<h2>Best run</h2>
{_best_run(table, sweep_dir)}
<script>{SORT_SCRIPT}</script>
</body>
</html>
"""
    return atomic_write_text(sweep_dir / REPORT_FILE, page)


def _no_study(sweep_dir: Path, why: str) -> None:
    show(
        f"warning: the Optuna study of {sweep_dir} is not drawn again: {why}",
        logging.WARNING,
    )


def draw_sweep(
    sweep_dir: str | Path, table: pd.DataFrame | None = None, study: optuna.Study | None = None
) -> list[Path]:
    """All of a sweep's pictures, its best run's, an Optuna study's, then ``report.html``.

    ``study``: an Optuna sweep's study, read from the storage its trials name when not given
    (``sweeplr plot`` of a finished sweep)."""
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    if study is None:
        node = job_hydra(sweep_dir)
        if node is not None and is_optuna(node):
            study = load_study(node, sweep_dir, on_error=partial(_no_study, sweep_dir))
    # The importances are worked out beside this process while the other pictures are drawn,
    # and collected last (see sweeplr.importance).
    pending = start_importances(study) if study is not None else None
    try:
        written = plot_sweep(sweep_dir, table)
        best = ranked_runs(table)
        run_pictures = []
        if not best.empty:  # the report shows the best run's own pictures
            run_pictures = plot_run(resolve_run_dir(sweep_dir, best["run_dir"].iloc[0]))
        if study is not None:
            written += plot_optuna_study(study, sweep_dir, pending=pending)
        written += run_pictures
    finally:
        if pending is not None:
            pending.cancel()  # nothing to stop once collected
    written.append(write_report(sweep_dir, table, study))
    return written
