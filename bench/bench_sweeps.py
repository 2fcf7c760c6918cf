"""Whole-process speed and memory of runs and sweeps, each target measured side by side.

    python bench/bench_sweeps.py                 # all, about 10 minutes on 2 cores
    python bench/bench_sweeps.py p1 --epochs 20000 --reps 3
    python bench/bench_sweeps.py p2 p3

Every figure is the median wall time of ``--reps`` runs of a whole ``python ...`` process
(imports included: that is what a user waits for), variants interleaved rep by rep so that
background load hits them alike. Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``).

P1  ``python train.py experiment=seed epochs=N`` vs the tutorial's loop (bench/tutorial_loop.py)
    for the same N: wall-time ratio (target <= 0.15) and both final train losses (equal within
    1e-4).
P2  a 64-point learning-rate grid (``--multirun``, blobs, 2,000 epochs) vs one run of the same
    config (target <= 2.0), and the same grid through Hydra's basic launcher with the
    torch.optim reference path (the speed-up); peak RSS of the grid vs one run (target <= 1.5).
P3  a 100-trial Optuna TPE study (blobs, 500 epochs) vs one run (target <= 3.0), and the best
    value found vs the same study run one trial at a time through the basic launcher with the
    reference path, for 3 sampler seeds.

``--against DIR`` also runs P2's and P3's sweeplr commands with another checkout's train.py
(e.g. ``git worktree add /tmp/before <commit>``), interleaved with this one's, and prints both:
a before/after measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out


def read_record(out: str) -> str:
    """The ``metrics.json`` of the run whose report is ``out`` (empty if it printed none)."""
    paths = [line.split("record:")[1].strip() for line in out.splitlines() if "record:" in line]
    return "\n" + (Path(paths[0]) / "metrics.json").read_text() if paths else ""


def median_runs(variants: dict[str, list[str]], reps: int) -> dict[str, dict[str, float | str]]:
    """Run every variant ``reps`` times, interleaved; medians of wall time and peak RSS."""
    walls: dict[str, list[float]] = {k: [] for k in variants}
    rss: dict[str, list[float]] = {k: [] for k in variants}
    outs: dict[str, str] = {}
    for _ in range(reps):
        for name, cmd in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                wall, peak, out = timed(cmd, Path(tmp))
                outs[name] = out + read_record(out)  # before the directory goes
            walls[name].append(wall)
            rss[name].append(peak)
    return {
        name: {
            "wall": statistics.median(walls[name]),
            "rss": statistics.median(rss[name]),
            "out": outs[name],
        }
        for name in variants
    }


def train(*args: str, root: Path = ROOT) -> list[str]:
    return [PY, str(root / "train.py"), *args]


def checkouts(args: argparse.Namespace) -> dict[str, Path]:
    """This checkout, and the one ``--against`` names, by the label each result gets."""
    return {"": ROOT, **({f" [{args.against}]": Path(args.against)} if args.against else {})}


def p1(args: argparse.Namespace) -> None:
    n = args.epochs
    res = median_runs(
        {
            "tutorial": [PY, str(ROOT / "bench/tutorial_loop.py"), f"--epochs={n}"],
            "sweeplr": train("experiment=seed", f"epochs={n}", "log_every=1000", "plots=false"),
        },
        args.reps,
    )
    tut_loss = float(res["tutorial"]["out"].split()[-1])
    record = res["sweeplr"]["out"]
    our_loss = json.loads(record[record.index("\n{") :])["metrics"]["train"]["loss"]
    ratio = res["sweeplr"]["wall"] / res["tutorial"]["wall"]
    print(
        f"P1 epochs={n}: tutorial {res['tutorial']['wall']:.2f} s, sweeplr "
        f"{res['sweeplr']['wall']:.2f} s, ratio {ratio:.3f} (target <= 0.15); final train "
        f"loss tutorial {tut_loss:.8f} sweeplr {our_loss:.8f}, difference "
        f"{abs(tut_loss - our_loss):.1e} (target <= 1e-4)"
    )


def lr_grid(points: int) -> str:
    values = [10 ** (-4 + 4 * i / (points - 1)) for i in range(points)]
    return "lr=" + ",".join(f"{v:.6g}" for v in values)


def p2(args: argparse.Namespace) -> None:
    grid = lr_grid(64)
    common = ["epochs=2000", "plots=false"]
    others = {
        f"{kind}{label}": train(*cmd, root=root)
        for label, root in checkouts(args).items()
        if label
        for kind, cmd in (("one_run", common), ("grid_batched", ["--multirun", grid, *common]))
    }
    res = median_runs(
        {
            **others,
            "one_run": train(*common),
            "grid_batched": train("--multirun", grid, *common),
            "grid_basic_reference": train(
                "--multirun",
                grid,
                *common,
                "hydra/launcher=basic",
                "hydra/sweeper=basic",
                "engine=reference",
            ),
        },
        args.reps,
    )
    one, batched, basic = (res[k] for k in ("one_run", "grid_batched", "grid_basic_reference"))
    print(
        f"P2 64-point grid, 2000 epochs: one run {one['wall']:.2f} s, grid {batched['wall']:.2f}"
        f" s -> ratio {batched['wall'] / one['wall']:.2f} (target <= 2.0); basic launcher + "
        f"reference {basic['wall']:.2f} s -> speed-up {basic['wall'] / batched['wall']:.1f}x"
    )
    print(
        f"P2 peak RSS: one run {one['rss']:.0f} MiB, grid {batched['rss']:.0f} MiB -> ratio "
        f"{batched['rss'] / one['rss']:.2f} (target <= 1.5)"
    )
    for label in (k for k in checkouts(args) if k):
        one, batched = res[f"one_run{label}"], res[f"grid_batched{label}"]
        print(
            f"P2{label}: one run {one['wall']:.2f} s, grid {batched['wall']:.2f} s -> ratio "
            f"{batched['wall'] / one['wall']:.2f}"
        )


def best_value(sweep_dir: Path) -> float:
    text = (sweep_dir / "optimization_results.yaml").read_text()
    return float(
        next(line for line in text.splitlines() if line.startswith("best_value:")).split()[1]
    )


def p3(args: argparse.Namespace) -> None:
    space = ["epochs=choice(500)", "hydra.sweeper.n_trials=100", "plots=false"]
    seeds = [0, 1, 2][: args.seeds]
    labels = checkouts(args)
    walls_one = {label: [] for label in labels}
    walls_study = {label: [] for label in labels}
    ours = {label: [] for label in labels}
    basics = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            # Interleaved, so that load from elsewhere hits every checkout alike.
            for index, (label, root) in enumerate(labels.items()):
                wall_one, _, _ = timed(train("epochs=500", "plots=false", root=root), tmp_path)
                fast = tmp_path / f"fast{index}"
                wall_study, _, _ = timed(
                    train(
                        "--multirun",
                        "sweep=optuna",
                        *space,
                        f"hydra.sweeper.sampler.seed={seed}",
                        f"hydra.sweeper.n_jobs={args.n_jobs}",
                        f"hydra.sweep.dir={fast}",
                        root=root,
                    ),
                    tmp_path,
                )
                walls_one[label].append(wall_one)
                walls_study[label].append(wall_study)
                ours[label].append(best_value(fast))
            slow = tmp_path / "slow"
            timed(
                train(
                    "--multirun",
                    "sweep=optuna",
                    *space,
                    f"hydra.sweeper.sampler.seed={seed}",
                    "hydra.sweeper.n_jobs=1",
                    "hydra/launcher=basic",
                    "engine=reference",
                    f"hydra.sweep.dir={slow}",
                ),
                tmp_path,
            )
            basics.append(best_value(slow))
            for label in labels:
                print(
                    f"  seed {seed}{label}: one run {walls_one[label][-1]:.2f} s, study "
                    f"{walls_study[label][-1]:.2f} s, best {ours[label][-1]:.6f} vs "
                    f"one-at-a-time basic/reference {basics[-1]:.6f}"
                )
    for label in labels:
        ratio = statistics.median(walls_study[label]) / statistics.median(walls_one[label])
        gap = statistics.median(ours[label]) / statistics.median(basics) - 1
        print(
            f"P3{label} 100-trial TPE (n_jobs={args.n_jobs}): ratio {ratio:.2f} (target <= 3.0);"
            f" median best {statistics.median(ours[label]):.6f} vs "
            f"{statistics.median(basics):.6f} ({gap:+.2%}, target within 1%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["p1", "p2", "p3"])
    parser.add_argument("--epochs", type=int, default=200_000, help="P1 epochs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="P3 sampler seeds")
    parser.add_argument("--n-jobs", type=int, default=10, help="P3 trials per batch")
    parser.add_argument(
        "--against", metavar="DIR", help="P2, P3: also time another checkout, side by side"
    )
    args = parser.parse_args()
    for name in args.which:
        {"p1": p1, "p2": p2, "p3": p3}[name](args)


if __name__ == "__main__":
    main()
