"""The one input check of the batched solvers (`train_batched`, `train_lbfgs`): shapes, dtypes,
devices, labels and row weights, and per-configuration hyperparameters as vectors."""

from __future__ import annotations

import torch
from torch import Tensor

from sweeplr.batched.api import HParam, ReportCallback, n_outputs

Val = tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]
"""``(X_val, y_val)`` or ``(X_val, y_val, val_weight [K, n_val])``."""


def validate_inputs(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    val: Val | None,
    sample_weight: Tensor | None = None,
) -> None:
    """Fail early, with a readable message, on shapes/dtypes the kernels would mangle."""
    out = n_outputs(n_classes)
    if X.ndim != 2 or not X.is_floating_point():
        raise ValueError(f"X must be a 2-D floating tensor, got {tuple(X.shape)} {X.dtype}")
    n, n_features = X.shape
    if n == 0:
        raise ValueError("X has no rows")
    if val is not None and len(val) not in (2, 3):
        raise ValueError("val must be (X_val, y_val) or (X_val, y_val, val_weight)")
    pairs = [(X, y)] if val is None else [(X, y), (val[0], val[1])]
    for features, labels in pairs:
        if features.ndim != 2 or features.shape[1] != n_features:
            raise ValueError(f"features must be [n, {n_features}], got {tuple(features.shape)}")
        if features.dtype != X.dtype or features.device != X.device:
            raise ValueError("all feature tensors must share X's dtype and device")
        if labels.shape != (features.shape[0],) or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 [{features.shape[0]}], got {labels.dtype}")
        if labels.device != X.device:
            raise ValueError("labels must be on X's device")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes})")
    if weight.ndim != 3 or weight.shape[1:] != (out, n_features):
        raise ValueError(f"weight must be [K, {out}, {n_features}], got {tuple(weight.shape)}")
    if bias.shape != weight.shape[:2]:
        raise ValueError(f"bias must be [K, {out}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dtype != X.dtype or t.device != X.device:
            raise ValueError(f"{name} must share X's dtype and device")
    if weight.shape[0] == 0:
        raise ValueError("need at least one configuration")
    k = weight.shape[0]
    if sample_weight is not None:
        if sample_weight.shape not in ((n,), (k, n)):
            raise ValueError(
                f"sample_weight must be [{n}] or [{k}, {n}], got {tuple(sample_weight.shape)}"
            )
        check_row_weights("sample_weight", sample_weight, X)
    if val is not None and len(val) == 3:
        val_weight, n_val = val[2], val[0].shape[0]
        if val_weight.shape != (k, n_val):
            raise ValueError(f"val_weight must be [{k}, {n_val}], got {tuple(val_weight.shape)}")
        check_row_weights("val_weight", val_weight, X)
        if not bool((val_weight > 0).any(1).all()):
            raise ValueError("val_weight must give every configuration a row with weight > 0")


def validate_reporting(log_every: int, report_every: int, on_report: ReportCallback | None) -> None:
    """The history's and the report callback's periods."""
    for name, value in (("log_every", log_every), ("report_every", report_every)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if on_report is not None and report_every < 1:
        raise ValueError("on_report needs report_every >= 1")


def check_row_weights(name: str, w: Tensor, X: Tensor) -> None:
    """Row weights must match X's dtype and device and be finite and non-negative."""
    if w.dtype != X.dtype or w.device != X.device:
        raise ValueError(f"{name} must share X's dtype and device, got {w.dtype} on {w.device}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")


def per_config(name: str, value: HParam, k: int, *, nonnegative: bool = False) -> Tensor:
    """A hyperparameter as a float64 CPU vector of length K (a scalar is shared by all K),
    finite, and ``>= 0`` when ``nonnegative``."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if t.ndim == 0:
        t = t.expand(k).clone()
    if t.shape != (k,):
        raise ValueError(f"{name} must be a scalar or have length {k}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    if nonnegative and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0")
    return t
