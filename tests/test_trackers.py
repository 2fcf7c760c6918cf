"""logger=tensorboard and logger=mlflow: what a run sends, read back with each tool's own reader.

The fast tests call the tracker modules on a hand-made record and history; the slow ones run
train.py as a user would, single runs and sweeps under each launcher. Each tracker's tests skip
only when its package (an extra, in ``dev`` too) is not installed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sweeplr.batched import logged_epochs
from sweeplr.errors import SweeplrError
from sweeplr.spec import run_spec
from sweeplr.trackers import check, final_metrics, series
from tests.conftest import ROOT, compose_config, require_module, run_train

HISTORY = {
    "epoch": [10, 20, 30],
    "train_loss": [0.6, 0.4, 0.3],
    "val_loss": [0.65, 0.45, float("nan")],  # a diverged check: left out, not sent as NaN
    "val_accuracy": [0.5, 0.8, 0.9],
    "lr": [0.1, 0.1, 0.05],
}


def fake_record(lr: float = 0.1, **extra) -> dict:
    return {
        "status": "completed",
        "epochs_run": 30,
        "hyperparameters": {"lr": lr, "optimizer": "sgd", "batch_size": None, "nesterov": False},
        "metrics": {
            "train": {"loss": 0.3, "accuracy": 0.9},
            "val": {"loss": 0.44, "accuracy": 0.85},
            "test": {"loss": 0.5, "accuracy": 0.8, "roc_auc": None},  # None: not sent
        },
        "objective": {"name": "val_loss", "direction": "minimize", "value": 0.44},
        **extra,
    }


def logger(name: str, **fields) -> SimpleNamespace:
    values = {"subdir": "tensorboard", "tracking_uri": None, "experiment_name": "sweeplr"}
    return SimpleNamespace(name=name, **{**values, **fields})


def test_series_and_final_metrics_leave_out_what_is_not_a_number():
    assert series(HISTORY)["val_loss"] == [(10, 0.65), (20, 0.45)]
    assert series(HISTORY)["lr"][-1] == (30, 0.05)
    final = final_metrics(fake_record())
    assert final["test_accuracy"] == 0.8 and "test_roc_auc" not in final


def test_logger_group_is_validated_in_one_line():
    assert compose_config().logger.name == "none"
    with pytest.raises(SweeplrError, match=r"^logger.name=wandb is unknown; allowed: none, "):
        run_spec(compose_config("logger.name=wandb"), ["logger.name=wandb"])
    with pytest.raises(SweeplrError, match=r"logger.subdir=../up .*allowed: a folder name"):
        run_spec(compose_config("logger=tensorboard", "logger.subdir=../up"))


def test_check_names_a_missing_package_and_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(SweeplrError, match=r"logger=mlflow needs the mlflow package.*\.\[mlflow\]"):
        check(logger("mlflow"), ".")


@pytest.mark.slow
def test_a_plain_run_imports_no_tracker(tmp_path):
    script = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"  # as `python train.py` has its folder first
        f"sys.argv = ['train.py', 'epochs=5', 'plots=false', 'hydra.run.dir={tmp_path}/r']\n"
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
        " or m == 'torch.utils.tensorboard'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "r" / "metrics.json").is_file()


# --- TensorBoard -------------------------------------------------------------------------------


def read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator


def session_hparams(accumulator) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return dict(start.session_start_info.hparams)


def test_tensorboard_scalars_per_epoch_and_hparams_with_final_metrics(tmp_path):
    require_module("tensorboard", "tensorboard")
    from sweeplr.trackers.tensorboard_log import write_events

    write_events(tmp_path / "tb", fake_record(), HISTORY)
    events = read_events(tmp_path / "tb")
    loss = events.Scalars("train_loss")
    assert [e.step for e in loss] == [10, 20, 30]
    assert [round(e.value, 6) for e in loss] == [0.6, 0.4, 0.3]
    assert [e.step for e in events.Scalars("val_loss")] == [10, 20]  # the NaN left out
    assert round(events.Scalars("final/test_accuracy")[0].value, 6) == 0.8
    assert "final/test_roc_auc" not in events.Tags()["scalars"]
    hparams = session_hparams(events)
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["optimizer"].string_value == "sgd"
    assert hparams["batch_size"].string_value == "None"
    assert hparams["nesterov"].bool_value is False
    assert len(list((tmp_path / "tb").iterdir())) == 1  # one event file, no timestamped subfolder


# --- MLflow ------------------------------------------------------------------------------------


def test_tracking_uri_defaults_to_sqlite_in_the_start_folder_and_refuses_a_folder(tmp_path):
    require_module("mlflow", "mlflow")
    from sweeplr.trackers.mlflow_log import tracking_uri

    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking_uri("sqlite:///db/x.db", tmp_path) == f"sqlite:///{tmp_path}/db/x.db"
    assert tracking_uri("http://host:5000", tmp_path) == "http://host:5000"
    with pytest.raises(SweeplrError, match=r"^logger.tracking_uri=mlruns is a folder.*allowed:"):
        tracking_uri("mlruns", tmp_path)


def test_check_refuses_a_store_that_cannot_be_written(tmp_path):
    require_module("mlflow", "mlflow")
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path}/file/sub/mlflow.db"
    with pytest.raises(SweeplrError, match=rf"^logger.tracking_uri={uri} cannot be written"):
        check(logger("mlflow", tracking_uri=uri), tmp_path)


def search(tmp_path: Path):
    """``mlflow.search_runs`` on the store in ``tmp_path`` (it reads the URI from the env)."""
    import os

    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        return mlflow.search_runs(search_all_experiments=True)
    finally:
        if saved is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def test_mlflow_sweep_is_a_parent_with_a_child_per_job(tmp_path):
    require_module("mlflow", "mlflow")
    from mlflow import MlflowClient

    from sweeplr.trackers import finish_sweep, log_run

    sweep = tmp_path / "sweep"
    for num, lr in enumerate((0.1, 0.01)):
        run_dir = sweep / str(num)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps(fake_record(lr)))
        log_run(
            logger("mlflow"),
            run_dir,
            fake_record(lr),
            HISTORY,
            base_dir=tmp_path,
            sweep_dir=sweep,
            run_name=f"lr={lr}",
        )
    (sweep / "summary.csv").write_text("job,lr\n0,0.1\n1,0.01\n")
    finish_sweep(logger("mlflow"), sweep)

    runs = search(tmp_path)
    parent = runs[runs["tags.sweeplr.kind"] == "sweep"]
    children = runs[runs["tags.sweeplr.kind"] == "job"]
    assert len(parent) == 1 and len(children) == 2
    parent_id = parent["run_id"].iloc[0]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert sorted(children["params.lr"]) == ["0.01", "0.1"]
    assert set(children["params.optimizer"]) == {"sgd"}
    assert set(children["metrics.final/test_accuracy"]) == {0.8}
    assert set(runs["status"]) == {"FINISHED"}
    assert json.loads((sweep / "mlflow_run.json").read_text())["run_id"] == parent_id

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    child = children["run_id"].iloc[0]
    history = client.get_metric_history(child, "train_loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.6), (20, 0.4), (30, 0.3)]
    assert [m.step for m in client.get_metric_history(child, "val_loss")] == [10, 20]
    assert {a.path for a in client.list_artifacts(child)} == {"metrics.json"}
    assert {a.path for a in client.list_artifacts(parent_id)} == {"summary.csv"}

    # A resumed sweep (an Optuna study run again in its folder) goes on in the same parent.
    log_run(
        logger("mlflow"), sweep / "0", fake_record(0.3), HISTORY, base_dir=tmp_path, sweep_dir=sweep
    )
    assert client.get_run(parent_id).info.status == "RUNNING"
    children = search(tmp_path).query("`tags.sweeplr.kind` == 'job'")
    assert len(children) == 3 and set(children["tags.mlflow.parentRunId"]) == {parent_id}


# --- train.py as a user runs it -----------------------------------------------------------------


def run_ok(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = run_train(tmp_path, "epochs=30", "plots=false", *args)
    assert proc.returncode == 0, proc.stderr
    assert "warning: logger=" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.slow
def test_tensorboard_single_run_and_batched_grid(tmp_path):
    require_module("tensorboard", "tensorboard")
    run_ok(tmp_path, "logger=tensorboard", "hydra.run.dir=one")
    steps = [e.step for e in read_events(tmp_path / "one" / "tensorboard").Scalars("val_loss")]
    assert steps == logged_epochs(30, 10) == [1, 2, 5, 10, 20, 30]  # the early rows too
    run_ok(tmp_path, "--multirun", "logger=tensorboard", "lr=0.1,0.01", "hydra.sweep.dir=grid")
    for num, lr in ((0, 0.1), (1, 0.01)):
        events = read_events(tmp_path / "grid" / str(num) / "tensorboard")
        assert session_hparams(events)["lr"].number_value == pytest.approx(lr)
        assert len(events.Scalars("train_loss")) == len(logged_epochs(30, 10))


@pytest.mark.slow
def test_tensorboard_optuna_trials_each_write_events(tmp_path):
    require_module("tensorboard", "tensorboard")
    args = ["hydra.sweeper.n_trials=3", "hydra.sweeper.params.epochs=30", "hydra.sweep.dir=s"]
    run_ok(tmp_path, "--multirun", "sweep=optuna", "logger=tensorboard", *args)
    logged = sorted(p.parent.parent.name for p in (tmp_path / "s").glob("*/tensorboard/*"))
    records = sorted(p.parent.name for p in (tmp_path / "s").glob("*/metrics.json"))
    assert len(records) == 3 and logged == records


def sweep_runs(tmp_path: Path, sweep: str):
    runs = search(tmp_path)
    runs = runs[runs["tags.sweeplr.run_dir"].str.startswith(str(tmp_path / sweep))]
    parent_id = json.loads((tmp_path / sweep / "mlflow_run.json").read_text())["run_id"]
    parent = search(tmp_path).set_index("run_id").loc[parent_id]
    assert parent["status"] == "FINISHED"  # closed by the sweep's end
    assert set(runs["tags.mlflow.parentRunId"]) == {parent_id}
    return runs


@pytest.mark.slow
def test_mlflow_single_run_then_batched_grid_in_one_store(tmp_path):
    require_module("mlflow", "mlflow")
    run_ok(tmp_path, "logger=mlflow", "plots=true", "hydra.run.dir=one")
    runs = search(tmp_path)
    assert len(runs) == 1 and runs["tags.sweeplr.kind"].iloc[0] == "run"
    assert "tags.mlflow.parentRunId" not in runs or runs["tags.mlflow.parentRunId"].isna().all()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    artifacts = {a.path for a in client.list_artifacts(runs["run_id"].iloc[0])}
    assert {"model.pt", "metrics.json", "history.csv", "loss.png"} <= artifacts

    run_ok(tmp_path, "--multirun", "logger=mlflow", "lr=0.1,0.01", "hydra.sweep.dir=grid")
    runs = sweep_runs(tmp_path, "grid")
    assert sorted(runs["params.lr"]) == ["0.01", "0.1"]
    assert set(runs["params.epochs"]) == {"30"}
    assert all(math.isfinite(v) for v in runs["metrics.val_loss"])
    assert len(search(tmp_path)) == 4  # the single run, the grid's parent and its 2 jobs


@pytest.mark.slow
def test_mlflow_optuna_and_joblib_sweeps(tmp_path):
    require_module("mlflow", "mlflow")
    require_module("hydra_plugins.hydra_joblib_launcher", "dev")
    args = ["hydra.sweeper.n_trials=3", "hydra.sweeper.params.epochs=30", "hydra.sweep.dir=s"]
    run_ok(tmp_path, "--multirun", "sweep=optuna", "logger=mlflow", *args)
    runs = sweep_runs(tmp_path, "s")
    assert len(runs) == 3 and runs["params.lr"].nunique() == 3

    run_ok(
        tmp_path,
        "--multirun",
        "launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=mlflow",
        "lr=0.1,0.01",
        "hydra.sweep.dir=jl",
    )
    assert sorted(sweep_runs(tmp_path, "jl")["params.lr"]) == ["0.01", "0.1"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["logger=wandb"], "logger=wandb is not an option of logger; allowed: mlflow, none,"),
        (["logger=mlflow", "logger.tracking_uri=sqlite:///f/m.db"], "cannot be written"),
        (["--multirun", "logger=mlflow", "logger.tracking_uri=sqlite:///f/m.db"], "cannot be"),
    ],
)
def test_bad_logger_is_one_line(tmp_path, args, needle):
    (tmp_path / "f").write_text("a file where a folder should be")
    proc = run_train(tmp_path, "epochs=5", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr
    if "logger=mlflow" in args:
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert "logger.tracking_uri=sqlite:///f/m.db" in line and "allowed:" in line
        assert not list(tmp_path.glob("multirun/*/*/0"))  # refused before its first job


def test_check_refuses_an_mlflow_server_that_does_not_answer(tmp_path):
    """Before training: MLflow's client would retry for minutes after the run instead."""
    import socket

    require_module("mlflow", "mlflow")
    with socket.socket() as listening, socket.socket() as silent:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check(logger("mlflow", tracking_uri=f"http://127.0.0.1:{port}"), tmp_path)  # answers
        silent.bind(("127.0.0.1", 0))  # a port held, so no one else takes it, never listened on
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(SweeplrError) as error:
            check(logger("mlflow", tracking_uri=uri), tmp_path)
    assert str(error.value) == (
        f"logger.tracking_uri={uri} cannot be reached (Connection refused); "
        "allowed: a running MLflow server, a sqlite:/// store, or logger=none"
    )
