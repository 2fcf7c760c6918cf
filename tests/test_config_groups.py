"""conf/ against the schemas: every option composes typed, schemas are no options, and a key the
schema has not got is an error in validation, added with `+` or not (the compose API's path)."""

from __future__ import annotations

import importlib.util

import pytest
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf

from sweeplr.config import DATASET_SCHEMAS, Config, field_types, node_schema
from sweeplr.errors import SweeplrError
from sweeplr.spec import run_spec
from tests.conftest import CONF_DIR, compose_config

# What an option needs besides itself to compose and validate.
NEEDS = {
    "dataset/csv": ("dataset.path=d.csv", "dataset.target=y"),
    "pruner": ("sweep=optuna",),
}
# The launcher presets need Hydra's launcher plugins (the `cluster` extra).
PLUGINS = {
    "launcher/joblib": "hydra_plugins.hydra_joblib_launcher",
    "launcher/slurm": "hydra_plugins.hydra_submitit_launcher",
    "launcher/submitit_local": "hydra_plugins.hydra_submitit_launcher",
}
OPTIONS = sorted(f"{path.parent.name}/{path.stem}" for path in CONF_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_typed_and_validates(option):
    plugin = PLUGINS.get(option)
    if plugin is not None and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{option} needs {plugin} (pip install -e '.[cluster]')")
    group, name = option.split("/")
    overrides = (f"{group}={name}", *NEEDS.get(option, NEEDS.get(group, ())))
    cfg = compose_config(*overrides)
    spec = run_spec(cfg, overrides)  # every key the schema's, every value in range
    assert OmegaConf.get_type(cfg) is Config
    for node in field_types(Config):
        schema = node_schema(node, spec.data.dataset["name"])
        if schema is not None:  # a group's node is typed by its schema, not a plain dict
            assert OmegaConf.get_type(cfg[node]) is schema, node


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        (("optimizer=adam", "optimizer.eps=abc"), "optimizer.eps"),
        (("optimizer=lbfgs", "optimizer.history_size=abc"), "optimizer.history_size"),
        (("dataset=synthetic", "dataset.n_classes=abc"), "dataset.n_classes"),
        (("scheduler=step", "scheduler.gamma=abc"), "scheduler.gamma"),
        (("logger=tensorboard", "logger.subdir=[a]"), "logger.subdir"),
    ],
)
def test_a_group_option_is_type_checked_by_its_schema(overrides, where):
    with pytest.raises(HydraException, match=where):
        compose_config(*overrides)


def test_no_schema_is_an_option_of_a_group():
    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()}
    store = ConfigStore.instance()
    for group in groups:
        stored = store.list(group) if group in store.repo else []
        assert not [name for name in stored if "_schema" in name], group
    with pytest.raises(HydraException, match="Could not find 'dataset/blobs_schema'") as info:
        compose_config("dataset=blobs_schema")
    assert "_schema" not in str(info.value).split("Available options")[1]
    assert set(DATASET_SCHEMAS) == {p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")}


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (("+optimizer.lr=0.5",), "optimizer.lr is not a setting; did you mean lr? (lr=0.5)"),
        (("+learning_rate=0.01",), "learning_rate is not a setting; did you mean lr? (lr=0.01)"),
        (
            ("+optimizer.learning_rate=1e-3",),
            "optimizer.learning_rate is not a setting; did you mean lr? (lr=1e-3)",
        ),
        (
            ("+optimizer.momentun=0.9",),
            (
                "optimizer.momentun is not a setting; did you mean optimizer.momentum? "
                "(optimizer.momentum=0.9)"
            ),
        ),
        (("+epoch=5",), "epoch is not a setting; did you mean epochs? (epochs=5)"),
        (
            ("+optimizer.epochs=5",),
            "optimizer.epochs is not a setting; did you mean epochs? (epochs=5)",
        ),
        (
            ("++momentum=0.9",),
            "momentum is not a setting; did you mean optimizer.momentum? (optimizer.momentum=0.9)",
        ),
        (
            ("+dataset.path=my.csv",),
            "dataset.path is an option of dataset=csv, not of dataset=blobs (add dataset=csv)",
        ),
        (
            ("dataset=iris", "+dataset.n_samples=50"),
            (
                "dataset.n_samples is an option of dataset=blobs or dataset=synthetic, not of "
                "dataset=iris (add one of them)"
            ),
        ),
        (
            ("+scheduler.foo=1",),
            (
                "scheduler.foo is not a setting of scheduler; allowed: name, warmup_epochs, "
                "warmup_start_factor, step_size, gamma, min_lr, patience, threshold, pct_start, "
                "div_factor, final_div_factor"
            ),
        ),
        (
            ("+zzz.yyy=1",),
            "zzz.yyy is not a setting; allowed: " + ", ".join(field_types(Config)),
        ),
        (("+zzz={}",), "zzz is not a setting; allowed: " + ", ".join(field_types(Config))),
    ],
)
def test_a_key_the_schema_has_not_got_is_one_line(overrides, line):
    with pytest.raises(SweeplrError) as error:
        run_spec(compose_config(*overrides), overrides)
    assert str(error.value) == line


def test_a_key_of_a_yaml_is_named_without_a_value():
    cfg = compose_config("+penalty.strength=2")
    with pytest.raises(SweeplrError) as error:
        run_spec(cfg)  # no overrides: as from a config file
    assert (
        str(error.value)
        == "penalty.strength is not a setting of penalty; allowed: name, C, l1_ratio"
    )


def test_free_mappings_and_lists_keep_their_own_keys():
    run_spec(
        compose_config(
            "class_weight={red: 2, blue: 1}", "optimizer=adam", "optimizer.betas=[0.8,0.9]"
        )
    )


def test_an_option_the_optimizer_lacks_is_one_line():
    for overrides, message in (
        (
            ("optimizer=adam", "optimizer.momentum=0.9"),
            "optimizer.momentum=0.9 does not apply to optimizer=adam; allowed: its options weight_decay, betas, eps",
        ),
        (
            ("optimizer=sgd", "optimizer.betas=[0.5,0.9]"),
            "optimizer.betas=[0.5,0.9] does not apply to optimizer=sgd; allowed: its options weight_decay, momentum, nesterov",
        ),
    ):
        with pytest.raises(SweeplrError) as error:
            run_spec(compose_config(*overrides), overrides)
        assert str(error.value) == message
    run_spec(compose_config("optimizer=sgd", "optimizer.momentum=0.9"))  # its own option


@pytest.mark.parametrize("preset", ["optuna", "logistic_cv"])
@pytest.mark.parametrize("sampler", ["random", "grid", "cmaes", "qmc"])
def test_a_search_presets_sampler_is_replaced_whole(preset, sampler):
    """sweep=optuna's TPE with constant_liar is a sampler option of its own: another sampler
    replaces it, with no TPE-only key left over to refuse the config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        chosen = compose("config", [f"sweep={preset}"], return_hydra_config=True)
        other = compose(
            "config",
            [f"sweep={preset}", f"hydra/sweeper/sampler={sampler}"],
            return_hydra_config=True,
        )
    assert chosen.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert chosen.hydra.sweeper.sampler.constant_liar is True
    assert "constant_liar" not in other.hydra.sweeper.sampler
    assert other.hydra.sweeper.sampler.seed == 0
