"""``experiment.run``, the Hydra edge of one job, when its record cannot be written."""

from __future__ import annotations

import errno
import os

import pytest

from sweeplr.errors import SweeplrError
from tests.conftest import as_hydra_job, compose_config


def test_a_full_disk_while_writing_a_record_says_so(tmp_path, monkeypatch):
    """Hydra's single run and a sweep's job: the record cannot be written (ENOSPC)."""
    from hydra.types import RunMode

    from sweeplr import experiment

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(experiment, "write_run", full)
    cfg = compose_config("epochs=5", "device=cpu", "progress=false", "plots=false")
    hydra_cfg = as_hydra_job(monkeypatch, tmp_path / "r")
    with pytest.raises(SystemExit) as stop:
        experiment.run(cfg)
    assert str(stop.value) == (
        f"error: could not write the record in {tmp_path / 'r'}: No space left on device"
    )
    hydra_cfg.mode = RunMode.MULTIRUN
    with pytest.raises(
        SweeplrError, match=r"^could not write the record in .*No space left on device$"
    ):
        experiment.run(cfg)
