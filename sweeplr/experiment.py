"""One run from a composed config: the only Hydra-aware piece of a run.

``run`` is what ``train.py`` calls: it validates the config, trains, writes the run record into
Hydra's output directory and returns the sweep objective. ``run_experiment`` does the same work
for any output directory, so it can be called from plain Python and from tests.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeplr import __version__
from sweeplr.config import OBJECTIVES, validate
from sweeplr.data import Splits, Standardizer, load_dataset, scale_splits, split
from sweeplr.engine import EngineResult, OptimizerConfig, linear_init, train_batched
from sweeplr.errors import SweeplrError
from sweeplr.model import LogisticRegression
from sweeplr.records import save_model, write_history, write_metrics
from sweeplr.training import DIVERGED, LogCallback, OptimizerSpec, evaluate, train

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


# Values that may differ between configurations trained together in one batch: the engine
# takes them per configuration. Everything else in a config must match (see batch_key).
PER_CONFIG_KEYS = ("lr", "trial", "progress", "plots")
PER_CONFIG_OPTIMIZER_KEYS = ("weight_decay", "momentum", "betas", "eps")


def batch_key(cfg: Any) -> str:
    """Configs with equal keys can share one batched training pass.

    The seed only sets the initial weights when training is full batch (each configuration
    gets its own), but it also orders the mini-batches, which a batch must share.
    """
    plain = dict(to_plain(cfg))
    for key in PER_CONFIG_KEYS:
        plain.pop(key, None)
    plain["optimizer"] = {
        k: v for k, v in plain["optimizer"].items() if k not in PER_CONFIG_OPTIMIZER_KEYS
    }
    if plain.get("batch_size") is None:
        plain.pop("seed", None)
    return json.dumps(plain, sort_keys=True, default=str)


@dataclass
class DeviceData:
    """The splits of one data set as tensors on the training device."""

    splits: Splits
    scaler: Standardizer
    device: torch.device
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def load(cls, cfg: Any) -> DeviceData:
        device = resolve_device(str(cfg.device))
        splits, scaler = prepare_data(cfg)

        def tensors(X: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)

        return cls(
            splits,
            scaler,
            device,
            tensors(splits.X_train, splits.y_train),
            tensors(splits.X_val, splits.y_val),
            tensors(splits.X_test, splits.y_test),
        )


def _optimizer_config(cfgs: Sequence[Any]) -> OptimizerConfig:
    """One engine optimizer with a value per configuration for every hyperparameter."""
    specs = [optimizer_spec(c) for c in cfgs]
    kind = specs[0].name
    common: dict[str, Any] = {
        "lr": [s.lr for s in specs],
        "weight_decay": [s.weight_decay for s in specs],
    }
    if kind == "sgd":
        return OptimizerConfig(
            kind, momentum=[s.momentum for s in specs], nesterov=specs[0].nesterov, **common
        )
    return OptimizerConfig(
        kind,
        betas=([s.betas[0] for s in specs], [s.betas[1] for s in specs]),
        eps=[s.eps for s in specs],
        **common,
    )


def run_batch(
    cfgs: Sequence[Any],
    run_dirs: Sequence[str | Path],
    *,
    on_logs: Sequence[LogCallback | None] | None = None,
    extras: Sequence[dict[str, Any] | None] | None = None,
    data: DeviceData | None = None,
) -> list[RunOutcome]:
    """Train configurations that share a :func:`batch_key` in one pass; write each record.

    Every run directory gets exactly what a run of its own would write. ``on_logs[k]`` is called
    at each logged epoch of configuration k and may return True to stop it (pruning).
    """
    for cfg in cfgs:
        validate(cfg)
    keys = {batch_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("run_batch needs configurations with one batch_key")
    base = cfgs[0]
    k_total = len(cfgs)
    on_logs = list(on_logs or [None] * k_total)
    extras = list(extras or [None] * k_total)
    started = time.perf_counter()
    data = data or DeviceData.load(base)
    if data.device.type == "cpu" and data.train[0].numel() < SMALL_DATA_ELEMENTS:
        # Thread start-up and hand-off cost far more than the arithmetic on small data:
        # measured 2 ms/epoch with 2 threads against 0.3 ms with one on blobs.
        torch.set_num_threads(1)
    if base.engine == "reference":
        trained = [_train_reference(cfg, data, on_logs[k]) for k, cfg in enumerate(cfgs)]
    else:
        trained = _train_batched(cfgs, data, on_logs)
    wall = time.perf_counter() - started
    return [
        _write_run(
            cfg,
            Path(run_dirs[k]),
            data,
            trained[k],
            wall_seconds=wall / k_total,
            extra={
                **(extras[k] or {}),
                "batch": {"configs": k_total, "wall_seconds": round(wall, 4)},
            },
        )
        for k, cfg in enumerate(cfgs)
    ]


@dataclass
class Trained:
    """A trained model and how its training ended."""

    model: LogisticRegression
    status: str
    epochs_run: int
    diverged_epoch: int | None
    history: dict[str, list[Any]]


def _train_reference(cfg: Any, data: DeviceData, on_log: LogCallback | None) -> Trained:
    """``engine=reference``: torch.optim and autograd, one configuration at a time."""
    torch.manual_seed(cfg.seed)
    splits = data.splits
    model = LogisticRegression(splits.n_features, splits.n_classes).to(data.device)
    result = train(
        model,
        *data.train,
        *data.val,
        optimizer_spec(cfg),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        log_every=cfg.log_every,
        on_log=on_log,
    )
    history = result.history
    return Trained(
        model,
        result.status,
        result.epochs_run,
        result.diverged_epoch,
        {
            "epoch": history.epoch,
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
            "val_accuracy": history.val_accuracy,
        },
    )


def _train_batched(
    cfgs: Sequence[Any], data: DeviceData, on_logs: Sequence[LogCallback | None]
) -> list[Trained]:
    """``engine=batched``: every configuration in one pass of the closed-form engine."""
    base = cfgs[0]
    splits = data.splits
    X_train, y_train = data.train
    weight, bias = linear_init(
        splits.n_features,
        splits.n_classes,
        [int(c.seed) for c in cfgs],
        dtype=X_train.dtype,
        device=data.device,
    )
    has_val = len(data.val[1]) > 0

    def report(
        epoch: int,
        active: torch.Tensor,
        train_loss: torch.Tensor,
        val_loss: torch.Tensor,
        val_accuracy: torch.Tensor,
    ) -> list[bool]:
        stops = [False] * len(cfgs)
        for k, callback in enumerate(on_logs):
            if callback is not None and bool(active[k]):
                stops[k] = bool(
                    callback(
                        epoch, float(train_loss[k]), float(val_loss[k]), float(val_accuracy[k])
                    )
                )
        return stops

    result = train_batched(
        X_train,
        y_train,
        splits.n_classes,
        weight,
        bias,
        _optimizer_config(cfgs),
        int(base.epochs),
        batch_size=base.batch_size,
        shuffle_seed=int(base.seed),
        val=data.val if has_val else None,
        log_every=int(base.log_every),
        on_report=report if any(c is not None for c in on_logs) else None,
        report_every=int(base.log_every),
        check_every=int(base.log_every),
    )
    trained = []
    for k in range(len(cfgs)):
        model = LogisticRegression(splits.n_features, splits.n_classes).to(data.device)
        with torch.no_grad():
            model.linear.weight.copy_(result.weight[k])
            model.linear.bias.copy_(result.bias[k])
        trained.append(
            Trained(
                model,
                result.status[k],
                result.epochs_run[k],
                result.diverged_epoch[k],
                _history_of(result, k),
            )
        )
    return trained


def _history_of(result: EngineResult, k: int) -> dict[str, list[Any]]:
    """History rows of configuration k, up to the epoch it stopped at."""
    history = result.history
    rows = [t for t, epoch in enumerate(history.epochs) if epoch <= result.epochs_run[k]]

    def column(values: torch.Tensor | None) -> list[float]:
        if values is None:
            return [math.nan] * len(rows)
        return [float(values[t, k]) for t in rows]

    return {
        "epoch": [history.epochs[t] for t in rows],
        "train_loss": column(history.train_loss),
        "val_loss": column(history.val_loss),
        "val_accuracy": column(history.val_accuracy),
    }


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
    return run_batch([cfg], [run_dir], on_logs=[on_log], extras=[extra])[0]


def _write_run(
    cfg: Any,
    run_dir: Path,
    data: DeviceData,
    trained: Trained,
    *,
    wall_seconds: float,
    extra: dict[str, Any],
) -> RunOutcome:
    """Evaluate a trained model on every split and write its run record."""
    splits, model, status = data.splits, trained.model, trained.status
    diverged = status == DIVERGED
    metrics = {
        name: evaluate(model, X, y) if not diverged else evaluate_nothing()
        for name, (X, y) in zip(SPLITS, (data.train, data.val, data.test), strict=True)
    }
    split_name, metric_name = cfg.objective.split("_", 1)
    record: dict[str, Any] = {
        "status": status,
        "epochs_run": trained.epochs_run,
        "diverged_epoch": trained.diverged_epoch,
        "wall_seconds": round(wall_seconds, 4),
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
        "device": str(data.device),
        "sweeplr_version": __version__,
        **extra,
    }
    write_history(run_dir, trained.history)
    save_model(
        run_dir,
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "n_features": splits.n_features,
            "n_classes": splits.n_classes,
            "class_names": list(splits.class_names),
            "feature_names": list(splits.feature_names),
            "scaler_mean": torch.from_numpy(data.scaler.mean),
            "scaler_scale": torch.from_numpy(data.scaler.scale),
            "status": status,
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


@dataclass
class Job:
    """One Hydra job's run: its task config, where it writes, what it reports to."""

    cfg: DictConfig
    run_dir: Path
    extra: dict[str, Any]
    on_log: LogCallback | None
    multirun: bool


def hydra_job(cfg: DictConfig, hydra_cfg: DictConfig) -> Job:
    """Read what a run needs from Hydra's node of the job (``HydraConfig.get()``)."""
    from hydra.types import RunMode

    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    extra: dict[str, Any] = {
        "job": {
            "num": hydra_cfg.job.get("num"),
            "override_dirname": hydra_cfg.job.override_dirname,
        },
        "overrides": list(hydra_cfg.overrides.task),
    }
    on_log = None
    if cfg.get("trial") is not None and hydra_cfg.sweeper.get("storage"):
        on_log = optuna_reporter(cfg, hydra_cfg.sweeper)
        extra["trial"] = {"number": cfg.trial, "study": hydra_cfg.sweeper.study_name}
    if cfg.progress and not multirun and sys.stderr.isatty():
        on_log = chain(progress_printer(cfg.epochs), on_log)
    return Job(cfg, Path(hydra_cfg.runtime.output_dir), extra, on_log, multirun)


def announce(job: Job, outcome: RunOutcome) -> None:
    """The report block of a single run; one line per job in a sweep."""
    if not job.multirun:
        print(format_report(outcome))
        return
    rec = outcome.record
    print(
        f"[job {job.extra['job']['num']}] {rec['status']} {rec['objective']['name']}="
        f"{rec['objective']['value']} ({' '.join(job.extra['overrides'])})"
    )


def run_jobs(jobs: Sequence[Job], max_batch: int = 256) -> list[RunOutcome]:
    """Train jobs that can share a batch together (in submission order), write every record."""
    groups: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        validate(job.cfg)
        groups.setdefault(batch_key(job.cfg), []).append(index)
    outcomes: list[RunOutcome | None] = [None] * len(jobs)
    data: DeviceData | None = None
    data_key = None
    for members in groups.values():
        first = jobs[members[0]].cfg
        key = json.dumps(
            [
                to_plain(first.dataset),
                first.test_size,
                first.val_size,
                first.random_state,
                first.stratify,
                first.standardize,
                first.device,
            ],
            default=str,
        )
        if key != data_key:  # one data set in memory at a time; loaded once per distinct one
            data, data_key = DeviceData.load(first), key
        for start in range(0, len(members), max_batch):
            chunk = [jobs[i] for i in members[start : start + max_batch]]
            results = run_batch(
                [j.cfg for j in chunk],
                [j.run_dir for j in chunk],
                on_logs=[j.on_log for j in chunk],
                extras=[j.extra for j in chunk],
                data=data,
            )
            for i, job, outcome in zip(
                members[start : start + max_batch], chunk, results, strict=True
            ):
                outcomes[i] = outcome
                announce(job, outcome)
    return [o for o in outcomes if o is not None]


def run(cfg: DictConfig) -> float:
    """Train one configuration inside Hydra; return the objective sweepers optimise.

    A user mistake (bad value, bad data file) exits with one line and no traceback.
    """
    from hydra.core.hydra_config import HydraConfig

    try:
        job = hydra_job(cfg, HydraConfig.get())
        outcome = run_experiment(cfg, job.run_dir, on_log=job.on_log, extra=job.extra)
    except SweeplrError as exc:
        sys.exit(f"error: {exc}")
    announce(job, outcome)
    if cfg.plots and not job.multirun:  # a sweep draws its pictures once, at its end
        from sweeplr.plots import plot_run

        pictures = plot_run(job.run_dir)
        print(f"  pictures: {', '.join(p.name for p in pictures)}")
    return outcome.objective
