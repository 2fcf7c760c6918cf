"""launcher=slurm and launcher=submitit_local: chunks of a launch's jobs per Slurm job (process).

The slow tests marked ``slurm`` run against a real Slurm: .ci/run starts a one-node cluster on
loopback (.ci/slurm-up) and sets SWEEPLR_TEST_SLURM; elsewhere they skip saying how (and fail
in CI). Each compares a chunked sweep with the same grid on ``launcher=batch``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import LauncherTestSuite
from pytest import mark

from sweeplr.errors import SweeplrError
from sweeplr.results import load_sweep
from tests.conftest import ROOT, missing, require_module, run_train

require_module("hydra_plugins.hydra_submitit_launcher", "cluster")

from sweeplr.plugins.submitit_chunks import (  # after the extra's check
    ChunkedLocalLauncher,
    ChunkedSlurmLauncher,
    chunk_ranges,
    default_chunk_size,
)

# 8 x 8 = 64 configurations that share one training pass.
GRID64 = [
    "epochs=20",
    "lr=" + ",".join(f"{v:g}" for v in np.geomspace(1e-3, 1, 8)),
    "optimizer.momentum=" + ",".join(f"{v:g}" for v in np.linspace(0, 0.9, 8)),
]
# The chunks' processes (submitit's, Slurm's) import this checkout's sweeplr, wherever the venv's
# install points, as the launching process does.
CHECKOUT = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
METRICS = ["val_loss", "val_accuracy", "test_loss", "test_accuracy"]


def require_slurm() -> None:
    """A Slurm cluster this process may submit to (.ci/slurm-up starts one; see `missing`)."""
    if not os.environ.get("SWEEPLR_TEST_SLURM") or shutil.which("sbatch") is None:
        missing("a Slurm cluster", "run .ci/slurm-up as root, then set SWEEPLR_TEST_SLURM=1")


def test_discovery():
    launchers = {x.__name__ for x in Plugins.instance().discover(Launcher)}
    assert {ChunkedSlurmLauncher.__name__, ChunkedLocalLauncher.__name__} <= launchers


def test_default_chunk_is_about_one_training_pass():
    assert default_chunk_size(["a"] * 64, max_batch=256) == 64  # one pass: one chunk
    assert default_chunk_size(["a"] * 32 + ["b"] * 32, max_batch=256) == 32
    assert default_chunk_size(["a"] * 1000, max_batch=256) == 256
    assert default_chunk_size([None, None, None], max_batch=256) == 3
    assert default_chunk_size(list(range(5)), max_batch=256) == 1  # nothing shares a pass


def test_chunks_cover_the_launch_in_order():
    chunks = chunk_ranges(10, 4)
    assert [list(c) for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(chunk_ranges(64, 16)) == math.ceil(64 / 16)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4"])
def test_a_bad_chunk_size_is_one_line_naming_it(bad):
    with pytest.raises(
        SweeplrError, match=rf"^hydra.launcher.chunk_size={bad} is invalid; allowed"
    ):
        ChunkedLocalLauncher(chunk_size=bad, submitit_folder="x")


def test_an_unknown_job_runner_is_one_line_before_any_chunk():
    with pytest.raises(
        SweeplrError, match=r"^hydra.launcher.job_runner=fast is unknown; allowed: shared, hydra$"
    ):
        ChunkedSlurmLauncher(job_runner="fast", submitit_folder="x")


@mark.slow  # each launch starts submitit processes that import Hydra
@mark.parametrize(
    "launcher_name, overrides",
    [("sweeplr_submitit_local", ["hydra.launcher.chunk_size=2"])],
)
class TestChunkedLocalLauncher(LauncherTestSuite):
    @pytest.fixture(autouse=True)
    def _checkout(self, monkeypatch):
        monkeypatch.setenv("PYTHONPATH", CHECKOUT["PYTHONPATH"])

    def test_failure_preserves_task_traceback(
        self, hydra_sweep_runner, launcher_name, overrides, tmpdir
    ):
        """The suite's test, but for the file of the task's frame: its task function, defined
        inside the test, reaches the chunk's process pickled by value (cloudpickle), whose code
        objects are named ``<dynamic-code>``; hydra-submitit-launcher's own launcher fails the
        suite's test for the same reason. The error, its cause and the task's frame hold."""

        def task_func(_):
            try:
                raise ValueError("launcher cause")
            except ValueError as cause:
                raise RuntimeError("launcher failure") from cause

        sweep = hydra_sweep_runner(
            calling_file=None,
            calling_module="hydra.test_utils.a_module",
            task_function=task_func,
            config_path="configs",
            config_name="compose.yaml",
            overrides=[f"hydra/launcher={launcher_name}", *overrides],
            temp_dir=tmpdir,
        )
        with pytest.raises(RuntimeError, match=r"^launcher failure$") as failure, sweep:
            pass
        cause = failure.value.__cause__  # rebuilt by Hydra from its serialised chain
        assert type(cause).__name__ == "ValueError" and str(cause) == "launcher cause"
        frames = traceback.extract_tb(failure.value.__traceback__)
        assert [frame.name for frame in frames][-1] == "task_func"


def grid(tmp_path: Path, name: str, *args: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    sweep = tmp_path / name
    proc = run_train(
        tmp_path,
        "--multirun",
        *args,
        "plots=false",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
        env=CHECKOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep, proc


def assert_same_runs(sweep: Path, reference: Path) -> None:
    """Every run of ``sweep`` has the numbers of the same job in ``reference`` (README: a
    configuration trained in another batch agrees within 1e-5)."""
    table = load_sweep(sweep).set_index("job").sort_index()
    expected = load_sweep(reference).set_index("job").sort_index()
    assert list(table.index) == list(expected.index)
    assert set(table["status"]) == {"completed"}
    np.testing.assert_allclose(table[METRICS], expected[METRICS], rtol=1e-5, atol=1e-7)


def chunk_results(sweep: Path) -> list[Path]:
    """The result file of every submitit job (one per Slurm job or array task) of a sweep."""
    return sorted((sweep / ".submitit").glob("*/*_result.pkl"))


@mark.slow
def test_submitit_local_chunks_equal_batch(tmp_path):
    args = ["lr=0.3,0.1,0.03,0.01,0.003", "seed=1,2", "epochs=20"]
    batch, _ = grid(tmp_path, "batch", "launcher=batch", *args)
    local, _ = grid(
        tmp_path, "local", "launcher=submitit_local", "hydra.launcher.chunk_size=3", *args
    )
    assert len(chunk_results(local)) == math.ceil(10 / 3)
    assert_same_runs(local, batch)


@mark.slow
def test_a_failed_job_in_a_chunk_fails_alone(tmp_path):
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        "launcher=submitit_local",
        "hydra.launcher.chunk_size=3",
        "lr=0.1,-1,0.01",
        "epochs=20",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
        env=CHECKOUT,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: job 1 (") and errors[0].endswith(
        "lr=-1 is invalid; allowed: a finite number > 0"
    )
    table = load_sweep(sweep).set_index("job")
    assert table.loc[0, "status"] == table.loc[2, "status"] == "completed"
    assert table.loc[1, "status"] == "failed"
    assert len(chunk_results(sweep)) == 1  # the three jobs ran in one process


@mark.slow
def test_slurm_64_grid_in_chunks_equals_batch(tmp_path):
    require_slurm()
    batch, _ = grid(tmp_path, "batch", "launcher=batch", *GRID64)
    start = time.perf_counter()
    slurm, proc = grid(tmp_path, "slurm", "launcher=slurm", "hydra.launcher.chunk_size=16", *GRID64)
    elapsed = time.perf_counter() - start
    assert len(chunk_results(slurm)) <= math.ceil(64 / 16)
    assert_same_runs(slurm, batch)
    log = proc.stdout + proc.stderr
    assert "sacct" not in log and "accounting" not in log, log[-2000:]
    print(f"64 configurations, 4 Slurm jobs: {elapsed:.1f} s")


@mark.slow
def test_slurm_default_chunk_is_one_job_per_training_pass(tmp_path):
    require_slurm()
    # two passes (epochs differ), 3 configurations each: two Slurm jobs
    slurm, _ = grid(tmp_path, "slurm", "launcher=slurm", "epochs=10,20", "lr=0.1,0.01,0.001")
    assert len(chunk_results(slurm)) == 2


@mark.slow
def test_a_cancelled_chunk_fails_its_jobs_with_one_line_each(tmp_path):
    require_slurm()
    sweep = tmp_path / "s"
    args = [
        "--multirun",
        "launcher=slurm",
        "hydra.launcher.chunk_size=2",
        "lr=0.1,0.01,0.001,0.0001",
        "epochs=20",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.setup=[sleep 5]",  # time to cancel the second chunk before it runs
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", **CHECKOUT}
    env.pop("PYTEST_CURRENT_TEST", None)
    with subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        cancelled = _cancel_second_chunk(sweep)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, err[-2000:]
    for job, line in zip((2, 3), errors, strict=True):
        assert (
            line.startswith(f"error: job {job} (")
            and f"Slurm job {cancelled} ended without a result" in line
        ), line
    table = load_sweep(sweep).set_index("job")
    assert set(table.loc[[0, 1], "status"]) == {"completed"}
    assert "sacct" not in out + err


def _cancel_second_chunk(sweep: Path) -> str:
    """Cancel array task 1 of the sweep's Slurm job once it is queued; its id."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        queued = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i %o"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        for line in queued:
            task, _, command = line.partition(" ")
            if str(sweep) in command and task.endswith("_1"):
                subprocess.run(["scancel", task], check=True)
                return task
        time.sleep(0.2)
    raise AssertionError("the sweep's second chunk never showed in squeue")
