"""Apps that are not sweeplr's train.py, run as their users would (slow, subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sweeplr.studies import STOPPED_ATTR, open_storage
from tests.conftest import ROOT

APPS = ROOT / "tests" / "apps"


def run_app(app: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the sweeplr of the tree under test, not whichever one the venv installed (a worktree's
    # venv may point at another checkout); train.py's own folder does this for run_train
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(APPS / app), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def load_study(sweep: Path) -> optuna.Study:
    return optuna.load_study(
        study_name=None, storage=open_storage(f"journal:{sweep}/optuna.journal")
    )


@pytest.mark.slow
def test_an_app_of_its_own_is_pruned_through_sweeplr_pruning(tmp_path):
    sweep = tmp_path / "s"
    proc = run_app("pruned_quadratic.py", tmp_path, "--multirun", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    assert len(study.trials) == 12
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    for trial in study.trials:
        run_dir = sweep / str(trial.number)  # run directories are named by trial
        assert (run_dir / "trial.txt").read_text() == str(trial.number)  # the job knew its trial
        steps = int((run_dir / "steps.txt").read_text())
        assert max(trial.intermediate_values) == steps
        if trial.state == TrialState.PRUNED:
            assert steps < 20 and trial.user_attrs[STOPPED_ATTR]["status"] == "pruned"
        else:
            assert steps == 20 and trial.value == pytest.approx(trial.intermediate_values[20])
    # Outside a sweep the same code runs to the end: report() does nothing.
    single = run_app("pruned_quadratic.py", tmp_path, "x=5", "hydra.run.dir=single")
    assert single.returncode == 0, single.stderr[-3000:]
    assert (tmp_path / "single" / "steps.txt").read_text() == "20"
    assert (tmp_path / "single" / "trial.txt").read_text() == "none"


@pytest.mark.slow
def test_a_multi_objective_study_marks_its_pareto_front(tmp_path):
    sweep = tmp_path / "s"
    proc = run_app(
        "two_objectives.py",
        tmp_path,
        "--multirun",
        "hydra/sweeper=sweeplr_optuna",
        "hydra.sweeper.direction=[minimize,minimize]",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.sampler.seed=1",
        "epochs=choice(10,40,160)",
        "lr=tag(log, interval(0.001, 1.0))",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_study(sweep)
    front = {t.number for t in study.best_trials}
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert {s["trial"] for s in results["solutions"]} == front
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 8
    assert set(summary.loc[summary["pareto"], "trial"]) == front
    assert summary["pareto"].iloc[: len(front)].all()  # the front first
    by_trial = summary.set_index("trial")
    for trial in study.trials:
        assert by_trial.loc[trial.number, "value_0"] == pytest.approx(trial.values[0])
        assert by_trial.loc[trial.number, "value_1"] == trial.values[1]
        # value_0 is what the task returned: sweeplr's objective of the same run.
        assert by_trial.loc[trial.number, "objective"] == pytest.approx(trial.values[0])


def test_plugins_import_nothing_heavy_when_hydra_scans_them():
    """Hydra imports every installed plugin when any Hydra app starts."""
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "Plugins.instance()\n"
        "import sweeplr.plugins.batch_launcher, sweeplr.plugins.grid_sweeper\n"
        "import sweeplr.plugins.optuna_sweeper, sweeplr.callbacks\n"
        "heavy = ('torch', 'pandas', 'matplotlib', 'optuna', 'sqlalchemy', 'sklearn')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert proc.stdout.strip() == ""


@pytest.mark.slow
def test_a_pruner_on_a_multi_objective_study_is_one_line_before_any_run(tmp_path):
    """Optuna prunes single-objective studies only (issue 22, 4): refused before the sweep
    directory is claimed, so the same command without the pruner runs there."""
    sweep = tmp_path / "s"
    common = (
        "--multirun",
        "hydra/sweeper=sweeplr_optuna",
        "hydra.sweeper.direction=[minimize,maximize]",
        "hydra.sweeper.n_trials=2",
        "epochs=30",
        "plots=false",
        f"hydra.sweep.dir={sweep}",
    )
    proc = run_app("two_objectives.py", tmp_path, *common, "pruner=median")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.pruner=MedianPruner is invalid with "
        "hydra.sweeper.direction=[minimize,maximize]; allowed: no pruner (pruner=null) with "
        "several directions, or one direction"
    )
    assert "Traceback" not in proc.stderr
    assert not sweep.exists() or not any(sweep.iterdir())
    proc = run_app("two_objectives.py", tmp_path, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state for t in load_study(sweep).trials] == [TrialState.COMPLETE] * 2
