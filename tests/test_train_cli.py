"""train.py as a user runs it: a separate process in a temp dir, with overrides."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sweeplr.results import load_sweep
from tests.conftest import OPTUNA, ROOT, path_without, run_train

pytestmark = pytest.mark.slow


def only_record(cwd):
    records = list(cwd.glob("outputs/*/*/metrics.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def test_default_run_prints_the_report_and_writes_the_record(tmp_path):
    proc = run_train(tmp_path, "epochs=200")
    assert proc.returncode == 0, proc.stderr
    assert "sweeplr: completed after 200 epochs" in proc.stdout
    for word in ("train", "val", "test", "objective val_loss", "record:"):
        assert word in proc.stdout
    assert "Traceback" not in proc.stderr and "epoch 200/200" not in proc.stderr  # no TTY, no bar
    record = only_record(tmp_path)
    assert record["metrics"]["test"]["accuracy"] > 0.95


def test_the_job_log_file_keeps_what_the_run_printed(tmp_path):
    proc = run_train(tmp_path, "epochs=20", "plots=false")
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout.splitlines()
    assert report[0].startswith("sweeplr: completed after 20 epochs") and len(report) == 8
    [log_file] = tmp_path.glob("outputs/*/*/train.log")  # Hydra's ${hydra.job.name}.log
    kept = log_file.read_text().splitlines()
    assert kept[0].endswith(f"[sweeplr.report][INFO] - {report[0]}")  # Hydra's log format
    assert kept[1:] == report[1:]


def test_each_sweep_job_log_keeps_its_job_line(tmp_path):
    proc = run_train(tmp_path, "--multirun", "epochs=20", "plots=false", "lr=0.1,0.3")
    assert proc.returncode == 0, proc.stderr
    for job, lr in enumerate(("0.1", "0.3")):
        [log_file] = tmp_path.glob(f"multirun/*/*/{job}/train.log")
        [line] = [line for line in proc.stdout.splitlines() if line.startswith(f"[job {job}]")]
        assert f"lr={lr}" in line
        assert log_file.read_text().splitlines()[-1].endswith(f"[INFO] - {line}")


def test_a_job_logging_without_a_log_file_still_runs(tmp_path):
    proc = run_train(tmp_path, "epochs=20", "plots=false", "hydra/job_logging=disabled")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sweeplr: completed after 20 epochs")
    assert not list(tmp_path.glob("outputs/*/*/*.log"))


def test_adam_on_breast_cancer(tmp_path):
    proc = run_train(tmp_path, "optimizer=adam", "lr=0.001", "dataset=breast_cancer", "epochs=300")
    assert proc.returncode == 0, proc.stderr
    record = only_record(tmp_path)
    assert record["hyperparameters"]["optimizer"] == "adam"
    assert record["metrics"]["test"]["accuracy"] > 0.9


def test_csv_dataset(tmp_path):
    frame = pd.DataFrame({"a": range(40), "b": [i % 7 for i in range(40)]})
    frame["label"] = ["cat" if a < 20 else "dog" for a in frame["a"]]
    frame.to_csv(tmp_path / "my.csv", index=False)
    proc = run_train(
        tmp_path,
        "dataset=csv",
        "dataset.path=my.csv",
        "dataset.target=label",
        "epochs=100",
        "lr=0.5",
    )
    assert proc.returncode == 0, proc.stderr
    assert only_record(tmp_path)["data"]["class_names"] == ["cat", "dog"]


def test_diverged_run_exits_zero_with_status(tmp_path):
    proc = run_train(tmp_path, "lr=1e38", "standardize=false", "epochs=100")
    assert proc.returncode == 0, proc.stderr
    assert "diverged" in proc.stdout
    assert only_record(tmp_path)["status"] == "diverged"


def write_csv(path, frame):
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


BAD_INPUTS = [
    (["lr=-1"], "lr=-1 is invalid"),
    (["lr=abc"], "abc"),
    (["epochs=0"], "epochs=0"),
    (["test_size=1.5"], "test_size=1.5"),
    (["batch_size=0"], "batch_size=0"),
    (["device=tpu"], "device=tpu"),
    (["dataset=nope"], "dataset=nope is not an option of dataset"),
    (["optimizer=rmsprop"], "optimizer=rmsprop is not an option of optimizer"),
    (["dataset=csv", "dataset.path=absent.csv", "dataset.target=y"], "absent.csv does not exist"),
    (["dataset=csv", "dataset.path=sub", "dataset.target=y"], "dataset.path=sub is a directory"),
    (["dataset=csv", "dataset.path=d.csv", "dataset.target=label"], "dataset.target=label"),
    (["dataset=csv", "dataset.path=text.csv", "dataset.target=y"], "non-numeric value"),
    (["dataset=csv", "dataset.path=holes.csv", "dataset.target=y"], "missing value"),
    (["dataset=csv", "dataset.path=one.csv", "dataset.target=y"], "single class"),
    (["dataset=csv", "dataset.path=tiny.csv", "dataset.target=y"], "too few"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    write_csv(tmp_path / "d.csv", {"a": [1, 2, 3, 4], "y": [0, 1, 0, 1]})
    write_csv(tmp_path / "text.csv", {"a": [1, "x", 3, 4], "y": [0, 1, 0, 1]})
    write_csv(tmp_path / "holes.csv", {"a": [1, None, 3, 4], "y": [0, 1, 0, 1]})
    write_csv(tmp_path / "one.csv", {"a": [1, 2, 3, 4], "y": [1, 1, 1, 1]})
    write_csv(tmp_path / "tiny.csv", {"a": [1, 2, 3], "y": [0, 1, 0]})
    (tmp_path / "sub").mkdir()
    proc = run_train(tmp_path, "epochs=5", *args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr
    if "abc" not in needle:  # Hydra's own type error otherwise
        error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and needle in error_lines[0], proc.stderr
        assert "allowed" in error_lines[0] or "available" in error_lines[0]


def test_help_lists_the_options_of_conf_and_no_schema(tmp_path):
    proc = run_train(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    listed = dict(
        line.split(": ", 1)
        for line in proc.stdout.split("== Config ==")[0].splitlines()
        if ": " in line
    )
    for group in ("dataset", "optimizer", "scheduler", "penalty", "logger"):
        options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        assert listed[group] == ", ".join(options)
    assert "_schema" not in proc.stdout


def closed_stdout_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with a standard output whose reader is gone before the first byte (``| head -0``):
    every write meets a closed pipe, deterministically."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            args,
            check=False,
            cwd=cwd,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        )
    finally:
        os.close(write)
    return proc


@pytest.mark.slow
def test_a_closed_pipe_stops_the_printing_not_the_sweep(tmp_path):
    sweep = tmp_path / "g"
    lrs = ",".join(str(0.01 * k) for k in range(1, 13))
    args = ["--multirun", f"lr={lrs}", "optimizer=sgd,adam,adamw", "epochs=20"]
    proc = closed_stdout_run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert len(list(sweep.glob("*/metrics.json"))) == 36
    table = load_sweep(sweep)
    assert len(table) == 36 and set(table["status"]) == {"completed"}
    assert len(pd.read_csv(sweep / "summary.csv")) == 36

    summary = closed_stdout_run(
        [sys.executable, "-m", "sweeplr.cli", "summary", str(sweep)], tmp_path
    )
    assert summary.returncode == 0
    assert summary.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["dataset=csv"],
            "error: dataset.path is missing; allowed: a CSV or Parquet file (dataset.path=...)",
        ),
        (
            ["--multirun", "launcher=slurm", "lr=0.1"],
            (
                "error: launcher=slurm needs a SLURM cluster, and this machine has no srun; "
                "allowed: launcher=batch, joblib or submitit_local here"
            ),
        ),
        (
            ["dataset=synthetic", "dataset.n_samples=-1"],
            "error: dataset.n_samples=-1 is too few; allowed: an integer >= 10 (enough rows to split)",
        ),
        (
            [*OPTUNA, "hydra.sweeper.n_trials=1", "lr=tag(log, interval(0, 1))"],
            (
                "error: lr=tag(log, interval(0, 1)) is not a search space Optuna takes: `low > 0` "
                "must hold for `log=True`, but got (low=0.0, high=1.0)."
            ),
        ),
        (
            [*OPTUNA, "hydra.sweeper.n_trials=0"],
            "error: hydra.sweeper.n_trials=0 is invalid; allowed: an integer >= 1",
        ),
        (
            [*OPTUNA, "hydra.sweeper.n_trials=-1"],
            "error: hydra.sweeper.n_trials=-1 is invalid; allowed: an integer >= 1",
        ),
        (["lr=1e-400"], "error: lr=1e-400 is invalid; allowed: a finite number > 0"),
        # Hydra would say "To append to your config use +learning_rate=0.01": a no-op
        (
            ["learning_rate=0.01"],
            "error: learning_rate is not a setting; did you mean lr? (lr=0.01)",
        ),
        (
            ["+learning_rate=0.01"],
            "error: learning_rate is not a setting; did you mean lr? (lr=0.01)",
        ),
        (["+optimizer.lr=0.5"], "error: optimizer.lr is not a setting; did you mean lr? (lr=0.5)"),
        (
            ["optimizer=adma"],
            (
                "error: optimizer=adma is not an option of optimizer; did you mean adam? "
                "allowed: adam, adamw, lbfgs, sgd"
            ),
        ),
        (
            ["dataset.path=my.csv"],
            "error: dataset.path is an option of dataset=csv, not of dataset=blobs (add dataset=csv)",
        ),
        (  # past the command line's check (a preset may choose the data set): validation's
            ["experiment=seed", "+dataset.path=my.csv"],
            "error: dataset.path is an option of dataset=csv, not of dataset=blobs (add dataset=csv)",
        ),
        (
            ["--multirun", "lr=[0.1,0.01]"],
            (
                "error: lr=[0.1,0.01] is a list, and lr takes a number; allowed: one value "
                "(to run each: --multirun lr=0.1,0.01)"
            ),
        ),
        (
            ["optimizer=adam", "optimizer.momentum=0.9"],
            (
                "error: optimizer.momentum=0.9 does not apply to optimizer=adam; "
                "allowed: its options weight_decay, betas, eps"
            ),
        ),
        (
            ["epochs=5", "hydra.run.dir=a_file/run"],
            "error: hydra.run.dir=a_file/run cannot be written (Not a directory); allowed: a directory you can write",
        ),
        (
            ["--multirun", "lr=0.1", "hydra.sweep.dir=a_file/sweep"],
            "error: hydra.sweep.dir=a_file/sweep cannot be written (Not a directory); allowed: a directory you can write",
        ),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, args, line):
    (tmp_path / "a_file").write_text("")  # a sweep dir below a file: no directory can be made
    # launcher=slurm is a mistake only where there is no srun: hide any this machine has
    proc = run_train(tmp_path, *args, env={"PATH": path_without("srun")})
    assert proc.returncode == 1
    assert proc.stderr.strip() == line  # the line alone: no warning before it
    assert proc.stdout == ""  # nor a table, nor a hint to rerun


# Runs train.py as a terminal's foreground process gets it, with SIGINT's default action: a
# shell script that started this test run in the background left SIGINT ignored, and an
# ignored signal is inherited through fork and exec. (Not preexec_fn: unsafe with threads.)
WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def wait_for(pattern: str, where: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not list(where.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr and proc.stderr.read()
        )
        time.sleep(0.05)
    time.sleep(1.0)  # inside the training, past Hydra's start-up


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "marker", "kept"),
    [
        (
            ["epochs=3000000", "hydra.run.dir=r"],
            "r/.hydra/config.yaml",
            "the run stopped before writing its record; run it again",
        ),
        (
            [
                "--multirun",
                "epochs=5,3000000",
                "hydra.sweep.dir=g",
                "hydra.sweeper.max_batch_size=1",
            ],
            "g/0/metrics.json",
            "the finished runs are kept in g; the same command with hydra.sweep.dir=g runs the rest",
        ),
        (
            [
                "--multirun",
                "sweep=optuna",
                "hydra.sweeper.n_trials=4",
                "epochs=choice(3000000)",
                "plots=false",
                "hydra.sweep.dir=o",
            ],
            "o/0/.hydra/config.yaml",
            (
                "the finished runs are kept in o, the trials in flight were handed back; "
                "rerun the same command to resume"
            ),
        ),
    ],
    ids=["run", "grid", "optuna"],
)
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, args, marker, kept):
    proc = subprocess.Popen(
        [sys.executable, "-c", WITH_DEFAULT_SIGINT, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    wait_for(marker, tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == f"interrupted: {kept}"
    for path in tmp_path.rglob("metrics.json"):
        assert json.loads(path.read_text())["status"] == "completed"  # whole, never half
