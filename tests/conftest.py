"""Shared fixtures: a composed config shrunk for speed, and helpers to run train.py as a user."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from omegaconf import DictConfig

from sweeplr.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

register_configs()
# Scan the plugins once, before any test: Hydra's hydra_restore_singletons fixture restores the
# ConfigStore to its state when a test began, and a plugin module imported during a test would
# not register its configs again in the next (e.g. 'Could not find hydra/sweeper/basic').
Plugins.instance()


def in_ci() -> bool:
    """CI=true: .ci/run installs every extra and program the tests use, so none may be missing."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(what: str, how: str) -> NoReturn:
    """A test needs ``what``, which this machine lacks: skip saying ``how`` to get it; fail in CI.

    Also at a module's top level (a module of tests that all need it).
    """
    if in_ci():
        pytest.fail(f"CI=true but {what} is missing: {how} (see .ci/run)", pytrace=False)
    pytest.skip(f"needs {what}: {how}", allow_module_level=True)


def require_module(name: str, extra: str) -> ModuleType:
    """``import name``, which the project's extra ``extra`` installs; see `missing`."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", f'pip install -e ".[{extra}]"')


def require_program(name: str, how: str) -> str:
    """The path of the program ``name`` on PATH; see `missing`."""
    path = shutil.which(name)
    if path is None:
        missing(f"the program {name}", how)
    return path


def path_without(*programs: str) -> str:
    """PATH less every folder that holds one of ``programs``: a child process run with it
    cannot find them, whatever this machine has installed."""
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    kept = [f for f in folders if not any(shutil.which(p, path=f) for p in programs)]
    return os.pathsep.join(kept)


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
    cwd: Path,
    *args: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    python: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` in ``cwd`` exactly as a user would (a separate process);
    ``python``: options of the interpreter before the script (``-c CODE ARG...``)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, *python, str(ROOT / "train.py"), *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def train_and_record(cfg, run_dir: Path, on_log=None, extra=None):
    """Train ``cfg`` as one run (no Hydra job) and write its record into ``run_dir``.

    Returns the runner's outcome and the record written, as ``sweeplr.experiment.run`` would.
    """
    from omegaconf import OmegaConf

    from sweeplr.records import write_run
    from sweeplr.runner import train_runs
    from sweeplr.spec import run_spec

    outcome = train_runs([run_spec(cfg)], [on_log])[0]
    record = write_run(run_dir, outcome, OmegaConf.to_container(cfg, resolve=True), extra or {})
    return outcome, record
