"""A user's own task on sweeplr's conf/: two objectives, the validation loss and the epochs it
cost, for a multi-objective Optuna study. Used by tests/test_apps.py."""

import hydra
from omegaconf import DictConfig

from sweeplr.config import register_configs
from sweeplr.experiment import run

register_configs()


@hydra.main(config_path="../../conf", config_name="config", execution_whitelist=["sweeplr.*"])
def main(cfg: DictConfig) -> tuple[float, float]:
    return run(cfg), float(cfg.epochs)


if __name__ == "__main__":
    main()
