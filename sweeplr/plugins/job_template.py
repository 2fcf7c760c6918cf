"""What the jobs of one launch composed alike share (`sweeplr.plugins.job_runner`): one
Hydra node, the composed config as pickled bytes, and the YAML of ``.hydra/*.yaml`` rendered
once, block by block (a YAML mapping's entries are emitted independently, so a job's files are
the shared blocks with its own fields' blocks put in).
"""

from __future__ import annotations

import copy
import functools
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from omegaconf import Container, DictConfig, OmegaConf, flag_override, open_dict
from omegaconf._utils import get_omega_conf_dumper, is_float, is_int, yaml_is_bool
from omegaconf.basecontainer import BaseContainer

# The Hydra node's entries that differ between two jobs of one template, and within them the
# fields that do; every other entry is the same object, and the same YAML, for every job.
JOB_FIELDS = {"job": ("id", "num", "env_set"), "runtime": ("output_dir",), "overrides": None}
# What a job's log configuration may interpolate for the set-up to be re-pointed, not redone.
LOG_INTERPOLATION = re.compile(r"\$\{hydra\.(runtime\.output_dir|job\.name)\}")
NODE_REFERENCE = re.compile(r"\$\{(hydra\.job\.[\w.]+)\}")  # a job field, as `${hydra.job.num}`
NOW = re.compile(r"\$\{now:[^${}]*\}")  # Hydra's `now` resolver: cached, one value a run
# An interpolation that reads the Hydra node only: `${hydra.job.num}`, `${hydra:runtime.cwd}`,
# and Hydra's `${hydra_override_dirname:}` without options (its default `job.override_dirname`:
# the node's task overrides, which are checked for interpolations of their own per job).
HYDRA_REFERENCE = re.compile(r"\$\{(?:hydra[.:][^${}]*|hydra_override_dirname:)\}")

Op = Callable[[DictConfig], None]  # a value override, applied as composition applies it


def dump_yaml(data: Any) -> str:
    """``OmegaConf.to_yaml``'s YAML of plain data (its dumper and its options)."""
    if isinstance(data, list) and (lines := _simple_lines(0, None, data)) is not None:
        return lines
    if isinstance(data, dict) and data:
        parts = [_simple_lines(0, key, value) for key, value in data.items()]
        if None not in parts:
            return "".join(parts)  # type: ignore[arg-type]
    return yaml.dump(
        data,
        default_flow_style=False,
        allow_unicode=True,
        sort_keys=False,
        Dumper=get_omega_conf_dumper(),
    )


def plain(node: Any) -> Any:
    """A config node as ``OmegaConf.to_yaml`` sees it (interpolations kept as written)."""
    return BaseContainer._to_content(
        node, resolve=False, throw_on_missing=False, enum_to_str=True, encode_missing_literals=True
    )


def nested_block(path: Sequence[str], key: str, value: Any) -> str:
    """The YAML lines of ``key: value`` inside the mappings ``path``, as a dump of the whole
    tree emits them: dumped at that depth (line breaks depend on the column), header cut."""
    if (lines := _simple_lines(len(path), key, value)) is not None:
        return lines
    tree: Any = {key: value}
    for name in reversed(path):
        tree = {name: tree}
    text = dump_yaml(tree)
    for _ in path:
        text = text[text.index("\n") + 1 :]
    return text


# What a job's own YAML mostly holds (its number, folder, overrides, env_set entries) is spelt
# here without PyYAML, whose dump costs ~0.1 ms a call in Python code even for one line (7 calls
# a job). Only text the emitter certainly writes plain is spelt so: these characters, no
# leading indicator, and resolved as a string by YAML and by OmegaConf's representer (which
# single-quotes what reads as a bool or number: only all-digit strings are quoted here).
# Anything else -- floats, nested lists, other characters -- is dumped as before; a test
# compares both spellings over tricky values.
PLAIN_TEXT = re.compile(r"[A-Za-z0-9_/+][A-Za-z0-9_./=+-]*\Z")
STRING_TAG = "tag:yaml.org,2002:str"


def _simple_scalar(value: Any) -> str | None:
    """``value`` as the YAML dump spells it in block context, or None: not known so."""
    if value is None or type(value) is bool:
        return "null" if value is None else "true" if value else "false"
    if type(value) is int:
        return str(value)
    if type(value) is not str or len(value) > 100 or not PLAIN_TEXT.match(value):
        return None
    if yaml_is_bool(value) or is_int(value) or is_float(value):  # OmegaConf quotes these
        return f"'{value}'" if value.isascii() and value.isdigit() else None
    resolved = _dumper_resolver().resolve(yaml.ScalarNode, value, (True, False))
    return value if resolved == STRING_TAG else None


@functools.cache
def _dumper_resolver() -> yaml.resolver.BaseResolver:
    """What OmegaConf's dumper resolves a plain scalar to (its implicit resolvers)."""
    resolver = yaml.resolver.Resolver()
    resolver.yaml_implicit_resolvers = get_omega_conf_dumper().yaml_implicit_resolvers
    return resolver


def _simple_lines(depth: int, key: str | None, value: Any) -> str | None:
    """The block YAML of ``key: value`` at ``depth`` (``key`` None: a top-level list), when
    every key and scalar in it is `_simple_scalar` and lists hold scalars only; else None."""
    indent = "  " * depth
    head = ""
    if key is not None:
        if type(key) is not str or _simple_scalar(key) != key:
            return None
        head = f"{indent}{key}:"
    if isinstance(value, dict | list) and not value:
        return f"{head} {'{}' if isinstance(value, dict) else '[]'}\n" if head else None
    if isinstance(value, list):
        items = [_simple_scalar(item) for item in value]
        if None in items:
            return None
        return (f"{head}\n" if head else "") + "".join(f"{indent}- {item}\n" for item in items)
    if isinstance(value, dict):
        if not head:
            return None
        parts = [_simple_lines(depth + 1, k, v) for k, v in value.items()]
        return None if None in parts else f"{head}\n" + "".join(parts)  # type: ignore[arg-type]
    spelt = _simple_scalar(value)
    return None if spelt is None or not head else f"{head} {spelt}\n"


def mapping_yaml(path: Sequence[str], items: Mapping[str, Any], blocks: Mapping[str, str]) -> str:
    """The YAML of the mapping ``items`` at ``path``, its own header line included: the entries
    in ``blocks`` as rendered there, the others rendered now."""
    if not items:
        return nested_block(path[:-1], path[-1], {})
    header = f"{'  ' * (len(path) - 1)}{path[-1]}:\n"
    return header + "".join(
        blocks[key] if key in blocks else nested_block(path, key, value)
        for key, value in items.items()
    )


class JobTemplate:
    """What the jobs of one composition share: the composed config, one Hydra node, YAML.

    ``composed`` is the config Hydra composed for the template's first job (before its job
    fields are set); the template owns it from now on.
    """

    def __init__(self, composed: DictConfig) -> None:
        self.snapshot_bytes = pickle.dumps(composed)  # for `JobReturn.hydra_cfg`, when read
        hydra = composed.hydra
        task = copy.deepcopy(composed)
        with open_dict(task):
            del task["hydra"]
        self.task_bytes = pickle.dumps(task)
        self.task_keys = tuple(str(key) for key in task)
        self.task_blocks = {key: self._task_block(task, key) for key in self.task_keys}
        # The job's whole config, but for a stand-in where the shared Hydra node goes.
        with open_dict(composed), flag_override(composed, "readonly", False):
            composed["hydra"] = {}
        self.full_bytes = pickle.dumps(composed)
        self.hydra = hydra
        self.hydra_plain: dict[str, Any] = plain(hydra)
        self.base_env: dict[str, Any] = self.hydra_plain["job"]["env_set"]
        self.env_copy: list[str] = self.hydra_plain["job"]["env_copy"]
        self.hydra_root = DictConfig({})  # HydraConfig's masked copy, sharing the node
        with flag_override(self.hydra_root, "no_deepcopy_set_nodes", True):
            self.hydra_root["hydra"] = hydra
        # Resolvers' cached values live in the root: `${now:...}` in `hydra.sweep.dir` must read
        # the time the sweep resolved (Hydra copies it into every job's composition), not now.
        OmegaConf.copy_cache(from_config=composed, to_config=self.hydra_root)
        self.hydra_blocks = {
            key: nested_block(("hydra",), key, value)
            for key, value in self.hydra_plain.items()
            if key not in JOB_FIELDS
        }
        self.field_blocks: dict[str, dict[str, str]] = {
            entry: {
                key: nested_block(("hydra", entry), key, value)
                for key, value in self.hydra_plain[entry].items()
                if key not in fields
            }
            for entry, fields in JOB_FIELDS.items()
            if fields is not None
        }
        # The job log configuration but for its files' names (Hydra resolves both per job), and
        # those names as written; None when a job's configuration may differ in more than that.
        self.log_parts: dict[str, Any] | None = None
        self.log_files: dict[str, str] = {}
        raw = self._log_config()
        name = self.hydra_plain["job"].get("name")
        if raw is not None and not self.hydra_plain.get("verbose") and "${" not in str(name):
            rest = without_files(raw)
            if "${" not in repr(rest):
                self.log_parts, self.log_files = rest, file_handlers(raw)
        self._constants: dict[str, Any] = {}
        # Whether the Hydra node reads nothing outside itself: then what a job's Hydra side
        # resolves to needs no task values, and `hydra_only` serves it (`whole_config_needed`).
        self.self_contained = not refers_outside_hydra(self.hydra_plain)
        self.held: dict[str, Any] = {}  # the job fields the shared node holds now (set_fields)

    @staticmethod
    def _task_block(task: DictConfig, key: str) -> str:
        """``key``'s lines in ``OmegaConf.to_yaml(task)`` (a top-level entry's own dump)."""
        node = task._get_node(key)
        if isinstance(node, Container):
            return dump_yaml({key: plain(node)})
        value = node._value()  # type: ignore[union-attr]
        if value is None or type(value) in (str, int, float, bool):
            return dump_yaml({key: value})
        return OmegaConf.to_yaml(OmegaConf.masked_copy(task, [key]))  # an enum, say

    def _log_config(self) -> dict[str, Any] | None:
        """The job log configuration with its interpolations as written, when every one of
        them is the log file's folder or the job's name; else None."""
        raw = self.hydra_plain.get("job_logging")
        if not isinstance(raw, dict) or raw.get("disable_existing_loggers", True):
            return None
        strings: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, str):
                strings.append(value)

        walk(raw)
        if any("${" in LOG_INTERPOLATION.sub("", text) for text in strings):
            return None
        return raw

    def select(self, config: DictConfig, key: str) -> Any:
        """``OmegaConf.select(config, key)`` for the job whose fields the shared node holds.

        OmegaConf parses an interpolation's grammar at every read (bench/README.md): a value
        whose only interpolations are ``${now:...}`` (cached for the whole run by the resolver)
        is the same for every job of the template, read once; ``${hydra.job.num}`` and the like
        are read from the node they point to.
        """
        raw = self._raw(key)
        if isinstance(raw, str) and (target := NODE_REFERENCE.fullmatch(raw)):
            return OmegaConf.select(config, target[1])
        if isinstance(raw, str) and not NOW.sub("", raw).count("${"):
            if key not in self._constants:
                self._constants[key] = OmegaConf.select(config, key)
            return self._constants[key]
        return OmegaConf.select(config, key)

    def constant(self, path: str) -> Any:
        """The Hydra node's value at ``path`` (below ``hydra.``), the same for every job of the
        template: read once from the plain copy when written without interpolation."""
        raw = self._raw(f"hydra.{path}")
        if isinstance(raw, str) and "${" in raw:
            return OmegaConf.select(self.hydra, path)
        return raw

    def _raw(self, key: str) -> Any:
        """The Hydra node's value at ``key`` as written (interpolations unresolved), or None."""
        head, _, path = key.partition(".")
        value: Any = self.hydra_plain if head == "hydra" else None
        for name in path.split("."):
            value = value.get(name) if isinstance(value, dict) else None
        return value

    def task_config(self, ops: Sequence[Op]) -> DictConfig:
        """A fresh copy of the composed task config with ``ops`` applied."""
        cfg = pickle.loads(self.task_bytes)
        for op in ops:
            op(cfg)
        return cfg

    def full_config(self, ops: Sequence[Op]) -> DictConfig:
        """A fresh copy of the job's whole config: task values with ``ops``, the shared node."""
        cfg = pickle.loads(self.full_bytes)
        for op in ops:
            op(cfg)
        # In the stand-in's place, without a copy (OmegaConf's own `no_deepcopy_set_nodes` way
        # flips flags on the config, and every flag change re-reads the flags of all the
        # hundreds of nodes below). Not re-reading the node's cached flags is sound: every
        # job's config root is unpickled from the same bytes, so what the node inherits is the
        # same.
        cfg.__dict__["_content"]["hydra"] = self.hydra
        self.hydra.__dict__["_parent"] = cfg
        return cfg

    def hydra_only(self) -> DictConfig:
        """The shared Hydra node in a root of its own, without the task values: all that a job's
        Hydra side reads when `whole_config_needed` says so (no deep copy, no unpickling)."""
        self.hydra.__dict__["_parent"] = self.hydra_root  # (full_config re-parents it per job)
        return self.hydra_root

    def whole_config_needed(
        self, overrides: Sequence[str], env: Mapping[str, Any], task_values_read: bool
    ) -> bool:
        """Whether a job must get its whole config (task values and the Hydra node) rather than
        `hydra_only`: when a callback's job hooks may read task values (``task_values_read``),
        or anything on the Hydra side may interpolate them -- the node itself, or the job's
        overrides or ``env_set`` entries (strings OmegaConf resolves when read)."""
        return (
            task_values_read
            or not self.self_contained
            or any("${" in text for text in overrides)
            or any("${" in str(value) for value in env.values())
        )

    def task_yaml(self, task_cfg: DictConfig, touched: set[str] | None) -> str:
        """``config.yaml``: the template's blocks, but for the keys the job's values touched."""
        if touched is None or tuple(task_cfg.keys()) != self.task_keys:
            return OmegaConf.to_yaml(task_cfg)
        if not self.task_keys:
            return "{}\n"
        return "".join(
            self._task_block(task_cfg, key) if key in touched else self.task_blocks[key]
            for key in self.task_keys
        )

    def hydra_yaml(self, fields: Mapping[str, Mapping[str, Any]]) -> str:
        """``hydra.yaml`` of a job whose job fields are ``fields`` (entry -> plain values)."""
        parts = ["hydra:\n"]
        for key, value in self.hydra_plain.items():
            if key not in JOB_FIELDS:
                parts.append(self.hydra_blocks[key])
            elif JOB_FIELDS[key] is None:  # every value the job's own
                parts.append(nested_block(("hydra",), key, {k: fields[key][k] for k in value}))
            else:
                parts.append(
                    mapping_yaml(("hydra", key), {**value, **fields[key]}, self.field_blocks[key])
                )
        return "".join(parts)


def refers_outside_hydra(value: Any) -> bool:
    """Whether plain config data holds an interpolation other than of the Hydra node itself
    or of ``${now:...}`` (a task value, an environment variable, any other resolver)."""
    if isinstance(value, dict):
        return any(refers_outside_hydra(item) for item in value.values())
    if isinstance(value, list):
        return any(refers_outside_hydra(item) for item in value)
    return isinstance(value, str) and "${" in HYDRA_REFERENCE.sub("", NOW.sub("", value))


def file_handlers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A logging configuration's file handlers: name -> file name as written."""
    return {
        name: handler["filename"]
        for name, handler in config.get("handlers", {}).items()
        if isinstance(handler, dict) and "filename" in handler
    }


def without_files(config: Mapping[str, Any]) -> dict[str, Any]:
    """A logging configuration but for its handlers' file names."""
    handlers = {
        name: {k: v for k, v in handler.items() if k != "filename"}
        if isinstance(handler, dict)
        else handler
        for name, handler in config.get("handlers", {}).items()
    }
    return {**config, "handlers": handlers}
