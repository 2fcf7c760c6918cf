"""Typed structured configs, their range checks, and :class:`RunSpec`, what a run is made of.

Hydra type-checks values against these dataclasses while composing (``lr=abc`` fails there);
:func:`run_spec` checks that every key is one they have (Hydra lets ``+key=...`` add any), the
ranges and the cross-field rules that types cannot express, before any data is loaded, and
returns the run's settings as one frozen value the runner trains from. Hydra is imported only
inside :func:`register_configs`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import cache
from typing import Any, get_type_hints

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import InterpolationResultNode, ValueNode

from sweeplr.errors import SweeplrError
from sweeplr.schema import (
    DATASETS,
    ENGINES,
    HYPERPARAMETERS,
    OBJECTIVES,
    OPTIMIZERS,
    PENALTIES,
    SCHEDULERS,
    watched_metric,
)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class BlobsConfig:
    """The tutorial's data: two linearly separable 2-D groups, red = 0 and blue = 1."""

    name: str = "blobs"
    n_samples: int = 1000
    cluster_std: float = 1.0
    generator_seed: int = 0  # fixed, so every run sees the same points


@dataclass
class BreastCancerConfig:
    """scikit-learn's bundled Wisconsin breast-cancer data (569 rows, 30 features)."""

    name: str = "breast_cancer"


@dataclass
class IrisConfig:
    """scikit-learn's bundled iris data: three classes, multinomial logistic regression."""

    name: str = "iris"


@dataclass
class SyntheticConfig:
    """scikit-learn ``make_classification``, for scale tests."""

    name: str = "synthetic"
    n_samples: int = 10_000
    n_features: int = 20
    n_informative: int = 10
    n_classes: int = 2
    class_sep: float = 1.0
    generator_seed: int = 0


@dataclass
class CsvConfig:
    """A user's CSV or Parquet file."""

    name: str = "csv"
    path: str = MISSING
    target: str = MISSING
    features: list[str] | None = None  # null: every column but the target
    missing: str = "error"  # error | drop: what to do with rows holding NaN or empty cells
    weight: str | None = None  # a column of per-row weights (>= 0), not a feature; null: none


@dataclass
class OptimizerConfig:
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
class PenaltyConfig:
    """scikit-learn's regularisation: the objective is ``C * sum(row losses) + penalty(W)``.

    ``l2``: ``||W||^2 / 2``; ``l1``: ``||W||_1`` (weights become exactly zero); ``elasticnet``:
    ``l1_ratio * ||W||_1 + (1 - l1_ratio) * ||W||^2 / 2``. The bias is never penalised.
    """

    name: str = "none"  # none | l2 | l1 | elasticnet
    C: float = 1.0  # the inverse strength, as in scikit-learn: smaller C, stronger penalty
    l1_ratio: float | None = None  # elasticnet only: the L1 share, 0 <= l1_ratio <= 1


@dataclass
class SchedulerConfig:
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
class EarlyStoppingConfig:
    """Stop a run whose validation metric (the objective's) stopped improving."""

    patience: int | None = None  # logged epochs without improvement before stopping; null: off
    min_delta: float = 0.0  # an improvement must exceed this
    restore_best: bool = True  # keep the weights of the best logged epoch, not the last


LOGGERS = ("none", "tensorboard", "mlflow")


@dataclass
class LoggerConfig:
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
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
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
    for schema in (BlobsConfig, BreastCancerConfig, IrisConfig, SyntheticConfig, CsvConfig)
}
# The ConfigStore's name of each schema, as conf/'s defaults lists name it.
SCHEMAS: dict[str, type] = {
    "sweeplr_schema": Config,
    "optimizer_schema": OptimizerConfig,
    "scheduler_schema": SchedulerConfig,
    "logger_schema": LoggerConfig,
    "penalty_schema": PenaltyConfig,
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


# The overrides of the run being validated, by key: a message quotes a value as it was typed
# (`lr=1e-400`), not as the config holds it (`lr=0.0`).
_typed: ContextVar[Mapping[str, str] | None] = ContextVar("typed_overrides", default=None)


def typed_values(overrides: Sequence[str]) -> dict[str, str]:
    """``["lr=1e-400", "+x.y=2"]`` -> ``{"lr": "1e-400", "x.y": "2"}``."""
    typed = {}
    for text in overrides:
        key, sep, value = text.lstrip("+~").partition("=")
        if sep:
            typed[key] = value
    return typed


def _shown(key: str, value: Any) -> str:
    """``value`` as the user typed it for ``key``, when an override set it."""
    return (_typed.get() or {}).get(key, str(value))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SweeplrError(message)


def _require(ok: bool, key: str, value: Any, allowed: str, problem: str = "is invalid") -> None:
    """One line naming ``key=value`` as typed, what is wrong with it and what is allowed."""
    if not ok:  # (the line is made only then: a sweep validates every job's 60-odd values)
        raise SweeplrError(f"{key}={_shown(key, value)} {problem}; allowed: {allowed}")


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
    return hint if is_dataclass(hint) else None


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


def _validate_keys(cfg: Any) -> None:
    """A key the schema has not got is a mistake, added with `+` or not: it would change nothing
    (``+optimizer.lr=0.5`` trained with lr=0.01). Named as typed when an override added it."""
    if not isinstance(cfg, Mapping):
        return
    dataset = cfg.get("dataset")
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    for node in cfg:
        if node == "hydra":
            continue
        value = cfg[node]
        subs = [f"{node}.{sub}" for sub in value] if isinstance(value, Mapping) else []
        for key in (node, *subs):
            bad = unknown_key(key, name)
            if bad is not None:
                typed = _typed.get() or {}
                key = next((k for k in typed if k == bad or k.startswith(f"{bad}.")), bad)
                raise SweeplrError(unknown_key_message(key, typed.get(key), name))


def _fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low = "0 <= " if allow_zero else "0 < "
    ok = (0 <= value < 1) if allow_zero else (0 < value < 1)
    _require(ok, name, value, f"{low}{name} < 1", "is out of range")


def validate(cfg: Any) -> None:
    """Raise :class:`SweeplrError` with one line for the first invalid value in ``cfg``.

    ``cfg`` is a composed DictConfig (or any object with the same attributes).
    """
    _validate_keys(cfg)
    _require(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", cfg.lr, "a finite number > 0")
    _require(cfg.epochs >= 1, "epochs", cfg.epochs, "an integer >= 1")
    _require(
        cfg.batch_size is None or cfg.batch_size >= 1,
        "batch_size",
        cfg.batch_size,
        "null (full batch) or an integer >= 1",
    )
    _require(
        bool(DEVICE_PATTERN.match(str(cfg.device))),
        "device",
        cfg.device,
        "auto, cpu, cuda, cuda:N, mps",
    )
    _fraction("test_size", cfg.test_size, allow_zero=False)
    _fraction("val_size", cfg.val_size, allow_zero=True)
    _require(cfg.engine in ENGINES, "engine", cfg.engine, ", ".join(ENGINES), "is unknown")
    _require(cfg.log_every >= 1, "log_every", cfg.log_every, "an integer >= 1")
    _require(
        cfg.objective in OBJECTIVES, "objective", cfg.objective, ", ".join(OBJECTIVES), "is unknown"
    )
    _validate_folds(cfg)
    _check(
        not (cfg.objective.startswith("val_") and cfg.val_size == 0 and _folds(cfg) is None),
        f"objective={_shown('objective', cfg.objective)} needs a validation split; "
        "set val_size > 0 or choose a train_ or test_ objective",
    )
    opt = cfg.optimizer
    _require(
        opt.name in OPTIMIZERS, "optimizer.name", opt.name, ", ".join(OPTIMIZERS), "is unknown"
    )
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "a number >= 0")
    _require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "0 <= momentum < 1")
    _check(
        not (opt.nesterov and opt.momentum == 0),
        "optimizer.nesterov=true needs optimizer.momentum > 0",
    )
    betas = list(opt.betas)
    _require(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        "optimizer.betas",
        betas,
        "two numbers in [0, 1)",
    )
    _require(opt.eps > 0, "optimizer.eps", opt.eps, "a number > 0")
    _no_foreign_options(opt)
    if opt.name == "lbfgs":
        _validate_lbfgs(cfg)
    _require(
        cfg.dataset.name in DATASETS,
        "dataset.name",
        cfg.dataset.name,
        ", ".join(DATASETS),
        "is unknown",
    )
    _validate_dataset(cfg.dataset)
    _validate_scheduler(cfg)
    _validate_early_stopping(cfg)
    _validate_logger(cfg)
    _validate_penalty(cfg)
    _validate_class_weight(cfg)


def _folds(cfg: Any) -> int | None:
    """The run's fold count; None without cross-validation (or a config from before it)."""
    return getattr(cfg, "cv", None)


def _validate_folds(cfg: Any) -> None:
    cv = _folds(cfg)
    if cv is None:
        return
    _require(
        cv >= 2,
        "cv",
        cv,
        "null (one validation split) or an integer >= 2 (folds)",
    )
    # The folds are the validation data: a val_size would carve rows off that nothing uses.
    _check(
        "val_size" not in (_typed.get() or {}),
        f"val_size={_shown('val_size', cfg.val_size)} does not apply with cv={_shown('cv', cv)}; "
        "allowed: no val_size (each fold is validated on its held-out part)",
    )
    for setting, on in (
        ("early_stopping", cfg.early_stopping.patience is not None),
        ("scheduler=plateau", cfg.scheduler.name == "plateau"),
    ):
        _check(
            not on,
            f"{setting} does not apply with cv={_shown('cv', cv)}: the final model is refit on "
            "the whole training part, which has no validation data to watch; allowed: cv=null",
        )


def _validate_lbfgs(cfg: Any) -> None:
    opt = cfg.optimizer
    _require(
        cfg.batch_size is None,
        "batch_size",
        cfg.batch_size,
        "null (L-BFGS is full batch)",
        "does not apply to optimizer=lbfgs",
    )
    _require(opt.history_size >= 1, "optimizer.history_size", opt.history_size, "an integer >= 1")
    for name in ("tolerance_grad", "tolerance_change"):
        value = getattr(opt, name)
        _require(math.isfinite(value) and value >= 0, f"optimizer.{name}", value, "a number >= 0")
    penalty = getattr(cfg, "penalty", None)
    if penalty is not None and penalty.name in ("l1", "elasticnet"):
        _check(
            penalty.name == "elasticnet" and penalty.l1_ratio == 0,
            f"penalty={penalty.name} does not apply to optimizer=lbfgs (|w| has no gradient at "
            "0); allowed: penalty=none or l2, or optimizer=sgd/adam/adamw (a proximal step)",
        )
    for setting, on in (
        ("early_stopping", cfg.early_stopping.patience is not None),
        (f"scheduler={cfg.scheduler.name}", cfg.scheduler.name != "constant"),
    ):
        _check(
            not on,
            f"{setting} does not apply to optimizer=lbfgs, which stops when it converges "
            "(optimizer.tolerance_grad, optimizer.tolerance_change) or after `epochs` "
            "iterations; allowed: optimizer=sgd, adam or adamw",
        )


def _validate_penalty(cfg: Any) -> None:
    penalty = getattr(cfg, "penalty", None)
    if penalty is None:  # a config composed before penalties existed
        return
    name = penalty.name
    _require(name in PENALTIES, "penalty.name", name, ", ".join(PENALTIES), "is unknown")
    C, ratio = penalty.C, penalty.l1_ratio
    if name == "none":
        _require(
            C == PenaltyConfig.C,
            "penalty.C",
            C,
            "penalty=l2, l1 or elasticnet",
            "does not apply to penalty=none",
        )
    _require(math.isfinite(C) and C > 0, "penalty.C", C, "a finite number > 0")
    if name == "elasticnet":
        _require(
            ratio is not None and 0 <= ratio <= 1,
            "penalty.l1_ratio",
            ratio,
            "a number with 0 <= l1_ratio <= 1",
            "is out of range" if ratio is not None else "is missing",
        )
    else:
        _require(
            ratio is None,
            "penalty.l1_ratio",
            ratio,
            "null (penalty=elasticnet's option)",
            f"does not apply to penalty={name}",
        )


def _validate_class_weight(cfg: Any) -> None:
    """``balanced`` or positive weights by class name; the names are checked with the data."""
    weights = getattr(cfg, "class_weight", None)
    if weights is None or weights == "balanced":
        return
    allowed = "null, balanced, or {class name: weight > 0}, e.g. class_weight={red:2,blue:1}"
    _require(isinstance(weights, Mapping) and len(weights) > 0, "class_weight", weights, allowed)
    for name, weight in weights.items():
        ok = isinstance(weight, int | float) and not isinstance(weight, bool)
        _require(
            ok and math.isfinite(weight) and weight > 0,
            f"class_weight.{name}",
            weight,
            "a finite number > 0",
        )


def _validate_logger(cfg: Any) -> None:
    logger = getattr(cfg, "logger", None)
    if logger is None:  # a config composed before trackers existed
        return
    _require(logger.name in LOGGERS, "logger.name", logger.name, ", ".join(LOGGERS), "is unknown")
    if logger.name == "tensorboard":
        sub = str(logger.subdir)
        _require(
            bool(sub) and not sub.startswith(("/", "\\")) and ".." not in sub.split("/"),
            "logger.subdir",
            sub,
            "a folder name inside the run directory",
        )
    if logger.name == "mlflow":
        _require(
            bool(str(logger.experiment_name).strip()),
            "logger.experiment_name",
            logger.experiment_name,
            "a non-empty name",
        )


def _validate_dataset(dataset: Any) -> None:
    name = dataset.name
    if name == "csv":
        for key, allowed in (("path", "a CSV or Parquet file"), ("target", "a column's name")):
            missing = (
                OmegaConf.is_missing(dataset, key)
                if isinstance(dataset, DictConfig)
                else dataset.get(key, MISSING) == MISSING  # a plain copy keeps "???"
            )
            _check(not missing, f"dataset.{key} is missing; allowed: {allowed} (dataset.{key}=...)")
        _require(
            dataset.missing in ("error", "drop"), "dataset.missing", dataset.missing, "error, drop"
        )
    if name in ("blobs", "synthetic"):
        _require(
            dataset.n_samples >= 10,
            "dataset.n_samples",
            dataset.n_samples,
            "an integer >= 10 (enough rows to split)",
            "is too few",
        )
    if name == "blobs":
        _require(
            dataset.cluster_std > 0, "dataset.cluster_std", dataset.cluster_std, "a number > 0"
        )


def _needs_a_watched_metric(cfg: Any, setting: str) -> None:
    """Plateau schedules and early stopping watch the objective's validation metric."""
    _check(
        watched_metric(cfg.objective) is not None,
        f"{setting} watches the objective's validation loss or accuracy; "
        f"objective={_shown('objective', cfg.objective)} has none; "
        "allowed: a *_loss or *_accuracy objective",
    )
    _check(
        cfg.val_size > 0,
        f"{setting} needs a validation split, but val_size={cfg.val_size}; allowed: val_size > 0",
    )


# The options each optimizer has; any other option must keep its default (it would do nothing).
OPTIMIZER_OPTIONS = {
    "sgd": ("weight_decay", "momentum", "nesterov"),
    "adam": ("weight_decay", "betas", "eps"),
    "adamw": ("weight_decay", "betas", "eps"),
    "lbfgs": ("history_size", "tolerance_grad", "tolerance_change"),
}
# Every option of some optimizer, in that order: each is checked against the chosen one's.
_OPTIONAL = tuple(dict.fromkeys(name for names in OPTIMIZER_OPTIONS.values() for name in names))


def _no_foreign_options(opt: Any) -> None:
    defaults = OptimizerConfig(name=opt.name)
    for name in _OPTIONAL:
        if name in OPTIMIZER_OPTIONS[opt.name] or not hasattr(opt, name):
            continue  # (a config composed before an option existed has not got it)
        value = list(opt.betas) if name == "betas" else getattr(opt, name)
        _require(
            value == getattr(defaults, name),
            f"optimizer.{name}",
            value,
            f"its options {', '.join(OPTIMIZER_OPTIONS[opt.name])}"
            + (" (penalty=l2 for a weight penalty)" if name == "weight_decay" else ""),
            f"does not apply to optimizer={opt.name}",
        )


def _validate_scheduler(cfg: Any) -> None:
    sch = cfg.scheduler
    _require(
        sch.name in SCHEDULERS, "scheduler.name", sch.name, ", ".join(SCHEDULERS), "is unknown"
    )
    warmup = sch.warmup_epochs
    if sch.name in ("onecycle", "plateau"):
        why = (
            "onecycle's rise is its warm-up: scheduler.pct_start"
            if sch.name == "onecycle"
            else "torch cannot chain ReduceLROnPlateau after a warm-up"
        )
        _require(
            warmup == 0,
            "scheduler.warmup_epochs",
            warmup,
            f"0 ({why})",
            f"does not apply to scheduler={sch.name}",
        )
    _require(
        0 <= warmup < cfg.epochs,
        "scheduler.warmup_epochs",
        warmup,
        f"0 <= warmup_epochs < epochs ({cfg.epochs})",
    )
    _require(
        0 < sch.warmup_start_factor <= 1,
        "scheduler.warmup_start_factor",
        sch.warmup_start_factor,
        "0 < warmup_start_factor <= 1",
    )
    _require(sch.step_size >= 1, "scheduler.step_size", sch.step_size, "an integer >= 1")
    plateau = sch.name == "plateau"
    _require(
        0 < sch.gamma < 1 if plateau else sch.gamma > 0,
        "scheduler.gamma",
        sch.gamma,
        "0 < gamma < 1" if plateau else "a number > 0",
    )
    _require(sch.min_lr >= 0, "scheduler.min_lr", sch.min_lr, "a number >= 0")
    _require(sch.patience >= 0, "scheduler.patience", sch.patience, "an integer >= 0")
    _require(sch.threshold >= 0, "scheduler.threshold", sch.threshold, "a number >= 0")
    _require(0 < sch.pct_start < 1, "scheduler.pct_start", sch.pct_start, "0 < pct_start < 1")
    for name in ("div_factor", "final_div_factor"):
        value = getattr(sch, name)
        _require(value > 0, f"scheduler.{name}", value, "a number > 0")
    if plateau:
        _needs_a_watched_metric(cfg, "scheduler=plateau")


def _validate_early_stopping(cfg: Any) -> None:
    es = cfg.early_stopping
    if es.patience is None:
        return
    _require(
        es.patience >= 0,
        "early_stopping.patience",
        es.patience,
        "null (off) or an integer >= 0",
    )
    _require(es.min_delta >= 0, "early_stopping.min_delta", es.min_delta, "a number >= 0")
    _needs_a_watched_metric(cfg, "early_stopping")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's numbers, read from a validated config.

    Two equal specs train to the same numbers (on the CPU); what only changes how a run is shown
    (``progress``, ``plots``) is left out.
    """

    dataset: Mapping[str, Any]  # the dataset group's values: name, path, generator seed, ...
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    betas: tuple[float, float]
    eps: float
    epochs: int
    batch_size: int | None
    seed: int
    device: str
    test_size: float
    random_state: int
    val_size: float
    stratify: bool
    standardize: bool
    objective: str
    log_every: int
    engine: str
    scheduler: SchedulerConfig
    early_stopping: EarlyStoppingConfig
    penalty: str = "none"
    C: float = 1.0
    l1_ratio: float = 0.0  # the L1 share of the penalty: 0 for none and l2, 1 for l1
    cv: int | None = None
    class_weight: str | Mapping[str, float] | None = None
    history_size: int = 100  # lbfgs's options
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9

    @property
    def direction(self) -> str:
        """``minimize`` or ``maximize``: how the objective ranks runs."""
        return OBJECTIVES[self.objective]

    def hyperparameters(self) -> dict[str, Any]:
        """The flat values a record and the summary table show, named as in ``HYPERPARAMETERS``."""
        values = {
            "dataset": self.dataset["name"],
            "optimizer": self.optimizer,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "beta1": self.betas[0],
            "beta2": self.betas[1],
            "eps": self.eps,
            "seed": self.seed,
            "standardize": self.standardize,
            "test_size": self.test_size,
            "val_size": self.val_size,
            "scheduler": self.scheduler.name,
            "penalty": self.penalty,
            "C": None if self.penalty == "none" else self.C,
            "l1_ratio": self.l1_ratio if self.penalty == "elasticnet" else None,
            "class_weight": class_weight_text(self.class_weight),
            "cv": self.cv,
        }
        return {name: values[name] for name in HYPERPARAMETERS}

    @property
    def watched(self) -> str | None:
        """The history column plateau schedules and early stopping watch."""
        return watched_metric(self.objective)


def run_spec(cfg: Any, overrides: Sequence[str] = ()) -> RunSpec:
    """Validate ``cfg`` (a composed config, or anything with its attributes) and read its spec.

    Raises :class:`SweeplrError` with one line naming the first invalid value, as typed in
    ``overrides`` (the command line's) when one set it.
    """
    cfg = config_values(cfg)
    token = _typed.set(typed_values(overrides))
    try:
        validate(cfg)
    finally:
        _typed.reset(token)
    opt = cfg.optimizer
    penalty = getattr(cfg, "penalty", None) or PenaltyConfig()
    cv = _folds(cfg)
    lbfgs = OptimizerConfig(name="lbfgs")
    return RunSpec(
        dataset=_plain(cfg.dataset),
        optimizer=str(opt.name),
        lr=float(cfg.lr),
        weight_decay=float(opt.weight_decay),
        momentum=float(opt.momentum),
        nesterov=bool(opt.nesterov),
        betas=(float(opt.betas[0]), float(opt.betas[1])),
        eps=float(opt.eps),
        epochs=int(cfg.epochs),
        batch_size=None if cfg.batch_size is None else int(cfg.batch_size),
        seed=int(cfg.seed),
        device=str(cfg.device),
        test_size=float(cfg.test_size),
        random_state=int(cfg.random_state),
        val_size=0.0 if cv else float(cfg.val_size),  # with folds, no fixed validation part
        stratify=bool(cfg.stratify),
        standardize=bool(cfg.standardize),
        objective=str(cfg.objective),
        log_every=int(cfg.log_every),
        engine=str(cfg.engine),
        scheduler=SchedulerConfig(**_plain(cfg.scheduler)),
        early_stopping=EarlyStoppingConfig(**_plain(cfg.early_stopping)),
        penalty=str(penalty.name),
        C=float(penalty.C),
        l1_ratio={"none": 0.0, "l2": 0.0, "l1": 1.0}.get(penalty.name, penalty.l1_ratio),
        cv=None if cv is None else int(cv),
        class_weight=_class_weight(getattr(cfg, "class_weight", None)),
        history_size=int(getattr(opt, "history_size", lbfgs.history_size)),
        tolerance_grad=float(getattr(opt, "tolerance_grad", lbfgs.tolerance_grad)),
        tolerance_change=float(getattr(opt, "tolerance_change", lbfgs.tolerance_change)),
    )


def _class_weight(value: Any) -> str | dict[str, float] | None:
    if value is None or isinstance(value, str):
        return value
    return {str(name): float(weight) for name, weight in _plain(value).items()}


def class_weight_text(value: str | Mapping[str, float] | None) -> str | None:
    """How a record and the table show a class weighting: ``balanced`` or ``red:2,blue:1``."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(f"{name}:{weight:g}" for name, weight in value.items())


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


def _plain(node: Any) -> dict[str, Any]:
    """A config node's values as a dict (a mapping, such as `config_values`', or a dataclass)."""
    return dict(node) if isinstance(node, Mapping) else asdict(node)
