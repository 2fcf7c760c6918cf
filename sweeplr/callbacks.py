"""Hydra callbacks: what happens around jobs and sweeps, outside any one run's code.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. Hydra builds them for every run,
sweeps or not, so this module imports nothing heavy at the top.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class FailureRecordCallback(Callback):
    """A job whose task raised gets a ``metrics.json`` with status ``failed`` and the error.

    So the summary lists it as failed, with why, instead of as a job that never ran. A run that
    wrote a record of its own keeps it; an interrupt (Ctrl-C, SIGTERM) leaves no record, so a
    resumed sweep runs that job again.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        error = job_return._return_value
        if job_return.status != JobStatus.FAILED or not isinstance(error, Exception):
            return
        from sweeplr.errors import SweeplrError, first_line
        from sweeplr.experiment import job_fields
        from sweeplr.pruning import trial_link
        from sweeplr.records import write_failure

        # A user mistake's line says it all; anything else is named by its type.
        message = first_line(error)
        if not isinstance(error, SweeplrError):
            message = f"{type(error).__name__}: {message}"
        try:
            fields = job_fields(config.hydra, trial_link(config.hydra))
            write_failure(config.hydra.runtime.output_dir, message, fields)
        except Exception as exc:  # noqa: BLE001 - a record of a failure must not fail the sweep
            log.warning(f"sweeplr: no record of the failed job: {exc}")


def optuna_study(config: DictConfig) -> Any:
    """The sweep's Optuna study when the sweeplr Optuna sweeper ran it, else None."""
    storage = OmegaConf.select(config, "hydra.sweeper.storage")
    study_name = OmegaConf.select(config, "hydra.sweeper.study_name")
    if not (storage and study_name):
        return None
    import optuna

    from sweeplr.studies import open_storage

    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def study_values(study: Any) -> dict[int, list[float]]:
    """Each finished trial's values, as the task returned them, by trial number."""
    return {t.number: list(t.values) for t in study.get_trials(deepcopy=False) if t.values}


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
        from sweeplr.records import METRICS_FILE
        from sweeplr.results import (
            add_trial_values,
            compact,
            format_table,
            load_sweep,
            with_trial_states,
            write_summary,
        )
        from sweeplr.schema import UNFINISHED

        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            df = load_sweep(sweep_dir)
            study = optuna_study(config)
            if study is not None:
                # The study's word on each trial, over what the records imply (a run that ended
                # after its worker's last tell, before a kill, was re-queued: FAIL).
                df = with_trial_states(df, {t.number: t.state.name for t in study.trials})
                if len(study.directions) > 1:
                    front = {t.number for t in study.best_trials}
                    df = add_trial_values(df, study_values(study), front)
            path = write_summary(sweep_dir, df)
            if df["status"].isin(UNFINISHED).all():
                # A sweep stopped before any run (a bad value): a table of blanks says nothing.
                print(f"sweeplr: {path}: none of the {len(df)} runs wrote {METRICS_FILE}")
                return
            shown = f"best {self.top} of {len(df)}" if len(df) > self.top else f"all {len(df)}"
            print(f"sweeplr: {path} ({shown} runs below, best first)")
            print(format_table(compact(df), "table", self.top))
            if config.get("plots", True):
                from sweeplr.report import draw_sweep

                report = draw_sweep(sweep_dir, df, study)[-1]
                print(f"sweeplr: pictures and {report} (open it in a browser)")
        except Exception as exc:  # noqa: BLE001 - a summary must never fail the sweep
            from sweeplr.errors import first_line

            log.warning(f"sweeplr: no sweep summary: {first_line(exc)}")
