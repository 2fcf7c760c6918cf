"""When does hydra-joblib-launcher beat sweeplr's batched launcher? Whole processes, side by side.

    python bench/bench_launchers.py [--reps 3]

A: a 64-point learning-rate grid on blobs (2,000 epochs): every job shares one pass.
B: 8 seeds of a mini-batch run (batch_size=8, 100 epochs): the seed orders the mini-batches, so
   no two jobs can share a pass and each is long; joblib runs them in parallel processes.
Each variant's median wall time over --reps runs, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweeps import lr_grid, timed, train  # bench/ is not a package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib processes")
    args = parser.parse_args()
    cases = {
        "A 64-lr grid": ["--multirun", lr_grid(64), "epochs=2000", "plots=false"],
        "B 8 mini-batch seeds": [
            "--multirun",
            "seed=range(8)",
            "batch_size=8",
            "epochs=100",
            "plots=false",
        ],
    }
    launchers = {
        "batch": ["launcher=batch"],
        "joblib": ["launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"],
    }
    for case, case_args in cases.items():
        walls: dict[str, list[float]] = {name: [] for name in launchers}
        for _ in range(args.reps):
            for name, launcher_args in launchers.items():
                with tempfile.TemporaryDirectory() as tmp:
                    walls[name].append(timed(train(*case_args, *launcher_args), Path(tmp))[0])
        batch, joblib = (statistics.median(walls[n]) for n in ("batch", "joblib"))
        print(
            f"{case}: batch {batch:.2f} s, joblib (n_jobs={args.n_jobs}) {joblib:.2f} s "
            f"-> joblib/batch {joblib / batch:.2f}"
        )


if __name__ == "__main__":
    main()
