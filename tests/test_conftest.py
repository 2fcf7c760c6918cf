"""The tests' own helpers, where a mistake would make a test pass for the wrong reason."""

from __future__ import annotations

import os
import shutil

from tests.conftest import path_without


def test_path_without_hides_a_program_this_machine_has(tmp_path, monkeypatch):
    """The slurm case above on a machine with Slurm: a fake srun first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("srun") == str(bin_dir / "srun")
    path = path_without("srun")
    assert shutil.which("srun", path=path) is None
    kept = path.split(os.pathsep)
    for folder in os.environ["PATH"].split(os.pathsep):  # only folders with an srun go
        assert (folder in kept) == (shutil.which("srun", path=folder) is None)
