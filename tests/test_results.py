"""The sweep table: loading run directories, ranking, grouping, formats, the CLI and callback."""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sweeplr.callbacks import SummaryCallback
from sweeplr.cli import main
from sweeplr.errors import SweeplrError
from sweeplr.predict import best_run_dir
from sweeplr.records import write_failure, write_run
from sweeplr.results import (
    format_table,
    group_runs,
    load_sweep,
    sort_runs,
    write_summary,
)
from sweeplr.runner import train_runs
from sweeplr.spec import run_spec
from tests.conftest import compose_config, run_train

METRIC_COLUMNS = [
    f"{split}_{metric}"
    for split in ("train", "val", "test")
    for metric in ("loss", "accuracy", "roc_auc", "f1")
]
HYPER = {
    "dataset": "blobs",
    "optimizer": "sgd",
    "lr": 0.01,
    "epochs": 100,
    "batch_size": None,
    "weight_decay": 0.0,
    "momentum": 0.0,
    "nesterov": False,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-08,
    "seed": 0,
    "standardize": True,
    "test_size": 0.33,
    "val_size": 0.2,
    "scheduler": "constant",
    "penalty": "none",
    "C": None,
    "l1_ratio": None,
    "class_weight": None,
    "cv": None,
}


def record(
    loss: float | None,
    overrides: list[str],
    *,
    status: str = "completed",
    objective: str = "val_loss",
    direction: str = "minimize",
    accuracy: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A metrics.json as sweeplr.records writes it (README schema), hyperparameters taken
    from the overrides; every split gets the same numbers so tests know them."""
    hyper = dict(HYPER)
    for text in overrides:
        key, _, value = text.partition("=")
        key = key.lstrip("+").removeprefix("optimizer.")
        if key in hyper:
            try:
                hyper[key] = json.loads(value)  # 0.1, 2, null: what Hydra would make of them
            except json.JSONDecodeError:
                hyper[key] = value
    if accuracy is None and loss is not None:
        accuracy = 1 - loss / 10
    split = {
        "loss": loss,
        "accuracy": accuracy,
        "roc_auc": None if loss is None else 0.9,
        "f1": None if loss is None else 0.8,
    }
    _, metric = objective.split("_", 1)
    return {
        "schema": 1,
        "status": status,
        "epochs_run": hyper["epochs"],
        "diverged_epoch": 3 if status == "diverged" else None,
        "wall_seconds": 0.5,
        "seed": hyper["seed"],
        "hyperparameters": hyper,
        "metrics": {"train": split, "val": split, "test": split},
        "objective": {"name": objective, "direction": direction, "value": split[metric]},
        "job": {"num": None, "override_dirname": ",".join(sorted(overrides))},
        "overrides": overrides,
        **extra,
    }


def write_job(sweep: Path, name: str, rec: dict[str, Any] | None, overrides: list[str]) -> Path:
    """A job directory as Hydra and sweeplr leave it; ``rec=None`` for a job that crashed."""
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if rec is not None:
        (run_dir / "metrics.json").write_text(json.dumps(rec, indent=2))
    return run_dir


def make_sweep(
    sweep: Path, runs: dict[str, tuple[float | None, list[str], dict[str, Any]]]
) -> Path:
    for name, (loss, overrides, kwargs) in runs.items():
        write_job(sweep, name, record(loss, overrides, **kwargs), overrides)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """lr x optimizer, with a diverged run and job numbers that are not contiguous."""
    return make_sweep(
        tmp_path / "grid",
        {
            "0": (0.30, ["lr=0.1", "optimizer=sgd"], {}),
            "1": (0.10, ["lr=0.1", "optimizer=adam"], {}),
            "2": (0.50, ["lr=0.01", "optimizer=sgd"], {}),
            "5": (None, ["lr=10.0", "optimizer=adam"], {"status": "diverged"}),
            "12": (0.20, ["lr=0.01", "optimizer=adam"], {}),
        },
    )


def test_one_row_per_run_in_documented_column_order(grid):
    df = load_sweep(grid)
    assert len(df) == 5
    assert list(df.columns) == [
        "job",
        "lr",
        "optimizer",
        "status",
        "objective",
        *METRIC_COLUMNS,
        "epochs_run",
        "wall_seconds",
        *(k for k in HYPER if k not in ("lr", "optimizer")),
        "run_dir",
    ]
    assert df.attrs["objective_name"] == "val_loss"
    assert df.attrs["direction"] == "minimize"
    assert sorted(df["job"]) == [0, 1, 2, 5, 12]
    assert set(df["run_dir"]) == {str(grid / n) for n in ("0", "1", "2", "5", "12")}


def test_best_first_diverged_last_ties_by_job(grid):
    write_job(grid, "3", record(0.10, ["lr=0.3", "optimizer=adam"]), ["lr=0.3", "optimizer=adam"])
    df = load_sweep(grid)
    assert df["job"].tolist() == [1, 3, 12, 0, 2, 5]
    assert df["status"].iloc[-1] == "diverged" and math.isnan(df["objective"].iloc[-1])


def test_maximize_direction_ranks_high_values_first(tmp_path):
    kwargs = {"objective": "val_accuracy", "direction": "maximize"}
    sweep = make_sweep(
        tmp_path / "s",
        {
            "0": (0.3, ["lr=0.1"], {**kwargs, "accuracy": 0.7}),
            "1": (0.3, ["lr=0.2"], {**kwargs, "accuracy": 0.9}),
            "2": (None, ["lr=9.0"], {**kwargs, "status": "diverged"}),
            "3": (0.3, ["lr=0.3"], {**kwargs, "accuracy": 0.8}),
        },
    )
    df = load_sweep(sweep)
    assert df.attrs["direction"] == "maximize"
    assert df["job"].tolist() == [1, 3, 0, 2]
    assert df["objective"].tolist()[:3] == [0.9, 0.8, 0.7]


def test_pruned_runs_rank_after_completed_ones(tmp_path):
    sweep = make_sweep(
        tmp_path / "s",
        {
            "0": (0.3, ["lr=0.1"], {}),
            "1": (0.1, ["lr=0.2"], {"status": "pruned"}),  # stopped early: not comparable
            "2": (0.2, ["lr=0.3"], {}),
        },
    )
    assert load_sweep(sweep)["job"].tolist() == [2, 0, 1]


def test_missing_and_corrupt_runs_are_listed_not_dropped(grid, caplog):
    write_job(grid, "7", None, ["lr=0.5", "optimizer=sgd"])
    corrupt = write_job(grid, "8", None, ["lr=0.05", "optimizer=adam"])
    text = json.dumps(record(0.05, ["lr=0.05", "optimizer=adam"]))
    (corrupt / "metrics.json").write_text(text[: len(text) // 2])  # truncated
    (grid / "9").mkdir()  # created by Hydra, nothing written yet
    (grid / "notes").mkdir()  # not a job: no number, no record, no .hydra
    (grid / ".hidden").mkdir()
    (grid / "loss.png").write_bytes(b"\x89PNG")
    with caplog.at_level(logging.WARNING, logger="sweeplr.results"):
        df = load_sweep(grid)
    assert len(df) == 8
    status = dict(zip(df["job"], df["status"], strict=True))
    assert (status[7], status[8], status[9]) == ("missing", "corrupt", "missing")
    assert df["status"].tolist()[-4:] == ["diverged", "missing", "corrupt", "missing"]
    unfinished = df.set_index("job").loc[[7, 8]]
    # The swept values come from Hydra's .hydra/overrides.yaml for runs without a record.
    assert unfinished["lr"].tolist() == [0.5, 0.05]
    assert unfinished["optimizer"].tolist() == ["sgd", "adam"]
    assert unfinished["objective"].isna().all() and unfinished["epochs_run"].isna().all()
    assert df["epochs_run"].dtype == "Int64"  # integers stay integers beside the holes
    [message] = [r.getMessage() for r in caplog.records]
    assert str(corrupt / "metrics.json") in message and "corrupt" in message


def test_mixed_objectives_keep_the_most_common_with_a_warning(tmp_path, caplog):
    accuracy = {"objective": "val_accuracy", "direction": "maximize"}
    sweep = make_sweep(
        tmp_path / "s",
        {"0": (0.3, ["lr=0.1"], {}), "1": (0.2, ["lr=0.2"], {}), "2": (0.1, ["lr=0.3"], accuracy)},
    )
    with caplog.at_level(logging.WARNING, logger="sweeplr.results"):
        df = load_sweep(sweep)
    assert (df.attrs["objective_name"], df.attrs["direction"]) == ("val_loss", "minimize")
    [message] = [r.getMessage() for r in caplog.records]
    assert "val_loss (minimize)" in message and "val_accuracy (maximize)" in message


def test_swept_columns_are_typed_and_named_like_the_hyperparameters(tmp_path):
    runs = {}
    for job, (lr, seed) in enumerate([(0.1, 0), (0.1, 1), (0.01, 0), (0.01, 1)]):
        overrides = [
            f"lr={lr}",
            "optimizer=adam",
            f"optimizer.weight_decay={0.001 * (job + 1)}",
            f"seed={seed}",
            "+foo=bar",
            "batch_size=null",
        ]
        trial = {"trial": {"number": job + 7, "study": "s"}}
        runs[str(job)] = (0.1 * (job + 1), overrides, trial)
    df = load_sweep(make_sweep(tmp_path / "s", runs))
    # Varying overrides first, in command-line order; those set the same everywhere after.
    assert df.attrs["swept"] == ["lr", "weight_decay", "seed", "optimizer", "foo", "batch_size"]
    assert list(df.columns[1:7]) == df.attrs["swept"]
    assert df["lr"].dtype == np.float64 and df["weight_decay"].dtype == np.float64
    assert df["seed"].dtype == np.int64
    assert pd.api.types.is_string_dtype(df["optimizer"]) and set(df["optimizer"]) == {"adam"}
    assert set(df["foo"]) == {"bar"}
    assert df["batch_size"].isna().all()
    assert "optimizer.weight_decay" not in df and "trial" not in df.attrs["swept"]
    assert df.columns.tolist().count("weight_decay") == 1
    # The record's Optuna trial: columns at the end, not a swept value.
    assert df.columns.tolist()[-3:] == ["trial", "trial_state", "run_dir"]
    assert sorted(df["trial"]) == [7, 8, 9, 10]


@pytest.mark.parametrize(
    ("status", "state"),
    [("completed", "COMPLETE"), ("pruned", "PRUNED"), ("diverged", "PRUNED"), ("failed", "FAIL")],
)
def test_trial_columns_come_from_the_record(tmp_path, status, state):
    trial = {"trial": {"number": 4, "study": "s"}, "status": status}
    if status == "failed":
        trial["error"] = "RuntimeError: boom"
    sweep = make_sweep(tmp_path / "s", {"4": (0.2, ["lr=0.1"], trial)})
    write_job(sweep, "5", None, ["lr=0.2"])  # crashed before writing a record
    df = load_sweep(sweep).sort_values("job")
    assert df["job"].tolist() == [4, 5]
    assert df["trial"].iloc[0] == 4 and pd.isna(df["trial"].iloc[1])
    assert df["trial_state"].iloc[0] == state and pd.isna(df["trial_state"].iloc[1])


def test_a_failed_job_is_a_row_with_its_error(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"0": (0.2, ["lr=0.1"], {})})
    write_job(sweep, "1", None, ["lr=-1"])
    write_failure(sweep / "1", "lr=-1.0 is invalid; allowed: a finite number > 0", {})
    df = load_sweep(sweep)
    assert df["status"].tolist() == ["completed", "failed"]  # failures rank after results
    assert df["error"].tolist()[1].startswith("lr=-1.0 is invalid")
    assert pd.isna(df["error"].iloc[0]) and pd.isna(df["objective"].iloc[1])
    assert df.columns.tolist().index("error") == df.columns.tolist().index("status") + 1


def test_several_sweeps_and_a_single_run_directory(grid, tmp_path):
    other = make_sweep(tmp_path / "other", {"0": (0.05, ["lr=0.3", "optimizer=sgd"], {})})
    both = load_sweep([grid, str(other)])
    assert len(both) == 6
    assert list(both.columns[-2:]) == ["sweep_dir", "run_dir"]
    assert both.iloc[0]["sweep_dir"] == str(other) and both.iloc[0]["lr"] == 0.3
    single = load_sweep(grid / "1")
    assert len(single) == 1 and single["job"].tolist() == [1]
    assert "sweep_dir" not in single


def test_real_run_records_load(tmp_path):
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(["0.1", "0.001"]):
        overrides = [f"lr={lr}", "optimizer=adam"]
        cfg = compose_config("epochs=5", "device=cpu", "progress=false", *overrides)
        outcome = train_runs([run_spec(cfg)])[0]
        extra = {"job": {"num": job, "override_dirname": ""}, "overrides": overrides}
        write_run(sweep / str(job), outcome, {}, extra)
    df = load_sweep(sweep)
    assert df["lr"].tolist() == [0.1, 0.001]  # the larger step gets further in 5 epochs
    assert (df["status"] == "completed").all() and (df["epochs_run"] == 5).all()
    assert not df[["objective", *METRIC_COLUMNS]].isna().any().any()


def test_bad_directories_raise_one_line_errors(tmp_path):
    with pytest.raises(SweeplrError, match="does not exist"):
        load_sweep(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SweeplrError, match="no run directories"):
        load_sweep(tmp_path / "empty")


def test_sort_runs_infers_best_first_from_the_column(grid):
    df = load_sweep(grid)
    assert sort_runs(df, "val_accuracy")["job"].tolist()[:4] == [1, 12, 0, 2]  # high first
    assert sort_runs(df, "val_loss")["job"].tolist()[:4] == [1, 12, 0, 2]  # low first
    assert sort_runs(df, "lr", ascending=False)["lr"].tolist() == [10.0, 0.1, 0.1, 0.01, 0.01]
    assert sort_runs(df, "objective", ascending=False)["job"].tolist() == [2, 0, 12, 1, 5]
    with pytest.raises(SweeplrError, match="'bogus' does not exist; allowed: job, lr"):
        sort_runs(df, "bogus")


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    """Two learning rates x three seeds with known losses; one run diverged, one never ran."""
    losses = {(0.1, 0): 0.2, (0.1, 1): 0.25, (0.1, 2): 0.36, (0.01, 0): 0.5, (0.01, 1): 0.7}
    runs = {}
    for job, ((lr, seed), loss) in enumerate(losses.items()):
        runs[str(job)] = (loss, [f"lr={lr}", f"seed={seed}"], {})
    runs["5"] = (None, ["lr=0.01", "seed=2"], {"status": "diverged"})
    sweep = make_sweep(tmp_path / "seeds", runs)
    write_job(sweep, "6", None, ["lr=0.1", "seed=3"])
    return sweep


def test_group_runs_over_seeds_matches_a_hand_computation(seeds):
    grouped = group_runs(load_sweep(seeds), ["lr"])
    assert grouped["lr"].tolist() == [0.1, 0.01]  # best mean objective first
    assert grouped["count"].tolist() == [4, 3]
    assert grouped["n_completed"].tolist() == [3, 2]
    for row, losses in zip(grouped.itertuples(), [[0.2, 0.25, 0.36], [0.5, 0.7]], strict=True):
        assert row.objective_mean == pytest.approx(statistics.mean(losses))
        assert row.objective_std == pytest.approx(statistics.stdev(losses))
        accuracies = [1 - v / 10 for v in losses]
        assert row.val_accuracy_mean == pytest.approx(np.mean(accuracies))
        assert row.val_accuracy_std == pytest.approx(np.std(accuracies, ddof=1))
    assert "objective_mean" in grouped and "seed_mean" not in grouped and "lr_mean" not in grouped
    single = group_runs(load_sweep(seeds), ["lr", "seed"])
    assert len(single) == 7 and single["objective_std"].isna().all()  # one run: no spread
    with pytest.raises(SweeplrError, match="'nope' does not exist"):
        group_runs(load_sweep(seeds), ["nope"])


def test_table_format_is_aligned_and_rounded(grid, monkeypatch):
    monkeypatch.chdir(grid.parent)
    lines = format_table(load_sweep(grid), "table", top=3).splitlines()
    assert len(lines) == 4
    assert lines[0].split()[:5] == ["job", "lr", "optimizer", "status", "objective"]
    first = lines[1].split()
    assert first[:5] == ["1", "0.1", "adam", "completed", "0.1"]
    assert first[-1] == str(Path("grid") / "1")  # relative to the current directory
    objective_end = lines[0].index("objective") + len("objective")
    assert all(line[objective_end - 1] != " " for line in lines)  # numbers right-aligned
    wide = load_sweep(grid).assign(objective=1 / 3)
    assert "0.3333" in format_table(wide, "table").splitlines()[1].split()


def test_markdown_json_and_csv_formats(grid, tmp_path):
    df = load_sweep(grid)
    markdown = format_table(df, "markdown").splitlines()
    assert markdown[0].startswith("| job | lr | optimizer | status | objective |")
    assert set(markdown[1].replace("|", " ").split()) <= {"---", "---:"}
    assert len(markdown) == 2 + len(df)
    assert markdown[-1].count("|") == markdown[0].count("|")
    rows = json.loads(format_table(df, "json"))
    assert [r["job"] for r in rows] == df["job"].tolist()
    assert rows[0]["objective"] == df["objective"].iloc[0]
    assert rows[-1]["objective"] is None and rows[-1]["status"] == "diverged"
    back = pd.read_csv(io.StringIO(format_table(df, "csv")))
    assert list(back.columns) == list(df.columns)
    pd.testing.assert_series_equal(back["objective"], df["objective"])
    assert back["optimizer"].tolist() == df["optimizer"].tolist()
    with pytest.raises(SweeplrError, match="allowed: table, csv, markdown, json"):
        format_table(df, "html")


def test_grouped_tables_show_mean_plus_minus_std(seeds):
    grouped = group_runs(load_sweep(seeds), ["lr"])
    table = format_table(grouped, "table").splitlines()
    assert table[0].split()[:4] == ["lr", "count", "n_completed", "objective"]
    mean, std = statistics.mean([0.2, 0.25, 0.36]), statistics.stdev([0.2, 0.25, 0.36])
    assert f"{mean:.4g} ± {std:.4g}" in table[1]
    markdown = format_table(grouped, "markdown").splitlines()
    assert "objective" in markdown[0] and "objective_std" not in markdown[0]
    assert f"| {mean:.4g} ± {std:.4g} |" in markdown[2]
    assert "objective_std" in format_table(grouped, "csv").splitlines()[0]


def test_write_summary_is_atomic_and_parses(grid):
    path = write_summary(grid)
    assert path == grid / "summary.csv"
    assert [p.name for p in grid.iterdir() if p.is_file()] == ["multirun.yaml", "summary.csv"]
    summary = pd.read_csv(path)
    assert len(summary) == 5 and summary["job"].tolist() == load_sweep(grid)["job"].tolist()
    assert len(load_sweep(grid)) == 5  # summary.csv is not mistaken for a run


def test_cli_summary_prints_rows(grid, capsys):
    assert main(["summary", str(grid), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].split()[:3] == ["1", "0.1", "adam"]


def test_cli_summary_groups_sorts_and_writes(seeds, tmp_path, capsys):
    out = tmp_path / "table.md"
    args = ["summary", str(seeds), "--group-by", "lr", "--sort", "val_accuracy", "--ascending"]
    assert main([*args, "--format", "markdown", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    table = out.read_text().splitlines()
    assert table[0].startswith("| lr | count |") and table[2].startswith("| 0.01 | 3 |")
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "nope does not exist"),
        ([".", "--sort", "bogus"], "column 'bogus' does not exist"),
    ],
)
def test_cli_summary_errors_are_one_line(grid, capsys, monkeypatch, args, message):
    monkeypatch.chdir(grid)
    assert main(["summary", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and message in line


def test_callback_writes_and_prints_the_summary(grid, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(grid)}}})
    SummaryCallback(top=2).on_multirun_end(config)
    lines = capsys.readouterr().out.splitlines()
    assert str(grid / "summary.csv") in lines[0] and "best 2 of 5" in lines[0]
    assert len(lines) == 4
    assert len(pd.read_csv(grid / "summary.csv")) == 5


def test_callback_names_a_single_run_in_the_singular(tmp_path, capsys):
    sweep = tmp_path / "s"
    write_job(sweep, "0", record(0.2, ["lr=0.1"]), ["lr=0.1"])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "plots": False})
    SummaryCallback().on_multirun_end(config)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"sweeplr: {sweep / 'summary.csv'} (its one run below)"


def test_callback_prints_no_table_of_blanks_when_no_run_finished(tmp_path, capsys):
    sweep = tmp_path / "s"
    write_job(sweep, "0", None, ["lr=-1"])  # stopped by a bad value before training
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SummaryCallback().on_multirun_end(config)
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("none of the 1 runs wrote metrics.json")
    assert pd.read_csv(sweep / "summary.csv")["status"].tolist() == ["missing"]


def test_callback_never_fails_the_sweep(grid, caplog, capsys, monkeypatch):
    import sweeplr.results

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(sweeplr.results, "load_sweep", broken)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(grid)}}})
    with caplog.at_level(logging.WARNING, logger="sweeplr.callbacks"):
        SummaryCallback().on_multirun_end(config)
    [message] = [r.getMessage() for r in caplog.records]
    assert message == "sweeplr: no sweep summary: disk on fire"


def test_pictures_that_fail_leave_the_summary_and_say_so(grid, caplog, capsys, monkeypatch):
    import sweeplr.report

    def broken(*args, **kwargs):
        raise ValueError("no ink\nsecond line")

    monkeypatch.setattr(sweeplr.report, "draw_sweep", broken)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(grid)}}, "plots": True})
    with caplog.at_level(logging.WARNING, logger="sweeplr.callbacks"):
        SummaryCallback().on_multirun_end(config)
    [message] = [r.getMessage() for r in caplog.records]
    assert message == "sweeplr: no pictures: no ink"
    assert capsys.readouterr().out.startswith(f"sweeplr: {grid / 'summary.csv'}")
    assert len(pd.read_csv(grid / "summary.csv")) == 5


def test_callback_is_silent_when_the_sweep_ran_no_job(tmp_path, caplog, capsys):
    """A sweep that stopped before its first job (a bad value) prints its own error next: a
    summary warning before it would only bury it."""
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}})
    with caplog.at_level(logging.DEBUG, logger="sweeplr.callbacks"):
        SummaryCallback().on_multirun_end(config)
    assert caplog.records == [] and capsys.readouterr().out == ""


@pytest.mark.slow
def test_multirun_writes_and_prints_summary_csv(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        tmp_path,
        "--multirun",
        "lr=0.1,0.01,0.001",
        "optimizer=sgd,adam",
        "epochs=20",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 6
    # epochs=20 was typed too: swept, but after the columns that vary.
    assert list(summary.columns[:6]) == ["job", "lr", "optimizer", "epochs", "status", "objective"]
    assert sorted(summary["lr"]) == [0.001, 0.001, 0.01, 0.01, 0.1, 0.1]
    assert set(summary["optimizer"]) == {"sgd", "adam"}
    assert summary["objective"].is_monotonic_increasing  # val_loss: best (lowest) first
    assert f"{sweep / 'summary.csv'}" in proc.stdout


def test_compact_table_keeps_what_varies_and_the_main_metrics(grid, capsys):
    from sweeplr.results import compact

    df = load_sweep(grid)
    short = compact(df)
    assert {"job", "status", "objective", "val_loss", "test_accuracy", "run_dir"} <= set(short)
    assert "beta2" not in short and "train_roc_auc" not in short  # constants and extras dropped
    assert short.attrs["swept"] == df.attrs["swept"]
    assert main(["summary", str(grid)]) == 0
    assert "beta2" not in capsys.readouterr().out
    assert main(["summary", str(grid), "--all-columns"]) == 0
    assert "beta2" in capsys.readouterr().out


def test_a_worker_directory_without_runs_is_skipped_when_combining(grid, tmp_path):
    idle = tmp_path / "idle_worker"
    idle.mkdir()
    (idle / "optimization_results.yaml").write_text("name: optuna\n")
    assert len(load_sweep([grid, idle])) == len(load_sweep(grid))
    with pytest.raises(SweeplrError, match="holds no run directories"):
        load_sweep(idle)
    with pytest.raises(SweeplrError, match="none of"):
        load_sweep([idle, idle])


def test_the_cli_answers_help_without_loading_what_a_subcommand_needs():
    """`sweeplr --help` builds every subcommand's parser; torch, pandas, Hydra, matplotlib and
    Optuna are loaded only by the subcommand that runs (speed: bench_sweeps.py cli)."""
    import subprocess
    import sys

    probe = (
        "import sys, sweeplr.cli; sweeplr.cli.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'pandas', 'hydra', 'matplotlib', 'optuna', 'numpy') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]"


def test_every_command_has_a_description_and_an_example_in_plain_text(monkeypatch):
    from sweeplr.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps its own text to the terminal's width
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(commands.choices) == ["lr-find", "plot", "predict", "show", "summary"]
    for name, sub in [("sweeplr", parser), *commands.choices.items()]:
        text = sub.format_help()
        assert "example" in text and sub.description, name
        assert "``" not in text, name  # no reST markup in a terminal
        example = text.split("example")[1]
        assert "sweeplr " in example, name
        assert max(len(line) for line in text.splitlines()) <= 80, name


def test_a_non_finite_objective_never_ranks_best(tmp_path):
    sweep = make_sweep(
        tmp_path / "s",
        {"0": (0.3, ["lr=0.1"], {}), "1": (0.2, ["lr=0.2"], {}), "2": (0.4, ["lr=0.3"], {})},
    )
    for job, value in (("1", "-Infinity"), ("2", "NaN")):
        text = (sweep / job / "metrics.json").read_text()
        bad = json.loads(text)
        bad["objective"]["value"] = None
        (sweep / job / "metrics.json").write_text(
            json.dumps(bad).replace('"value": null', f'"value": {value}')
        )
    table = load_sweep(sweep)
    assert table["job"].iloc[0] == 0
    assert not math.isfinite(table["objective"].iloc[1])
    assert best_run_dir(sweep) == sweep / "0"


def test_group_statistics_are_over_completed_runs_only(tmp_path):
    sweep = make_sweep(
        tmp_path / "s",
        {
            "0": (0.2, ["optimizer=sgd"], {}),
            "1": (0.4, ["optimizer=sgd"], {}),
            "2": (0.9, ["optimizer=sgd"], {"status": "pruned"}),  # a partial objective
            "3": (0.1, ["optimizer=adam"], {"status": "pruned"}),
        },
    )
    grouped = group_runs(load_sweep(sweep), ["optimizer"]).set_index("optimizer")
    assert grouped.loc["sgd", "count"] == 3 and grouped.loc["sgd", "n_completed"] == 2
    assert grouped.loc["sgd", "objective_mean"] == pytest.approx(0.3)
    assert grouped.loc["adam", "n_completed"] == 0 and math.isnan(
        grouped.loc["adam", "objective_mean"]
    )
    assert grouped.index[0] == "sgd"  # a group with nothing completed does not rank first


def test_a_record_of_the_wrong_types_is_a_corrupt_row(tmp_path):
    sweep = make_sweep(tmp_path / "s", {"0": (0.3, ["lr=0.1"], {}), "1": (0.2, ["lr=0.2"], {})})
    bad = record(0.1, ["lr=0.3"])
    bad["metrics"]["val"]["loss"] = "low"
    bad["epochs_run"] = "many"
    write_job(sweep, "2", bad, ["lr=0.3"])
    write_job(sweep, "3", [1, 2, 3], ["lr=0.4"])  # valid JSON, no record
    table = load_sweep(sweep).set_index("job")
    assert table.loc[2, "status"] == table.loc[3, "status"] == "corrupt"
    assert table.loc[1, "status"] == "completed"
    assert "corrupt" in format_table(load_sweep(sweep))
    assert main(["summary", str(sweep)]) == 0
