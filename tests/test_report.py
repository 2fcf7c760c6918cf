"""report.html's parts, on hand-made inputs: the command as typed (grid and Optuna), numbers to
4 significant figures, YAML spelling, the grouped table only for repeated sweeps, and what
differs from the defaults. The page itself, on real runs and in Chromium, is checked in
tests/test_plots_predict.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

from sweeplr.provenance import (
    config_changes,
    default_config,
    grid_command_args,
    hydra_distribution,
    optuna_command_args,
    sampler_settings,
    sweep_command,
    yaml_text,
)
from sweeplr.records import write_command
from sweeplr.report import significant, write_report
from sweeplr.sweep_plots import repeat_groups

CONFIGURED = {
    "lr": "tag(log, interval(0.0001, 1.0))",
    "optimizer": "choice(sgd, adam, adamw)",
    "epochs": "choice(100, 300, 1000)",
}
# A trial's overrides as the Optuna sweeper and the launcher leave them in .hydra/hydra.yaml.
TRIAL_OVERRIDES = {
    "hydra": [
        "hydra.sweeper.n_trials=6",
        "hydra.sweep.dir=/tmp/opt",
        "hydra.mode=MULTIRUN",
        "hydra.sweeper.study_name='optuna-4b4cf7b4'",
        "hydra.sweeper.storage='journal:/tmp/opt/optuna.journal'",
        "hydra.sweep.subdir=${hydra.job.env_set.SWEEPLR_TRIAL}",
        "++hydra.job.env_set.SWEEPLR_TRIAL=0",
    ],
    "task": ["lr=0.00077", "optimizer=adamw", "epochs=50", "sweep=optuna"],
}


def test_grid_command_is_the_typed_overrides() -> None:
    overrides = {
        "hydra": ["hydra.sweep.dir=/tmp/grid", "hydra.mode=MULTIRUN"],
        "task": ["lr=0.1,0.01", "optimizer=sgd,adam", "seed=0,1"],
    }
    assert grid_command_args(overrides) == [
        "hydra.sweep.dir=/tmp/grid",
        "lr=0.1,0.01",
        "optimizer=sgd,adam",
        "seed=0,1",
    ]


def test_optuna_command_keeps_typed_overrides_and_drops_sampled_values() -> None:
    space = [
        ("lr", CONFIGURED["lr"], False),
        ("optimizer", CONFIGURED["optimizer"], False),
        ("epochs", "choice(50)", True),  # typed on the command line: it stays in the command
    ]
    assert optuna_command_args(TRIAL_OVERRIDES, space) == [
        "hydra.sweeper.n_trials=6",
        "hydra.sweep.dir=/tmp/opt",
        "epochs=choice(50)",
        "sweep=optuna",
    ]


def optuna_sweep_dir(tmp_path: Path) -> optuna.Study:
    """A trial folder with the .hydra/hydra.yaml an Optuna sweep writes, and its study."""
    node = {
        "sweeper": {
            "_target_": "sweeplr.plugins.optuna_sweeper.SweeplrOptunaSweeper",
            "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
            "n_trials": 6,
            "n_jobs": 16,
            "direction": "auto",
            "pruner": None,
            "params": CONFIGURED,
        },
        "overrides": TRIAL_OVERRIDES,
    }
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": node}))
    distributions, _, _ = create_params_from_overrides(
        [*(f"{k}={v}" for k, v in CONFIGURED.items() if k != "epochs"), "epochs=choice(50)"]
    )
    study = optuna.create_study()
    params = {"lr": 0.00077, "optimizer": "adamw", "epochs": 50}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=1))
    return study


def test_optuna_command_search_space_and_sampler_from_the_trial_and_study(
    tmp_path: Path,
) -> None:
    study = optuna_sweep_dir(tmp_path)
    command, source, space, sweeper = sweep_command(tmp_path, study)
    assert command == (
        "python train.py --multirun hydra.sweeper.n_trials=6 hydra.sweep.dir=/tmp/opt "
        "'epochs=choice(50)' sweep=optuna"
    )
    assert "hydra.yaml" in source
    assert space == [
        ("lr", "tag(log, interval(0.0001, 1.0))", False),
        ("optimizer", "choice(sgd, adam, adamw)", False),
        ("epochs", "choice(50)", True),
    ]
    assert sweeper is not None and sweeper["n_trials"] == 6
    settings = dict(sampler_settings({**sweeper, "storage": "journal:/s/optuna.journal"}))
    assert settings["study"].endswith(" in /s/optuna.journal")  # as optuna-dashboard takes it
    assert settings["dashboard"] == "optuna-dashboard /s/optuna.journal"


@pytest.mark.parametrize(
    "text",
    [
        "tag(log, interval(0.0001, 1.0))",
        "interval(0.0, 0.01)",
        "choice(sgd, adam)",
        "choice(50)",
        "int(interval(1, 5))",
        "tag(log, int(interval(1, 100)))",
        "range(1, 10, 2)",
    ],
)
def test_a_distribution_reads_back_as_the_same_distribution(text: str) -> None:
    parsed, _, _ = create_params_from_overrides([f"x={text}"])
    again, _, _ = create_params_from_overrides([f"x={hydra_distribution(parsed['x'])}"])
    assert again["x"] == parsed["x"]


def test_numbers_to_4_significant_figures() -> None:
    assert significant(0.123456789) == "0.1235"
    assert significant(123456.0) == "1.235e+05"
    assert significant(np.float64(0.9925373134)) == "0.9925"
    assert significant(1.0) == "1"
    assert significant(50) == "50"
    assert significant(math.nan) == ""
    assert significant(None) == ""
    assert significant(np.bool_(False)) == "false"
    assert significant("adam") == "adam"


def test_values_in_yaml_spelling() -> None:
    assert yaml_text(False) == "false"
    assert yaml_text(np.bool_(True)) == "true"
    assert yaml_text(None) == "null"
    assert yaml_text(math.nan) == "null"
    assert yaml_text(1e-08) == "1.0e-08"
    assert yaml_text((0.9, 0.999)) == "[0.9, 0.999]"
    assert yaml_text("null") == "'null'"  # the string, not the missing value
    assert yaml_text("sgd") == "sgd"


def runs(**columns: list[object]) -> pd.DataFrame:
    table = pd.DataFrame({"job": range(len(next(iter(columns.values())))), **columns})
    return table.assign(status="completed", objective=1.0, run_dir="x")


def test_grouped_only_when_runs_differ_only_in_seed() -> None:
    repeated = runs(lr=[0.1, 0.1, 0.01, 0.01], seed=[0, 1, 0, 1], nesterov=[False] * 4)
    assert repeat_groups(repeated) == ["lr"]
    seeds_only = runs(optimizer=["sgd"] * 3, seed=[0, 1, 2])
    assert repeat_groups(seeds_only) == ["optimizer"]
    assert repeat_groups(runs(lr=[0.1, 0.01], seed=[0, 0])) is None  # seed constant
    assert repeat_groups(runs(lr=[0.1, 0.01, 0.3], seed=[4, 7, 9])) is None  # sampled seeds
    assert repeat_groups(runs(lr=[0.1, 0.01])) is None


def test_config_changes_leave_out_swept_keys_and_spell_yaml() -> None:
    configs = [
        {"lr": 0.1, "epochs": 50, "optimizer.nesterov": True, "batch_size": None, "seed": 0},
        {"lr": 0.01, "epochs": 50, "optimizer.nesterov": True, "batch_size": None, "seed": 0},
    ]
    defaults = {"lr": 0.1, "epochs": 1000, "optimizer.nesterov": False, "batch_size": 32, "seed": 0}
    assert config_changes(configs, defaults) == [
        ("epochs", "50", "1000"),
        ("optimizer.nesterov", "true", "false"),
        ("batch_size", "null", "32"),
    ]


def test_default_config_is_composed_from_the_conf_folder() -> None:
    defaults = default_config(None)
    assert defaults is not None
    assert defaults["optimizer.nesterov"] is False
    assert defaults["batch_size"] is None
    assert not any(key.startswith("hydra") for key in defaults)


def test_a_report_without_runs_records_still_has_the_optuna_sections(tmp_path: Path) -> None:
    study = optuna_sweep_dir(tmp_path)
    table = runs(lr=[0.00077]).assign(run_dir=str(tmp_path / "0"))
    page = write_report(tmp_path, table, study).read_text()
    assert "<h2>Search space</h2>" in page and "TPESampler (seed 0)" in page
    assert "&#x27;epochs=choice(50)&#x27;" in page  # quoted as a shell needs it
    assert 'id="grouped"' not in page


def test_configs_read_line_by_line_equal_configs_parsed_whole(monkeypatch):
    """The sweep report's fast reading of thousands of configs gives what parsing each gives."""
    import yaml
    from omegaconf import OmegaConf

    from sweeplr import provenance
    from sweeplr.provenance import flat_configs, flatten

    parsed_whole: list[str] = []
    parse = provenance._yaml_text_value

    def counted(text: str) -> object:
        if "\n" in text.strip():
            parsed_whole.append(text)
        return parse(text)

    monkeypatch.setattr(provenance, "_yaml_text_value", counted)
    from tests.conftest import compose_config

    base = OmegaConf.to_yaml(compose_config())
    variants = [
        base,
        base.replace("seed: 0", "seed: 17"),
        base.replace("lr: 0.01", "lr: 1.0e-05"),
        base.replace("  name: sgd", "  name: adam"),
        base.replace("  - 0.9\n", "  - 0.8\n"),  # a list item: parsed whole
        base.replace("objective: val_loss", "objective: '0'"),  # a quoted text
        base.replace("cv: null", "cv: 5"),
        base.replace("class_weight: null", "class_weight:\n  red: 2.0"),  # more lines
        base.replace("standardize: true", "standardize: false").replace("seed: 0", "seed: 3"),
    ]
    variants.append(yaml.safe_dump({"plain": 1}) + "another: [1, 2]\n")  # another shape
    expected = [flatten(yaml.safe_load(text)) for text in variants]
    got = flat_configs(variants)
    assert got == expected
    assert [type(v) for c in got for v in c.values()] == [
        type(v) for c in expected for v in c.values()
    ]
    # Parsed whole: the first, the list item, the longer one, the other shape.
    assert len(parsed_whole) == 4
    # A first config whose value is folded onto a second line: a change of its first line is
    # no one-line entry.
    folded = base.replace("objective: val_loss", "objective: first part\n  second part")
    other = folded.replace("first part", "other part")
    assert flat_configs([folded, other]) == [
        flatten(yaml.safe_load(folded)),
        flatten(yaml.safe_load(other)),
    ]
    assert flatten(yaml.safe_load(other))["objective"] == "other part second part"
    assert len(parsed_whole) == 6


@pytest.mark.parametrize("value", [0, 17, -3, 10**20, True, False, None, 0.5, "0", [0.9, 0.999]])
def test_values_are_spelled_as_yaml_spells_them(value):
    import yaml

    expected = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    assert yaml_text(value) == expected.removesuffix("\n").removesuffix("\n...").strip()


def test_the_kept_command_is_shown_in_the_order_typed(tmp_path: Path) -> None:
    """Hydra's files keep the Hydra overrides apart from the task's; the command the sweep kept
    (sys.argv) has them where they were typed."""
    argv = ["train.py", "--multirun", "lr=0.1,0.01", "hydra.sweep.dir=/tmp/grid", "seed=0,1"]
    hydra_node = {
        "overrides": {
            "hydra": ["hydra.sweep.dir=/tmp/grid", "hydra.mode=MULTIRUN"],
            "task": ["lr=0.1,0.01", "seed=0,1"],
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra_node}))
    (tmp_path / "0").mkdir()  # a job's folder: what makes this a sweep directory
    table = runs(lr=[0.1, 0.01]).assign(run_dir=str(tmp_path / "0"))
    rebuilt = "python train.py --multirun hydra.sweep.dir=/tmp/grid lr=0.1,0.01 seed=0,1"
    assert sweep_command(tmp_path)[:2] == (rebuilt, "multirun.yaml")  # an older sweep's
    write_command(tmp_path, argv)
    typed = "python train.py --multirun lr=0.1,0.01 hydra.sweep.dir=/tmp/grid seed=0,1"
    assert sweep_command(tmp_path)[:2] == (typed, "command.json")
    page = write_report(tmp_path, table).read_text()
    assert f"<pre>{typed}</pre>" in page


def test_an_optuna_sweep_shows_its_kept_command_and_still_its_search_space(
    tmp_path: Path,
) -> None:
    study = optuna_sweep_dir(tmp_path)
    write_command(tmp_path, ["train.py", "-m", "sweep=optuna", "epochs=choice(50)"])
    command, source, space, _ = sweep_command(tmp_path, study)
    assert (command, source) == (
        "python train.py -m sweep=optuna 'epochs=choice(50)'",
        "command.json",
    )
    assert space is not None and ("epochs", "choice(50)", True) in space


def test_the_summary_callback_keeps_the_process_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import OmegaConf

    from sweeplr.callbacks import SummaryCallback
    from sweeplr.records import read_command
    from tests.test_results import record, write_job

    argv = ["train.py", "--multirun", "lr=0.1", "hydra.sweep.dir=x"]
    monkeypatch.setattr("sys.argv", argv)
    write_job(tmp_path, "0", record(0.2, ["lr=0.1"]), ["lr=0.1"])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "plots": False})
    SummaryCallback().on_multirun_end(config)
    assert read_command(tmp_path) == argv


@pytest.mark.slow
def test_sweeplr_plot_draws_an_optuna_sweeps_study_again_where_it_is_now(tmp_path, capsys):
    """issue 22, 10: a moved Optuna sweep was plotted without its study's pictures (its
    journal looked for where it was), and the page rewritten without them."""
    from sweeplr.cli import main
    from tests.conftest import OPTUNA, run_train

    proc = run_train(tmp_path, *OPTUNA, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={tmp_path}/s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    moved = tmp_path / "moved"
    (tmp_path / "s").rename(moved)
    for picture in moved.glob("*.png"):
        picture.unlink()
    assert main(["plot", str(moved)]) == 0
    study_pictures = ["optuna_history.png", "optuna_parallel.png", "optuna_importance.png"]
    out = capsys.readouterr()
    assert out.err == ""
    assert all(f"wrote {moved / name}\n" in out.out for name in study_pictures)
    page = (moved / "report.html").read_text()
    assert all(f"<figcaption>{name}</figcaption>" in page for name in study_pictures)
    assert "<h2>Search space</h2>" in page and "TPESampler" in page
    assert not (tmp_path / "s").exists()  # nothing made where the sweep was
    # The study gone: one warning; the pictures drawn before stay on the page.
    (moved / "optuna.journal").unlink()
    assert main(["plot", str(moved)]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: the Optuna study of {moved} is not drawn again: the study ")
    assert err.count("\n") == 1
    page = (moved / "report.html").read_text()
    assert all(f"<figcaption>{name}</figcaption>" in page for name in study_pictures)
