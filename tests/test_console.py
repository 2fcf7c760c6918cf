"""What a run prints, and what its log file keeps of it."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pytest

from sweeplr.console import format_report, show
from tests.conftest import train_and_record


def first_line(small_cfg, tmp_path: Path, *overrides: str) -> str:
    _, record = train_and_record(small_cfg(*overrides), tmp_path)
    return format_report(record, tmp_path).splitlines()[0]


def test_a_run_that_stopped_early_says_so(small_cfg, tmp_path):
    # min_delta 1: no check after the first improves enough, so the second one stops the run
    line = first_line(
        small_cfg, tmp_path, "early_stopping.patience=1", "early_stopping.min_delta=1"
    )
    assert line.startswith("sweeplr: completed after 20 epochs")
    assert line.endswith("(early stopping: best epoch 10)")


def test_a_run_that_stopped_early_keeping_its_last_weights_names_no_best_epoch(small_cfg, tmp_path):
    """restore_best=false: the run holds its last epoch's weights (issue 22, 15)."""
    line = first_line(
        small_cfg,
        tmp_path,
        "early_stopping.patience=1",
        "early_stopping.min_delta=1",
        "early_stopping.restore_best=false",
    )
    assert line.startswith("sweeplr: completed after 20 epochs")
    assert line.endswith("(early stopping, last weights kept)")


def test_a_run_that_trained_to_its_last_epoch_does_not_claim_early_stopping(small_cfg, tmp_path):
    line = first_line(small_cfg, tmp_path, "early_stopping.patience=100")
    assert line.startswith("sweeplr: completed after 50 epochs")
    assert "early stopping" not in line and "best epoch" not in line


@pytest.fixture
def job_logging(tmp_path):
    """The root logger as Hydra's default job logging leaves it: a console and a file handler."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    console = logging.StreamHandler(io.StringIO())
    file = logging.FileHandler(tmp_path / "train.log")
    root.handlers[:] = [console, file]
    root.setLevel(logging.INFO)
    yield console.stream, tmp_path / "train.log"
    file.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_what_a_run_shows_is_printed_once_and_kept_in_its_log_file(job_logging, capsys):
    console, log_file = job_logging
    show("sweeplr: completed after 50 epochs\n  record: /x")
    show("warning: logger=mlflow did not log /x", logging.WARNING)
    captured = capsys.readouterr()
    assert captured.out == "sweeplr: completed after 50 epochs\n  record: /x\n"
    assert captured.err == "warning: logger=mlflow did not log /x\n"
    assert console.getvalue() == ""  # the logging console does not print it a second time
    kept = log_file.read_text()
    assert "sweeplr: completed after 50 epochs\n  record: /x\n" in kept
    assert "warning: logger=mlflow did not log /x\n" in kept


def test_without_a_log_file_nothing_is_logged_anywhere(capsys):
    root = logging.getLogger()
    saved = root.handlers[:]
    console = logging.StreamHandler(io.StringIO())
    root.handlers[:] = [console]  # hydra/job_logging=stdout: a console only
    try:
        show("sweeplr: completed")
    finally:
        root.handlers[:] = saved
    assert capsys.readouterr().out == "sweeplr: completed\n"
    assert console.stream.getvalue() == ""


@pytest.fixture
def full_log_file():
    """The root logger with a file handler on a full disk (/dev/full: every flush ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fill a disk")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    full = logging.FileHandler("/dev/full")
    root.handlers[:] = [full]
    root.setLevel(logging.INFO)
    yield full
    root.handlers[:] = handlers
    root.setLevel(level)
    with contextlib.suppress(OSError):
        full.close()


def test_a_log_file_on_a_full_disk_is_one_warning_not_a_traceback(full_log_file, capsys):
    """issue 22, 17: logging's handleError printed ``--- Logging error ---`` per record."""
    from sweeplr.console import quiet_log_file_errors

    quiet_log_file_errors()
    quiet_log_file_errors()  # once per handler: Hydra's next job may keep the same one
    for n in range(3):
        logging.getLogger("sweeplr.test").info("record %d", n)
    assert capsys.readouterr().err == (
        "warning: the log file /dev/full is not written: No space left on device\n"
    )


@pytest.mark.slow
def test_a_sweep_whose_log_files_fill_the_disk_warns_once_and_completes(tmp_path):
    """Every job's log file on a full disk, through the batch launcher, which re-points its
    file handler from job to job (issue 22, 17)."""
    from tests.conftest import run_train

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fill a disk")
    proc = run_train(
        tmp_path,
        "--multirun",
        "epochs=5",
        "lr=0.1,0.2",
        "plots=false",
        "hydra.job_logging.handlers.file.filename=/dev/full",
        f"hydra.sweep.dir={tmp_path / 's'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        proc.stderr == "warning: the log file /dev/full is not written: No space left on device\n"
    )
    assert (tmp_path / "s" / "0" / "metrics.json").is_file()
    assert (tmp_path / "s" / "1" / "metrics.json").is_file()
