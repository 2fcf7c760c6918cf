"""Training and evaluation with ``torch.optim`` and autograd: the reference path. No Hydra.

Runs use the batched closed-form engine (``sweeplr.batched``); this module is what it is
checked against, and what a reader of the tutorial recognises.

``train`` runs one configuration; it stops early, with a status instead of an exception, when
the loss stops being finite (``diverged``) or when ``on_log`` asks it to (``pruned``).  Row
weights and L2/L1 penalties follow the engine's rules (see ``train``), so it is their oracle too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sweeplr.batched import dataloader_permutation, logged_epochs
from sweeplr.metrics import classification_metrics, classification_metrics_rows
from sweeplr.model import LogisticRegression, logits_to_proba, loss_on_logits
from sweeplr.schedules import step_scheduler, torch_scheduler
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED
from sweeplr.spec import EarlyStoppingSpec, ScheduleSpec

# The optimizers other than SGD: the same arguments (betas, eps, weight decay).
ADAM_CLASSES: dict[str, type[torch.optim.Adam | torch.optim.AdamW]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


@dataclass(frozen=True)
class TorchOptimizer:
    """Which ``torch.optim`` class to use and its hyperparameters."""

    name: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        """The real ``torch.optim`` optimizer over ``params``."""
        if self.name == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                nesterov=self.nesterov,
                weight_decay=self.weight_decay,
            )
        cls = ADAM_CLASSES[self.name]
        return cls(
            params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )


HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")


@dataclass
class Trained:
    """A model after training: how training ended and its logged history, one row per logged
    epoch (``HISTORY_COLUMNS``: the epoch, train loss, val loss and accuracy, the epoch's lr).

    The train loss is the engine's: full batch, the loss before the epoch's update; mini-batch,
    the mean of the epoch's batch losses (each a mean over its batch), as Lightning logs it.
    """

    model: LogisticRegression
    status: str  # completed | diverged | pruned
    epochs_run: int
    diverged_epoch: int | None
    history: dict[str, list[Any]]
    best_epoch: int | None = None  # early stopping's best logged epoch


def _new_history() -> dict[str, list[Any]]:
    return {column: [] for column in HISTORY_COLUMNS}


def _log_row(history: dict[str, list[Any]], *row: float) -> None:
    for column, value in zip(HISTORY_COLUMNS, row, strict=True):
        history[column].append(value)


# on_log(epoch, train_loss, val_loss, val_accuracy) -> True to stop now (pruning).
LogCallback = Callable[[int, float, float, float], bool]


@torch.no_grad()
def _val_scores(model: LogisticRegression, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = model(X)
    loss = loss_on_logits(logits, y).item()
    predicted = logits.argmax(-1) if logits.shape[-1] > 1 else (logits.squeeze(-1) > 0).long()
    return loss, (predicted == y).float().mean().item()


def train(
    model: LogisticRegression,
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    optimizer: TorchOptimizer,
    epochs: int,
    batch_size: int | None = None,
    seed: int = 0,
    log_every: int = 10,
    on_log: LogCallback | None = None,
    schedule: ScheduleSpec | None = None,
    early_stopping: EarlyStoppingSpec | None = None,
    watch: str | None = None,
    sample_weight: torch.Tensor | None = None,
    l2: float = 0.0,
    l1: float = 0.0,
) -> Trained:
    """Fit ``model`` in place; full batch when ``batch_size`` is None, else shuffled mini-batches.

    Every ``log_every`` epochs (and at the last one) a history row is recorded and ``on_log``
    is called; the early rows of `logged_epochs` are recorded too, without ``on_log``. The
    loss is checked for finiteness at every row (the per-epoch losses are kept on the device,
    so the check costs one sync per row and still names the first non-finite epoch exactly).

    ``schedule`` steps a ``torch.optim.lr_scheduler`` after every epoch (ReduceLROnPlateau
    after every logged one, on ``watch``); ``early_stopping`` watches ``watch`` (``val_loss``,
    lower is better, or ``val_accuracy``) at logged epochs, the batched engine's rules.

    ``sample_weight`` ([n], >= 0) weights the rows: the loss is ``mean(s * per-sample loss)``
    (see `loss_on_logits`); mini-batches take their rows' weights.  ``l2`` adds
    ``l2/2 * ||W||^2`` to the loss that is backpropagated and ``l1`` applies a proximal step
    after each ``opt.step()`` (see `_prox_l1`), both on the weights only, never the bias; the
    recorded train loss is the data loss alone.  These are `sweeplr.batched.Penalty`'s rules.
    """
    if l2 < 0 or l1 < 0:
        raise ValueError(f"l2 and l1 must be >= 0, got {l2} and {l1}")
    opt = optimizer.build(model.parameters())
    sign = -1.0 if watch == "val_accuracy" else 1.0  # sign * value: lower is better
    scheduler = (
        torch_scheduler(opt, schedule, epochs, "min" if sign > 0 else "max") if schedule else None
    )
    plateau = schedule is not None and schedule.name == "plateau"
    stopping = _EarlyStopping(early_stopping)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    epoch_losses = torch.zeros(epochs, dtype=X_train.dtype, device=X_train.device)
    history = _new_history()
    logged = set(logged_epochs(epochs, log_every))
    last_checked = 0
    for epoch in range(1, epochs + 1):
        lr = opt.param_groups[0]["lr"]
        epoch_losses[epoch - 1] = _run_epoch(
            model, opt, X_train, y_train, sample_weight, (l2, l1), batch_size, generator
        )
        if scheduler is not None and not plateau and epoch < epochs:
            step_scheduler(scheduler)
        if epoch not in logged:
            continue
        window = epoch_losses[last_checked:epoch]
        finite = torch.isfinite(window)
        if not bool(finite.all()):
            first_bad = last_checked + int((~finite).nonzero()[0, 0]) + 1
            return Trained(model, DIVERGED, first_bad, first_bad, history)
        last_checked = epoch
        train_loss = float(epoch_losses[epoch - 1])
        val_loss, val_accuracy = _history_row(history, model, X_val, y_val, epoch, train_loss, lr)
        if epoch % log_every and epoch != epochs:
            continue  # an early row: recorded, not reported or watched (see logged_epochs)
        if on_log is not None and on_log(epoch, train_loss, val_loss, val_accuracy):
            return Trained(model, PRUNED, epoch, None, history, stopping.best_epoch)
        watched = sign * (val_loss if watch == "val_loss" else val_accuracy)
        if stopping.stops(watched, epoch, model):
            return Trained(model, COMPLETED, epoch, None, history, stopping.best_epoch)
        if plateau:
            step_scheduler(scheduler, sign * watched)
    stopping.restore(model)
    return Trained(model, COMPLETED, epochs, None, history, stopping.best_epoch)


def _run_epoch(
    model: LogisticRegression,
    opt: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    penalties: tuple[float, float],
    batch_size: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """One epoch's updates, full batch or shuffled mini-batches; its train loss on the device
    (full batch: the loss before the update; mini-batch: the mean of its batches' losses)."""
    l2, l1 = penalties
    n = len(y)
    if batch_size is None or batch_size >= n:
        opt.zero_grad(set_to_none=True)
        loss = loss_on_logits(model(X), y, sample_weight)
        _penalised(model, loss, l2).backward()
        opt.step()
        _prox_l1(opt, model, l1)
        return loss.detach()
    # DataLoader(shuffle=True)'s order, which the batched engine reproduces.
    order = dataloader_permutation(generator, n).to(X.device)
    total = torch.zeros((), dtype=X.dtype, device=X.device)
    starts = range(0, n, batch_size)
    for start in starts:
        index = order[start : start + batch_size]
        opt.zero_grad(set_to_none=True)
        weight = None if sample_weight is None else sample_weight[index]
        loss = loss_on_logits(model(X[index]), y[index], weight)
        _penalised(model, loss, l2).backward()
        opt.step()
        _prox_l1(opt, model, l1)
        total += loss.detach()
    return total / len(starts)


def _history_row(
    history: dict[str, list[Any]],
    model: LogisticRegression,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    epoch: int,
    train_loss: float,
    lr: float,
) -> tuple[float, float]:
    """Append a logged epoch's row (its val scores computed now); the val loss and accuracy."""
    val_loss, val_accuracy = _val_scores(model, X_val, y_val)
    _log_row(history, epoch, train_loss, val_loss, val_accuracy, lr)
    return val_loss, val_accuracy


class _EarlyStopping:
    """Early stopping's watch over logged values (lower is better), the batched engine's rules:
    stop after ``patience`` logged epochs without a gain of ``min_delta``."""

    def __init__(self, config: EarlyStoppingSpec | None) -> None:
        self.config = config
        self.best = float("inf")
        self.best_epoch: int | None = None
        self.best_state: dict[str, Any] | None = None
        self.wait = 0

    def stops(self, watched: float, epoch: int, model: LogisticRegression) -> bool:
        """Take ``watched`` at ``epoch``; True, with the best weights restored when asked
        for, when patience has run out."""
        config = self.config
        if config is None or config.patience is None:
            return False
        if watched < self.best - config.min_delta:
            self.best, self.best_epoch, self.wait = watched, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.wait += 1
        if self.wait < config.patience:
            return False
        self.restore(model)
        return True

    def restore(self, model: LogisticRegression) -> None:
        """The best weights back into ``model``, when asked for and there are some."""
        if self.config is not None and self.config.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)


def _penalised(model: LogisticRegression, loss: torch.Tensor, l2: float) -> torch.Tensor:
    """The loss to backpropagate: the data loss plus ``l2/2 * ||W||^2`` (weights, not bias)."""
    if not l2:
        return loss
    return loss + 0.5 * l2 * model.linear.weight.square().sum()


@torch.no_grad()
def _prox_l1(opt: torch.optim.Optimizer, model: LogisticRegression, l1: float) -> None:
    """After ``opt.step()``: L1's proximal step on the weights, soft-thresholding them.

    SGD: by ``lr * l1`` (proximal gradient descent, with the lr the step used). Adam/AdamW: by
    ``step_size * l1 / denom`` per coordinate, from the optimizer's state -- ``step_size = lr /
    (1 - beta1^t)``, ``denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^t) + eps`` as torch computes
    them -- the proximal step in the diagonal metric of Adam's update (the engine's rule).
    """
    if not l1:
        return
    weight = model.linear.weight
    group = opt.param_groups[0]
    # sign(w) * max(|w| - t, 0), written as w - clamp(w, -t, t) so that |w| <= t gives exactly 0
    if isinstance(opt, torch.optim.SGD):
        threshold = group["lr"] * l1
        weight.sub_(torch.clamp(weight, -threshold, threshold))
        return
    state = opt.state[weight]
    step = float(state["step"])
    beta1, beta2 = group["betas"]
    step_size = group["lr"] / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(group["eps"])
    thresholds = step_size * l1 / denom
    weight.sub_(torch.clamp(weight, -thresholds, thresholds))


@torch.no_grad()
def evaluate(
    model: LogisticRegression, X: torch.Tensor, y: torch.Tensor
) -> dict[str, float | None]:
    """Loss, accuracy, ROC AUC and F1 of ``model`` on one split."""
    if len(y) == 0:
        return classification_metrics(np.zeros((0, model.n_classes)), np.zeros(0, np.int64), 0.0)
    logits = model(X)
    loss = loss_on_logits(logits, y).item()
    proba = logits_to_proba(logits).cpu().numpy()
    return classification_metrics(proba, y.cpu().numpy(), loss)


EVALUATION_ELEMENTS = 1 << 24  # logits evaluated at once (64 MiB of float32), at most


@torch.no_grad()
def evaluate_models(
    models: Sequence[LogisticRegression], X: torch.Tensor, y: torch.Tensor
) -> list[dict[str, float | None]]:
    """:func:`evaluate` of several models of one data set on one split, together: one batched
    product for their logits and the metrics of all at once (a 1,000-configuration grid spent
    as long evaluating model by model as training). One model is evaluated as ``evaluate``
    does; each of several gets its numbers to float32 rounding of that (the batched product
    sums in another order)."""
    if len(models) <= 1 or len(y) == 0:
        return [evaluate(model, X, y) for model in models]
    out: list[dict[str, float | None]] = []
    y_cpu = y.cpu().numpy()
    step = max(1, EVALUATION_ELEMENTS // (len(y) * models[0].linear.out_features))
    for start in range(0, len(models), step):
        chunk = models[start : start + step]
        weight = torch.stack([m.linear.weight for m in chunk])  # [K, out, F]
        bias = torch.stack([m.linear.bias for m in chunk])  # [K, out]
        logits = torch.baddbmm(bias[:, None, :], X.expand(len(chunk), -1, -1), weight.mT)
        if logits.shape[-1] == 1:
            target = y.to(logits.dtype).expand(len(chunk), -1)
            losses = F.binary_cross_entropy_with_logits(
                logits.squeeze(-1), target, reduction="none"
            ).mean(dim=1)
        else:
            losses = (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.repeat(len(chunk)), reduction="none"
                )
                .reshape(len(chunk), -1)
                .mean(dim=1)
            )
        proba = logits_to_proba(logits).cpu().numpy()
        out += classification_metrics_rows(proba, y_cpu, losses.tolist())
    return out


class _NonFinite(Exception):
    """Raised inside the L-BFGS closure to abandon a step whose loss or gradient broke."""


def train_lbfgs_reference(
    model: LogisticRegression,
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr: float,
    max_iter: int,
    history_size: int,
    tolerance_grad: float,
    tolerance_change: float,
    sample_weight: torch.Tensor | None = None,
    l2: float = 0.0,
    log_every: int = 10,
    on_log: LogCallback | None = None,
) -> Trained:
    """``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` with autograd, what
    `sweeplr.batched.train_lbfgs` is checked against, one iteration per ``step`` call.

    Objective: mean of ``sample_weight * loss`` (divided by n) + ``l2/2 ||weight||^2`` (bias
    unpenalised).  Each ``step(closure)`` runs one iteration (``max_iter=1``; the optimizer's
    state carries the history over), so the loop can log and prune between iterations.  To
    follow the trajectory of ONE call with ``max_iter`` exactly, each call gets ``max_eval`` =
    the evaluations left + 1 (its line search is then capped as in the single call) and torch's
    end-of-iteration exits are checked here between calls.  ``epochs_run`` counts iterations
    that took a step; the train loss logged is the data loss after the iteration's step.  A
    non-finite loss or gradient anywhere (line-search trials included) ends the run
    ``diverged`` at that iteration (the start evaluation counts as iteration 1).
    """
    params = list(model.parameters())
    objective = _lbfgs_objective(model, X_train, y_train, sample_weight, l2)
    opt = _one_iteration_lbfgs(params, lr, history_size, tolerance_grad, tolerance_change)
    closure = _lbfgs_closure(opt, params, objective)
    history = _new_history()
    log = _IterationLog(history, model, X_val, y_val, lr, on_log)
    logged = set(logged_epochs(max_iter, log_every))
    try:
        closure()
    except _NonFinite:
        return Trained(model, DIVERGED, 1, 1, history)
    if max_iter == 0 or _grad_max(params) <= tolerance_grad:
        return Trained(model, COMPLETED, 0, None, history)
    state = opt.state[params[0]]
    max_eval = max_iter * 5 // 4
    evals = 1  # what one call's current_evals would be
    for epoch in range(1, max_iter + 1):
        opt.param_groups[0]["max_eval"] = max_eval - evals + 1
        before = state.get("func_evals", 0)
        try:
            opt.step(closure)
        except _NonFinite:
            return Trained(model, DIVERGED, epoch, epoch, history)
        ls_evals = state["func_evals"] - before - 1  # minus the call's own start evaluation
        if ls_evals == 0:  # torch's g.d > -tolerance_change exit: no step this iteration
            if (
                log_every
                and epoch > 1
                and (not history["epoch"] or history["epoch"][-1] != epoch - 1)
            ):
                # The previous iteration was this run's last: log it as such (unchanged model).
                log.row(epoch - 1, _data_loss(objective), report=True)
            return Trained(model, COMPLETED, epoch - 1, None, history)
        evals += ls_evals
        with torch.enable_grad():
            loss = float(closure())  # bitwise the line search's accepted point
        train_loss = _data_loss(objective)
        done = epoch == max_iter or evals >= max_eval
        done = done or _torch_exits(state, loss, params, tolerance_grad, tolerance_change)
        if epoch in logged or (log_every and done):
            # an early row is not reported; a stop asked for at the last row is no pruning
            stop = log.row(epoch, train_loss, report=epoch % log_every == 0 or done)
            if stop and not done:
                return Trained(model, PRUNED, epoch, None, history)
        if done:
            return Trained(model, COMPLETED, epoch, None, history)
    return Trained(model, COMPLETED, max_iter, None, history)


def _one_iteration_lbfgs(
    params: Sequence[torch.Tensor],
    lr: float,
    history_size: int,
    tolerance_grad: float,
    tolerance_change: float,
) -> torch.optim.LBFGS:
    """``torch.optim.LBFGS`` with the strong-Wolfe search, one iteration per ``step`` call."""
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=1,
        history_size=history_size,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        line_search_fn="strong_wolfe",
    )


def _torch_exits(
    state: dict[str, Any],
    loss: float,
    params: Sequence[torch.Tensor],
    tolerance_grad: float,
    tolerance_change: float,
) -> bool:
    """Whether one ``LBFGS.step`` with ``max_iter`` would end after this iteration: a small
    gradient, a small step or a small change of the loss (torch's end-of-iteration exits)."""
    step = float((state["d"] * state["t"]).abs().max())
    return (
        _grad_max(params) <= tolerance_grad
        or step <= tolerance_change
        or abs(loss - state["prev_loss"]) < tolerance_change
    )


@dataclass
class _IterationLog:
    """The L-BFGS reference's history rows, each with val scores computed when logged."""

    history: dict[str, list[Any]]
    model: LogisticRegression
    X_val: torch.Tensor
    y_val: torch.Tensor
    lr: float
    on_log: LogCallback | None

    def row(self, epoch: int, train_loss: float, *, report: bool) -> bool:
        """Log ``epoch``'s row; when ``report``, tell ``on_log``: True if it asks to stop."""
        scores = _history_row(
            self.history, self.model, self.X_val, self.y_val, epoch, train_loss, self.lr
        )
        return report and self.on_log is not None and self.on_log(epoch, train_loss, *scores)


@torch.no_grad()
def _data_loss(objective: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The L-BFGS reference's data loss (no penalty) at the model's weights now."""
    return float(objective()[1])


def _lbfgs_objective(
    model: LogisticRegression,
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    l2: float,
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """The L-BFGS reference's objective: (the penalised loss, the data loss alone)."""
    weight = model.linear.weight
    n = len(y)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(X)
        if logits.shape[-1] == 1:
            losses = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), y.to(logits.dtype), reduction="none"
            )
        else:
            losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        data = (losses if sample_weight is None else losses * sample_weight).sum() / n
        return data + 0.5 * l2 * (weight * weight).sum(), data

    return objective


def _lbfgs_closure(
    opt: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    objective: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[], torch.Tensor]:
    """``LBFGS.step``'s closure: the loss, its gradients set; `_NonFinite` if either broke."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss, _ = objective()
        loss.backward()
        finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
        if not (bool(torch.isfinite(loss)) and finite):
            raise _NonFinite
        return loss.detach()  # (torch's step only takes float() of it)

    return closure


def _grad_max(params: Sequence[torch.Tensor]) -> float:
    """The largest absolute gradient entry of ``params`` (every one has a gradient)."""
    return max(float(p.grad.abs().max()) for p in params if p.grad is not None)
