"""Per-epoch cost of `sweeplr.engine` against the tutorial's autograd loop and a bare matmul.

Run ``python bench/bench_engine.py`` (about 70 s; ``--big-rows`` shrinks the large case,
``--ks`` picks its configuration counts).  All variants are timed in the same process,
interleaved round by round so that background load hits them alike, and the median over rounds
is reported.  On a machine shared with other busy processes, multi-threaded ops stall on OpenMP
barriers; ``--threads 1`` then gives more stable numbers.  ``--against DIR`` also times the
engine of another checkout (e.g. a worktree of main) in the same rounds, side by side.

(a) the tutorial loop: ``nn.Linear(2, 1)`` + ``torch.sigmoid`` + ``nn.BCELoss`` +
    ``torch.optim.SGD(lr=0.01)``, full batch on 670 rows of 2-D blobs;
(b) the engine on the same problem with K=1;
(c) the engine with K=64 Adam configurations (a learning-rate grid), total and per config;
(d) one full-batch engine epoch on a ``big_rows x 100`` float32 matrix (binary), K=1 SGD and
    K Adam configurations (``--ks``, default 8 and 64), against one ``X @ W`` with W of K
    columns (into a preallocated output): the time of reading X once, and of the logits alone.
    Also printed: ``X @ W`` then ``Z^T @ X`` with Z of K columns, the two products every epoch
    needs, run one after the other as an unfused epoch does.  The epoch is timed on a run whose
    buffers exist already (``_Run._full_batch_epoch``), as every epoch but the first is.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from sklearn.datasets import make_blobs

from sweeplr import engine as this_engine
from sweeplr.engine import OptimizerConfig

Timer = Callable[[], float]  # runs the variant once, returns milliseconds


def tutorial_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's data: two 2-D blobs, the 670 training rows of 1000."""
    X, y = make_blobs(n_samples=1000, centers=2, cluster_std=1.0, random_state=0)
    return torch.tensor(X[:670], dtype=torch.float32), torch.tensor(y[:670], dtype=torch.int64)


def load_engine(checkout: str) -> ModuleType:
    """``sweeplr/engine.py`` of another checkout, as a module of its own (its imports of other
    sweeplr modules resolve to this checkout's)."""
    path = Path(checkout) / "sweeplr" / "engine.py"
    spec = importlib.util.spec_from_file_location("sweeplr_engine_against", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no engine at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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
    engine: ModuleType, X: torch.Tensor, y: torch.Tensor, cfg: OptimizerConfig, k: int
) -> Callable[[int], None]:
    weight, bias = engine.linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)
    cfg = engine.OptimizerConfig(**vars(cfg))

    def run(epochs: int) -> None:
        engine.train_batched(X, y, 2, weight, bias, cfg, epochs)

    return run


def config(k: int) -> OptimizerConfig:
    """K=1: SGD; K > 1: an Adam learning-rate grid."""
    if k == 1:
        return OptimizerConfig("sgd", lr=0.01)
    return OptimizerConfig("adam", lr=torch.logspace(-4, 0, k))


def median_ms(timers: dict[str, Timer], rounds: int) -> dict[str, float]:
    """Each timer once per round, interleaved; the median per timer."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer())
    return {name: statistics.median(times) for name, times in samples.items()}


def small_problem(rounds: int, engines: dict[str, ModuleType]) -> None:
    X, y = tutorial_data()
    variants: dict[str, tuple[Callable[[int], None], int]] = {"(a)": (tutorial_loop(X, y), 400)}
    for label, engine in engines.items():  # (run, epochs per timing)
        variants[f"(b){label}"] = (engine_loop(engine, X, y, config(1), 1), 2000)
        variants[f"(c){label}"] = (engine_loop(engine, X, y, config(64), 64), 400)
    for run, _ in variants.values():
        run(20)  # warm-up
    timers = {
        name: (lambda run=run, epochs=epochs: per_epoch_us(run, epochs))
        for name, (run, epochs) in variants.items()
    }
    us = median_ms(timers, rounds)
    tutorial = us["(a)"]
    print(f"670 x 2 float32, full batch, median of {rounds} rounds (us per epoch):")
    print(f"  {'(a) tutorial loop (autograd + torch.optim.SGD)':46s} {tutorial:9.1f}")
    for label in engines:
        k1, k64 = us[f"(b){label}"], us[f"(c){label}"]
        print(f"  {'(b) engine, K=1 SGD' + label:46s} {k1:9.1f}   vs (a): {tutorial / k1:5.1f}x")
        print(f"  {'(c) engine, K=64 Adam, all 64 configs' + label:46s} {k64:9.1f}")
        per_config = k64 / 64
        print(
            f"  {'    per configuration':46s} {per_config:9.2f}   vs (a): "
            f"{tutorial / per_config:5.1f}x"
        )


def epoch_timer(engine: ModuleType, X: torch.Tensor, y: torch.Tensor, k: int) -> Timer:
    """One full-batch epoch of K configurations, on a run whose buffers exist."""
    weight, bias = engine.linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)
    cfg = engine.OptimizerConfig(**vars(config(k)))
    with torch.no_grad():
        run = engine._Run(X, y, 2, weight, bias, cfg, None, 0, None)
    loss = X.new_empty(k)

    def timer() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            run._full_batch_epoch(loss, False)
        return (time.perf_counter() - start) * 1e3

    timer()  # allocates the buffers
    return timer


def big_problem(rows: int, ks: list[int], rounds: int, engines: dict[str, ModuleType]) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, 100, generator=g)
    y = (torch.rand(rows, generator=g) < 0.5).long()
    print(f"(d) {rows} x 100 float32, one full-batch epoch (binary) vs one X @ W, W: 100 x K;")
    print(f"    median of {rounds} rounds, ms (ratio to X @ W):")
    header = f"  {'K':>3s} {'X @ W':>8s} {'X @ W, Z^T @ X':>17s}"
    for label in engines:
        header += f" {'engine' + label:>{max(16, len(label) + 16)}s}"
    print(header)
    for k in ks:
        W = torch.randn(100, k, generator=g)
        out = torch.empty(rows, k)
        grad = torch.empty(k, 100)

        def matmul(W: torch.Tensor = W, out: torch.Tensor = out) -> float:
            start = time.perf_counter()
            torch.mm(X, W, out=out)
            return (time.perf_counter() - start) * 1e3

        def two_products(
            W: torch.Tensor = W, out: torch.Tensor = out, grad: torch.Tensor = grad
        ) -> float:
            start = time.perf_counter()
            torch.mm(X, W, out=out)
            torch.mm(out.t(), X, out=grad)
            return (time.perf_counter() - start) * 1e3

        timers = {"matmul": matmul, "two": two_products}
        timers.update({label: epoch_timer(e, X, y, k) for label, e in engines.items()})
        ms = median_ms(timers, rounds)
        base = ms["matmul"]
        line = f"  {k:3d} {base:8.2f} {ms['two']:9.2f} ({ms['two'] / base:4.2f})"
        for label in engines:
            width = max(16, len(label) + 16) - 7
            line += f" {ms[label]:{width}.2f} ({ms[label] / base:4.2f})"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of case (d)")
    parser.add_argument("--ks", default="8,64", help="(d): configuration counts besides K=1")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--against", metavar="DIR", help="also time DIR's engine, side by side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {"": this_engine}
    if args.against:
        engines[f" [{args.against}]"] = load_engine(args.against)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    small_problem(args.rounds, engines)
    ks = [1] + [int(k) for k in args.ks.split(",") if k and int(k) != 1]
    big_problem(args.big_rows, ks, args.rounds, engines)


if __name__ == "__main__":
    main()
