"""``report.html``: one self-contained page per sweep, to open or mail without a server.

Everything is inline (CSS, a few lines of script to sort the table, PNGs as base64 data URIs),
so the page works from a file, offline, and keeps working after the sweep directory moves.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from omegaconf import OmegaConf

from sweeplr.plots import (
    OUTCOME_COLUMNS,
    plot_optuna_study,
    plot_run,
    plot_sweep,
    ranked_runs,
    resolve_run_dir,
    split_params,
)
from sweeplr.records import atomic_write_text
from sweeplr.results import METRICS_FILE, load_sweep, run_dirs

if TYPE_CHECKING:
    import optuna

REPORT_FILE = "report.html"
HYDRA_ADDED = frozenset({"hydra.mode=MULTIRUN"})  # Hydra's own override for --multirun

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
code, pre { background: #f4f4f4; padding: 0.1em 0.3em; }
pre { padding: 0.6em; white-space: pre-wrap; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr:nth-child(odd) { background: #fafafa; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
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


def sweep_command(sweep_dir: Path) -> tuple[str, str]:
    """The command that ran the sweep, and where it was read from.

    Hydra's ``multirun.yaml`` holds the overrides as typed; without it (the Optuna sweeper does
    not write one) they are rebuilt from each run's own overrides, values joined per key (the
    Optuna sweeper's ``trial`` bookkeeping left out).
    """
    multirun = sweep_dir / "multirun.yaml"
    if multirun.is_file():
        overrides: Any = OmegaConf.to_container(OmegaConf.load(multirun).hydra.overrides)
        args = [o for o in overrides.get("hydra") or [] if o not in HYDRA_ADDED]
        args += overrides.get("task") or []
        source = "multirun.yaml"
    else:
        values: dict[str, list[str]] = {}
        for run_dir in run_dirs(sweep_dir):
            try:
                record = json.loads((run_dir / METRICS_FILE).read_text())
            except (OSError, ValueError):  # a run that crashed has no overrides to add
                continue
            for override in record.get("overrides") or []:
                name, _, value = override.partition("=")
                if name != "trial" and value not in values.setdefault(name, []):
                    values[name].append(value)
        args = [f"{name}={','.join(vals)}" for name, vals in values.items()]
        source = "the runs' overrides: the values the runs used"
    return " ".join(["python train.py --multirun", *map(shlex.quote, args)]), source


def _text(value: Any) -> str:
    """A cell's display text: floats to 6 significant digits, missing values empty."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _raw(value: Any) -> str:
    """A cell's sort key: floats at full precision so the order is exact."""
    if isinstance(value, float) and not pd.isna(value):
        return repr(value)
    return _text(value)


def _relative(sweep_dir: Path, run_dir: Any) -> str:
    path = resolve_run_dir(sweep_dir, run_dir).resolve()
    try:
        return str(path.relative_to(sweep_dir.resolve()))
    except ValueError:
        return str(path)


def results_table(table: pd.DataFrame, sweep_dir: Path) -> str:
    """The sweep table as HTML, varying parameters first; the script makes it sortable."""
    varying, _ = split_params(table)
    outcome = [c for c in table.columns if c in OUTCOME_COLUMNS and c not in ("job", "run_dir")]
    columns = [c for c in ("job", *varying, *outcome) if c in table.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*columns, "run"])
    rows = []
    for _, row in table.iterrows():
        cells = [(_text(row[c]), _raw(row[c])) for c in columns]
        run = _relative(sweep_dir, row["run_dir"])
        cells.append((run, run))
        rows.append(
            "<tr>"
            + "".join(
                f'<td data-v="{html.escape(raw)}">{html.escape(text)}</td>' for text, raw in cells
            )
            + "</tr>"
        )
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _definitions(items: Iterable[tuple[str, Any]]) -> str:
    """Name/value pairs; a missing value reads ``null``, as in the config it came from."""
    body = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_text(v) or 'null')}</dd>"
        for k, v in items
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


def _best_run(table: pd.DataFrame, sweep_dir: Path) -> str:
    ranked = ranked_runs(table)
    if ranked.empty:
        return "<p>No run completed with an objective value.</p>"
    best = ranked.iloc[0]
    varying, _ = split_params(table)
    run_dir = resolve_run_dir(sweep_dir, best["run_dir"])
    objective = table.attrs.get("objective_name", "objective")
    items = [
        ("run", _relative(sweep_dir, best["run_dir"])),
        ("job", best["job"]),
        *((c, best[c]) for c in varying),
        (f"{objective} ({table.attrs.get('direction', 'minimize')})", best["objective"]),
        *((c, best[c]) for c in ("test_accuracy", "test_loss") if c in best),
    ]
    return _definitions(items) + _images(sorted(run_dir.glob("*.png")))


def write_report(sweep_dir: str | Path, table: pd.DataFrame | None = None) -> Path:
    """Write ``report.html`` into the sweep directory: command, key config, sortable results,
    best run and every PNG of the sweep directory, in one file with no outside references.

    ``table`` is the sweep's table as :func:`sweeplr.results.load_sweep` returns it (read from
    ``sweep_dir`` when not given).
    """
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    command, source = sweep_command(sweep_dir)
    _, constant = split_params(table)
    statuses = table["status"].value_counts()
    objective = table.attrs.get("objective_name", "objective")
    key_config = [
        ("objective", f"{objective} ({table.attrs.get('direction', 'minimize')})"),
        ("runs", ", ".join(f"{n} {status}" for status, n in statuses.items())),
        *sorted(constant.items()),
    ]
    title = f"sweeplr sweep {sweep_dir.name}"
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
<h2>Command</h2>
<pre>{html.escape(command)}</pre>
<p>(from {html.escape(source)})</p>
<h2>Key config</h2>
{_definitions(key_config)}
<h2>Best run</h2>
{_best_run(table, sweep_dir)}
<h2>Results ({len(table)} runs; click a header to sort)</h2>
{results_table(table, sweep_dir)}
<h2>Pictures</h2>
{_images(sorted(sweep_dir.glob("*.png"))) or "<p>No pictures yet: run sweeplr plot.</p>"}
<script>{SORT_SCRIPT}</script>
</body>
</html>
"""
    return atomic_write_text(sweep_dir / REPORT_FILE, page)


def draw_sweep(
    sweep_dir: str | Path, table: pd.DataFrame | None = None, study: optuna.Study | None = None
) -> list[Path]:
    """All of a sweep's pictures, its best run's, an Optuna study's, then ``report.html``."""
    sweep_dir = Path(sweep_dir)
    table = load_sweep(sweep_dir) if table is None else table
    written = plot_sweep(sweep_dir, table)
    if study is not None:
        written += plot_optuna_study(study, sweep_dir)
    best = ranked_runs(table)
    if not best.empty:  # the report shows the best run's own pictures
        written += plot_run(resolve_run_dir(sweep_dir, best["run_dir"].iloc[0]))
    written.append(write_report(sweep_dir, table))
    return written
