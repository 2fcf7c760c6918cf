"""The fused Triton step (sweeplr.kernels) against its reference, the objective's core
(`sweeplr.batched.loss.loss_gradient`), and the batched solver's plain step.

On the CPU the kernel runs through Triton's interpreter.  ``TRITON_INTERPRET=1`` must be set
before triton itself is imported (its library functions are decorated then), so this module
sets it when it is the first to import triton on a machine without CUDA; where triton was
imported compiled already (a CUDA machine, or another module first), the interpreter tests run
in a subprocess instead (`test_interpreter_tests_in_a_subprocess`).  The ``cuda`` tests run the
compiled kernel and the CUDA-graph epochs on a GPU (bench/gpu_check.py runs them).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.conftest import require_module

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the gpu extra installs it (Linux only); without it the engine never uses it
triton = require_module("triton", "gpu")

from sweeplr.batched import OptimizerConfig, Penalty, linear_init, train_batched
from sweeplr.batched import steps as dispatch
from sweeplr.batched.first_order import FirstOrderRun
from sweeplr.batched.loss import Buffers, loss_gradient, loss_targets

INTERPRETING = type(triton.language.zeros).__name__ == "InterpretedFunction"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The kernel module under the interpreter, and the engine forced to use it on the CPU."""
    if not INTERPRETING:
        pytest.skip("triton was imported compiled; the subprocess test runs this")
    from sweeplr import kernels

    monkeypatch.setattr(dispatch, "_kernels_state", [kernels])
    monkeypatch.setattr(dispatch, "_TRITON_ON_CPU", True)
    # The interpreter computes with numpy, which warns where a GPU silently gives inf/NaN
    # (inf - inf in the NaN semantics); the warnings filter would make those errors.
    with np.errstate(all="ignore"):
        yield kernels


@pytest.mark.skipif(INTERPRETING, reason="this process runs them itself")
def test_interpreter_tests_in_a_subprocess() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", __file__],
        check=False,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" in done.stdout  # its cuda tests skip there


def _problem(
    n: int, f: int, dtype: torch.dtype, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, f, generator=g, dtype=torch.float64)
    w = torch.randn(f, generator=g, dtype=torch.float64)
    y = ((X @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)) > 0).long()
    return X.to(dtype).to(device), y.to(device)


def _reference(
    X: torch.Tensor, y: torch.Tensor, P: torch.Tensor, want_loss: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss sums (or the surrogate's), weight and bias gradients: the kernel's reference,
    `sweeplr.batched.loss.loss_gradient`."""
    k, f = P.shape[0], X.shape[1]
    targets = loss_targets(y, 2, X.dtype)
    buf = Buffers.make(P, k, 1, targets, 1.0 / X.shape[0])
    loss, gw, gb = P.new_empty(k), P.new_empty(k, f), P.new_empty(k)
    loss_gradient(X, targets, P[:, :f], P[:, f:], None, buf, want_loss, loss, gw, gb)
    return loss, gw, gb


TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "f", "k", "block_f"),
    [
        (203, 5, 1, None),  # rows not a multiple of the 64-row block, F below one tile
        (150, 37, 1, 16),  # one configuration (row-wise products), F over three tiles
        (150, 37, 3, 16),  # F over three 16-wide tiles, the last one partial
        (130, 7, 64, None),  # one full tile of configurations
        (97, 20, 70, None),  # two configuration tiles, the second nearly empty
    ],
)
def test_kernel_equals_plain_step(
    interpreted: ModuleType, dtype: torch.dtype, n: int, f: int, k: int, block_f: int | None
) -> None:
    X, y = _problem(n, f, dtype)
    P = torch.randn(k, f + 1, generator=torch.Generator().manual_seed(1), dtype=dtype)
    step = interpreted.BinaryStep(X, k, block_f=block_f)
    assert step.one_tile == (block_f is None)
    for want_loss in (True, False):
        G = torch.full_like(P, torch.nan)
        loss = torch.full((k,), torch.nan, dtype=dtype)
        s = (1 - 2 * y).to(dtype)
        step(P[:, :f], P[:, f:], s, loss, G[:, :f], G[:, f], want_loss)
        ref_loss, ref_gw, ref_gb = _reference(X, y, P, want_loss)
        torch.testing.assert_close(loss, ref_loss, **TOL[dtype])
        torch.testing.assert_close(G[:, :f], ref_gw, **TOL[dtype])
        torch.testing.assert_close(G[:, f], ref_gb, **TOL[dtype])


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_kernel_precision_modes_compile(
    interpreted: ModuleType, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """Every float32 mode the device script compares is accepted (the interpreter computes
    all three in float32; on a GPU the script measures their deviations)."""
    monkeypatch.setattr(interpreted, "FP32_PRECISION", precision)
    X, y = _problem(100, 20, torch.float32)
    P = torch.randn(8, 21, generator=torch.Generator().manual_seed(2))
    step = interpreted.BinaryStep(X, 8)
    assert step.precision == precision
    G, loss = torch.empty_like(P), torch.empty(8)
    step(P[:, :20], P[:, 20:], (1 - 2 * y).float(), loss, G[:, :20], G[:, 20], True)
    torch.testing.assert_close(G[:, :20], _reference(X, y, P, True)[1], **TOL[torch.float32])


def test_kernel_nan_semantics(interpreted: ModuleType) -> None:
    """torch's BCE is NaN for an infinite logit; the surrogate is non-finite exactly then."""
    X, y = _problem(70, 3, torch.float64)
    P = torch.zeros(3, 4, dtype=torch.float64)
    P[1, 0] = torch.inf  # infinite logits on every row with x0 != 0
    P[2, 3] = torch.nan
    step = interpreted.BinaryStep(X, 3)
    G = torch.empty_like(P)
    s = (1 - 2 * y).to(X.dtype)
    for want_loss in (True, False):
        loss = torch.empty(3, dtype=X.dtype)
        step(P[:, :3], P[:, 3:], s, loss, G[:, :3], G[:, 3], want_loss)
        # u = 0 on every row: softplus(0) = log 2, the surrogate 0 * sigmoid(0) = 0
        assert loss[0].item() == pytest.approx(70 * math.log(2.0) if want_loss else 0.0)
        assert not torch.isfinite(loss[1:]).any()
        assert torch.isfinite(G[0]).all()


def test_kernel_is_deterministic(interpreted: ModuleType) -> None:
    X, y = _problem(300, 9, torch.float32)
    P = torch.randn(5, 10)
    s = (1 - 2 * y).float()
    step = interpreted.BinaryStep(X, 5)
    results = []
    for _ in range(2):
        G, loss = torch.empty_like(P), torch.empty(5)
        step(P[:, :9], P[:, 9:], s, loss, G[:, :9], G[:, 9], True)
        results.append((loss, G))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def _train(X: torch.Tensor, y: torch.Tensor, k: int, opt: OptimizerConfig, **kw: object):
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)
    return train_batched(X, y, 2, weight, bias, opt, 12, log_every=4, check_every=5, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("k", "opt"),
    [
        (1, OptimizerConfig("sgd", 0.5)),
        (3, OptimizerConfig("sgd", [0.1, 0.5, 1.0], momentum=0.9)),
        (64, OptimizerConfig("adam", torch.logspace(-3, 0, 64, dtype=torch.float64))),
    ],
)
def test_train_batched_with_kernel_equals_cpu_engine(
    interpreted: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    k: int,
    opt: OptimizerConfig,
) -> None:
    X, y = _problem(203, 6, dtype)
    calls = []
    call = interpreted.BinaryStep.__call__
    monkeypatch.setattr(interpreted.BinaryStep, "__call__", lambda *a: calls.append(1) or call(*a))
    fused = _train(X, y, k, opt)
    assert len(calls) == 12  # every epoch, plain and logged, took the kernel
    monkeypatch.setattr(dispatch, "_TRITON_ON_CPU", False)
    plain = _train(X, y, k, opt)
    assert len(calls) == 12
    assert fused.status == plain.status == ["completed"] * k
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(fused.weight, plain.weight, **tol)
    torch.testing.assert_close(fused.bias, plain.bias, **tol)
    torch.testing.assert_close(fused.history.train_loss, plain.history.train_loss, **tol)


def test_mini_batches_through_the_kernel(
    interpreted: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mini-batches (the last one short) fill the workspace's buffers; the kernel reads them."""
    X, y = _problem(130, 5, torch.float32)
    opt = OptimizerConfig("sgd", [0.1, 0.5, 1.0], momentum=0.9)
    fused = _train(X, y, 3, opt, batch_size=50)
    monkeypatch.setattr(dispatch, "_TRITON_ON_CPU", False)
    plain = _train(X, y, 3, opt, batch_size=50)
    torch.testing.assert_close(fused.weight, plain.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.history.train_loss, plain.history.train_loss)


def test_divergence_is_detected_through_the_kernel(interpreted: ModuleType) -> None:
    X, y = _problem(90, 4, torch.float32)
    X[5, 0] = 1e30  # a huge lr then overflows the logits
    result = _train(X, y, 2, OptimizerConfig("sgd", [1e-3, 1e30]))
    assert result.status == ["completed", "diverged"]


def test_kernel_does_not_apply(interpreted: ModuleType) -> None:
    """Multi-class, row weights and penalties take the plain step (the kernel is binary and
    unweighted); the forced interpreter flag alone decides nothing."""
    X, y = _problem(50, 3, torch.float32)
    weight, bias = linear_init(3, 2, [0, 1])
    opt = OptimizerConfig("sgd", 0.1)
    cases = [
        FirstOrderRun(X, y, 2, weight, bias, opt, None, 0, None),
        FirstOrderRun(X, y, 2, weight, bias, opt, None, 0, None, sample_weight=torch.ones(50)),
        FirstOrderRun(X, y, 2, weight, bias, opt, None, 0, None, penalty=Penalty(l2=0.1)),
        FirstOrderRun(X, y % 3, 3, *linear_init(3, 3, [0, 1]), opt, None, 0, None),
        FirstOrderRun(X.to(torch.bfloat16), y, 2, weight, bias, opt, None, 0, None),
    ]
    applies = [run.workspace(50).kernel is not None for run in cases]
    assert applies == [True, False, False, False, False]


def test_failed_kernel_falls_back_to_the_plain_step(
    interpreted: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant that fails warns once and runs the plain step from then on (same numbers);
    other variants (here float64) still take the kernel."""
    X, y = _problem(80, 4, torch.float32)
    opt = OptimizerConfig("sgd", 0.3)
    call = interpreted.BinaryStep.__call__
    calls = []

    def broken(self, *args: object) -> None:
        calls.append(self.variant)
        if self.variant[1] == torch.float32:
            raise RuntimeError("no kernel here")
        call(self, *args)

    monkeypatch.setattr(dispatch, "_kernel_failures", set())
    monkeypatch.setattr(interpreted.BinaryStep, "__call__", broken)
    with pytest.warns(RuntimeWarning, match="fused Triton step failed"):
        fused = _train(X, y, 2, opt)
    assert len(calls) == 1 and len(dispatch._kernel_failures) == 1
    again = _train(X, y, 2, opt)  # no warning (the filter makes one an error), no call
    assert len(calls) == 1
    _train(X.double(), y, 2, opt)
    assert len(calls) == 13  # float64: the kernel, every epoch
    monkeypatch.setattr(dispatch, "_TRITON_ON_CPU", False)
    plain = _train(X, y, 2, opt)
    for result in (fused, again):
        torch.testing.assert_close(result.weight, plain.weight, rtol=0, atol=0)


# ----- on a GPU (bench/gpu_check.py runs these) -----------------------------------------------


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("k", "opt"),
    [
        (1, OptimizerConfig("sgd", 0.5)),
        (64, OptimizerConfig("adam", torch.logspace(-3, -1, 64, dtype=torch.float64))),
    ],
)
def test_cuda_kernel_equals_cpu_engine(dtype: torch.dtype, k: int, opt: OptimizerConfig) -> None:
    X, y = _problem(5003, 37, dtype)
    Xc, yc = X.cuda(), y.cuda()
    weight, bias = linear_init(37, 2, list(range(k)), dtype=dtype)
    cpu = train_batched(X, y, 2, weight, bias, opt, 30, log_every=10)
    gpu = train_batched(Xc, yc, 2, weight.cuda(), bias.cuda(), opt, 30, log_every=10)
    ws = FirstOrderRun(Xc, yc, 2, weight.cuda(), bias.cuda(), opt, None, 0, None).workspace(5003)
    assert ws.kernel is not None
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, **tol)
    torch.testing.assert_close(gpu.history.train_loss, cpu.history.train_loss, **tol)
    again = train_batched(Xc, yc, 2, weight.cuda(), bias.cuda(), opt, 30, log_every=10)
    assert torch.equal(again.weight, gpu.weight)  # bit-reproducible on the device


@cuda
@pytest.mark.cuda
def test_cuda_wide_features_and_many_configs() -> None:
    X, y = _problem(3001, 300, torch.float32)  # F over three tiles; K over two config tiles
    opt = OptimizerConfig("sgd", torch.logspace(-2, 0, 80, dtype=torch.float64))
    weight, bias = linear_init(300, 2, list(range(80)))
    cpu = train_batched(X, y, 2, weight, bias, opt, 10, log_every=5)
    gpu = train_batched(X.cuda(), y.cuda(), 2, weight.cuda(), bias.cuda(), opt, 10, log_every=5)
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, rtol=1e-4, atol=1e-5)


def test_graph_bodies_with_the_kernel(
    interpreted: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's small-data path on the CPU: the Triton step inside the graphs' epoch bodies (run
    eagerly), bit for bit the kernel's eager epochs."""
    X, y = _problem(90, 3, torch.float32)
    opt = OptimizerConfig("adam", [1e-2, 1e-1])
    eager = _train(X, y, 2, opt)
    monkeypatch.setattr(dispatch, "_GRAPHS_ON_CPU", True)
    graphed = _train(X, y, 2, opt)
    assert torch.equal(graphed.weight, eager.weight)
    assert torch.equal(graphed.history.train_loss, eager.history.train_loss)
