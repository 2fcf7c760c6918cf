"""Batched training through run_jobs/run_batch gives each run what a run of its own gives."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweeplr.experiment import DeviceData, batch_key, run_batch, run_experiment
from sweeplr.model import LogisticRegression
from sweeplr.training import train
from tests.conftest import CONF_DIR, compose_config

BASE = ("epochs=60", "device=cpu", "progress=false")


def test_batch_key_separates_what_cannot_share_a_pass():
    a = compose_config(*BASE, "lr=0.1")
    assert batch_key(a) == batch_key(compose_config(*BASE, "lr=0.5", "optimizer.momentum=0.9"))
    assert batch_key(a) == batch_key(compose_config(*BASE, "seed=3"))  # full batch: init only
    assert batch_key(a) != batch_key(compose_config(*BASE, "optimizer=adam"))
    assert batch_key(a) != batch_key(compose_config(*BASE, "epochs=61"))
    mini = compose_config(*BASE, "batch_size=32")
    assert batch_key(mini) != batch_key(compose_config(*BASE, "batch_size=32", "seed=3"))


@pytest.mark.parametrize(
    "overrides",
    [
        [("lr=0.1",), ("lr=1.0", "optimizer.momentum=0.9"), ("lr=0.01", "seed=4")],
        [
            ("optimizer=adam", "lr=0.1"),
            ("optimizer=adam", "lr=0.003", "optimizer.weight_decay=0.01"),
        ],
        [
            ("dataset=iris", "optimizer=adamw", "lr=0.1", "batch_size=16"),
            ("dataset=iris", "optimizer=adamw", "lr=0.02", "batch_size=16"),
        ],
    ],
)
def test_batched_runs_match_solo_runs(tmp_path, overrides):
    cfgs = [compose_config(*BASE, *o) for o in overrides]
    batched = run_batch(cfgs, [tmp_path / f"b{i}" for i in range(len(cfgs))])
    for i, cfg in enumerate(cfgs):
        solo = run_experiment(cfg, tmp_path / f"s{i}").record
        got = batched[i].record
        assert got["status"] == solo["status"] == "completed"
        for part in ("train", "val", "test"):
            for metric, value in solo["metrics"][part].items():
                assert got["metrics"][part][metric] == pytest.approx(value, rel=1e-5, abs=1e-7)
        assert got["batch"]["configs"] == len(cfgs)


def test_engine_run_follows_the_torch_optim_reference(tmp_path):
    cfg = compose_config(
        *BASE, "optimizer=sgd", "optimizer.momentum=0.9", "lr=0.2", "batch_size=64", "seed=5"
    )
    run_experiment(cfg, tmp_path)
    data = DeviceData.load(cfg)
    torch.manual_seed(5)
    model = LogisticRegression(2, 2)
    from sweeplr.experiment import optimizer_spec

    train(model, *data.train, *data.val, optimizer_spec(cfg), epochs=60, batch_size=64, seed=5)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(
        saved["linear.weight"], model.linear.weight.detach(), rtol=1e-5, atol=1e-6
    )


def test_job_composer_matches_hydra_composition():
    from hydra.core.global_hydra import GlobalHydra

    from sweeplr.plugins.batch_launcher import JobComposer

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        master = compose(config_name="config", overrides=["epochs=7"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        composer = JobComposer(loader, master)
        for overrides in (
            ["lr=0.1", "optimizer=adam"],
            ["lr=0.2", "optimizer=adam", "optimizer.betas=[0.8,0.9]"],
            ["optimizer=sgd", "seed=3", "batch_size=null"],
            ["dataset=iris", "+extra=1"],
            ["lr=1e-3", "epochs=5", "optimizer=adam", "optimizer.eps=1.5e-07", "plots=false"],
            ["lr=.5", "trial=17", "optimizer=sgd", "optimizer.momentum=0.9", "seed=+2"],
        ):
            fast = composer.compose(overrides)
            full = loader.load_sweep_config(master, overrides)
            assert json.dumps(plain_task(fast), sort_keys=True) == json.dumps(
                plain_task(full), sort_keys=True
            ), overrides
            assert list(fast.hydra.overrides.task) == overrides
            assert fast.hydra.job.override_dirname == full.hydra.job.override_dirname
        assert len(composer.compositions) == 3  # adam, sgd, iris+extra


def plain_task(cfg):
    from omegaconf import OmegaConf

    return {
        k: OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }
