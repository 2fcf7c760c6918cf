"""Shared fixtures: a composed config shrunk for speed, and helpers to run train.py as a user."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sweeplr.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

register_configs()


def compose_config(*overrides: str) -> DictConfig:
    """The config ``python train.py OVERRIDES`` would see (without Hydra's own node)."""
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def small_cfg() -> Callable[..., DictConfig]:
    """Compose with few epochs on the CPU, plus any overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose_config("epochs=50", "device=cpu", "progress=false", *overrides)

    return make


def run_train(
    cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` in ``cwd`` exactly as a user would (a separate process)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
