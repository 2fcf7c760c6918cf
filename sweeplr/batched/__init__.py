"""Batched training of K logistic-regression configurations at once. No Hydra.

The modules, top down (each imports only those below it):

- `first_order`: `train_batched`, SGD/Adam/AdamW for K configurations in one pass;
- `lbfgs`: `train_lbfgs`, torch's L-BFGS for K configurations, its line search in `wolfe`;
- `epochs`: plain epochs with fewer ops (sign-folded, CUDA graphs);
- `steps`: a step's variants (plain, fused, Triton) and `steps.choose`, the one place that
  picks them; `fused`: the fused step's groups, chunks and workers;
- `optimizers`: ``torch.optim``'s update rules with per-configuration hyperparameters;
- `loss`: the objective, its loss and gradient, and the validation scores, stated once;
- `inputs`: the one input check; `api`: the types callers see.

This module only re-exports.
"""

from sweeplr.batched.api import (
    EarlyStopping,
    EngineResult,
    History,
    HParam,
    LrSchedule,
    Penalty,
    ReportCallback,
    dataloader_permutation,
    linear_init,
    logged_epochs,
    n_outputs,
)
from sweeplr.batched.first_order import train_batched
from sweeplr.batched.inputs import per_config
from sweeplr.batched.lbfgs import train_lbfgs
from sweeplr.batched.optimizers import OptimizerConfig, OptimizerKind

__all__ = [
    "EarlyStopping",
    "EngineResult",
    "HParam",
    "History",
    "LrSchedule",
    "OptimizerConfig",
    "OptimizerKind",
    "Penalty",
    "ReportCallback",
    "dataloader_permutation",
    "linear_init",
    "logged_epochs",
    "n_outputs",
    "per_config",
    "train_batched",
    "train_lbfgs",
]
