"""The optimizers' update rules: ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` written as in-place
tensor ops whose hyperparameters are per-configuration tensors, so a grid over learning rates
is a single update; and L1's proximal step after each update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sweeplr.batched.api import HParam
from sweeplr.batched.inputs import per_config

OptimizerKind = Literal["sgd", "adam", "adamw"]
_BIAS_CORRECTION_CHUNK = 64  # Adam bias corrections are tabulated this many steps at a time.


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer kind and per-configuration hyperparameters, with ``torch.optim`` semantics.

    Every numeric field is a scalar (shared) or a length-K sequence/tensor (one value per
    configuration).  ``None`` means the ``torch.optim`` default of the kind: SGD
    ``momentum=0, dampening=0, weight_decay=0``; Adam ``betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0``; AdamW the same but ``weight_decay=1e-2``.  Options of another kind
    (e.g. ``momentum`` for Adam) are rejected rather than silently ignored.  Weight decay applies
    to weight and bias alike, as with ``torch.optim.X(model.parameters())``.
    """

    kind: OptimizerKind
    lr: HParam
    momentum: HParam | None = None
    dampening: HParam | None = None
    nesterov: bool = False
    weight_decay: HParam | None = None
    betas: tuple[HParam, HParam] | None = None
    eps: HParam | None = None


def resolve_hparams(cfg: OptimizerConfig, k: int) -> dict[str, Tensor]:
    """Per-configuration float64 hyperparameters with torch.optim's defaults and checks."""
    if cfg.kind not in ("sgd", "adam", "adamw"):
        raise ValueError(f"unknown optimizer kind {cfg.kind!r}")
    sgd = cfg.kind == "sgd"
    foreign = ("betas", "eps") if sgd else ("momentum", "dampening")
    for name in foreign:
        if getattr(cfg, name) is not None:
            raise ValueError(f"{name} is not an option of {cfg.kind}")
    if cfg.nesterov and not sgd:
        raise ValueError(f"nesterov is not an option of {cfg.kind}")
    default_wd = 1e-2 if cfg.kind == "adamw" else 0.0
    wd = default_wd if cfg.weight_decay is None else cfg.weight_decay
    hp = {"lr": per_config("lr", cfg.lr, k), "weight_decay": per_config("weight_decay", wd, k)}
    if sgd:
        hp["momentum"] = per_config("momentum", 0.0 if cfg.momentum is None else cfg.momentum, k)
        damp = 0.0 if cfg.dampening is None else cfg.dampening
        hp["dampening"] = per_config("dampening", damp, k)
    else:
        beta1, beta2 = (0.9, 0.999) if cfg.betas is None else cfg.betas
        hp["beta1"] = per_config("beta1", beta1, k)
        hp["beta2"] = per_config("beta2", beta2, k)
        hp["eps"] = per_config("eps", 1e-8 if cfg.eps is None else cfg.eps, k)
        for name in ("beta1", "beta2"):
            if bool(((hp[name] < 0) | (hp[name] >= 1)).any()):
                raise ValueError(f"{name} must lie in [0, 1)")
    for name in ("lr", "weight_decay", "momentum", "eps"):
        if name in hp and bool((hp[name] < 0).any()):
            raise ValueError(f"{name} must be >= 0")
    if cfg.nesterov and bool(((hp["momentum"] <= 0) | (hp["dampening"] != 0)).any()):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return hp


def soft_threshold(w: Tensor, t: Tensor) -> None:
    """``w <- sign(w) * max(|w| - t, 0)`` in place, for thresholds ``t >= 0`` broadcasting to w.

    Written ``w - clamp(w, -t, t)``: exactly 0 where ``|w| <= t``, and elsewhere ``w - t`` or
    ``w + t``, the same roundings as the sign/max form; a NaN stays NaN in its own row.
    """
    w.sub_(torch.clamp(w, torch.neg(t), t))


class SGD:
    """``torch.optim.SGD`` (``_single_tensor_sgd``) with per-configuration hyperparameters.

    Hyperparameter tensors are ``[Ka, 1, 1]`` so that they broadcast over ``[Ka, out, F+1]``.
    Products are formed as in torch (``alpha * other``), so each configuration gets torch's
    update up to floating-point contraction differences in the kernels.
    """

    def __init__(self, hp: dict[str, Tensor], nesterov: bool, like: Tensor) -> None:
        def col(t: Tensor) -> Tensor:
            return t.to(like.dtype).to(like.device).view(-1, 1, 1)

        self.nesterov = nesterov
        self.neg_lr = col(-hp["lr"])
        self.weight_decay = col(hp["weight_decay"]) if bool(hp["weight_decay"].any()) else None
        momentum = hp["momentum"]
        self.momentum = col(momentum) if bool(momentum.any()) else None
        # torch skips the buffer when momentum == 0, i.e. uses the plain gradient; with a shared
        # buffer that is buf = 0 * buf + 1 * grad, so such configurations get no dampening.
        self.one_minus_dampening = col(torch.where(momentum > 0, 1 - hp["dampening"], 1.0))
        # Allocated here, not on the first step: a step may run under torch.inference_mode
        # (see `FoldedBinarySteps`), and a buffer created there could not be updated outside it.
        self.buf = torch.empty_like(like) if self.momentum is not None else None
        self.started = False

    def step(self, p: Tensor, g: Tensor) -> None:
        """One update of all active configurations; ``g`` is scratch and may be overwritten."""
        if self.weight_decay is not None:
            g.addcmul_(p, self.weight_decay)
        if self.momentum is not None:
            assert self.buf is not None
            if not self.started:  # torch: buf = grad.clone() on the first step, no dampening
                self.buf.copy_(g)
                self.started = True
            else:
                self.buf.mul_(self.momentum).addcmul_(g, self.one_minus_dampening)
            if self.nesterov:
                g.addcmul_(self.buf, self.momentum)
            else:
                g = self.buf
        p.addcmul_(g, self.neg_lr)

    def prox_l1(self, w: Tensor, l1: Tensor) -> None:
        """After `step`: L1's proximal step on the weights ``w`` ([Ka, out, F] view of the
        parameters) with strengths ``l1`` ([Ka, 1, 1]): soft-threshold by ``lr * l1``."""
        soft_threshold(w, torch.mul(self.neg_lr, l1).neg_())

    def set_lr(self, lr: Tensor) -> None:
        """New lrs (float64 [Ka]) for the active configurations, from the next step on."""
        self.neg_lr = (-lr).to(self.neg_lr.dtype).to(self.neg_lr.device).view(-1, 1, 1)

    def select(self, keep: Tensor) -> None:
        """Keep only the configurations at positions ``keep`` (after some stopped)."""
        for name in ("neg_lr", "weight_decay", "momentum", "one_minus_dampening", "buf"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep))


class Adam:
    """``torch.optim.Adam``/``AdamW`` (``_single_tensor_adam``, no amsgrad), batched over K.

    Follows torch's order of operations: decoupled decay ``p *= 1 - lr*wd`` (AdamW) or L2
    ``g += wd*p`` (Adam); ``m.lerp_(g, 1-beta1)``; ``v = v*beta2 + (1-beta2)*g*g``;
    ``denom = sqrt(v) / sqrt(1-beta2^t) + eps``; ``p += (-lr/(1-beta1^t)) * m / denom``.  The
    scalar factors are computed in float64 and rounded to the parameter dtype, like the Python
    floats torch passes to its kernels; the bias corrections are tabulated for a chunk of steps
    at a time to keep them off the per-step path.
    """

    def __init__(self, hp: dict[str, Tensor], decoupled: bool, like: Tensor) -> None:
        def col(t: Tensor) -> Tensor:
            return t.to(like.dtype).to(like.device).view(-1, 1, 1)

        lr, wd = hp["lr"], hp["weight_decay"]
        has_wd = bool(wd.any())
        self.col = col
        self.wd64 = wd if decoupled and has_wd else None
        self.decay = col(1 - lr * wd) if self.wd64 is not None else None
        self.l2 = col(wd) if has_wd and not decoupled else None
        self.one_minus_beta1 = col(1 - hp["beta1"])
        self.beta2 = col(hp["beta2"])
        self.one_minus_beta2 = col(1 - hp["beta2"])
        self.eps = col(hp["eps"])
        # float64 copies on the CPU (which every backend has) for the bias-correction tables
        self.lr64, self.beta1_64, self.beta2_64 = lr, hp["beta1"], hp["beta2"]
        self.exp_avg = torch.zeros_like(like)
        self.exp_avg_sq = torch.zeros_like(like)
        self.denom = torch.empty_like(like)
        self.scratch = torch.empty_like(like)
        self.step_count = 0
        # (-lr/(1-beta1^t), sqrt(1-beta2^t)) for t = table_start, ..., [chunk, Ka, 1, 1] each;
        # None before the first step and after the batch shrank.
        self.table_start = 0
        self.tables: tuple[Tensor, Tensor] | None = None

    def set_lr(self, lr: Tensor) -> None:
        """New lrs (float64 [Ka]) for the active configurations, from the next step on: the
        step sizes are tabulated again, and AdamW's decay ``1 - lr*wd`` follows the lr."""
        self.lr64 = lr
        self.tables = None
        if self.wd64 is not None:
            self.decay = self.col(1 - lr * self.wd64)

    def _tabulate(self) -> tuple[Tensor, Tensor]:
        """Bias-correction factors for `_BIAS_CORRECTION_CHUNK` steps from the current one."""
        self.table_start = self.step_count
        return self.factors(self.step_count, _BIAS_CORRECTION_CHUNK)

    def factors(self, first: int, count: int) -> tuple[Tensor, Tensor]:
        """``(-lr/(1-beta1^t), sqrt(1-beta2^t))`` for steps ``t = first, ..., first+count-1``:
        ``[count, Ka, 1, 1]`` each, on the parameters' device and in their dtype."""
        like = self.exp_avg
        steps = torch.arange(first, first + count, dtype=torch.float64)[:, None]
        bc1 = 1 - self.beta1_64[None, :] ** steps  # [count, Ka]
        bc2 = 1 - self.beta2_64[None, :] ** steps
        shape = (count, -1, 1, 1)
        neg_step_size = (-(self.lr64 / bc1)).to(like.dtype).to(like.device).view(shape)
        return neg_step_size, bc2.sqrt().to(like.dtype).to(like.device).view(shape)

    def step(self, p: Tensor, g: Tensor) -> None:
        """One update of all active configurations; ``g`` is scratch and may be overwritten."""
        self.step_count += 1
        row = self.step_count - self.table_start
        tables = self.tables
        if tables is None or row >= _BIAS_CORRECTION_CHUNK:
            tables = self.tables = self._tabulate()
            row = 0
        neg_step_size, bc2_sqrt = tables
        self.update(p, g, neg_step_size[row], bc2_sqrt[row])

    def update(self, p: Tensor, g: Tensor, neg_step_size: Tensor, bc2_sqrt: Tensor) -> None:
        """`step`'s update with this step's bias-correction factors (``[Ka, 1, 1]`` each) given,
        and the step count left to the caller (CUDA graphs replay it; see `GraphedEpochs`)."""
        if self.decay is not None:
            p.mul_(self.decay)
        if self.l2 is not None:
            g.addcmul_(p, self.l2)
        self.exp_avg.lerp_(g, self.one_minus_beta1)
        torch.mul(g, self.one_minus_beta2, out=self.scratch)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(self.scratch, g)
        torch.sqrt(self.exp_avg_sq, out=self.denom)
        self.denom.div_(bc2_sqrt).add_(self.eps)
        self.neg_step_size = neg_step_size  # this step's, for prox_l1
        torch.mul(self.exp_avg, self.neg_step_size, out=self.scratch)
        p.addcdiv_(self.scratch, self.denom)

    def prox_l1(self, w: Tensor, l1: Tensor) -> None:
        """After `step`: L1's proximal step on the weights ``w`` ([Ka, out, F] view of the
        parameters) with strengths ``l1`` ([Ka, 1, 1]) in the diagonal metric of the update
        ``p -= step_size * m / denom``: per coordinate, soft-threshold by
        ``step_size * l1 / denom`` (the prox of ``l1 * ||w||_1`` under the norm
        ``sum denom_i / step_size * w_i^2``)."""
        threshold = torch.mul(self.neg_step_size, l1).neg_()
        soft_threshold(w, threshold.div(self.denom[..., : w.shape[2]]))

    def select(self, keep: Tensor) -> None:
        """Keep only the configurations at positions ``keep`` (after some stopped)."""
        names = (
            "decay",
            "l2",
            "one_minus_beta1",
            "beta2",
            "one_minus_beta2",
            "eps",
            "lr64",
            "wd64",
            "beta1_64",
            "beta2_64",
            "exp_avg",
            "exp_avg_sq",
        )
        for name in names:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep.to(t.device)))
        self.denom = torch.empty_like(self.exp_avg)
        self.scratch = torch.empty_like(self.exp_avg)
        self.tables = None


def make_optimizer(cfg: OptimizerConfig, k: int, like: Tensor) -> tuple[SGD | Adam, Tensor]:
    """The update rule of ``cfg`` for K configurations of parameters shaped like ``like``
    (``[K, out, F+1]``), and their initial lrs (float64 [K])."""
    hp = resolve_hparams(cfg, k)
    if cfg.kind == "sgd":
        return SGD(hp, cfg.nesterov, like), hp["lr"]
    return Adam(hp, cfg.kind == "adamw", like), hp["lr"]
