"""``report.html``: one self-contained page per sweep, to open, mail or put in slides.

Everything is inline (CSS, a few lines of script to sort the tables, PNGs as base64 data URIs),
so the page works from a file, offline, and keeps working after the sweep directory moves.
The page reads top down: the command as typed (and an Optuna sweep's search space and
sampler), what differs from the defaults, the pictures, then the tables, narrow enough for a
1400 px screen; ``summary.csv`` beside it holds every column.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from sweeplr.errors import SweeplrError
from sweeplr.importance import start_importances
from sweeplr.plots import (
    plot_optuna_study,
    plot_run,
    plot_sweep,
    ranked_runs,
    repeat_groups,
    resolve_run_dir,
    varying_params,
)
from sweeplr.records import COMMAND_FILE, atomic_write_text, read_command, read_yaml
from sweeplr.results import (
    METRICS_FILE,
    SUMMARY_FILE,
    group_runs,
    load_sweep,
    run_dirs,
)

if TYPE_CHECKING:
    import optuna

REPORT_FILE = "report.html"
MULTIRUN_MARK = "hydra.mode=MULTIRUN"  # Hydra adds it after the typed overrides of --multirun
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
CONFIG_FILE = Path(".hydra") / "config.yaml"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # sweeplr's own, in a checkout
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


def yaml_text(value: Any) -> str:
    """A value as a YAML file spells it (``false``, ``null``, ``1.0e-08``, ``[0.9, 0.999]``)."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()  # numpy and pandas scalars
    if _missing(value):
        return "null"  # a missing value, not NaN: the tables hold None as NaN
    if type(value) is bool:  # (the common scalars as safe_dump spells them, without it)
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def significant(value: Any) -> str:
    """A table cell's text: floats to 4 significant figures, other values as YAML spells them,
    missing ones empty."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()
    if _missing(value):
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


# --- the command as typed -------------------------------------------------------------------


def job_hydra(sweep_dir: Path) -> dict[str, Any] | None:
    """The ``hydra`` node a job of the sweep saved (``multirun.yaml``'s, else a run's)."""
    paths = [sweep_dir / "multirun.yaml"]
    with contextlib.suppress(SweeplrError):  # no runs: multirun.yaml is all there is
        paths += [run_dir / HYDRA_FILE for run_dir in run_dirs(sweep_dir)]
    for path in paths:
        node = read_yaml(path) if path.is_file() else None
        if isinstance(node, dict) and isinstance(node.get("hydra"), dict):
            return node["hydra"]
    return None


def is_optuna(hydra_node: Mapping[str, Any]) -> bool:
    target = str((hydra_node.get("sweeper") or {}).get("_target_", ""))
    return "optuna" in target.lower()


def typed_hydra_overrides(overrides: Sequence[str]) -> list[str]:
    """The ``hydra.*`` overrides the user typed: those before Hydra's ``hydra.mode=MULTIRUN``
    (the Optuna sweeper and the launcher append the study, storage and trial folder after)."""
    overrides = list(overrides)
    return overrides[: overrides.index(MULTIRUN_MARK)] if MULTIRUN_MARK in overrides else overrides


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def optuna_command_args(
    overrides: Mapping[str, Sequence[str]], space: Sequence[tuple[str, str, bool]]
) -> list[str]:
    """An Optuna sweep's command line: typed ``hydra.*`` overrides, the search-space entries
    typed on the command line, and the task overrides that are not sampled values.

    ``overrides`` is a job's ``hydra.overrides`` (``hydra`` and ``task`` lists); ``space``
    holds ``(name, distribution, typed)`` per searched parameter.
    """
    sampled = {name for name, _, _ in space}
    args = typed_hydra_overrides(overrides.get("hydra") or [])
    args += [f"{name}={text}" for name, text, typed in space if typed]
    args += [o for o in overrides.get("task") or [] if _key(o) not in sampled]
    return args


def grid_command_args(overrides: Mapping[str, Sequence[str]]) -> list[str]:
    """A grid's command line: its ``multirun.yaml`` holds the overrides as typed."""
    hydra_args = [o for o in overrides.get("hydra") or [] if o != MULTIRUN_MARK]
    return [*hydra_args, *(overrides.get("task") or [])]


def command_line(args: Sequence[str]) -> str:
    return " ".join(["python train.py --multirun", *map(shlex.quote, args)])


def typed_command(sweep_dir: Path) -> str | None:
    """The command line the sweep kept (`sweeplr.records.write_command`), as a shell takes it;
    None without one (a sweep of an older sweeplr, or one killed before its end)."""
    argv = read_command(sweep_dir)
    return None if argv is None else "python " + shlex.join(argv)


def hydra_distribution(distribution: Any) -> str:
    """An Optuna distribution in Hydra's sweep syntax (``tag(log, interval(0.0001, 1.0))``)."""
    kind = type(distribution).__name__
    if kind == "CategoricalDistribution":
        return f"choice({', '.join(yaml_text(c) for c in distribution.choices)})"
    low, high, step = distribution.low, distribution.high, distribution.step
    is_int = kind == "IntDistribution"
    if step is not None and not (is_int and step == 1):
        return f"range({low}, {high + step}, {step})"  # Hydra's range stops before its end
    text = f"int(interval({low}, {high}))" if is_int else f"interval({low}, {high})"
    return f"tag(log, {text})" if distribution.log else text


def search_space(
    configured: Mapping[str, Any], distributions: Mapping[str, Any] | None
) -> list[tuple[str, str, bool]]:
    """``(name, distribution, typed)`` per searched parameter.

    ``configured`` is ``hydra.sweeper.params``; ``distributions`` the study's (None when the
    study is unreadable: the configured space is then all there is). A parameter whose
    distribution differs from the configured one, or has none, was typed on the command line.
    """
    if distributions is None:
        return [(str(k), str(v), False) for k, v in configured.items()]
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    space = []
    for name, distribution in distributions.items():
        text = configured.get(name)
        if text is not None:
            parsed, _, _ = create_params_from_overrides([f"{name}={text}"])
            if parsed.get(name) == distribution:
                space.append((name, str(text), False))
                continue
        space.append((name, hydra_distribution(distribution), True))
    return space


def study_distributions(study: optuna.Study) -> dict[str, Any]:
    """Every parameter the study's trials sampled, with its distribution."""
    found: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            found.setdefault(name, distribution)
    return found


def load_study(hydra_node: Mapping[str, Any]) -> optuna.Study | None:
    """The sweep's study from the storage its jobs name; None if it cannot be read."""
    try:
        from sweeplr.studies import load_sweep_study

        return load_sweep_study(hydra_node.get("sweeper") or {})
    except Exception:  # noqa: BLE001 - a moved or damaged study: the report goes without it
        return None


def sampler_settings(sweeper: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The Optuna sweeper's sampler (class and seed), budget, parallelism and pruner."""
    from sweeplr.studies import dashboard_command, public_storage  # Optuna: only for its sweeps

    sampler = sweeper.get("sampler") or {}
    name = str(sampler.get("_target_", "?")).rpartition(".")[2]
    seed = sampler.get("seed")
    pruner = sweeper.get("pruner")
    pruner_name = str(pruner.get("_target_", "?")).rpartition(".")[2] if pruner else "none"
    return [
        ("sampler", f"{name} (seed {yaml_text(seed)})"),
        ("n_trials", yaml_text(sweeper.get("n_trials"))),
        ("n_jobs", yaml_text(sweeper.get("n_jobs"))),
        ("direction", yaml_text(sweeper.get("direction"))),
        ("pruner", pruner_name),
        ("study", f"{sweeper.get('study_name')} in {public_storage(str(sweeper.get('storage')))}"),
        ("dashboard", dashboard_command(str(sweeper.get("storage")))),
    ]


def _overrides_from_runs(sweep_dir: Path) -> list[str]:
    """Without any saved Hydra config: each key's values over the runs, joined."""
    values: dict[str, list[str]] = {}
    for run_dir in run_dirs(sweep_dir):
        try:
            record = json.loads((run_dir / METRICS_FILE).read_text())
        except (OSError, ValueError):  # a run that crashed has no overrides to add
            continue
        for override in record.get("overrides") or []:
            name, _, value = str(override).partition("=")
            if name != "trial" and value not in values.setdefault(name, []):
                values[name].append(value)
    return [f"{name}={','.join(vals)}" for name, vals in values.items()]


def sweep_command(
    sweep_dir: Path, study: optuna.Study | None = None
) -> tuple[str, str, list[tuple[str, str, bool]] | None, dict[str, Any] | None]:
    """The command as typed, where it was read from, and for an Optuna sweep its search space
    and sweeper settings (None for a grid).

    The command is the one the sweep kept (`sweeplr.records.write_command`); a sweep without
    it gets one rebuilt from Hydra's files, which hold the same overrides, Hydra's first.
    """
    node = job_hydra(sweep_dir)
    typed = typed_command(sweep_dir)
    if node is not None and is_optuna(node):
        sweeper = node.get("sweeper") or {}
        study = study if study is not None else load_study(node)
        distributions = None if study is None else study_distributions(study)
        space = search_space(sweeper.get("params") or {}, distributions)
        if typed is not None:
            return typed, COMMAND_FILE, space, sweeper
        args = optuna_command_args(node.get("overrides") or {}, space)
        source = "a trial's .hydra/hydra.yaml" + (" and the study" if study else "")
        return command_line(args), source, space, sweeper
    if typed is not None:
        return typed, COMMAND_FILE, None, None
    if node is not None and (sweep_dir / "multirun.yaml").is_file():
        return (
            command_line(grid_command_args(node.get("overrides") or {})),
            "multirun.yaml",
            None,
            None,
        )
    args = _overrides_from_runs(sweep_dir)
    return command_line(args), "the runs' overrides: the values the runs used", None, None


# --- what differs from the defaults ---------------------------------------------------------


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"name": "sgd"}}`` -> ``{"optimizer.name": "sgd"}``; lists stay values."""
    if not isinstance(node, Mapping) or not node:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def default_config(hydra_node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The config ``python train.py`` composes with no override, flattened; None if the config
    folder is gone. The folder is the one the sweep's jobs read, else sweeplr's own."""
    sources = ((hydra_node or {}).get("runtime") or {}).get("config_sources") or []
    folders = [s.get("path") for s in sources if s.get("provider") == "main"]
    folder = Path(folders[0]) if folders and folders[0] else CONF_DIR
    if not (folder / "config.yaml").is_file():
        return None
    # Hydra's loader, not hydra.compose: inside a sweep's callback Hydra is already initialised.
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode

    from sweeplr.config import register_configs

    try:
        register_configs()
        loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(folder)))
        config = loader.load_configuration("config", overrides=[], run_mode=RunMode.RUN)
        plain = OmegaConf.to_container(config, resolve=False)
    except Exception:  # noqa: BLE001 - a config the loader refuses: no comparison, no report lost
        return None
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return flatten(plain)


def run_configs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each run's saved config (``.hydra/config.yaml``), flattened."""
    texts = []
    for run_dir in run_dirs(sweep_dir):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append((run_dir / CONFIG_FILE).read_text())
    return flat_configs(texts)


# `key: value` on a line of its own in the YAML OmegaConf writes (plain keys only).
KEY_LINE = re.compile(r"( *)([A-Za-z_][\w-]*):(?: (.*))?")


def flat_configs(texts: Sequence[str]) -> list[dict[str, Any]]:
    """The flattened configs of YAML ``texts`` (those that are mappings), as parsing each would.

    A sweep's configs differ in a few lines: 10,000 of them took 15 s to parse, so a text that
    differs from the first only in lines that each hold one ``key: scalar`` entry is the first's
    config with those entries parsed alone; any other text is parsed whole.
    """
    configs: list[dict[str, Any]] = []
    first: tuple[list[str], list[str | None], dict[str, Any]] | None = None
    for text in texts:
        lines = text.splitlines()
        if first is not None and len(lines) == len(first[0]):
            flat = _patched(first, lines)
            if flat is not None:
                configs.append(flat)
                continue
        config = _yaml_text_value(text)
        if isinstance(config, dict):
            configs.append(flatten(config))
            if first is None:
                first = (lines, _line_keys(lines), configs[-1])
    return configs


def _patched(
    first: tuple[list[str], list[str | None], dict[str, Any]], lines: list[str]
) -> dict[str, Any] | None:
    """``first``'s config with the lines where ``lines`` differ from it parsed alone; None when
    a differing line is not a one-line entry."""
    first_lines, keys, flat = first
    changed = dict(flat)
    for j, (line, before) in enumerate(zip(lines, first_lines, strict=True)):
        if line == before:
            continue
        key = keys[j]
        entry = _yaml_text_value(line.strip()) if key is not None else None
        if not isinstance(entry, dict) or len(entry) != 1:
            return None
        value = next(iter(entry.values()))
        if isinstance(value, dict) and value:
            return None
        changed[key] = value
    return changed


def _line_keys(lines: Sequence[str]) -> list[str | None]:
    """The flattened key of each line that holds one whole ``key: value`` entry, else None
    (a mapping's head, a list item, a value folded onto the next lines, anything else)."""
    keys: list[str | None] = []
    open_keys: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    for j, line in enumerate(lines):
        match = KEY_LINE.fullmatch(line)
        if match is None:
            keys.append(None)
            continue
        indent = len(match[1])
        while open_keys and open_keys[-1][0] >= indent:
            open_keys.pop()
        path = ".".join([*(k for _, k in open_keys), match[2]])
        following = lines[j + 1] if j + 1 < len(lines) else ""
        folded = len(following) - len(following.lstrip(" ")) > indent
        if match[3] is None:
            open_keys.append((indent, match[2]))
            keys.append(None)
        else:
            keys.append(None if folded else path)
    return keys


def _yaml_text_value(text: str) -> Any:
    """A YAML text's value (libyaml's parser where PyYAML has it), or None if it is not YAML."""
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None


def config_changes(
    configs: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """``(key, this sweep, default)`` for every key all runs set alike, unlike the default.

    Keys whose value differs between runs are the swept ones (or follow from them, as an
    optimizer's own settings do), listed under "swept" instead.
    """
    missing = object()
    keys = dict.fromkeys(k for config in configs for k in config)
    texts: dict[tuple[type, str], str] = {}  # each distinct value spelled once, not once a run

    def spelled(value: Any) -> str:
        key = (type(value), repr(value))
        if key not in texts:
            texts[key] = yaml_text(value)
        return texts[key]

    changes = []
    for key in keys:
        values = {spelled(c[key]) if key in c else "(absent)" for c in configs}
        if len(values) != 1:
            continue
        value = values.pop()
        default = defaults.get(key, missing)
        default_text = "(absent)" if default is missing else yaml_text(default)
        if value != default_text:
            changes.append((key, value, default_text))
    return changes


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
        study = load_study(node) if node is not None and is_optuna(node) else None
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
