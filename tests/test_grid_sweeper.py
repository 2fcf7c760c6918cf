"""Grid resume (`sweeplr.plugins.grid_sweeper`): which jobs a grid keeps, runs or refuses, and
the summary's rows for the jobs a stopped grid never started. Sweeps as a user runs them, with
Ctrl-C, are in tests/test_sweeps.py; Hydra's own suites in tests/test_hydra_launcher_suites.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeplr.errors import SweeplrError
from sweeplr.plugins.grid_sweeper import (
    RETRIED_DIR,
    earlier_jobs,
    expand,
    launches,
    move_aside,
    plan_resume,
)
from sweeplr.records import PLANNED_JOBS_FILE, read_planned_jobs, write_planned_jobs
from sweeplr.results import load_sweep
from tests.test_results import record, write_job

PARSER = OverridesParser.create()
ARGS = ["lr=0.1,0.01", "epochs=20,40"]
JOBS = [
    ["lr=0.1", "epochs=20"],
    ["lr=0.1", "epochs=40"],
    ["lr=0.01", "epochs=20"],
    ["lr=0.01", "epochs=40"],
]
GRID = "sweeplr.plugins.grid_sweeper.SweeplrGridSweeper"


def multirun_yaml(sweep: Path, task: list[str], target: str = GRID, **params: str) -> None:
    """The ``multirun.yaml`` a grid leaves: Hydra's config, with the sweep's overrides."""
    hydra = {"sweeper": {"_target_": target, "params": params}, "overrides": {"task": task}}
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


def test_a_grid_expands_as_the_basic_sweeper_does():
    assert expand(PARSER, {}, ARGS) == JOBS
    assert expand(PARSER, {"lr": "0.1,0.01"}, ["epochs=20,40"]) == JOBS  # a preset's params


def test_the_earlier_sweep_is_the_job_list_its_multirun_yaml_expands_to(tmp_path):
    assert earlier_jobs(tmp_path, PARSER) is None  # no sweep there
    multirun_yaml(tmp_path, ["epochs=20,40"], lr="0.1,0.01")
    assert earlier_jobs(tmp_path, PARSER) == JOBS
    multirun_yaml(tmp_path, ARGS, "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")
    assert earlier_jobs(tmp_path, PARSER) == JOBS  # Hydra's basic sweeper numbers jobs alike
    multirun_yaml(tmp_path, ["lr=tag(log, interval(1e-5, 1.0))"], "x.SweeplrOptunaSweeper")
    assert earlier_jobs(tmp_path, PARSER) is None  # a study: its jobs are no grid's
    multirun_yaml(tmp_path, ["lr=interval(0,1)"])  # no grid expands it
    assert earlier_jobs(tmp_path, PARSER) is None
    for damaged in ("hydra: [damaged\n", "- a list\n", "hydra: {}\n"):
        (tmp_path / "multirun.yaml").write_text(damaged)
        assert earlier_jobs(tmp_path, PARSER) is None


def grid_dir(sweep: Path) -> Path:
    """An interrupted grid of JOBS: 0 completed, 1 failed, 2 started and killed, 3 never begun."""
    multirun_yaml(sweep, ARGS)
    write_job(sweep, "0", record(0.2, JOBS[0]), JOBS[0])
    failed = {"status": "failed", "error": "boom", "overrides": JOBS[1], "job": {"num": 1}}
    write_job(sweep, "1", failed, JOBS[1])
    write_job(sweep, "2", None, JOBS[2])
    return sweep


def test_the_same_grid_keeps_finished_jobs_and_retries_the_rest(tmp_path):
    sweep = grid_dir(tmp_path / "S")
    diverged = record(0.3, JOBS[3], status="diverged", job={"num": 3})
    write_job(sweep, "lr=0.01,epochs=40", diverged, JOBS[3])  # a custom subdir's folder
    resume = plan_resume(sweep, JOBS, earlier_jobs(sweep, PARSER))
    assert resume.kept == {0, 3}  # completed and diverged are results
    assert resume.retried == [sweep / "1"]  # the failed job's folder; 2 has no record to keep


def test_another_sweep_into_a_directory_with_records_is_refused(tmp_path):
    sweep = grid_dir(tmp_path / "S")
    other = [["lr=0.5", "epochs=20"]]
    with pytest.raises(SweeplrError, match=r"^hydra.sweep.dir=.*/S already holds another sweep"):
        plan_resume(sweep, other, earlier_jobs(sweep, PARSER))
    longer = [*JOBS, ["lr=0.001", "epochs=20"]]  # an extended grid is another sweep too
    with pytest.raises(SweeplrError, match="already holds another sweep's runs"):
        plan_resume(sweep, longer, earlier_jobs(sweep, PARSER))
    (sweep / "multirun.yaml").unlink()  # records, and nothing to say which sweep made them
    with pytest.raises(SweeplrError, match="already holds another sweep's runs"):
        plan_resume(sweep, JOBS, earlier_jobs(sweep, PARSER))


def test_a_record_of_another_job_under_a_matching_multirun_yaml_is_refused(tmp_path):
    sweep = tmp_path / "S"
    multirun_yaml(sweep, ARGS)
    write_job(sweep, "1", record(0.2, JOBS[0]), JOBS[0])  # job 1's folder, job 0's overrides
    with pytest.raises(SweeplrError, match="already holds another sweep's runs"):
        plan_resume(sweep, JOBS, earlier_jobs(sweep, PARSER))


def test_folders_without_sweeplr_records_run_again_as_under_the_basic_sweeper(tmp_path):
    sweep = tmp_path / "S"
    multirun_yaml(sweep, ["a=1,2"])
    (sweep / "0" / ".hydra").mkdir(parents=True)  # a task that writes no record
    resume = plan_resume(sweep, [["b=3"]], earlier_jobs(sweep, PARSER))
    assert resume.kept == set() and resume.retried == []
    (sweep / "multirun.yaml").write_text("hydra: [damaged\n")
    assert plan_resume(sweep, [["b=3"]], earlier_jobs(sweep, PARSER)).kept == set()
    new = tmp_path / "new"
    assert plan_resume(new, JOBS, earlier_jobs(new, PARSER)).kept == set()
    assert not new.exists()  # nothing made before the sweep starts
    study = tmp_path / "study"  # another sweeper's directory, even without records
    multirun_yaml(study, ["lr=tag(log, interval(1e-5, 1.0))"], "x.SweeplrOptunaSweeper")
    with pytest.raises(SweeplrError, match="already holds another sweep's runs"):
        plan_resume(study, JOBS, earlier_jobs(study, PARSER))


def test_failed_folders_move_aside_counting_tries(tmp_path):
    sweep = grid_dir(tmp_path / "S")
    first = (sweep / "1" / "metrics.json").read_bytes()
    move_aside(sweep, [sweep / "1"])
    write_job(sweep, "1", {"status": "failed", "error": "again"}, JOBS[1])
    move_aside(sweep, [sweep / "1"])
    assert not (sweep / "1").exists()
    assert (sweep / RETRIED_DIR / "1.1" / "metrics.json").read_bytes() == first
    assert json.loads((sweep / RETRIED_DIR / "1.2" / "metrics.json").read_text())["error"] == (
        "again"
    )
    assert [r["status"] for r in load_sweep(sweep).to_dict("records")] == ["completed", "missing"]


@pytest.mark.parametrize(
    ("todo", "size", "spans"),
    [
        ([0, 1, 2, 3, 4], None, [(0, 5)]),
        ([0, 1, 2, 3, 4], 2, [(0, 2), (2, 2), (4, 1)]),
        ([0, 1, 2, 3, 4], -1, [(0, 5)]),
        ([1, 2, 5, 6, 7, 9], 2, [(1, 2), (5, 2), (7, 1), (9, 1)]),
        ([], 2, []),
    ],
)
def test_launches_are_runs_of_consecutive_jobs(todo, size, spans):
    assert launches(todo, size) == spans


def test_planned_jobs_round_trip_and_a_damaged_file_is_none(tmp_path):
    assert read_planned_jobs(tmp_path) is None
    write_planned_jobs(tmp_path, JOBS)
    assert read_planned_jobs(tmp_path) == JOBS
    for damaged in ("{", '{"jobs": [1]}', '{"jobs": {"a": 1}}', "[]"):
        (tmp_path / PLANNED_JOBS_FILE).write_text(damaged)
        assert read_planned_jobs(tmp_path) is None


def test_the_summary_lists_every_planned_job_those_never_started_as_not_run(tmp_path):
    sweep = grid_dir(tmp_path / "S")
    write_planned_jobs(sweep, JOBS)
    table = load_sweep(sweep).sort_values("job")
    assert table["job"].tolist() == [0, 1, 2, 3]
    assert table["status"].tolist() == ["completed", "failed", "missing", "not_run"]
    never = table[table["status"] == "not_run"].iloc[0]
    assert (never["lr"], never["epochs"]) == (0.01, 40)  # its overrides, from the plan
    assert pd.isna(never["run_dir"])  # no folder
    (sweep / "2").rename(sweep / "custom")  # a job's folder of another name, not yet recorded:
    statuses = load_sweep(sweep)["status"].tolist()  # found by its overrides, not listed twice
    assert sorted(statuses) == ["completed", "failed", "missing", "not_run"]
