"""Sweeps as a user runs them: `python train.py --multirun ...` in a temp dir (slow)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from sweeplr.records import SUPERSEDED_FILE
from sweeplr.studies import budget_used, open_storage
from tests.conftest import ROOT, record_files, require_module, run_train

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

# Small, fast Optuna searches: few epochs, log every 10 so pruners see several steps.
FAST_SPACE = [
    "epochs=choice(40,60)",
    "lr=tag(log, interval(1e-5, 1.0))",
]


def load_study(sweep_dir: Path) -> optuna.Study:
    journal = sweep_dir / "optuna.journal"
    return optuna.load_study(study_name=None, storage=open_storage(f"journal:{journal}"))


def records(sweep_dir: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


def test_optuna_sweep_trials_rows_and_best(tmp_path):
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=5",
        *FAST_SPACE,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    assert len(study.trials) == 5
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    recs = records(sweep)
    assert sorted(recs) == [t.number for t in study.trials]
    assert all(r["trial"]["number"] == n for n, r in recs.items())
    best = study.best_trial
    assert recs[best.number]["objective"]["value"] == pytest.approx(best.value)
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 5 and set(summary["trial_state"]) == {"COMPLETE"}
    assert summary.iloc[0]["objective"] == pytest.approx(best.value)
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"best_trial: {best.number}" in results and f"{sweep}/{best.number}" in results


def test_the_storage_a_sweep_prints_opens_in_optuna_dashboard_and_python(tmp_path):
    """optimization_results.yaml's `dashboard` command serves the study, as printed; its
    `load_study` line loads it; with a database, `storage` loads with optuna.load_study as is."""
    require_module("optuna_dashboard", "dashboard")
    import shlex
    import socket
    import urllib.request

    from omegaconf import OmegaConf

    journal_sweep, db_sweep = tmp_path / "j", tmp_path / "d"
    printed = {}
    for sweep, storage in (
        (journal_sweep, []),
        (db_sweep, [f"hydra.sweeper.storage=sqlite:///{tmp_path}/s.db"]),
    ):
        proc = run_train(
            tmp_path,
            "--multirun",
            "sweep=optuna",
            "hydra.sweeper.n_trials=3",
            *FAST_SPACE,
            *storage,
            f"hydra.sweep.dir={sweep}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed[sweep] = proc.stdout
    results = OmegaConf.load(journal_sweep / "optimization_results.yaml")
    assert results.storage == str(journal_sweep / "optuna.journal")
    assert f"Dashboard: {results.dashboard}" in printed[journal_sweep]
    study = eval(results.load_study, {"optuna": optuna})  # the line as a user pastes it
    assert study.study_name == results.study_name and len(study.trials) == 3
    db = OmegaConf.load(db_sweep / "optimization_results.yaml")
    assert len(optuna.load_study(study_name=db.study_name, storage=db.storage).trials) == 3

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    command = shlex.split(results.dashboard)
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(bin_dir / command[0]), *command[1:], "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, names = time.monotonic() + 60, None
        while names is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as reply:
                    names = [s["study_name"] for s in json.load(reply)["study_summaries"]]
            except OSError:
                assert server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
        assert names == [results.study_name]
    finally:
        server.terminate()
        server.wait()


def test_resume_after_kill_finishes_exactly_n_trials(tmp_path):
    n_trials = 8
    args = [
        "--multirun",
        "sweep=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=1",  # one trial at a time: the kill lands between records
        "epochs=choice(3000)",  # about a second a trial: time to kill one
        "lr=tag(log, interval(1e-3, 1.0))",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and len(list(tmp_path.glob("multirun/optuna/*/*/metrics.json"))) < 3
    ):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the real thing: no chance to clean up
    proc.wait()
    (sweep,) = tmp_path.glob("multirun/optuna/*")
    before = {n: (sweep / str(n) / "metrics.json").read_bytes() for n in records(sweep)}
    assert 3 <= len(before) < n_trials

    again = run_train(tmp_path, *args)  # the same command, in the same place
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(tmp_path.glob("multirun/optuna/*")) == [sweep]  # same study, same directory
    study = load_study(sweep)
    trials = study.trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert budget_used(trials) == n_trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    # A record written just before the kill, before its job_return.json, was left for the
    # trial's retry: superseded, not counted.
    recs = records(sweep)
    superseded = {n for n in recs if (sweep / str(n) / SUPERSEDED_FILE).is_file()}
    assert superseded <= {t.number for t in trials if t.state == TrialState.FAIL}
    assert sorted(recs.keys() - superseded) == sorted(t.number for t in finished)
    for number, content in before.items():  # nothing written before the kill was overwritten
        assert (sweep / str(number) / "metrics.json").read_bytes() == content
    # A killed trial, if any, was failed and its configuration re-queued, not lost. The kill
    # may land while its parameters are being suggested, one storage write each: the retry
    # keeps those it had and samples the rest.
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        retries = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
        assert len(retries) == 1 and failed.params.items() <= retries[0].params.items()
        assert retries[0].params.keys() == {"lr", "optimizer", "epochs", "optimizer.weight_decay"}
    # The re-seeded sampler proposed no configuration twice (retries aside).
    fresh = [t for t in finished if "retry_history" not in t.system_attrs]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh)


# train.py in a process that SIGKILLs itself right after its n-th journal write of one kind
# (argv: the write's Optuna op code, n, train.py, its arguments): a kill at an exact point.
KILLED_AFTER = """
import os, runpy, signal, sys
from sweeplr import studies
op, n = int(sys.argv.pop(1)), int(sys.argv.pop(1))
append, seen = studies.BatchedJournalFile.append_logs, []
def append_then_die(self, logs):
    append(self, logs)
    seen.extend(log for log in logs if log["op_code"] == op)
    if len(seen) >= n:
        os.kill(os.getpid(), signal.SIGKILL)
studies.BatchedJournalFile.append_logs = append_then_die
sys.argv.pop(0)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_resume_after_kills_in_each_window_of_a_trial(tmp_path):
    """The timed kill above, at exact points: each run of the same command dies right after
    one write of the study, leaving the state named beside it, and the next resumes it."""
    from optuna.storages.journal._storage import JournalOperation as Op  # optuna 5, pinned

    args = [
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=1",
        "epochs=choice(30)",
        "plots=false",
    ]
    C, R, W, F = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
    kills = [
        (Op.CREATE_TRIAL, 2, [C, W]),  # trial 1 queued with its worker's mark, not taken
        (Op.SET_TRIAL_STATE_VALUES, 1, [C, R]),  # taken: RUNNING, no parameter yet
        (Op.CREATE_TRIAL, 1, [C, R, W]),  # the repair queued its retry, did not fail it
        (Op.SET_TRIAL_USER_ATTR, 1, [C, F, R]),  # the retry's job finished, not told
    ]
    for op, n, states in kills:
        killed = ("-c", KILLED_AFTER, str(int(op)), str(n))
        proc = run_train(tmp_path, *args, env={"PYTHONPATH": str(ROOT)}, python=killed)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        (sweep,) = tmp_path.glob("multirun/optuna/*")
        assert [t.state for t in load_study(sweep).trials] == states, op.name
    again = run_train(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 2 had finished before its worker stopped: told" in again.stdout
    trials = load_study(sweep).trials
    assert [t.state for t in trials] == [C, F, C, C, C]
    assert budget_used(trials) == 4 and trials[2].system_attrs["retry_history"] == [1]
    assert sorted(records(sweep)) == [0, 2, 3, 4]
    # Trial 1's retry had no parameter to keep: it was proposed afresh, not as trial 3 was.
    finished = [t for t in trials if t.state == C]
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)


def test_pruner_stops_bad_trials_early(tmp_path):
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=optuna",
        "pruner=median",
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=10",
        # Batches of two, each trained in one pass: the pruner compares a trial with those
        # finished in earlier batches, and stops it inside its batch's pass.
        "hydra.sweeper.n_jobs=2",
        "epochs=choice(200)",
        # Deliberately bad learning rates beside good ones.
        "lr=choice(0.00001,0.00003,1.0,0.5)",
        "optimizer=choice(sgd)",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned
    recs = records(sweep)
    for trial in pruned:
        assert recs[trial.number]["status"] == "pruned"
        assert recs[trial.number]["epochs_run"] < 200
    summary = pd.read_csv(sweep / "summary.csv")
    assert set(summary.loc[summary["trial"].isin([t.number for t in pruned]), "status"]) == {
        "pruned"
    }


def test_diverged_trials_never_rank_best_in_optuna(tmp_path):
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=6",
        "standardize=false",
        "epochs=choice(50)",
        "lr=choice(1e38,0.01)",
        "optimizer=choice(sgd)",
        "hydra.sweeper.sampler.n_startup_trials=6",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    diverged = [t for t in study.trials if t.user_attrs.get("status") == "diverged"]
    assert diverged and all(t.state == TrialState.PRUNED for t in diverged)
    assert study.best_trial.params["lr"] == 0.01


def test_grid_with_a_diverging_learning_rate_completes(tmp_path):
    sweep = tmp_path / "g"
    proc = run_train(
        tmp_path,
        "--multirun",
        "lr=0.1,1e38",
        "optimizer=sgd,adam",
        "standardize=false",
        "epochs=50",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 4
    assert set(summary.loc[summary["lr"] == 1e38, "status"]) == {"diverged"}
    assert set(summary.loc[summary["lr"] == 0.1, "status"]) == {"completed"}
    assert summary["status"].iloc[-2:].tolist() == ["diverged", "diverged"]  # ranked last


def test_a_range_that_gives_one_value_runs_one_job_and_says_why(tmp_path):
    sweep = tmp_path / "g"
    proc = run_train(
        tmp_path, "--multirun", "lr=range(0.001,0.1)", "epochs=5", f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        (
            "warning: this sweep runs 1 job: lr=range(0.001,0.1) expands to one value, 0.001: "
            "range steps by 1 unless given range(start,stop,step)"
        )
    ]
    assert [r["hyperparameters"]["lr"] for r in records(sweep).values()] == [0.001]


def test_two_sweeps_started_together_never_share_a_directory(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "--multirun", "lr=0.1,0.2", "epochs=5"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    sweeps = list(tmp_path.glob("multirun/*/*"))
    assert len(sweeps) == 2
    for sweep in sweeps:
        assert len(list(sweep.glob("*/metrics.json"))) == 2


def test_grid_sampler_through_sweeplr_optuna_finishes_cleanly(tmp_path):
    """The grid sampler stops the study at its last point; that is the end, not a crash."""
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        "hydra/sweeper=sweeplr_optuna",
        "hydra/sweeper/sampler=grid",
        "lr=choice(0.1,0.01)",
        "epochs=20",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    assert sorted(t.params["lr"] for t in study.trials) == [0.01, 0.1]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params:" in results and "lr: 0.1" in results


def test_a_grid_with_a_bad_value_runs_the_rest_and_exits_non_zero(tmp_path):
    sweep = tmp_path / "g"
    proc = run_train(
        tmp_path, "--multirun", "lr=0.1,-1,0.3", "epochs=20", f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: job 1 (lr=-1 epochs=20): lr=-1 is invalid; allowed: a finite number > 0"
    )
    assert "Traceback" not in proc.stderr
    summary = pd.read_csv(sweep / "summary.csv").set_index("job")
    assert summary.loc[[0, 2], "status"].tolist() == ["completed", "completed"]
    assert summary.loc[1, "status"] == "failed"
    assert summary.loc[1, "error"].startswith("lr=-1 is invalid")


def test_schedules_and_early_stopping_in_a_grid_and_an_optuna_sweep(tmp_path):
    grid = tmp_path / "g"
    proc = run_train(
        tmp_path,
        "--multirun",
        "scheduler=constant,cosine,step",
        "early_stopping.patience=null,3",
        "early_stopping.min_delta=0.001",
        "lr=0.5",
        "epochs=200",
        "plots=false",
        f"hydra.sweep.dir={grid}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(grid / "summary.csv")
    assert len(summary) == 6 and set(summary["status"]) == {"completed"}
    assert set(summary["scheduler"]) == {"constant", "cosine", "step"}
    stopping = summary[summary["early_stopping.patience"] == 3]
    assert (stopping["epochs_run"] < 200).any() and stopping["best_epoch"].notna().all()
    assert (summary.loc[summary["early_stopping.patience"].isna(), "epochs_run"] == 200).all()
    for run_dir in summary["run_dir"]:
        history = pd.read_csv(run_dir + "/history.csv")
        record = json.loads((Path(run_dir) / "metrics.json").read_text())
        schedule = record["hyperparameters"]["scheduler"]
        assert (history["lr"].nunique() > 1) == (schedule != "constant")
    optuna_dir = tmp_path / "o"
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=6",
        "scheduler=choice(constant,onecycle,plateau)",  # (a plateau option: plateau's jobs only)
        "early_stopping.patience=choice(2,5)",
        "epochs=choice(60)",
        "plots=false",
        f"hydra.sweep.dir={optuna_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(optuna_dir)
    assert len(study.trials) == 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    summary = pd.read_csv(optuna_dir / "summary.csv")
    assert len(summary) == 6 and summary["best_epoch"].notna().all()


@pytest.mark.slow
def test_a_grid_refuses_a_directory_that_holds_runs(tmp_path):
    sweep = tmp_path / "S"
    first = run_train(
        tmp_path, "--multirun", "lr=0.1,0.01", "epochs=20", f"hydra.sweep.dir={sweep}"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = record_files(sweep)
    summary = (sweep / "summary.csv").read_bytes()

    again = run_train(tmp_path, "--multirun", "lr=0.5", "epochs=20", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 1
    assert again.stdout == ""  # not the old sweep's table either
    assert again.stderr == (
        f"error: hydra.sweep.dir={sweep} already holds another sweep's runs; allowed: the same "
        "command, to finish that sweep, or a new directory (by default every launch gets its "
        "own)\n"
    )
    assert record_files(sweep) == before
    assert (sweep / "summary.csv").read_bytes() == summary


def file_hashes(folders: list[Path]) -> dict[str, str]:
    """Every file under ``folders`` (their Hydra files and logs too), by path: its SHA-256."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_grid_stopped_by_ctrl_c_is_finished_by_the_same_command(tmp_path):
    sweep = tmp_path / "G"
    lrs = [f"0.{k}" for k in range(1, 9)]
    args = [
        "--multirun",
        f"lr={','.join(lrs)}",
        "seed=range(8)",  # 64 jobs, in 8 launches of 8
        "epochs=300",
        "hydra.sweeper.max_batch_size=8",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(sweep.glob("*/metrics.json"))) < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C, once the first launch's records exist
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == (
        f"interrupted: the finished runs are kept in {sweep}; the same command with "
        f"hydra.sweep.dir={sweep} runs the rest"
    )
    kept = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    kept_jobs = {int(folder.name) for folder in kept}
    assert 8 <= len(kept) < 64
    before = file_hashes(kept)
    summary = pd.read_csv(sweep / "summary.csv")  # every planned job, those not run as such
    assert sorted(summary["job"]) == list(range(64))
    assert set(summary.loc[summary["job"].isin(kept_jobs), "status"]) == {"completed"}
    rest = summary.loc[~summary["job"].isin(kept_jobs), "status"]
    assert "not_run" in set(rest) and set(rest) <= {"not_run", "missing"}

    again = run_train(tmp_path, *args)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert (
        f"Resuming {sweep}: {len(kept)} of 64 jobs have a finished record, kept; "
        f"running the other {64 - len(kept)}"
    ) in output
    ran = [int(n) for n in re.findall(r"^\[job (\d+)\] completed", output, re.MULTILINE)]
    assert sorted(ran) == sorted(set(range(64)) - kept_jobs)  # each job once, over both runs
    assert file_hashes(kept) == before  # the earlier records, byte for byte
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["job"]) == list(range(64))
    assert set(summary["status"]) == {"completed"}
    for num, rec in records(sweep).items():
        assert rec["overrides"][:2] == [f"lr={lrs[num // 8]}", f"seed={num % 8}"]
