"""What a run prints, and what its log file keeps of it."""

from __future__ import annotations

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
