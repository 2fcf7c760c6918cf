"""A worker killed after any one of its study writes, at every such point (no subprocess).

A kill lands between two writes of the study's journal. Each test here stops a worker after
its k-th write, for every k, by failing the (k+1)-th as SIGKILL would end the process there,
and lets the next worker, reading the journal afresh, repair the study and finish it: no
trial may be left RUNNING or WAITING, and the study ends with exactly ``n_trials``.
"""

import datetime
import itertools
import json

import optuna
import psutil
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from sweeplr import studies
from sweeplr.studies import (
    WORKER_ATTR,
    BatchedJournalFile,
    ask_marked,
    budget_used,
    is_stale,
    requeue_stale_trials,
    superseded_numbers,
    worker_identity,
)
from tests.test_studies import dead_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TRIALS = 3
STUDY = "s"


class Killed(BaseException):
    """The worker's process ended here: the write that raised it never happened."""


@pytest.fixture(scope="module")
def dead() -> str:
    """The identity of a process of this host that has ended: the killed workers'."""
    return dead_worker()


def open_study(path) -> tuple[optuna.Study, JournalStorage]:
    """The study as a newly started worker reads it: its own storage, replayed from the file."""
    journal = BatchedJournalFile(str(path))
    journal.deferred = True  # no fsync: a kill, unlike a power cut, keeps what was written
    storage = JournalStorage(journal)
    return optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True), storage


def seeded(number: int) -> optuna.samplers.BaseSampler:
    """The sweeper's seeded sampler for the trial numbered ``number`` (seed 0)."""
    return optuna.samplers.RandomSampler(seed=number)


def run_trial(study: optuna.Study, storage: JournalStorage) -> None:
    """One trial's writes in the sweeper's order: asked (and marked), its parameters
    suggested, its run folder, its value told."""
    trial = ask_marked(study, storage, seeded)
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    trial.suggest_categorical("optimizer", ["sgd", "adam"])
    trial.set_user_attr("run_dir", f"runs/{trial.number}")
    study.tell(trial, lr)


def worker(path) -> None:
    """What a sweep process does to its study: repair what dead workers left, then trials
    until ``N_TRIALS`` count and none is queued."""
    study, storage = open_study(path)
    requeue_stale_trials(study, storage, grace_period=3600)  # no waiting: dead is dead
    assert not study.get_trials(states=(TrialState.RUNNING,)), "a dead worker's trial is left"
    while True:
        trials = study.get_trials(deepcopy=False)
        if budget_used(trials) >= N_TRIALS and not any(
            t.state == TrialState.WAITING for t in trials
        ):
            return
        run_trial(study, storage)


def killed_after(monkeypatch, dead: str, writes: int, path) -> bool:
    """Run :func:`worker` as the process ``dead``, which dies after its ``writes``-th journal
    write; whether it died before it was done."""
    count = itertools.count()
    append = BatchedJournalFile.append_logs

    def append_or_die(self, logs):
        if next(count) == writes:
            raise Killed
        append(self, logs)

    with monkeypatch.context() as patched:
        patched.setattr(BatchedJournalFile, "append_logs", append_or_die)
        patched.setattr(studies, "worker_identity", lambda: dead)
        try:
            worker(path)
        except Killed:
            return True
    return False


def assert_finished_exactly(path) -> None:
    study, _ = open_study(path)
    trials = study.trials
    assert [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []
    assert budget_used(trials) == N_TRIALS
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert len({t.params["lr"] for t in complete}) == N_TRIALS  # no proposal made twice
    superseded = superseded_numbers(trials)
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        assert failed.number in superseded  # every failure was re-queued, once
        # its own retry: the last number of a retry's history is the trial it stands in for
        (retry,) = [
            t for t in trials if t.system_attrs.get("retry_history", [-1])[-1] == failed.number
        ]
        assert failed.params.items() <= retry.params.items()  # with what it had


# A fresh study's first worker writes the study, then 6 records a trial (queued with its
# worker's mark, RUNNING, 2 parameters, run folder, value): kills in its first two trials.
# The next worker is killed after each of its first writes: the study, the repair (the retry
# queued, the dead trial failed), then the retry marked, taken, suggested and told.
@pytest.mark.parametrize("second", range(1 + 2 + 6))
@pytest.mark.parametrize("first", range(1 + 2 * 6))
def test_a_worker_killed_after_any_write_then_the_next_in_its_repair(
    tmp_path, monkeypatch, dead, first, second
):
    path = tmp_path / "optuna.journal"
    assert killed_after(monkeypatch, dead, first, path)
    assert killed_after(monkeypatch, dead, second, path)
    worker(path)  # a third worker, not killed
    assert_finished_exactly(path)


def test_a_trial_is_marked_in_the_write_that_creates_or_queues_it(tmp_path):
    """A kill can leave no trial RUNNING without its worker's mark, nor with another's."""
    path = tmp_path / "optuna.journal"
    study, storage = open_study(path)
    study.enqueue_trial({"lr": 0.1})  # queued unmarked (a user's): marked before it is taken
    queued, created = ask_marked(study, storage), ask_marked(study, storage)
    me = worker_identity()
    assert [t.system_attrs[WORKER_ATTR] for t in study.trials] == [me, me]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (creation,) = [
        r for r in records if r["op_code"] == 4 and WORKER_ATTR in r.get("system_attrs", {})
    ]
    assert creation["state"] == TrialState.WAITING  # then taken by study.ask, marked
    assert (queued.number, created.number) == (0, 1)
    # A live worker's trials are not another worker's to repair, however short the grace.
    assert requeue_stale_trials(study, storage, grace_period=0) == []


def test_a_running_trial_that_names_no_worker(tmp_path):
    """An older sweeplr killed between asking and marking left one: under the study's lock it
    is an orphan, failed and re-queued at once when it started before the repairing worker.
    One that started since is another Optuna client's: it waits out the grace period."""
    study, storage = open_study(tmp_path / "j")
    this_worker_started = psutil.Process().create_time()
    orphan = optuna.trial.create_trial(state=TrialState.RUNNING)
    orphan.datetime_start = datetime.datetime.fromtimestamp(this_worker_started - 1)
    study.add_trial(orphan)
    client = study.ask()  # plain Optuna, now: no mark
    frozen = study.trials
    assert is_stale(frozen[0], grace_period=3600, unmarked_before=this_worker_started)
    assert not is_stale(frozen[1], grace_period=3600, unmarked_before=this_worker_started)
    assert requeue_stale_trials(study, storage, grace_period=3600) == [0]
    assert [t.state for t in study.trials] == [
        TrialState.FAIL,
        TrialState.RUNNING,
        TrialState.WAITING,
    ]
    later = frozen[1].datetime_start.timestamp() + 61
    assert is_stale(study.trials[client.number], grace_period=60, now=later)
