"""The jobs of one launch, published so that their runs train together: the first job's run
trains its siblings, each sibling's run collects its outcome instead of training again."""

from __future__ import annotations

import json

import pytest

from sweeplr import experiment, job_batch
from sweeplr.job_batch import PublishedJob, published
from sweeplr.runner import train_runs
from sweeplr.spec import run_spec
from tests.conftest import as_hydra_job, compose_config

BASE = ("epochs=10", "device=cpu", "progress=false", "plots=false")


def job(*overrides: str) -> PublishedJob:
    return PublishedJob(compose_config(*BASE, *overrides), {}, {})


def test_published_jobs_are_current_inside_the_block_only():
    jobs = {0: job("lr=0.1")}
    assert job_batch.current() is None
    with published(jobs, max_batch=4) as launched:
        assert job_batch.current() is launched and launched.jobs is jobs
        with published({}, max_batch=1) as inner:  # a launch inside a job: its own, then back
            assert job_batch.current() is inner
        assert job_batch.current() is launched
    with pytest.raises(RuntimeError), published(jobs, max_batch=4):
        raise RuntimeError("a job failed")
    assert job_batch.current() is None


def test_the_first_job_trains_its_siblings_and_each_collects_its_own(tmp_path, monkeypatch):
    jobs = {0: job("lr=0.1"), 1: job("lr=0.3"), 2: job("lr=0.2", "epochs=20")}
    expected = train_runs([run_spec(jobs[0].config), run_spec(jobs[1].config)])
    with published(jobs, max_batch=8) as launched:
        as_hydra_job(monkeypatch, tmp_path / "0", num=0)
        objective_0 = experiment.run(jobs[0].config)
        # job 1 shares the batch key: trained with job 0, its outcome waits; job 2 (other
        # epochs) cannot share the pass and trains in its own run.
        assert set(launched.trained) == {1}
        waiting = launched.trained[1][1]
        as_hydra_job(monkeypatch, tmp_path / "1", num=1)
        objective_1 = experiment.run(jobs[1].config)
        assert launched.trained == {}  # collected, not trained again
        as_hydra_job(monkeypatch, tmp_path / "2", num=2)
        experiment.run(jobs[2].config)
    assert objective_0 == expected[0].objective
    assert objective_1 == waiting.objective == expected[1].objective
    record = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert record["metrics"] == json.loads(json.dumps(expected[1].metrics))
    assert json.loads((tmp_path / "2" / "metrics.json").read_text())["status"] == "completed"


def test_a_job_whose_config_changed_since_it_was_published_trains_its_own(tmp_path, monkeypatch):
    """A task may change its config before calling ``run``: the outcome trained for the
    published config is not taken."""
    jobs = {0: job("lr=0.1"), 1: job("lr=0.3")}
    changed = compose_config(*BASE, "lr=0.05")
    alone = train_runs([run_spec(changed)])[0]
    with published(jobs, max_batch=8):
        as_hydra_job(monkeypatch, tmp_path / "0", num=0)
        experiment.run(jobs[0].config)
        as_hydra_job(monkeypatch, tmp_path / "1", num=1)
        assert experiment.run(changed) == alone.objective
