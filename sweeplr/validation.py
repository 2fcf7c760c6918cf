"""Range checks of a composed config, before any data is loaded; no Hydra.

Hydra type-checks values against the schemas of ``sweeplr.config`` while composing (``lr=abc``
fails there); :func:`validate` checks that every key is one they have (Hydra lets ``+key=...``
add any), the ranges and the cross-field rules that types cannot express. Each message is one
line naming the value as it was typed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from sweeplr.config import (
    LOGGERS,
    OptimizerSchema,
    PenaltySchema,
    SchedulerSchema,
    unknown_key,
    unknown_key_message,
)
from sweeplr.errors import SweeplrError
from sweeplr.schema import (
    DATASETS,
    ENGINES,
    OBJECTIVES,
    OPTIMIZERS,
    PENALTIES,
    SCHEDULERS,
    watched_metric,
)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

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


def validate(cfg: Any, overrides: Sequence[str] = ()) -> None:
    """Raise :class:`SweeplrError` with one line for the first invalid value in ``cfg``.

    ``cfg`` is a composed DictConfig (or any object with the same attributes); the line names
    a value as typed in ``overrides`` (the command line's) when one set it.
    """
    token = _typed.set(typed_values(overrides))
    try:
        _validate(cfg)
    finally:
        _typed.reset(token)


def _validate(cfg: Any) -> None:
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
        not (cfg.objective.startswith("val_") and cfg.val_size == 0 and folds(cfg) is None),
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


def folds(cfg: Any) -> int | None:
    """The run's fold count; None without cross-validation (or a config from before it)."""
    return getattr(cfg, "cv", None)


def _validate_folds(cfg: Any) -> None:
    cv = folds(cfg)
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
            C == PenaltySchema.C,
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
    defaults = OptimizerSchema(name=opt.name)
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


# The options each schedule reads (sweeplr.schedules); any other must keep its default, as an
# optimizer's: `scheduler.step_size=20` without scheduler=step would change nothing.
SCHEDULER_OPTIONS = {
    "constant": ("warmup_epochs", "warmup_start_factor"),
    "step": ("warmup_epochs", "warmup_start_factor", "step_size", "gamma"),
    "cosine": ("warmup_epochs", "warmup_start_factor", "min_lr"),
    "onecycle": ("pct_start", "div_factor", "final_div_factor"),
    "plateau": ("gamma", "min_lr", "patience", "threshold"),
}


def _no_foreign_schedule_options(sch: Any) -> None:
    defaults = SchedulerSchema(name=sch.name)
    own = SCHEDULER_OPTIONS[sch.name]
    for name in dict.fromkeys(n for names in SCHEDULER_OPTIONS.values() for n in names):
        if name in own or not hasattr(sch, name):
            continue  # (a config composed before an option existed has not got it)
        users = [s for s, names in SCHEDULER_OPTIONS.items() if name in names]
        _require(
            getattr(sch, name) == getattr(defaults, name),
            f"scheduler.{name}",
            getattr(sch, name),
            f"scheduler={' or '.join(users)} (scheduler={sch.name}'s options: {', '.join(own)})",
            f"does not apply to scheduler={sch.name}",
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
    _no_foreign_schedule_options(sch)  # (after the warm-up's own rule, which says why)
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
