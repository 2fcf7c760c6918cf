"""Several workers on one study, and stopping a sweep by signal (slow, real processes)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeplr.results import load_sweep
from sweeplr.studies import budget_used, open_storage
from tests.conftest import OPTUNA, ROOT, missing, require_module, run_train, study_in

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
        "epochs=choice(30000)",
        "log_every=1000",
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


def run_identity(path):
    """A record's content: nothing rewrites a record once its run wrote it."""
    return path.read_bytes()


def postgres_url() -> str:
    """The PostgreSQL server .ci/run starts, and the driver Optuna reaches it with."""
    require_module("psycopg", "postgres")
    url = os.environ.get("SWEEPLR_TEST_POSTGRES")
    if not url:
        missing(
            "a PostgreSQL server",
            "set SWEEPLR_TEST_POSTGRES=postgresql://USER@HOST:PORT/DB (.ci/run starts one)",
        )
    return url


def test_three_workers_on_postgresql_share_one_study_exactly(tmp_path):
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:12]}"  # the database outlives this test's tmp_path
    workers = [
        start(
            tmp_path,
            [
                "--multirun",
                "sweep=optuna",
                "hydra.sweeper.n_trials=30",
                "epochs=choice(30,60)",
                "plots=false",
                f"hydra.sweeper.storage={url}",
                f"hydra.sweeper.study_name={name}",
                f"hydra.sweep.dir=worker{i}",
            ],  # each worker its own directory, as on 3 machines
        )
        for i in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    storage = optuna.storages.RDBStorage(url)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    finally:
        storage.engine.dispose()  # close its connections: no unclosed-socket warning
    assert len(trials) == 30 and all(t.state == TrialState.COMPLETE for t in trials)
    table = load_sweep([tmp_path / f"worker{i}" for i in range(3)])
    assert len(table) == 30 and sorted(table["trial"]) == list(range(30))


def test_soak_four_workers_300_trials_with_a_kill_and_restart(tmp_path):
    args = [
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=300",
        "epochs=choice(20,40)",
        "plots=false",
        "hydra.sweeper.n_jobs=4",
    ]
    workers = [start(tmp_path, args) for _ in range(4)]
    deadline = time.monotonic() + 300
    while (
        time.monotonic() < deadline
        and len(list(tmp_path.glob("multirun/optuna/*/*/metrics.json"))) < 150
    ):
        time.sleep(0.2)
    os.killpg(workers[0].pid, signal.SIGKILL)  # half way: one worker dies mid-batch
    workers[0].communicate()
    (sweep,) = tmp_path.glob("multirun/optuna/*")
    before = {p: run_identity(p) for p in sweep.glob("*/metrics.json")}
    workers[0] = start(tmp_path, args)  # and is restarted
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        assert worker.returncode in (0, -signal.SIGKILL), err[-2000:]
    trials = study_of(sweep).trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert budget_used(trials) == 300
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 300
    table = load_sweep(sweep)
    done = table[table["status"] == "completed"]
    # Every trial exactly once: a run that finished after its worker's last tell, before the
    # kill, was told from its job_return.json by the restarted worker, not run again.
    assert sorted(done["trial"]) == sorted(t.number for t in finished)
    # A trial killed mid-run was run again; its folder says superseded, not missing.
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    left = table[table["status"] != "completed"]
    assert set(left["status"]) <= {"superseded"}
    assert {int(p.rsplit("/", 1)[1]) for p in left["run_dir"]} <= retried
    for path, identity in before.items():  # nothing overwritten
        assert run_identity(path) == identity


@pytest.mark.parametrize(
    "launcher", ["launcher=joblib", "launcher=submitit_local"], ids=["joblib", "submitit_local"]
)
def test_other_hydra_launchers_write_the_same_records(tmp_path, launcher):
    sweep = tmp_path / "s"
    proc = run_train(
        tmp_path,
        "--multirun",
        launcher,
        "lr=0.1,0.01",
        "epochs=30",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = load_sweep(sweep)
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    assert sorted(table["lr"]) == [0.01, 0.1]
    assert (sweep / "summary.csv").is_file()


def test_unreachable_storage_at_start_is_one_clear_error(tmp_path):
    proc = run_train(
        tmp_path,
        "--multirun",
        "sweep=optuna",
        "hydra.sweeper.n_trials=2",
        "plots=false",
        "hydra.sweeper.storage=postgresql://nobody@127.0.0.1:9/none",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is unreachable" in errors[0], proc.stderr[-2000:]


@pytest.fixture
def private_postgres():
    """A PostgreSQL server of this test's own, which it may stop (Debian's postgresql)."""
    require_module("psycopg", "postgres")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not bins:
        missing("Debian's PostgreSQL server programs", "apt-get install -y postgresql")
    pg_ctl = bins[-1]
    data = Path(tempfile.mkdtemp(prefix="sweeplr-pg-"))  # /tmp: the postgres user can reach it
    shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*cmd):
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True
        )

    as_postgres(pg_ctl.parent / "initdb", "-D", data, "-A", "trust", "-U", "postgres")
    as_postgres(
        pg_ctl,
        "-D",
        data,
        "-l",
        data / "log",
        "-w",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "start",
    )
    stop = lambda: as_postgres(pg_ctl, "-D", data, "-m", "immediate", "stop")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", stop
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(pg_ctl),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(data, ignore_errors=True)


def test_storage_lost_during_a_sweep_keeps_records_and_says_so(tmp_path, private_postgres):
    url, stop_server = private_postgres
    sweep = tmp_path / "s"
    proc = start(
        tmp_path,
        [
            "--multirun",
            "sweep=optuna",
            "hydra.sweeper.n_trials=40",
            "epochs=choice(20000)",
            "log_every=1000",
            "plots=false",
            f"hydra.sweeper.storage={url}",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(sweep.glob("*/metrics.json"))) < 2:
        time.sleep(0.05)
    stop_server()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the study storage" in errors[0], err[-3000:]
    assert "Traceback" not in err
    records = list(sweep.glob("*/metrics.json"))
    assert len(records) >= 2  # what finished before the outage is kept, whole
    for path in records:
        assert json.loads(path.read_text())["status"] == "completed"


@pytest.mark.slow
def test_workers_started_together_never_propose_the_same_trial(tmp_path):
    args = [*OPTUNA, "hydra.sweeper.n_trials=12", "hydra.sweep.dir=shared"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, str(ROOT / "train.py"), *args]
    # Started in one go, each before any asks: the start that used to give two workers the
    # same seed (both counted 0 trials).
    workers = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    trials = study_in(tmp_path / "shared").trials
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    proposals = {tuple(sorted(t.params.items())) for t in trials}
    assert len(proposals) == 12
