"""Pictures, predictions and the sweep report, checked on real (short) runs.

The decision-boundary test recomputes the test accuracy from the drawn line itself rather than
trusting the picture; the prediction tests compare a reloaded run with the model that trained.
"""

from __future__ import annotations

import ast
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from omegaconf import OmegaConf

from sweeplr.cli import main
from sweeplr.data import load_dataset, split
from sweeplr.errors import SweeplrError
from sweeplr.plots import (
    SLIDE_FONTS,
    boundary_line,
    dataset_title,
    loss_figure,
    loss_name,
    plot_run,
)
from sweeplr.predict import best_run_dir, load_run
from sweeplr.records import MODEL_FILE, read_metrics
from sweeplr.report import write_report
from sweeplr.results import load_sweep
from sweeplr.study_plots import (
    optuna_history_figure,
    optuna_parallel_figure,
    plot_optuna_study,
    study_objective_name,
    study_trials,
)
from sweeplr.sweep_plots import objective_vs_lr_figure, plot_sweep, top_val_loss_figure
from tests.conftest import compose_config, require_program, train_and_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quick_cfg(*overrides: str) -> Any:
    return compose_config("epochs=200", "device=cpu", "progress=false", *overrides)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_picture(path: Path, min_width: int = 300) -> None:
    width, height = png_size(path)
    assert width > min_width and height > 200, (path, width, height)
    assert path.stat().st_size > 5_000, path


def raw_splits(run_dir: Path) -> Any:
    """The run's train/test split in raw (unscaled) features, re-created from its config."""
    cfg = OmegaConf.create(torch.load(run_dir / "model.pt", weights_only=True)["config"])
    table = load_dataset(cfg.dataset)
    return split(table, cfg.test_size, cfg.val_size, cfg.random_state, cfg.stratify)


@pytest.fixture(scope="module")
def blobs_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A blobs run, plus the model object and scaled test data it was evaluated with."""
    run_dir = tmp_path_factory.mktemp("blobs")
    outcome, _ = train_and_record(quick_cfg(), run_dir)
    yield {"run_dir": run_dir, "model": outcome.model, "X_test_scaled": outcome.data.test[0]}


@pytest.fixture(scope="module")
def shifted_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Overlapping binary classes whose features are far from 0 and on very different scales,
    so a boundary that ignores the scaler would land in the wrong place."""
    rng = np.random.default_rng(3)
    n = 300
    label = rng.integers(0, 2, n)
    x1 = 500 + 40 * (label + rng.normal(0, 0.8, n))
    x2 = -3 + 0.01 * (label + rng.normal(0, 0.8, n))
    path = tmp_path_factory.mktemp("data") / "shifted.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "label": np.where(label, "yes", "no")}).to_csv(
        path, index=False
    )
    return path


@pytest.fixture(scope="module")
def three_class_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2-D data with three classes whose names are not colours (the colormap path)."""
    rng = np.random.default_rng(0)
    centers = {"alpha": (0, 4), "beta": (-3, -2), "gamma": (3, -2)}
    rows = [
        (cx + rng.normal(), cy + rng.normal(), name)
        for name, (cx, cy) in centers.items()
        for _ in range(80)
    ]
    path = tmp_path_factory.mktemp("data") / "three.csv"
    pd.DataFrame(rows, columns=["u", "v", "kind"]).to_csv(path, index=False)
    return path


def test_the_command_line_does_not_import_torch_or_sklearn() -> None:
    """``sweeplr`` imports these modules for their parsers; ``--help`` must not wait for torch."""
    code = (
        "import sys, sweeplr.predict, sweeplr.plots, sweeplr.sweep_plots, sweeplr.study_plots, "
        "sweeplr.provenance, sweeplr.report; print(sorted(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in ast.literal_eval(done.stdout)}
    assert not loaded & {"torch", "sklearn", "hydra"}


# --- run pictures ---------------------------------------------------------------------------


def test_run_pictures_are_real_pngs(blobs_run: dict[str, Any]) -> None:
    written = plot_run(blobs_run["run_dir"])
    assert [p.name for p in written] == ["loss.png", "decision_boundary.png"]
    for path in written:
        assert_picture(path)
    assert png_size(written[1])[0] > png_size(written[0])[0]  # two panels side by side


@pytest.mark.parametrize("data", ["noisy_blobs", "shifted_csv"])
def test_boundary_line_separates_test_points_with_the_runs_accuracy(
    data: str, shifted_csv: Path, tmp_path: Path
) -> None:
    overrides = (
        ["dataset.cluster_std=2.5"]
        if data == "noisy_blobs"
        else ["dataset=csv", f"dataset.path={shifted_csv}", "dataset.target=label"]
    )
    run_dir = tmp_path / "run"
    record = train_and_record(quick_cfg(*overrides), run_dir)[1]
    recorded = record["metrics"]["test"]["accuracy"]
    assert recorded < 0.95  # overlapping classes: many points near the line, a real check

    a, c = boundary_line(load_run(run_dir))
    splits = raw_splits(run_dir)
    from_line = np.where(splits.X_test.astype(np.float64) @ a + c > 0, 1, 0)
    correct = int((from_line == splits.y_test).sum())
    assert correct == round(recorded * len(splits.y_test))
    assert plot_run(run_dir)[1].name == "decision_boundary.png"


def test_three_classes_get_regions_and_no_line(three_class_csv: Path, tmp_path: Path) -> None:
    cfg = quick_cfg("dataset=csv", f"dataset.path={three_class_csv}", "dataset.target=kind")
    record = train_and_record(cfg, tmp_path)[1]
    model = load_run(tmp_path)
    assert model.class_names == ("alpha", "beta", "gamma")
    with pytest.raises(SweeplrError, match="2 classes"):
        boundary_line(model)
    written = plot_run(tmp_path)
    assert_picture(written[1])
    splits = raw_splits(tmp_path)
    accuracy = np.mean(model.predict(splits.X_test) == np.array(model.class_names)[splits.y_test])
    assert accuracy == pytest.approx(record["metrics"]["test"]["accuracy"], abs=1e-12)


def test_diverged_run_gets_a_loss_plot_and_no_predictions(tmp_path: Path) -> None:
    record = train_and_record(quick_cfg("lr=1e38", "standardize=false"), tmp_path)[1]
    assert record["status"] == "diverged"
    assert [p.name for p in plot_run(tmp_path)] == ["loss.png"]
    with pytest.raises(SweeplrError, match="diverged"):
        load_run(tmp_path)


def test_changed_data_file_is_refused(shifted_csv: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    shutil.copy(shifted_csv, data)
    cfg = quick_cfg("dataset=csv", f"dataset.path={data}", "dataset.target=label")
    train_and_record(cfg, tmp_path / "run")
    frame = pd.read_csv(data)
    frame["x1"] += 1000
    frame.to_csv(data, index=False)
    with pytest.raises(SweeplrError, match="differs from the one it was trained on"):
        plot_run(tmp_path / "run")


# --- predictions ----------------------------------------------------------------------------


def test_reloaded_run_predicts_exactly_as_the_trained_model(blobs_run: dict[str, Any]) -> None:
    trained = load_run(blobs_run["run_dir"])
    with torch.no_grad():
        expected = blobs_run["model"].predict_proba(blobs_run["X_test_scaled"]).numpy()
    splits = raw_splits(blobs_run["run_dir"])
    assert np.array_equal(trained.predict_proba(splits.X_test), expected)
    as_frame = pd.DataFrame(splits.X_test[:, ::-1], columns=["x2", "x1"])  # order by name
    assert np.array_equal(trained.predict_proba(as_frame), expected)
    names = trained.predict(splits.X_test)
    accuracy = np.mean(names == np.array(trained.class_names)[splits.y_test])
    assert accuracy == read_metrics(blobs_run["run_dir"])["metrics"]["test"]["accuracy"]


def test_tutorial_point_is_red_on_the_command_line(
    blobs_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    trained = load_run(blobs_run["run_dir"])
    proba = trained.predict_proba([1.0, 1.0])[0]
    with torch.no_grad():
        scaled = trained.scaler.transform(np.array([[1.0, 1.0]], dtype=np.float32))
        own = blobs_run["model"](torch.from_numpy(scaled)).item()
    assert own < 0 and proba.argmax() == 0  # negative logit: the first class
    assert list(trained.predict(np.array([1.0, 1.0]))) == ["red"]

    assert main(["predict", str(blobs_run["run_dir"]), "1.0", "1.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"red  p={proba[0]:.4f}",
        f"  p_red={proba[0]:.4f}  p_blue={proba[1]:.4f}",
    ]


def test_csv_in_csv_out(blobs_run: dict[str, Any], tmp_path: Path) -> None:
    points = pd.DataFrame({"x2": [1.0, -2.0, 0.0, 3.5], "x1": [1.0, -2.5, 0.1, 2.0]})
    points.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "preds.csv"
    args = ["predict", str(blobs_run["run_dir"]), "--csv", str(tmp_path / "new.csv")]
    assert main([*args, "--out", str(out)]) == 0
    preds = pd.read_csv(out)
    assert len(preds) == len(points)
    assert np.allclose(preds["p_red"] + preds["p_blue"], 1.0)
    assert list(preds["predicted"]) == list(load_run(blobs_run["run_dir"]).predict(points))
    assert preds["predicted"].iloc[0] == "red"
    assert not list(tmp_path.glob(".preds.csv.*"))  # no temp file left behind


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("three values", "expected 2 features (x1, x2), got 3"),
        ("missing column", "'x2' is missing"),
        ("extra column", "unexpected column 'label'"),
        ("non-numeric", "'abc'"),
        ("no model", "model.pt does not exist"),
        ("sweep without --best", "add --best"),
    ],
)
def test_bad_input_is_one_error_line(
    case: str,
    named: str,
    blobs_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = str(blobs_run["run_dir"])
    csv = tmp_path / "new.csv"
    frames = {
        "missing column": pd.DataFrame({"x1": [1.0]}),
        "extra column": pd.DataFrame({"x1": [1.0], "x2": [1.0], "label": ["red"]}),
        "non-numeric": pd.DataFrame({"x1": [1.0, 2.0], "x2": ["0.5", "abc"]}),
    }
    if case in frames:
        frames[case].to_csv(csv, index=False)
        argv = ["predict", run, "--csv", str(csv)]
    elif case == "three values":
        argv = ["predict", run, "1", "2", "3"]
    elif case == "no model":
        argv = ["predict", str(tmp_path), "1", "2"]
    else:
        shutil.copytree(run, tmp_path / "sweep" / "0")
        argv = ["predict", str(tmp_path / "sweep"), "1", "2"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines


def run_sweep(sweep_dir: Path, jobs: list[list[str]], multirun_yaml: list[str] | None) -> None:
    """Write what a Hydra sweep would: one run per job in numbered dirs, and multirun.yaml."""
    for num, overrides in enumerate(jobs):
        extra = {"job": {"num": num, "override_dirname": ",".join(overrides)}}
        train_and_record(
            quick_cfg(*overrides), sweep_dir / str(num), extra={**extra, "overrides": overrides}
        )
    if multirun_yaml is not None:
        task = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": multirun_yaml}}}
        OmegaConf.save(OmegaConf.create(task), sweep_dir / "multirun.yaml")


def test_best_picks_the_better_of_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sweep(tmp_path, [["lr=0.001"], ["lr=0.1"]], None)
    values = {d: read_metrics(tmp_path / d)["objective"]["value"] for d in ("0", "1")}
    expected = tmp_path / min(values, key=values.__getitem__)
    assert expected.name == "1"  # val_loss, minimised: the faster learning rate wins
    assert best_run_dir(tmp_path) == expected

    assert main(["predict", str(tmp_path), "--best", "1", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"best run: {expected}"
    assert lines[1].startswith("red  p=")


# --- sweeps and the report ------------------------------------------------------------------


SWEEP_TASK = ["optimizer=sgd,adam", "lr=0.003,0.03,0.3", "seed=0,1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    jobs = [
        [f"optimizer={o}", f"lr={lr}", f"seed={s}"]
        for o in ("sgd", "adam")
        for lr in (0.003, 0.03, 0.3)
        for s in (0, 1)
    ]
    run_sweep(sweep_dir, jobs, SWEEP_TASK)
    return sweep_dir, load_sweep(sweep_dir)


def test_sweep_pictures(sweep: tuple[Path, pd.DataFrame]) -> None:
    sweep_dir, table = sweep
    written = plot_sweep(sweep_dir, table)
    assert [p.name for p in written] == ["objective_vs_lr.png", "top_val_loss.png"]
    for path in written:
        assert_picture(path)


def legend_clear_of_the_axes(fig: Any) -> bool:
    """Whether the figure's legend, drawn, lies outside every axes (covers no data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    [legend] = fig.legends
    box = legend.get_window_extent()
    return not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_top_val_loss_groups_the_seeds_of_a_setting(sweep: tuple[Path, pd.DataFrame]) -> None:
    """6 settings (optimizer x lr) x 2 seeds: one curve per setting, its mean with a ± std
    band, its run count named; never two curves of the same setting."""
    sweep_dir, table = sweep
    ax = top_val_loss_figure(table, sweep_dir).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 5 == len(set(labels))  # the five best settings, each once
    assert all(label.endswith("(2 seeds)") and "seed=" not in label for label in labels)
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 5  # the bands
    best = table[(table["optimizer"] == "adam") & (table["lr"] == 0.3)]
    mean = best["objective"].mean()
    assert labels[0].startswith(f"optimizer=adam, lr=0.3: {mean:.4g} ± ")
    history = [pd.read_csv(sweep_dir / str(j) / "history.csv") for j in best["job"]]
    expected = (history[0]["val_loss"] + history[1]["val_loss"]) / 2
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), expected)
    assert "mean ± std over their seeds" in ax.get_title()


def test_top_val_loss_of_runs_that_are_not_repeats(sweep: tuple[Path, pd.DataFrame]) -> None:
    sweep_dir, table = sweep
    single = table[table["seed"] == 0]
    fig = top_val_loss_figure(single, sweep_dir)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert len(labels) == 5 and all(label.startswith("job ") for label in labels)
    assert legend_clear_of_the_axes(fig)


def test_loss_picture_marks_the_best_epoch_kept_by_early_stopping(tmp_path: Path) -> None:
    cfg = quick_cfg("epochs=50", "early_stopping.patience=1", "early_stopping.min_delta=1")
    _, record = train_and_record(cfg, tmp_path)
    assert (record["epochs_run"], record["best_epoch"]) == (20, 10)
    history = pd.read_csv(tmp_path / "history.csv")
    fig = loss_figure(history, "t", best_epoch=10, kept=True)
    [mark] = [line for line in fig.axes[0].get_lines() if list(line.get_xdata()) == [10, 10]]
    assert mark.get_label() == "early stopping's best epoch 10, weights kept"
    assert legend_clear_of_the_axes(fig)
    plain = loss_figure(history, "t")
    assert not [line for line in plain.axes[0].get_lines() if "best" in line.get_label()]


def test_a_runs_loss_picture_gets_its_best_epoch_from_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sweeplr.plots

    drawn: list[tuple[Any, ...]] = []
    original = sweeplr.plots.loss_figure
    monkeypatch.setattr(
        sweeplr.plots, "loss_figure", lambda *args: drawn.append(args) or original(*args)
    )
    stopped = quick_cfg("epochs=50", "early_stopping.patience=1", "early_stopping.min_delta=1")
    train_and_record(stopped, tmp_path / "stopped")
    plot_run(tmp_path / "stopped")
    train_and_record(quick_cfg("epochs=50"), tmp_path / "plain")
    plot_run(tmp_path / "plain")
    assert [args[-2:] for args in drawn] == [(10, True), (None, False)]


def test_pictures_use_slide_fonts_and_leave_matplotlib_as_it_was() -> None:
    style = dict(matplotlib.rcParams)
    trials = study_trials(pruned_study())
    fig = optuna_history_figure(trials, "val_loss", "minimize")
    assert dict(matplotlib.rcParams) == style
    ax = fig.axes[0]
    assert ax.xaxis.label.get_size() == SLIDE_FONTS["axes.labelsize"]
    assert ax.title.get_size() == SLIDE_FONTS["axes.titlesize"]
    assert min(t.get_size() for t in fig.legends[0].get_texts()) == SLIDE_FONTS["legend.fontsize"]


def test_optuna_history_ticks_are_whole_trial_numbers() -> None:
    fig = optuna_history_figure(study_trials(pruned_study()), "val_loss", "minimize")
    ax = fig.axes[0]
    locator = ax.xaxis.get_major_locator()
    ticks = [t for t in locator() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)
    assert legend_clear_of_the_axes(fig)


def test_sweep_pictures_with_a_diverged_run(
    sweep: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    table = load_sweep(sweep[0])
    table.loc[0, ["status", "objective", "test_accuracy"]] = ["diverged", None, None]
    assert [p.name for p in plot_sweep(tmp_path, table)] == [
        "objective_vs_lr.png",
        "top_val_loss.png",
    ]
    assert_picture(tmp_path / "objective_vs_lr.png")


def test_optuna_pictures(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            (t.suggest_float("lr", 1e-3, 1, log=True) - 0.1) ** 2
            + t.suggest_float("weight_decay", 0, 0.1)
        ),
        n_trials=6,
    )
    style = dict(matplotlib.rcParams)
    written = plot_optuna_study(study, tmp_path)
    assert dict(matplotlib.rcParams) == style  # optuna's ggplot style does not leak out
    assert [p.name for p in written] == [
        "optuna_history.png",
        "optuna_parallel.png",
        "optuna_importance.png",
    ]
    for path in written:
        assert_picture(path)

    single = optuna.create_study()
    single.optimize(lambda t: t.suggest_float("lr", 0, 1), n_trials=1)
    names = [p.name for p in plot_optuna_study(single, tmp_path / "one")]
    assert names == ["optuna_history.png"]  # one trial: no lines to compare, no importances

    flat = optuna.create_study()  # equal values: a zero-height axis, widened without a warning
    flat.optimize(lambda t: t.suggest_float("lr", 0, 1) * 0, n_trials=3)
    names = [p.name for p in plot_optuna_study(flat, tmp_path / "flat")]
    assert names == ["optuna_history.png", "optuna_parallel.png"]  # one parameter: no importances


def lr_table(rows: list[dict[str, Any]], objective: str = "val_loss") -> pd.DataFrame:
    """A sweep table as load_sweep returns it, for the columns the lr picture reads."""
    table = pd.DataFrame(rows)
    table["job"] = range(len(table))
    table["run_dir"] = [str(k) for k in range(len(table))]
    table.attrs.update(objective_name=objective, direction="minimize")
    return table


def markers(ax: Any) -> int:
    """How many points the panel's scatters draw."""
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_optuna_sweep_is_a_scatter_with_every_run() -> None:
    """Runs that differ in more than lr are not joined; pruned and diverged runs are shown."""
    table = lr_table(
        [
            {"lr": 0.1, "optimizer": "adam", "epochs": 100, "weight_decay": 0.001,
             "status": "completed", "objective": 0.02, "test_accuracy": 0.99},
            {"lr": 0.3, "optimizer": "adam", "epochs": 300, "weight_decay": 0.004,
             "status": "completed", "objective": 0.03, "test_accuracy": 0.98},
            {"lr": 0.01, "optimizer": "sgd", "epochs": 100, "weight_decay": 0.002,
             "status": "pruned", "objective": 0.5, "test_accuracy": 0.8},
            {"lr": 1e30, "optimizer": "sgd", "epochs": 100, "weight_decay": 0.003,
             "status": "diverged", "objective": None, "test_accuracy": None},
        ]
    )  # fmt: skip
    fig = objective_vs_lr_figure(table)
    for ax in fig.axes:
        assert markers(ax) == 4  # one per run: two completed, one pruned, one diverged
        assert not ax.get_lines()  # nothing joined
        assert ax.get_xscale() == "log"
        assert ax.get_xlim()[1] > 1e30  # the diverged lr is inside the picture
    shapes = {len(c.get_paths()[0].vertices) for c in fig.axes[0].collections}
    assert len(shapes) == 3  # completed, pruned and diverged each have their own marker
    labels = fig.legends[0].get_texts()
    assert {"pruned (at last reported value)", "diverged (at the top edge)"} <= {
        t.get_text() for t in labels
    }
    assert fig.axes[0].get_yscale() == "log"  # 0.02 .. 0.5: more than a decade


def test_grid_sweep_keeps_lines_and_bands_stay_within_accuracy_bounds() -> None:
    rows = [
        {"lr": lr, "optimizer": opt, "seed": seed, "status": "completed",
         "objective": 0.2 + 0.01 * seed, "test_accuracy": (1.0, 0.9)[seed]}
        for opt in ("sgd", "adam")
        for lr in (0.01, 0.1, 0.3)
        for seed in (0, 1)
    ]  # fmt: skip
    fig = objective_vs_lr_figure(lr_table(rows))
    objective_ax, accuracy_ax = fig.axes
    assert len(objective_ax.get_lines()) == 2  # a series per optimizer, lr the only change
    assert markers(objective_ax) == len(rows)
    assert objective_ax.get_yscale() == "linear"  # 0.2 .. 0.21: no decades to span
    bands = [c for c in accuracy_ax.collections if isinstance(c, PolyCollection)]
    heights = np.concatenate([path.vertices[:, 1] for band in bands for path in band.get_paths()])
    assert heights.size and heights.max() <= 1.0 and heights.min() >= 0.0  # mean 0.95 ± 0.07


def test_only_series_of_two_lrs_or_more_are_lines() -> None:
    """A series with one lr, or whose second lr has no value, is points only; the others are
    lines, whichever order the series come in."""
    rows = [
        *({"lr": lr, "optimizer": "sgd", "weight_decay": 0.0, "status": "completed",
           "objective": 0.1 * lr, "test_accuracy": 0.9} for lr in (0.01, 0.1, 0.3)),
        {"lr": 0.1, "optimizer": "adam", "weight_decay": 0.0, "status": "completed",
         "objective": 0.2, "test_accuracy": 0.9},
        *({"lr": lr, "optimizer": "adam", "weight_decay": 0.1, "status": "completed",
           "objective": value, "test_accuracy": 0.9} for lr, value in ((0.1, 0.3), (0.3, None))),
        *({"lr": lr, "optimizer": "sgd", "weight_decay": 0.1, "status": "completed",
           "objective": 0.5, "test_accuracy": 0.9} for lr in (0.3, 0.01)),
    ]  # fmt: skip
    objective_ax, accuracy_ax = objective_vs_lr_figure(lr_table(rows)).axes
    assert sorted(len(line.get_xdata()) for line in objective_ax.get_lines()) == [2, 3]
    assert markers(objective_ax) == len(rows) - 1  # every run with a value
    assert len(accuracy_ax.get_lines()) == 3  # the adam pair has an accuracy at both lrs


def test_a_failed_job_without_an_optimizer_leaves_the_picture_to_the_others() -> None:
    """A failed job's row has no optimizer (pandas' string column holds a missing value): the
    picture is drawn from the other runs, as the README's failed-sweep example shows."""
    rows = [
        {"lr": 0.1, "optimizer": "sgd", "status": "completed", "objective": 0.3,
         "test_accuracy": 0.97},
        {"lr": -1.0, "optimizer": None, "status": "failed", "objective": None,
         "test_accuracy": None},
        {"lr": 0.3, "optimizer": "sgd", "status": "completed", "objective": 0.15,
         "test_accuracy": 0.99},
    ]  # fmt: skip
    table = lr_table(rows)
    table["optimizer"] = table["optimizer"].astype("string")  # as load_sweep's pandas reads it
    fig = objective_vs_lr_figure(table)
    assert markers(fig.axes[0]) == 2 and len(fig.axes[0].get_lines()) == 1


def test_a_sweep_whose_every_job_failed_has_no_lr_picture(tmp_path) -> None:
    """Failed jobs' lrs may be anything (``lr=choice(-1,-2)``): no picture places them, and a
    failed lr is no tick on the others' log axis."""
    failed = [
        {"lr": lr, "optimizer": "sgd", "status": "failed", "objective": None,
         "test_accuracy": None}
        for lr in (-1.0, -2.0)
    ]  # fmt: skip
    assert plot_sweep(tmp_path, lr_table(failed)) == []
    done = {"lr": 0.1, "optimizer": "sgd", "status": "completed", "objective": 0.3,
            "test_accuracy": 0.9}  # fmt: skip
    fig = objective_vs_lr_figure(lr_table([*failed, done]))
    assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["0.1"]


def test_loss_names_and_csv_titles() -> None:
    assert loss_name(2) == "binary cross-entropy" and loss_name(3) == "cross-entropy"
    csv = OmegaConf.create({"name": "csv", "path": "/data/patients.csv", "target": "y"})
    assert dataset_title(csv) == "patients.csv"
    assert dataset_title(OmegaConf.create({"name": "iris"})) == "iris"


def pruned_study() -> optuna.Study:
    """Completed and pruned trials over lr, an optimizer and a long dotted parameter name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.set_user_attr("objective", "val_loss")
    for k in range(10):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1, log=True)
        trial.suggest_categorical("optimizer", ["sgd", "adam"])
        trial.suggest_float("optimizer.weight_decay", 0, 0.01)
        value = 0.01 + (np.log10(lr) + 1) ** 2
        trial.report(value, step=10)
        if k % 3 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def test_optuna_pictures_name_the_objective_and_show_pruned_trials() -> None:
    study = pruned_study()
    name = study_objective_name(study)
    assert name == "val_loss"
    trials = study_trials(study)
    assert (trials["status"] == "pruned").sum() == 3  # at their last reported value
    history = optuna_history_figure(trials, name, "minimize")
    assert history.axes[0].get_ylabel() == "val_loss (minimize)"
    assert markers(history.axes[0]) == 10
    params = ["lr", "optimizer", "optimizer.weight_decay"]
    parallel = optuna_parallel_figure(trials, params, name, "minimize", frozenset({"lr"}))
    ax = parallel.axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names == ["val_loss\n(minimize)", *params]  # in full, never "optimizer.weight_..."
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 3  # one per pruned trial
    solid = [
        line for line in ax.get_lines() if line.get_linestyle() == "-" and len(line.get_xdata()) > 2
    ]
    lightness = [np.mean(matplotlib.colors.to_rgb(line.get_color())) for line in solid]
    assert len(solid) == 7 and max(lightness) < 0.75  # the worst trial is not near-white
    assert parallel.axes[1].get_ylabel() == "val_loss"  # the colour bar


@pytest.fixture(scope="module")
def report(sweep: tuple[Path, pd.DataFrame]) -> Path:
    sweep_dir, table = sweep
    plot_sweep(sweep_dir, table)
    plot_run(sweep_dir / str(table["job"].iloc[0]))
    return write_report(sweep_dir, table)


def test_report_is_self_contained(sweep: tuple[Path, pd.DataFrame], report: Path) -> None:
    sweep_dir, table = sweep
    page = report.read_text()
    assert report == sweep_dir / "report.html"
    assert "python train.py --multirun " + " ".join(SWEEP_TASK) in page
    body = page.split('<table id="runs"', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr>") == len(table) + 1  # header row plus one per run
    grouped = page.split('<table id="grouped"', 1)[1].split("</table>", 1)[0]
    assert grouped.count("<tr>") == len(table) // 2 + 1  # one row per seed pair
    # Pictures first, then the seeds' mean ± std, then the runs.
    assert page.index("<img") < page.index('id="grouped"') < page.index('id="runs"')
    assert "0.003 ± " not in page and " ± " in grouped
    assert '<a href="summary.csv">' in page
    pictures = [*sweep_dir.glob("*.png"), *(sweep_dir / str(table["job"].iloc[0])).glob("*.png")]
    assert len(pictures) == 4
    assert page.count('<img src="data:image/png;base64,') == len(pictures)
    assert "http://" not in page and "https://" not in page
    assert "<script" in page and " src=" not in page.replace('<img src="data:', "")


def test_report_command_from_the_runs_without_multirun_yaml(tmp_path: Path) -> None:
    run_sweep(tmp_path, [["lr=0.001"], ["lr=0.1"]], None)
    page = write_report(tmp_path).read_text()
    assert "python train.py --multirun lr=0.001,0.1" in page
    assert "from the runs&#x27; overrides" in page
    assert 'id="grouped"' not in page  # no seeds repeated: no mean ± std table


def test_plot_command_on_a_run_and_a_sweep(
    blobs_run: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plot", str(blobs_run["run_dir"])]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {blobs_run['run_dir'] / 'loss.png'}",
        f"wrote {blobs_run['run_dir'] / 'decision_boundary.png'}",
    ]
    run_sweep(tmp_path, [["lr=0.001"], ["lr=0.1"]], None)
    assert main(["plot", str(tmp_path)]) == 0
    wrote = {Path(line.removeprefix("wrote ")) for line in capsys.readouterr().out.splitlines()}
    assert wrote == {
        tmp_path / "objective_vs_lr.png",
        tmp_path / "top_val_loss.png",
        tmp_path / "1" / "loss.png",
        tmp_path / "1" / "decision_boundary.png",
        tmp_path / "report.html",
    }


# --- the report in a real browser -----------------------------------------------------------


def chromium(url: str, tmp_path: Path, window: str = "1200,2000") -> tuple[Path, list[str]]:
    """Screenshot ``url`` in headless Chromium; return the PNG and the page's console lines.

    Chromium logs every console message, console.error and uncaught exceptions included, as
    an ``INFO:CONSOLE`` line without its level, so a clean page is one with no such line.
    """
    browser = require_program("chromium", "apt-get install -y chromium (Debian's package)")
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={window}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    done = subprocess.run(
        [browser, *flags, url], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-3000:]
    lines = done.stderr.splitlines()
    return shot, [line for line in lines if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot, console = chromium(report.as_uri(), tmp_path)
    assert png_size(shot) == (1200, 2000)
    assert shot.stat().st_size > 20_000
    assert console == []  # the page logs nothing: no errors, no failed loads
    pixels = b""
    data = shot.read_bytes()
    at = 8
    while at < len(data):  # the IDAT chunks hold the compressed pixels
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"IDAT":
            pixels += data[at + 8 : at + 8 + length]
        at += 12 + length
    assert len(set(zlib.decompress(pixels))) > 50  # text, tables and plots, not a blank page


@pytest.mark.slow
def test_report_table_sorts_on_header_click(
    sweep: tuple[Path, pd.DataFrame], report: Path, tmp_path: Path
) -> None:
    """Click the objective header twice in a copy of the page and log the job column."""
    _, table = sweep
    probe = """<script>
var heads = Array.prototype.slice.call(document.querySelectorAll("table#runs th"));
var jobs = function () {
  return Array.prototype.map.call(document.querySelectorAll("table#runs tbody tr"),
    function (r) { return r.cells[0].textContent; }).join(" ");
};
var objective = heads.filter(function (h) { return h.textContent === "objective"; })[0];
objective.click();
console.log("ASCENDING " + jobs());
objective.click();
console.log("DESCENDING " + jobs());
</script></body>"""
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe))
    _, console = chromium(page.as_uri(), tmp_path)
    assert len(console) == 2, console  # the probe's two lines and nothing else
    best_first = " ".join(str(j) for j in table["job"])
    worst_first = " ".join(str(j) for j in table["job"][::-1])
    assert any(f"ASCENDING {best_first}" in line for line in console), console
    assert any(f"DESCENDING {worst_first}" in line for line in console), console


WIDTH_PROBE = """<script>
var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
var right = Math.max.apply(null, tables.map(function (t) {
  return Math.ceil(t.getBoundingClientRect().right);
}));
var page = document.documentElement;
console.log("WIDTH " + tables.length + " " + right + " " + page.scrollWidth + " " + page.clientWidth);
</script></body>"""


@pytest.mark.slow
def test_report_tables_fit_1400_px(
    sweep: tuple[Path, pd.DataFrame], report: Path, tmp_path: Path
) -> None:
    """Every table fits a 1400 px window without scrolling sideways: the fixture's, one of 16
    columns with long names (numbers stay whole), and one of 25 with long values (cells wrap;
    the CSV keeps every column)."""
    sweep_dir, table = sweep

    def widened(name: str, extra: int, path: bool) -> Path:
        wide = table.copy()
        for i in range(extra):  # more swept columns, values that need every digit
            wide[f"optimizer.param_{i}"] = [1 / (3 + i + j) for j in range(len(wide))]
        if path:
            wide["dataset.path"] = [
                f"/data/some/rather/long/folder/file_{j}.csv" for j in range(12)
            ]
        copy = tmp_path / name
        shutil.copytree(sweep_dir, copy)
        return write_report(copy, wide)

    page = tmp_path / "probe.html"
    # The fixture's page has the seeds' and the runs' tables; the wide ones only the runs'.
    pages = [(report, 2), (widened("sixteen", 5, False), 1), (widened("many", 12, True), 1)]
    for html_page, tables in pages:
        page.write_text(html_page.read_text().replace("</body>", WIDTH_PROBE))
        _, console = chromium(page.as_uri(), tmp_path, window="1400,1000")
        assert len(console) == 1, console
        found = re.search(r"WIDTH (\d+) (\d+) (\d+) (\d+)", console[0])
        assert found, console
        count, right, scroll_width, client_width = map(int, found.groups())
        assert count == tables, console
        assert right <= client_width <= 1400
        assert scroll_width <= client_width  # no horizontal scrolling


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: p.update(n_features=10**12), "n_features=1000000000000"),
        (lambda p: p.update(n_classes="2"), "n_classes='2'"),
        (lambda p: p["state_dict"].pop("linear.bias"), "its state_dict is not a linear layer's"),
        (
            lambda p: p["state_dict"].update({"linear.weight": torch.zeros(1, 7)}),
            "linear.weight is not (1, 2)",
        ),
        (lambda p: p.update(scaler_mean=torch.zeros(3)), "scaler_mean is not (2,)"),
        (lambda p: p.pop("class_names"), "no class_names"),
    ],
)
def test_a_damaged_model_file_is_refused_before_anything_is_allocated(tmp_path, damage, why):
    from tests.conftest import train_and_record

    run = tmp_path / "run"
    train_and_record(compose_config("epochs=5", "device=cpu", "progress=false"), run)
    payload = torch.load(run / MODEL_FILE, weights_only=True)
    damage(payload)
    torch.save(payload, run / MODEL_FILE)
    with pytest.raises(SweeplrError) as error:
        load_run(run)
    assert (
        str(error.value)
        == f"{run}/{MODEL_FILE} is not a sweeplr model ({why}); allowed: a run's model.pt"
    )


def test_a_multi_objective_study_draws_no_single_value_pictures(tmp_path: Path) -> None:
    """Its trials have no one value (issue 22, 10: the sweep's summary and ``sweeplr plot``
    ended on Optuna's RuntimeError); the summary marks its Pareto front instead."""
    from sweeplr.importance import start_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.optimize(lambda t: (t.suggest_float("lr", 0, 1), t.suggest_float("wd", 0, 1)), 4)
    assert start_importances(study) is None
    assert plot_optuna_study(study, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
