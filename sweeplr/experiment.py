"""One run from a composed config: the only Hydra-aware piece of a run.

``run`` is what ``train.py`` calls: it validates the config, trains, writes the run record into
Hydra's output directory and returns the sweep objective. ``run_experiment`` does the same work
for any output directory, so it can be called from plain Python and from tests.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeplr import __version__
from sweeplr.config import OBJECTIVES, validate
from sweeplr.data import Splits, load_dataset, scale_splits, split
from sweeplr.errors import SweeplrError
from sweeplr.model import LogisticRegression
from sweeplr.records import save_model, write_history, write_metrics
from sweeplr.training import DIVERGED, LogCallback, OptimizerSpec, TrainResult, evaluate, train

SPLITS = ("train", "val", "test")
SMALL_DATA_ELEMENTS = 1 << 20  # below this many training values, one CPU thread is fastest


@dataclass
class RunOutcome:
    """What a run produced: the record written to ``metrics.json`` and where it lives."""

    record: dict[str, Any]
    run_dir: Path

    @property
    def objective(self) -> float:
        """The value returned to sweepers; a diverged run gets the worst possible value."""
        objective = self.record["objective"]
        if objective["value"] is None:
            return math.inf if objective["direction"] == "minimize" else -math.inf
        return float(objective["value"])


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SweeplrError(f"device={name} is not available on this machine; allowed: auto, cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SweeplrError("device=mps is not available on this machine; allowed: auto, cpu")
    return torch.device(name)


def optimizer_spec(cfg: Any) -> OptimizerSpec:
    opt = cfg.optimizer
    return OptimizerSpec(
        name=opt.name,
        lr=float(cfg.lr),
        weight_decay=float(opt.weight_decay),
        momentum=float(opt.momentum),
        nesterov=bool(opt.nesterov),
        betas=(float(opt.betas[0]), float(opt.betas[1])),
        eps=float(opt.eps),
    )


def hyperparameters(cfg: Any) -> dict[str, Any]:
    """The values that define a run, flat, as the summary table shows them."""
    spec = optimizer_spec(cfg)
    return {
        "dataset": cfg.dataset.name,
        "optimizer": spec.name,
        "lr": spec.lr,
        "epochs": int(cfg.epochs),
        "batch_size": cfg.batch_size,
        "weight_decay": spec.weight_decay,
        "momentum": spec.momentum,
        "nesterov": spec.nesterov,
        "beta1": spec.betas[0],
        "beta2": spec.betas[1],
        "eps": spec.eps,
        "seed": int(cfg.seed),
        "standardize": bool(cfg.standardize),
        "test_size": float(cfg.test_size),
        "val_size": float(cfg.val_size),
    }


def prepare_data(cfg: Any) -> tuple[Splits, Any]:
    """Load, split and scale the configured data set; returns the splits and the scaler."""
    table = load_dataset(cfg.dataset)
    splits = split(table, cfg.test_size, cfg.val_size, cfg.random_state, cfg.stratify)
    return scale_splits(splits, cfg.standardize)


def run_experiment(
    cfg: Any,
    run_dir: str | Path,
    *,
    on_log: LogCallback | None = None,
    extra: dict[str, Any] | None = None,
) -> RunOutcome:
    """Validate ``cfg``, train, evaluate, and write the run record into ``run_dir``.

    ``on_log`` is called at every logged epoch and may return True to stop the run (pruning).
    ``extra`` adds fields to ``metrics.json`` (Hydra job number, overrides).
    """
    validate(cfg)
    started = time.perf_counter()
    device = resolve_device(str(cfg.device))
    splits, scaler = prepare_data(cfg)

    def tensors(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)

    X_train, y_train = tensors(splits.X_train, splits.y_train)
    X_val, y_val = tensors(splits.X_val, splits.y_val)
    X_test, y_test = tensors(splits.X_test, splits.y_test)

    if device.type == "cpu" and X_train.numel() < SMALL_DATA_ELEMENTS:
        # Thread start-up and hand-off cost far more than the arithmetic on small data:
        # measured 2 ms/epoch with 2 threads against 0.3 ms with one on blobs.
        torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    model = LogisticRegression(splits.n_features, splits.n_classes).to(device)
    result: TrainResult = train(
        model,
        X_train,
        y_train,
        X_val,
        y_val,
        optimizer_spec(cfg),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        log_every=cfg.log_every,
        on_log=on_log,
    )
    diverged = result.status == DIVERGED
    metrics = {
        name: evaluate(model, X, y) if not diverged else evaluate_nothing()
        for name, (X, y) in zip(
            SPLITS, ((X_train, y_train), (X_val, y_val), (X_test, y_test)), strict=True
        )
    }
    split_name, metric_name = cfg.objective.split("_", 1)
    record: dict[str, Any] = {
        "status": result.status,
        "epochs_run": result.epochs_run,
        "diverged_epoch": result.diverged_epoch,
        "wall_seconds": round(time.perf_counter() - started, 4),
        "seed": int(cfg.seed),
        "hyperparameters": hyperparameters(cfg),
        "metrics": metrics,
        "objective": {
            "name": cfg.objective,
            "direction": OBJECTIVES[cfg.objective],
            "value": metrics[split_name][metric_name],
        },
        "data": {
            "n_train": len(splits.y_train),
            "n_val": len(splits.y_val),
            "n_test": len(splits.y_test),
            "n_features": splits.n_features,
            "class_names": list(splits.class_names),
        },
        "device": str(device),
        "sweeplr_version": __version__,
        **(extra or {}),
    }
    run_dir = Path(run_dir)
    history = result.history
    write_history(
        run_dir,
        {
            "epoch": history.epoch,
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
            "val_accuracy": history.val_accuracy,
        },
    )
    save_model(
        run_dir,
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "n_features": splits.n_features,
            "n_classes": splits.n_classes,
            "class_names": list(splits.class_names),
            "feature_names": list(splits.feature_names),
            "scaler_mean": torch.from_numpy(scaler.mean),
            "scaler_scale": torch.from_numpy(scaler.scale),
            "status": result.status,
            "config": to_plain(cfg),
            "sweeplr_version": __version__,
        },
    )
    # metrics.json last: its presence means the whole record is there.
    write_metrics(run_dir, record)
    return RunOutcome(record, run_dir)


def evaluate_nothing() -> dict[str, None]:
    """Metrics of a diverged model: all missing, rather than numbers computed from NaN weights."""
    return {"loss": None, "accuracy": None, "roc_auc": None, "f1": None}


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def format_report(outcome: RunOutcome) -> str:
    """The short block printed at the end of a single run."""
    rec = outcome.record
    hp = rec["hyperparameters"]
    data = rec["data"]
    lines = [
        f"sweeplr: {rec['status']} after {rec['epochs_run']} epochs in {rec['wall_seconds']:.2f} s"
        + (f" (loss non-finite at epoch {rec['diverged_epoch']})" if rec["diverged_epoch"] else ""),
        (
            f"  {hp['dataset']} ({data['n_train']} train / {data['n_val']} val / "
            f"{data['n_test']} test rows), {hp['optimizer']} lr={hp['lr']:g}, seed={rec['seed']}"
        ),
        f"  {'split':<6}{'loss':>10}{'accuracy':>10}{'roc_auc':>10}{'f1':>10}",
    ]

    def cell(value: float | None) -> str:
        return f"{value:>10.4f}" if value is not None else f"{'-':>10}"

    for name in SPLITS:
        m = rec["metrics"][name]
        lines.append(
            f"  {name:<6}{cell(m['loss'])}{cell(m['accuracy'])}{cell(m['roc_auc'])}{cell(m['f1'])}"
        )
    objective = rec["objective"]
    value = "-" if objective["value"] is None else f"{objective['value']:.6g}"
    lines.append(f"  objective {objective['name']} = {value} ({objective['direction']})")
    lines.append(f"  record: {outcome.run_dir.resolve()}")
    return "\n".join(lines)


def progress_printer(epochs: int, stream: Any = None) -> LogCallback:
    """A one-line progress display for a terminal, refreshed at most every 0.2 s."""
    stream = stream or sys.stderr
    last = [0.0]

    def show(epoch: int, train_loss: float, val_loss: float, val_accuracy: float) -> bool:
        now = time.monotonic()
        if now - last[0] >= 0.2 or epoch == epochs:
            last[0] = now
            stream.write(
                f"\repoch {epoch}/{epochs}  train loss {train_loss:.4f}  "
                f"val loss {val_loss:.4f}  val acc {val_accuracy:.3f}"
            )
            if epoch == epochs:
                stream.write("\n")
            stream.flush()
        return False

    return show


def chain(*callbacks: LogCallback | None) -> LogCallback | None:
    """Call every callback; stop when any asks to."""
    active = [c for c in callbacks if c is not None]
    if not active:
        return None

    def call_all(*args: Any) -> bool:
        stops = [c(*args) for c in active]  # not any(generator): every callback sees every epoch
        return any(stops)

    return call_all


def optuna_reporter(cfg: DictConfig, sweeper_cfg: DictConfig) -> LogCallback | None:
    """Report to this run's Optuna trial so its pruner can stop it (None without a pruner)."""
    if not sweeper_cfg.get("pruner"):
        return None
    from sweeplr.plugins.optuna_sweeper import make_pruner
    from sweeplr.studies import pruning_metric, trial_reporter

    return trial_reporter(
        sweeper_cfg.storage,
        sweeper_cfg.study_name,
        int(cfg.trial),
        make_pruner(sweeper_cfg.pruner),
        pruning_metric(cfg.objective),
    )


def run(cfg: DictConfig) -> float:
    """Train one configuration inside Hydra; return the objective sweepers optimise.

    A user mistake (bad value, bad data file) exits with one line and no traceback.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    show_progress = cfg.progress and not multirun and sys.stderr.isatty()
    extra = {
        "job": {
            "num": hydra_cfg.job.get("num"),
            "override_dirname": hydra_cfg.job.override_dirname,
        },
        "overrides": list(hydra_cfg.overrides.task),
    }
    try:
        reporter = None
        if cfg.get("trial") is not None and hydra_cfg.sweeper.get("storage"):
            reporter = optuna_reporter(cfg, hydra_cfg.sweeper)
            extra["trial"] = {"number": cfg.trial, "study": hydra_cfg.sweeper.study_name}
        outcome = run_experiment(
            cfg,
            run_dir,
            on_log=chain(progress_printer(cfg.epochs) if show_progress else None, reporter),
            extra=extra,
        )
    except SweeplrError as exc:
        sys.exit(f"error: {exc}")
    if multirun:
        rec = outcome.record
        print(
            f"[job {extra['job']['num']}] {rec['status']} {rec['objective']['name']}="
            f"{rec['objective']['value']} ({' '.join(extra['overrides'])})"
        )
    else:
        print(format_report(outcome))
    return outcome.objective
