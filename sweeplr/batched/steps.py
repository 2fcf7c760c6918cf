"""One step of the first-order solver: its variants, chosen in one place (`choose`).

A step is the loss and gradient of `sweeplr.batched.loss.loss_gradient` on a workspace's rows
(the full batch, or one mini-batch size).  Its variants give the same numbers by different
routes, as ``torch.optim.adam`` picks its fused, for-each or single-tensor update:

* ``triton``: a binary step on CUDA without row weights or penalties is one fused Triton
  kernel (`sweeplr.kernels`) that reads X once for all K configurations; a variant that fails
  to compile here is remembered and the workspace chooses again;
* ``fused``: on many rows on the CPU, X is walked in groups of rows that stay in cache from
  the logits to the gradient, on every thread at once (`sweeplr.batched.fused`);
* ``plain``: one logits matmul, the loss terms, one gradient matmul: the fewest ops, and the
  only variant with row weights and penalties.

`choose` also picks how the run's *plain* epochs (neither logged, reported nor checked; see
`sweeplr.batched.epochs`) go: sign-folded into fewer ops on small binary full batches, and
replayed as CUDA graphs on small data on CUDA.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor

from sweeplr.batched import fused
from sweeplr.batched.loss import Buffers, Targets, loss_gradient

if TYPE_CHECKING:
    from sweeplr.batched.first_order import FirstOrderRun

StepVariant = Literal["triton", "fused", "plain"]

# The fused Triton step (`sweeplr.kernels`) runs where X is on CUDA; tests set this to run it
# on the CPU through Triton's interpreter (TRITON_INTERPRET=1 before triton is imported).
_TRITON_ON_CPU = False
_kernels_state: list[object] = []  # [the kernels module or None]: imported once, when first used
# Variants of the Triton step that failed here (`BinaryStep.variant`: dtype, shape class,
# product mode): later workspaces take the plain step for them, other variants still run.
_kernel_failures: set[tuple[object, ...]] = set()
# Plain epochs of a binary full batch with at most this many values in X run with a sign-folded
# copy of X (see `FoldedBinarySteps`): 4 MiB in float32, and where an epoch is short enough for
# its op count to matter.
_FOLD_MAX_ELEMENTS = 1 << 20
# Plain full-batch epochs on CUDA with at most this many values in X replay CUDA graphs (see
# `GraphedEpochs`): there an epoch is launch overhead; on larger data the kernels' own time
# dominates and graphs would only add memory.
_GRAPH_MAX_ELEMENTS = 1 << 22
# Tests run `GraphedEpochs`' bookkeeping on the CPU, its graph bodies eagerly (no capture).
_GRAPHS_ON_CPU = False


def kernels() -> types.ModuleType | None:
    """`sweeplr.kernels`, or None where Triton is missing or broken (the plain step then)."""
    if not _kernels_state:
        try:
            from sweeplr import kernels as imported
        except Exception:  # noqa: BLE001 - ImportError, or a Triton that fails to initialise
            _kernels_state.append(None)
        else:
            _kernels_state.append(imported)
    module = _kernels_state[0]
    return module if isinstance(module, types.ModuleType) else None


class KernelStep(Protocol):
    """`sweeplr.kernels.BinaryStep`: the Triton step of one workspace."""

    variant: tuple[object, ...]

    def __call__(
        self,
        pw: Tensor,
        pb: Tensor,
        sign: Tensor,
        loss_sum_out: Tensor,
        gw: Tensor,
        gb: Tensor,
        want_loss: bool,
    ) -> None: ...


@dataclass(frozen=True)
class Plan:
    """What `choose` picked for a workspace: the step, and how plain epochs run."""

    step: StepVariant
    kernel: KernelStep | None = None  # the triton step's `sweeplr.kernels.BinaryStep`
    fused_sizes: tuple[int, int] = (0, 0)  # the fused step's (group rows, block rows)
    fold: bool = False  # plain epochs sign-folded (`FoldedBinarySteps`)
    graph: bool = False  # plain epochs as CUDA graphs (`GraphedEpochs`)


def choose(run: FirstOrderRun, x: Tensor) -> Plan:
    """The variant of the steps on the rows ``x`` (the full batch or a mini-batch buffer),
    and of the plain epochs: the one place they are chosen.

    Row weights and penalties (``run.extended``) take the plain step, the only one that has
    them (the fast variants stay as measured).  The Triton kernel needs binary float32/64 rows
    with unit column stride on CUDA (or forced onto the interpreter); the fused step, many rows
    (`fused.fuses`) on the CPU; the sign-folded loop, a small binary full batch.
    """
    ka, out, fp1 = run.P.shape
    ko, n_features, nb = ka * out, fp1 - 1, x.shape[0]
    binary = len(run.targets) == 1
    graph = _graphs(run)
    module = (
        kernels()
        if (x.is_cuda or _TRITON_ON_CPU)
        and not run.extended
        and binary
        and x.dtype in (torch.float32, torch.float64)
        and x.stride(1) == 1
        else None
    )
    if module is not None:
        kernel: KernelStep = module.BinaryStep(x, ko)
        if kernel.variant not in _kernel_failures:
            return Plan("triton", kernel=kernel, graph=graph)
    itemsize = x.element_size()
    sizes = fused.fused_sizes(ko, n_features, itemsize, out > 1)
    if (
        fused.fuses(nb, sizes[0], n_features, ko, itemsize, out > 1)
        and x.device.type == "cpu"
        and not run.extended
    ):
        return Plan("fused", fused_sizes=sizes, graph=graph)
    fold = (
        run.batch_size is None
        and not run.extended
        and binary
        and x.is_contiguous()
        and x.numel() <= _FOLD_MAX_ELEMENTS
    )
    return Plan("plain", fold=fold, graph=graph)


def _graphs(run: FirstOrderRun) -> bool:
    """Whether plain epochs replay CUDA graphs: small full batches on CUDA, no extensions."""
    return (
        (run.X.is_cuda or _GRAPHS_ON_CPU)
        and run.batch_size is None
        and not run.extended
        and run.lr_schedule is None  # (plain epochs only run without one anyway)
        and run.X.numel() <= _GRAPH_MAX_ELEMENTS
    )


class Workspace:
    """Buffers and views for steps on ``nb`` rows with the current ``Ka`` configurations.

    ``x``/``targets`` are X and the run's targets for the full batch, and buffers that the
    run's mini-batch epoch fills for mini-batches.  All per-step temporaries are preallocated:
    on large data a fresh allocation per op costs page faults on every epoch.  A new workspace
    is made when the batch of configurations shrinks.
    """

    def __init__(self, run: FirstOrderRun, nb: int) -> None:
        ka, out, fp1 = run.P.shape
        ko, n_features = ka * out, fp1 - 1
        like = run.P
        p2, g2 = run.P.view(ko, fp1), run.G.view(ko, fp1)
        self.run = run
        self.pw, self.pb = p2[:, :n_features], p2[:, n_features:]
        self.gw, self.gb = g2[:, :n_features], g2[:, n_features]
        self.ka, self.ko, self.nb = ka, ko, nb
        self.inv_n = 1.0 / nb
        self.x: Tensor
        self.targets: Targets
        if run.batch_size is None:
            self.x, self.targets = run.X, run.targets
        else:
            self.x = like.new_empty(nb, n_features)
            self.targets = tuple(t.new_empty(*t.shape[:-1], nb) for t in run.targets)
        # Row weights [1 or Ka, nb] (see FirstOrderRun.sw), filled per mini-batch like targets.
        self.sw: Tensor | None = None
        if run.sw is not None:
            self.sw = run.sw if run.batch_size is None else like.new_empty(run.sw.shape[0], nb)
        self.xt = self.x.t()
        self.plan(choose(run, self.x))

    def plan(self, plan: Plan) -> None:
        """Take ``plan``'s variant: only its buffers are made (the Triton step needs none of
        the whole-batch ones, which at K=64 on 10M rows would take 2.5 GB)."""
        self.chosen = plan
        self.kernel = plan.kernel
        self.fused: fused.FusedStep | None = None
        self.buf: Buffers | None = None
        if plan.step == "fused":
            params, grads = (self.pw, self.pb), (self.gw, self.gb)
            self.fused = fused.FusedStep(
                self.x, self.targets, params, grads, self.ka, plan.fused_sizes
            )
        elif plan.step == "plain":
            out = self.ko // self.ka
            self.buf = Buffers.make(self.pw, self.ka, out, self.targets, self.inv_n)


def loss_and_grad(ws: Workspace, loss_sum_out: Tensor, want_loss: bool) -> None:
    """One step's summed loss per configuration into ``loss_sum_out`` and gradient into the
    run's G, by the workspace's variant (see `sweeplr.batched.loss.loss_gradient`)."""
    step = ws.chosen.step
    if step == "fused":
        assert ws.fused is not None
        fused.fused_step(ws.fused, loss_sum_out, want_loss)
        return
    if step == "triton":
        if not _triton_step(ws, loss_sum_out, want_loss):
            loss_and_grad(ws, loss_sum_out, want_loss)  # by the variant chosen instead
        return
    assert ws.buf is not None
    loss_gradient(
        ws.x, ws.targets, ws.pw, ws.pb, ws.sw, ws.buf, want_loss, loss_sum_out, ws.gw, ws.gb
    )


def _triton_step(ws: Workspace, loss_sum_out: Tensor, want_loss: bool) -> bool:
    """The Triton kernel's step; False where it failed, after which the workspace has chosen
    again (the kernel's variant is now among the failures) and the caller runs that step."""
    kernel = ws.kernel
    assert kernel is not None
    try:
        kernel(ws.pw, ws.pb, ws.targets[0], loss_sum_out, ws.gw, ws.gb, want_loss)
        return True
    except Exception as error:  # noqa: BLE001 - a Triton that cannot compile it here
        # The step the caller runs overwrites whatever the kernel wrote.
        warnings.warn(
            f"sweeplr: the fused Triton step failed ({error!r}); using the plain step",
            RuntimeWarning,
            stacklevel=2,
        )
        _kernel_failures.add(kernel.variant)
        ws.plan(choose(ws.run, ws.x))
        return False
