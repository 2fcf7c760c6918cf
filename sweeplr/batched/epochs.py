"""Plain epochs of the first-order solver with fewer ops: sign-folded, or as CUDA graphs.

A *plain* epoch is neither logged, reported nor the end of a divergence-check window: it needs
the update, and of the loss only whether it is finite.  On small data an epoch costs its op
calls (on the CPU) or kernel launches (on CUDA), not its arithmetic; these loops make fewer of
them and give the parameters bit for bit what the run's eager epochs give.
`sweeplr.batched.steps.choose` decides where they apply.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sweeplr.batched.optimizers import SGD, Adam
from sweeplr.batched.steps import Workspace, loss_and_grad

if TYPE_CHECKING:
    from sweeplr.batched.first_order import FirstOrderRun

_GRAPH_CACHE = 4  # graphs kept per run: chunks of plain epochs mostly repeat one (start, length)


@dataclass
class _Graph:
    """A chunk's graph (None: not captured yet) and the static buffers of Adam's factors."""

    graph: torch.cuda.CUDAGraph | None
    factors: tuple[Tensor, Tensor] | None


class FoldedBinarySteps:
    """Plain full-batch epochs of a binary problem on small data: the same step, fewer ops.

    A *plain* epoch is neither logged, reported nor the end of a divergence-check window: it
    needs the update, and of the loss only whether it is finite (see `sweeplr.batched.loss`).
    On small data an epoch costs what its op calls cost in dispatch, about a microsecond each
    (the arithmetic on 670 x 2 values is far cheaper), so this loop makes fewer, cheaper calls
    -- 7 instead of 9 for one configuration -- and gives the parameters bit for bit what
    `FirstOrderRun.full_batch_epoch` gives:

    * the label signs s = 1 - 2y = +-1 are folded into copies of X and of the 1/n vector, so
      the gradient is ``sigmoid(u) @ (s*X)`` and ``sigmoid(u) @ (s/n)`` without first forming
      ``dz = s*sigmoid(u)``: each product only changes sign, negation is exact and commutes
      with rounding, and the matmuls have the same shapes and strides, so they return the same
      bits;
    * with one configuration, the finiteness surrogate sum(u * sigmoid(u)) is one dot product
      instead of a product and a sum.  Only its finiteness is used: it is non-finite exactly
      when some u is (inf * 1, -inf * 0 and NaN products) or the sum overflows, as before; the
      two roundings could only disagree on a sum within rounding error of the float maximum;
    * the loop runs under ``torch.inference_mode``, which skips autograd's dispatch in every
      call (a sizeable share of this loop: bench/README.md).  Every op writes into tensors made
      outside it, so no inference tensor reaches the rest of the run (`SGD` preallocates its momentum buffer
      for this; `Adam`'s bias-correction tables made here are only ever read).

    It costs a copy of X, hence small data only (`_FOLD_MAX_ELEMENTS`).
    """

    def __init__(self, ws: Workspace) -> None:
        (sign,) = ws.targets
        self.ws = ws
        assert ws.buf is not None  # a plain step's workspace
        self.buf = ws.buf
        self.xs = ws.x * sign.unsqueeze(1)  # contiguous like ws.x (checked by `choose`)
        self.s_inv_n = sign * ws.buf.inv_n_vec
        self.sigmoid_flat = ws.buf.dz.view(-1)

    def run(
        self,
        loss_cols: Sequence[Tensor],
        step: Callable[[Tensor, Tensor], None],
        p: Tensor,
        g: Tensor,
    ) -> None:
        """One plain epoch per ``loss_cols`` entry, which gets its finiteness surrogate;
        ``step(p, g)`` is the optimizer's update of the run's parameters ``p``."""
        ws = self.ws
        (sign,) = ws.targets
        z, sig, ones, xs, s_inv_n = self.buf.z, self.buf.dz, self.buf.ones, self.xs, self.s_inv_n
        pb, pw, xt, gw, gb, inv_n = ws.pb, ws.pw, ws.xt, ws.gw, ws.gb, ws.inv_n
        addmm, sigmoid, mv = torch.addmm, torch.sigmoid, torch.mv
        one_config = z.shape[0] == 1
        with torch.inference_mode():
            for col in loss_cols:
                addmm(pb, pw, xt, out=z)
                z.mul_(sign)  # u = s*z
                sigmoid(z, out=sig)
                if one_config:
                    mv(z, self.sigmoid_flat, out=col)
                else:
                    mv(z.mul_(sig), ones, out=col)
                gw.addmm_(sig, xs, beta=0, alpha=inv_n)
                mv(sig, s_inv_n, out=gb)
                step(p, g)


class GraphedEpochs:
    """Plain full-batch epochs on CUDA as replays of captured CUDA graphs (small data).

    On small data a CUDA epoch costs its kernel launches, not its arithmetic; a graph of a
    chunk of epochs is launched with one call.  A chunk of plain epochs (see `FirstOrderRun.train`)
    starts at a ring position and has a length that mostly repeat (``check_every - 1`` epochs
    from position 0), so one graph per ``(start, length)`` is captured, its epochs writing
    their ring columns directly.  The graph replays exactly the eager epoch's ops -- the
    Triton step, the sign-folded loop or the plain step, then the optimizer -- so results are
    bit for bit the eager ones.  Per-step Python state is taken out of the graph: Adam's
    bias-correction factors for the chunk's steps are copied into the graph's static buffers
    before each replay (`Adam.factors`, `Adam.update`) and its step count advanced after;
    SGD's first momentum step (a copy, not an update) runs eagerly first.

    A new ``(start, length)`` first runs eagerly (Triton compiles, cuBLAS initialises on the
    capture stream), is captured the next time and replayed from then on.  If a capture fails,
    the run goes on eagerly.  A workspace, parameter or ring change (a configuration stopped)
    makes a new object, so graphs never see stale buffers.
    """

    def __init__(self, run: FirstOrderRun, ws: Workspace, folded: FoldedBinarySteps | None) -> None:
        self.run, self.ws, self.folded = run, ws, folded
        self.P, self.ring = run.P, run.ring
        self.adam = isinstance(run.opt, Adam)
        self.on_cuda = run.P.is_cuda
        self.stream = (
            torch.cuda.Stream(run.P.device)  # type: ignore[no-untyped-call]
            if self.on_cuda
            else None
        )
        self.entries: dict[tuple[int, int], _Graph] = {}  # by (start, length)
        self.failed = False

    def current(self, run: FirstOrderRun, ws: Workspace) -> bool:
        return self.ws is ws and self.P is run.P and self.ring is run.ring

    def _body(self, cols: Sequence[Tensor], factors: tuple[Tensor, Tensor] | None) -> None:
        """The chunk's epochs: each writes its ring column and updates the parameters."""
        run, ws = self.run, self.ws
        opt = run.opt
        for j, col in enumerate(cols):
            if factors is not None:
                assert isinstance(opt, Adam)
                nss, bc2 = factors[0][j], factors[1][j]
                step: Callable[[Tensor, Tensor], None] = functools.partial(
                    adam_update, opt, nss=nss, bc2=bc2
                )
            else:
                step = opt.step
            if self.folded is not None:
                self.folded.run([col], step, run.P, run.G)
            else:
                loss_and_grad(ws, col, False)
                step(run.P, run.G)

    def run_chunk(self, start: int, count: int) -> bool:
        """Epochs ``start .. start+count-1`` of the ring; False: the caller runs them eagerly
        (SGD's first momentum step, or a failed capture)."""
        run = self.run
        opt = run.opt
        if isinstance(opt, SGD) and opt.momentum is not None and not opt.started:
            return False
        cols = run.ring_cols[start : start + count]
        key = (start, count)
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= _GRAPH_CACHE:
                if self.on_cuda:  # no graph is freed while a replay may still run
                    torch.cuda.current_stream(self.P.device).synchronize()
                self.entries.clear()
            factors = None
            if self.adam:
                assert isinstance(opt, Adam)
                nss, bc2 = opt.factors(1, count)
                factors = (nss.clone(), bc2.clone())
            entry = self.entries[key] = _Graph(None, factors)
            fresh = True
        else:
            fresh = False
        graph, factors = entry.graph, entry.factors
        if factors is not None:  # this chunk's steps' factors into the graph's buffers
            assert isinstance(opt, Adam)
            for buf, value in zip(factors, opt.factors(opt.step_count + 1, count), strict=True):
                buf.copy_(value)
        if not self.on_cuda:  # tests: the bodies eagerly, as a replay would run them
            self._body(cols, factors)
        elif fresh:  # warm-up on the capture stream
            self._on_stream(lambda: self._body(cols, factors))
        else:
            if graph is None:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self._body(cols, factors)
                except Exception as error:  # noqa: BLE001 - then eagerly, as without graphs
                    warnings.warn(
                        f"sweeplr: CUDA graph capture failed ({error!r}); running eagerly",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.failed = True
                    return False
                entry.graph = graph
            graph.replay()
        if self.adam:
            assert isinstance(opt, Adam)
            opt.step_count += count
        return True

    def _on_stream(self, fn: Callable[[], None]) -> None:
        assert self.stream is not None
        current = torch.cuda.current_stream(self.P.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            fn()
        current.wait_stream(self.stream)


def adam_update(opt: Adam, p: Tensor, g: Tensor, *, nss: Tensor, bc2: Tensor) -> None:
    opt.update(p, g, nss, bc2)
