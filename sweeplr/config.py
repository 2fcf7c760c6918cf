"""Typed structured configs: the schema every YAML file in ``conf/`` is merged onto.

Hydra type-checks values against these dataclasses while composing (``lr=abc`` fails there);
:func:`validate` checks ranges and cross-field rules that types cannot express, before any
data is loaded. This module imports Hydra only to register the schemas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sweeplr.errors import SweeplrError

# Metric each objective name reads, and whether smaller is better.
OBJECTIVES: dict[str, str] = {
    f"{split}_{metric}": ("minimize" if metric == "loss" else "maximize")
    for split in ("val", "train", "test")
    for metric in ("loss", "accuracy", "roc_auc", "f1")
}

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


@dataclass
class Config:
    """Top-level knobs of one run (see ``conf/config.yaml`` for the why of each default)."""

    dataset: Any = MISSING
    optimizer: OptimizerConfig = MISSING
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
    objective: str = "val_loss"
    log_every: int = 10
    progress: bool = True
    plots: bool = True
    trial: int | None = None  # set by the Optuna sweeper, never by hand
    engine: str = "batched"  # batched (closed-form, many configs at once) | reference (torch.optim)


def register_configs() -> None:
    """Register the schemas so YAML files can name them in their ``defaults`` lists."""
    cs = ConfigStore.instance()
    cs.store(name="sweeplr_schema", node=Config)
    cs.store(group="optimizer", name="optimizer_schema", node=OptimizerConfig)
    for schema in (BlobsConfig, BreastCancerConfig, IrisConfig, SyntheticConfig, CsvConfig):
        cs.store(group="dataset", name=f"{schema().name}_schema", node=schema)


OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
DATASET_NAMES = ("blobs", "breast_cancer", "iris", "synthetic", "csv")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SweeplrError(message)


def _fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low = "0 <= " if allow_zero else "0 < "
    ok = (0 <= value < 1) if allow_zero else (0 < value < 1)
    _check(ok, f"{name}={value} is out of range; allowed: {low}{name} < 1")


def validate(cfg: Any) -> None:
    """Raise :class:`SweeplrError` with one line for the first invalid value in ``cfg``.

    ``cfg`` is a composed DictConfig (or any object with the same attributes).
    """
    _check(
        math.isfinite(cfg.lr) and cfg.lr > 0,
        f"lr={cfg.lr} is invalid; allowed: a finite number > 0",
    )
    _check(cfg.epochs >= 1, f"epochs={cfg.epochs} is invalid; allowed: an integer >= 1")
    _check(
        cfg.batch_size is None or cfg.batch_size >= 1,
        f"batch_size={cfg.batch_size} is invalid; allowed: null (full batch) or an integer >= 1",
    )
    _check(
        bool(DEVICE_PATTERN.match(str(cfg.device))),
        f"device={cfg.device} is invalid; allowed: auto, cpu, cuda, cuda:N, mps",
    )
    _fraction("test_size", cfg.test_size, allow_zero=False)
    _fraction("val_size", cfg.val_size, allow_zero=True)
    _check(
        cfg.engine in ("batched", "reference"),
        f"engine={cfg.engine} is unknown; allowed: batched, reference",
    )
    _check(cfg.log_every >= 1, f"log_every={cfg.log_every} is invalid; allowed: an integer >= 1")
    _check(
        cfg.objective in OBJECTIVES,
        f"objective={cfg.objective} is unknown; allowed: {', '.join(OBJECTIVES)}",
    )
    _check(
        not (cfg.objective.startswith("val_") and cfg.val_size == 0),
        f"objective={cfg.objective} needs a validation split; set val_size > 0 "
        "or choose a train_ or test_ objective",
    )
    opt = cfg.optimizer
    _check(
        opt.name in OPTIMIZER_NAMES,
        f"optimizer.name={opt.name} is unknown; allowed: {', '.join(OPTIMIZER_NAMES)}",
    )
    _check(
        opt.weight_decay >= 0,
        f"optimizer.weight_decay={opt.weight_decay} is invalid; allowed: a number >= 0",
    )
    _check(
        0 <= opt.momentum < 1,
        f"optimizer.momentum={opt.momentum} is invalid; allowed: 0 <= momentum < 1",
    )
    _check(
        not (opt.nesterov and opt.momentum == 0),
        "optimizer.nesterov=true needs optimizer.momentum > 0",
    )
    betas = list(opt.betas)
    _check(
        len(betas) == 2 and all(0 <= b < 1 for b in betas),
        f"optimizer.betas={betas} is invalid; allowed: two numbers in [0, 1)",
    )
    _check(opt.eps > 0, f"optimizer.eps={opt.eps} is invalid; allowed: a number > 0")
    _check(
        cfg.dataset.name in DATASET_NAMES,
        f"dataset.name={cfg.dataset.name} is unknown; allowed: {', '.join(DATASET_NAMES)}",
    )
    if cfg.dataset.name == "csv":
        _check(
            cfg.dataset.missing in ("error", "drop"),
            f"dataset.missing={cfg.dataset.missing} is invalid; allowed: error, drop",
        )
