"""An app that writes down everything Hydra's job contract gives a job (tests/test_job_runner.py).

``EnvSweeper`` sets an environment variable per job. The task writes what it sees (its config, ``HydraConfig.get()``, its working folder, its
environment) into its output folder, logs a line, and returns a value, or raises for one job; the
``Recorder`` callback writes what each callback hook receives into the sweep folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def task(cfg: DictConfig) -> dict[str, Any]:
    hydra_cfg = HydraConfig.get()
    seen = {
        "config": OmegaConf.to_yaml(cfg),
        "hydra": OmegaConf.to_yaml(hydra_cfg),
        "from_db": cfg.nested.from_db,
        "num": hydra_cfg.job.num,
        "cwd": os.getcwd(),
        "env": {name: os.environ.get(name) for name in ("FIXED", "MY_VAR", "JOB")},
    }
    Path(hydra_cfg.runtime.output_dir, "seen.json").write_text(json.dumps(seen, indent=1))
    log.info(f"job {hydra_cfg.job.num} with {cfg.db.driver} and {cfg.get('new_key')}")
    if cfg.db.driver == "postgresql" and cfg.nested.value == 2 and cfg.new_key == "b":
        raise ValueError(f"job {hydra_cfg.job.num} fails on purpose")
    return {"num": hydra_cfg.job.num, "port": cfg.db.port}


class EnvSweeper(BasicSweeper):
    """Hydra's basic sweeper, giving each job a ``hydra.job.env_set`` entry of its own, as
    sweeplr_optuna gives each job its trial (Hydra refuses to sweep its own config). It keeps
    the launches' returns in ``returns``: the basic sweeper raises a failed job's error."""

    returns: ClassVar[list[Any]] = []

    def sweep(self, arguments: list[str]) -> Any:
        EnvSweeper.returns = []
        launch = self.launcher.launch

        def kept(batch: Any, initial_job_idx: int) -> Any:
            returns = launch(batch, initial_job_idx=initial_job_idx)
            EnvSweeper.returns.extend(returns)
            return returns

        self.launcher.launch = kept  # type: ignore[method-assign]
        return super().sweep(arguments)

    def get_job_batch(self) -> list[list[str]]:
        return [
            [*job, f"++hydra.job.env_set.MY_VAR={'uv'[i % 2]}"]
            for i, job in enumerate(super().get_job_batch())
        ]


class Recorder(Callback):
    """Each hook's arguments, as text, one JSON line a call, in the sweep folder."""

    def _write(self, config: DictConfig, record: dict[str, Any]) -> None:
        folder = Path(HydraConfig.get().runtime.cwd, config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "callbacks.jsonl", "a") as file:
            file.write(json.dumps({"config": OmegaConf.to_yaml(config), **record}) + "\n")

    def on_job_start(self, config: DictConfig, *, task_function: Any, **kwargs: Any) -> None:
        name = getattr(task_function, "__name__", type(task_function).__name__)
        self._write(config, {"hook": "on_job_start", "task": name})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = job_return._return_value
        self._write(
            config,
            {
                "hook": "on_job_end",
                "status": job_return.status.name,
                "return_value": value if isinstance(value, dict) else repr(value),
                "overrides": list(job_return.overrides),
                "cfg": OmegaConf.to_yaml(job_return.cfg),
                "hydra_cfg": OmegaConf.to_yaml(job_return.hydra_cfg),
                "working_dir": job_return.working_dir,
                "task_name": job_return.task_name,
            },
        )


@hydra.main(config_path="contract", config_name="config")
def main(cfg: DictConfig) -> Any:
    return task(cfg)


if __name__ == "__main__":
    main()
