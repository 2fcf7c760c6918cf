"""Hydra's own launcher test suites, run on sweeplr's launcher as Hydra's launcher plugins do.

`LauncherTestSuite`, `IntegrationTestSuite` and `BatchedSweeperTestSuite` ship with hydra-core
(`hydra.test_utils.launcher_common_tests`); passing them is what makes a launcher a Hydra
launcher: it runs the task function it is handed, for every job, through Hydra's job machinery.
The batched and integration suites also run with sweeplr's grid sweeper, a subclass of Hydra's
basic one: a task that writes no sweeplr record sweeps as under the basic sweeper, into a used
``hydra.sweep.dir`` too (``test_to_absolute_path_multirun`` sweeps twice into ``cli_dir``).
"""

import os

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from pytest import mark, param

from sweeplr.plugins.batch_launcher import BatchLauncher
from sweeplr.plugins.grid_sweeper import SweeplrGridSweeper
from sweeplr.plugins.optuna_sweeper import SweeplrOptunaSweeper
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The integration suites' apps run in a subprocess: let them import this tree's sweeplr
    (the plugins' entry points name its modules), not the one the environment installed."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", pythonpath)


def test_discovery():
    launchers = [x.__name__ for x in Plugins.instance().discover(Launcher)]
    sweepers = [x.__name__ for x in Plugins.instance().discover(Sweeper)]
    assert BatchLauncher.__name__ in launchers
    assert {SweeplrGridSweeper.__name__, SweeplrOptunaSweeper.__name__} <= set(sweepers)


@mark.parametrize("launcher_name, overrides", [("sweeplr_batch", [])])
class TestBatchLauncher(LauncherTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        param(
            {},
            [
                "-m",
                "hydra/launcher=sweeplr_batch",
                "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled",
            ],
            id="sweeplr_batch_multirun",
        )
    ],
)
@mark.slow  # each test runs a Hydra app in a subprocess, as the copied Optuna plugin tests do
class TestBatchLauncherIntegration(IntegrationTestSuite):
    pass


QUIET = ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        param({}, ["-m", "hydra/sweeper=sweeplr_grid", *QUIET], id="sweeplr_grid_basic"),
        param(
            {},
            ["-m", "hydra/sweeper=sweeplr_grid", "hydra/launcher=sweeplr_batch", *QUIET],
            id="sweeplr_grid_sweeplr_batch",
        ),
    ],
)
@mark.slow  # as above: a Hydra app in a subprocess per test
class TestGridSweeperIntegration(IntegrationTestSuite):
    pass


@mark.parametrize(
    "launcher_name, overrides",
    [
        ("sweeplr_batch", ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"]),
        ("sweeplr_batch", ["hydra/sweeper=sweeplr_grid", "hydra.sweeper.max_batch_size=2"]),
        ("basic", ["hydra/sweeper=sweeplr_grid", "hydra.sweeper.max_batch_size=2"]),
    ],
)
class TestBatchedSweeper(BatchedSweeperTestSuite):
    pass
