"""The command line's overrides, checked before Hydra composes them: train.py's Hydra edge.

Hydra composes the config before any sweeplr code runs, and its messages for a newcomer's first
mistakes point away from the fix: ``learning_rate=0.01`` gets "To append to your config use
+learning_rate=0.01" (which would train with lr=0.01 anyway), ``optimizer=adma`` a list of
options without "did you mean". This module reads the line as Hydra does (its argument parser,
its override grammar) and ends a mistake it can be sure of with one line: a key the schema has
not got, a group option ``conf/`` has not got, a list where one value goes. Anything else it
leaves to Hydra: another config (``--config-dir``, ``--config-path``, ``--config-name``, a rerun,
Hydra's aliases), a line Hydra's grammar refuses, packages (``group@pkg``), deletions, and the
data set's keys when a preset on the line may choose the data set (``experiment=seed``).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException

from sweeplr.config import Config, field_types, node_schema, unknown_key, unknown_key_message
from sweeplr.errors import SweeplrError
from sweeplr.records import read_yaml


class _Deferred(Exception):
    """The line is Hydra's to judge: it reads it again and says what is wrong, if anything."""


def check_command_line(conf_dir: Path, argv: Sequence[str] | None = None) -> None:
    """End ``python train.py ARGV`` with one ``error:`` line and exit status 1 when an override
    holds a mistake this module can be sure of; otherwise return, and Hydra goes on."""
    try:
        _check(_overrides(sys.argv[1:] if argv is None else argv), conf_dir)
    except _Deferred:
        return
    except SweeplrError as exc:
        sys.exit(f"error: {exc}")


def check_overrides(overrides: Sequence[str], conf_dir: Path) -> None:
    """Raise :class:`SweeplrError` with one line for the first mistake in ``overrides`` (as
    train.py takes them, composed from ``conf_dir``) this module can be sure of."""
    try:
        _check(overrides, conf_dir)
    except _Deferred:
        return


def _overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line that composes the app's own config, parsed as Hydra
    parses them."""
    parser = get_args_parser()

    def defer(*_: Any) -> None:  # argparse's error() and exit() print: Hydra will, once
        raise _Deferred

    parser.error = parser.exit = defer  # type: ignore[method-assign,assignment]
    with contextlib.redirect_stdout(io.StringIO()):  # --version prints before it exits
        args = parser.parse_intermixed_args(argv)
    other_config = args.config_path or args.config_dir or args.config_name
    if other_config or args.experimental_rerun or args.shell_completion:
        raise _Deferred
    return list(args.overrides)


def _check(overrides: Sequence[str], conf_dir: Path) -> None:
    primary = conf_dir / "config.yaml"
    if "aliases" in primary.read_text():  # hydra.aliases rewrite keys before composing
        raise _Deferred
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        raise _Deferred from None
    groups = {path.name for path in conf_dir.iterdir() if path.is_dir()}
    keys: list[Override] = []
    chosen: dict[str, list[str]] = {}
    for override in parsed:
        if (
            override.package is not None  # group@pkg
            or override.is_value_path  # items[0]=...
            or override.is_delete()
            or override.is_hydra_override()
        ):
            continue
        if override.key_or_group not in groups:
            keys.append(override)
            continue
        group = override.key_or_group
        chosen[group] = _choices(override)
        _check_choices(group, chosen[group], conf_dir, override)
    datasets: list[str | None]
    if "dataset" in chosen:  # dataset=glob(...) or null names none: unknown here
        datasets = [*chosen["dataset"]] or [None]
    else:
        datasets = [_default_dataset(primary, chosen, conf_dir)]
    for override in keys:
        _check_key(override, datasets)


def _choices(override: Override) -> list[str]:
    """The options a group override chooses (``optimizer=sgd,adam``: both); strings only."""
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []  # (a pattern: Hydra matches it against the options it finds)
    value = override.value()
    if override.is_sweep_override():
        value = list(override.sweep_string_iterator())
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def _options(group: str, conf_dir: Path) -> list[str]:
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def _check_choices(group: str, choices: list[str], conf_dir: Path, override: Override) -> None:
    options = _options(group, conf_dir)
    for choice in choices:
        if choice not in options:
            meant = difflib.get_close_matches(choice, options, 1)
            hint = f"did you mean {meant[0]}? " if meant else ""
            raise SweeplrError(
                f"{override.get_key_element()}={choice} is not an option of {group}; "
                f"{hint}allowed: {', '.join(options)}"
            )


def _default_dataset(primary: Path, chosen: dict[str, list[str]], conf_dir: Path) -> str | None:
    """The data set of a line that names no ``dataset=``: the primary config's default, or None
    (unknown) when an option chosen on the line may choose another."""
    for group, options in chosen.items():
        for option in options:
            if _may_choose_data(read_yaml(conf_dir / group / f"{option}.yaml")):
                return None
    primary_config = read_yaml(primary)
    if not isinstance(primary_config, dict):
        return None  # unreadable here: Hydra will say why
    for entry in primary_config.get("defaults", []):
        if isinstance(entry, dict) and isinstance(entry.get("dataset"), str):
            return entry["dataset"]
    return None


def _may_choose_data(option: dict[str, Any] | None) -> bool:
    """Whether a group's option may set the data set: it names ``dataset`` (a value, or
    ``override /dataset``), or includes a config (not a schema, nor Hydra's) that may."""
    option = option or {}
    if "dataset" in option:
        return True
    for entry in option.get("defaults", []):
        name = (entry if isinstance(entry, str) else next(iter(entry), "")).strip()
        name = name.removeprefix("override").strip()
        if name.startswith("/dataset") or not (
            name == "_self_" or "_schema@" in name or name.startswith("/hydra/")
        ):
            return True
    return False


def _check_key(override: Override, datasets: Sequence[str | None]) -> None:
    key = override.key_or_group
    typed = override.input_line.partition("=")[2] if override.input_line else None
    for dataset in datasets:
        if unknown_key(key, dataset) is not None:
            raise SweeplrError(unknown_key_message(key, typed or None, dataset))
    value_is_a_list = override.value_type == ValueType.ELEMENT and not override.is_list_extend()
    if value_is_a_list and isinstance(override.value(), list):
        takes = _one_value(key, datasets[0])
        if takes is not None:
            values = re.sub(r"\s*,\s*", ",", (typed or "").strip()[1:-1].strip())
            raise SweeplrError(
                f"{key}={typed} is a list, and {key} takes {takes}; allowed: one value "
                f"(to run each: --multirun {key}={values})"
            )


def _one_value(key: str, dataset: str | None) -> str | None:
    """What ``key`` takes, in words, when that is one value: None for a list or anything."""
    node, _, name = key.rpartition(".")
    schema = node_schema(node, dataset) if node else Config
    hint = field_types(schema).get(name) if schema is not None else None
    optional = get_origin(hint) in (Union, UnionType) and type(None) in get_args(hint)
    kinds = [h for h in get_args(hint) if h is not type(None)] if optional else [hint]
    words = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    if len(kinds) != 1 or kinds[0] not in words:
        return None
    return words[kinds[0]] + (" or null" if optional else "")
