"""The batched engine must reproduce ``nn.Linear`` + autograd + ``torch.optim`` training.

The reference trainer below is the plain loop a user would write; every engine feature is
checked against it, so a change in torch's optimizers or data loading shows up here.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sweeplr.batched import (
    EarlyStopping,
    EngineResult,
    OptimizerConfig,
    dataloader_permutation,
    epochs,
    fused,
    linear_init,
    n_outputs,
    train_batched,
)
from sweeplr.batched import steps as dispatch
from sweeplr.batched.first_order import FirstOrderRun

# Both give > 64 optimizer steps, so Adam's bias-correction tables are rebuilt at least once.
EPOCHS, MINIBATCH_EPOCHS = 70, 15
N_ROWS, N_FEATURES, BATCH = 150, 3, 32  # 150 % 32 != 0: the last mini-batch is smaller

OPTIMIZERS = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
OPTIMIZER_CASES = [  # per-configuration lists are hyperparameters that differ across K=2
    pytest.param("sgd", {"lr": [0.05, 0.5]}, id="sgd"),
    pytest.param(
        "sgd", {"lr": 0.1, "momentum": [0.9, 0.5], "weight_decay": 0.01}, id="sgd-momentum-wd"
    ),
    pytest.param("sgd", {"lr": 0.1, "momentum": [0.9, 0.0], "dampening": 0.3}, id="sgd-dampening"),
    pytest.param(
        "sgd",
        {"lr": [0.05, 0.2], "momentum": 0.9, "nesterov": True, "weight_decay": [0.0, 0.1]},
        id="sgd-nesterov-wd",
    ),
    pytest.param("adam", {"lr": [0.01, 0.1]}, id="adam"),
    pytest.param(
        "adam",
        {"lr": 0.05, "betas": ([0.8, 0.95], 0.99), "eps": 1e-6, "weight_decay": 0.05},
        id="adam-betas-eps-wd",
    ),
    pytest.param("adamw", {"lr": [0.01, 0.1]}, id="adamw"),
    pytest.param(
        "adamw",
        {"lr": 0.05, "betas": (0.85, [0.9, 0.999]), "eps": [1e-8, 1e-3], "weight_decay": 0.1},
        id="adamw-betas-eps-wd",
    ),
]


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run this module on one thread.

    Its tensors are tiny, so threads buy nothing, while on a shared 2-core machine OpenMP's
    barriers made the module 5x slower (50 s instead of 10 s) whenever another process was busy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(
    n_classes: int, dtype: torch.dtype = torch.float64, n: int = N_ROWS, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Overlapping, unstandardised classes, so that training neither stalls nor separates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    centers = torch.randn(n_classes, N_FEATURES, generator=g, dtype=torch.float64)
    X = centers[y] + 1.5 * torch.randn(n, N_FEATURES, generator=g, dtype=torch.float64) + 2.0
    return X.to(dtype), y


def config_k(hparams: dict[str, Any], k: int) -> dict[str, Any]:
    """Configuration k's torch.optim keyword arguments from per-configuration lists."""

    def pick(v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(pick(x) for x in v)
        return v[k] if isinstance(v, list) else v

    return {name: pick(value) for name, value in hparams.items()}


def reference_train(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    weight: Tensor,
    bias: Tensor,
    kind: str,
    hparams: dict[str, Any],
    epochs: int,
    batch_size: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor, list[float]]:
    """The textbook loop: returns final (weight, bias) and each epoch's (mean batch) loss."""
    model = torch.nn.Linear(X.shape[1], n_outputs(n_classes), dtype=X.dtype)
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    optimizer_cls = dict(zip(("sgd", "adam", "adamw"), OPTIMIZERS, strict=True))[kind]
    optimizer = optimizer_cls(model.parameters(), **hparams)
    if batch_size is None:
        loader: Any = [(X, y)]
    else:
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=True, generator=g)
    losses = []
    for _ in range(epochs):
        batch_losses = []
        for xb, yb in loader:
            logits = model(xb)
            if n_classes == 2:
                loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), yb.to(X.dtype))
            else:
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batch_losses.append(loss.item())
        losses.append(sum(batch_losses) / len(batch_losses))
    return model.weight.detach(), model.bias.detach(), losses


def first_nonfinite_epoch(losses: list[float]) -> int | None:
    return next((e for e, v in enumerate(losses, 1) if not math.isfinite(v)), None)


def run_engine(
    X: Tensor, y: Tensor, n_classes: int, seeds: list[int], cfg: OptimizerConfig, **kwargs: Any
) -> tuple[EngineResult, Tensor, Tensor]:
    weight, bias = linear_init(X.shape[1], n_classes, seeds, dtype=X.dtype)
    return train_batched(X, y, n_classes, weight, bias, cfg, **kwargs), weight, bias


@pytest.mark.parametrize(("n", "batch_size"), [(150, 32), (128, 32), (10, 64)])
def test_dataloader_permutation_matches_dataloader(n: int, batch_size: int) -> None:
    loader = DataLoader(
        TensorDataset(torch.arange(n)),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(7),
    )
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        seen = torch.cat([batch for (batch,) in loader])
        torch.testing.assert_close(seen, dataloader_permutation(g, n), rtol=0, atol=0)


@pytest.mark.parametrize("batch_size", [None, BATCH], ids=["full", "minibatch"])
@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize(("kind", "hparams"), OPTIMIZER_CASES)
@pytest.mark.parametrize(
    ("dtype", "tol"),
    # float64: agreement is ~1e-14 in practice.  float32: the engine's matmuls are laid out
    # differently from nn.Linear's (W @ X^T for all K at once) and its BCE gradient is computed
    # as (1-2y) sigmoid((1-2y) z), more accurately than sigmoid(z) - y, so rounding differs.
    [(torch.float64, {"rtol": 1e-5, "atol": 1e-8}), (torch.float32, {"rtol": 1e-4, "atol": 1e-5})],
    ids=["f64", "f32"],
)
def test_matches_torch_optim(
    kind: str,
    hparams: dict[str, Any],
    n_classes: int,
    batch_size: int | None,
    dtype: torch.dtype,
    tol: dict[str, float],
) -> None:
    X, y = make_data(n_classes, dtype)
    cfg = OptimizerConfig(kind, **hparams)  # type: ignore[arg-type]
    epochs = EPOCHS if batch_size is None else MINIBATCH_EPOCHS
    result, w0, b0 = run_engine(
        X, y, n_classes, [1, 2], cfg, epochs=epochs, batch_size=batch_size, log_every=1
    )
    assert result.status == ["completed", "completed"]
    assert result.epochs_run == [epochs, epochs]
    assert result.history.epochs == list(range(1, epochs + 1))
    for k in range(2):
        w, b, losses = reference_train(
            X, y, n_classes, w0[k], b0[k], kind, config_k(hparams, k), epochs, batch_size
        )
        torch.testing.assert_close(result.weight[k], w, **tol)
        torch.testing.assert_close(result.bias[k], b, **tol)
        torch.testing.assert_close(
            result.history.train_loss[:, k], torch.tensor(losses, dtype=dtype), **tol
        )


# Fused steps (sweeplr.batched.fused) on small data: groups of 40 rows (K*out == 1: 2 blocks of 16
# + 8 rows) or 24 rows (K*out > 1), fused from 2 groups on.  150 rows are groups of 40, 40, 40
# and 30 (1 block + 14 rows), or 6 groups of 24 and one of 6.
def tiny_fused_sizes(ko: int, *_: Any) -> tuple[int, int]:
    return (40 if ko == 1 else 24), 16


FUSED_SIZES = {
    "fused_sizes": tiny_fused_sizes,
    "_FUSED_MIN_X_BYTES": 0,
    "_FUSED_MIN_GROUPS": 2,
    "_MAX_CHUNKS": 3,  # chunks of several groups
}
UNFUSED_SIZES = {"_FUSED_MIN_GROUPS": 10**9}
FUSED_BATCH = 96  # mini-batches of 96 rows are fused; the last one, 54 rows, too if K*out > 1


def use_sizes(monkeypatch: pytest.MonkeyPatch, sizes: dict[str, Any]) -> None:
    for name, value in sizes.items():
        monkeypatch.setattr(fused, name, value)


def test_fused_sizes_fit_a_core_cache() -> None:
    """The real sizes: a group's rows and buffers fit `_CACHE_BYTES`; small X is not fused."""
    for ko, multiclass in [(1, False), (8, False), (64, False), (30, True)]:
        rows, block = fused.fused_sizes(ko, 100, 4, multiclass)
        assert rows % block == 0 and block <= fused._MAX_BLOCK_ROWS
        assert rows * (100 + (3 if multiclass else 2) * ko) * 4 <= fused._CACHE_BYTES
        assert fused.fuses(1_000_000, rows, 100, ko, 4, multiclass)
        assert not fused.fuses(rows, rows, 100, ko, 4, multiclass)
    assert fused.fused_sizes(1, 100, 4, False) == (3854, 1927)
    assert not fused.fuses(32_000, 3854, 100, 1, 4, False)  # X (13 MB) stays in L3
    assert fused.fuses(8_000, 1724, 100, 64, 4, False)  # 4 MB of logit buffers do not


@pytest.mark.parametrize("batch_size", [None, FUSED_BATCH], ids=["full", "minibatch"])
@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("seeds", [[1], [1, 2]], ids=["K1", "K2"])
def test_fused_steps_match_torch_optim(
    seeds: list[int], n_classes: int, batch_size: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps on many rows are fused; shrunken sizes make small data take that path."""
    use_sizes(monkeypatch, FUSED_SIZES)
    X, y = make_data(n_classes)
    hparams = {"lr": [0.01, 0.1], "weight_decay": 0.01}
    epochs = 20
    chosen = config_k(hparams, 0) if len(seeds) == 1 else hparams
    cfg = OptimizerConfig("adam", **chosen)
    result, w0, b0 = run_engine(
        X, y, n_classes, seeds, cfg, epochs=epochs, batch_size=batch_size, log_every=1
    )
    for k in range(len(seeds)):
        w, b, losses = reference_train(
            X, y, n_classes, w0[k], b0[k], "adam", config_k(hparams, k), epochs, batch_size
        )
        torch.testing.assert_close(result.weight[k], w, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(result.bias[k], b, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(
            result.history.train_loss[:, k], torch.tensor(losses, dtype=X.dtype)
        )


def one_step(
    X: Tensor, y: Tensor, n_classes: int, seeds: list[int], want_loss: bool
) -> tuple[Tensor, Tensor, int]:
    """Loss sum and gradient ``[K, out, F+1]`` of one engine step, and its number of groups
    (0: not fused)."""
    weight, bias = linear_init(X.shape[1], n_classes, seeds, dtype=X.dtype)
    cfg = OptimizerConfig("sgd", lr=0.1)
    run = FirstOrderRun(X, y, n_classes, weight, bias, cfg, None, 0, None)
    ws = run.workspace(X.shape[0])
    loss = X.new_full((len(seeds),), math.nan)
    dispatch.loss_and_grad(ws, loss, want_loss)
    return loss, run.G.clone(), 0 if ws.fused is None else sum(map(len, ws.fused.chunks))


@pytest.mark.parametrize("want_loss", [True, False], ids=["loss", "surrogate"])
@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("k", [1, 3], ids=["K1", "K3"])
@pytest.mark.parametrize("n", [150, 160, 60, 40])
def test_fused_step_is_the_two_pass_step(
    n: int,
    k: int,
    n_classes: int,
    want_loss: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One fused step against the two-pass step and a float64 autograd reference.

    150 rows are no multiple of the block or group size, 160 rows are 4 groups of 2 blocks + 8
    rows (K*out == 1); 60 rows are fused only for K*out > 1, 40 rows not at all.
    """
    X, y = make_data(n_classes, torch.float32, n=n)
    seeds = list(range(k))
    use_sizes(monkeypatch, UNFUSED_SIZES)
    loss_2p, grad_2p, n_groups = one_step(X, y, n_classes, seeds, want_loss)
    assert n_groups == 0
    use_sizes(monkeypatch, FUSED_SIZES)
    loss, grad, n_groups = one_step(X, y, n_classes, seeds, want_loss)
    rows = 40 if k * n_outputs(n_classes) == 1 else 24
    assert n_groups == (-(-n // rows) if n >= 2 * rows else 0)
    torch.testing.assert_close(loss, loss_2p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_2p, rtol=1e-5, atol=1e-6)
    # float64 autograd: the mean loss and its gradient
    weight, bias = (t.double().requires_grad_() for t in linear_init(X.shape[1], n_classes, seeds))
    logits = torch.einsum("kof,nf->kno", weight, X.double()) + bias[:, None, :]
    if n_classes == 2:
        target = y.double().expand(k, n)
        losses = F.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")
    else:
        losses = F.cross_entropy(logits.transpose(1, 2), y.expand(k, n), reduction="none")
    losses.mean(1).sum().backward()
    assert weight.grad is not None and bias.grad is not None
    reference = torch.cat([weight.grad, bias.grad.unsqueeze(-1)], 2).float()
    torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-6)
    if want_loss or n_classes > 2:  # otherwise the sum of the finiteness surrogate
        torch.testing.assert_close(loss / n, losses.mean(1).detach().float())


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(1)  # the module's setting (see single_thread)


def fused_run(X: Tensor, y: Tensor, n_classes: int, k: int, epochs: int = 5) -> EngineResult:
    """A whole fused run of Adam, every epoch logged."""
    cfg = OptimizerConfig("adam", lr=[0.01 * (i + 1) for i in range(k)])
    result, _, _ = run_engine(X, y, n_classes, list(range(k)), cfg, epochs=epochs, log_every=1)
    return result


def record_workers(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Per fused step, the thread that ran each group, in order of running."""
    steps: list[list[int]] = []
    fused_step, run_group = fused.fused_step, fused.Group.run

    def step(ws: Any, loss_sum_out: Tensor, want_loss: bool) -> None:
        steps.append([])
        fused_step(ws, loss_sum_out, want_loss)

    def group(g: Any, ws: Any, buf: Any, want_loss: bool) -> None:
        steps[-1].append(threading.get_ident())
        run_group(g, ws, buf, want_loss)

    monkeypatch.setattr(fused, "fused_step", step)
    monkeypatch.setattr(fused.Group, "run", group)
    return steps


def assert_same_run(a: EngineResult, b: EngineResult) -> None:
    """Bit for bit."""
    for name in ("weight", "bias"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("train_loss", "val_loss", "val_accuracy"):  # NaN without validation data
        x, y = getattr(a.history, name), getattr(b.history, name)
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=name)


FUSED_CASES = [(2, 1), (2, 3), (3, 2)]  # (n_classes, K): K*out == 1, binary, multi-class


@pytest.mark.parametrize(("n_classes", "k"), FUSED_CASES)
def test_fused_runs_are_the_same_on_any_thread_count(
    n_classes: int, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With T torch threads, T workers take the chunks of groups, whichever is free; each
    group's and chunk's partial sums have their own slot, so every thread count gives the same
    bits, and the thread count is T again after each step."""
    X, y = make_data(n_classes, torch.float32, n=150)
    use_sizes(monkeypatch, FUSED_SIZES)
    one = fused_run(X, y, n_classes, k)
    steps = record_workers(monkeypatch)
    monkeypatch.setattr(fused, "_PARALLEL_CORES", 0.0)  # every step on T workers
    for threads in (2, 3):
        with torch_threads(threads):
            several = fused_run(X, y, n_classes, k)
            assert torch.get_num_threads() == threads
        assert_same_run(several, one)
        assert len(steps) == 5 and all(1 <= len(set(ran)) <= threads for ran in steps)
        steps.clear()


@pytest.mark.parametrize("stalled", ["caller", "pool", "mid-chunk"])
@pytest.mark.parametrize(("n_classes", "k"), FUSED_CASES)
def test_a_stalled_worker_changes_no_number(
    n_classes: int, k: int, stalled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker held up (as when another process holds its core) leaves the chunks to the
    other, and the numbers are those of one thread, bit for bit.

    On 2 threads, in every step one worker waits until the other has run out of chunks:
    "caller", the thread that called the step, before its first chunk; "pool", the pool's
    thread, before its first chunk; "mid-chunk", the pool's thread after the first group of its
    first chunk (the caller waits until it has one)."""
    X, y = make_data(n_classes, torch.float32, n=150)
    use_sizes(monkeypatch, FUSED_SIZES)
    one = fused_run(X, y, n_classes, k)
    steps = record_workers(monkeypatch)
    fused_step, run_chunks = fused.fused_step, fused.run_chunks
    run_group = fused.Group.run
    caller = threading.get_ident()
    done = {"caller": threading.Event(), "pool": threading.Event()}
    has_one = threading.Event()

    def wait(event: threading.Event) -> None:
        assert event.wait(timeout=60), "a worker waited in vain"

    def chunks(ws: Any, worker: Any, queue: Any, want_loss: bool) -> float:
        me = "caller" if threading.get_ident() == caller else "pool"
        if me == "caller" and stalled == "mid-chunk":
            wait(has_one)
        elif me == stalled:
            wait(done["pool" if me == "caller" else "caller"])
        try:
            return run_chunks(ws, worker, queue, want_loss)
        finally:
            done[me].set()

    def group(g: Any, ws: Any, buf: Any, want_loss: bool) -> None:
        run_group(g, ws, buf, want_loss)
        if stalled == "mid-chunk" and threading.get_ident() != caller and not has_one.is_set():
            has_one.set()
            wait(done["caller"])

    def step(ws: Any, loss_sum_out: Tensor, want_loss: bool) -> None:
        for event in (*done.values(), has_one):
            event.clear()
        fused_step(ws, loss_sum_out, want_loss)

    monkeypatch.setattr(fused, "run_chunks", chunks)
    monkeypatch.setattr(fused.Group, "run", group)
    monkeypatch.setattr(fused, "fused_step", step)
    monkeypatch.setattr(fused, "_PARALLEL_CORES", 0.0)  # every step on 2 workers
    with torch_threads(2):
        result = fused_run(X, y, n_classes, k)
    assert_same_run(result, one)
    assert len(steps) == 5
    for ran in steps:  # who ran the groups, in order: C the caller, P the pool's thread
        order = "".join("C" if thread == caller else "P" for thread in ran)
        pattern = {"caller": "P+", "pool": "C+", "mid-chunk": "PC+P*"}[stalled]
        assert re.fullmatch(pattern, order), order


def worker_counts(cores: Callable[[int], float], steps: int) -> list[int]:
    """The worker counts `_WorkerCount` picks on 2 threads, step by step, when 2 workers at
    step ``s`` get ``cores(s)`` cores' worth of CPU time."""
    count = fused.WorkerCount()
    used = []
    for step in range(steps):
        n = count.workers(2)
        used.append(n)
        count.measured(n, cores(step) if n == 2 else 1.0)
    return used


def test_worker_count_keeps_all_threads_that_get_the_cores() -> None:
    """On a quiet machine nothing is tried; one step without the cores (a hiccup) moves to one
    worker, and the try 4 steps later back."""
    assert worker_counts(lambda step: 1.9, 600) == [2] * 600
    used = worker_counts(lambda step: 0.9 if step == 50 else 1.25, 100)
    assert used == [2] * 51 + [1] * 4 + [2] * 45


def test_worker_count_follows_the_load() -> None:
    """When 2 workers get less than `_PARALLEL_CORES` (steps 100-999: other processes hold
    the cores) the steps run on one, trying 2 again after 4, 8, 16, ... 256 steps, until a try
    gets the cores."""
    used = worker_counts(lambda step: 0.9 if 100 <= step < 1000 else 1.9, 1300)
    assert [step for step in range(100, 1129) if used[step] == 2] == [
        100,
        105,
        114,
        131,
        164,
        229,
        358,
        615,
        872,
    ]
    assert used[:100] == [2] * 100
    assert used[1129:] == [2] * (1300 - 1129)


def test_fused_steps_leave_workers_that_get_no_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused steps on 2 threads whose second worker is held up (as when another process holds
    its core) get less than `_PARALLEL_CORES` cores: the next steps run on one worker, until
    the try after 4 steps."""
    X, y = make_data(2, torch.float32, n=150)
    use_sizes(monkeypatch, FUSED_SIZES)
    run_chunks, choose = fused.run_chunks, fused.WorkerCount.workers
    caller = threading.get_ident()
    chosen = []

    def held_up(ws: Any, worker: Any, queue: Any, want_loss: bool) -> float:
        if threading.get_ident() != caller:
            time.sleep(0.2)
        return run_chunks(ws, worker, queue, want_loss)

    def workers(count: Any, threads: int) -> int:
        chosen.append(choose(count, threads))
        return chosen[-1]

    monkeypatch.setattr(fused, "run_chunks", held_up)
    monkeypatch.setattr(fused.WorkerCount, "workers", workers)
    with torch_threads(2):
        fused_run(X, y, 2, 3, epochs=7)
    assert chosen == [2, 1, 1, 1, 1, 2, 1]


@pytest.mark.parametrize(("n_classes", "k"), FUSED_CASES)
def test_fused_workers_run_one_thread_each(
    n_classes: int, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker's ops run on one thread, and the thread count is back even when a worker
    fails; the failure reaches the caller."""
    X, y = make_data(n_classes, torch.float32, n=150)
    use_sizes(monkeypatch, FUSED_SIZES)
    weight, bias = linear_init(X.shape[1], n_classes, list(range(k)))
    run = FirstOrderRun(
        X, y, n_classes, weight, bias, OptimizerConfig("sgd", lr=0.1), None, 0, None
    )
    ws = run.workspace(X.shape[0])
    seen_in_worker = []
    caller = threading.get_ident()

    def failing(ws: Any, worker: Any, queue: Any, want_loss: bool) -> float:
        seen_in_worker.append(torch.get_num_threads())
        if threading.get_ident() != caller:
            raise RuntimeError("worker failed")
        return 0.0

    monkeypatch.setattr(fused, "run_chunks", failing)
    with torch_threads(3):
        with pytest.raises(RuntimeError, match="worker failed"):
            dispatch.loss_and_grad(ws, X.new_empty(k), True)
        assert seen_in_worker == [1, 1, 1]
        assert torch.get_num_threads() == 3


def test_fused_runs_are_the_two_pass_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole runs, fused and not: divergence (first non-finite epoch, inf or NaN alike),
    pruning and early stopping shrink the batch mid-run, and every number stays the same.

    Binary, the batch ends with config 0 alone (K*out == 1: batched matrix-vector products)."""
    X, y = make_data(3, torch.float32)
    X_val, y_val = make_data(3, torch.float32, n=40, seed=1)
    lrs, wds = [0.05, 30.0, 0.5, 0.1, 100.0], [0.0, 1.0, 0.0, 0.01, 1.0]

    def run(sizes: dict[str, Any], n_classes: int) -> EngineResult:
        use_sizes(monkeypatch, sizes)
        labels = y if n_classes == 3 else y % 2
        return run_engine(
            X,
            labels,
            n_classes,
            [0, 1, 2, 3, 4],
            diverging_sgd(lrs, wds),
            epochs=40,
            val=(X_val, y_val if n_classes == 3 else y_val % 2),
            log_every=3,
            check_every=4,
            on_report=lambda e, *_: torch.tensor([False, False, e == 12, False, False]),
            report_every=6,
            early_stopping=EarlyStopping(
                [None, None, None, 2, None], [0.0] * 5, ["val_accuracy"] * 5, [True] * 5
            ),
        )[0]

    for n_classes in (2, 3):
        fused, two_pass = run(FUSED_SIZES, n_classes), run(UNFUSED_SIZES, n_classes)
        assert fused.status == two_pass.status
        assert fused.status == ["completed", "diverged", "pruned", "completed", "diverged"]
        assert fused.best_epoch[3] is not None  # stopped early, with its best weights
        assert fused.diverged_epoch == two_pass.diverged_epoch
        if n_classes == 2:  # the divergence epoch is a logged one: an inf loss, then NaN
            assert fused.history.train_loss[fused.history.epochs.index(27), 1].isinf()
        assert fused.epochs_run == two_pass.epochs_run
        assert fused.best_epoch == two_pass.best_epoch
        ok = [k for k, status in enumerate(fused.status) if status != "diverged"]
        torch.testing.assert_close(fused.weight[ok], two_pass.weight[ok], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.bias[ok], two_pass.bias[ok], rtol=1e-5, atol=1e-6)
        for a, b in zip(
            (fused.history.train_loss, fused.history.val_loss, fused.history.val_accuracy),
            (two_pass.history.train_loss, two_pass.history.val_loss, two_pass.history.val_accuracy),
            strict=True,
        ):
            assert a is not None and b is not None
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_linear_init_is_nn_linear_under_manual_seed() -> None:
    state = torch.get_rng_state()
    weight, bias = linear_init(4, 3, [3, 5], dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), state)
    for k, seed in enumerate([3, 5]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(4, 3, dtype=torch.float64)
        assert torch.equal(weight[k], layer.weight.detach())
        assert torch.equal(bias[k], layer.bias.detach())
    assert linear_init(4, 2, [0])[0].shape == (1, 1, 4)


def diverging_sgd(lrs: list[float], weight_decays: list[float]) -> OptimizerConfig:
    """SGD with momentum; lr * weight_decay >> 2 makes the parameters grow geometrically."""
    return OptimizerConfig("sgd", lr=lrs, momentum=0.5, weight_decay=weight_decays)


def test_config_is_independent_of_its_batch_mates() -> None:
    """Config A trained alone and inside a batch of five (one of which diverges)."""
    X, y = make_data(2, torch.float32)
    alone, _, _ = run_engine(X, y, 2, [1], diverging_sgd([0.1], [0.0]), epochs=EPOCHS)
    lrs, wds = [0.3, 0.1, 30.0, 0.01, 0.05], [0.0, 0.0, 1.0, 0.0, 0.01]
    batch, _, _ = run_engine(X, y, 2, [7, 1, 3, 4, 5], diverging_sgd(lrs, wds), epochs=EPOCHS)
    assert batch.status == ["completed", "completed", "diverged", "completed", "completed"]
    assert alone.status == ["completed"]
    # Not bit-identical, for two reasons outside the engine's control: MKL picks its gemm kernel
    # by shape (K=1 vs K=5, and K=4 once the diverged row is dropped), and torch's elementwise
    # sigmoid gives 1-ulp different results in the vectorised body and in the scalar tail of
    # its loop, where a row's elements land depending on the row's position in the batch.
    # (float64 agrees to ~1e-16.)  Real coupling, such as a leaked NaN, would be far above 1e-6.
    torch.testing.assert_close(batch.weight[1], alone.weight[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(batch.bias[1], alone.bias[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("n_classes", "batch_size", "check_every", "log_every"),
    # log_every=1 computes the binary loss value every epoch; otherwise most epochs only check
    # its finiteness via the cheaper surrogate (see sweeplr.batched.loss).
    [(2, None, 1, 1), (2, None, 7, 5), (2, None, 100, 0), (2, BATCH, 7, 3), (3, None, 7, 5)],
)
def test_divergence_is_detected_at_the_first_nonfinite_loss(
    n_classes: int, batch_size: int | None, check_every: int, log_every: int
) -> None:
    X, y = make_data(n_classes, torch.float32)
    lrs, wds = [0.01, 30.0, 0.1, 8.0], [0.0, 1.0, 0.0, 1.0]
    result, w0, b0 = run_engine(
        X,
        y,
        n_classes,
        [0, 1, 2, 3],
        diverging_sgd(lrs, wds),
        epochs=EPOCHS,
        batch_size=batch_size,
        log_every=log_every,
        check_every=check_every,
    )
    assert result.status == ["completed", "diverged", "completed", "diverged"]
    history = result.history
    logged = torch.tensor(history.epochs, dtype=torch.int64)
    for k in range(4):
        hparams = {"lr": lrs[k], "momentum": 0.5, "weight_decay": wds[k]}
        w, b, losses = reference_train(
            X, y, n_classes, w0[k], b0[k], "sgd", hparams, EPOCHS, batch_size
        )
        epoch = first_nonfinite_epoch(losses)
        assert result.diverged_epoch[k] == epoch
        if epoch is None:
            assert result.epochs_run[k] == EPOCHS
            torch.testing.assert_close(result.weight[k], w, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(result.bias[k], b, rtol=1e-4, atol=1e-5)
            assert torch.isfinite(history.train_loss[:, k]).all()
        else:
            assert 1 < epoch < EPOCHS
            assert result.epochs_run[k] == epoch
            assert history.train_loss[logged > epoch, k].isnan().all()
            assert torch.isfinite(history.train_loss[logged < epoch, k]).all()
            assert not torch.isfinite(history.train_loss[logged == epoch, k]).any()


def test_divergence_in_the_final_update_is_detected() -> None:
    """All losses finite, but the last step overflows the parameters: still "diverged"."""
    X, y = make_data(2, torch.float32)
    X = X * 1e3  # gradients ~1e2..1e3, so lr * grad overflows float32
    cfg = OptimizerConfig("sgd", lr=[1e-6, 1e37])
    result, _, _ = run_engine(X, y, 2, [0, 1], cfg, epochs=1, log_every=1)
    assert torch.isfinite(result.history.train_loss).all()
    assert result.status == ["completed", "diverged"]
    assert result.diverged_epoch == [None, 1]
    assert result.epochs_run == [1, 1]


PLAIN_CASES = [  # (n_classes, batch_size, kind, hparams with K-length lists)
    pytest.param(2, None, "sgd", {"lr": [0.05]}, id="binary-sgd-K1"),
    pytest.param(
        2,
        None,
        "sgd",
        {"lr": [0.05, 0.2], "momentum": 0.9, "nesterov": True, "weight_decay": [0.0, 0.1]},
        id="binary-nesterov-K2",
    ),
    pytest.param(2, None, "adam", {"lr": [1e-3, 1e-2, 1e-1]}, id="binary-adam-K3"),
    pytest.param(2, None, "adamw", {"lr": [0.05], "weight_decay": 0.1}, id="binary-adamw-K1"),
    pytest.param(3, None, "sgd", {"lr": [0.05, 0.2], "momentum": 0.5}, id="multiclass-K2"),
    pytest.param(2, BATCH, "sgd", {"lr": [0.05, 0.2], "momentum": 0.5}, id="minibatch-K2"),
]


class EveryEpochSchedule:
    """An lr schedule that never changes the lr; the engine asks it every epoch, so with it
    every epoch goes through the epoch loop's body one by one."""

    def lr(self, epoch: int) -> None:
        return None

    def observe(self, metrics: Any, active: Any) -> None:
        pass


@pytest.mark.parametrize(("n_classes", "batch_size", "kind", "hparams"), PLAIN_CASES)
@pytest.mark.parametrize("log_every", [0, 7])
def test_plain_epochs_are_bit_identical_to_epoch_by_epoch_training(
    n_classes: int,
    batch_size: int | None,
    kind: str,
    hparams: dict[str, Any],
    log_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Epochs that are neither logged, reported nor checked run back to back, on small binary
    full batches in the sign-folded, inference-mode loop (epochs.FoldedBinarySteps).  The
    results must not differ in a bit from training epoch by epoch, whichever path the plain
    epochs took, and no inference tensor may leak out of that loop."""
    X, y = make_data(n_classes, torch.float32)
    cfg = OptimizerConfig(kind, **hparams)  # type: ignore[arg-type]
    seeds = list(range(len(hparams["lr"])))
    folded_epochs = []
    folded_run = epochs.FoldedBinarySteps.run

    def counting_run(self: Any, loss_cols: Any, *args: Any) -> None:
        folded_epochs.append(len(loss_cols))
        folded_run(self, loss_cols, *args)

    monkeypatch.setattr(epochs.FoldedBinarySteps, "run", counting_run)

    def train(**kwargs: Any) -> EngineResult:
        return run_engine(
            X,
            y,
            n_classes,
            seeds,
            cfg,
            epochs=EPOCHS,
            batch_size=batch_size,
            log_every=log_every,
            check_every=50,  # the loss buffer's layout changes the loss sums' last bits
            **kwargs,
        )[0]

    epoch_by_epoch = train(lr_schedule=EveryEpochSchedule())
    assert folded_epochs == []
    results = [train()]
    foldable = n_classes == 2 and batch_size is None
    assert (sum(folded_epochs) > EPOCHS // 2) == foldable
    monkeypatch.setattr(dispatch, "_FOLD_MAX_ELEMENTS", 0)  # plain epochs, not folded
    results.append(train())
    for result in results:
        assert torch.equal(result.weight, epoch_by_epoch.weight)
        assert torch.equal(result.bias, epoch_by_epoch.bias)
        assert result.history.epochs == epoch_by_epoch.history.epochs
        assert torch.equal(result.history.train_loss, epoch_by_epoch.history.train_loss)
        assert result.status == ["completed"] * len(seeds)
        for t in (result.weight, result.bias, result.history.train_loss):
            assert not t.is_inference()
    # the parameters come back as ordinary tensors: autograd can use them
    w = results[0].weight.clone().requires_grad_()
    (w * 2).sum().backward()


@pytest.mark.parametrize("k", [1, 2])
def test_divergence_in_plain_epochs_is_found_at_its_epoch(k: int) -> None:
    """Plain epochs check only the loss's finiteness, through a surrogate (for K=1 one dot
    product of u and sigmoid(u)): a logit of -inf, whose sigmoid is exactly 0, must still make
    it non-finite (-inf * 0 is NaN, as torch's BCE there), and so must geometric blow-up."""
    X, y = make_data(2, torch.float32)
    X, y = X[y == 0].abs() + 1.0, y[y == 0]  # class 0 only, and x > 1 everywhere
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)
    weight[0, 0, 0] = -3e38  # every logit of configuration 0 overflows to -inf
    cfg = OptimizerConfig("sgd", lr=0.01)
    result = train_batched(X, y, 2, weight, bias, cfg, 5, check_every=100)
    assert result.diverged_epoch == [1] + [None] * (k - 1)
    assert result.status == ["diverged"] + ["completed"] * (k - 1)

    X, y = make_data(2, torch.float32)
    for lr, wd in ((30.0, 1.0), (8.0, 1.0)):
        seeds = list(range(k))
        cfg = diverging_sgd([lr] * k, [wd] * k)
        result, w0, b0 = run_engine(X, y, 2, seeds, cfg, epochs=EPOCHS, check_every=100)
        hparams = {"lr": lr, "momentum": 0.5, "weight_decay": wd}
        for j in seeds:
            _, _, losses = reference_train(X, y, 2, w0[j], b0[j], "sgd", hparams, EPOCHS)
            epoch = first_nonfinite_epoch(losses)
            assert epoch is not None and 1 < epoch < EPOCHS
            assert result.diverged_epoch[j] == epoch


def test_pruning_callback_freezes_flagged_configs() -> None:
    X, y = make_data(3)
    X_val, y_val = make_data(3, n=40, seed=1)
    hparams = {"lr": [0.01, 0.05, 0.1], "weight_decay": 0.01}
    cfg = OptimizerConfig("adamw", **hparams)  # type: ignore[arg-type]
    calls: dict[int, tuple[list[bool], Tensor, Tensor, Tensor]] = {}

    def on_report(
        epoch: int, active: Tensor, train_loss: Tensor, val_loss: Tensor, val_accuracy: Tensor
    ) -> Tensor:
        calls[epoch] = (active.tolist(), train_loss, val_loss, val_accuracy)
        return torch.tensor([False, epoch == 20, False])

    result, w0, b0 = run_engine(
        X,
        y,
        3,
        [0, 1, 2],
        cfg,
        epochs=EPOCHS,
        batch_size=BATCH,
        val=(X_val, y_val),
        log_every=20,
        on_report=on_report,
        report_every=10,
    )
    assert result.status == ["completed", "pruned", "completed"]
    assert result.epochs_run == [EPOCHS, 20, EPOCHS]
    assert result.diverged_epoch == [None, None, None]
    assert list(calls) == list(range(10, EPOCHS + 1, 10))
    assert calls[20][0] == [True, True, True] and calls[30][0] == [True, False, True]
    assert calls[30][1][1].isnan() and not calls[30][1][[0, 2]].isnan().any()
    # Validation scores come with the reports at logged epochs (10, an early row of
    # logged_epochs, then 20, 40, 60, and the last), and only there.
    history = result.history
    assert history.val_loss is not None and history.val_accuracy is not None
    assert calls[30][2].isnan().all() and calls[30][3].isnan().all()
    for epoch in (10, 20, 40):
        row = history.epochs.index(epoch)
        torch.testing.assert_close(calls[epoch][2], history.val_loss[row], equal_nan=True)
        torch.testing.assert_close(calls[epoch][3], history.val_accuracy[row], equal_nan=True)
    assert calls[40][2][1].isnan() and not calls[20][2].isnan().any()
    for k in range(3):
        epochs = result.epochs_run[k]
        w, b, losses = reference_train(
            X, y, 3, w0[k], b0[k], "adamw", config_k(hparams, k), epochs, BATCH
        )
        torch.testing.assert_close(result.weight[k], w, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(result.bias[k], b, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(calls[10][1][k].item(), losses[9], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_validation_metrics(n_classes: int) -> None:
    X, y = make_data(n_classes)
    X_val, y_val = make_data(n_classes, n=60, seed=1)
    cfg = OptimizerConfig("sgd", lr=[0.01, 0.1], momentum=0.9)
    result, _, _ = run_engine(
        X, y, n_classes, [0, 1], cfg, epochs=25, val=(X_val, y_val), log_every=10
    )
    history = result.history
    assert history.epochs == [1, 2, 5, 10, 20, 25]
    assert history.val_loss is not None and history.val_accuracy is not None
    assert history.val_loss.shape == history.val_accuracy.shape == (6, 2)
    for k in range(2):
        logits = X_val @ result.weight[k].T + result.bias[k]
        if n_classes == 2:
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), y_val.to(X.dtype))
            accuracy = ((logits.squeeze(-1) > 0) == y_val.bool()).double().mean()
        else:
            loss = F.cross_entropy(logits, y_val)
            accuracy = (logits.argmax(1) == y_val).double().mean()
        torch.testing.assert_close(history.val_loss[-1, k], loss)
        torch.testing.assert_close(history.val_accuracy[-1, k], accuracy)


def test_runs_are_bit_identical() -> None:
    X, y = make_data(2, torch.float32)
    X_val, y_val = make_data(2, torch.float32, n=40, seed=1)
    cfg = OptimizerConfig("adam", lr=[1e-3, 1e-2, 1e-1], betas=(0.9, [0.99, 0.999, 0.9]))

    def run() -> EngineResult:
        result, _, _ = run_engine(
            X,
            y,
            2,
            [0, 1, 2],
            cfg,
            epochs=30,
            batch_size=BATCH,
            shuffle_seed=3,
            val=(X_val, y_val),
            log_every=3,
        )
        return result

    first, second = run(), run()
    assert torch.equal(first.weight, second.weight)
    assert torch.equal(first.bias, second.bias)
    assert first.history.epochs == second.history.epochs
    for a, b in zip(
        (first.history.train_loss, first.history.val_loss, first.history.val_accuracy),
        (second.history.train_loss, second.history.val_loss, second.history.val_accuracy),
        strict=True,
    ):
        assert torch.equal(a, b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (OptimizerConfig("adam", lr=0.1, momentum=0.9), "momentum is not an option of adam"),
        (OptimizerConfig("sgd", lr=0.1, nesterov=True), "Nesterov"),
        (OptimizerConfig("sgd", lr=[0.1, 0.2, 0.3]), "length 2"),
        (OptimizerConfig("adamw", lr=0.1, betas=(1.0, 0.9)), "beta1"),
        (OptimizerConfig("sgd", lr=-1.0), "lr must be >= 0"),
    ],
)
def test_rejects_invalid_optimizer_configs(cfg: OptimizerConfig, message: str) -> None:
    X, y = make_data(2)
    with pytest.raises(ValueError, match=message):
        run_engine(X, y, 2, [0, 1], cfg, epochs=1)


def test_rejects_mismatched_inputs() -> None:
    X, y = make_data(3)
    weight, bias = linear_init(N_FEATURES, 2, [0], dtype=X.dtype)
    with pytest.raises(ValueError, match="weight must be"):
        train_batched(X, y, 3, weight, bias, OptimizerConfig("sgd", lr=0.1), 1)
    with pytest.raises(ValueError, match="labels must lie"):
        train_batched(X, y, 2, weight, bias, OptimizerConfig("sgd", lr=0.1), 1)
