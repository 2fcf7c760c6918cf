"""Per-epoch cost of `sweeplr.engine` against the tutorial's autograd loop and a bare matmul.

Run ``python bench/bench_engine.py`` (about 15 s; ``--big-rows`` shrinks the large case).
All variants are timed in the same process, interleaved round by round so that background
load hits them alike, and the median over rounds is reported.  On a machine shared with other
busy processes, multi-threaded ops stall on OpenMP barriers; ``--threads 1`` then gives more
stable numbers.

(a) the tutorial loop: ``nn.Linear(2, 1)`` + ``torch.sigmoid`` + ``nn.BCELoss`` +
    ``torch.optim.SGD(lr=0.01)``, full batch on 670 rows of 2-D blobs;
(b) the engine on the same problem with K=1;
(c) the engine with K=64 Adam configurations (a learning-rate grid), total and per config;
(d) one full-batch engine epoch on a ``big_rows x 100`` float32 matrix vs. one ``X @ w``: the
    engine reads X twice per epoch (logits, then gradient); the target is at most ~2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sklearn.datasets import make_blobs

from sweeplr.engine import OptimizerConfig, linear_init, train_batched


def tutorial_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's data: two 2-D blobs, the 670 training rows of 1000."""
    X, y = make_blobs(n_samples=1000, centers=2, cluster_std=1.0, random_state=0)
    return torch.tensor(X[:670], dtype=torch.float32), torch.tensor(y[:670], dtype=torch.int64)


def per_epoch_us(run: Callable[[int], None], epochs: int) -> float:
    """Microseconds per epoch of ``run(epochs)``."""
    start = time.perf_counter()
    run(epochs)
    return (time.perf_counter() - start) / epochs * 1e6


def tutorial_loop(X: torch.Tensor, y: torch.Tensor) -> Callable[[int], None]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    criterion = torch.nn.BCELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    target = y.float().unsqueeze(1)

    def run(epochs: int) -> None:
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = criterion(torch.sigmoid(model(X)), target)
            loss.backward()
            optimizer.step()

    return run


def engine_loop(
    X: torch.Tensor, y: torch.Tensor, cfg: OptimizerConfig, k: int
) -> Callable[[int], None]:
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)

    def run(epochs: int) -> None:
        train_batched(X, y, 2, weight, bias, cfg, epochs)

    return run


def small_problem(rounds: int) -> None:
    X, y = tutorial_data()
    adam = OptimizerConfig("adam", lr=torch.logspace(-4, 0, 64))
    variants = [  # (run, epochs per timing): (a), (b), (c)
        (tutorial_loop(X, y), 400),
        (engine_loop(X, y, OptimizerConfig("sgd", lr=0.01), 1), 2000),
        (engine_loop(X, y, adam, 64), 400),
    ]
    for run, _ in variants:
        run(20)  # warm-up
    samples: list[list[float]] = [[] for _ in variants]
    for _ in range(rounds):
        for times, (run, epochs) in zip(samples, variants, strict=True):
            times.append(per_epoch_us(run, epochs))
    tutorial, k1, k64 = (statistics.median(times) for times in samples)
    print(f"670 x 2 float32, full batch, median of {rounds} rounds (us per epoch):")
    print(f"  {'(a) tutorial loop (autograd + torch.optim.SGD)':46s} {tutorial:9.1f}")
    print(f"  {'(b) engine, K=1 SGD':46s} {k1:9.1f}   vs (a): {tutorial / k1:5.1f}x")
    print(f"  {'(c) engine, K=64 Adam, all 64 configs':46s} {k64:9.1f}")
    per_config = k64 / 64
    print(
        f"  {'    per configuration':46s} {per_config:9.2f}   vs (a): {tutorial / per_config:5.1f}x"
    )


def big_problem(rows: int, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, 100, generator=g)
    y = (torch.rand(rows, generator=g) < 0.5).long()
    w = torch.randn(100, 1, generator=g)
    engine = engine_loop(X, y, OptimizerConfig("sgd", lr=0.01), 1)
    epochs = 5
    engine(1)  # warm-up (allocations, MKL thread pool)
    matmul_ms, engine_ms = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        X @ w
        matmul_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        engine(0)  # the per-call setup, subtracted so that the epoch cost is isolated
        overhead = time.perf_counter() - start
        start = time.perf_counter()
        engine(epochs)
        engine_ms.append((time.perf_counter() - start - overhead) / epochs * 1e3)
    matmul, epoch = statistics.median(matmul_ms), statistics.median(engine_ms)
    print(f"{rows} x 100 float32, full batch, median of {rounds} rounds (ms):")
    print(f"  {'one X @ w':46s} {matmul:9.2f}")
    print(f"  {'(d) one engine epoch, K=1 SGD':46s} {epoch:9.2f}   ratio: {epoch / matmul:4.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of case (d)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    small_problem(args.rounds)
    big_problem(args.big_rows, args.rounds)


if __name__ == "__main__":
    main()
