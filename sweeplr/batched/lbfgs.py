"""Batched full-batch L-BFGS over K logistic-regression configurations.

Each configuration k follows ``torch.optim.LBFGS(params, lr=lr_k, max_iter=max_iter,
history_size=..., tolerance_grad=..., tolerance_change=..., line_search_fn="strong_wolfe")``
and ONE call of ``step(closure)`` on ``nn.Linear``'s parameters (flattened as torch flattens
them: ``[weight.flatten(), bias]``), minimising

    J_k(W, b) = (1/n) sum_i s_ki loss(z_ki, y_i) + l2_k/2 ||W_k||^2   (bias unpenalised).

Every configuration has its own history, ``H_diag``, step and strong-Wolfe line search; they
advance in lock-step by iteration (one "epoch" = one L-BFGS iteration).  Inside an iteration the
line searches are Python generators (a port of torch's ``_strong_wolfe``) that yield trial
steps; every evaluation round stacks the trial points of all configurations that asked for one
and computes their losses and closed-form gradients with one matmul pair, so a trial costs one
pass over X however many configurations need it.  The line-search scalars (losses, directional
derivatives, steps) are float64 on the host: a few small transfers per iteration (one per
evaluation round, one for the curvature test ``y.s > 1e-10``, one for the exit tests), none per
configuration.  That reproduces torch's arithmetic in float64 (the tests hold each configuration
to torch.optim.LBFGS within 1e-8, only the order of summation in the dot products differs); in
float32 torch does part of that scalar arithmetic in float32 tensors, so float32 trajectories
follow the same algorithm up to rounding (breast cancer, C=1: 30 iterations against torch's 28,
weights within 2e-5 relative).

The objective, its gradient and the validation scores are `sweeplr.batched.loss`'s, as for
the first-order solver, whose result, penalty and callback types this shares; the line search
is `sweeplr.batched.wolfe`.  No Hydra: ``sweeplr.fitting`` calls it for ``optimizer=lbfgs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from sweeplr.batched.api import (
    EngineResult,
    History,
    HParam,
    Penalty,
    ReportCallback,
    logged_epochs,
)
from sweeplr.batched.inputs import Val, per_config, validate_inputs, validate_reporting
from sweeplr.batched.loss import (
    Buffers,
    add_l2,
    l2_objective,
    loss_gradient,
    loss_targets,
    scores,
)
from sweeplr.batched.wolfe import LineSearch, strong_wolfe
from sweeplr.schema import COMPLETED, DIVERGED, PRUNED, Status

__all__ = ["train_lbfgs"]

Accepted = tuple[float, Any, float, int]  # a line search's result: f, payload, t, evaluations


class _Problem:
    """Data, per-configuration row weights and L2, and the objective of `sweeplr.batched.loss`
    at flat parameters (torch's ``[weight.flatten(), bias]`` per configuration)."""

    def __init__(
        self,
        X: Tensor,
        y: Tensor,
        n_classes: int,
        sample_weight: Tensor | None,
        l2: npt.NDArray[np.float64],
    ) -> None:
        self.X, self.n, self.n_features = X, X.shape[0], X.shape[1]
        self.out = 1 if n_classes == 2 else n_classes
        self.targets = loss_targets(y, n_classes, X.dtype)
        self.sw = sample_weight
        self.l2 = torch.as_tensor(l2, dtype=X.dtype, device=X.device)
        self.has_l2 = bool((l2 != 0).any())

    def _split(self, P: Tensor) -> tuple[Tensor, Tensor]:
        """Weights ``[kw*out, F]`` and biases ``[kw*out, 1]`` of flat parameters ``P``."""
        kw, out, nf = P.shape[0], self.out, self.n_features
        return P[:, : out * nf].reshape(kw * out, nf), P[:, out * nf :].reshape(kw * out, 1)

    def evaluate(self, P: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(objective [kw], data loss [kw], gradient [kw, D])`` at flat parameters ``P``;
        ``P[j]`` belongs to configuration ``idx[j]``."""
        kw, out, nf, n = P.shape[0], self.out, self.n_features, self.n
        sw = None
        if self.sw is not None:
            sw = (self.sw if self.sw.ndim == 1 else self.sw.index_select(0, idx)).reshape(-1, n)
        buf = Buffers.make(P, kw, out, self.targets, 1.0 / n)
        loss_sum, gw, gb = P.new_empty(kw), P.new_empty(kw * out, nf), P.new_empty(kw * out)
        w, b = self._split(P)
        loss_gradient(self.X, self.targets, w, b, sw, buf, True, loss_sum, gw, gb)
        data = loss_sum / n
        grad_w, f = gw.view(kw, out * nf), data
        if self.has_l2:
            l2 = self.l2.index_select(0, idx)
            f = l2_objective(data, P[:, : out * nf], l2)
            add_l2(grad_w, P[:, : out * nf], l2.unsqueeze(1))
        return f, data, torch.cat([grad_w, gb.view(kw, out)], 1)

    def scores(self, P: Tensor, val: Val, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Validation loss and accuracy of configurations ``idx`` (`loss.scores`)."""
        row_weight = val[2].index_select(0, idx) if len(val) == 3 else None
        return scores(*self._split(P), self.out, val[0], val[1], row_weight)


def train_lbfgs(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    *,
    lr: HParam = 1.0,
    max_iter: int,
    history_size: int = 100,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    max_ls: int | None = None,
    sample_weight: Tensor | None = None,
    penalty: Penalty | None = None,
    val: Val | None = None,
    log_every: int = 0,
    on_report: ReportCallback | None = None,
    report_every: int = 1,
) -> EngineResult:
    """Minimise each configuration's objective with torch's strong-Wolfe L-BFGS, all at once.

    Configuration k is ``torch.optim.LBFGS([W_k, b_k], lr=lr[k], max_iter=max_iter,
    history_size=history_size, tolerance_grad=..., tolerance_change=...,
    line_search_fn="strong_wolfe").step(closure)`` -- one call -- on J_k (module docstring).
    Torch's exits end it ``completed``: gradient inf-norm <= tolerance_grad (also at the start),
    ``g.d > -tolerance_change``, ``max|t d| <= tolerance_change``, ``|J - J_prev| <
    tolerance_change``, ``max_iter`` iterations, or ``max_iter * 5 // 4`` evaluations.

    Args:
        X, y, n_classes, weight, bias: as `sweeplr.batched.train_batched` (weight ``[K, out, F]``,
            bias ``[K, out]``, not modified).
        lr: torch's lr (>= 0: each line search's first trial step, the first iteration's
            scaled by min(1, 1/|g|_1)), per configuration or shared.
        max_iter: iterations (= epochs); torch's ``max_iter`` of the one ``step`` call.
        max_ls: None: torch's line search, capped only by the evaluations left (``max_eval``
            minus those made, what ``LBFGS.step`` passes); an int caps it further.
        sample_weight: ``[n]`` or ``[K, n]`` row weights s (the mean divides by n, not by sum(s)).
        penalty: ``l2`` per configuration; a nonzero ``l1`` is refused (needs a proximal step).
        val: ``(X_val, y_val)`` or ``(X_val, y_val, val_weight[K, n_val])`` (0/1 masks: means
            over the rows with weight > 0), scored at logged iterations.
        log_every: history every this many iterations, at the early ones of `logged_epochs`
            and at every iteration where some configuration completed (its last); 0: none.
        on_report: ``on_report(epoch, active_mask, train_loss, val_loss, val_accuracy)`` every
            ``report_every`` iterations, `train_batched`'s contract; flagged configurations still
            running stop ``pruned`` (a flag on one that completed at that iteration is ignored).

    Returns:
        `EngineResult`.  ``epochs_run[k]``: iterations that took a step (a configuration stopped
        by the ``g.d`` test at iteration i ran i - 1; by the start test, 0); for a diverged
        one, the iteration during which a loss or gradient became non-finite (the start
        evaluation counts as iteration 1).  ``history.train_loss`` is the *data* loss (weighted
        mean, no penalty) at the iteration's end point, after its line search -- the point the
        iteration produced, which is what a converged configuration is judged by (train_batched
        records the loss before the update instead).  ``lr`` is lr_k.
    """
    validate_inputs(X, y, n_classes, weight, bias, val, sample_weight)
    if max_iter < 0 or history_size < 1:
        raise ValueError("need max_iter >= 0 and history_size >= 1")
    validate_reporting(log_every, report_every, on_report)
    k = weight.shape[0]
    # copies: a caller's float64 tensor would otherwise share its memory with them
    lrs = per_config("lr", lr, k, nonnegative=True).numpy().copy()
    l2 = np.zeros(k)
    if penalty is not None:
        l2 = per_config("l2", penalty.l2, k, nonnegative=True).numpy().copy()
    if penalty is not None and bool(per_config("l1", penalty.l1, k, nonnegative=True).any()):
        raise ValueError("l1 needs a proximal optimizer")
    with torch.no_grad():
        problem = _Problem(X, y, n_classes, sample_weight, l2)
        run = _Run(problem, weight, bias, lrs, history_size, tolerance_grad, tolerance_change)
        return run.train(max_iter, max_ls, val, log_every, on_report, report_every)


class _Run:
    """State of K L-BFGS runs: flat parameters ``P [K, D]`` and torch's per-run state."""

    def __init__(
        self,
        problem: _Problem,
        weight: Tensor,
        bias: Tensor,
        lrs: npt.NDArray[np.float64],
        history_size: int,
        tolerance_grad: float,
        tolerance_change: float,
    ) -> None:
        self.pb = problem
        k = weight.shape[0]
        self.k = k
        self.P = torch.cat([weight.reshape(k, -1), bias.reshape(k, -1)], 1)
        like = self.P
        dim = like.shape[1]
        self.lrs = lrs
        self.m = history_size
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        # History in torch's order per configuration (oldest first, slot j < count[k]); empty
        # slots are zero with ro = 0, so the vectorised two-loop recursion passes over them
        # without effect and each configuration sees exactly its own entries in torch's order.
        self.old_dirs = like.new_zeros(k, history_size, dim)  # y = g_new - g_old
        self.old_stps = like.new_zeros(k, history_size, dim)  # s = t d
        self.ro = like.new_zeros(k, history_size)
        self.count = np.zeros(k, dtype=np.int64)
        self.h_diag = like.new_ones(k)
        self.d = like.new_zeros(k, dim)
        self.t = np.zeros(k)
        self.f = np.zeros(k)  # objective at P (float64 on the host)
        self.prev_loss = np.zeros(k)
        self.evals = np.ones(k, dtype=np.int64)  # torch's current_evals (the start's counts)
        self.G = torch.zeros_like(self.P)  # gradient at P
        self.data_loss = like.new_zeros(k)  # data loss at P (the history's train loss)
        self.gtd = np.zeros(k)  # g.d and max|d| of the pending direction
        self.d_norm = np.zeros(k)
        self.status: list[Status | None] = [None] * k
        self.epochs_run = [0] * k
        self.diverged_epoch: list[int | None] = [None] * k

    def _finish(self, ks: Sequence[int], status: Status, epoch: int) -> None:
        for kk in ks:
            self.status[kk] = status
            self.epochs_run[kk] = epoch
            if status == DIVERGED:
                self.diverged_epoch[kk] = epoch

    def _index(self, ks: Sequence[int]) -> Tensor:
        return torch.tensor(list(ks), dtype=torch.int64, device=self.P.device)

    def _direction(self, ks: list[int], G_new: Tensor, G_old: Tensor) -> None:
        """torch's memory update and two-loop recursion for configurations ``ks`` (in place).

        Vectorised over the configurations (every op works on all of ``ks`` at once, empty
        history slots are no-ops): op dispatch dominates at these sizes, so one vectorised path
        serves every K, where a loop of torch's per-configuration recursion would grow with K
        (bench/README.md, "L-BFGS directions").
        """
        idx = self._index(ks)
        d, t = self.d.index_select(0, idx), torch.as_tensor(self.t[ks], dtype=self.P.dtype)
        yv = G_new - G_old
        s = d * t.to(d.device).unsqueeze(1)
        ys = torch.linalg.vecdot(yv, s)
        ys_host = ys.cpu().numpy()
        upd = [j for j, kk in enumerate(ks) if ys_host[j] > 1e-10]
        if upd:
            uj = self._index(upd)
            uk = idx.index_select(0, uj)
            full = [ks[j] for j in upd if self.count[ks[j]] == self.m]
            if full:  # torch pops the oldest pair: shift those histories down by one slot
                fk = self._index(full)
                for buf in (self.old_dirs, self.old_stps, self.ro):
                    buf[fk, :-1] = buf[fk, 1:].clone()
            slots = [min(int(self.count[ks[j]]), self.m - 1) for j in upd]
            sl = self._index(slots)
            yu, su, ysu = yv.index_select(0, uj), s.index_select(0, uj), ys.index_select(0, uj)
            self.old_dirs[uk, sl] = yu
            self.old_stps[uk, sl] = su
            self.ro[uk, sl] = 1.0 / ysu
            self.h_diag[uk] = ysu / torch.linalg.vecdot(yu, yu)
            for j in upd:
                self.count[ks[j]] = min(self.count[ks[j]] + 1, self.m)
        num_old = int(self.count[ks].max())
        # Pre-split views: per history slot only a dot, a scale and an fma (op dispatch is the
        # cost at these sizes).  The products round as torch's q.add_(y, alpha=-al).
        dirs = self.old_dirs.index_select(0, idx)[:, :num_old].unbind(1)
        stps = self.old_stps.index_select(0, idx)[:, :num_old].unbind(1)
        ro = self.ro.index_select(0, idx)[:, :num_old].unbind(1)
        al: list[Tensor] = [G_new] * num_old
        q = G_new.neg()
        for i in range(num_old - 1, -1, -1):
            al[i] = torch.linalg.vecdot(stps[i], q).mul_(ro[i]).unsqueeze(1)
            q.addcmul_(dirs[i], al[i], value=-1)
        r = q.mul_(self.h_diag.index_select(0, idx).unsqueeze(1))
        for i in range(num_old):
            be_i = torch.linalg.vecdot(dirs[i], r).mul_(ro[i]).unsqueeze(1)
            r.addcmul_(stps[i], al[i] - be_i)
        self.d.index_copy_(0, idx, r)

    def train(
        self,
        max_iter: int,
        max_ls: int | None,
        val: Val | None,
        log_every: int,
        on_report: ReportCallback | None,
        report_every: int,
    ) -> EngineResult:
        pb, k = self.pb, self.k
        max_eval = max_iter * 5 // 4
        all_idx = self._index(range(k))
        f0, data0, G = pb.evaluate(self.P, all_idx)
        self.data_loss, self.G = data0, G
        # One transfer: objective, gradient inf-norm, 1/|g|_1 (torch's first step), finiteness.
        host = torch.stack(
            [f0, G.abs().amax(1), 1.0 / G.abs().sum(1), torch.isfinite(G).all(1).to(G.dtype)]
        )
        f_h, gmax, inv_l1, finite = host.cpu().double().numpy()
        self.f = f_h.copy()
        alive = []
        for kk in range(k):
            if not (math.isfinite(f_h[kk]) and finite[kk]):
                self._finish([kk], DIVERGED, 1)
            elif gmax[kk] <= self.tol_grad or max_iter == 0:
                self._finish([kk], COMPLETED, 0)
            else:
                alive.append(kk)
        if alive:  # first direction: steepest descent, t = min(1, 1/|g|_1) * lr
            self.d = -self.G
            self.t = np.minimum(1.0, inv_l1) * self.lrs
            alive = self._gtd_exit(alive, 0)
        hist_rows: list[tuple[int, Tensor, Tensor | None, Tensor | None]] = []
        planned = set(logged_epochs(max_iter, log_every))
        epoch = 0
        while alive and epoch < max_iter:
            epoch += 1
            alive = self._iteration(alive, epoch, max_iter, max_eval, max_ls)
            running = set(alive)
            ran = [
                kk
                for kk in range(k)
                if kk in running or (self.epochs_run[kk] == epoch and self.status[kk] != DIVERGED)
            ]
            finished = [kk for kk in ran if kk not in running]
            logging = epoch in planned or bool(finished and log_every > 0)
            reporting = on_report is not None and epoch % report_every == 0
            if not (logging or reporting) or not ran:
                continue
            ran_t = self._index(ran)
            loss = torch.full((k,), math.nan, dtype=torch.float64)
            loss[ran_t.cpu()] = self.data_loss.index_select(0, ran_t).cpu().double()
            vl = va = None
            if logging:
                if val is not None:
                    vl_r, va_r = pb.scores(self.P.index_select(0, ran_t), val, ran_t)
                    vl = torch.full((k,), math.nan, dtype=torch.float64)
                    va = vl.clone()
                    vl[ran_t.cpu()] = vl_r.cpu().double()
                    va[ran_t.cpu()] = va_r.cpu().double()
                hist_rows.append((epoch, loss.clone(), vl, va))
            if reporting and on_report is not None:
                alive = self._report(on_report, epoch, ran, alive, loss, vl, va)
        for kk in alive:  # only when max_iter == 0 or every run stopped: nothing is left
            self._finish([kk], COMPLETED, epoch)
        return self._result(hist_rows, val is not None)

    def _gtd_exit(self, alive: list[int], epoch: int) -> list[int]:
        """Torch's ``gtd > -tolerance_change`` exit (checked once the direction is known)."""
        idx = self._index(alive)
        d = self.d.index_select(0, idx)
        gtd = torch.linalg.vecdot(self.G.index_select(0, idx), d)
        self.gtd[alive], self.d_norm[alive] = torch.stack([gtd, d.abs().amax(1)]).cpu().double()
        keep = []
        for kk in alive:
            if self.gtd[kk] > -self.tol_change:
                self._finish([kk], COMPLETED, epoch)
            else:
                keep.append(kk)
        return keep

    def _iteration(
        self, alive: list[int], epoch: int, max_iter: int, max_eval: int, max_ls: int | None
    ) -> list[int]:
        """One torch iteration for every configuration in ``alive``; returns those continuing."""
        searches: dict[int, LineSearch] = {}
        pending: dict[int, float] = {}
        for kk in alive:
            cap = max_eval - int(self.evals[kk])
            if max_ls is not None:
                cap = min(cap, max_ls)
            self.prev_loss[kk] = self.f[kk]
            search = strong_wolfe(
                self.t[kk], self.f[kk], self.gtd[kk], self.d_norm[kk], self.tol_change, cap
            )
            searches[kk] = search
            pending[kk] = next(search)
        accepted, diverged, rounds = self._search(searches, pending)
        self._finish(diverged, DIVERGED, epoch)
        stepped = [kk for kk in alive if kk in accepted]
        if not stepped:
            return []
        G_old = self.G.index_select(0, self._index(stepped))
        self._accept(stepped, accepted, rounds)
        # Torch's end-of-iteration exits, in its order (all of them end the run 'completed').
        idx = self._index(stepped)
        gmax = self.G.index_select(0, idx).abs().amax(1).cpu().double().numpy()
        keep = []
        for j, kk in enumerate(stepped):
            f_new, _, t, n_evals = accepted[kk]
            self.f[kk], self.t[kk] = f_new, t
            self.evals[kk] += n_evals
            if (
                epoch == max_iter
                or self.evals[kk] >= max_eval
                or gmax[j] <= self.tol_grad
                or self.d_norm[kk] * abs(t) <= self.tol_change
                or abs(f_new - self.prev_loss[kk]) < self.tol_change
            ):
                self._finish([kk], COMPLETED, epoch)
            else:
                keep.append(kk)
        if not keep:
            return []
        pos = [stepped.index(kk) for kk in keep]
        G_old = G_old.index_select(0, self._index(pos))
        self._direction(keep, self.G.index_select(0, self._index(keep)), G_old)
        for kk in keep:
            self.t[kk] = self.lrs[kk]
        # Torch checks g.d at the start of the next iteration; nothing happens in between, so
        # checking it here lets this iteration be logged as the configuration's last.
        return self._gtd_exit(keep, epoch)

    def _search(
        self, searches: dict[int, LineSearch], pending: dict[int, float]
    ) -> tuple[dict[int, Accepted], list[int], list[tuple[Tensor, Tensor, Tensor]]]:
        """Run the line searches to their ends, each round evaluating the trial points of all
        that asked for one at once; returns the accepted points, the configurations whose loss
        or gradient became non-finite, and each round's (trial points, data losses, G)."""
        rounds: list[tuple[Tensor, Tensor, Tensor]] = []
        accepted: dict[int, Accepted] = {}
        diverged = []
        while pending:
            ks = list(pending)
            idx = self._index(ks)
            t = torch.tensor([pending[kk] for kk in ks], dtype=self.P.dtype, device=self.P.device)
            d = self.d.index_select(0, idx)
            # x + t d, as torch's p.add_(d, alpha=t)
            trial = torch.addcmul(self.P.index_select(0, idx), d, t.unsqueeze(1))
            f, data, G = self.pb.evaluate(trial, idx)
            r = len(rounds)
            rounds.append((trial, data, G))
            host = torch.stack([f, torch.linalg.vecdot(G, d), torch.isfinite(G).all(1).to(G.dtype)])
            f_h, gtd_h, fin_h = host.cpu().double().numpy()
            pending = {}
            for j, kk in enumerate(ks):
                if not (math.isfinite(f_h[j]) and fin_h[j]):
                    diverged.append(kk)
                    continue
                try:
                    pending[kk] = searches[kk].send((f_h[j], gtd_h[j], (r, j)))
                except StopIteration as stop:
                    accepted[kk] = stop.value
        return accepted, diverged, rounds

    def _accept(
        self,
        stepped: list[int],
        accepted: dict[int, Accepted],
        rounds: list[tuple[Tensor, Tensor, Tensor]],
    ) -> None:
        """Move each accepted trial point (bitwise the evaluated one) into place, one op per
        round."""
        for r, (trial, data, G) in enumerate(rounds):
            pairs = [
                (kk, accepted[kk][1][1])
                for kk in stepped
                if accepted[kk][1] is not None and accepted[kk][1][0] == r
            ]
            if pairs:
                dst, src = self._index([p[0] for p in pairs]), self._index([p[1] for p in pairs])
                self.P.index_copy_(0, dst, trial.index_select(0, src))
                self.G.index_copy_(0, dst, G.index_select(0, src))
                self.data_loss.index_copy_(0, dst, data.index_select(0, src))

    def _report(
        self,
        on_report: ReportCallback,
        epoch: int,
        ran: list[int],
        alive: list[int],
        loss: Tensor,
        vl: Tensor | None,
        va: Tensor | None,
    ) -> list[int]:
        k = self.k
        mask = torch.zeros(k, dtype=torch.bool)
        mask[ran] = True
        nan = torch.full((k,), math.nan, dtype=torch.float64)
        dtype = self.P.dtype  # train_batched's tensors have X's dtype
        stop = on_report(
            epoch,
            mask.clone(),
            loss.to(dtype, copy=True),
            (nan if vl is None else vl).to(dtype, copy=True),
            (nan if va is None else va).to(dtype, copy=True),
        )
        if stop is None:
            return alive
        flags = torch.as_tensor(stop, dtype=torch.bool).cpu()
        if flags.shape != (k,):
            raise ValueError(f"on_report must return {k} flags")
        pruned = [kk for kk in alive if bool(flags[kk])]
        self._finish(pruned, PRUNED, epoch)
        return [kk for kk in alive if kk not in pruned]

    def _result(
        self, rows: list[tuple[int, Tensor, Tensor | None, Tensor | None]], has_val: bool
    ) -> EngineResult:
        k, out, nf = self.k, self.pb.out, self.pb.n_features
        epochs = [row[0] for row in rows]
        train = (
            torch.stack([row[1] for row in rows])
            if rows
            else torch.empty(0, k, dtype=torch.float64)
        )
        dtype = self.P.dtype
        train = train.to(dtype)
        val_loss = val_acc = None
        if has_val:
            empty = torch.empty(0, k, dtype=dtype)
            val_loss = torch.stack([row[2] for row in rows]).to(dtype) if rows else empty  # type: ignore[misc]
            val_acc = torch.stack([row[3] for row in rows]).to(dtype) if rows else empty.clone()  # type: ignore[misc]
        lr = torch.from_numpy(np.tile(self.lrs, (len(rows), 1)))
        logged = torch.tensor(epochs, dtype=torch.int64)
        for kk in range(k):
            after = logged > self.epochs_run[kk]
            lr[after, kk] = math.nan
            for h in (train, val_loss, val_acc):
                if h is not None:
                    h[after, kk] = math.nan
            if self.status[kk] == DIVERGED:
                lr[logged == self.epochs_run[kk], kk] = math.nan
        P = self.P
        status: list[Status] = [s if s is not None else COMPLETED for s in self.status]
        return EngineResult(
            weight=P[:, : out * nf].reshape(k, out, nf).contiguous(),
            bias=P[:, out * nf :].contiguous(),
            status=status,
            epochs_run=list(self.epochs_run),
            diverged_epoch=list(self.diverged_epoch),
            history=History(
                epochs=epochs, train_loss=train, val_loss=val_loss, val_accuracy=val_acc, lr=lr
            ),
            best_epoch=[None] * k,
        )
