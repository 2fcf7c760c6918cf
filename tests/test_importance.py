"""sweeplr.importance: a study's fANOVA importances worked out by a child interpreter are the
ones this process works out, and this process works them out where the child cannot."""

from __future__ import annotations

import math

import optuna
import pytest

from sweeplr.importance import PendingImportances, importances, start_importances
from sweeplr.study_plots import IMPORTANCE_PNG, plot_optuna_study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    """A study whose value depends on lr much more than on momentum, and not on the seed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    for i in range(24):
        lr, momentum, seed = 10 ** (-4 + i % 6 * 0.7), (i * 7 % 10) / 10, i // 6 % 3
        study.enqueue_trial({"lr": lr, "momentum": momentum, "seed": seed})
    study.optimize(
        lambda t: (
            (math.log10(t.suggest_float("lr", 1e-5, 1.0, log=True)) + 2) ** 2
            + t.suggest_float("momentum", 0.0, 1.0)
            + 0 * t.suggest_int("seed", 0, 2)
        ),
        n_trials=24,
    )
    return study


def in_process(study: optuna.Study) -> dict[str, float]:
    return importances(study.get_trials(deepcopy=False), "minimize")


def test_the_child_finds_what_this_process_finds(study):
    expected = in_process(study)
    assert list(expected) == ["lr", "momentum", "seed"]  # lr first: the study is built so
    assert start_importances(study).result() == expected  # same numbers, same order


@pytest.mark.parametrize("python", ["/nonexistent/python", "false"])
def test_without_a_working_child_this_process_works_them_out(study, python):
    # "/nonexistent/python" cannot start; `false` starts and exits 1 without a word
    assert PendingImportances(study, python=python).result() == in_process(study)


def test_cancel_stops_the_child(study):
    pending = PendingImportances(study)
    child = pending._child
    pending.cancel()
    assert child is not None and child.poll() is not None  # it was waited for: no zombie


def test_too_few_completed_trials_start_no_child():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    assert start_importances(study) is None


def test_the_picture_is_the_same_drawn_from_the_childs_answer(study, tmp_path):
    plot_optuna_study(study, tmp_path / "here")
    plot_optuna_study(study, tmp_path / "child", pending=start_importances(study))
    here = (tmp_path / "here" / IMPORTANCE_PNG).read_bytes()
    assert here == (tmp_path / "child" / IMPORTANCE_PNG).read_bytes()
