"""Per-epoch cost of `sweeplr.batched` against the tutorial's autograd loop and a bare matmul.

Run ``python bench/bench_engine.py`` (a few minutes; ``--big-rows`` shrinks the large case,
``--ks`` picks its configuration counts, ``--skip-small`` runs the large case alone).  All
variants are timed in the same process, interleaved round by round so that background load hits
them alike, and the median over rounds is reported.  ``--against DIR`` also times the engine of
another checkout (e.g. a worktree of main; its ``sweeplr/batched`` package, or the
``sweeplr/engine.py`` that came before it) in the same rounds, side by side.

(a) the tutorial loop: ``nn.Linear(2, 1)`` + ``torch.sigmoid`` + ``nn.BCELoss`` +
    ``torch.optim.SGD(lr=0.01)``, full batch on 670 rows of 2-D blobs;
(b) the engine on the same problem with K=1;
(c) the engine with K=64 Adam configurations (a learning-rate grid), total and per config;
(d) one full-batch engine epoch on a ``big_rows x 100`` float32 matrix (binary), K=1 SGD and
    K Adam configurations (``--ks``, default 8 and 64), against one ``X @ W`` with W of K
    columns (into a preallocated output): the time of reading X once, and of the logits alone.
    Also printed: ``X @ W`` then ``Z^T @ X`` with Z of K columns, the two products every epoch
    needs, run one after the other as an unfused epoch does.  The epoch is timed on a run whose
    buffers exist already (``FirstOrderRun.full_batch_epoch``), as every epoch but the first.  Each
    is timed on torch's default thread count (what a user's command gets; ``--threads``
    changes it) and on one thread, interleaved, first on the machine as it is, then with
    ``--load`` processes (default 1) spinning, each pinned to one core, as another user's job
    would: the column T/1 is the epoch's time on the default threads over its time on one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import make_blobs

import sweeplr
from sweeplr import batched
from sweeplr.batched import OptimizerConfig, first_order

Timer = Callable[[], float]  # runs the variant once, returns milliseconds


def tutorial_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's data: two 2-D blobs, the 670 training rows of 1000."""
    X, y = make_blobs(n_samples=1000, centers=2, cluster_std=1.0, random_state=0)
    return torch.tensor(X[:670], dtype=torch.float32), torch.tensor(y[:670], dtype=torch.int64)


@dataclass(frozen=True)
class Engine:
    """What the bench calls of one checkout's batched solver."""

    linear_init: Callable[..., Any]
    OptimizerConfig: type
    train_batched: Callable[..., Any]
    run_class: (
        type  # the run of one train_batched call: (X, y, 2, weight, bias, cfg, None, 0, None)
    )
    epoch: str  # its method of one full-batch epoch: (loss_out, want_loss)


THIS_ENGINE = Engine(
    batched.linear_init,
    OptimizerConfig,
    batched.train_batched,
    first_order.FirstOrderRun,
    "full_batch_epoch",
)


def load_engine(checkout: str) -> Engine:
    """The batched solver of another checkout: its ``sweeplr/batched`` package, loaded apart
    from this checkout's (the other sweeplr modules it imports are this checkout's), or the
    single ``sweeplr/engine.py`` that came before it."""
    root = Path(checkout) / "sweeplr"
    path = root / "engine.py"
    if path.exists():
        spec = importlib.util.spec_from_file_location("sweeplr_engine_against", path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"no engine at {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return Engine(
            module.linear_init,
            module.OptimizerConfig,
            module.train_batched,
            module._Run,
            "_full_batch_epoch",
        )
    if not (root / "batched" / "__init__.py").exists():
        raise SystemExit(f"no engine in {root}")
    ours = {name: m for name, m in sys.modules.items() if name.startswith("sweeplr.batched")}
    package_path = list(sweeplr.__path__)
    for name in ours:
        del sys.modules[name]
    sweeplr.__path__[:] = [str(root)]
    try:
        theirs = importlib.import_module("sweeplr.batched")
        first = importlib.import_module("sweeplr.batched.first_order")
    finally:
        sweeplr.__path__[:] = package_path
        for name in [name for name in sys.modules if name.startswith("sweeplr.batched")]:
            del sys.modules[name]
        sys.modules.update(ours)
        sweeplr.batched = batched  # type: ignore[attr-defined]
    return Engine(
        theirs.linear_init,
        theirs.OptimizerConfig,
        theirs.train_batched,
        first.FirstOrderRun,
        "full_batch_epoch",
    )


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
    engine: Engine, X: torch.Tensor, y: torch.Tensor, cfg: OptimizerConfig, k: int
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


def interleaved_ms(timers: dict[str, Timer], rounds: int) -> dict[str, list[float]]:
    """Each timer once per round, interleaved; the times per timer."""
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer())
    return samples


def median_ms(timers: dict[str, Timer], rounds: int) -> dict[str, float]:
    """Each timer once per round, interleaved; the median per timer."""
    samples = interleaved_ms(timers, rounds)
    return {name: statistics.median(times) for name, times in samples.items()}


def small_problem(rounds: int, engines: dict[str, Engine]) -> None:
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


def epoch_timer(engine: Engine, X: torch.Tensor, y: torch.Tensor, k: int) -> Timer:
    """One full-batch epoch of K configurations, on a run whose buffers exist (made under the
    thread count in force: an engine may size its work by it)."""
    weight, bias = engine.linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype)
    cfg = engine.OptimizerConfig(**vars(config(k)))
    with torch.no_grad():
        run = engine.run_class(X, y, 2, weight, bias, cfg, None, 0, None)
    loss = X.new_empty(k)
    epoch = getattr(run, engine.epoch)

    def timer() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            epoch(loss, False)
        return (time.perf_counter() - start) * 1e3

    timer()  # allocates the buffers
    return timer


def on_threads(threads: int, make: Callable[[], Timer]) -> Timer:
    """``make()``'s timer, made and run with torch's thread count set to ``threads``."""
    default = torch.get_num_threads()

    def set_threads() -> None:
        if threads != default:
            torch.set_num_threads(threads)

    set_threads()
    try:
        timer = make()
    finally:
        torch.set_num_threads(default)

    def run() -> float:
        set_threads()
        try:
            return timer()
        finally:
            torch.set_num_threads(default)

    return run


BURN = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


@contextlib.contextmanager
def cpu_burners(count: int) -> Iterator[None]:
    """``count`` processes spinning in Python, each pinned to one core, from the last core on,
    each in a session of its own: another user's job holding cores while the bench measures
    (Linux's autogroup scheduling shares the CPU between sessions, so a process of the bench's
    own session would take its CPU from the bench's threads alone)."""
    cores = sorted(os.sched_getaffinity(0))
    burners = [
        subprocess.Popen(
            [sys.executable, "-c", BURN, str(cores[-1 - i % len(cores)])], start_new_session=True
        )
        for i in range(count)
    ]
    try:
        time.sleep(0.5)  # spinning
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def big_case(
    X: torch.Tensor,
    y: torch.Tensor,
    k: int,
    thread_counts: list[int],
    rounds: int,
    engines: dict[str, Engine],
) -> dict[tuple[str, int], list[float]]:
    """Times (ms) of ``X @ W``, ``X @ W`` then ``Z^T @ X``, and each engine's epoch, per
    thread count, all interleaved round by round: ``{(name, threads): [ms per round]}``."""
    g = torch.Generator().manual_seed(k)
    W = torch.randn(X.shape[1], k, generator=g)
    out = torch.empty(X.shape[0], k)
    grad = torch.empty(k, X.shape[1])

    def matmul() -> float:
        start = time.perf_counter()
        torch.mm(X, W, out=out)
        return (time.perf_counter() - start) * 1e3

    def two_products() -> float:
        start = time.perf_counter()
        torch.mm(X, W, out=out)
        torch.mm(out.t(), X, out=grad)
        return (time.perf_counter() - start) * 1e3

    timers: dict[tuple[str, int], Timer] = {}
    for threads in thread_counts:  # each variant on every thread count in a row
        timers["matmul", threads] = on_threads(threads, lambda: matmul)
    for threads in thread_counts:
        timers["two", threads] = on_threads(threads, lambda: two_products)
    for label, engine in engines.items():
        for threads in thread_counts:
            timers[label, threads] = on_threads(
                threads, lambda engine=engine: epoch_timer(engine, X, y, k)
            )
    return interleaved_ms(timers, rounds)


def timed(ms: float, base: float, width: int) -> str:
    """``ms`` and its ratio to ``base``, ``width`` characters before the ratio."""
    return f" {ms:{width}.2f} ({ms / base:4.2f})"


def big_problem(
    rows: int, ks: list[int], rounds: int, engines: dict[str, Engine], load: int
) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(rows, 100, generator=g)
    y = (torch.rand(rows, generator=g) < 0.5).long()
    default = torch.get_num_threads()
    thread_counts = [default, 1] if default > 1 else [1]
    threads_text = " and ".join(map(str, thread_counts))
    print(f"(d) {rows} x 100 float32, one full-batch epoch (binary) vs one X @ W, W: 100 x K;")
    print(f"    median of {rounds} rounds, ms (ratio to X @ W on as many threads); {threads_text}")
    print("    threads interleaved, on the machine as it is (burners 0), then with", load)
    print("    process(es) spinning, one core each (another session's); T/1: the epoch on")
    print(f"    {default} threads over the epoch on 1, the median of the rounds' ratios")
    widths = {label: max(15, len(label) + 6) for label in engines}
    header = f"  {'burners':7s} {'K':>3s} {'thr':>3s} {'X @ W':>8s} {'X @ W, Z^T @ X':>15s}"
    for label, width in widths.items():
        header += f" {'engine' + label:>{width}s} {'T/1':>5s}"
    print(header)
    for burners in [0, load] if load else [0]:
        with cpu_burners(burners):
            for k in ks:
                samples = big_case(X, y, k, thread_counts, rounds, engines)
                ms = {key: statistics.median(times) for key, times in samples.items()}
                for threads in thread_counts:
                    base = ms["matmul", threads]
                    line = f"  {burners:7d} {k:3d} {threads:3d} {base:8.2f}"
                    line += timed(ms["two", threads], base, 8)
                    for label, width in widths.items():
                        line += timed(ms[label, threads], base, width - 7)
                        if threads == 1:
                            line += " " * 6
                            continue
                        pairs = zip(samples[label, threads], samples[label, 1], strict=True)
                        line += f" {statistics.median(t / one for t, one in pairs):5.2f}"
                    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of case (d)")
    parser.add_argument("--ks", default="8,64", help="(d): configuration counts besides K=1")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--load", type=int, default=1, help="(d) also under this many CPU burners (0: not)"
    )
    parser.add_argument("--skip-small", action="store_true", help="only case (d)")
    parser.add_argument("--against", metavar="DIR", help="also time DIR's engine, side by side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {"": THIS_ENGINE}
    if args.against:
        engines[f" [{args.against}]"] = load_engine(args.against)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_small:
        small_problem(args.rounds, engines)
    ks = [1] + [int(k) for k in args.ks.split(",") if k and int(k) != 1]
    big_problem(args.big_rows, ks, args.rounds, engines, args.load)


if __name__ == "__main__":
    main()
