"""A fused Triton kernel for one full-batch step of the binary problem, K configurations at once.

The engine's plain step reads X twice per epoch: once for the logits ``W X^T`` and once for
the gradient ``dZ X``.  On a GPU the epoch is memory-bound, so this kernel walks X in blocks of
rows and, per block, computes the logits, the per-row loss, ``dz = s * sigmoid(s*z)`` and the
block's share of the gradient while the block is still in registers: X is read once.

Determinism: the grid is a fixed number of programs (from the device, not from timing); each
program walks its blocks in row order and writes its partial sums to its own slot, and a
``torch.sum`` over the slots finishes the reduction.  No atomics, so the same inputs on the same
device and grid give the same bits ("same config + same seed gives the same numbers").

Triton is imported here only; `sweeplr.batched.steps` imports this module only when a step can
use it (X on CUDA, or tests that force the interpreter, ``TRITON_INTERPRET=1``, on the CPU).
The kernel computes `sweeplr.batched.loss.loss_gradient` (binary, no row weights), its reference
in the tests.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_M = 64  # rows per block: X block [64, <=128] and the gradient tile stay in registers
MAX_BLOCK_F = 128  # wider X is tiled over features (and a block's tiles come from cache twice)
MAX_BLOCK_K = 64  # more configurations: one grid column per 64 (X read once per column)
PROGRAMS_PER_SM = 4  # enough resident programs per SM to hide memory latency
INTERPRETER_PROGRAMS = 3  # the interpreter runs programs one by one: few, but more than one
# How float32 matrix products (K > 1) run: "ieee" (CUDA cores, exact float32 products),
# "tf32x3" (three TF32 tensor-core products, float32-level accuracy) or "tf32" (one; ~1e-3
# relative error per product).  None: "tf32x3" where tensor cores have TF32 (compute
# capability 8.0+), "ieee" elsewhere.  Estimated for 10M x 100 at K=64 on an H200: "ieee" is
# compute-bound (~256 GFLOP an epoch on CUDA cores, about 5x one X @ w), "tf32x3" and "tf32"
# close to memory-bound.  Provisional until bench/gpu_check.py prints each mode's time and
# deviation from float64 on the device; "tf32" only if within the tests' tolerance (1e-4).
FP32_PRECISION: str | None = None


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


@triton.jit
def _log1p(x):
    # Goldberg's log1p from log: exact where 1 + x rounds to 1, accurate elsewhere (no log1p
    # in the interpreter's math and libdevice alike).
    w = 1.0 + x
    exact = w == 1.0
    return tl.where(exact, x, tl.log(w) * x / tl.where(exact, 1.0, w - 1.0))


@triton.jit
def _x_tile(x_ptr, row_offsets, rmask, fs, n_features):
    # X's rows at row_offsets, columns fs: [rows, features], 0 outside X (padding)
    return tl.load(
        x_ptr + row_offsets[:, None] + fs[None, :],
        mask=rmask[:, None] & (fs < n_features)[None, :],
        other=0.0,
    )


@triton.jit
def _logits(x, w, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    # [rows, F] x [K, F] -> [rows, K].  One configuration: a row-wise dot product (two FMAs an
    # element, memory-bound) instead of a matrix product padded to 16 columns.
    if BLOCK_K == 1:
        return tl.sum(x * w, axis=1)[:, None]
    return tl.dot(x, tl.trans(w), input_precision=PRECISION)


@triton.jit
def _grad(dz, x, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    # [rows, K] x [rows, F] -> [K, F], this block's share of dz^T X
    if BLOCK_K == 1:
        return tl.sum(dz * x, axis=0)[None, :]
    return tl.dot(tl.trans(dz), x, input_precision=PRECISION)


@triton.jit
def _binary_step_kernel(
    x_ptr,
    stride_x,
    w_ptr,
    stride_w,
    b_ptr,
    sign_ptr,
    gpart_ptr,
    sums_ptr,
    n,
    n_features,
    n_configs,
    n_blocks,
    WANT_LOSS: tl.constexpr,
    ONE_TILE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    """Program (p, c): blocks p, p + P, ... of rows for configurations c*BLOCK_K + [0, BLOCK_K).

    Writes ``gpart[p, k, :] = sum over its rows of dz * x`` and ``sums[p, 0, k]`` / ``sums[p,
    1, k]`` = its rows' loss terms / dz.  ``dz = s * sigmoid(u)``, ``u = s * z``, ``s = 1 - 2y``
    (0 on padding rows); loss terms ``softplus(u) + (u - u)`` (torch's BCE, NaN for an infinite
    logit) or, without ``WANT_LOSS``, the finiteness surrogate ``u * sigmoid(u)``.
    """
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < n_configs
    fs = tl.arange(0, BLOCK_F)
    bias = tl.load(b_ptr + ks * stride_w, mask=kmask, other=0.0)
    loss_acc = tl.zeros([BLOCK_K], dtype=bias.dtype)
    dz_acc = tl.zeros([BLOCK_K], dtype=bias.dtype)
    gbase = gpart_ptr + pid * n_configs * n_features
    if ONE_TILE:
        fmask = fs < n_features
        w = tl.load(
            w_ptr + ks[:, None] * stride_w + fs[None, :],
            mask=kmask[:, None] & fmask[None, :],
            other=0.0,
        )
        acc = tl.zeros([BLOCK_K, BLOCK_F], dtype=bias.dtype)
    for blk in range(pid, n_blocks, n_programs):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        # element offsets in 64 bits: 30M x 100 values already pass 2^31
        row_offsets = rows.to(tl.int64) * stride_x
        rmask = rows < n
        s = tl.load(sign_ptr + rows, mask=rmask, other=0.0)
        if ONE_TILE:
            x = _x_tile(x_ptr, row_offsets, rmask, fs, n_features)
            z = _logits(x, w, PRECISION, BLOCK_K)
        else:
            z = tl.zeros([BLOCK_M, BLOCK_K], dtype=bias.dtype)
            for f0 in range(0, n_features, BLOCK_F):
                ft = f0 + fs
                ftmask = ft < n_features
                xt = _x_tile(x_ptr, row_offsets, rmask, ft, n_features)
                wt = tl.load(
                    w_ptr + ks[:, None] * stride_w + ft[None, :],
                    mask=kmask[:, None] & ftmask[None, :],
                    other=0.0,
                )
                z += _logits(xt, wt, PRECISION, BLOCK_K)
        u = (z + bias[None, :]) * s[:, None]
        # sigmoid and softplus from e = exp(-|u|) <= 1: no overflow, accurate on both sides
        e = tl.exp(-tl.abs(u))
        sig = tl.where(u >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
        if WANT_LOSS:
            # F.softplus: u itself above its threshold 20, else log1p(exp(u))
            soft = tl.maximum(u, 0.0) + _log1p(e)
            terms = tl.where(u > 20.0, u, soft) + (u - u)
        else:
            terms = u * sig
        valid = rmask[:, None] & kmask[None, :]
        terms = tl.where(valid, terms, 0.0)
        dz = tl.where(valid, sig * s[:, None], 0.0)
        loss_acc += tl.sum(terms, axis=0)
        dz_acc += tl.sum(dz, axis=0)
        if ONE_TILE:
            acc += _grad(dz, x, PRECISION, BLOCK_K)
        else:
            # Wide X: the block's tiles again (from cache), added to this program's slot.
            for f0 in range(0, n_features, BLOCK_F):
                ft = f0 + fs
                ftmask = ft < n_features
                xt = _x_tile(x_ptr, row_offsets, rmask, ft, n_features)
                gptr = gbase + ks[:, None] * n_features + ft[None, :]
                gmask = kmask[:, None] & ftmask[None, :]
                part = tl.load(gptr, mask=gmask, other=0.0)
                part += _grad(dz, xt, PRECISION, BLOCK_K)
                tl.store(gptr, part, mask=gmask)
    if ONE_TILE:
        fmask = fs < n_features
        tl.store(
            gbase + ks[:, None] * n_features + fs[None, :],
            acc,
            mask=kmask[:, None] & fmask[None, :],
        )
    sbase = sums_ptr + pid * 2 * n_configs
    tl.store(sbase + ks, loss_acc, mask=kmask)
    tl.store(sbase + n_configs + ks, dz_acc, mask=kmask)


def _default_fp32_precision(x: Tensor) -> str:
    if x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 8:
        return "tf32x3"
    return "ieee"


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class BinaryStep:
    """The kernel's launch and its buffers for one workspace: X ``[n, F]``, K configurations.

    ``__call__(pw, pb, sign, loss_sum_out, gw, gb, want_loss)``: ``loss_sum_out[k] = sum_i
    loss_ki``, ``gw``/``gb`` = the mean gradient, as `sweeplr.batched.loss.loss_gradient`.
    ``pw`` is ``[K, F]`` with unit column stride, ``pb`` ``[K, 1]`` a column of the same
    parameter matrix (row stride shared).  ``block_f`` overrides the feature tile (tests).
    """

    def __init__(self, x: Tensor, n_configs: int, *, block_f: int | None = None) -> None:
        n, n_features = x.shape
        self.x, self.n, self.n_features, self.k = x, n, n_features, n_configs
        # one configuration: row-wise dot products; more: matrix products, 16 columns at least
        self.block_k = 1 if n_configs == 1 else min(MAX_BLOCK_K, max(16, _next_pow2(n_configs)))
        self.block_f = block_f or min(MAX_BLOCK_F, max(16, _next_pow2(n_features)))
        self.one_tile = n_features <= self.block_f
        self.n_blocks = -(-n // BLOCK_M)
        k_tiles = -(-n_configs // self.block_k)
        if x.is_cuda:
            slots = _sm_count(x.device.index or 0) * PROGRAMS_PER_SM
            programs = max(1, slots // k_tiles)
        else:
            programs = INTERPRETER_PROGRAMS
        self.programs = min(self.n_blocks, programs)
        self.grid = (self.programs, k_tiles)
        # Partial sums per program; zeroed where the wide-X path accumulates in place.
        self.gpart = x.new_zeros(self.programs, n_configs, n_features)
        self.sums = x.new_empty(self.programs, 2, n_configs)
        self.inv_n = 1.0 / n
        self.precision = "ieee"
        if x.dtype == torch.float32:
            self.precision = FP32_PRECISION or _default_fp32_precision(x)
        # what decides whether it compiles: a failure disables this variant only
        self.variant = (x.device.type, x.dtype, self.block_k == 1, self.one_tile, self.precision)

    def __call__(
        self,
        pw: Tensor,
        pb: Tensor,
        sign: Tensor,
        loss_sum_out: Tensor,
        gw: Tensor,
        gb: Tensor,
        want_loss: bool,
    ) -> None:
        if not self.one_tile:
            self.gpart.zero_()
        _binary_step_kernel[self.grid](
            self.x,
            self.x.stride(0),
            pw,
            pw.stride(0),
            pb,
            sign,
            self.gpart,
            self.sums,
            self.n,
            self.n_features,
            self.k,
            self.n_blocks,
            WANT_LOSS=want_loss,
            ONE_TILE=self.one_tile,
            PRECISION=self.precision,
            BLOCK_M=BLOCK_M,
            BLOCK_K=self.block_k,
            BLOCK_F=self.block_f,
            num_warps=8 if self.block_k * self.block_f >= 2048 else 4,
        )
        # Fixed-order reductions over the programs' slots: deterministic.
        torch.sum(self.sums[:, 0], 0, out=loss_sum_out)
        torch.sum(self.gpart, 0, out=gw).mul_(self.inv_n)
        torch.sum(self.sums[:, 1], 0, out=gb).mul_(self.inv_n)
