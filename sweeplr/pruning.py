"""Pruning for any Hydra app swept by ``hydra/sweeper=sweeplr_optuna``.

A task reports an intermediate value at each step and learns whether its trial should stop::

    from sweeplr.pruning import report

    @hydra.main(config_path="conf", config_name="config")
    def main(cfg):
        for epoch in range(cfg.epochs):
            loss = train_one_epoch()
            if report(epoch, loss):  # True: the pruner stops this trial
                break                # the sweeper records it as PRUNED
        return loss

Outside such a sweep (a plain run, another sweeper, a sweep without ``hydra.sweeper.pruner``)
``report`` does nothing and returns False, so the same code runs everywhere. Hydra's own
Optuna sweeper gives a task no way to reach its trial (hydra issue 1954); ``sweeplr_optuna``
passes each job its trial number in ``hydra.job.env_set.SWEEPLR_TRIAL`` and the study's name,
storage and pruner in ``hydra.sweeper``. A task may also raise ``optuna.TrialPruned``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from sweeplr.studies import TrialLink

PRUNER_TARGETS = ("optuna.pruners.*",)
# How the sweeper tells a job its trial number: the job's ``hydra.job.env_set``, so it reaches
# any app, and the processes a task starts, without a config key of the app's.
TRIAL_ENV = "SWEEPLR_TRIAL"

_links: dict[tuple[str, str, int], TrialLink] = {}


def make_pruner(cfg: Any) -> optuna.pruners.BasePruner | None:
    """The configured Optuna pruner (only ``optuna.pruners`` classes may be named), or None."""
    if not cfg:
        return None
    from hydra.utils import instantiate

    return instantiate(cfg, _execution_whitelist_=PRUNER_TARGETS)


def trial_number(env_set: Any) -> Any:
    """The trial number a job's ``hydra.job.env_set`` names, or None."""
    # `in keys()`, not `get`: a missing key of a struct config is an exception OmegaConf
    # formats in full before `get` catches it, about 0.3 ms, paid by every job of a grid.
    return env_set.get(TRIAL_ENV) if TRIAL_ENV in env_set.keys() else None  # noqa: SIM118


def trial_link(hydra_cfg: Any) -> TrialLink | None:
    """The trial a job runs, from the job's Hydra node; None outside a sweeplr_optuna sweep."""
    return trial_link_for(hydra_cfg.job.env_set, hydra_cfg.sweeper)


def trial_link_for(env_set: Any, sweeper: Any) -> TrialLink | None:
    """The trial of a job whose ``hydra.job.env_set`` and ``hydra.sweeper`` are these."""
    number = trial_number(env_set)
    if number is None:  # not a trial's job (first: a sweeper without `storage` misses slowly)
        return None
    url, study_name = sweeper.get("storage"), sweeper.get("study_name")
    if not url or not study_name:
        return None
    from sweeplr.studies import TrialLink  # optuna: only for jobs of an Optuna sweep

    key = (str(url), str(study_name), int(number))
    link = _links.get(key)
    # One per trial: the pruner and the study load once, not at every report; anew when the
    # storage is (a second sweep of the same study in this process, into a new directory).
    if link is None or not link.is_current():
        link = _links[key] = TrialLink(*key, make_pruner(sweeper.get("pruner")))
    return link


def current_trial() -> TrialLink | None:
    """The trial of the job running now (inside a Hydra task function), if any."""
    from hydra.core.hydra_config import HydraConfig

    return trial_link(HydraConfig.get()) if HydraConfig.initialized() else None


def report(step: int, value: float) -> bool:
    """Report ``value`` at ``step`` to this job's trial; True when the trial should stop.

    A non-finite value also stops it, recorded as ``diverged``: a bad result the sampler learns
    from, not a failure.
    """
    link = current_trial()
    return link.report(step, float(value)) if link is not None else False
