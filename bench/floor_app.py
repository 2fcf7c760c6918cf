"""An app that trains nothing, swept like sweeplr's P3 study: Hydra's and Optuna's share of it.

    python bench/floor_app.py --multirun hydra.sweeper.n_trials=100

Same sweeper and launcher as ``train.py --multirun sweep=optuna`` (``sweeplr_optuna``,
``sweeplr_batch``), a one-parameter space, and a task that returns at once; every job still goes
through Hydra's ``run_job`` and every trial through the study's journal. Used by bench_sweeps.py.
"""

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

ConfigStore.instance().store(
    name="floor",
    node={
        "x": 0.0,
        "defaults": [
            {"override hydra/sweeper": "sweeplr_optuna"},
            {"override hydra/launcher": "sweeplr_batch"},
            "_self_",
        ],
        "hydra": {"sweeper": {"params": {"x": "interval(0, 1)"}}},
    },
)


@hydra.main(version_base=None, config_path=None, config_name="floor")
def main(cfg: DictConfig) -> float:
    return (cfg.x - 0.3) ** 2


if __name__ == "__main__":
    main()
