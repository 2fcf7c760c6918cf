"""train.py as a user runs it: a separate process in a temp dir, with overrides."""

import json

import pandas as pd
import pytest

from tests.conftest import ROOT, run_train

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
