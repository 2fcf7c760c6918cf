"""The names every part of sweeplr shares: run statuses, splits, metrics, objectives, hyperparameters.

One home, so the runner that writes a record, the table that reads it, the pictures and the
Optuna sweeper spell them alike. Imports nothing, so any module may import it.
"""

from __future__ import annotations

from typing import Final, Literal

# What a run record's ``status`` says.
COMPLETED: Final = "completed"
PRUNED: Final = "pruned"  # stopped early by a pruner
DIVERGED: Final = "diverged"  # the loss stopped being finite: a result, not a crash
FAILED = "failed"  # the job raised (bad config value, bad data file, a bug in the task)
# Rows of the summary table for run directories without a readable record.
MISSING = "missing"
CORRUPT = "corrupt"
SUPERSEDED = "superseded"  # a killed trial's folder: a retry of its trial holds the result
NOT_RUN = "not_run"  # a grid's planned job that never started (the sweep was stopped first)
UNFINISHED = (MISSING, CORRUPT, SUPERSEDED, NOT_RUN)
Status = Literal["completed", "diverged", "pruned"]  # how training can end (the engine's view)

# What `sweeplr summary --format` can print.
FORMATS = ("table", "csv", "markdown", "json")

SPLITS = ("train", "val", "test")
METRICS = ("loss", "accuracy", "roc_auc", "f1")
METRIC_COLUMNS = tuple(f"{split}_{metric}" for split in SPLITS for metric in METRICS)

# Every metric of every split can be the objective; losses are minimised, scores maximised.
OBJECTIVES: dict[str, str] = {
    f"{split}_{metric}": ("minimize" if metric == "loss" else "maximize")
    for split in ("val", "train", "test")
    for metric in METRICS
}
# Objectives that training records at every logged epoch, so a pruner can watch them.
PRUNABLE_OBJECTIVES = ("val_loss", "val_accuracy", "train_loss")

# The values that define a run, flat, as records and the summary table name them.
HYPERPARAMETERS = (
    "dataset",
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "weight_decay",
    "momentum",
    "nesterov",
    "beta1",
    "beta2",
    "eps",
    "seed",
    "standardize",
    "test_size",
    "val_size",
    "scheduler",
    "penalty",
    "C",
    "l1_ratio",
    "class_weight",
    "cv",
)

OPTIMIZERS = ("sgd", "adam", "adamw", "lbfgs")
PENALTIES = ("none", "l2", "l1", "elasticnet")
DATASETS = ("blobs", "breast_cancer", "iris", "synthetic", "csv")
ENGINES = ("batched", "reference")
SCHEDULERS = ("constant", "step", "cosine", "onecycle", "plateau")


def watched_metric(objective: str) -> str | None:
    """The validation metric that plateau schedules and early stopping watch for an objective:
    its loss or accuracy on the validation split (what training logs); None for others."""
    metric = objective.split("_", 1)[1]
    return (
        f"val_{metric}" if metric in ("loss", "accuracy") else None
    )  # closed-form, many configs a pass | torch.optim, one at a time
