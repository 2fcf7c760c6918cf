"""A Hydra app that is not sweeplr's: a loop that reports to its Optuna trial through
``sweeplr.pruning.report`` and stops when the pruner says so. Used by tests/test_apps.py."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeplr.pruning import report


@hydra.main(config_path="conf", config_name="quadratic")
def main(cfg: DictConfig) -> float:
    # The trial this job runs, as the sweeper passes it (for the test to compare).
    Path("trial.txt").write_text(os.environ.get("SWEEPLR_TRIAL", "none"))
    value = 0.0
    for step in range(1, cfg.steps + 1):
        value = (cfg.x - 2) ** 2 + 10 / step  # improves with steps; far from x=2 stays bad
        if report(step, value):
            break
    Path("steps.txt").write_text(str(step))
    return value


if __name__ == "__main__":
    main()
