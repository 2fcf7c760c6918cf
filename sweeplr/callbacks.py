"""Hydra callbacks: what happens around a sweep, outside any one run.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def optuna_study(config: DictConfig) -> Any:
    """The sweep's Optuna study when the sweeplr Optuna sweeper ran it, else None."""
    sweeper = config.hydra.sweeper
    if not (sweeper.get("storage") and sweeper.get("study_name")):
        return None
    import optuna

    from sweeplr.studies import open_storage

    return optuna.load_study(study_name=sweeper.study_name, storage=open_storage(sweeper.storage))


class SummaryCallback(Callback):
    """At the end of ``--multirun``, write ``summary.csv`` in the sweep directory and print it.

    Hydra calls ``on_multirun_end`` also when a sweep is interrupted or fails, so the runs that
    did finish are still summarised. A summary is a convenience: whatever goes wrong here is
    logged as one warning line and never turns a finished sweep into a failed one.
    """

    def __init__(self, top: int = 20) -> None:
        self.top = top

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here: Hydra builds its callbacks for every run, sweeps or not, and pandas
        # costs 0.4 s of a single run's start-up.
        from sweeplr.results import (
            METRICS_FILE,
            UNFINISHED,
            compact,
            format_table,
            load_sweep,
            write_summary,
        )

        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            df = load_sweep(sweep_dir)
            path = write_summary(sweep_dir, df)
            if df["status"].isin(UNFINISHED).all():
                # A sweep stopped before any run (a bad value): a table of blanks says nothing.
                print(f"sweeplr: {path}: none of the {len(df)} runs wrote {METRICS_FILE}")
                return
            shown = f"best {self.top} of {len(df)}" if len(df) > self.top else f"all {len(df)}"
            print(f"sweeplr: {path} ({shown} runs below, best first)")
            print(format_table(compact(df), "table", self.top))
            if config.get("plots", True):
                from sweeplr.plots import draw_sweep

                report = draw_sweep(sweep_dir, df, optuna_study(config))[-1]
                print(f"sweeplr: pictures and {report} (open it in a browser)")
        except Exception as exc:  # noqa: BLE001 - a summary must never fail the sweep
            lines = str(exc).strip().splitlines()
            log.warning(f"sweeplr: no sweep summary: {lines[0] if lines else type(exc).__name__}")
