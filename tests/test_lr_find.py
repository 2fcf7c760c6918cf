"""The lr finder: every lr its own configuration of one batched pass."""

from __future__ import annotations

import csv
import math

import pytest

from sweeplr import runner
from sweeplr.cli import main
from sweeplr.errors import SweeplrError
from sweeplr.lr_find import find_lr, lr_range
from sweeplr.spec import run_spec
from tests.conftest import CONF_DIR, compose_config
from tests.test_plots_predict import assert_picture

BASE = ("device=cpu", "progress=false")


def test_the_range_is_log_spaced_with_both_ends():
    lrs = lr_range(1e-4, 1.0, 5)
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert lrs[0] == 1e-4 and lrs[-1] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.0, 0.1, 10), "lr range 1..0.1 is empty"),
        ((0.0, 1.0, 10), "lr range 0..1 is empty"),
        ((1e-3, 1.0, 1), "--num=1 is too few"),
    ],
)
def test_an_empty_range_is_one_line(args, message):
    with pytest.raises(SweeplrError, match=message) as info:
        lr_range(*args)
    assert "\n" not in str(info.value) and "allowed" in str(info.value)


def test_every_lr_trains_from_the_same_start_in_one_pass(monkeypatch):
    passes: list[int] = []
    train_runs = runner.train_runs

    def counting(specs, *args, **kwargs):
        passes.append(len(specs))
        return train_runs(specs, *args, **kwargs)

    monkeypatch.setattr(runner, "train_runs", counting)
    spec = run_spec(compose_config(*BASE, "optimizer=adam", "early_stopping.patience=2"))
    lrs = lr_range(1e-4, 1.0, 6)
    finding = find_lr(spec, lrs, epochs=30)
    assert passes == [6]  # one batched pass, early stopping off: the same budget for all
    assert [row["lr"] for row in finding.rows] == lrs
    best = min(finding.rows, key=lambda r: r["loss"])
    assert finding.suggestion == best["lr"] and finding.metric == "val_loss"
    # A point of the curve is what that lr does on its own, not after the smaller ones.
    alone = train_runs(
        [run_spec(compose_config(*BASE, "optimizer=adam", f"lr={lrs[3]}", "epochs=30"))]
    )[0]
    assert finding.rows[3]["loss"] == pytest.approx(alone.metrics["val"]["loss"], rel=1e-5)


def test_diverged_lrs_are_rows_and_never_suggested():
    spec = run_spec(compose_config(*BASE, "standardize=false"))
    finding = find_lr(spec, lr_range(1e-2, 1e39, 5), epochs=20)
    statuses = [row["status"] for row in finding.rows]
    assert statuses[-1] == "diverged" and "completed" in statuses
    assert finding.diverged == statuses.count("diverged")
    assert finding.suggestion is not None and finding.suggestion < 1e39
    assert all(row["loss"] is None for row in finding.rows if row["status"] == "diverged")


def test_without_a_validation_split_the_train_loss_decides():
    spec = run_spec(compose_config(*BASE, "val_size=0", "objective=train_loss"))
    finding = find_lr(spec, lr_range(1e-3, 1.0, 4), epochs=20)
    assert finding.metric == "train_loss"
    assert all(row["loss"] == row["train_loss"] for row in finding.rows)


def test_with_folds_their_mean_validation_loss_decides():
    spec = run_spec(compose_config(*BASE, "cv=3"))
    finding = find_lr(spec, lr_range(1e-3, 1.0, 4), epochs=20)
    assert finding.metric == "val_loss"
    assert all(row["loss"] == row["val_loss"] != row["train_loss"] for row in finding.rows)


def test_lbfgs_has_no_lr_to_find():
    spec = run_spec(compose_config(*BASE, "optimizer=lbfgs"))
    with pytest.raises(SweeplrError, match=r"^sweeplr lr-find does not apply to optimizer=lbfgs"):
        find_lr(spec, lr_range(1e-3, 1.0, 4), epochs=20)


def test_the_command(tmp_path, capsys):
    out = tmp_path / "find"
    argv = ["lr-find", "optimizer=adam", "lr=0.5", "--num", "8", "--epochs", "30"]
    assert main([*argv, "--out", str(out), "--config-dir", str(CONF_DIR)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sweeplr: suggested lr ") and "0 of 8 lrs diverged" in lines[0]
    suggested = float(lines[0].split()[3])
    assert lines[1] == f"  python train.py optimizer=adam lr={suggested:.3g}"  # lr= replaced
    with (out / "lr_find.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
    best = min(rows, key=lambda r: float(r["loss"]))
    assert math.isclose(float(best["lr"]), suggested, rel_tol=1e-2)
    assert_picture(out / "lr_find.png")
    # The same directory again: refused, nothing overwritten.
    before = (out / "lr_find.csv").read_bytes()
    assert main([*argv, "--out", str(out), "--config-dir", str(CONF_DIR)]) == 2
    assert "already holds lr_find.csv" in capsys.readouterr().err
    assert (out / "lr_find.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-lr", "1", "--max-lr", "0.1"], "lr range 1..0.1 is empty"),
        (["lr=abc"], "Error merging override lr=abc: Value 'abc'"),
        (["dataset=nope"], "dataset=nope is not an option of dataset; allowed: blobs, "),
        (["learning_rate=0.01"], "learning_rate is not a setting; did you mean lr? (lr=0.01)"),
        (["+optimizer.lr=0.5"], "optimizer.lr is not a setting; did you mean lr? (lr=0.5)"),
        (["scheduler=plateau", "val_size=0", "objective=train_loss"], "needs a validation split"),
        (["--epochs", "0"], "--epochs=0 is invalid"),
    ],
)
def test_command_mistakes_are_one_line(tmp_path, capsys, args, message):
    argv = ["lr-find", *args, "--num", "3", "--out", str(tmp_path / "f")]
    assert main([*argv, "--config-dir", str(CONF_DIR)]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and message in line and captured.out == ""
    assert not (tmp_path / "f").exists()


def test_a_missing_conf_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "--config-dir=conf holds no config.yaml" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["scheduler=cosine", "scheduler.warmup_epochs=150", "--epochs", "100"],
            "scheduler.warmup_epochs=150 is invalid; allowed: 0 <= warmup_epochs < epochs (100)",
        ),
        (
            ["scheduler=cosine", "scheduler.warmup_epochs=150", "epochs=100"],
            "scheduler.warmup_epochs=150 is invalid; allowed: 0 <= warmup_epochs < epochs (100)",
        ),
        (
            ["epochs=500", "--epochs", "100"],
            "--epochs 100 and epochs=500 both set each lr's budget; allowed: one of them",
        ),
    ],
)
def test_the_budget_is_epochs_or_an_epochs_override_and_a_warm_up_must_fit(
    tmp_path, capsys, args, message
):
    argv = ["lr-find", *args, "--num", "3", "--out", str(tmp_path / "f")]
    assert main([*argv, "--config-dir", str(CONF_DIR)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_an_epochs_override_is_the_budget_the_finding_reports(tmp_path, capsys, monkeypatch):
    budgets: list[int] = []
    train_runs = runner.train_runs

    def recording(specs, *args, **kwargs):
        budgets.extend(spec.epochs for spec in specs)
        return train_runs(specs, *args, **kwargs)

    monkeypatch.setattr(runner, "train_runs", recording)
    argv = ["lr-find", "epochs=7", "--num", "3", "--out", str(tmp_path / "f")]
    assert main([*argv, "--config-dir", str(CONF_DIR)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert budgets == [7, 7, 7] and "after 7 epochs" in lines[0]
    assert lines[1].startswith("  python train.py epochs=7 lr=")  # the budget it was found for


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(runner, "train_runs", no_training)
    (tmp_path / "afile").write_text("mine\n")
    out = tmp_path / "afile" / "sub"
    argv = ["lr-find", "--num", "3", "--out", str(out), "--config-dir", str(CONF_DIR)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --out={out} cannot be written ({tmp_path / 'afile'}: not a directory); "
        "allowed: a place you can write\n"
    )
    assert (tmp_path / "afile").read_text() == "mine\n"
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "lr_find.csv").write_text("lr\n")
    assert main([*argv[:-3], str(tmp_path / "used"), *argv[-2:]]) == 2
    assert "already holds lr_find.csv" in capsys.readouterr().err


@pytest.mark.parametrize(
    "statuses", [("completed", "diverged", "diverged"), ("diverged", "diverged", "diverged")]
)
def test_the_picture_shows_every_lr_tried_diverged_ones_included(statuses):
    from matplotlib.collections import PathCollection

    from sweeplr.plots import lr_find_figure

    lrs = [1e30, 1.7e34, 3e38]
    rows = [
        {"lr": lr, "status": status, "loss": 6e34 if status == "completed" else None}
        for lr, status in zip(lrs, statuses, strict=True)
    ]
    suggestion = 1e30 if "completed" in statuses else None
    ax = lr_find_figure(rows, suggestion, "val_loss after 100 epochs", "title").axes[0]
    low, high = ax.get_xlim()
    assert low < min(lrs) and max(lrs) < high
    [marks] = [c for c in ax.collections if isinstance(c, PathCollection)]
    diverged = [r["lr"] for r in rows if r["status"] == "diverged"]
    assert marks.get_label() == "diverged" and list(marks.get_offsets()[:, 0]) == diverged
    texts = [t.get_text() for t in ax.texts]
    assert ("every lr diverged" in texts) == (suggestion is None)
