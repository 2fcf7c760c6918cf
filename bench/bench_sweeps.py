"""Whole-process speed and memory of runs and sweeps, each target measured side by side.

    python bench/bench_sweeps.py                 # all, about 10 minutes on 2 cores
    python bench/bench_sweeps.py p1 --epochs 20000 --reps 3
    python bench/bench_sweeps.py p2 p3
    python bench/bench_sweeps.py cv cli
    python bench/bench_sweeps.py g1k g10k --against /tmp/before

Every figure is the median wall time of ``--reps`` runs of a whole ``python ...`` process
(imports included: that is what a user waits for), variants interleaved rep by rep so that
background load hits them alike. Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``).

P1  ``python train.py experiment=seed epochs=N`` vs the tutorial's loop (bench/tutorial_loop.py)
    for the same N: wall-time ratio (target <= 0.15) and both final train losses (equal within
    1e-4).
P2  a 64-point learning-rate grid (``--multirun``, blobs, 2,000 epochs) vs one run of the same
    config (target <= 1.5, issue 20), and the same grid through Hydra's basic launcher with the
    torch.optim reference path (the speed-up); peak RSS of the grid vs one run (target <= 1.5).
P3  the command users type, ``train.py --multirun sweep=optuna 'epochs=choice(500)'
    hydra.sweeper.n_trials=100`` with sweep=optuna's defaults, vs one run ``train.py
    epochs=500`` (target <= 2.5), and its best value vs the same study run one trial at a time
    through the basic launcher with the reference path (target within 1% for every one of
    sampler seeds 0-4); also the same sweep through bench/floor_app.py, sweeplr's config with a
    task that trains nothing: what Hydra's job machinery and Optuna cost alone.

CV  a 20-point lr grid on breast_cancer with ``cv=5`` vs the same grid without CV (target <=
    2.0), and ``train.py --multirun sweep=optuna cv=5 dataset=breast_cancer`` (and the
    ``sweep=logistic_cv`` preset, by val loss and by val accuracy): the best trial's test
    accuracy and 5-fold scores vs scikit-learn's ``LogisticRegressionCV(cv=5)`` on the same
    split and the same folds, with both times.

CLI ``sweeplr --help`` (target <= 0.3 s), and which heavy modules building its parser loads.

G1K ``train.py --multirun 'seed=range(0,1000)' epochs=200 plots=false`` vs one run ``train.py
    epochs=200 plots=false`` (target <= 4), peak RSS of both; G10K the same with 10,000 seeds,
    one rep (target <= 25x one run, peak RSS <= 2 GB).

``--against DIR`` also runs P1's, P2's and P3's sweeplr commands with another checkout's train.py
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
    # Output goes to files, not pipes: a sweep of a thousand jobs prints more than a pipe holds,
    # and the child would block on a full pipe while we wait for it.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
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
    run_args = ("experiment=seed", f"epochs={n}", "log_every=1000", "plots=false")
    res = median_runs(
        {
            "tutorial": [PY, str(ROOT / "bench/tutorial_loop.py"), f"--epochs={n}"],
            **{
                f"sweeplr{label}": train(*run_args, root=root)
                for label, root in checkouts(args).items()
            },
        },
        args.reps,
    )
    tut_loss = float(res["tutorial"]["out"].split()[-1])
    for label in checkouts(args):
        record = res[f"sweeplr{label}"]["out"]
        our_loss = json.loads(record[record.index("\n{") :])["metrics"]["train"]["loss"]
        wall = res[f"sweeplr{label}"]["wall"]
        print(
            f"P1{label} epochs={n}: tutorial {res['tutorial']['wall']:.2f} s, sweeplr "
            f"{wall:.2f} s, ratio {wall / res['tutorial']['wall']:.3f} (target <= 0.10); final "
            f"train loss tutorial {tut_loss:.8f} sweeplr {our_loss!r}, difference "
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
        f" s -> ratio {batched['wall'] / one['wall']:.2f} (target <= 1.5); basic launcher + "
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


def big_grid(args: argparse.Namespace, configs: int, reps: int, target: str) -> None:
    """``train.py --multirun 'seed=range(0,N)' epochs=200 plots=false`` vs one run of the same."""
    common = ["epochs=200", "plots=false"]
    variants = {}
    for label, root in checkouts(args).items():
        variants[f"one{label}"] = train(*common, root=root)
        variants[f"grid{label}"] = train(
            "--multirun", f"seed=range(0,{configs})", *common, root=root
        )
    res = median_runs(variants, reps)
    for label in checkouts(args):
        one, grid = res[f"one{label}"], res[f"grid{label}"]
        print(
            f"G{configs}{label} {configs}-configuration grid, 200 epochs: one run "
            f"{one['wall']:.2f} s, grid {grid['wall']:.2f} s -> ratio "
            f"{grid['wall'] / one['wall']:.2f} ({target}); peak RSS one run {one['rss']:.0f} MiB,"
            f" grid {grid['rss']:.0f} MiB",
            flush=True,
        )


def g1k(args: argparse.Namespace) -> None:
    big_grid(args, 1000, args.reps, "target <= 4")


def g10k(args: argparse.Namespace) -> None:
    big_grid(args, 10_000, 1, "target <= 25, peak RSS <= 2 GB")


def best_value(sweep_dir: Path) -> float:
    text = (sweep_dir / "optimization_results.yaml").read_text()
    return float(
        next(line for line in text.splitlines() if line.startswith("best_value:")).split()[1]
    )


def p3(args: argparse.Namespace) -> None:
    """The command users type (no flags beyond the issue's), per sampler seed."""
    space = ["epochs=choice(500)", "hydra.sweeper.n_trials=100"]
    n_jobs = [f"hydra.sweeper.n_jobs={args.n_jobs}"] if args.n_jobs else []
    labels = checkouts(args)
    walls_one = {label: [] for label in labels}
    walls_study = {label: [] for label in labels}
    ours = {label: [] for label in labels}
    basics, floors = [], []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            # Interleaved, so that load from elsewhere hits every checkout alike.
            for index, (label, root) in enumerate(labels.items()):
                wall_one, _, _ = timed(train("epochs=500", root=root), tmp_path)
                fast = tmp_path / f"fast{index}"
                wall_study, _, _ = timed(
                    train(
                        "--multirun",
                        "sweep=optuna",
                        *space,
                        *n_jobs,
                        f"hydra.sweeper.sampler.seed={seed}",
                        f"hydra.sweep.dir={fast}",
                        root=root,
                    ),
                    tmp_path,
                )
                walls_one[label].append(wall_one)
                walls_study[label].append(wall_study)
                ours[label].append(best_value(fast))
            # Hydra's and Optuna's share: the same sweep of sweeplr's config, training nothing.
            floor, _, _ = timed(
                [
                    PY,
                    str(ROOT / "bench/floor_app.py"),
                    "--multirun",
                    "sweep=optuna",
                    *space,
                    *n_jobs,
                    f"hydra.sweeper.sampler.seed={seed}",
                    f"hydra.sweep.dir={tmp_path / 'floor'}",
                ],
                tmp_path,
            )
            floors.append(floor)
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
                    "plots=false",
                    f"hydra.sweep.dir={slow}",
                ),
                tmp_path,
            )
            basics.append(best_value(slow))
            for label in labels:
                gap = ours[label][-1] / basics[-1] - 1
                print(
                    f"  seed {seed}{label}: one run {walls_one[label][-1]:.2f} s, study "
                    f"{walls_study[label][-1]:.2f} s, best {ours[label][-1]:.6f} vs "
                    f"one-at-a-time basic/reference {basics[-1]:.6f} ({gap:+.2%}); "
                    f"the same sweep training nothing: {floor:.2f} s",
                    flush=True,
                )
    for label in labels:
        one = statistics.median(walls_one[label])
        ratio = statistics.median(walls_study[label]) / one
        gaps = [o / b - 1 for o, b in zip(ours[label], basics, strict=True)]
        setting = f"n_jobs={args.n_jobs}" if args.n_jobs else "sweep=optuna's defaults"
        print(
            f"P3{label} 100-trial TPE ({setting}): ratio {ratio:.2f} (target <= 2.5); worst best-value gap "
            f"{max(gaps):+.2%} over seeds 0-{args.seeds - 1} (target within 1% for every seed); "
            f"the same sweep training nothing: {statistics.median(floors) / one:.2f}x one run"
        )


def sklearn_cv() -> dict[str, float]:
    """``LogisticRegressionCV(cv=5)`` (10 Cs, lbfgs) on breast_cancer's tutorial split,
    standardised on the training part as sweeplr does: its test accuracy, its best mean fold
    accuracy (its default scoring) and, scored by log-loss instead, its best mean fold loss."""
    import warnings

    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.33, random_state=42)
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's default changes
        started = time.perf_counter()
        model = LogisticRegressionCV(cv=5).fit(X_train, y_train)
        seconds = time.perf_counter() - started
        by_loss = LogisticRegressionCV(cv=5, scoring="neg_log_loss").fit(X_train, y_train)
    return {
        "test_accuracy": float(model.score(X_test, y_test)),
        "cv_accuracy": float(model.scores_[1].mean(0).max()),
        "cv_loss": float(-by_loss.scores_[1].mean(0).max()),
        "seconds": seconds,
    }


def best_row(sweep_dir: Path) -> dict[str, float]:
    """The summary row of a sweep's best completed run (``summary.csv`` is best first)."""
    import csv

    with (sweep_dir / "summary.csv").open() as f:
        best = next(r for r in csv.DictReader(f) if r["status"] == "completed")
    wanted = ("objective", "test_accuracy", "val_accuracy", "val_loss")
    return {k: float(v) for k, v in best.items() if k in wanted}


def cv(args: argparse.Namespace) -> None:
    """k-fold CV inside the batch: what it costs, and how good its pick is."""
    grid = lr_grid(20)
    common = ["--multirun", grid, "dataset=breast_cancer"]
    res = median_runs(
        {"grid": train(*common), "grid_cv5": train(*common, "cv=5")},
        args.reps,
    )
    plain, folds = res["grid"]["wall"], res["grid_cv5"]["wall"]
    print(
        f"CV 20-point lr grid on breast_cancer: {plain:.2f} s, with cv=5 {folds:.2f} s -> "
        f"ratio {folds / plain:.2f} (target <= 2.0)"
    )
    theirs = sklearn_cv()
    for preset, objective in (
        ("optuna", "val_loss"),
        ("logistic_cv", "val_loss"),
        ("logistic_cv", "val_accuracy"),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Path(tmp) / "sweep"
            extra = [] if objective == "val_loss" else [f"objective={objective}"]
            args_ = ["--multirun", f"sweep={preset}", "dataset=breast_cancer", *extra]
            args_ += ["cv=5"] if preset == "optuna" else []
            wall, _, _ = timed(train(*args_, f"hydra.sweep.dir={sweep}"), Path(tmp))
            best = best_row(sweep)
        print(
            f"CV {' '.join(args_[1:])} ({wall:.1f} s, 20 trials): best trial's test accuracy "
            f"{best['test_accuracy']:.4f}, 5-fold val loss {best['val_loss']:.4f}, val accuracy "
            f"{best['val_accuracy']:.4f} | LogisticRegressionCV(cv=5): test accuracy "
            f"{theirs['test_accuracy']:.4f}, best 5-fold accuracy {theirs['cv_accuracy']:.4f}, "
            f"(scored by log-loss) best 5-fold loss {theirs['cv_loss']:.4f}; "
            f"{theirs['seconds']:.2f} s of fitting"
        )


def cli(args: argparse.Namespace) -> None:
    """``sweeplr --help``: the CLI's start-up, and the heavy modules it must not import."""
    sweeplr = str(Path(PY).with_name("sweeplr"))
    walls = []
    for _ in range(max(args.reps, 5)):
        with tempfile.TemporaryDirectory() as tmp:
            walls.append(timed([sweeplr, "--help"], Path(tmp))[0])
    probe = (
        "import sys, sweeplr.cli; sweeplr.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'pandas', 'hydra', 'matplotlib', 'optuna') "
        "if m in sys.modules))"
    )
    done = subprocess.run([PY, "-c", probe], check=True, capture_output=True, text=True)
    loaded = done.stdout.strip()
    print(
        f"CLI sweeplr --help: {statistics.median(walls):.3f} s (target <= 0.3); heavy modules "
        f"loaded building the parser: {loaded}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", default=["p1", "p2", "p3"])
    parser.add_argument("--epochs", type=int, default=200_000, help="P1 epochs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="P3 sampler seeds 0..N-1")
    parser.add_argument(
        "--n-jobs", type=int, default=0, help="P3 hydra.sweeper.n_jobs (0: the default)"
    )
    parser.add_argument(
        "--against", metavar="DIR", help="also time another checkout's train.py, side by side"
    )
    args = parser.parse_args()
    for name in args.which:
        {"p1": p1, "p2": p2, "p3": p3, "cv": cv, "cli": cli, "g1k": g1k, "g10k": g10k}[name](args)


if __name__ == "__main__":
    main()
