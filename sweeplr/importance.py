"""A study's hyperparameter importances (Optuna's fANOVA), worked out beside the sweep's end.

Optuna's fANOVA fits scikit-learn's random forest, and ``import optuna.importance`` imports
scikit-learn whether fANOVA is used or not. Together that is most of a 100-trial study's end on
one core (bench/README.md, P3), while the sweep's other pictures are drawn on one core too. So
:func:`start_importances` hands the trials to a child interpreter (``python -m
sweeplr.importance``) and returns at once; :meth:`PendingImportances.result` collects its answer
when the importance picture is drawn. The child computes exactly what :func:`importances` does
in this process (same trials, same seed); where it cannot run, this process does.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


def importances(trials: Sequence[FrozenTrial], direction: str) -> dict[str, float]:
    """fANOVA importances (seed 0: the same picture twice) of ``trials`` in a study that
    ``direction``s ("minimize"/"maximize") its one objective."""
    import optuna

    study = optuna.create_study(direction=optuna.study.StudyDirection[direction.upper()])
    study.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {name: float(value) for name, value in found.items()}


class PendingImportances:
    """Importances being worked out by a child interpreter (see the module docstring)."""

    def __init__(self, study: optuna.Study, python: str = sys.executable) -> None:
        self._trials = study.get_trials(deepcopy=False)
        self._direction = study.direction.name.lower()
        self._child: subprocess.Popen[bytes] | None = None
        # The child imports this very package, wherever this process found it.
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        try:
            self._child = subprocess.Popen(
                [python, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        except OSError:  # no interpreter to start: this process works them out when asked
            return
        # Fed from a thread: the trials may be more than a pipe holds, and the child reads
        # them only once its interpreter is up; the sweep's end goes on meanwhile.
        self._feeder = threading.Thread(
            target=self._feed, args=(self._child, pickle.dumps((self._trials, self._direction)))
        )
        self._feeder.start()

    @staticmethod
    def _feed(child: subprocess.Popen[bytes], payload: bytes) -> None:
        assert child.stdin is not None
        # A child that died: result() works them out here.
        with contextlib.suppress(OSError), child.stdin:
            child.stdin.write(payload)

    def result(self) -> dict[str, float]:
        """The importances, by parameter, most important first."""
        child, self._child = self._child, None
        if child is not None:
            assert child.stdout is not None
            try:
                out = child.stdout.read()
                if child.wait() == 0:
                    return dict(json.loads(out))
            except (OSError, ValueError):  # a child that died or said something else
                child.kill()
                child.wait()
            finally:
                child.stdout.close()
                self._feeder.join()
        return importances(self._trials, self._direction)

    def cancel(self) -> None:
        """Stop the child, if it still runs (the picture will not be drawn)."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            self._feeder.join()
            if child.stdout is not None:
                child.stdout.close()


def start_importances(study: optuna.Study) -> PendingImportances | None:
    """Start working out ``study``'s importances beside this process (collect them with
    ``result``); None where it has fewer than two completed trials, too few to compare, or
    several objectives (no one value to attribute)."""
    from optuna.trial import TrialState

    if len(study.directions) > 1:
        return None
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return PendingImportances(study) if len(complete) >= 2 else None


def _child() -> None:
    trials, direction = pickle.loads(sys.stdin.buffer.read())
    json.dump(list(importances(trials, direction).items()), sys.stdout)


if __name__ == "__main__":
    _child()
