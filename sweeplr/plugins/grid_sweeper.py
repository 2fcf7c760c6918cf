"""``hydra/sweeper=sweeplr_grid``: Hydra's basic grid sweeper, minus a second composition.

The basic sweeper composes every job's config once to validate the batch, and the launcher
composes it again to run it: about 0.17 s per job here, more than training a job takes. With
the ``sweeplr_batch`` launcher, which composes every job of a batch before it trains any, that
validation is the launch itself, so it is skipped; any other launcher keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore

from sweeplr.plugins.batch_launcher import BatchLauncher


@dataclass
class SweeplrGridSweeperConf(BasicSweeperConf):
    _target_: str = "sweeplr.plugins.grid_sweeper.SweeplrGridSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="sweeplr_grid", node=SweeplrGridSweeperConf, provider="sweeplr"
)


class SweeplrGridSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if not isinstance(self.launcher, BatchLauncher):
            super().validate_batch_is_legal(batch)
