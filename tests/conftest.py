"""Shared fixtures: a composed config shrunk for speed, and helpers to run train.py as a user."""

from __future__ import annotations

import copy
import functools
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

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


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    """Run the tests' own training on one thread, as ``runner.train_runs`` does on small data.

    Their tensors are tiny, so a second thread buys nothing, while OpenMP's barriers make a
    test 5-15x slower whenever another process keeps the other core busy (measured: iris, 60
    mini-batch epochs, 18.8 s on 2 threads against 1.3 s on one, with the load average at 10).
    A test of thread counts sets its own; subprocesses (train.py) keep torch's default.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_config(*overrides: str) -> DictConfig:
    """The config ``python train.py OVERRIDES`` would see (without Hydra's own node), a copy of
    its own for the caller to change.

    Composed once per list of overrides in a test process: Hydra's compose merges ~23 configs
    (~0.3-0.4 s here), most of the time of the tests that compose; 39 of the fast tier's 326
    composes repeat a list their worker composed already.
    """
    return copy.deepcopy(_composed(overrides))


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
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


# An Optuna sweep of train.py, short: add hydra.sweeper.n_trials=N and a sweep dir.
OPTUNA = ["--multirun", "sweep=optuna", "epochs=choice(20)", "plots=false"]


def study_in(sweep_dir: Path) -> Any:
    """The Optuna study in ``sweep_dir``'s journal (the default storage)."""
    import optuna

    from sweeplr.studies import open_storage

    return optuna.load_study(
        study_name=None, storage=open_storage(f"journal:{sweep_dir / 'optuna.journal'}")
    )


def record_files(sweep_dir: Path) -> dict[str, bytes]:
    """Every record file under a sweep directory, by path: what no later sweep may change."""
    return {
        str(p.relative_to(sweep_dir)): p.read_bytes()
        for p in sorted(sweep_dir.glob("*/*"))
        if p.is_file()
    }


def as_hydra_job(monkeypatch: pytest.MonkeyPatch, run_dir: Path, *, num: int | None = None) -> Any:
    """Make ``HydraConfig.get()`` answer as in the job ``num`` of a sweep (None: a single run)
    whose output folder is ``run_dir``; returns the node, for a test to change."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    node = OmegaConf.create(
        {
            "mode": RunMode.RUN if num is None else RunMode.MULTIRUN,
            "overrides": {"task": []},
            "runtime": {"output_dir": str(run_dir)},
            "job": {"num": num, "env_set": {}},
            "sweeper": {},
        }
    )
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: node))
    return node
