"""What a run prints: the report block of a single run, one line per job of a sweep, progress.

Reads records only (a ``metrics.json`` as a dict), so ``sweeplr show`` can print a finished
run's block again without torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TextIO

from sweeplr.schema import METRICS, SPLITS

# What a run printed, for its log files only (Hydra's job log, ``train.log``): see `file_log`.
FILE_LOGGER = "sweeplr.report"


class _PipeGuard:
    """Standard output until its reader closes it (``... | head``); then nowhere.

    Training goes on and every record is still written: only the printing stops. Python
    would raise ``BrokenPipeError`` from the next write or flush instead, ending the sweep.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: already closed here
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._silence()

    def _silence(self) -> None:
        self._closed = True
        # Point the file descriptor itself at /dev/null: every other stream object writing to
        # it (data still in a buffer, a handler holding the old sys.stdout) then succeeds.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_stdout() -> None:
    """Make a closed standard output (``| head``) end the printing, not the process.

    Idempotent. Logging handlers already writing to the old ``sys.stdout`` are pointed at
    the guard too.
    """
    if isinstance(sys.stdout, _PipeGuard) or sys.stdout is None:
        return
    original = sys.stdout
    sys.stdout = guard = _PipeGuard(original)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                handler.setStream(guard)


def file_log() -> logging.Logger:
    """The logger whose records reach the run's log files and no console.

    What a run reports is printed (the console's words and layout are sweeplr's, not a log
    format's); its job's log file should hold it too. Hydra's job logging owns the files: this
    logger writes to the file handlers the root logger has now (``hydra/job_logging=default``'s
    ``${hydra.job.name}.log``, or a user's own config's), to none under ``disabled``, and never to
    a console. Rebuilt at each use: Hydra configures logging anew for every job of a sweep.
    """
    logger = logging.getLogger(FILE_LOGGER)
    logger.propagate = False  # the root's console handlers would print it twice
    files: list[logging.Handler] = [
        h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
    ]
    # No file (a `sweeplr` command): a null handler, or logging's last resort would print a
    # warning a second time.
    logger.handlers = files or [logging.NullHandler()]
    return logger


def quiet_log_file_errors() -> None:
    """A log file that cannot be written (a full disk) is one warning line, not logging's
    ``--- Logging error ---`` traceback at every record.

    Hydra's job logging owns the files (``logging.FileHandler``s of the root logger, configured
    anew or re-pointed for each job); each gets this handler's ``handleError`` for an
    ``OSError``. The run's own error (its record could not be written) stays the last word.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and "handleError" not in vars(handler):
            handler.handleError = partial(_log_file_error, handler)  # type: ignore[method-assign]


_unwritable_logs: set[str] = set()  # the files already warned about, once per process


def _log_file_error(handler: logging.FileHandler, record: logging.LogRecord) -> None:
    error = sys.exc_info()[1]
    if not isinstance(error, OSError):
        logging.FileHandler.handleError(handler, record)
        return
    if handler.baseFilename in _unwritable_logs:
        return
    _unwritable_logs.add(handler.baseFilename)
    with contextlib.suppress(OSError, ValueError):  # a closed or full standard error too
        sys.stderr.write(
            f"warning: the log file {handler.baseFilename} is not written: "
            f"{error.strerror or error}\n"
        )


def show(text: str, level: int = logging.INFO) -> None:
    """Print what a run reports (warnings on standard error) and keep it in its log file."""
    print(text, file=sys.stderr if level >= logging.WARNING else sys.stdout)
    file_log().log(level, text)


def end_with_error(message: str) -> NoReturn:
    """End a single run with its one-line error (exit status 1), kept in its log file too."""
    file_log().error(message)
    sys.exit(message)


def _early_stopping_note(best_epoch: int | None) -> str:
    if best_epoch is None:  # restore_best=false: the record names no weights it lacks
        return " (early stopping, last weights kept)"
    return f" (early stopping: best epoch {best_epoch})"


def format_report(record: Mapping[str, Any], run_dir: str | Path) -> str:
    """The short block printed at the end of a single run."""
    hp = record["hyperparameters"]
    data = record["data"]
    diverged = record.get("diverged_epoch")
    best = record.get("best_epoch")
    schedule = hp.get("scheduler", "constant")
    cv = record.get("cv")
    penalty = hp.get("penalty") or "none"
    lbfgs = hp.get("optimizer") == "lbfgs"  # it counts iterations, and stops when converged
    # Ended before its budget, and completed: L-BFGS converged, or early stopping stopped it.
    ended_early = record["status"] == "completed" and record["epochs_run"] < hp["epochs"]
    converged = lbfgs and ended_early
    # A first-order run completed before its budget: early stopping stopped it (its best
    # epoch is recorded only when the run kept that epoch's weights).
    stopped_early = ended_early and not lbfgs
    lines = [
        f"sweeplr: {record['status']} after {record['epochs_run']} "
        f"{'iterations' if lbfgs else 'epochs'}"
        + (" (converged)" if converged else "")
        + f" in {record['wall_seconds']:.2f} s"
        + (f" (loss non-finite at epoch {diverged})" if diverged else "")
        + (_early_stopping_note(best) if stopped_early else ""),
        (
            f"  {hp['dataset']} ({data['n_train']} train / "
            + (f"{cv['folds']}-fold cv" if cv else f"{data['n_val']} val")
            + f" / {data['n_test']} test rows), {hp['optimizer']} lr={hp['lr']:g}"
            + ("" if schedule == "constant" else f" ({schedule})")
            + ("" if penalty == "none" else f", {penalty} C={hp['C']:g}")
            + (f" l1_ratio={hp['l1_ratio']:g}" if hp.get("l1_ratio") is not None else "")
            + (f", class_weight={hp['class_weight']}" if hp.get("class_weight") else "")
            + f", seed={record['seed']}"
        ),
        f"  {'split':<6}" + "".join(f"{name:>10}" for name in METRICS),
    ]

    def cell(value: float | None) -> str:
        return f"{value:>10.4f}" if value is not None else f"{'-':>10}"

    for name in SPLITS:
        values = record["metrics"][name]
        lines.append(f"  {name:<6}" + "".join(cell(values[m]) for m in METRICS))
        if name == "val" and cv:  # the folds' means above, their spread here
            lines.append(f"  {'± std':<6}" + "".join(cell(cv["val_std"][m]) for m in METRICS))
    sparsity = record.get("weights")
    if sparsity:  # an L1 penalty's point: weights that are exactly zero
        lines.append(f"  weights: {sparsity['zero']} of {sparsity['count']} exactly zero")
    objective = record["objective"]
    value = "-" if objective["value"] is None else f"{objective['value']:.6g}"
    lines.append(f"  objective {objective['name']} = {value} ({objective['direction']})")
    lines.append(f"  record: {Path(run_dir).resolve()}")
    return "\n".join(lines)


def job_line(record: Mapping[str, Any], job_num: Any, overrides: Sequence[str]) -> str:
    """One line per job of a sweep: its status, objective and overrides."""
    objective = record["objective"]
    return (
        f"[job {job_num}] {record['status']} {objective['name']}={objective['value']} "
        f"({' '.join(overrides)})"
    )


def progress_printer(epochs: int, stream: TextIO | None = None) -> Any:
    """A one-line progress display for a terminal, refreshed at most every 0.2 s."""
    out = stream or sys.stderr
    last = [0.0]

    def show(epoch: int, train_loss: float, val_loss: float, val_accuracy: float) -> bool:
        now = time.monotonic()
        if now - last[0] >= 0.2 or epoch == epochs:
            last[0] = now
            out.write(
                f"\repoch {epoch}/{epochs}  train loss {train_loss:.4f}  "
                f"val loss {val_loss:.4f}  val acc {val_accuracy:.3f}"
            )
            if epoch == epochs:
                out.write("\n")
            out.flush()
        return False

    return show


def end_interrupted(where: str) -> None:
    """Ctrl-C or SIGTERM: one line instead of a traceback, and the shell's exit status 130.

    Records are written atomically, so what is on disk is whole; ``where`` says what is kept.
    """
    show(f"interrupted: {where}", logging.ERROR)
    raise SystemExit(130)
