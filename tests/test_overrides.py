"""train.py's command line checked before Hydra composes it (sweeplr/overrides.py), and the grid
sweeper's word on a sweep that expands to one job."""

from __future__ import annotations

import shutil

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweeplr.errors import SweeplrError
from sweeplr.overrides import check_command_line, check_overrides
from sweeplr.plugins.grid_sweeper import one_job_warning
from tests.conftest import CONF_DIR

OPTIMIZERS = "adam, adamw, lbfgs, sgd"
MISTAKES = [
    (["learning_rate=0.01"], "learning_rate is not a setting; did you mean lr? (lr=0.01)"),
    (["+learning_rate=0.01"], "learning_rate is not a setting; did you mean lr? (lr=0.01)"),
    (["optimizer.lr=0.5"], "optimizer.lr is not a setting; did you mean lr? (lr=0.5)"),
    (["+optimizer.lr=0.5"], "optimizer.lr is not a setting; did you mean lr? (lr=0.5)"),
    (
        ["optimizer.learning_rate=0.5"],
        "optimizer.learning_rate is not a setting; did you mean lr? (lr=0.5)",
    ),
    (
        ["optimizer=adma"],
        f"optimizer=adma is not an option of optimizer; did you mean adam? allowed: {OPTIMIZERS}",
    ),
    (
        ["--multirun", "optimizer=sgd,adma"],
        f"optimizer=adma is not an option of optimizer; did you mean adam? allowed: {OPTIMIZERS}",
    ),
    (
        ["optimizer=rmsprop"],
        f"optimizer=rmsprop is not an option of optimizer; allowed: {OPTIMIZERS}",
    ),
    (
        ["optimizer=optimizer_schema"],
        f"optimizer=optimizer_schema is not an option of optimizer; allowed: {OPTIMIZERS}",
    ),
    (
        ["+experiment=sed"],
        "+experiment=sed is not an option of experiment; did you mean seed? allowed: seed",
    ),
    (
        ["dataset.path=my.csv"],
        "dataset.path is an option of dataset=csv, not of dataset=blobs (add dataset=csv)",
    ),
    (  # the data set is the line's, wherever it stands
        ["dataset.n_samples=50", "dataset=iris,synthetic"],
        (
            "dataset.n_samples is an option of dataset=blobs or dataset=synthetic, not of "
            "dataset=iris (add one of them)"
        ),
    ),
    (  # a preset that cannot choose the data set leaves the default sure
        ["optimizer=lbfgs", "dataset.path=my.csv"],
        "dataset.path is an option of dataset=csv, not of dataset=blobs (add dataset=csv)",
    ),
    (
        ["lr=[0.1,0.01]"],
        (
            "lr=[0.1,0.01] is a list, and lr takes a number; allowed: one value "
            "(to run each: --multirun lr=0.1,0.01)"
        ),
    ),
    (
        ["batch_size=[ 8 , 16 ]"],
        (
            "batch_size=[ 8 , 16 ] is a list, and batch_size takes an integer or null; allowed: one "
            "value (to run each: --multirun batch_size=8,16)"
        ),
    ),
    (
        ["-m", "optimizer=adam", "optimizer.beta=[0.8,0.9]"],
        (
            "optimizer.beta is not a setting; did you mean optimizer.betas? "
            "(optimizer.betas=[0.8,0.9])"
        ),
    ),
]


@pytest.mark.parametrize(("argv", "line"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_on_the_line_is_one_error_line(argv, line, capsys):
    with pytest.raises(SystemExit) as info:
        check_command_line(CONF_DIR, argv)
    assert info.value.code == f"error: {line}"  # exit status 1, the line on stderr
    assert capsys.readouterr() == ("", "")
    with pytest.raises(SweeplrError) as error:  # sweeplr lr-find's way in: the same line
        check_overrides([a for a in argv if not a.startswith("-")], CONF_DIR)
    assert str(error.value) == line


FINE_OR_HYDRAS = [
    ["lr=0.1", "optimizer=adam", "optimizer.betas=[0.8,0.9]", "class_weight={red: 2}"],
    ["--multirun", "lr=0.1,0.01", "optimizer=choice(sgd,adam)", "dataset=glob(*)"],
    ["dataset=csv", "dataset.path=my.csv", "dataset.target=y", "+experiment=seed"],
    ["pruner=null", "experiment=null", "~logger", "hydra.run.dir=x", "hydra/launcher=basic"],
    ["--cfg", "job", "-p", "optimizer", "epochs=5"],
    # presets that may choose the data set: its keys are Hydra's to judge
    ["experiment=seed", "dataset.path=my.csv"],
    ["sweep=logistic_cv", "dataset.path=my.csv"],
    # another config, a rerun, completion: what the line means is Hydra's
    ["--config-dir", "elsewhere", "learning_rate=0.01"],
    ["--config-name", "other", "learning_rate=0.01"],
    ["-cp", "elsewhere", "optimizer=adma"],
    ["--experimental-rerun", "x/.hydra/config.pickle", "learning_rate=0.01"],
    ["-sc", "install=bash"],
    # lines Hydra refuses itself, with its own words
    ["lr=("],
    ["--bogus", "learning_rate=0.01"],
    ["--cfg", "nothing"],
    # value paths and packages
    ["optimizer@opt2=adam", "optimizer.betas[0]=0.8"],
]


@pytest.mark.parametrize("argv", FINE_OR_HYDRAS, ids=[" ".join(a) for a in FINE_OR_HYDRAS])
def test_a_line_it_cannot_be_sure_of_is_left_to_hydra(argv, capsys):
    check_command_line(CONF_DIR, argv)
    assert capsys.readouterr() == ("", "")  # nothing printed: Hydra prints what it prints


@pytest.mark.parametrize("flag", ["--version", "--vers", "--help", "--hydra-help", "--info"])
def test_help_and_version_are_hydras_and_print_once(flag, capsys):
    check_command_line(CONF_DIR, [flag])
    assert capsys.readouterr() == ("", "")


def test_aliases_in_the_primary_config_leave_the_keys_to_hydra(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    with (conf / "config.yaml").open("a") as primary:
        primary.write("\n# hydra:\n#   aliases:\n#     learning_rate: lr\n")
    check_overrides(["learning_rate=0.01"], conf)
    with pytest.raises(SweeplrError, match="optimizer=adma"):
        check_overrides(["optimizer=adma"], CONF_DIR)


def parsed(*overrides: str):
    return OverridesParser.create().parse_overrides(list(overrides))


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [
        (
            ["lr=range(0.001,0.1)", "epochs=5"],
            (
                "this sweep runs 1 job: lr=range(0.001,0.1) expands to one value, 0.001: range steps "
                "by 1 unless given range(start,stop,step)"
            ),
        ),
        (
            ["epochs=range(10,20,step=50)"],
            (
                "this sweep runs 1 job: epochs=range(10,20,step=50) expands to one value, 10: range "
                "steps by 50"
            ),
        ),
        (["lr=choice(0.1)"], "this sweep runs 1 job: lr=choice(0.1) expands to one value, 0.1"),
        (["lr=0.1", "epochs=5"], None),  # no sweep given: one job is what was asked
    ],
)
def test_a_sweep_of_one_job_names_the_override_that_made_it(overrides, warning):
    assert one_job_warning(parsed(*overrides)) == warning
