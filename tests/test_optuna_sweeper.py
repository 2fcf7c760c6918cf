"""sweeplr's Optuna sweeper: a study's name and folder, and what a resume repairs (the slow
tests run train.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplr.errors import SweeplrError
from sweeplr.plugins.optuna_sweeper import claim_sweep_dir, default_study_name
from sweeplr.results import load_sweep
from sweeplr.studies import WORKER_ATTR, budget_used, open_storage, storage_url, trial_id
from tests.conftest import OPTUNA, record_files, run_train, study_in
from tests.test_studies import dead_worker


def test_a_study_name_includes_its_storage():
    sweeper = OmegaConf.create({"n_trials": 5, "params": {"lr": "interval(0.001, 1)"}})
    journal = default_study_name(["epochs=5"], sweeper)
    in_sqlite = default_study_name(
        ["epochs=5"], OmegaConf.merge(sweeper, {"storage": "sqlite:///s.db"})
    )
    assert journal != in_sqlite
    more_trials = OmegaConf.merge(sweeper, {"n_trials": 50})
    assert default_study_name(["epochs=5"], more_trials) == journal  # a resume is the same study


def test_a_sweep_dir_is_claimed_by_one_study_and_storage(tmp_path):
    sweep = tmp_path / "s"
    claim_sweep_dir(sweep, "a", storage_url(None, sweep))
    claim_sweep_dir(sweep, "a", storage_url(None, sweep))  # the same study again: a resume
    for name, url in (("a", "sqlite:///other.db"), ("b", storage_url(None, sweep))):
        with pytest.raises(SweeplrError) as refused:
            claim_sweep_dir(sweep, name, url)
        assert str(refused.value) == (
            f"hydra.sweep.dir={sweep} holds study a in journal in this directory; "
            "allowed: that study's storage and name, or another hydra.sweep.dir"
        )


@pytest.mark.slow
def test_two_storages_never_write_into_one_study_folder(tmp_path):
    sweep = tmp_path / "s"
    args = [*OPTUNA, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    first = run_train(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    before = record_files(sweep)
    results = (sweep / "optimization_results.yaml").read_bytes()

    again = run_train(tmp_path, *args, f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db")
    assert again.returncode == 1
    assert again.stdout == "" and again.stderr.startswith(
        f"error: hydra.sweep.dir={sweep} holds study optuna-"
    )
    assert record_files(sweep) == before
    assert (sweep / "optimization_results.yaml").read_bytes() == results
    assert not (tmp_path / "study.db").exists()  # refused before the storage was touched

    # Without a sweep dir of its own, the other storage is another study in another folder.
    default = run_train(tmp_path, *OPTUNA, "hydra.sweeper.n_trials=1")
    other = run_train(
        tmp_path,
        *OPTUNA,
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/b.db",
    )
    assert default.returncode == other.returncode == 0, other.stderr[-2000:]
    assert len(list(tmp_path.glob("multirun/optuna/*"))) == 2


@pytest.mark.slow
def test_a_resume_repairs_a_torn_journal_and_goes_on(tmp_path):
    sweep = tmp_path / "s"
    args = [*OPTUNA, f"hydra.sweep.dir={sweep}"]
    assert run_train(tmp_path, *args, "hydra.sweeper.n_trials=2").returncode == 0
    with open(sweep / "optuna.journal", "ab") as journal:
        journal.write(b'{"op_code": 6, "worker_')
    said = []
    for n_trials in (3, 4):  # the second resume is the one that used to die
        proc = run_train(tmp_path, *args, f"hydra.sweeper.n_trials={n_trials}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        said.append("ended in a torn line" in proc.stdout)
    assert said == [True, False]  # repaired once, and said so
    assert len(list(sweep.glob("optuna.journal.torn-*"))) == 1
    study = study_in(sweep)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4


@pytest.mark.slow
def test_a_trial_whose_worker_died_after_its_record_is_told_not_run_again(tmp_path):
    """The soak test's double trial, made deterministic: two trials RUNNING in a dead worker,
    one whose job finished (record, then job_return.json) and one killed between the two."""
    sweep = tmp_path / "s"
    args = [*OPTUNA, f"hydra.sweep.dir={sweep}"]
    assert run_train(tmp_path, *args, "hydra.sweeper.n_trials=2").returncode == 0
    study = study_in(sweep)
    storage = open_storage(f"journal:{sweep / 'optuna.journal'}")
    first, second = study.trials
    dead = dead_worker()
    for earlier in (first, second):
        study.enqueue_trial(earlier.params)
        trial = study.ask(earlier.distributions)  # as the sweeper asks: params set
        storage.set_trial_system_attr(
            trial_id(storage, study.study_name, trial.number), WORKER_ATTR, dead
        )
    # Trial 2 finished: its record and return value are there (copied from trial 0's run).
    shutil.copytree(sweep / "0", sweep / "2")
    finished = json.loads((sweep / "2" / "metrics.json").read_text())
    finished["trial"]["number"] = 2
    (sweep / "2" / "metrics.json").write_text(json.dumps(finished))
    (sweep / "2" / "job_return.json").write_text('{"return_value": 0.125}\n')
    record_of_2 = (sweep / "2" / "metrics.json").read_bytes()
    # Trial 3 was killed after its record, before its job_return.json: not finished.
    shutil.copytree(sweep / "1", sweep / "3")
    (sweep / "3" / "job_return.json").unlink()

    resumed = run_train(tmp_path, *args, "hydra.sweeper.n_trials=4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 2 had finished before its worker stopped: told" in resumed.stdout
    trials = study_in(sweep).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert trials[2].value == 0.125  # told from job_return.json, not trained again
    assert trials[4].params == trials[3].params == second.params  # the killed one, retried
    assert budget_used(trials) == 4
    assert (sweep / "2" / "metrics.json").read_bytes() == record_of_2
    assert json.loads((sweep / "3" / "superseded.json").read_text()) == {"trial": 3}

    table = load_sweep(sweep).set_index("job")
    assert table.loc[3, "status"] == "superseded"
    counted = table[table["status"] != "superseded"]
    assert sorted(counted["trial"]) == [0, 1, 2, 4]  # every trial exactly once


@pytest.mark.parametrize(
    "searches", [("foo=choice(1,2)", "foo=choice(1,2)"), ("foo=1,2", "foo=1,2,3")]
)
def test_two_sweeps_into_one_remade_directory_in_one_process(
    hydra_sweep_runner, tmp_path, searches
):
    """Hydra's sweep fixture removes its directory after each sweep; the second sweep (the same
    study, or another) must not meet the first one's journal as this process had cached it
    (issue 22, 18: ``AssertionError: Should not reach`` inside Optuna, or nothing run)."""
    for search in searches:
        sweep = hydra_sweep_runner(
            calling_file=None,
            calling_module="hydra.test_utils.a_module",
            task_function=None,
            config_path="configs",
            config_name="compose.yaml",
            overrides=["hydra/sweeper=sweeplr_optuna", "hydra.sweeper.n_trials=2", search],
            temp_dir=tmp_path / "s",
        )
        with sweep:
            study = study_in(tmp_path / "s")
            assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
            assert [t.value for t in study.trials] == [100, 100]  # what the task returned
