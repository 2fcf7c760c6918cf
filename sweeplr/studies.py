"""Optuna studies shared between a sweep and its jobs: storage, trial links, liveness. No Hydra.

The sweeper owns the study; each job reaches its own trial through the same storage (a journal
file in the sweep directory by default, or any Optuna storage URL) to report intermediate values
and ask whether to stop. Workers stamp the trials they run with who they are and a heartbeat, so
a later sweep can tell a trial whose process died from one still running elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import psutil
import sqlalchemy
from filelock import FileLock
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from sweeplr.errors import SweeplrError, first_line
from sweeplr.schema import DIVERGED, PRUNED

log = logging.getLogger(__name__)

# What a storage that went away raises: a database (SQLAlchemy, or Optuna's wrapper of it), a
# journal file (OSError), or a missing database driver.
STORAGE_ERRORS = (
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    OSError,
    ImportError,
)

DEFAULT_JOURNAL = "optuna.journal"
WORKER_ATTR = "sweeplr:worker"
HEARTBEAT_ATTR = "sweeplr:heartbeat"
STOPPED_ATTR = "sweeplr:stopped"  # a user attribute: the job's trial stopped early, and why
ATTEMPT_ATTRS = frozenset({STOPPED_ATTR, "run_dir", "status"})
RETRY_ATTR = "failed_trial"  # the key Optuna's RetryHeartbeatStaleTrialCallback uses too


def storage_url(spec: str | None, sweep_dir: str | Path) -> str:
    """Normalise a storage spec: None -> the sweep's journal file; paths made absolute."""
    if spec is None or str(spec) == "":
        return f"journal:{(Path(sweep_dir) / DEFAULT_JOURNAL).resolve()}"
    spec = str(spec)
    if "://" in spec:
        return spec
    path = spec.removeprefix("journal:")
    return f"journal:{Path(path).resolve()}"


def public_storage(url: str) -> str:
    """A storage as other tools take it: a journal by its file's path (optuna-dashboard, and
    ``hydra.sweeper.storage`` here), a database by its URL (those and ``optuna.load_study``)."""
    return url.removeprefix("journal:")


def dashboard_command(url: str) -> str:
    """The shell command that opens the study's storage in optuna-dashboard."""
    return f"optuna-dashboard {shlex.quote(public_storage(url))}"


def load_study_code(url: str, study_name: str) -> str:
    """One Python line that loads the study. ``optuna.load_study`` takes a string only as a
    database URL; a journal file needs its storage object."""
    name = json.dumps(study_name)
    if url.startswith("journal:"):
        path = json.dumps(public_storage(url))
        storage = (
            f"optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend({path}))"
        )
    else:
        storage = json.dumps(url)
    return f"optuna.load_study(study_name={name}, storage={storage})"


class BatchedJournalFile(JournalFileBackend):
    """Optuna's journal file, whose appends inside `one_fsync` share one fsync at its end.

    Optuna fsyncs every append, and a trial takes about eight (its creation with the worker
    stamp, its start, each parameter, the run folder, the result): 2-4 ms each on this disk, more
    than the 500 epochs of a blobs trial. A sweep needs its study durable at two points only:
    before a trial's run folder is written (a folder always belongs to a stored trial) and once
    it has told a batch. Inside the block each append is still written and flushed whole,
    under Optuna's own lock, as Optuna writes it, so other processes read it at once (the
    page cache, or NFS's close-to-open); only the fsync waits for the block's end.
    """

    deferred = False

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)  # creates the file if it is missing
        stat = os.stat(file_path)
        self._identity = (stat.st_dev, stat.st_ino)
        self._first_line: bytes | None = None

    def is_its_file(self) -> bool:
        """Whether the file at this journal's path is still the one it has read: not deleted,
        replaced, or cut below what was read (a sweep directory removed and made again, as
        tests and notebooks do). Optuna's backend reads on from the byte it stopped at, so a
        replaced file would be read from the middle, against a replayed study it never held.
        """
        try:
            stat = os.stat(self._file_path)
            with open(self._file_path, "rb") as handle:
                first_line = handle.readline()
        except FileNotFoundError:
            return False
        # Optuna 5 (pinned) keeps the byte offset of each line it has read.
        read = max(self._log_number_offset.values())
        if (stat.st_dev, stat.st_ino) != self._identity or stat.st_size < read:
            return False
        # An inode number is reused at once after a delete; a journal's first line names the
        # worker that wrote it (a random id), so a new file's differs.
        return read == 0 or first_line == self._first_line

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        yield from super().read_logs(log_number_from)
        if self._first_line is None and 1 in self._log_number_offset:  # the first line read
            with open(self._file_path, "rb") as handle:
                self._first_line = handle.read(self._log_number_offset[1])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not self.deferred:
            super().append_logs(logs)
            return
        from optuna.storages.journal._file import get_lock_file

        # Optuna's append_logs (optuna 5, pinned), less its fsync.
        with get_lock_file(self._lock):
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()

    def fsync(self) -> None:
        fd = os.open(self._file_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_storages: dict[str, BaseStorage] = {}
_journals: dict[str, BatchedJournalFile] = {}


@contextmanager
def one_fsync(url: str) -> Iterator[None]:
    """The study's writes in the block made durable by one fsync at its end (see
    `BatchedJournalFile`); a database storage commits each write as before."""
    journal = _journals.get(url)
    if journal is None or journal.deferred:
        yield
        return
    journal.deferred = True
    try:
        yield
    finally:
        journal.deferred = False
        journal.fsync()


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage for a URL from :func:`storage_url`, one object per URL and process.

    Shared, because opening one is the expensive part: a journal replays its whole file, a
    database connects. The sweeper and the jobs it runs in its own process (basic or batched
    launcher) then read each other's writes without replaying or reconnecting. A journal whose
    file is no longer the one it read (:meth:`BatchedJournalFile.is_its_file`) is opened anew.
    """
    storage = _storages.get(url)
    journal = _journals.get(url)
    if journal is not None and not journal.is_its_file():
        storage = None
    if storage is None:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            journal = _journals[url] = BatchedJournalFile(str(path))
            storage = JournalStorage(journal)
        else:
            storage = optuna.storages.RDBStorage(url)
        _storages[url] = storage
    return storage


def load_sweep_study(
    sweeper: Mapping[str, Any], sweep_dir: str | Path | None = None
) -> optuna.Study | None:
    """The study a sweeplr_optuna sweep names in its sweeper config (``storage`` and
    ``study_name``, as the sweeper settles them); None for a sweep that has none.

    Reading creates nothing: a journal or SQLite file that is not there is a
    :class:`SweeplrError` naming it (Optuna would start an empty one). A sweep directory moved
    since, with its own journal, is read from where it is now (``sweep_dir``).
    """
    storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
    if not (storage and study_name):
        return None
    url = str(storage)
    path = _storage_file(url)
    if path is not None and not path.is_file():
        here = Path(sweep_dir) / DEFAULT_JOURNAL if sweep_dir is not None else None
        if not (url.startswith("journal:") and here is not None and here.is_file()):
            raise SweeplrError(
                f"the study {study_name} is stored in {path}, which does not exist; "
                "allowed: the storage the sweep wrote (or its sweep directory, moved whole)"
            )
        url = storage_url(None, here.parent)
    return optuna.load_study(study_name=str(study_name), storage=open_storage(url))


def _storage_file(url: str) -> Path | None:
    """The file a journal or SQLite storage lives in; None for a database server."""
    if url.startswith("journal:"):
        return Path(public_storage(url))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def repair_journal(url: str) -> str | None:
    """Cut a torn last line off a journal file; a note of what was done, or None.

    A crash, a kill or a full disk during Optuna's append can leave half a line at the end of
    the journal. Optuna reads past it, but its next append would run on from the half line into
    a record no reader can parse. Under Optuna's own journal lock (no worker is appending), the
    file is copied aside and cut back to its last whole line. A damaged line anywhere else is
    not a crash's doing: one error naming the file and the line, the file left alone.
    """
    if not url.startswith("journal:"):
        return None
    path = Path(url.removeprefix("journal:"))
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1  # bytes up to and including the last line end
        for number, line in enumerate(data[:whole].splitlines(), start=1):
            try:
                json.loads(line)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                raise SweeplrError(
                    f"{path} line {number} is not an Optuna journal record ({first_line(exc)});"
                    " allowed: a journal Optuna wrote (restore it from a copy, or start "
                    "another study)"
                ) from None
        if whole == len(data):
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        with open(path, "r+b") as handle:
            handle.truncate(whole)
            handle.flush()
            os.fsync(handle.fileno())
        return (
            f"{path} ended in a torn line ({len(data) - whole} bytes, from an interrupted "
            f"write); cut it off, a copy of the file is {backup.name}"
        )
    finally:
        lock.release()


def lock_path(url: str, sweep_dir: str | Path) -> Path:
    """The file that serialises trial bookkeeping between workers on one machine."""
    # Not "<journal>.lock": Optuna's journal backend uses that name for its own lock.
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:") + ".sweeplr-lock")
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///") + ".sweeplr-lock")
    return Path(sweep_dir) / ".sweeplr-study.lock"


_engines: dict[str, Any] = {}


@contextmanager
def study_lock(url: str, sweep_dir: str | Path, study_name: str) -> Iterator[None]:
    """Serialise trial bookkeeping (counting, asking, re-queueing) between workers.

    A PostgreSQL storage is shared by machines, so its lock is a PostgreSQL advisory lock;
    a journal or SQLite file is shared through a file system, so a ``flock`` beside it. Any
    other URL gets a lock file in the sweep directory: exact between workers of one machine.
    """
    if url.startswith(("postgresql", "postgres")):
        engine = _engines.get(url) or _engines.setdefault(
            url, sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        )
        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    with file_lock(lock_path(url, sweep_dir)):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes, held for the ``with`` block.

    ``filelock`` (a dependency of torch already): ``flock`` on Linux and macOS, ``msvcrt`` on
    Windows, rather than a hand-written ``fcntl`` call that exists on Unix alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (guards against a reused pid), or None if none runs."""
    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def worker_identity() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_started(pid)}"


def _worker_alive(identity: str) -> bool | None:
    """True/False for a worker on this host; None when it runs elsewhere (ask the heartbeat).

    ``psutil`` tells a process's start time on Linux, macOS and Windows alike.
    """
    host, pid, started = identity.rsplit(":", 2)
    if host != socket.gethostname():
        return None
    return _process_started(int(pid)) == started


def is_stale(
    trial: FrozenTrial,
    grace_period: float,
    now: float | None = None,
    unmarked_before: float | None = None,
) -> bool:
    """A RUNNING trial whose worker is gone (same host) or silent for ``grace_period`` seconds.

    A worker marks a trial under the study's lock (:func:`ask_marked`; before it, right after
    asking, under the same lock), so a RUNNING trial that names no worker, seen under the lock,
    is one whose worker was killed between asking and marking, or another Optuna client's. One
    that started before ``unmarked_before`` (the repairing worker's own start) is stale at
    once; a younger one, which only another client can have made, waits out ``grace_period``
    from its start, as a silent remote trial does.
    """
    if trial.state != TrialState.RUNNING:
        return False
    identity = trial.system_attrs.get(WORKER_ATTR)
    if identity is not None:
        alive = _worker_alive(identity)
        if alive is not None:
            return not alive
    started = trial.datetime_start.timestamp() if trial.datetime_start is not None else None
    if identity is None and started is not None and started < (unmarked_before or -math.inf):
        return True
    last_beat = trial.system_attrs.get(HEARTBEAT_ATTR, started)
    if last_beat is None:
        return False
    return (now or time.time()) - float(last_beat) > grace_period


def superseded_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of trials that were re-queued: their retry stands in for them (failed, or still
    RUNNING if a kill came between queueing the retry and failing it; see :func:`requeue`)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def budget_used(trials: list[FrozenTrial]) -> int:
    """Trials that count towards ``n_trials``: every trial but the re-queued ones."""
    superseded = superseded_numbers(trials)
    return sum(1 for t in trials if t.number not in superseded)


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of a study's trial ``number``.

    Through Optuna's storage API (``BaseStorage``), with the storage :func:`open_storage`
    returns: sweeplr needs no private attribute of a study or trial (``study._storage``,
    ``trial._trial_id``) to reach a trial.
    """
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def ask_marked(
    study: optuna.Study,
    storage: BaseStorage,
    samplers: Callable[[int], optuna.samplers.BaseSampler] | None = None,
) -> optuna.Trial:
    """``study.ask()``, its trial marked as this worker's before it is RUNNING.

    ``ask`` takes the study's first WAITING trial, or creates one, and a mark set after it
    would be a second write: a kill between the two left a RUNNING trial that names no worker,
    which a resume cannot tell from one a live worker runs. So the trial ``ask`` is about to
    take is marked first: the first WAITING trial, or a new one queued with the mark in the
    write that creates it. A kill after the mark leaves a WAITING trial, which the next ask
    takes and marks again. Call under :func:`study_lock`, so no worker takes a trial another
    one marked.

    ``samplers(number)``, when given, becomes the study's sampler before the trial numbered
    ``number`` is asked: a seeded sampler proposes for a queued trial from its own number, as
    for a new one, not from a number a new trial will take too.
    """
    identity = worker_identity()
    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]  # in ask's order
    if waiting:
        number = waiting[0]
        storage.set_trial_system_attr(
            trial_id(storage, study.study_name, number), WORKER_ATTR, identity
        )
    else:
        number = len(trials)  # the number of the trial queued next
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING, system_attrs={WORKER_ATTR: identity}
            )
        )
    if samplers is not None:
        study.sampler = samplers(number)
    return study.ask()


def requeue(study: optuna.Study, storage: BaseStorage, trial: FrozenTrial) -> None:
    """Queue a RUNNING trial's parameters again as a WAITING trial, then fail it.

    The retry is queued first and only once: a kill between the two writes leaves the trial
    RUNNING beside its retry (which already stands in for it in :func:`budget_used`), and the
    next repair only fails it. The other order would leave a failed trial without a retry,
    its parameters lost and the failure counted towards ``n_trials``.

    The state is set through the storage, not ``study.tell``: a sampler's ``after_trial``
    (the grid sampler's stop, TPE's bookkeeping) has no business with a trial run again.
    """
    number = trial.number
    if number not in superseded_numbers(study.get_trials(deepcopy=False)):
        history = [*trial.system_attrs.get("retry_history", []), number]
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                # What the failed attempt recorded about itself is not the retry's.
                user_attrs={k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS},
                system_attrs={RETRY_ATTR: history[0], "retry_history": history},
            )
        )
    storage.set_trial_state_values(trial_id(storage, study.study_name, number), TrialState.FAIL)


def requeue_stale_trials(
    study: optuna.Study,
    storage: BaseStorage,
    grace_period: float,
    settle: Callable[[FrozenTrial], bool] | None = None,
) -> list[int]:
    """Fail every stale RUNNING trial and queue its parameters again; returns their numbers.

    ``settle(trial)`` comes first: it may tell a trial whose job did finish (its worker died
    before telling) and return True; that trial is not run again. Call under
    :func:`study_lock` so two workers do not settle or re-queue the same trial twice, and so
    that a trial naming no worker is none a worker is asking (see :func:`is_stale`).
    """
    started = psutil.Process().create_time()
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if is_stale(t, grace_period, unmarked_before=started)
    ]
    requeued = []
    for trial in stale:
        if settle is None or not settle(trial):
            requeue(study, storage, trial)
            requeued.append(trial.number)
    return requeued


class Heartbeat:
    """Stamp trials this process runs with a timestamp every ``interval`` seconds.

    Trials are named by their storage id (:func:`trial_id`); the stamps are system attributes,
    which Optuna sets through its storage API alone.
    """

    def __init__(self, storage: BaseStorage, interval: float) -> None:
        self._storage = storage
        self._interval = interval
        self._trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeplr-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        # No beat now: the trial's start time is its first (is_stale reads it), and its worker
        # mark was written as it was asked (ask_marked).
        with self._lock:
            self._trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._trial_ids)
            for trial_id in ids:
                try:
                    self._storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except UpdateFinishedTrialError:  # it finished between the copy and the stamp
                    self.discard(trial_id)
                except STORAGE_ERRORS as exc:
                    # The sweep itself reports a lost storage, once; a heartbeat only retries.
                    log.debug(f"heartbeat of trial {trial_id} not recorded: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)


class TrialLink:
    """A job's handle on its own trial of a study, through the study's shared storage."""

    def __init__(
        self,
        url: str,
        study_name: str,
        number: int,
        pruner: optuna.pruners.BasePruner | None,
    ) -> None:
        storage = open_storage(url)
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        self._trial = optuna.Trial(study, trial_id(storage, study_name, number))
        self._url, self._storage = url, storage
        self.number = number
        self.study_name = study_name
        # Optuna takes intermediate values, and prunes, in single-objective studies only (the
        # sweeper refuses a pruner with several directions; another client may not).
        self._single_objective = len(study.directions) == 1
        self.has_pruner = pruner is not None and self._single_objective

    def is_current(self) -> bool:
        """Whether this link reaches its study through the storage its URL opens now (not one
        replaced since, see :func:`open_storage`)."""
        return open_storage(self._url) is self._storage

    def report(self, step: int, value: float) -> bool:
        """Report ``value`` at ``step``; True when the trial should stop now.

        A non-finite value stops the trial as ``diverged`` (not reported: an infinity would
        skew the pruner's statistics for every other trial); otherwise the pruner decides, and
        a trial it stops is marked ``pruned`` for the sweeper. A multi-objective study's trial
        only stops on divergence.
        """
        if not math.isfinite(value):
            self.stop(DIVERGED, step)
            return True
        if self._single_objective:
            self._trial.report(value, step=step)
        if self.has_pruner and self._trial.should_prune():
            self.stop(PRUNED, step)
            return True
        return False

    def stop(self, status: str, step: int | None) -> None:
        """Tell the sweeper that this trial stopped early (``pruned`` or ``diverged``)."""
        self._trial.set_user_attr(STOPPED_ATTR, {"status": status, "step": step})
