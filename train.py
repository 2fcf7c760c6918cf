"""Train sweeplr's torch logistic-regression model from the Hydra configs in ``conf/``.

python train.py                                    # blobs, SGD, defaults of conf/config.yaml
python train.py optimizer=adam lr=0.001
python train.py dataset=breast_cancer epochs=500
python train.py experiment=seed                    # the tutorial's settings
python train.py --multirun lr=0.1,0.01,0.001 optimizer=sgd,adam
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeplr.config import register_configs
from sweeplr.experiment import run
from sweeplr.overrides import check_command_line

register_configs()


@hydra.main(config_path="conf", config_name="config", execution_whitelist=["sweeplr.*"])
def main(cfg: DictConfig) -> float:
    """Return the objective, so sweepers (grid, Optuna) can rank the run."""
    return run(cfg)


if __name__ == "__main__":
    check_command_line(Path(__file__).parent / "conf")  # one line for a mistake Hydra misreads
    main()
