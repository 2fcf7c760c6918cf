"""sweeplr's own config and sweep, with a task that trains nothing: Hydra's and Optuna's share.

    python bench/floor_app.py --multirun sweep=optuna 'epochs=choice(500)' hydra.sweeper.n_trials=100

The same composed config as ``train.py`` (sweeplr's ``conf/``, so Hydra copies and saves a job
config of the same size), the same sweeper and launcher, the same search space and trials; the
task returns a number computed from the trial's ``lr`` at once. Every job still goes through
Hydra's ``run_job`` and every trial through the study's journal. Used by bench_sweeps.py (P3):
what is left of a study's time after this is sweeplr's (training, records, pictures).
"""

import math

import hydra
from omegaconf import DictConfig

from sweeplr.config import register_configs

register_configs()


@hydra.main(config_path="../conf", config_name="config", execution_whitelist=["sweeplr.*"])
def main(cfg: DictConfig) -> float:
    return (math.log10(cfg.lr) + 2) ** 2


if __name__ == "__main__":
    main()
