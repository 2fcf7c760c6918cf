"""Every GPU figure of issue 12 in one run (a few minutes on a CUDA machine), then its tests.

    python bench/gpu_check.py              # on a CUDA machine: < 8 minutes, progress printed
    python bench/gpu_check.py --dry-run    # tiny sizes, any machine (the CPU): the script itself
    python bench/gpu_check.py --only kernel,small

Sections (``--only`` picks some; each prints its figures next to its target, and one that fails
prints its error and lets the others run):

kernel   one full-batch epoch on 10M x 100 float32 (binary), CUDA-synchronised medians: K=1 SGD
         and K=64 Adam against one ``X @ w`` (targets 1.3x and 3x); which path ran (the Triton
         kernel or the fallback); K=64 in each float32 product mode (ieee, tf32x3, tf32): time,
         and the max deviation of a step's loss and gradient from float64 (a TF32 mode is
         allowed only within the tests' tolerance, 1e-4).
small    670 x 2 (the tutorial's blobs) per-epoch time on CUDA with and without CUDA graphs
         (target <= 30 us), and on the CPU.
auto     device=auto's crossover: per-epoch times on the CPU and CUDA over problem sizes, CUDA's
         fixed cost per process (context, first kernels), hence the work from which CUDA wins;
         what `sweeplr.fitting.auto_device` picks for each, and whether its constants agree.
sweep    whole processes: ``train.py --multirun`` 64-point lr grid on synthetic 10M x 100, 100
         epochs, vs one run of the same command (target <= 1.5x), with the split: data
         generation and loading (timed in-process, `DeviceData.load`) and the training pass
         (the records' ``batch.wall_seconds``).
tests    ``pytest -m cuda -q`` on the modules with CUDA tests.

The output also goes to ``$OUT/gpu_check.txt`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeplr.batched import OptimizerConfig, linear_init, train_batched
from sweeplr.batched import steps as dispatch
from sweeplr.batched.first_order import FirstOrderRun
from sweeplr.fitting import (
    AUTO_CUDA_MIN_EPOCH_WORK,
    AUTO_CUDA_MIN_WORK,
    Workload,
    auto_device,
)

LINES: list[str] = []
STARTED = time.perf_counter()


def say(text: str = "") -> None:
    line = f"[{time.perf_counter() - STARTED:6.1f}s] {text}" if text else ""
    print(line, flush=True)
    LINES.append(line)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], None], device: torch.device, reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` calls, synchronised, after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def binary_data(rows: int, features: int, device: torch.device, dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(rows, features, generator=g, device=device, dtype=dtype)
    w = torch.randn(features, generator=g, device=device, dtype=dtype)
    y = (X @ w > 0).long()
    return X, y


def adam_grid(k: int) -> OptimizerConfig:
    return OptimizerConfig("adam", lr=torch.logspace(-4, 0, k, dtype=torch.float64))


def epoch_run(X: torch.Tensor, y: torch.Tensor, k: int, opt: OptimizerConfig):
    """A `FirstOrderRun` whose buffers exist, and one of its plain epochs as a function."""
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), dtype=X.dtype, device=X.device)
    with torch.no_grad():
        run = FirstOrderRun(X, y, 2, weight, bias, opt, None, 0, None)
    loss = X.new_empty(k)

    def epoch() -> None:
        with torch.no_grad():
            run.full_batch_epoch(loss, False)

    epoch()
    return run, epoch


# ----- kernel -------------------------------------------------------------------------------


def step_deviation(X: torch.Tensor, y: torch.Tensor, k: int) -> tuple[float, float]:
    """Max relative deviation of one step's loss sums and gradient from float64 (same P)."""
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), dtype=torch.float64)
    out = []
    for x in (X, X.double()):
        wd, bd = weight.to(x.device, x.dtype), bias.to(x.device, x.dtype)
        with torch.no_grad():
            run = FirstOrderRun(x, y, 2, wd, bd, OptimizerConfig("sgd", 0.1), None, 0, None)
            ws = run.workspace(x.shape[0])
            loss = x.new_empty(k)
            dispatch.loss_and_grad(ws, loss, True)
        out.append((loss.double().cpu(), run.G.double().cpu()))
    (l32, g32), (l64, g64) = out

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())

    return rel(l32, l64), rel(g32, g64)


def section_kernel(args: argparse.Namespace, device: torch.device) -> None:
    rows = args.rows
    X, y = binary_data(rows, 100, device)
    w = torch.randn(100, device=device)
    out = torch.empty(rows, device=device)
    base = median_ms(lambda: torch.mv(X, w, out=out), device, args.reps)
    say(f"kernel: {rows} x 100 float32 on {device}; one X @ w: {base:.3f} ms")
    kernels = dispatch.kernels()
    default = kernels.FP32_PRECISION if kernels is not None else None
    # K=1 has no matrix products (row-wise dots); K=64's run in each float32 mode
    modes = ("ieee", "tf32x3", "tf32") if kernels is not None and device.type == "cuda" else ("-",)
    cases = [(1, OptimizerConfig("sgd", 0.01), 1.3, ("-",)), (64, adam_grid(64), 3.0, modes)]
    try:
        for k, opt, target, precisions in cases:
            for precision in precisions:
                if kernels is not None:
                    kernels.FP32_PRECISION = None if precision == "-" else precision
                run, epoch = epoch_run(X, y, k, opt)
                ws = run.workspace(rows)
                path = (
                    f"Triton kernel ({ws.kernel.precision})"
                    if ws.kernel is not None
                    else "fallback (plain step)"
                )
                ms = median_ms(epoch, device, args.reps)
                dev_loss, dev_grad = step_deviation(X, y, k)
                say(
                    f"kernel: K={k:2d} {opt.kind:4s} {path}: {ms:.3f} ms = {ms / base:.2f}x "
                    f"X @ w (target <= {target}x); one step vs float64: max rel. deviation "
                    f"loss {dev_loss:.1e}, gradient {dev_grad:.1e} (tests' tolerance 1e-4)"
                )
                del run, epoch
    finally:
        if kernels is not None:
            kernels.FP32_PRECISION = default
    if kernels is not None:
        say(f"kernel: default float32 mode here: {kernels._default_fp32_precision(X)}")


# ----- small ----------------------------------------------------------------------------------


def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=1000, centers=2, cluster_std=1.0, random_state=0)
    return torch.tensor(X[:670], dtype=torch.float32), torch.tensor(y[:670])


def per_epoch_us(
    X: torch.Tensor, y: torch.Tensor, k: int, opt: OptimizerConfig, epochs: int, reps: int
) -> float:
    """Per-epoch time of train_batched: (t(epochs + extra) - t(extra)) / epochs, medians, so
    that set-up, warm-up and capture cancel."""
    weight, bias = linear_init(X.shape[1], 2, list(range(k)), device=X.device)

    def timed(n: int) -> float:
        start = time.perf_counter()
        train_batched(X, y, 2, weight, bias, opt, n)
        sync(X.device)
        return time.perf_counter() - start

    short, long = epochs // 10, epochs + epochs // 10
    timed(short)
    samples = [(timed(long) - timed(short)) / epochs * 1e6 for _ in range(reps)]
    return statistics.median(samples)


def section_small(args: argparse.Namespace, device: torch.device) -> None:
    X, y = blobs()
    epochs = args.small_epochs
    cases = ((1, OptimizerConfig("sgd", 0.01)), (64, adam_grid(64)))
    for k, opt in cases:
        cpu = per_epoch_us(X, y, k, opt, epochs, 3)
        line = f"small: 670 x 2, K={k:2d} {opt.kind}: CPU {cpu:.1f} us/epoch"
        if device.type == "cuda":
            Xc, yc = X.to(device), y.to(device)
            graphs = per_epoch_us(Xc, yc, k, opt, epochs, 3)
            saved = dispatch._GRAPH_MAX_ELEMENTS
            dispatch._GRAPH_MAX_ELEMENTS = 0
            try:
                eager = per_epoch_us(Xc, yc, k, opt, epochs, 3)
            finally:
                dispatch._GRAPH_MAX_ELEMENTS = saved
            line += f"; CUDA eager {eager:.1f} us, CUDA graphs {graphs:.1f} us (target <= 30)"
        say(line)


# ----- auto -----------------------------------------------------------------------------------


def cuda_fixed_cost(device: torch.device) -> float:
    """Seconds a process spends on CUDA before its first useful epoch: context, cuBLAS and
    the Triton kernel's first launch (compiled or from Triton's cache), over a CPU process."""
    probe = (
        "import time, torch; from sweeplr.batched import *; "
        "X = torch.randn(1000, 10); y = (X[:, 0] > 0).long(); "
        "w, b = linear_init(10, 2, [0]); d = {!r}; t = time.perf_counter(); "
        "train_batched(X.to(d), y.to(d), 2, w.to(d), b.to(d), OptimizerConfig('sgd', 0.1), 20); "
        "torch.cuda.synchronize() if d != 'cpu' else None; print(time.perf_counter() - t)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = {}
    for name in ("cpu", str(device)):
        runs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", probe.format(name)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            runs.append(float(done.stdout.split()[-1]))
        times[name] = min(runs)
    return max(0.0, times[str(device)] - times["cpu"])


def section_auto(args: argparse.Namespace, device: torch.device) -> None:
    fixed = cuda_fixed_cost(device) if device.type == "cuda" else 1.6
    source = "measured" if device.type == "cuda" else "assumed (H200 figure; no CUDA here)"
    say(f"auto: CUDA's fixed cost per process {fixed:.2f} s ({source})")
    say(
        f"auto: code: CUDA when work > {AUTO_CUDA_MIN_WORK:.1e} and per-epoch work > "
        f"{AUTO_CUDA_MIN_EPOCH_WORK:.1e} (work = rows x features x K x epochs)"
    )
    say("auto:   rows x F x K    | CPU ms/ep | CUDA ms/ep | CUDA wins from (epochs, work) | code")
    agree = True
    for rows, features, k in args.auto_sizes:
        opt = OptimizerConfig("sgd", 0.01) if k == 1 else adam_grid(k)
        Xc, y = binary_data(rows, features, torch.device("cpu"))
        cpu_ms = median_ms(epoch_run(Xc, y, k, opt)[1], torch.device("cpu"), 3)
        if device.type == "cuda":
            gpu_ms = median_ms(epoch_run(Xc.to(device), y.to(device), k, opt)[1], device, 5)
        else:
            gpu_ms = cpu_ms / 100  # dry run: a stand-in, to exercise the arithmetic
        per_epoch = rows * features * k
        gain = (cpu_ms - gpu_ms) / 1e3  # seconds saved per epoch on CUDA
        if gain > 0:
            epochs_star = fixed / gain
            wins = f"{epochs_star:9.0f} ep, {per_epoch * epochs_star:8.1e}"
        else:
            epochs_star, wins = float("inf"), "never (CUDA epoch slower)"
        # what the code picks at the measured crossover x 0.5 and x 2
        picks = []
        for factor in (0.5, 2.0):
            epochs = max(1, round(epochs_star * factor)) if gain > 0 else 10**6
            choice = auto_device(Workload(rows, features, k, epochs), cuda_available=True)
            right = (factor > 1 and gain > 0) == (choice.type == "cuda")
            agree &= right
            picks.append(f"{choice.type}{'' if right else '(!)'}")
        say(
            f"auto: {rows:>9d} x {features:>3d} x {k:>2d} | {cpu_ms:9.3f} | {gpu_ms:10.3f} |"
            f" {wins:>29s} | x0.5: {picks[0]}, x2: {picks[1]}"
        )
    verdict = "agree with these measurements" if agree else "DISAGREE here: see (!) rows"
    if device.type != "cuda":
        verdict += " (dry run: the CUDA times are stand-ins, the verdict means nothing)"
    say(f"auto: the code's constants {verdict} (x0.5 should pick cpu, x2 cuda where CUDA wins)")


# ----- sweep ----------------------------------------------------------------------------------


def lr_grid(points: int) -> str:
    values = [10 ** (-4 + 4 * i / (points - 1)) for i in range(points)]
    return "lr=" + ",".join(f"{v:.6g}" for v in values)


def run_process(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.rglob("metrics.json")]


def section_sweep(args: argparse.Namespace, device: torch.device) -> None:
    import tempfile

    from sweeplr.fitting import DeviceData
    from sweeplr.spec import run_spec
    from tests.conftest import compose_config

    common = [
        "dataset=synthetic",
        f"dataset.n_samples={args.sweep_rows}",
        "dataset.n_features=100",
        f"epochs={args.sweep_epochs}",
        "plots=false",
        "progress=false",
        "device=auto",
    ]
    train = [sys.executable, str(ROOT / "train.py")]
    with tempfile.TemporaryDirectory() as tmp:
        one_dir, grid_dir = Path(tmp, "one"), Path(tmp, "grid")
        one_dir.mkdir()
        grid_dir.mkdir()
        say(f"sweep: one run, synthetic {args.sweep_rows} x 100, {args.sweep_epochs} epochs ...")
        one, _ = run_process([*train, *common], one_dir)
        points = args.sweep_points
        say(f"sweep: {points}-point lr grid, --multirun ...")
        grid, _ = run_process([*train, "--multirun", lr_grid(points), *common], grid_dir)
        one_rec, grid_recs = records(one_dir), records(grid_dir)
    spec = run_spec(compose_config(*common))
    start = time.perf_counter()
    data = DeviceData.load(spec, configs=points)
    sync(data.device)
    load = time.perf_counter() - start
    devices = sorted({r["device"] for r in one_rec + grid_recs})
    passes = {round(r["batch"]["wall_seconds"], 4) for r in grid_recs}
    grid_pass = sum(passes)
    one_pass = one_rec[0]["batch"]["wall_seconds"] if one_rec else float("nan")
    say(
        f"sweep: one run {one:.2f} s, grid {grid:.2f} s ({len(grid_recs)} records, devices "
        f"{devices}) -> ratio {grid / one:.2f} (target <= 1.5)"
    )
    say(
        f"sweep: split: data generation + split + scaling + transfer {load:.2f} s "
        f"(in-process DeviceData.load: {load / one:.0%} of the one run, {load / grid:.0%} of the "
        f"grid); training passes: one run {one_pass:.2f} s, grid {grid_pass:.2f} s "
        f"({len(passes)} pass(es)); the rest (imports, Hydra, records, summary): "
        f"one run {one - load - one_pass:.2f} s, grid {grid - load - grid_pass:.2f} s"
    )


# ----- tests ----------------------------------------------------------------------------------


def section_tests(args: argparse.Namespace, device: torch.device) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_kernels.py",
        "tests/test_device.py",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    tail = [line for line in done.stdout.splitlines() if line.strip()][-15:]
    for line in tail:
        say(f"tests: {line}")
    say(f"tests: pytest -m cuda exit status {done.returncode}")


SECTIONS = {
    "kernel": section_kernel,
    "small": section_small,
    "auto": section_auto,
    "sweep": section_sweep,
    "tests": section_tests,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes; runs on the CPU")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    args = parser.parse_args()
    dry = args.dry_run
    args.rows = 20_000 if dry else 10_000_000
    args.reps = 3 if dry else 10
    args.small_epochs = 200 if dry else 5000
    args.auto_sizes = (
        [(1000, 10, 1), (5000, 20, 8)]
        if dry
        else [
            (1000, 10, 1),
            (10_000, 30, 1),
            (10_000, 30, 64),
            (100_000, 100, 1),
            (100_000, 100, 64),
            (1_000_000, 100, 1),
            (1_000_000, 100, 64),
        ]
    )
    args.sweep_rows = 3000 if dry else 10_000_000
    args.sweep_epochs = 20 if dry else 100
    args.sweep_points = 8 if dry else 64
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not dry:
        say("no CUDA device: use --dry-run to exercise the script on the CPU")
        return 2
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    say(
        f"gpu_check{' --dry-run' if dry else ''}: torch {torch.__version__}, triton "
        f"{triton_version}, device {name}"
    )
    failed = []
    for section in args.only.split(","):
        say(f"== {section}")
        try:
            SECTIONS[section](args, device)
        except Exception:  # noqa: BLE001 - the other sections still run
            failed.append(section)
            for line in traceback.format_exc().splitlines()[-12:]:
                say(f"{section}: ERROR {line}")
    say(f"done in {time.perf_counter() - STARTED:.0f} s; failed sections: {failed or 'none'}")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.txt").write_text("\n".join(LINES) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
