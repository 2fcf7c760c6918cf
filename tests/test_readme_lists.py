"""The README's lists against the code: config groups and their options, the run record's keys.

tests/test_readme.py runs the README's commands; these read its lists, which no command prints.
"""

from __future__ import annotations

import json
import re

import torch
import yaml

from sweeplr.records import write_failure
from sweeplr.schema import HYPERPARAMETERS
from tests.conftest import CONF_DIR, ROOT, train_and_record

README = (ROOT / "README.md").read_text()
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")  # a backticked plain name, not a path or call


def paragraph(start: str) -> str:
    """The README's text from ``start`` to the next blank line."""
    at = README.index(start)
    return README[at : README.index("\n\n", at)]


def record_table() -> dict[str, str]:
    """The run record's ``metrics.json`` table: each row's key cell -> its meaning."""
    section = README[README.index("## The run record") :]
    table = section[section.index("| key |") :]
    rows = table[: table.index("\n\n")].splitlines()[2:]
    return {row.split(" | ")[0].strip("| "): row.split(" | ")[1] for row in rows}


def test_every_config_group_and_option_is_listed() -> None:
    listed = {}
    start = README.index("Config groups mirror the code")
    for line in README[start : README.index("Top-level knobs", start)].splitlines():
        found = re.match(r"- `(\w+)`[^:]*: (.*)", line)
        if found:
            listed[found[1]] = NAME.findall(found[2])
    on_disk = {
        folder.name: sorted(path.stem for path in folder.glob("*.yaml"))
        for folder in CONF_DIR.iterdir()
        if folder.is_dir() and folder.name != "hydra"
    }
    assert {group: sorted(options) for group, options in listed.items()} == on_disk
    # conf/hydra/ adds options to Hydra's own groups (a sampler): each is named in the README
    added = sorted((CONF_DIR / "hydra").rglob("*.yaml"))
    assert added and all(f"`{path.stem}`" in README for path in added)
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    for entry in defaults:  # the README names a group's default first
        if isinstance(entry, dict) and next(iter(entry.values())) is not None:
            [(group, default)] = entry.items()
            assert listed[group][0] == default, group


def test_the_record_table_names_every_key_a_record_can_have(small_cfg, tmp_path) -> None:
    trial = {"job": {"num": 0}, "overrides": [], "trial": {"number": 0, "study": "s"}}
    keys: set[str] = set()
    for k, overrides in enumerate(([], ["cv=3"], ["penalty=l1", "penalty.C=0.1"])):
        train_and_record(small_cfg(*overrides), tmp_path / str(k), extra=trial)
        keys |= set(json.loads((tmp_path / str(k) / "metrics.json").read_text()))
    write_failure(tmp_path / "failed", "lr=-1 is invalid", trial)
    failed = json.loads((tmp_path / "failed" / "metrics.json").read_text())
    keys |= set(failed)
    table = record_table()
    documented = {key for cell in table for key in NAME.findall(cell)}
    assert documented == keys
    status = table["`status`"]
    assert set(NAME.findall(status.split("then")[1])) == set(failed) - {"schema", "status"}


def test_the_record_table_names_every_hyperparameter() -> None:
    assert NAME.findall(record_table()["`hyperparameters`"]) == list(HYPERPARAMETERS)


def test_history_and_model_files_are_described_as_written(small_cfg, tmp_path) -> None:
    train_and_record(small_cfg(), tmp_path)
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert f"`{header}`" in paragraph("`history.csv`: one row")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    described = NAME.findall(paragraph("`model.pt` (`torch.load"))
    assert sorted(described) == sorted(payload)
