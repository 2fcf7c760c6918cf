"""Whether the pruner presets stop the right trials: the trials they pruned, run to the end.

    python bench/bench_pruners.py                          # 3 pruners x 3 studies, ~15 minutes
    python bench/bench_pruners.py --pruner median --study blobs:20
    python bench/bench_pruners.py --pruner median -- hydra.sweeper.pruner.n_warmup_steps=0

Each study is ``train.py --multirun sweep=optuna pruner=P`` (sweep=optuna's search and seed) in a
temporary folder; then every pruned trial's configuration (its ``.hydra/config.yaml``) is
trained to its end, alone, and ranked among the study's trials by the objective it would have
reached. A pruner should stop clearly bad trials and no future top-3 one. Printed per study:
trials pruned, the best value found, the ranks the pruned trials would have had, and the
epochs pruning saved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# this checkout's sweeplr, as its train.py imports it
from sweeplr.runner import train_runs
from sweeplr.spec import run_spec

STUDIES = ("blobs:20", "blobs:50", "breast_cancer:50")
PRUNERS = ("median", "hyperband", "successive_halving")


def study(pruner: str, dataset: str, trials: int, extra: list[str], out: Path) -> Path:
    sweep = out / f"{pruner}-{dataset}-{trials}"
    args = [f"pruner={pruner}", f"dataset={dataset}", f"hydra.sweeper.n_trials={trials}"]
    subprocess.run(
        [sys.executable, "train.py", "--multirun", "sweep=optuna", *args, *extra,
         f"hydra.sweep.dir={sweep}", "plots=false"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return sweep


def judge(sweep: Path) -> str:
    """The study's trials, the pruned ones run to their end: what pruning cost and saved."""
    trials = []  # (trial, status, epochs run, epochs, value it reached or would have)
    for record_file in sweep.glob("*/metrics.json"):
        record = json.loads(record_file.read_text())
        cfg = OmegaConf.load(record_file.parent / ".hydra" / "config.yaml")
        value = record["objective"]["value"]
        if record["status"] == "pruned":
            value = train_runs([run_spec(cfg)])[0].objective_value
        trials.append((int(record_file.parent.name), record["status"], record["epochs_run"],
                       int(cfg.epochs), value))  # fmt: skip
    minimize = record["objective"]["direction"] == "minimize"
    ranked = sorted(trials, key=lambda t: t[4] if minimize else -t[4])
    rank = {t[0]: k + 1 for k, t in enumerate(ranked)}
    pruned = [t for t in trials if t[1] == "pruned"]
    best = min((t[4] for t in trials if t[1] == "completed"), default=None)
    saved = sum(t[3] - t[2] for t in pruned)
    return (
        f"{len(pruned)} of {len(trials)} pruned; best found {best:.6g} "
        f"(of all, run to the end: {ranked[0][4]:.6g}); pruned trials' ranks "
        f"{sorted(rank[t[0]] for t in pruned)}; epochs saved {saved} of "
        f"{sum(t[3] for t in trials)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pruner", nargs="+", default=PRUNERS)
    parser.add_argument("--study", nargs="+", default=STUDIES, help="DATASET:TRIALS")
    parser.add_argument("extra", nargs="*", help="more overrides, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        for pruner in args.pruner:
            for name in args.study:
                dataset, trials = name.split(":")
                sweep = study(pruner, dataset, int(trials), args.extra, Path(out))
                print(f"pruner={pruner} {name}: {judge(sweep)}", flush=True)


if __name__ == "__main__":
    main()
