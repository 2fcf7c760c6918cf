"""sweeplr_batch runs a user's own task function once per job, and trains sweeplr's runs of a
launch together behind Hydra's job machinery (in-process sweeps on sweeplr's conf/)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from hydra.core.utils import JobStatus
from hydra.utils import execution_whitelist

from sweeplr import experiment, siblings
from sweeplr.experiment import run
from tests.conftest import ROOT

FAST = ["epochs=30", "device=cpu", "plots=false"]


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of configurations in each training pass the runs make."""
    sizes: list[int] = []
    train_runs = experiment.train_runs

    def counting(specs: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(specs))
        return train_runs(specs, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_runs", counting)  # a job alone
    monkeypatch.setattr(siblings, "train_runs", counting)  # a launch's jobs together
    return sizes


def sweep_in_process(
    hydra_sweep_runner: Any, task: Any, overrides: list[str], sweep_dir: Path
) -> Any:
    """Sweep ``task`` on sweeplr's conf/ in this process, in ``sweep_dir`` + ".tmp", copied to
    ``sweep_dir`` (Hydra's runner deletes its own when it ends); what the sweeper returned."""
    sweep = hydra_sweep_runner(
        calling_file=str(ROOT / "train.py"),
        calling_module=None,
        task_function=task,
        config_path="conf",
        config_name="config",
        # hydra.mode: what --multirun sets, which Hydra's in-process runner leaves out
        overrides=["hydra/launcher=sweeplr_batch", "hydra.mode=MULTIRUN", *overrides],
        temp_dir=sweep_dir.with_name(sweep_dir.name + ".tmp"),
    )
    try:
        with execution_whitelist(["sweeplr.*"]), sweep:  # as train.py's @hydra.main allows
            shutil.copytree(sweep.temp_dir, sweep_dir)
            return sweep.returns
    except BaseException:
        if not sweep_dir.exists():  # the sweep itself raised: its directory is still there
            shutil.copytree(sweep.temp_dir, sweep_dir)
        raise


def sweep_returns(
    hydra_sweep_runner: Any, task: Any, overrides: list[str], sweep_dir: Path
) -> list:
    """The job returns of a grid sweep run by `sweep_in_process`."""
    returns = sweep_in_process(hydra_sweep_runner, task, overrides, sweep_dir)
    assert returns is not None
    return [r for batch in returns for r in batch]


def test_a_users_own_task_runs_once_per_job(hydra_sweep_runner, passes, tmp_path):
    calls: list[float] = []

    def my_main(cfg: Any) -> dict[str, float]:
        calls.append(cfg.lr)
        return {"objective": run(cfg), "lr_times_2": cfg.lr * 2}

    sweep = tmp_path / "sweep"
    returns = sweep_returns(hydra_sweep_runner, my_main, ["lr=0.1,0.01,0.001", *FAST], sweep)
    assert calls == [0.1, 0.01, 0.001]  # each job's task, in order, once
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3
    assert [r.return_value["lr_times_2"] for r in returns] == [0.2, 0.02, 0.002]
    assert passes == [3]  # trained together, by the first job's run
    for num, ret in enumerate(returns):
        record = json.loads((sweep / str(num) / "metrics.json").read_text())
        assert ret.return_value["objective"] == pytest.approx(record["objective"]["value"])
        assert record["batch"]["configs"] == 3 and record["job"]["num"] == num
        assert ret.cfg.lr == record["hyperparameters"]["lr"]
        assert (sweep / str(num) / ".hydra" / "config.yaml").is_file()


def test_batched_runs_equal_runs_trained_alone(hydra_sweep_runner, tmp_path):
    def solo(cfg: Any) -> float:
        return run(cfg)

    grid = ["lr=0.3,0.03", "optimizer=sgd,adam", *FAST]
    batched = sweep_returns(hydra_sweep_runner, solo, grid, tmp_path / "batched")
    alone = sweep_returns(
        hydra_sweep_runner, solo, [*grid, "hydra/launcher=basic"], tmp_path / "alone"
    )
    assert [r.return_value for r in batched] == pytest.approx(
        [r.return_value for r in alone], rel=1e-5
    )


def test_a_task_that_changes_its_config_trains_what_it_asks_for(
    hydra_sweep_runner, passes, tmp_path
):
    def my_main(cfg: Any) -> float:
        if cfg.lr == 0.01:
            cfg.epochs = 7  # no longer the published job: trains on its own
        return run(cfg)

    sweep = tmp_path / "sweep"
    sweep_returns(hydra_sweep_runner, my_main, ["lr=0.1,0.01,0.001", *FAST], sweep)
    assert passes == [3, 1]
    epochs = [json.loads((sweep / n / "metrics.json").read_text())["epochs_run"] for n in "012"]
    assert epochs == [30, 7, 30]


def test_a_task_that_never_calls_run_trains_nothing(hydra_sweep_runner, passes, tmp_path):
    sweep = tmp_path / "sweep"
    returns = sweep_returns(hydra_sweep_runner, lambda cfg: cfg.lr, ["lr=0.5,0.25", *FAST], sweep)
    assert [r.return_value for r in returns] == [0.5, 0.25]
    assert passes == [] and not list(sweep.glob("*/metrics.json"))


def test_failed_jobs_are_recorded_and_the_others_finish(hydra_sweep_runner, tmp_path, capsys):
    """A bad value is a user mistake: the sweep goes on, then ends non-zero with one line."""
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        sweep_returns(hydra_sweep_runner, run, ["lr=0.1,-1,0.2", *FAST], sweep)
    assert exit_info.value.code == 1
    summary = pd.read_csv(sweep / "summary.csv").set_index("job").sort_index()
    assert summary["status"].tolist() == ["completed", "failed", "completed"]
    assert summary.loc[1, "error"] == "lr=-1 is invalid; allowed: a finite number > 0"  # as typed
    assert summary[["status", "objective"]].loc[[0, 2]].notna().all().all()
    err = capsys.readouterr().err
    assert "error: job 1 (lr=-1 epochs=30 device=cpu plots=False): lr=-1 is invalid" in err


def test_a_bug_in_the_task_is_raised_after_every_job_ran(hydra_sweep_runner, tmp_path):
    """Any other exception is raised as Hydra's sweeper raises it, once all jobs are done."""

    def my_main(cfg: Any) -> float:
        if cfg.seed == 2:
            raise RuntimeError("my code broke\nsecond line")
        return run(cfg)

    sweep = tmp_path / "sweep"
    with pytest.raises(RuntimeError, match="my code broke"):
        sweep_returns(hydra_sweep_runner, my_main, ["lr=0.1,0.2", "seed=1,2", *FAST], sweep)
    summary = pd.read_csv(sweep / "summary.csv").set_index("job").sort_index()
    assert summary["status"].tolist() == ["completed", "failed", "completed", "failed"]
    assert summary.loc[1, "error"] == "RuntimeError: my code broke"


def test_a_launch_makes_its_records_durable_with_one_sync_before_its_trials_are_told(
    hydra_sweep_runner, monkeypatch, tmp_path
):
    """Records are not fsynced file by file: one os.sync per launch, and each launch's sync
    comes before any of its trials is told, so the study never holds a value whose record could
    be lost with the machine; the journal is fsynced once after the asks and once after the
    tells of each batch."""
    import os
    import threading

    sweep = tmp_path / "sweep"
    journal = sweep.with_name("sweep.tmp")  # where sweep_in_process sweeps
    events: list[tuple[str, int]] = []
    fsync, sync = os.fsync, os.sync

    finished = {s.value for s in optuna.trial.TrialState if s.is_finished()}

    def told() -> int:  # trials with a result in the journal so far
        path = next(journal.rglob("optuna.journal"), None)
        lines = path.read_text().splitlines() if path else []
        # op 6 sets a trial's state: RUNNING as a queued trial is asked, a result when told
        return sum(op["op_code"] == 6 and op["state"] in finished for op in map(json.loads, lines))

    # The sweep's own thread only: the heartbeat's thread fsyncs the journal every
    # heartbeat_interval seconds, whenever a slow machine lets a launch last that long.
    sweeping = threading.get_ident()

    def counting_fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if threading.get_ident() == sweeping:
            events.append(("fsync journal" if name.endswith("optuna.journal") else "fsync", told()))
        fsync(fd)

    def counting_sync() -> None:
        if threading.get_ident() == sweeping:
            events.append(("sync", told()))
        sync()

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "sync", counting_sync)
    overrides = ["sweep=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", *FAST]
    sweep_in_process(hydra_sweep_runner, run, overrides, sweep)
    first = events.index(("fsync journal", 0))  # the study created; then the two batches:
    assert events[first + 1 : first + 7] == [
        ("fsync journal", 0),  # batch 1 asked, before its run folders are written
        ("sync", 0),  # its records, before it is told
        ("fsync journal", 2),  # batch 1 told
        ("fsync journal", 2),  # batch 2 asked
        ("sync", 2),
        ("fsync journal", 4),
    ]
    assert "sync" not in [name for name, _ in events[first + 7 :]]  # summary files: an fsync each
    for num in range(4):
        assert json.loads((sweep / str(num) / "metrics.json").read_text())["status"] == "completed"


def test_tpe_batches_start_random_and_grow_with_its_results(
    hydra_sweep_runner, monkeypatch, tmp_path
):
    """sweep=optuna: TPE's random start-up trials in one launch, then launches of at most a
    quarter of the results so far (n_jobs caps them); the task is the user's, trains nothing."""
    from sweeplr.plugins.batch_launcher import BatchLauncher

    sizes: list[int] = []
    launch = BatchLauncher.launch

    def counting(self: Any, job_overrides: Any, initial_job_idx: int) -> Any:
        sizes.append(len(job_overrides))
        return launch(self, job_overrides, initial_job_idx)

    monkeypatch.setattr(BatchLauncher, "launch", counting)
    overrides = [
        "sweep=optuna",
        "hydra.sweeper.n_trials=30",
        "hydra.sweeper.n_jobs=5",
        "hydra.sweeper.sampler.n_startup_trials=4",
    ]
    task = lambda cfg: (math.log10(cfg.lr) + 2) ** 2  # a user's task that trains nothing
    sweep_in_process(hydra_sweep_runner, task, overrides, tmp_path / "sweep")
    # 4 random; then learned // 4 (at least 1), capped by n_jobs=5 and the budget
    assert sizes == [4, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 3]
    assert sum(sizes) == 30
