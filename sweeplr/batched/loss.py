"""The objective of every batched solver, stated once (as scikit-learn's ``LinearModelLoss``).

K configurations of a linear model share the rows ``x_i`` and labels ``y_i``; configuration k
has logits ``z_ki = W_k x_i + b_k`` and minimises

    J_k(W, b) = (1/n) sum_i s_ki loss(z_ki, y_i) + l2_k/2 ||W_k||^2 + l1_k ||W_k||_1

with the binary cross-entropy on one logit (``n_classes == 2``) or the cross-entropy on one
logit per class, row weights ``s`` (1 without them) and the bias unpenalised.  Here live its
per-row terms (`binary_terms`, `multiclass_terms`), the loss and gradient of a batch of rows
(`loss_gradient`), the L2 term (`add_l2`, `l2_objective`) and the validation scores
(`scores`).  The first-order solver (`sweeplr.batched.first_order`: its plain step, and its
fused step group by group), L-BFGS (`sweeplr.batched.lbfgs`) and the Triton kernel's tests
(`sweeplr.kernels` is checked against `loss_gradient`) all use these.

The loss is *summed* over the rows, as torch's mean reduction does before dividing, so that it
overflows to inf exactly when torch's would; the division happens where the value is read.
The 1/n of the gradient is folded into the gradient matmul and the bias reduction.

Binary, with s = 1 - 2y: BCE(z, y) = softplus(s*z) and sigmoid(z) - y = s*sigmoid(s*z), so one
scaled copy u = s*z gives both (more accurately than sigmoid(z) - y for confident
predictions).  torch's BCE is NaN for an infinite logit even where softplus(u) is 0, so u - u
(NaN exactly there) is added.  Steps that need only the loss's finiteness (the first-order
solver's unlogged epochs) take silu(u) = u * sigmoid(u) instead: finite exactly when u is and
within O(1) of softplus(u), so its sum overflows when the loss's would; it reuses the sigmoid
the gradient needs, so the check costs one multiply instead of a softplus.

Multi-class: log-softmax gives the loss (its entries at the labels, gathered) and the gradient
softmax - onehot.  The loss is always computed: as in torch, a -inf logit leaves it finite or
not depending on the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Targets = tuple[Tensor, ...]
"""The labels as the loss terms want them: binary ``(1 - 2y,)``, multi-class
``(y, -onehot(y)^T)`` (``[n]`` and ``[C, n]``)."""


def loss_targets(y: Tensor, n_classes: int, dtype: torch.dtype) -> Targets:
    """`Targets` of the labels ``y`` (int64 ``[n]``) in the features' ``dtype``."""
    if n_classes == 2:
        return (1 - 2 * y.to(dtype),)
    return (y, -F.one_hot(y, n_classes).to(dtype).t().contiguous())


def binary_terms(z: Tensor, sign: Tensor, dz: Tensor, want_loss: bool, sw: Tensor | None) -> None:
    """Per-row terms of the binary loss, in place: logits ``z`` ``[K, m]`` become the loss terms
    (or, without ``want_loss``, the finiteness surrogate silu(u)); ``dz`` gets n * dL/dz.
    ``sign`` = 1 - 2y ``[m]``; row weights ``sw`` ``[1 or K, m]`` multiply both."""
    u = z.mul_(sign)
    sigmoid_u = torch.sigmoid(u, out=dz)
    if want_loss:
        torch.add(F.softplus(u), u - u, out=u)
    else:
        u.mul_(sigmoid_u)
    sigmoid_u.mul_(sign)
    if sw is not None:
        u.mul_(sw)
        dz.mul_(sw)


def multiclass_terms(
    z3: Tensor,
    label_index: Tensor,
    neg_onehot: Tensor,
    ls: Tensor,
    label_log_prob: Tensor,
    sw3: Tensor | None,
) -> None:
    """Per-row terms of the cross-entropy: ``label_log_prob`` ``[K, 1, m]`` gets the labels'
    log-probabilities (minus the loss terms), ``ls`` ``[K, C, m]`` n * dL/dz, from the logits
    ``z3`` ``[K, C, m]``.  ``label_index`` is y as ``[K, 1, m]``, ``neg_onehot`` ``[C, m]``;
    row weights ``sw3`` ``[1 or K, 1, m]`` multiply both."""
    torch.log_softmax(z3, 1, out=ls)
    torch.gather(ls, 1, label_index, out=label_log_prob)
    if sw3 is not None:
        label_log_prob.mul_(sw3)
    ls.exp_().add_(neg_onehot)
    if sw3 is not None:
        ls.mul_(sw3)


@dataclass
class Buffers:
    """What `loss_gradient` writes into, for K configurations, ``out`` logits and ``m`` rows."""

    z: Tensor  # logits [K*out, m]; binary: then the loss terms
    dz: Tensor  # n * dL/dz [K*out, m]
    label_log_prob: Tensor | None  # multi-class: [K, 1, m]
    label_index: Tensor | None  # multi-class: y as [K, 1, m]
    ones: Tensor  # [m]
    inv_n: float
    inv_n_vec: Tensor  # [m] of inv_n

    @classmethod
    def make(cls, like: Tensor, k: int, out: int, targets: Targets, inv_n: float) -> Buffers:
        """Buffers in ``like``'s dtype and device for the rows of ``targets``."""
        m = targets[0].shape[-1]
        z = like.new_empty(k * out, m)
        label_log_prob = label_index = None
        if out > 1:
            label_log_prob = like.new_empty(k, 1, m)
            label_index = targets[0].view(1, 1, m).expand(k, 1, m)
        return cls(
            z=z,
            dz=like.new_empty(k * out, m),
            label_log_prob=label_log_prob,
            label_index=label_index,
            ones=like.new_ones(m),
            inv_n=inv_n,
            inv_n_vec=like.new_full((m,), inv_n),
        )


def loss_gradient(
    x: Tensor,
    targets: Targets,
    w: Tensor,
    b: Tensor,
    sw: Tensor | None,
    buf: Buffers,
    want_loss: bool,
    loss_sum: Tensor,
    gw: Tensor,
    gb: Tensor,
) -> None:
    """The data loss and its gradient for K configurations on the rows ``x`` ``[m, F]``.

    ``w`` ``[K*out, F]`` and ``b`` ``[K*out, 1]`` are the parameters; ``loss_sum`` ``[K]`` gets
    ``sum_i s_ki loss_ki`` (or the surrogate's sum without ``want_loss``), ``gw`` ``[K*out, F]``
    and ``gb`` ``[K*out]`` the gradient of the mean ``(1/n) sum_i s_ki loss_ki`` (n =
    1 / ``buf.inv_n``).  Row weights ``sw`` are ``[1 or K, m]``.  One matmul gives all logits and
    one all weight gradients, so X is read twice however many configurations there are.
    """
    z = torch.addmm(b, w, x.t(), out=buf.z)
    if len(targets) == 1:
        binary_terms(z, targets[0], buf.dz, want_loss, sw)
        torch.mv(z, buf.ones, out=loss_sum)
    else:
        assert buf.label_log_prob is not None and buf.label_index is not None
        k = buf.label_log_prob.shape[0]
        ls = buf.dz.view(k, -1, z.shape[1])
        sw3 = None if sw is None else sw.unsqueeze(1)
        multiclass_terms(
            z.view(k, -1, z.shape[1]), buf.label_index, targets[1], ls, buf.label_log_prob, sw3
        )
        torch.mv(buf.label_log_prob.view(k, -1), buf.ones, out=loss_sum).neg_()
    gw.addmm_(buf.dz, x, beta=0, alpha=buf.inv_n)
    torch.mv(buf.dz, buf.inv_n_vec, out=gb)


def add_l2(g: Tensor, w: Tensor, l2: Tensor) -> None:
    """The L2 term's gradient ``l2 * W`` added to the weights' gradient ``g`` in place."""
    g.addcmul_(w, l2)


def l2_objective(data_loss: Tensor, w: Tensor, l2: Tensor) -> Tensor:
    """``data_loss + l2/2 ||W||^2`` per configuration (``w`` ``[K, out*F]``, ``l2`` ``[K]``)."""
    return data_loss + 0.5 * l2 * (w * w).sum(1)


def scores(
    w: Tensor, b: Tensor, out: int, x: Tensor, y: Tensor, row_weight: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validation loss and accuracy of K configurations (``w`` ``[K*out, F]``, ``b``
    ``[K*out, 1]``) on the rows ``(x, y)``, ``[K]`` each: means over the rows, or with
    ``row_weight`` ``[K, m]`` weighted means ``sum(w*l) / sum(w)`` over each configuration's."""
    z = torch.addmm(b, w, x.t())
    k = z.shape[0] // out
    if out == 1:
        target = y.to(z.dtype).expand_as(z)
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        correct = (z > 0) == y.bool()
    else:
        z3 = z.view(k, out, -1)
        loss = F.cross_entropy(z3, y.expand(k, -1), reduction="none")
        correct = z3.argmax(1) == y
    accuracy = correct.to(z.dtype)
    if row_weight is None:
        return loss.mean(1), accuracy.mean(1)
    total = row_weight.sum(1)
    # Rows outside a configuration's set count 0 even where their loss is inf (0 * inf).
    weighted_loss = torch.where(row_weight > 0, loss * row_weight, 0.0).sum(1) / total
    return weighted_loss, (accuracy * row_weight).sum(1) / total
