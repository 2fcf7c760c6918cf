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


def test_a_relative_data_path_is_read_from_the_start_folder_under_job_chdir(tmp_path, monkeypatch):
    """hydra.job.chdir=true runs each job in its output folder; ``dataset.path=same.csv`` was
    typed in the start folder, where tracker paths are read from too. Both jobs of a launch
    still train in one pass."""
    import json

    from hydra.types import RunMode

    from sweeplr import experiment
    from sweeplr.data import make_blobs
    from sweeplr.job_batch import PublishedJob, published

    start = tmp_path / "start"
    start.mkdir()
    blobs = make_blobs(n_samples=60)
    rows = "".join(f"{a},{b},{y}\n" for (a, b), y in zip(blobs.X, blobs.y, strict=True))
    (start / "same.csv").write_text("a,b,y\n" + rows)
    base = ("dataset=csv", "dataset.path=same.csv", "dataset.target=y", "epochs=5")
    configs = [compose_config(*base, lr, "device=cpu", "plots=false") for lr in ("lr=0.1", "lr=1")]
    run_dir = start / "multirun" / "0"
    run_dir.mkdir(parents=True)
    hydra_cfg = as_hydra_job(monkeypatch, run_dir)
    hydra_cfg.runtime.cwd = str(start)
    monkeypatch.chdir(run_dir)  # what hydra.job.chdir=true does before the task runs
    assert experiment.run(configs[0]) > 0  # a single run
    hydra_cfg.mode, hydra_cfg.job.num = RunMode.MULTIRUN, 0
    jobs = {num: PublishedJob(cfg, {}, {}) for num, cfg in enumerate(configs)}
    with published(jobs, max_batch=8):
        experiment.run(configs[0])
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and record["batch"]["configs"] == 2
