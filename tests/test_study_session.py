"""A sweep's part in an Optuna study (sweeplr.study_session), on a journal file and no Hydra."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from sweeplr.errors import SweeplrError
from sweeplr.records import SUPERSEDED_FILE, write_job_return
from sweeplr.studies import (
    STOPPED_ATTR,
    WORKER_ATTR,
    TrialLink,
    budget_used,
    open_storage,
    storage_url,
    trial_id,
    worker_identity,
)
from sweeplr.study_session import (
    STUDY_MARK,
    JobOutcome,
    StudyPlan,
    StudySession,
    claim_sweep_dir,
)
from tests.conftest import ROOT
from tests.test_studies import dead_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
RANDOM = {"_target_": "optuna.samplers.RandomSampler"}


def plan_for(sweep_dir: Path, **changes) -> StudyPlan:
    settings = {"n_trials": 3, "n_jobs": 2, "sampler_cfg": RANDOM} | changes
    return StudyPlan("s", storage_url(None, sweep_dir), sweep_dir, **settings)


def suggest(trials: list[optuna.Trial]) -> list[float]:
    return [trial._suggest("lr", LR["lr"]) for trial in trials]


def run_to_the_end(session: StudySession, value: float = 0.5) -> list[int]:
    """Ask and tell batches until the budget is spent, as the sweeper's loop does; returns the
    size of each batch."""
    sizes = []
    while True:
        with session.next_batch() as trials:
            if not trials:
                return sizes
            suggest(trials)
        sizes.append(len(trials))
        assert session.tell_batch([JobOutcome(value) for _ in trials]) == []


def stale_study(sweep_dir: Path) -> optuna.Study:
    """A study whose trial 0 is RUNNING in a worker that died."""
    storage = open_storage(storage_url(None, sweep_dir))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask(LR)
    storage.set_trial_system_attr(trial_id(storage, "s", 0), WORKER_ATTR, dead_worker())
    assert trial.number == 0
    return study


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_the_study_session_imports_no_hydra():
    code = "import sys, sweeplr.study_session; print(any('hydra' in m for m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert proc.stdout.strip() == "False"


def test_a_sweep_dir_is_claimed_once_and_checked_for_other_runs_before(tmp_path):
    sweep, url = tmp_path / "s", storage_url(None, tmp_path / "s")
    checked = []
    claim_sweep_dir(sweep, "a", url, checked.append)
    assert checked == [sweep]
    assert json.loads((sweep / STUDY_MARK).read_text()) == {
        "study_name": "a",
        "storage": "journal in this directory",
    }
    claim_sweep_dir(sweep, "a", url, checked.append)  # a resume: the mark says it is ours
    assert checked == [sweep]
    with pytest.raises(SweeplrError, match="holds study a in journal in this directory"):
        claim_sweep_dir(sweep, "b", url, checked.append)
    with pytest.raises(SweeplrError, match="holds study a"):
        claim_sweep_dir(sweep, "a", "sqlite:///other.db", checked.append)


def test_a_used_directory_is_refused_before_it_is_marked(tmp_path):
    def refuse(path: Path) -> None:
        raise SweeplrError(f"{path} is used")

    with pytest.raises(SweeplrError, match="is used"):
        claim_sweep_dir(tmp_path, "a", storage_url(None, tmp_path), refuse)
    assert not (tmp_path / STUDY_MARK).exists()
    (tmp_path / "optuna.journal").touch()  # a study from before the mark: its own directory
    claim_sweep_dir(tmp_path, "a", storage_url(None, tmp_path), refuse)
    (tmp_path / STUDY_MARK).write_text("{torn")
    with pytest.raises(SweeplrError, match="in an unreadable "):
        claim_sweep_dir(tmp_path, "a", storage_url(None, tmp_path), refuse)


def test_open_cuts_a_torn_journal_line_and_refuses_a_damaged_one(tmp_path, caplog):
    journal = tmp_path / "optuna.journal"
    plan = plan_for(tmp_path)
    with StudySession.open(plan) as session:
        run_to_the_end(session)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker')  # a kill in mid-append
    with caplog.at_level(logging.WARNING), StudySession.open(plan) as session:
        assert states(session.study) == ["COMPLETE"] * 3
    repaired = journal.read_bytes()  # cut back to `whole`, and appended to since
    assert repaired.startswith(whole) and [json.loads(line) for line in repaired.splitlines()]
    assert "ended in a torn line" in caplog.text
    journal.write_bytes(b"not json\n" + whole)
    with pytest.raises(SweeplrError, match="line 1 is not an Optuna journal record"):
        StudySession.open(plan)


def test_open_requeues_a_dead_workers_trial_and_the_budget_counts_it_once(tmp_path):
    lost = stale_study(tmp_path).trials[0]
    with StudySession.open(plan_for(tmp_path, n_trials=3, n_jobs=1)) as session:
        assert states(session.study) == ["FAIL", "WAITING"]
        with session.next_batch() as trials:
            assert [t.number for t in trials] == [1]
            assert trials[0].params == lost.params  # the retry runs the lost parameters
        session.tell_batch([JobOutcome(0.5)])
        assert run_to_the_end(session) == [1, 1]
        trials = session.study.get_trials(deepcopy=False)
    assert states(session.study) == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert budget_used(trials) == 3  # n_trials exactly: the failed attempt is superseded


def test_open_tells_a_dead_workers_trial_whose_job_had_finished(tmp_path, caplog):
    stale_study(tmp_path)
    write_job_return(tmp_path / "0", 0.25)
    with caplog.at_level(logging.INFO), StudySession.open(plan_for(tmp_path)) as session:
        trial = session.study.trials[0]
    assert states(session.study) == ["COMPLETE"] and trial.value == 0.25
    assert trial.user_attrs["run_dir"] == str((tmp_path / "0").absolute())
    assert "trial 0 had finished before its worker stopped: told" in caplog.text


def test_a_trial_without_a_job_return_is_retried_and_its_folder_marked(tmp_path):
    stale_study(tmp_path)
    (tmp_path / "0").mkdir()  # a record written before the kill, but no job_return.json
    with StudySession.open(plan_for(tmp_path)) as session:
        assert states(session.study) == ["FAIL", "WAITING"]
    assert json.loads((tmp_path / "0" / SUPERSEDED_FILE).read_text()) == {"trial": 0}
    stale_study(tmp_path / "other")
    write_job_return(tmp_path / "other" / "0", 0.25)  # folders not named by trial: not read
    with StudySession.open(plan_for(tmp_path / "other", trial_dirs=False)) as session:
        assert states(session.study) == ["FAIL", "WAITING"]


def test_a_batch_is_marked_as_this_workers_and_sized_by_budget_and_sampler(tmp_path):
    with StudySession.open(plan_for(tmp_path, n_trials=5, n_jobs=4)) as session:
        with session.next_batch() as trials:
            assert [t.number for t in trials] == [0, 1, 2, 3]  # n_jobs
            suggest(trials)
        stored = session.study.get_trials(deepcopy=False)
        assert {t.system_attrs[WORKER_ATTR] for t in stored} == {worker_identity()}
        assert {t.state for t in stored} == {TrialState.RUNNING}
        session.tell_batch([JobOutcome(float(n)) for n in range(4)])
        assert run_to_the_end(session) == [1]  # what is left of n_trials
    tpe = {"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 2}
    plan = plan_for(tmp_path / "tpe", n_trials=5, n_jobs=4, sampler_cfg=tpe)
    with StudySession.open(plan) as session:
        # the random start-up at once, then one proposal per four results
        assert run_to_the_end(session) == [2, 1, 1, 1]


def test_seeded_samplers_propose_the_same_trials_again_from_their_numbers(tmp_path):
    asked_for = []

    def samplers(number: int) -> optuna.samplers.BaseSampler:
        asked_for.append(number)
        return optuna.samplers.RandomSampler(seed=number)

    values = []
    for folder in ("a", "b"):
        plan = plan_for(tmp_path / folder, n_trials=4, n_jobs=2)
        with StudySession.open(plan, samplers=samplers) as session:
            for _ in range(2):
                with session.next_batch() as trials:
                    values.append(suggest(trials))
                session.tell_batch([JobOutcome(0.5)] * 2)
    assert asked_for == [0, 1, 2, 3] * 2  # each trial's sampler, by its number
    assert values[:2] == values[2:] and len({v for batch in values for v in batch}) == 4


def test_tell_gives_each_trial_its_value_failure_or_prune(tmp_path, caplog):
    plan = plan_for(tmp_path, n_trials=6, n_jobs=6, max_failure_rate=1.0)
    with StudySession.open(plan) as session:
        with session.next_batch() as trials:
            suggest(trials)
        TrialLink(plan.url, "s", 4, None).stop("diverged", 7)  # the job's own handle
        outcomes = [
            JobOutcome(0.5, run_dir="/runs/0"),
            JobOutcome(RuntimeError("out of memory\nmore"), raised=True),
            JobOutcome(optuna.TrialPruned(), raised=True),
            JobOutcome(float("nan")),
            JobOutcome(0.1),  # stopped as diverged: its value is no result to rank
            JobOutcome("x"),
        ]
        with caplog.at_level(logging.WARNING):
            assert session.tell_batch(outcomes) == []  # under max_failure_rate
        told = session.study.get_trials(deepcopy=False)
    assert states(session.study) == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "PRUNED", "FAIL"]
    assert told[0].value == 0.5 and told[0].user_attrs["run_dir"] == "/runs/0"
    assert told[4].user_attrs["status"] == "diverged"
    assert told[4].user_attrs[STOPPED_ATTR] == {"status": "diverged", "step": 7}
    assert "Trial 1 failed: out of memory" in caplog.text
    assert "NaN is no result to rank" in caplog.text
    assert "float-castable" in caplog.text


def test_past_max_failure_rate_the_jobs_that_raised_end_the_sweep(tmp_path, caplog):
    plan = plan_for(tmp_path, n_trials=8, n_jobs=4, max_failure_rate=0.5)
    with StudySession.open(plan) as session:
        with session.next_batch() as trials:
            suggest(trials)
        # two failures out of four: not past 0.5
        bad_two = [JobOutcome(ValueError("bad"), raised=True), JobOutcome(None)]
        assert session.tell_batch([*bad_two, JobOutcome(1.0), JobOutcome(2.0)]) == []
        with session.next_batch() as trials:
            suggest(trials)
        outcomes = [JobOutcome(1.0), JobOutcome(None), *[JobOutcome(KeyError(), raised=True)] * 2]
        with caplog.at_level(logging.ERROR):
            assert session.tell_batch(outcomes) == [2, 3]  # the bad value only logs
    assert "Failed 3 times out of 4 with max_failure_rate=0.5." in caplog.text


def test_an_interrupt_hands_the_trials_in_flight_back(tmp_path):
    plan = plan_for(tmp_path, n_trials=4, n_jobs=3)
    with pytest.raises(KeyboardInterrupt), StudySession.open(plan) as session:
        with session.next_batch() as trials:
            asked = suggest(trials)
        write_job_return(tmp_path / "1", 0.75)  # trial 1's job finished before the Ctrl-C
        raise KeyboardInterrupt
    assert states(session.study) == ["FAIL", "COMPLETE", "FAIL", "WAITING", "WAITING"]
    retries = session.study.trials[3:]
    assert [t.params["lr"] for t in retries] == [asked[0], asked[2]]
    with StudySession.open(plan) as session:  # the resume runs them again, within n_trials
        assert run_to_the_end(session) == [3]
        trials = session.study.get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [1, 3, 4, 5]
    assert budget_used(trials) == 4


def test_a_lost_storage_is_not_handed_anything(tmp_path):
    plan = plan_for(tmp_path, n_trials=2, n_jobs=2)
    with pytest.raises(OSError), StudySession.open(plan) as session:
        with session.next_batch() as trials:
            suggest(trials)
        raise OSError(28, "No space left on device")
    assert states(session.study) == ["RUNNING", "RUNNING"]  # a resume re-queues them


def test_write_results_names_the_study_and_its_best_trial(tmp_path):
    plan = plan_for(tmp_path, n_trials=3, n_jobs=3)
    with StudySession.open(plan) as session:
        with session.next_batch() as trials:
            suggest(trials)
        session.tell_batch([JobOutcome(v, run_dir=f"/r/{v}") for v in (0.3, 0.1, 0.2)])
        session.write_results()
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["study_name"] == "s" and results["trials"] == {"COMPLETE": 3}
    assert results["best_value"] == 0.1 and results["best_trial"] == 1
    assert results["best_run_dir"] == "/r/0.1"
    assert results["dashboard"] == f"optuna-dashboard {tmp_path.resolve()}/optuna.journal"


@pytest.mark.parametrize(
    "last",
    [
        JobOutcome(ValueError("lr=-2 is invalid"), raised=True),
        JobOutcome(float("nan")),
        JobOutcome(optuna.TrialPruned(), raised=True),
        JobOutcome(0.25),
    ],
    ids=["raised", "nan", "pruned", "value"],
)
def test_the_last_grid_point_is_told_whatever_its_outcome(tmp_path, last):
    """The grid sampler stops the study as its last point is told (``study.stop``, which
    raises outside ``study.optimize``): a FAIL is told as safely as a value (issue 22, 5)."""
    grid = optuna.samplers.GridSampler({"lr": [0.1, 0.2]})
    plan = plan_for(tmp_path, n_trials=2, n_jobs=1, max_failure_rate=1.0)
    with StudySession.open(plan, samplers=lambda number: grid) as session:
        for outcome in (JobOutcome(0.5), last):
            with session.next_batch() as trials:
                proposed = [t.suggest_categorical("lr", [0.1, 0.2]) for t in trials]
            assert len(proposed) == 1
            assert session.tell_batch([outcome]) == []
        with session.next_batch() as trials:
            assert trials == []  # the budget is spent: the sweep ends normally
    told = states(session.study)
    assert told[0] == "COMPLETE" and told[1] != "RUNNING"
    assert sorted(t.params["lr"] for t in session.study.trials) == [0.1, 0.2]


def test_a_pruner_with_several_directions_is_refused_before_the_study_is_touched(tmp_path):
    """Optuna prunes single-objective studies only (issue 22, 4)."""
    plan = plan_for(tmp_path / "s", directions=("minimize", "maximize"))
    message = (
        "hydra.sweeper.pruner=MedianPruner is invalid with "
        "hydra.sweeper.direction=[minimize,maximize]; allowed: no pruner"
    )
    with pytest.raises(SweeplrError, match=re.escape(message)):
        StudySession.open(plan, optuna.pruners.MedianPruner())
    assert not (tmp_path / "s").exists()
    with StudySession.open(plan) as session:  # without the pruner, the same plan runs
        assert run_to_the_end(session, value=[0.5, 1.0]) == [2, 1]
