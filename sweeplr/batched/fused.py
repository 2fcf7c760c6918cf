"""The fused step of the first-order solver on many rows: X read from memory once per step.

Unfused, a step reads X twice (the logits ``W X^T``, then the gradient ``dZ X``).  On many
rows the fused step cuts the rows into groups (`Group`, sized by `fused_sizes` to stay in one
core's L2 cache) and runs each group's logits, loss terms (`sweeplr.batched.loss`) and gradient
back to back, so X comes from memory once.  The groups are cut into *chunks* of consecutive
groups, more than there are threads (see `n_chunks`), and each torch thread runs a *worker*
(`Worker`: its own buffers) that takes the next chunk whenever it is free (see `fused_step`),
so a thread slowed down by another process takes fewer chunks instead of holding up the step.
Each group writes its loss and bias-gradient sums to its own row of ``sums`` (binary) or
``loss_parts``/``bias_parts``, and, for K*out == 1, its weight gradient to its own rows of
``parts``; with K*out > 1 each chunk accumulates the weight gradient in its row of
``chunk_gw``.  A few reductions per step then give the loss and G; they add the same terms in
the same order whatever the thread count and whichever worker ran which chunk, so runs stay
bit-identical.

With K*out == 1 the products are matrix-vector products, which MKL runs well below memory
bandwidth as one ``[1, F] @ [F, rows]`` call, so they run as batched products over blocks.
bench/README.md ("The fused step") has the measurements behind the sizes here.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from sweeplr.batched.loss import Targets, binary_terms, multiclass_terms

# Fused steps (see `FusedStep`): what one group of rows may take of a core's L2 cache, the most
# rows of a batched matrix-vector block, and when a step is fused (see `fuses`).
_CACHE_BYTES = 3 << 19
_MAX_BLOCK_ROWS = 2048
_FUSED_MIN_X_BYTES = 24 << 20
_FUSED_MIN_GROUPS = 2
_MAX_CHUNKS = 64
_MAX_SLOT_BYTES = 32 << 20
# Fused steps run on all threads while these get at least this many cores' worth of CPU time
# between them, else on one, trying all again after _TRY_MIN to _TRY_MAX steps (WorkerCount).
_PARALLEL_CORES = 1.2
_TRY_MIN, _TRY_MAX = 4, 256
_worker_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool): worker_executor


def fused_sizes(ko: int, n_features: int, itemsize: int, multiclass: bool) -> tuple[int, int]:
    """``(group rows, block rows)`` of a fused step with ``ko`` = K*out logits per row.

    A group's X rows and its logit and gradient buffers (three for multi-class) take at most
    `_CACHE_BYTES`, less than one core's L2, so that they are still in L2 when the gradient
    reads them (a second pass over a group from L3 cost almost as much as one from memory).
    Among groups that fit, the size mattered little, and larger groups mean fewer ops.  K*out
    == 1 splits a group into equal blocks of at most `_MAX_BLOCK_ROWS` rows, for batched
    products.  bench/README.md has the measurements.
    """
    per_row = (n_features + (3 if multiclass else 2) * ko) * itemsize
    rows = max(1, _CACHE_BYTES // per_row)
    blocks = -(-rows // _MAX_BLOCK_ROWS)
    block = rows // blocks
    return block * blocks, block


def fuses(nb: int, rows: int, n_features: int, ko: int, itemsize: int, multiclass: bool) -> bool:
    """Whether a step on ``nb`` rows is fused (in groups of ``rows``; see `FusedStep`).

    Unfused, a step reads X twice and its logit buffers ([K*out, nb], two or three) leave L2.
    On small data that costs less than the fused step's extra ops (X partly stays in L3), so a
    step is fused only when X exceeds `_FUSED_MIN_X_BYTES` or the buffers `_CACHE_BYTES`, and
    when it makes at least `_FUSED_MIN_GROUPS` groups (bench/README.md: where fusing pays).
    """
    x_bytes = nb * n_features * itemsize
    buffer_bytes = nb * (3 if multiclass else 2) * ko * itemsize
    big = x_bytes > _FUSED_MIN_X_BYTES or buffer_bytes > _CACHE_BYTES
    return big and nb >= _FUSED_MIN_GROUPS * rows


def n_chunks(n_groups: int, slot_bytes: int) -> int:
    """How many chunks of consecutive groups a fused step's ``n_groups`` groups are cut into,
    each with a weight-gradient slot of ``slot_bytes`` (K*out > 1; see `FusedStep`).

    It depends on the problem's sizes only, never on the thread count, so that every thread
    count adds the same partial sums in the same order.  More chunks than threads let a thread
    that runs slower (another process holds its core) take fewer of them; `_MAX_CHUNKS` keeps
    the slots' reduction small, and `_MAX_SLOT_BYTES` their memory."""
    return min(n_groups, _MAX_CHUNKS, max(1, _MAX_SLOT_BYTES // slot_bytes))


def worker_executor(workers: int) -> ThreadPoolExecutor:
    """A pool of at least ``workers`` threads for the workers of fused steps, kept for reuse."""
    global _worker_pool
    if _worker_pool is None or _worker_pool[0] < workers:
        if _worker_pool is not None:
            _worker_pool[1].shutdown(wait=False)
        _worker_pool = (workers, ThreadPoolExecutor(workers, thread_name_prefix="sweeplr-fused"))
    return _worker_pool[1]


class WorkerCount:
    """How many workers a workspace's fused steps run on: all of torch's T threads, or one.

    On a quiet machine T workers get T cores and the step is faster.  When other processes
    hold the cores, our threads share what is left: under Linux's autogroup scheduling
    another session's job gets as much CPU as all our threads together, so T workers get
    about one core between them, and only wait for each other on top.  So each step on T
    workers measures the CPU time its workers got over its wall time (``cores``), and while
    that is below `_PARALLEL_CORES` the steps run on one worker.  Then, now and then, one step
    tries T workers again: if they get the cores, T it is; if not, the next try waits twice as
    many steps (from `_TRY_MIN` up to `_TRY_MAX`).  On a quiet machine nothing is tried, and a
    loaded machine is followed within a step and left within `_TRY_MAX` steps.  The numbers do
    not depend on the count (see `fused_step`).
    """

    def __init__(self) -> None:
        self.all_threads = True  # the count in use
        self.interval = self.steps_left = _TRY_MIN  # on one worker: steps until the next try

    def workers(self, threads: int) -> int:
        """The next step's worker count with ``threads`` torch threads."""
        return threads if self.all_threads or self.steps_left == 0 else 1

    def measured(self, n_workers: int, cores: float) -> None:
        """A step ran on ``n_workers`` workers, which got ``cores`` cores' worth of CPU time."""
        if n_workers == 1:
            self.steps_left -= 1
            return
        parallel = cores >= _PARALLEL_CORES
        if parallel and not self.all_threads:  # a try that found the cores
            self.interval = _TRY_MIN
        elif not parallel:  # the first step on one worker, or a try that did not find them
            self.interval = _TRY_MIN if self.all_threads else min(2 * self.interval, _TRY_MAX)
            self.steps_left = self.interval
        self.all_threads = parallel


class Worker:
    """One thread's buffers for the groups of a fused step it runs, one group at a time (so they
    stay in its core's cache), and their views for a group of ``m`` rows (`GroupBuffers`)."""

    def __init__(self, fs: FusedStep, rows: int) -> None:
        like, ko, ka = fs.pw, fs.ko, fs.ka
        self.fs = fs
        # binary: logits, then loss terms, and dz; multi-class: logits (ls_buf: log-softmax, dz)
        self.z_buf = like.new_empty((1 if fs.multiclass else 2) * ko * rows)
        self.ones_buf = like.new_ones(rows)
        if fs.multiclass:
            self.ls_buf = like.new_empty(ko * rows)
            self.lp_buf = like.new_empty(ka * rows)
        self.views: dict[
            int, GroupBuffers
        ] = {}  # by group length: all groups but the last share one

    def buffers(self, m: int) -> GroupBuffers:
        views = self.views.get(m)
        if views is None:
            views = self.views[m] = GroupBuffers(self, m)
        return views


class GroupBuffers:
    """Views of a worker's buffers for a group of ``m`` rows.

    They start at offset 0 of the worker's buffers, so they are contiguous whatever the group's
    length (the last group is usually shorter), and lie alike in every worker's buffers (torch
    aligns every allocation to 64 bytes): a group's ops see the same shapes, strides and alignment
    whichever thread runs them, and give the same bits.
    """

    def __init__(self, worker: Worker, m: int) -> None:
        fs = worker.fs
        ko, ka = fs.ko, fs.ka
        self.ones = worker.ones_buf[:m]
        self.z = worker.z_buf[: ko * m].view(ko, m)
        self.dz: Tensor
        if fs.multiclass:
            self.z3 = self.z.view(ka, -1, m)
            self.ls = worker.ls_buf[: ko * m].view(ka, -1, m)
            self.dz = self.ls.view(ko, m)
            self.label_log_prob = worker.lp_buf[: ka * m].view(ka, 1, m)
        else:
            # [loss terms; dz] as one [2*ko, m] matrix: one mv sums both per configuration.
            self.both = worker.z_buf[: 2 * ko * m].view(2 * ko, m)
            self.z, self.dz = self.both[:ko], self.both[ko:]
        if ko == 1:  # the batched matrix-vector blocks of `Group`
            blocks = m // fs.block
            main = blocks * fs.block
            self.z3_blocks = self.z[:, :main].view(blocks, 1, fs.block)
            self.dz3_blocks = self.dz[:, :main].view(blocks, 1, fs.block)
            self.z_rest, self.dz_rest = self.z[:, main:], self.dz[:, main:]


class Group:
    """Views of X, the targets and the step's partial sums for the rows ``[start, stop)`` of a
    fused step, the ``index``-th group, in chunk ``chunk``."""

    def __init__(
        self, fs: FusedStep, index: int, start: int, stop: int, chunk: int, first_in_chunk: bool
    ) -> None:
        self.m = m = stop - start
        ka = fs.ka
        self.x = fs.x[start:stop]
        self.xt = self.x.t()
        if fs.multiclass:
            self.label_index = fs.targets[0][start:stop].view(1, 1, m).expand(ka, 1, m)
            self.neg_onehot = fs.targets[1][:, start:stop]
            self.loss_row, self.bias_row = fs.loss_parts[index], fs.bias_parts[index]
        else:
            self.sign = fs.targets[0][start:stop]
            self.sums_row = fs.sums[index]
        if fs.ko > 1:  # the chunk's share of the weight gradient; its first group: beta 0
            self.gw, self.beta = fs.chunk_gw[chunk], 0 if first_in_chunk else 1
            return
        block = fs.block
        self.blocks = blocks = m // block
        main = blocks * block
        x3 = self.x[:main].view(blocks, block, self.x.shape[1])
        self.x3, self.x3t = x3, x3.transpose(1, 2)
        self.pw3, self.pb3 = fs.pw.unsqueeze(0).expand(blocks, 1, -1), fs.pb.unsqueeze(0)
        self.part_blocks = fs.parts[fs.n_parts : fs.n_parts + blocks]
        fs.n_parts += blocks
        self.rest = main < m
        self.x_rest, self.xt_rest = self.x[main:], self.xt[:, main:]
        if self.rest:
            self.part_rest = fs.parts[fs.n_parts]
            fs.n_parts += 1

    def run(self, fs: FusedStep, buf: GroupBuffers, want_loss: bool) -> None:
        """The loss terms and gradient of the group's rows, in ``buf``."""
        self.forward(fs, buf)
        if fs.multiclass:
            multiclass_terms(
                buf.z3, self.label_index, self.neg_onehot, buf.ls, buf.label_log_prob, None
            )
            torch.mv(buf.label_log_prob.view(fs.ka, -1), buf.ones, out=self.loss_row)
            torch.mv(buf.dz, buf.ones, out=self.bias_row)
        else:
            binary_terms(buf.z, self.sign, buf.dz, want_loss, None)
            torch.mv(buf.both, buf.ones, out=self.sums_row)  # loss terms and dz, summed
        self.backward(fs, buf)

    def forward(self, fs: FusedStep, buf: GroupBuffers) -> None:
        """Logits of the group's rows into ``buf.z``."""
        if fs.ko > 1:
            torch.addmm(fs.pb, fs.pw, self.xt, out=buf.z)
            return
        if self.blocks:
            torch.baddbmm(self.pb3, self.pw3, self.x3t, out=buf.z3_blocks)
        if self.rest:
            torch.addmm(fs.pb, fs.pw, self.xt_rest, out=buf.z_rest)

    def backward(self, fs: FusedStep, buf: GroupBuffers) -> None:
        """The group's share of the weight gradient (from ``buf.dz`` = n * dL/dz)."""
        if fs.ko > 1:
            self.gw.addmm_(buf.dz, self.x, beta=self.beta, alpha=fs.inv_n)
            return
        if self.blocks:
            torch.bmm(buf.dz3_blocks, self.x3, out=self.part_blocks)
        if self.rest:
            torch.mm(buf.dz_rest, self.x_rest, out=self.part_rest)


class FusedStep:
    """A workspace's fused step: its groups in chunks, their partial sums, and the workers.

    ``x``/``targets`` are the workspace's rows; ``pw``/``pb`` and ``gw``/``gb`` are views of the
    run's parameters and gradient as ``[K*out, F]`` and ``[K*out, 1]`` / ``[K*out]``.
    """

    def __init__(
        self,
        x: Tensor,
        targets: Targets,
        params: tuple[Tensor, Tensor],
        grads: tuple[Tensor, Tensor],
        ka: int,
        sizes: tuple[int, int],
    ) -> None:
        (self.pw, self.pb), (self.gw, self.gb) = params, grads
        self.x, self.targets, self.ka = x, targets, ka
        nb, n_features = x.shape
        self.ko = ko = self.pw.shape[0]
        self.multiclass = ko > ka
        self.inv_n = 1.0 / nb
        self.rows, self.block = rows, block = sizes
        self.workers: list[Worker] = []
        self.worker_count = WorkerCount()
        like, itemsize = self.pw, self.pw.element_size()
        starts = range(0, nb, rows)
        n_groups = len(starts)
        self.inv_n_vec = like.new_full((n_groups,), self.inv_n)
        if self.multiclass:
            self.loss_parts = like.new_empty(n_groups, ka)
            self.bias_parts = like.new_empty(n_groups, ko)
        else:
            self.sums = like.new_empty(n_groups, 2 * ko)
        n_chunk = n_chunks(n_groups, ko * n_features * itemsize)
        if ko == 1:  # a row per full block and per group remainder, in row order
            self.parts = like.new_empty(n_groups * -(-rows // block), 1, n_features)
            self.n_parts = 0
        else:
            self.chunk_gw = like.new_empty(n_chunk, ko, n_features)
        self.chunks: list[list[Group]] = []
        for c in range(n_chunk):  # n_groups // n_chunk or one more groups each
            chunk: list[Group] = []
            for g in range(c * n_groups // n_chunk, (c + 1) * n_groups // n_chunk):
                stop = min(starts[g] + rows, nb)
                chunk.append(Group(self, g, starts[g], stop, c, first_in_chunk=not chunk))
            self.chunks.append(chunk)
        if ko == 1:
            self.parts = self.parts[: self.n_parts]
            self.inv_n_parts = like.new_full((self.n_parts,), self.inv_n)

    def worker(self, index: int) -> Worker:
        """The buffers of the ``index``-th thread running this step's chunks."""
        while len(self.workers) <= index:
            self.workers.append(Worker(self, self.rows))
        return self.workers[index]


def fused_step(fs: FusedStep, loss_sum_out: Tensor, want_loss: bool) -> None:
    """`sweeplr.batched.loss.loss_gradient` as a fused step: the chunks' groups, then the
    reductions.

    With T torch threads, T workers take chunks in turn from one queue, whichever is free
    first (the calling thread, and T - 1 threads of `worker_executor`; torch ops release the
    GIL), or one worker where T did not get the cores (`WorkerCount`).  Each op runs on one
    thread: torch's thread count is 1 meanwhile, as with `sweeplr.runner`'s small-data passes
    (so not for concurrent calls from several Python threads).  Letting each op use all
    threads instead puts an OpenMP barrier in each of the thousands of per-group ops, which
    waits whenever another process holds one of the cores (bench/README.md: several times
    slower).  Workers wait for each other once per step, and a worker whose core another
    process holds takes fewer chunks.  Which worker runs a chunk changes no number: each group
    and chunk writes its own partial sums, reduced in row order.
    """
    chunks = fs.chunks
    threads = torch.get_num_threads()
    counted = threads > 1 and len(chunks) > 1
    n_workers = min(fs.worker_count.workers(threads), len(chunks)) if counted else 1
    queue = collections.deque(chunks)  # popleft is atomic: each chunk runs once
    futures: list[Future[float]] = []
    if threads > 1:
        torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        if n_workers > 1:
            pool = worker_executor(n_workers - 1)
            for index in range(1, n_workers):
                futures.append(pool.submit(run_chunks, fs, fs.worker(index), queue, want_loss))
        cpu = run_chunks(fs, fs.worker(0), queue, want_loss)
        cpu += sum(future.result() for future in futures)
        if counted:
            fs.worker_count.measured(n_workers, cpu / (time.perf_counter() - start))
        _reduce(fs, loss_sum_out)
    finally:
        queue.clear()  # a failed step: the other workers stop after their current chunk
        for future in futures:  # all workers are done before the thread count returns
            future.exception()
        if threads > 1:
            torch.set_num_threads(threads)


def _reduce(fs: FusedStep, loss_sum_out: Tensor) -> None:
    """The loss and G from the groups' and chunks' partial sums, in row order."""
    ko = fs.ko
    if fs.multiclass:
        torch.sum(fs.loss_parts, 0, out=loss_sum_out).neg_()
        torch.mv(fs.bias_parts.t(), fs.inv_n_vec, out=fs.gb)
    else:
        torch.sum(fs.sums[:, :ko], 0, out=loss_sum_out)
        torch.mv(fs.sums[:, ko:].t(), fs.inv_n_vec, out=fs.gb)
    if ko == 1:
        torch.mv(fs.parts.view(-1, fs.parts.shape[2]).t(), fs.inv_n_parts, out=fs.gw[0])
    else:
        torch.sum(fs.chunk_gw, 0, out=fs.gw)


def run_chunks(
    fs: FusedStep, worker: Worker, queue: collections.deque[list[Group]], want_loss: bool
) -> float:
    """The groups of chunks taken from ``queue`` until it is empty, each chunk's in row order,
    in ``worker``'s buffers; returns the CPU seconds the calling thread got meanwhile."""
    start = time.thread_time()
    with torch.no_grad():  # thread-local: the pool's threads do not inherit train_batched's
        while True:
            try:
                chunk = queue.popleft()
            except IndexError:  # no chunk left
                return time.thread_time() - start
            for g in chunk:
                g.run(fs, worker.buffers(g.m), want_loss)
