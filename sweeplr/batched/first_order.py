"""The first-order solver: K configurations trained at once with SGD, Adam or AdamW.

Logistic regression is so small that a conventional training step (``nn.Linear`` forward,
autograd backward, ``torch.optim`` step) spends almost all of its time in Python and dispatcher
overhead.  This solver trains K configurations of the *same* data set in one pass: the K weight
matrices are stacked, so the logits of every configuration come from one matmul and the weight
gradients from one more (`sweeplr.batched.loss`), with the gradient in closed form (no autograd
graph), and the optimizers' updates are ``torch.optim``'s rules with per-configuration
hyperparameters (`sweeplr.batched.optimizers`).  A step's variant (plain, fused, Triton) and
the plain epochs' loop (sign-folded, CUDA graphs) are chosen in `sweeplr.batched.steps`.

Configurations whose loss becomes non-finite are detected every ``check_every`` epochs and
removed from the batch (so they cannot slow down or contaminate the others); a callback can
prune configurations early.  Epochs that are neither checked, logged nor reported run back to
back (`FirstOrderRun._plain_epochs`): on small data an epoch is microseconds of op dispatch, so
per-epoch bookkeeping and every op count.  No Hydra: the sweep layer maps configurations onto
it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from sweeplr.batched.api import (
    EarlyStopping,
    EngineResult,
    History,
    LrSchedule,
    Penalty,
    ReportCallback,
    dataloader_permutation,
    logged_epochs,
)
from sweeplr.batched.epochs import FoldedBinarySteps, GraphedEpochs
from sweeplr.batched.inputs import Val, per_config, validate_inputs, validate_reporting
from sweeplr.batched.loss import add_l2, loss_targets, scores
from sweeplr.batched.optimizers import OptimizerConfig, make_optimizer
from sweeplr.batched.steps import Workspace, loss_and_grad
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED, Status


def train_batched(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    optimizer: OptimizerConfig,
    epochs: int,
    *,
    batch_size: int | None = None,
    shuffle_seed: int = 0,
    val: Val | None = None,
    log_every: int = 0,
    on_report: ReportCallback | None = None,
    report_every: int = 1,
    check_every: int = 10,
    lr_schedule: LrSchedule | None = None,
    early_stopping: EarlyStopping | None = None,
    sample_weight: Tensor | None = None,
    penalty: Penalty | None = None,
) -> EngineResult:
    """Train K logistic-regression configurations on ``(X, y)`` simultaneously.

    Configuration k behaves like ``nn.Linear(F, out)`` initialised to ``(weight[k], bias[k])``
    (``[K, out, F]``, ``[K, out]``; not modified), trained for ``epochs`` epochs with
    ``torch.optim`` of ``optimizer.kind`` and its k-th hyperparameters on the objective of
    `sweeplr.batched.loss`: the mean BCE-with-logits or cross-entropy, with ``sample_weight``
    ``[n]`` or ``[K, n]`` ``(1/n) sum_i s_ki loss_ki`` (torch's ``weight=s`` mean), plus
    ``penalty`` (`Penalty`; its L1 by a proximal step, `SGD.prox_l1`, `Adam.prox_l1`).  The
    recorded train loss is the (weighted) data loss, never a penalty term.  X, y (int64 class
    codes) and the row weights share a device and dtype, which the run takes.

    ``batch_size`` None is full-batch gradient descent; otherwise mini-batches in the order of
    ``DataLoader(TensorDataset(X, y), batch_size, shuffle=True, generator=g)`` with ``g =
    torch.Generator().manual_seed(shuffle_seed)`` (`dataloader_permutation`), shared by all
    configurations; a mini-batch still divides by its row count.  ``val`` is ``(X_val, y_val)``
    or ``(X_val, y_val, val_weight [K, n_val])`` (a k-fold member's held-out rows: weighted
    means over them), scored at the logged epochs: every ``log_every``-th, the last, and the
    early ones of `logged_epochs` (0: no history).  ``on_report(epoch, active_mask, train_loss,
    val_loss, val_accuracy)`` is called every ``report_every`` epochs with fresh CPU tensors of
    length K, NaN where inactive (and the validation scores unless the epoch is logged too);
    configurations it flags stop ``pruned``.  Every ``check_every`` epochs the buffered losses
    are synchronised to the host and checked for non-finite values (the recorded divergence
    epoch is exact either way).  ``lr_schedule`` gives each configuration's lr per epoch and
    observes the metrics of every ``log_every``-th epoch; ``early_stopping`` (needs ``val``)
    watches them too.  Weighted or penalised runs take the plain step (`sweeplr.batched.steps`).
    """
    validate_inputs(X, y, n_classes, weight, bias, val, sample_weight)
    validate_reporting(log_every, report_every, on_report)
    for name, value, low in (("epochs", epochs, 0), ("check_every", check_every, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if early_stopping is not None and val is None:
        raise ValueError("early stopping needs val")
    with torch.no_grad():
        run = FirstOrderRun(
            X, y, n_classes, weight, bias, optimizer, batch_size, shuffle_seed, val,
            sample_weight=sample_weight, penalty=penalty,
            lr_schedule=lr_schedule, early_stopping=early_stopping,
        )  # fmt: skip
        return run.train(epochs, log_every, on_report, report_every, check_every)


class FirstOrderRun:
    """State of one `train_batched` call: the *active* configurations, stacked.

    Stopped configurations are written to ``final`` and removed from every per-configuration
    tensor (``_stop``), so the epoch loop never masks, and NaNs of a diverged configuration can
    reach no other row: every op is row-wise in the configuration dimension.
    """

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        n_classes: int,
        weight: Tensor,
        bias: Tensor,
        optimizer: OptimizerConfig,
        batch_size: int | None,
        shuffle_seed: int,
        val: Val | None,
        *,
        sample_weight: Tensor | None = None,
        penalty: Penalty | None = None,
        lr_schedule: LrSchedule | None = None,
        early_stopping: EarlyStopping | None = None,
    ) -> None:
        k = weight.shape[0]
        self.X = X
        self.val = None if val is None else (val[0], val[1])
        # Per-configuration tensors beyond the optimizer's, selected in _stop with the rest:
        # validation row weights [Ka, n_val]; row weights [1, n] (shared) or [Ka, n]; the
        # penalties' strengths as [Ka, 1, 1] columns, None when no configuration has one.
        self.val_w = val[2] if val is not None and len(val) == 3 else None
        self.sw = None if sample_weight is None else sample_weight.reshape(-1, X.shape[0])
        self.sw_per_config = sample_weight is not None and sample_weight.ndim == 2
        self.l2: Tensor | None = None
        self.l1: Tensor | None = None
        if penalty is not None:
            for name in ("l2", "l1"):
                strength = per_config(
                    f"penalty.{name}", getattr(penalty, name), k, nonnegative=True
                )
                if bool(strength.any()):
                    setattr(self, name, strength.to(X.dtype).to(X.device).view(-1, 1, 1))
        self.extended = self.sw is not None or self.l2 is not None or self.l1 is not None
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(shuffle_seed)
        # Parameters of configuration k live in P[k] = [W | b]: [out, F+1].  One tensor means
        # one op per optimizer update for weight and bias together.
        self.P = torch.cat([weight, bias.unsqueeze(-1)], dim=2)
        self.G = torch.empty_like(self.P)
        self.final = self.P.clone()
        self.opt, lr = make_optimizer(optimizer, k, self.P)
        self.active = list(range(k))
        self.active_t = torch.arange(k, device=X.device)
        self.status: list[Status] = [COMPLETED] * k
        self.epochs_run = [0] * k
        self.diverged_epoch: list[int | None] = [None] * k
        self.lr_now = lr.numpy().copy()  # every configuration's lr, float64, by index
        self.lr_schedule = lr_schedule
        self.early = early_stopping
        self.best_epoch: list[int | None] = [None] * k
        self.targets = loss_targets(y, n_classes, X.dtype)
        self.workspaces: dict[int, Workspace] = {}
        self.folded: FoldedBinarySteps | None = None  # the plain epochs' loop, if it applies
        self.graphed: GraphedEpochs | None = None  # their CUDA graphs, if they apply
        self.graphs_failed = False
        self._set_ring(self.P.new_empty(k, 0))  # sized by train
        self.ring_pos = 0
        # Epoch train loss = ring value / loss_divisor: full batch stores the loss sum; mini-
        # batch the mean over batches of sum_j / n_j, via these weights 1 / (n_j * n_batches).
        n = X.shape[0]
        if batch_size is None:
            self.loss_divisor = float(n)
        else:
            self.loss_divisor = 1.0
            sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
            self.batch_weights = X.new_tensor([1 / (nb * len(sizes)) for nb in sizes])

    # ----- per-step kernels ------------------------------------------------------------------

    def workspace(self, nb: int) -> Workspace:
        """The buffers and chosen step for ``nb`` rows (made on first use)."""
        ws = self.workspaces.get(nb)
        if ws is None:
            ws = self.workspaces[nb] = Workspace(self, nb)
        return ws

    def _plain_epochs(self, count: int) -> None:
        """``count`` epochs that are neither logged, reported nor end a check window: their
        losses are only checked for finiteness later, so they go into the ring in one go."""
        cols = self.ring_cols[self.ring_pos : self.ring_pos + count]
        self.ring_pos += count
        if self.batch_size is not None:
            for col in cols:
                self._mini_batch_epoch(col, False)
            return
        ws = self.workspace(self.X.shape[0])
        if self.folded is None or self.folded.ws is not ws:
            self.folded = FoldedBinarySteps(ws) if ws.chosen.fold else None
        if not self.graphs_failed and ws.chosen.graph:
            if self.graphed is None or not self.graphed.current(self, ws):
                self.graphed = GraphedEpochs(self, ws, self.folded)
            start = self.ring_pos - count
            if self.graphed.run_chunk(start, count):
                return
            if self.graphed.failed:  # a capture failed: this run goes on eagerly
                self.graphs_failed = True
            else:  # SGD's first momentum step, eagerly; then the others as a graph
                self.full_batch_epoch(cols[0], False)
                if count == 1 or self.graphed.run_chunk(start + 1, count - 1):
                    return
                self.graphs_failed = True
                cols = cols[1:]
        if self.folded is not None:
            self.folded.run(cols, self.opt.step, self.P, self.G)
            return
        for col in cols:
            self.full_batch_epoch(col, False)

    def full_batch_epoch(self, loss_out: Tensor, want_loss: bool) -> None:
        """One step on all of X; ``loss_out`` gets the loss *sum* (see ``loss_divisor``)."""
        ws = self.workspace(self.X.shape[0])
        loss_and_grad(ws, loss_out, want_loss)
        self._step()

    def _step(self) -> None:
        """The optimizer's update from G, with the penalties on the weights (not the bias):
        ``l2 * W`` added to the gradient before, L1's proximal step after (see `Penalty`)."""
        if self.l2 is None and self.l1 is None:
            self.opt.step(self.P, self.G)
            return
        n_features = self.P.shape[2] - 1
        if self.l2 is not None:
            add_l2(self.G[..., :n_features], self.P[..., :n_features], self.l2)
        self.opt.step(self.P, self.G)
        if self.l1 is not None:
            self.opt.prox_l1(self.P[..., :n_features], self.l1)

    def _mini_batch_epoch(self, loss_out: Tensor, want_loss: bool) -> None:
        """One step per mini-batch; ``loss_out`` gets the mean of the batch means."""
        n = self.X.shape[0]
        bs = self.batch_size
        assert bs is not None
        perm = dataloader_permutation(self.generator, n).to(self.X.device)
        batch_sums = self.P.new_empty(len(self.active), self.batch_weights.shape[0])
        for j, start in enumerate(range(0, n, bs)):
            idx = perm[start : start + bs]
            ws = self.workspace(idx.shape[0])
            torch.index_select(self.X, 0, idx, out=ws.x)
            for full, buf in zip(self.targets, ws.targets, strict=True):
                torch.index_select(full, full.ndim - 1, idx, out=buf)
            if self.sw is not None:
                assert ws.sw is not None
                torch.index_select(self.sw, 1, idx, out=ws.sw)
            loss_and_grad(ws, batch_sums[:, j], want_loss)
            self._step()
        # sum_j sum_j / (n_j * n_batches): each term is at most a finite batch mean, so this
        # is non-finite exactly when some batch loss is, like the reference's Python mean.
        torch.mv(batch_sums, self.batch_weights, out=loss_out)

    # ----- bookkeeping -----------------------------------------------------------------------

    def _stop(
        self, positions: list[int], status: Status, epochs: list[int], weights: Tensor | None = None
    ) -> None:
        """Freeze the active configurations at ``positions`` and drop them from the batch.

        Their final parameters are their current ones, or ``weights`` (``[K, out, F+1]``, by
        configuration index: early stopping's best).
        """
        if not positions:
            return
        for pos, epoch in zip(positions, epochs, strict=True):
            k = self.active[pos]
            self.status[k] = status
            self.epochs_run[k] = epoch
            if status == DIVERGED:
                self.diverged_epoch[k] = epoch
        stopped = torch.tensor(positions, device=self.P.device)
        indices = self.active_t[stopped]
        source = self.P[stopped] if weights is None else weights.index_select(0, indices)
        self.final.index_copy_(0, indices, source)
        dropped = set(positions)
        kept = [i for i in range(len(self.active)) if i not in dropped]
        keep = torch.tensor(kept, dtype=torch.int64, device=self.P.device)
        self.active = [self.active[i] for i in kept]
        self.active_t = self.active_t[keep]
        self.P = self.P.index_select(0, keep)
        self.G = torch.empty_like(self.P)
        self._set_ring(self.ring.index_select(0, keep))
        self.opt.select(keep)
        if self.sw is not None and self.sw_per_config:
            self.sw = self.sw.index_select(0, keep)
        for name in ("val_w", "l2", "l1"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, keep))
        self.workspaces.clear()

    def _set_ring(self, ring: Tensor) -> None:
        """``ring[:, j]``: train loss of the j-th epoch since the last divergence check."""
        self.ring = ring
        self.ring_cols = ring.unbind(1)

    def _check_divergence(self, epoch: int) -> None:
        """Stop configurations with a non-finite loss in the epochs since the last check.

        One host sync per check: a non-finite sum of the buffered losses (all >= 0) is the cheap
        signal; only then is the buffer searched for each configuration's first bad epoch.
        """
        window = self.ring[:, : self.ring_pos]
        first_epoch = epoch - self.ring_pos + 1
        self.ring_pos = 0
        if window.shape[1] == 0 or math.isfinite(window.sum().item()):
            return
        bad = ~torch.isfinite(window)
        positions = bad.any(1).nonzero().flatten().tolist()
        first_bad = bad.to(torch.uint8).argmax(1).tolist()
        self._stop(positions, DIVERGED, [first_epoch + first_bad[i] for i in positions])

    def _evaluate(self) -> tuple[Tensor, Tensor]:
        """Validation loss and accuracy of the active configurations, ``[Ka]`` each
        (`sweeplr.batched.loss.scores`)."""
        assert self.val is not None
        ka, out, fp1 = self.P.shape
        p2 = self.P.view(ka * out, fp1)
        return scores(p2[:, : fp1 - 1], p2[:, fp1 - 1 :], out, *self.val, self.val_w)

    def train(
        self,
        epochs: int,
        log_every: int,
        on_report: ReportCallback | None,
        report_every: int,
        check_every: int,
    ) -> EngineResult:
        """The epoch loop; see `train_batched`."""
        k = len(self.active)
        like = self.P
        self._set_ring(like.new_empty(k, check_every))
        self.ring_pos = 0
        logged = logged_epochs(epochs, log_every)
        hist_epochs: list[int] = []
        hist = like.new_full((1 if self.val is None else 3, len(logged), k), math.nan)
        hist_lr = np.full((len(logged), k), math.nan)
        if self.early is not None:
            self._start_early_stopping()
        epoch_loss = like.new_empty(k)
        epoch = 0
        while epoch < epochs:
            if self.lr_schedule is None:  # (a schedule is asked for every epoch's lr)
                # Run the epochs before the next logged, reported, checked or last one in one go.
                special = min(
                    logged[len(hist_epochs)] if len(hist_epochs) < len(logged) else epochs,
                    (epoch // report_every + 1) * report_every if on_report is not None else epochs,
                    epoch + check_every - self.ring_pos,
                    epochs,
                )
                if special - 1 > epoch:
                    self._plain_epochs(special - 1 - epoch)
                    epoch = special - 1
            epoch += 1
            logging = bool(logged) and epoch == logged[len(hist_epochs)]
            reporting = on_report is not None and epoch % report_every == 0
            if self.lr_schedule is not None:
                self._schedule_lr(epoch)
            loss_out = self.ring_cols[self.ring_pos]
            self.ring_pos += 1
            if self.batch_size is None:
                self.full_batch_epoch(loss_out, logging or reporting)
            else:
                self._mini_batch_epoch(loss_out, logging or reporting)
            if logging:
                t = len(hist_epochs)
                hist_epochs.append(epoch)
                hist_lr[t, self.active] = self.lr_now[self.active]
                hist[0, t].index_copy_(0, self.active_t, loss_out / self.loss_divisor)
                if self.val is not None:
                    val_loss, val_accuracy = self._evaluate()
                    hist[1, t].index_copy_(0, self.active_t, val_loss)
                    hist[2, t].index_copy_(0, self.active_t, val_accuracy)
            if reporting:
                epoch_loss.fill_(math.nan)
                epoch_loss.index_copy_(0, self.active_t, loss_out / self.loss_divisor)
            if reporting or self.ring_pos == check_every or epoch == epochs:
                self._check_divergence(epoch)
            if reporting and self.active:
                assert on_report is not None
                # The validation scores of this epoch, for callbacks that prune on them.
                val_now = (
                    hist[1:, len(hist_epochs) - 1] if logging and self.val is not None else None
                )
                self._report(on_report, epoch, epoch_loss.cpu(), val_now)
            watching = logging and (epoch % log_every == 0 or epoch == epochs)  # not early rows
            if (
                watching
                and self.active
                and (self.early is not None or self.lr_schedule is not None)
            ):
                self._watch(epoch, hist[:, len(hist_epochs) - 1])
            if not self.active:
                break
        return self._finish(epoch, hist_epochs, hist, hist_lr)

    # ----- schedules and early stopping --------------------------------------------------------

    def _schedule_lr(self, epoch: int) -> None:
        """Give the active configurations this epoch's lr, when the schedule changed one."""
        assert self.lr_schedule is not None
        row = self.lr_schedule.lr(epoch)
        if row is not None:
            self.lr_now = np.asarray(row, dtype=np.float64).copy()
            self.opt.set_lr(torch.from_numpy(self.lr_now[self.active]))

    def _start_early_stopping(self) -> None:
        assert self.early is not None
        k = len(self.status)
        sign = [1.0 if w == "val_loss" else -1.0 for w in self.early.watch]
        self.es_sign = np.asarray(sign)  # compare sign * value: lower is better
        self.es_best = np.full(k, math.inf)
        self.es_wait = np.zeros(k, dtype=np.int64)
        self.best_P = self.P.clone()

    def _watch(self, epoch: int, logged: Tensor) -> None:
        """After a logged epoch: early stopping's bookkeeping, then plateau schedules."""
        columns = ("train_loss", "val_loss", "val_accuracy")[: logged.shape[0]]
        values = logged.cpu().numpy()
        metrics = dict(zip(columns, values, strict=True))
        if self.early is not None:
            self._early_stop(epoch, metrics)
        if self.lr_schedule is not None and self.active:
            active = np.zeros(len(self.status), dtype=bool)
            active[self.active] = True
            self.lr_schedule.observe(metrics, active)

    def _early_stop(self, epoch: int, metrics: Mapping[str, npt.NDArray[np.float64]]) -> None:
        """Track each active configuration's best watched value; stop the patient ones."""
        early = self.early
        assert early is not None
        improved, done = [], []
        for pos, k in enumerate(self.active):
            if early.patience[k] is None:
                continue
            value = self.es_sign[k] * metrics[early.watch[k]][k]
            if value < self.es_best[k] - early.min_delta[k]:  # NaN never improves
                self.es_best[k] = value
                self.best_epoch[k] = epoch
                self.es_wait[k] = 0
                improved.append(pos)
            else:
                self.es_wait[k] += 1
                if self.es_wait[k] >= early.patience[k]:
                    done.append(pos)
        if improved:
            at = torch.tensor(improved, device=self.P.device)
            self.best_P.index_copy_(0, self.active_t[at], self.P[at])
        stopping = [self.active[pos] for pos in done]
        for restore in (True, False):  # by configuration index: positions move as they stop
            group = [k for k in stopping if early.restore_best[k] == restore]
            positions = [self.active.index(k) for k in group]
            self._stop(
                positions, COMPLETED, [epoch] * len(positions), self.best_P if restore else None
            )

    def _report(
        self, on_report: ReportCallback, epoch: int, loss: Tensor, val: Tensor | None
    ) -> None:
        """Call ``on_report`` (with fresh tensors it may keep) and prune what it flags."""
        active_mask = torch.zeros(loss.shape[0], dtype=torch.bool)
        active_mask[self.active] = True
        loss = torch.where(active_mask, loss, math.nan)
        if val is None:
            val = torch.full((2, loss.shape[0]), math.nan)
        val_loss, val_accuracy = (torch.where(active_mask, v.cpu(), math.nan) for v in val)
        stop = on_report(epoch, active_mask.clone(), loss, val_loss, val_accuracy)
        if stop is None:
            return
        stop = torch.as_tensor(stop, dtype=torch.bool).cpu()
        if stop.shape != active_mask.shape:
            raise ValueError(f"on_report must return {active_mask.shape[0]} flags")
        positions = [i for i, k in enumerate(self.active) if stop[k]]
        self._stop(positions, PRUNED, [epoch] * len(positions))

    def _finish(
        self,
        last_epoch: int,
        hist_epochs: list[int],
        hist: Tensor,
        hist_lr: npt.NDArray[np.float64],
    ) -> EngineResult:
        """Final parameter check, gather all configurations, and clean the history."""
        if self.active:
            broken = ~torch.isfinite(self.P).flatten(1).all(1)
            positions = broken.nonzero().flatten().tolist()
            self._stop(positions, DIVERGED, [last_epoch] * len(positions))
            early = self.early
            restore = [
                k
                for k in self.active
                if early is not None and early.restore_best[k] and self.best_epoch[k] is not None
            ]
            if restore:
                positions = [self.active.index(k) for k in restore]
                self._stop(positions, COMPLETED, [last_epoch] * len(positions), self.best_P)
            self._stop(list(range(len(self.active))), COMPLETED, [last_epoch] * len(self.active))
        hist = hist[:, : len(hist_epochs)].cpu()
        lr = torch.from_numpy(hist_lr[: len(hist_epochs)])
        logged = torch.tensor(hist_epochs, dtype=torch.int64)
        for k in range(len(self.status)):
            after = logged > self.epochs_run[k]
            hist[:, after, k] = math.nan
            lr[after, k] = math.nan
        n_features = self.final.shape[2] - 1
        return EngineResult(
            weight=self.final[..., :n_features].contiguous(),
            bias=self.final[..., n_features].contiguous(),
            status=self.status,
            epochs_run=self.epochs_run,
            diverged_epoch=self.diverged_epoch,
            history=History(
                epochs=hist_epochs,
                train_loss=hist[0],
                val_loss=hist[1] if self.val is not None else None,
                val_accuracy=hist[2] if self.val is not None else None,
                lr=lr,
            ),
            best_epoch=self.best_epoch,
        )
