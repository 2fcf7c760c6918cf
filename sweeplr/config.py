"""The config's schemas: typed structured configs for Hydra, and the keys they allow.

Hydra type-checks values against these dataclasses while composing (``lr=abc`` fails there);
``sweeplr.validation`` checks the keys against them and the ranges, and ``sweeplr.spec`` reads
a composed config into the frozen :class:`~sweeplr.spec.RunSpec` the runner trains from.
:func:`config_values` copies a composed config's values out of OmegaConf once, for both. Hydra
is imported only inside :func:`register_configs`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import InterpolationResultNode, ValueNode


@dataclass
class BlobsSchema:
    """The tutorial's data: two linearly separable 2-D groups, red = 0 and blue = 1."""

    name: str = "blobs"
    n_samples: int = 1000
    cluster_std: float = 1.0
    generator_seed: int = 0  # fixed, so every run sees the same points


@dataclass
class BreastCancerSchema:
    """scikit-learn's bundled Wisconsin breast-cancer data (569 rows, 30 features)."""

    name: str = "breast_cancer"


@dataclass
class IrisSchema:
    """scikit-learn's bundled iris data: three classes, multinomial logistic regression."""

    name: str = "iris"


@dataclass
class SyntheticSchema:
    """scikit-learn ``make_classification``, for scale tests."""

    name: str = "synthetic"
    n_samples: int = 10_000
    n_features: int = 20
    n_informative: int = 10
    n_classes: int = 2
    class_sep: float = 1.0
    generator_seed: int = 0


@dataclass
class CsvSchema:
    """A user's CSV or Parquet file."""

    name: str = "csv"
    path: str = MISSING
    target: str = MISSING
    features: list[str] | None = None  # null: every column but the target
    missing: str = "error"  # error | drop: what to do with rows holding NaN or empty cells
    weight: str | None = None  # a column of per-row weights (>= 0), not a feature; null: none


@dataclass
class OptimizerSchema:
    """A ``torch.optim`` optimizer; ``lr`` lives at the top level so ``lr=0.1`` works."""

    name: str = MISSING
    weight_decay: float = 0.0
    # SGD only
    momentum: float = 0.0
    nesterov: bool = False
    # Adam / AdamW only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # L-BFGS only (torch.optim.LBFGS with a strong-Wolfe line search; `epochs` is its max_iter)
    history_size: int = 100
    tolerance_grad: float = 1e-7  # converged when every gradient entry is this small
    tolerance_change: float = 1e-9  # ... or when a step changes the loss or weights this little


@dataclass
class PenaltySchema:
    """scikit-learn's regularisation: the objective is ``C * sum(row losses) + penalty(W)``.

    ``l2``: ``||W||^2 / 2``; ``l1``: ``||W||_1`` (weights become exactly zero); ``elasticnet``:
    ``l1_ratio * ||W||_1 + (1 - l1_ratio) * ||W||^2 / 2``. The bias is never penalised.
    """

    name: str = "none"  # none | l2 | l1 | elasticnet
    C: float = 1.0  # the inverse strength, as in scikit-learn: smaller C, stronger penalty
    l1_ratio: float | None = None  # elasticnet only: the L1 share, 0 <= l1_ratio <= 1


@dataclass
class SchedulerSchema:
    """A ``torch.optim.lr_scheduler`` schedule of the lr, stepped once an epoch.

    ``name`` picks it; each uses the fields its comment names (the rest are ignored).
    """

    name: str = "constant"  # constant | step | cosine | onecycle | plateau
    # constant, step, cosine: a linear warm-up (LinearLR) first, then the schedule (SequentialLR)
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.1  # the warm-up's first lr, as a fraction of lr
    step_size: int = 30  # step: multiply the lr by gamma every step_size epochs (StepLR)
    gamma: float = 0.1  # step, plateau: the factor
    min_lr: float = 0.0  # cosine: the lr it ends at (eta_min); plateau: its floor
    patience: int = 10  # plateau: logged epochs without improvement before the lr drops
    threshold: float = 1e-4  # plateau: a relative improvement smaller than this is none
    pct_start: float = 0.3  # onecycle: the share of epochs spent raising the lr to lr
    div_factor: float = 25.0  # onecycle: it starts at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: it ends at lr / div_factor / final_div_factor


@dataclass
class EarlyStoppingSchema:
    """Stop a run whose validation metric (the objective's) stopped improving."""

    patience: int | None = None  # logged epochs without improvement before stopping; null: off
    min_delta: float = 0.0  # an improvement must exceed this
    restore_best: bool = True  # keep the weights of the best logged epoch, not the last


LOGGERS = ("none", "tensorboard", "mlflow")


@dataclass
class LoggerSchema:
    """Where a run's numbers go besides its record: nowhere, TensorBoard or MLflow.

    Each tracker uses the fields its comment names (the rest are ignored).
    """

    name: str = "none"  # none | tensorboard | mlflow
    # tensorboard: the event files' folder, inside each run's directory
    subdir: str = "tensorboard"
    # mlflow: the store (sqlite:///path.db, or a folder for the file store); null: ./mlflow.db
    tracking_uri: str | None = None
    experiment_name: str = "sweeplr"  # mlflow: the experiment every run and sweep goes into


@dataclass
class Config:
    """Top-level knobs of one run (see ``conf/config.yaml`` for the why of each default)."""

    dataset: Any = MISSING
    optimizer: OptimizerSchema = MISSING
    scheduler: SchedulerSchema = MISSING
    penalty: PenaltySchema = field(default_factory=PenaltySchema)
    early_stopping: EarlyStoppingSchema = field(default_factory=EarlyStoppingSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    lr: float = 0.01
    epochs: int = 1000
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    test_size: float = 0.33
    random_state: int = 42
    val_size: float = 0.2
    stratify: bool = False
    standardize: bool = True
    cv: int | None = None  # k-fold cross-validation on the training part; null: one val split
    class_weight: Any = None  # null | balanced | {class name: weight}
    objective: str = "val_loss"
    log_every: int = 10
    progress: bool = True
    plots: bool = True
    engine: str = "batched"  # batched (closed-form, many configs at once) | reference (torch.optim)


DATASET_SCHEMAS: dict[str, type] = {
    schema().name: schema
    for schema in (BlobsSchema, BreastCancerSchema, IrisSchema, SyntheticSchema, CsvSchema)
}
# The ConfigStore's name of each schema, as conf/'s defaults lists name it.
SCHEMAS: dict[str, type] = {
    "sweeplr_schema": Config,
    "optimizer_schema": OptimizerSchema,
    "scheduler_schema": SchedulerSchema,
    "logger_schema": LoggerSchema,
    "penalty_schema": PenaltySchema,
    **{f"{name}_schema": schema for name, schema in DATASET_SCHEMAS.items()},
}


def register_configs() -> None:
    """Register the schemas so YAML files can name them in their ``defaults`` lists.

    Each is a top-level config (``- /optimizer_schema@_here_`` in ``conf/optimizer/*.yaml``), not
    an option of the group it types: stored in a group, it would be listed as a choice in
    ``--help`` and in Hydra's "Could not find" lists, and ``dataset=blobs_schema`` would run.
    Again is harmless (``sweeplr lr-find`` registers them in a process that may have already).
    """
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node, replace=True)


# --- The closed schema: a key is one the dataclasses have, `+` or not ------------------------

# Names people type for a setting sweeplr names otherwise, too far from it for difflib to find.
ALIASES = {"learning_rate": "lr"}


@cache
def field_types(schema: type) -> dict[str, Any]:
    """A schema's keys and their types, in the dataclass's order."""
    return get_type_hints(schema)


def node_schema(node: str, dataset: str | None) -> type | None:
    """The dataclass that types the top-level key ``node`` (the chosen data set's for
    ``dataset``); None for a value (``lr``), a free mapping (``class_weight``), an unknown key or
    a data set not known (``dataset`` None or not one of sweeplr's)."""
    if node == "dataset":
        return DATASET_SCHEMAS.get(dataset) if dataset is not None else None
    hint = field_types(Config).get(node)
    return hint if isinstance(hint, type) and is_dataclass(hint) else None


def unknown_key(key: str, dataset: str | None) -> str | None:
    """The first part of the dotted ``key`` the schema has not got (``optimizer.lr`` of
    ``optimizer.lr.x``), or None when it has it. Below a value (``class_weight.red``,
    ``optimizer.betas.0``) the keys are Hydra's to type-check, as are a data set's when
    ``dataset`` is None."""
    head, _, rest = key.partition(".")
    if head not in field_types(Config):
        return head
    schema = node_schema(head, dataset)
    sub = rest.partition(".")[0]
    if schema is None or not rest or sub in field_types(schema):
        return None
    return f"{head}.{sub}"


def unknown_key_message(key: str, value: str | None, dataset: str | None) -> str:
    """One line on ``key`` (as typed, with its ``value`` as typed if any), which the schema has
    not got: the setting meant (``did you mean lr? (lr=0.01)``), or the keys allowed there."""
    bad = unknown_key(key, dataset) or key
    node, _, name = bad.rpartition(".")
    schema = node_schema(node, dataset) if node else Config
    if node == "dataset" and dataset is not None:
        owners = [f"dataset={n}" for n, s in DATASET_SCHEMAS.items() if name in field_types(s)]
        if owners:
            add = owners[0] if len(owners) == 1 else "one of them"
            return (
                f"{key} is an option of {' or '.join(owners)}, not of dataset={dataset} (add {add})"
            )
    meant = _closest(key, node, name, dataset)
    if meant is not None:
        shown = f" ({meant}={value})" if value is not None else ""
        return f"{key} is not a setting; did you mean {meant}?{shown}"
    where = f" of dataset={dataset}" if node == "dataset" else f" of {node}" if node else ""
    return f"{key} is not a setting{where}; allowed: {', '.join(field_types(schema))}"


def _closest(key: str, node: str, name: str, dataset: str | None) -> str | None:
    """The key meant by ``key``, whose unknown part is ``node.name``: a top-level value of that
    name (``optimizer.lr``, ``learning_rate`` -> ``lr``), else the most alike by difflib: a
    sibling, then a top-level value; without a ``node``, any key (``momentum`` ->
    ``optimizer.momentum``, ``opimizer.eps`` -> ``optimizer.eps``)."""
    name = ALIASES.get(name, name)
    values = [k for k in field_types(Config) if node_schema(k, dataset) is None]
    if name in values:
        return name  # lr, wherever it was put
    if not node:
        return next(iter(difflib.get_close_matches(key, _keys(dataset), 1)), None)
    schema = node_schema(node, dataset)
    siblings = difflib.get_close_matches(name, field_types(schema) if schema else (), 1)
    if siblings:
        return f"{node}.{siblings[0]}"
    return next(iter(difflib.get_close_matches(name, values, 1)), None)


def _keys(dataset: str | None) -> list[str]:
    """Every key a config may hold, dotted: ``lr``, ``optimizer``, ``optimizer.momentum``, ..."""
    keys = []
    for node in field_types(Config):
        keys.append(node)
        schema = node_schema(node, dataset)
        if schema is not None:
            keys.extend(f"{node}.{name}" for name in field_types(schema))
    return keys


class _Values(dict):
    """A plain copy of a config node, read like the node (``cfg.optimizer.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _values(value: Any) -> Any:
    if isinstance(value, dict):
        return _Values({key: _values(item) for key, item in value.items()})
    return value


def plain_dicts(value: Any) -> Any:
    """``config_values``' copy as plain dicts and lists (what ``model.pt`` keeps)."""
    if isinstance(value, dict):
        return {key: plain_dicts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_dicts(item) for item in value]
    return value


def config_values(cfg: Any) -> Any:
    """A composed config's run keys as plain Python values (its Hydra node left out), read like
    the config (``values.optimizer.name``).

    Validation reads some 60 values; from a DictConfig each read costs 10-20 us of OmegaConf's
    machinery, and ``OmegaConf.to_container`` about 0.8 ms a config: a sweep pays it for every
    job, once when its launch is batched and once when it runs. :func:`_node_values` reads the
    same values in a tenth of that time, where they are plain; anything else is read by
    OmegaConf. ``cfg`` may also be values already (anything read like them).
    """
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        plain = {
            name: _node_values(node)
            for name, node in cfg.__dict__["_content"].items()
            if name != "hydra"  # Hydra's node is large and none of the run's values
        }
    except _NotPlain:
        plain = {}
        for name in cfg:  # (not `"hydra" in cfg`: a miss costs a key-suggestion search)
            if name == "hydra":
                continue
            value = cfg[name]
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
            plain[name] = value
    return _values(plain)


def data_path_from(values: Any, start_dir: str | Path) -> Any:
    """``values`` (:func:`config_values`') with a CSV data set's relative ``dataset.path`` read
    from ``start_dir``, the folder the command started in, when the job runs in another
    (``hydra.job.chdir=true``): the path was typed there, as tracker paths are. Else
    ``values`` itself, so a record keeps the path as typed."""
    dataset = values.get("dataset")
    if not isinstance(dataset, Mapping) or dataset.get("name") != "csv":
        return values
    path = dataset.get("path")
    if not isinstance(path, str) or path == MISSING or Path(path).is_absolute():
        return values
    if Path.cwd().resolve() == Path(start_dir).resolve():
        return values
    return _values({**values, "dataset": {**dataset, "path": str(Path(start_dir) / path)}})


class _NotPlain(Exception):
    """A config value that only OmegaConf reads right (an interpolation, an enum, ...)."""


def _node_values(node: Any) -> Any:
    """What ``OmegaConf.to_container(node, resolve=True)`` gives for a node that holds plain
    values only (dicts, lists, strings, numbers, booleans, nulls, ``???``), read straight from
    OmegaConf's nodes; :class:`_NotPlain` for anything else."""
    if isinstance(node, DictConfig | ListConfig):
        content = node.__dict__["_content"]
        if isinstance(content, dict):
            return {key: _node_values(child) for key, child in content.items()}
        if isinstance(content, list):
            return [_node_values(child) for child in content]
        raise _NotPlain  # a null, missing or interpolated container
    if not isinstance(node, ValueNode) or isinstance(node, InterpolationResultNode):
        raise _NotPlain
    value = node._value()
    if value is not None and type(value) not in (str, int, float, bool):
        raise _NotPlain
    if type(value) is str and "${" in value:
        raise _NotPlain
    return value
