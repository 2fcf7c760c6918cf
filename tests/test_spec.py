"""RunSpec: every YAML of conf/ builds one, its tree holds the config's values, and the batch key
and record columns follow its fields' metadata."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import pytest

from sweeplr.config import (
    Config,
    EarlyStoppingSchema,
    OptimizerSchema,
    PenaltySchema,
    SchedulerSchema,
    field_types,
)
from sweeplr.schema import HYPERPARAMETERS
from sweeplr.spec import RunSpec, batch_key, data_key, run_spec
from tests.conftest import CONF_DIR, compose_config
from tests.test_config_groups import NEEDS, PLUGINS

# conf/config.yaml alone, then every option of every group.
OPTIONS = ["config", *sorted(f"{p.parent.name}/{p.stem}" for p in CONF_DIR.glob("*/*.yaml"))]
# The spec's groups and the config node each is read from (None: the top level).
GROUPS = {
    "data": None,
    "optimizer": "optimizer",
    "penalty": "penalty",
    "schedule": "scheduler",
    "early_stopping": "early_stopping",
}
# Config keys that change how a run is shown or logged, never its numbers.
NOT_IN_SPEC = {"progress", "plots", "logger"}


def _composed(option: str) -> tuple[Any, tuple[str, ...]]:
    plugin = PLUGINS.get(option)
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{option} needs {plugin} (pip install -e '.[cluster]')")
    if option == "config":
        return compose_config(), ()
    group, name = option.split("/")
    overrides = (f"{group}={name}", *NEEDS.get(option, NEEDS.get(group, ())))
    return compose_config(*overrides), overrides


def _leaves(spec: RunSpec) -> list[tuple[str | None, str, dataclasses.Field[Any], Any]]:
    """(spec group or None, field name, field, value) of every value in the spec."""
    out = []
    for top in dataclasses.fields(spec):
        value = getattr(spec, top.name)
        if top.name in GROUPS:
            out += [
                (top.name, f.name, f, getattr(value, f.name)) for f in dataclasses.fields(value)
            ]
        else:
            out.append((None, top.name, top, value))
    return out


@pytest.mark.parametrize("option", OPTIONS)
def test_every_conf_yaml_builds_a_spec_holding_its_values(option: str) -> None:
    cfg, overrides = _composed(option)
    spec = run_spec(cfg, overrides)
    for group, name, spec_field, value in _leaves(spec):
        if spec_field.metadata["read"] is not None:
            continue  # worked out from several values (val_size with cv, l1_ratio, ...)
        node = cfg if GROUPS.get(group) is None else cfg[GROUPS[group]]
        expected = node[name]
        assert (list(value) if isinstance(value, tuple) else value) == expected, (group, name)
        assert type(value) is type(expected) or expected is None or name == "betas", name
    assert spec.data.dataset == dict(cfg.dataset)
    assert spec.optimizer.name == cfg.optimizer.name and spec.schedule.name == cfg.scheduler.name


def test_every_key_of_the_schemas_is_a_field_of_the_spec() -> None:
    """A new config key needs its spec field (or it would change nothing), and a field its key."""
    spec = run_spec(compose_config())
    top = {name for group, name, _, _ in _leaves(spec) if group in (None, "data")}
    assert top == set(field_types(Config)) - NOT_IN_SPEC - set(GROUPS.values())
    schemas = {
        "optimizer": OptimizerSchema,
        "penalty": PenaltySchema,
        "schedule": SchedulerSchema,
        "early_stopping": EarlyStoppingSchema,
    }
    for group, schema in schemas.items():
        names = {name for g, name, _, _ in _leaves(spec) if g == group}
        assert names == set(field_types(schema)), group


def test_the_record_columns_are_the_fields_metadata() -> None:
    spec = run_spec(compose_config("optimizer=adam", "penalty=elasticnet", "penalty.l1_ratio=0.3"))
    columns = []
    for _, _, spec_field, _ in _leaves(spec):
        column = spec_field.metadata["column"]
        columns += list(column) if isinstance(column, tuple) else [column] if column else []
    assert sorted(columns) == sorted(HYPERPARAMETERS)  # each column shown by one field
    shown = spec.hyperparameters()
    assert list(shown) == list(HYPERPARAMETERS)
    assert (shown["beta1"], shown["beta2"]) == spec.optimizer.betas
    assert (shown["C"], shown["l1_ratio"]) == (1.0, 0.3)
    plain = run_spec(compose_config()).hyperparameters()
    assert (plain["C"], plain["l1_ratio"], plain["dataset"]) == (None, None, "blobs")


def _changed(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return tuple(v / 2 for v in value)
    if isinstance(value, dict):
        return {**value, "n_samples": 5}
    return 3  # None


@pytest.mark.parametrize("batch_size", ["null", "32"])
def test_the_batch_key_holds_exactly_the_shared_fields(batch_size: str) -> None:
    spec = run_spec(compose_config(f"batch_size={batch_size}"))
    for group, name, spec_field, value in _leaves(spec):
        if group is None:
            other = dataclasses.replace(spec, **{name: _changed(value)})
        else:
            part = dataclasses.replace(getattr(spec, group), **{name: _changed(value)})
            other = dataclasses.replace(spec, **{group: part})
        data = group == "data" or name == "device"
        shared = data or spec_field.metadata["shared"] is True
        if name == "seed":  # it orders the mini-batches, which a pass shares
            shared = batch_size != "null"
        if name == "batch_size":
            shared = True
        assert (batch_key(other) != batch_key(spec)) == shared, (group, name)
        assert (data_key(other) != data_key(spec)) == data, (group, name)
