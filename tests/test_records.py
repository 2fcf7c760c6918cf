"""The run record's files: written as any file the user writes, by a package whose import
changes nothing of the process."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_sweeplr_changes_no_process_state(tmp_path):
    code = """
import os, matplotlib
os.umask(0o027)
import sweeplr.plots, sweeplr.records, sweeplr.results, sweeplr.experiment, sweeplr.cli
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert os.umask(0o027) == 0o027
path = sweeplr.records.atomic_write_text(os.path.join(os.environ["OUT"], "x.json"), "{}")
print(oct(os.stat(path).st_mode & 0o777))
"""
    env = {**os.environ, "MPLBACKEND": "svg", "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0o640"  # 0666 less the umask, as any file the user writes
