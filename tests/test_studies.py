"""Study bookkeeping shared by the Optuna sweeper and its jobs (no subprocess)."""

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplr.errors import SweeplrError
from sweeplr.plugins.optuna_sweeper import default_study_name, job_outcome
from sweeplr.studies import (
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    budget_used,
    is_stale,
    open_storage,
    pruning_metric,
    requeue_stale_trials,
    storage_url,
    trial_reporter,
    worker_identity,
)

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
    study = optuna.create_study(storage=open_storage(storage_url(None, tmp_path)))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0)})
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker)
    study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
    return study, trial


def test_a_trial_of_a_dead_local_process_is_stale_and_requeued_once(tmp_path):
    study, trial = study_with_running_trial(tmp_path, dead_worker())
    assert is_stale(study.trials[0], grace_period=3600)
    assert requeue_stale_trials(study, grace_period=3600) == [trial.number]
    assert requeue_stale_trials(study, grace_period=3600) == []
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params
    assert budget_used(study.trials) == 1  # the failure is superseded by its retry


def test_a_live_local_trial_is_not_stale(tmp_path):
    study, _ = study_with_running_trial(tmp_path, worker_identity())
    assert not is_stale(study.trials[0], grace_period=0)


def test_a_remote_trial_is_stale_only_after_its_heartbeat_goes_silent(tmp_path):
    study, _ = study_with_running_trial(tmp_path, "elsewhere:123:456")
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


def test_reporter_reports_and_prunes(tmp_path):
    url = storage_url(None, tmp_path)
    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    study = optuna.create_study(study_name="s", storage=open_storage(url), pruner=pruner)
    trial = study.ask()
    report = trial_reporter(url, "s", trial.number, pruner, "val_loss")
    assert report(10, 0.5, 0.4, 0.9) is False
    assert report(20, 0.5, 2.0, 0.9) is True
    assert study.trials[0].intermediate_values == {10: 0.4, 20: 2.0}


def test_pruning_needs_a_metric_the_history_records():
    assert pruning_metric("val_accuracy") == "val_accuracy"
    with pytest.raises(SweeplrError, match="objective=test_f1 cannot be pruned"):
        pruning_metric("test_f1")


class FakeReturn:
    def __init__(self, run_dir, status):
        from hydra.core.utils import JobStatus

        self.status = JobStatus.COMPLETED if status else JobStatus.FAILED
        self.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}})


@pytest.mark.parametrize(
    ("record", "state"),
    [
        ({"status": "completed", "objective": {"value": 0.3}}, TrialState.COMPLETE),
        ({"status": "diverged", "objective": {"value": None}}, TrialState.PRUNED),
        ({"status": "pruned", "objective": {"value": 0.9}}, TrialState.PRUNED),
        (None, TrialState.FAIL),
    ],
)
def test_job_outcome_never_lets_a_diverged_run_rank(tmp_path, record, state):
    import json

    if record is not None:
        (tmp_path / "metrics.json").write_text(json.dumps(record))
    got_state, values, _ = job_outcome(FakeReturn(tmp_path, True))
    assert got_state == state
    assert (values is not None) == (state == TrialState.COMPLETE)
    assert job_outcome(FakeReturn(tmp_path, False))[0] == TrialState.FAIL


def test_worker_identity_names_this_process():
    host, pid, ticks = worker_identity().rsplit(":", 2)
    assert host == socket.gethostname() and int(pid) == os.getpid() and ticks != "None"
