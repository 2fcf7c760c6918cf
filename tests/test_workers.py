"""Several workers on one study, and stopping a sweep by signal (slow, real processes)."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from sweeplr.results import load_sweep
from sweeplr.studies import budget_used, open_storage
from tests.conftest import ROOT, run_train

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_of(sweep_dir):
    return optuna.load_study(
        study_name=None, storage=open_storage(f"journal:{sweep_dir / 'optuna.journal'}")
    )


def start(tmp_path, args):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_four_local_workers_share_one_study_exactly(tmp_path):
    args = [
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=40",
        "epochs=choice(30,60)",
        "plots=false",
    ]
    workers = [start(tmp_path, args) for _ in range(4)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    (sweep,) = tmp_path.glob("multirun/optuna/*")
    trials = study_of(sweep).trials
    assert len(trials) == 40 and budget_used(trials) == 40
    assert all(t.state == TrialState.COMPLETE for t in trials)
    table = load_sweep(sweep)
    assert len(table) == 40 and set(table["status"]) == {"completed"}
    assert sorted(table["job"]) == list(range(40))  # one directory per trial, none shared


def test_sigint_or_sigterm_leave_whole_records_and_a_consistent_study(tmp_path):
    args = [
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=6",
        "epochs=choice(30000)", "log_every=1000",
        "plots=false",
    ]
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = start(tmp_path, args)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob("multirun/optuna/*/*/.hydra")):
            time.sleep(0.05)
        time.sleep(0.3)  # inside a trial
        os.killpg(proc.pid, sig)
        proc.communicate(timeout=60)
        (sweep,) = tmp_path.glob("multirun/optuna/*")
        for path in sweep.glob("*/metrics.json"):
            json.loads(path.read_text())  # complete, or absent: never half a file
        trials = study_of(sweep).trials
        assert not [t for t in trials if t.state == TrialState.RUNNING]
    again = run_train(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = study_of(sweep).trials
    assert budget_used(trials) == 6
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
