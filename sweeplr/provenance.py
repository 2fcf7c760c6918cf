"""Where a sweep came from, rebuilt from the files it left: the command as typed (and an
Optuna sweep's search space and sampler), and what its configs set unlike the defaults.

The command is the one the sweep kept (``sweeplr.records.write_command``); a sweep without it
gets one rebuilt from Hydra's files (``multirun.yaml``, a job's ``.hydra/hydra.yaml``), which
hold the same overrides. The defaults are composed by Hydra's own config loader. This is the
one module of the report that reads Hydra's internals (``hydra._internal``, the stock Optuna
plugin's ``_impl``); it imports them inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from sweeplr.errors import SweeplrError, first_line
from sweeplr.records import COMMAND_FILE, METRICS_FILE, read_command, read_yaml
from sweeplr.results import run_dirs

if TYPE_CHECKING:
    import optuna

MULTIRUN_MARK = "hydra.mode=MULTIRUN"  # Hydra adds it after the typed overrides of --multirun
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
CONFIG_FILE = Path(".hydra") / "config.yaml"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # sweeplr's own, in a checkout


# --- values as YAML spells them -------------------------------------------------------------


def yaml_text(value: Any) -> str:
    """A value as a YAML file spells it (``false``, ``null``, ``1.0e-08``, ``[0.9, 0.999]``)."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()  # numpy and pandas scalars
    if is_missing(value):
        return "null"  # a missing value, not NaN: the tables hold None as NaN
    if type(value) is bool:  # (the common scalars as safe_dump spells them, without it)
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


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


def load_study(
    hydra_node: Mapping[str, Any],
    sweep_dir: Path | None = None,
    on_error: Callable[[str], None] | None = None,
) -> optuna.Study | None:
    """The sweep's study from the storage its jobs name (or the journal of ``sweep_dir``, moved
    since); None if it cannot be read, after ``on_error(why)`` when given."""
    try:
        from sweeplr.studies import load_sweep_study

        return load_sweep_study(hydra_node.get("sweeper") or {}, sweep_dir)
    except Exception as exc:  # noqa: BLE001 - a lost or damaged study: the report goes without it
        if on_error is not None:
            on_error(first_line(exc))
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
        study = study if study is not None else load_study(node, sweep_dir)
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

    A sweep's configs differ in a few lines, and parsing thousands whole takes seconds
    (bench/README.md), so a text that differs from the first only in lines that each hold one
    ``key: scalar`` entry is the first's config with those entries parsed alone; any other text
    is parsed whole.
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
        if key is None:
            return None
        entry = _yaml_text_value(line.strip())
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
