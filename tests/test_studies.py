"""Study bookkeeping shared by the Optuna sweeper and its jobs (no subprocess)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplr.errors import SweeplrError
from sweeplr.plugins.optuna_sweeper import default_study_name
from sweeplr.studies import (
    HEARTBEAT_ATTR,
    STOPPED_ATTR,
    WORKER_ATTR,
    TrialLink,
    budget_used,
    is_stale,
    open_storage,
    repair_journal,
    requeue_stale_trials,
    storage_url,
    trial_id,
    worker_identity,
)
from sweeplr.study_session import batch_limit, checked_values
from tests.conftest import ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_storage_url_defaults_to_a_journal_in_the_sweep_dir(tmp_path):
    assert storage_url(None, tmp_path) == f"journal:{tmp_path.resolve()}/optuna.journal"
    assert storage_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    assert storage_url("rel/s.journal", tmp_path).startswith("journal:/")


def dead_worker() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = f"{socket.gethostname()}:{proc.pid}:1"
    proc.wait()
    return identity


def study_with_running_trial(tmp_path, worker: str):
    storage = open_storage(storage_url(None, tmp_path))
    study = optuna.create_study(storage=storage)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0)})
    stored_id = trial_id(storage, study.study_name, trial.number)
    storage.set_trial_system_attr(stored_id, WORKER_ATTR, worker)
    storage.set_trial_system_attr(stored_id, HEARTBEAT_ATTR, time.time())
    return study, storage, trial


def test_a_trial_of_a_dead_local_process_is_stale_and_requeued_once(tmp_path):
    study, storage, trial = study_with_running_trial(tmp_path, dead_worker())
    assert is_stale(study.trials[0], grace_period=3600)
    assert requeue_stale_trials(study, storage, grace_period=3600) == [trial.number]
    assert requeue_stale_trials(study, storage, grace_period=3600) == []
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params
    assert budget_used(study.trials) == 1  # the failure is superseded by its retry


def test_a_trial_killed_while_suggesting_is_retried_with_what_it_had(tmp_path):
    """A kill between two parameter writes leaves a trial with some of its parameters; its
    retry keeps those and the sampler fills in the rest."""
    study, storage, trial = study_with_running_trial(tmp_path, dead_worker())
    assert set(trial.params) == {"lr"}  # "wd" was never written
    requeue_stale_trials(study, storage, grace_period=3600)
    retry = study.ask()
    assert retry.number == 1 and retry.params == trial.params
    assert retry.suggest_float("lr", 1e-3, 1.0) == trial.params["lr"]
    assert 0.0 <= retry.suggest_float("wd", 0.0, 0.01) <= 0.01
    assert set(storage.get_trial(retry._trial_id).params) == {"lr", "wd"}


def test_a_live_local_trial_is_not_stale(tmp_path):
    study, _, _ = study_with_running_trial(tmp_path, worker_identity())
    assert not is_stale(study.trials[0], grace_period=0)


def test_a_remote_trial_is_stale_only_after_its_heartbeat_goes_silent(tmp_path):
    study, _, _ = study_with_running_trial(tmp_path, "elsewhere:123:456")
    frozen = study.trials[0]
    assert not is_stale(frozen, grace_period=60)
    assert is_stale(frozen, grace_period=60, now=time.time() + 61)


def test_default_study_name_is_stable_and_ignores_budget_keys():
    sweeper = OmegaConf.create({"params": {"lr": "interval(0.1, 1)"}, "n_trials": 5})
    more = OmegaConf.create({"params": {"lr": "interval(0.1, 1)"}, "n_trials": 50})
    other = OmegaConf.create({"params": {"lr": "interval(0.2, 1)"}, "n_trials": 5})
    name = default_study_name(["sweep=optuna", "dataset=iris"], sweeper)
    assert name == default_study_name(["dataset=iris", "sweep=optuna"], more)
    assert name != default_study_name(["sweep=optuna", "dataset=iris"], other)
    assert name != default_study_name(["sweep=optuna"], sweeper)


def test_a_trial_link_reports_prunes_and_marks_divergence(tmp_path):
    url = storage_url(None, tmp_path)
    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    study = optuna.create_study(study_name="s", storage=open_storage(url), pruner=pruner)
    first, second = study.ask(), study.ask()
    link = TrialLink(url, "s", first.number, pruner)
    assert link.report(10, 0.4) is False
    assert STOPPED_ATTR not in study.trials[0].user_attrs
    assert link.report(20, 2.0) is True
    assert study.trials[0].intermediate_values == {10: 0.4, 20: 2.0}
    assert study.trials[0].user_attrs[STOPPED_ATTR] == {"status": "pruned", "step": 20}
    # A non-finite value stops the trial as diverged, and is not reported to the pruner.
    other = TrialLink(url, "s", second.number, None)
    assert other.report(5, float("nan")) is True
    assert study.trials[1].intermediate_values == {}
    assert study.trials[1].user_attrs[STOPPED_ATTR] == {"status": "diverged", "step": 5}


@pytest.mark.parametrize(
    ("returned", "directions", "expected"),
    [
        (0.5, 1, [0.5]),
        ("2", 1, [2.0]),
        ([1, 2.5], 2, [1.0, 2.5]),
        ((3, 4), 2, [3.0, 4.0]),
        (float("inf"), 1, [float("inf")]),  # a valid result Optuna ranks last
    ],
)
def test_checked_values_take_what_a_task_returns(returned, directions, expected):
    assert checked_values(returned, directions) == expected


@pytest.mark.parametrize(
    ("returned", "directions", "message"),
    [
        (None, 1, "float-castable"),
        ("x", 1, "float-castable"),
        (float("nan"), 1, "not acceptable"),
        ([1.0], 2, "mismatched"),
        (1.0, 2, "list or tuple"),
    ],
)
def test_checked_values_refuse_what_optuna_cannot_rank(returned, directions, message):
    with pytest.raises(ValueError, match=message):
        checked_values(returned, directions)


def test_worker_identity_names_this_process():
    host, pid, ticks = worker_identity().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid() and ticks != "None"


@pytest.mark.parametrize(
    ("direction", "app_config", "expected"),
    [
        ("auto", {"objective": "val_accuracy"}, ["maximize"]),  # sweeplr's key decides
        ("auto", {"objective": "val_loss"}, ["minimize"]),
        ("auto", {"objective": "mse"}, ["minimize"]),  # not sweeplr's: the stock default
        ("auto", {"x": 1}, ["minimize"]),
        ("minimize", {"objective": "val_loss"}, ["minimize"]),  # said outright: as said
        ("maximize", {"objective": "mse"}, ["maximize"]),  # not sweeplr's: as said
        (["minimize", "maximize"], {"objective": "val_loss"}, ["minimize", "maximize"]),
    ],
)
def test_the_study_direction(direction, app_config, expected):
    from sweeplr.plugins.optuna_sweeper import SweeplrOptunaSweeper

    sweeper = SweeplrOptunaSweeper(
        sampler=None,
        direction=OmegaConf.create({"d": direction}).d,
        storage=None,
        study_name=None,
        n_trials=1,
        n_jobs=1,
        max_failure_rate=0.0,
        custom_search_space=None,
        params=None,
    )
    sweeper.config = OmegaConf.create(app_config)
    assert sweeper._directions() == expected


@pytest.mark.parametrize(
    ("direction", "objective", "allowed"),
    [("maximize", "val_loss", "minimize"), ("minimize", "test_roc_auc", "maximize")],
)
def test_a_direction_against_the_objectives_own_is_one_error(direction, objective, allowed):
    """Optuna would rank trials against the summary (issue 22, 14)."""
    from sweeplr.plugins.optuna_sweeper import SweeplrOptunaSweeper

    sweeper = SweeplrOptunaSweeper(None, direction, None, None, 1, 1, 0.0, None, None)
    sweeper.config = OmegaConf.create({"objective": objective})
    message = (
        f"hydra.sweeper.direction={direction} is invalid with objective={objective}; "
        f"allowed: {allowed} or auto"
    )
    with pytest.raises(SweeplrError, match=f"^{re.escape(message)}"):
        sweeper._directions()


def test_a_multi_objective_trial_link_stops_on_divergence_alone(tmp_path):
    """Optuna takes no intermediate value of a multi-objective study (issue 22, 4): a job's
    report neither raises nor prunes; a non-finite value still stops it."""
    url = storage_url(None, tmp_path)
    study = optuna.create_study(
        study_name="s", storage=open_storage(url), directions=["minimize", "maximize"]
    )
    first, second = study.ask(), study.ask()
    link = TrialLink(url, "s", first.number, optuna.pruners.ThresholdPruner(upper=1.0))
    assert link.has_pruner is False
    assert link.report(10, 2.0) is False
    assert TrialLink(url, "s", second.number, None).report(5, float("inf")) is True
    assert study.trials[1].user_attrs[STOPPED_ATTR] == {"status": "diverged", "step": 5}
    assert STOPPED_ATTR not in study.trials[0].user_attrs


def test_journal_writes_in_one_fsync_are_read_at_once_and_synced_once(tmp_path, monkeypatch):
    """Inside one_fsync a worker's appends wait for one fsync, yet another reader of the file
    (another worker) sees them at once."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from sweeplr.studies import one_fsync

    url = storage_url(None, tmp_path)
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    fsyncs: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), fsync(fd)))
    other = JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    with one_fsync(url):
        trials = [study.ask() for _ in range(3)]
        for trial in trials:
            trial.suggest_float("x", 0, 1)
        assert fsyncs == []
        seen = other.get_all_trials(other.get_study_id_from_name("s"))
        assert [t.number for t in seen] == [0, 1, 2] and all("x" in t.params for t in seen)
    assert len(fsyncs) == 1
    study.tell(trials[0], 0.5)  # outside the block: Optuna's own fsync per append
    assert len(fsyncs) == 2


def test_batch_limit_follows_what_the_sampler_learns_from():
    def trials(**counts: int) -> list:
        states = [s for name, n in counts.items() for s in [TrialState[name.upper()]] * n]
        return [
            optuna.trial.create_trial(state=s, value=0.0 if s == TrialState.COMPLETE else None)
            for s in states
        ]

    tpe = OmegaConf.create({"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 10})
    assert batch_limit(tpe, []) == 10  # the random start-up, at once
    assert batch_limit(tpe, trials(complete=3, running=4)) == 3  # another worker runs 4
    assert batch_limit(tpe, trials(complete=10)) == 2
    assert batch_limit(tpe, trials(complete=30, pruned=10, fail=20)) == 10  # FAIL teaches nothing
    random = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler"})
    assert batch_limit(random, []) == batch_limit(random, trials(complete=2)) > 10**6


def test_a_study_is_named_as_other_tools_take_it(tmp_path):
    from sweeplr.studies import dashboard_command, load_study_code, public_storage

    folder = tmp_path / "a sweep"  # a space: the command must quote it
    url = storage_url(None, folder)
    study = optuna.create_study(storage=open_storage(url), study_name='it\'s "mine"')
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert public_storage(url) == str(folder.resolve() / "optuna.journal")
    assert dashboard_command(url) == f"optuna-dashboard '{folder.resolve()}/optuna.journal'"
    loaded = eval(load_study_code(url, study.study_name), {"optuna": optuna})
    assert [t.value for t in loaded.trials] == [t.value for t in study.trials]
    db = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=db, study_name="db")
    assert public_storage(db) == db and 'storage="sqlite:///' in load_study_code(db, "db")
    assert optuna.load_study(study_name="db", storage=public_storage(db)).study_name == "db"


def journal_study(tmp_path: Path, n_trials: int) -> tuple[str, Path]:
    url = storage_url(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n_trials)
    return url, Path(url.removeprefix("journal:"))


def test_a_torn_journal_is_cut_back_with_a_copy_kept(tmp_path):
    url, path = journal_study(tmp_path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "tri')  # a write cut short

    note = repair_journal(url)
    assert note is not None and "torn line" in note and str(path) in note
    (backup,) = tmp_path.glob("optuna.journal.torn-*")
    assert backup.read_bytes() == whole + b'{"op_code": 5, "worker_id": "x", "tri'
    assert path.read_bytes() == whole
    assert repair_journal(url) is None  # whole again: nothing to do

    # The resume Optuna would have ruined: append, then read back in a fresh process state.
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    code = (
        "import optuna; from optuna.storages.journal import JournalFileBackend as B, "
        f"JournalStorage as S; s = optuna.load_study(study_name='s', storage=S(B({str(path)!r})));"
        "print(len(s.trials))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert fresh.stdout.strip() == "4", fresh.stderr


@pytest.mark.parametrize("garbage", [b"not json at all\n", b"\xff\xfe\x00 binary\n"])
def test_garbage_inside_a_journal_is_one_error_naming_the_line(tmp_path, garbage):
    url, path = journal_study(tmp_path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], garbage, *lines[1:]])
    path.write_bytes(damaged)
    with pytest.raises(SweeplrError) as error:
        repair_journal(url)
    assert str(error.value).startswith(f"{path} line 2 is not an Optuna journal record (")
    assert "\n" not in str(error.value)
    assert path.read_bytes() == damaged  # left as it was for the user to restore
    assert not list(tmp_path.glob("optuna.journal.torn-*"))


def test_liveness_goes_through_psutil_alone(monkeypatch):
    """Off Linux there is no /proc: a worker's start time comes from psutil, as it gives it on
    macOS and Windows (faked here), so a live trial is never taken for a stale one."""
    import psutil

    from sweeplr import studies

    class Process:  # what psutil answers on any platform
        def __init__(self, pid: int) -> None:
            if pid != os.getpid():
                raise psutil.NoSuchProcess(pid)

        def create_time(self) -> float:
            return 1234.5

    monkeypatch.setattr(studies.psutil, "Process", Process)
    me = worker_identity()
    assert me.endswith(f":{os.getpid()}:1234.500")

    def running(worker: str) -> optuna.trial.FrozenTrial:
        trial = optuna.trial.create_trial(state=TrialState.RUNNING)
        trial.system_attrs = {WORKER_ATTR: worker}
        return trial

    assert not is_stale(running(me), grace_period=0)
    assert is_stale(running(dead_worker()), grace_period=3600)


def test_no_private_optuna_api_reaches_a_study_or_trial():
    """``study._storage`` and ``trial._trial_id`` have public counterparts (open_storage,
    trial_id): sweeplr uses those, so an Optuna release may rename its internals."""
    for path in (ROOT / "sweeplr").rglob("*.py"):
        text = path.read_text()
        for private in ("study._storage", "trial._trial_id", "._cached_frozen_trial"):
            assert private not in text.replace(f"``{private}``", ""), (path, private)


def test_a_cached_journal_storage_is_the_file_at_its_path(tmp_path):
    """A journal deleted, replaced, or rewritten in place since this process read it is
    opened anew (issue 22, 18): Optuna's backend would read on from the byte it had reached,
    into a file it never replayed."""
    url = storage_url(None, tmp_path / "s")
    journal = tmp_path / "s" / "optuna.journal"
    first = open_storage(url)
    optuna.create_study(study_name="a", storage=first).ask()
    assert open_storage(url) is first  # the same file: the same object, nothing replayed
    shutil.rmtree(tmp_path / "s")  # the sweep directory removed and made again
    second = open_storage(url)
    assert second is not first
    assert optuna.create_study(study_name="b", storage=second).study_name == "b"
    assert [s.study_name for s in optuna.get_all_study_summaries(second)] == ["b"]
    # Rewritten in place (the same inode), longer than what was read: another journal.
    other = tmp_path / "other.journal"
    replaced = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(other))
    )
    for name in ("c", "d"):
        optuna.create_study(study_name=name, storage=replaced).ask()
    journal.write_bytes(other.read_bytes())
    third = open_storage(url)
    assert third is not second
    assert {s.study_name for s in optuna.get_all_study_summaries(third)} == {"c", "d"}
    journal.write_bytes(b"")  # cut below what was read
    assert open_storage(url) is not third


def test_a_jobs_trial_link_follows_its_storage_when_it_is_opened_anew(tmp_path):
    """A job of a second sweep of the same study (same URL, name and trial number) gets a link
    to the new journal, not the first sweep's (issue 22, 18)."""
    from sweeplr.pruning import trial_link_for

    url = storage_url(None, tmp_path / "s")
    env_set, sweeper = {"SWEEPLR_TRIAL": 0}, {"storage": url, "study_name": "s"}
    for value in (0.25, 0.5):
        shutil.rmtree(tmp_path / "s", ignore_errors=True)
        study = optuna.create_study(study_name="s", storage=open_storage(url))
        study.ask()
        link = trial_link_for(OmegaConf.create(env_set), OmegaConf.create(sweeper))
        assert link is not None and link.is_current()
        assert link.report(3, value) is False
        assert study.trials[0].intermediate_values == {3: value}


def test_a_sweeps_study_is_read_where_its_directory_is_now_and_nothing_is_created(tmp_path):
    """``sweeplr plot`` of a sweep directory moved whole reads its own journal; a storage file
    that is gone is one line, and reading it creates none (issue 22, 10)."""
    from sweeplr.studies import load_sweep_study

    first = tmp_path / "first"
    url = storage_url(None, first)
    optuna.create_study(study_name="s", storage=open_storage(url)).ask()
    sweeper = {"storage": url, "study_name": "s"}
    assert len(load_sweep_study(sweeper, first).trials) == 1
    moved = tmp_path / "moved"
    first.rename(moved)
    assert len(load_sweep_study(sweeper, moved).trials) == 1
    for storage in (url, f"sqlite:///{tmp_path / 'gone.db'}"):
        with pytest.raises(SweeplrError, match=r"^the study s is stored in .*, which does not"):
            load_sweep_study({"storage": storage, "study_name": "s"}, tmp_path / "elsewhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved"]  # nothing made on the way
    assert load_sweep_study({"storage": None, "study_name": "s"}) is None  # a grid
