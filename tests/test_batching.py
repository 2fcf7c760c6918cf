"""Batched training gives each configuration what a run of its own gives, and the launcher's
composition equals Hydra's."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from sweeplr.runner import batch_key, train_runs
from sweeplr.spec import run_spec
from tests.conftest import CONF_DIR, compose_config

BASE = ("epochs=60", "device=cpu", "progress=false")


def spec(*overrides):
    return run_spec(compose_config(*BASE, *overrides))


def test_batch_key_separates_what_cannot_share_a_pass():
    a = spec("lr=0.1")
    assert batch_key(a) == batch_key(spec("lr=0.5", "optimizer.momentum=0.9"))
    assert batch_key(a) == batch_key(spec("seed=3"))  # full batch: the seed is the init only
    assert batch_key(a) == batch_key(spec("objective=val_accuracy"))  # pruning is per config
    assert batch_key(a) != batch_key(spec("optimizer=adam"))
    assert batch_key(a) != batch_key(spec("epochs=61"))
    assert batch_key(a) != batch_key(spec("dataset=iris"))
    mini = spec("batch_size=32")
    assert batch_key(mini) != batch_key(spec("batch_size=32", "seed=3"))


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
def test_batched_runs_match_solo_runs(overrides):
    specs = [spec(*o) for o in overrides]
    batched = train_runs(specs)
    for i, one in enumerate(specs):
        solo = train_runs([one])[0]
        again = train_runs([one])[0]  # a rerun is bit-identical
        assert again.metrics == solo.metrics and again.history == solo.history
        got = batched[i]
        assert got.status == solo.status == "completed"
        for part in ("train", "val", "test"):
            for metric, value in solo.metrics[part].items():
                assert got.metrics[part][metric] == pytest.approx(value, rel=1e-5, abs=1e-7)
        assert got.batch_configs == len(specs) and solo.batch_configs == 1


@pytest.mark.parametrize(
    "overrides",
    [
        ("optimizer=sgd", "optimizer.momentum=0.9", "lr=0.2", "batch_size=64", "seed=5"),
        ("optimizer=adam", "lr=0.05", "seed=2"),
        ("dataset=iris", "stratify=true", "optimizer=adamw", "lr=0.1", "batch_size=16"),
    ],
)
def test_reference_path_is_the_engines_oracle(overrides):
    """``engine=reference`` (torch.optim + autograd) gives the engine's weights, history and
    metrics through a whole run, mini-batch loss semantics included."""
    engine = train_runs([spec(*overrides)])[0]
    reference = train_runs([spec(*overrides, "engine=reference")])[0]
    torch.testing.assert_close(
        engine.model.linear.weight, reference.model.linear.weight, rtol=1e-4, atol=1e-5
    )
    assert engine.history["epoch"] == reference.history["epoch"]
    for column in ("train_loss", "val_loss", "val_accuracy"):
        assert engine.history[column] == pytest.approx(reference.history[column], rel=1e-4)
    for part in ("train", "val", "test"):
        for metric, value in reference.metrics[part].items():
            assert engine.metrics[part][metric] == pytest.approx(value, rel=1e-4, abs=1e-6)


def plain(cfg, node):
    from omegaconf import OmegaConf

    if node == "task":
        return {
            k: OmegaConf.to_container(v, resolve=False) if OmegaConf.is_config(v) else v
            for k, v in cfg.items()
            if k != "hydra"
        }
    return OmegaConf.to_container(cfg.hydra, resolve=False)


def test_job_composer_matches_hydra_composition():
    """Every kind of override the launcher composes fast gives Hydra's own config, Hydra node
    included (the overrides it records, the job's env_set, the override dirname)."""
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
            ["lr=.5", "optimizer=sgd", "optimizer.momentum=0.9", "seed=+2"],
            ["lr=1", "optimizer=sgd", "optimizer.momentum=0", "epochs=3"],  # ints into floats
            ["lr=0.3", "+dataset.note=x", "++hydra.job.env_set.SWEEPLR_TRIAL=17"],
            ["lr=0.4", "~hydra.callbacks.summary", "hydra.job.chdir=true"],
        ):
            job = composer.job(0, overrides)
            full = loader.load_sweep_config(master, overrides)
            with open_dict(full):  # as the launcher numbers a job
                full.hydra.job.id, full.hydra.job.num = "0", 0
            # A copy of its own (Hydra's run_job), and the template's shared node (sweeplr's).
            shared = job.template.full_config(job.task_ops)
            job.set_fields(job.template.hydra, shared, job.template.held)
            for fast in (job.whole_config(), shared):
                for node in ("task", "hydra"):
                    assert json.dumps(plain(fast, node), sort_keys=True, default=str) == json.dumps(
                        plain(full, node), sort_keys=True, default=str
                    ), (overrides, node)
                assert fast.hydra.job.override_dirname == full.hydra.job.override_dirname
            assert plain(job.task_config, "task") == plain(full, "task")
        # One full composition per distinct set of structural overrides and Hydra values other
        # than env_set entries: adam, sgd, iris with +extra, the Hydra values, and none at all.
        assert sorted(composer.templates) == [
            (),
            ("dataset=iris", "+extra=1"),
            ("optimizer=adam",),
            ("optimizer=sgd",),
            ("~hydra.callbacks.summary", "hydra.job.chdir=true"),
        ]


def test_batched_within_the_stated_bound_of_solo_and_reruns_bit_identical():
    """README: a configuration batched with others agrees with it trained alone to float32
    rounding (tests hold 1e-5 relative; measured 2.1e-7) on wide data, where the kernels for a
    batch sum in another order; a rerun of the same command is bit-identical."""
    base = (
        "dataset=breast_cancer",
        "optimizer=adamw",
        "optimizer.weight_decay=0.01",
        "seed=1",
        "epochs=200",
        "device=cpu",
        "progress=false",
    )
    specs = [run_spec(compose_config(*base, f"lr={lr}")) for lr in (0.03, 0.1)]
    solo, batched = train_runs(specs[:1])[0], train_runs(specs)[0]
    for again, first in ((train_runs(specs[:1])[0], solo), (train_runs(specs)[0], batched)):
        assert again.metrics == first.metrics and again.history == first.history  # bit for bit
    for split in ("train", "val", "test"):
        for name, value in solo.metrics[split].items():
            assert batched.metrics[split][name] == pytest.approx(value, rel=1e-5, abs=1e-7)
