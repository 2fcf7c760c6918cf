"""A newcomer's first hour: the README's set-up lines, run in a fresh venv on a clean clone.

The lines are read from the README's "Set up" block, so a README that drifts breaks this test:
the venv line, the torch line, command 1 (``pip install -e ".[dev]" && python train.py``) and
command 2 (``pytest``). They run with bash in a clone of the repository's last commit (what a
newcomer gets: uncommitted changes are not in it), ``python3`` being this interpreter's Python.
The run's report must match the README's ``$ python train.py`` example, as tests/test_readme.py
compares them.

Then command 2, affordably and without recursion: ``pytest --collect-only`` (every test module
imports in a venv with ``[dev]`` alone: a module that imported an extra at its top would error
here) and the fast tests of the modules that need extras ``[dev]`` lacks (tests/test_kernels.py:
``gpu``; tests/test_trackers.py: ``tensorboard``, ``mlflow``), which must pass or skip naming the
extra that brings what is missing. The whole suite runs in this same CI job already, on the same
code; what differs in the fresh venv is only what is installed, and that shows at import and in
the tests of the extras. ``SWEEPLR_FRESH_VENV`` marks the inner run: this test skips there, so it
can never run itself. ``CI`` is unset for the inner run, since there a missing extra is the
point, not a fault of CI's set-up.

Measured here: 13 min (2 cores shared with other work, load average ~6; pip installing
``[dev]`` took 9 of them in a venv of its own). The same lines by hand with timestamps
(2026-12-03, load average ~2-5): venv 17 s, torch 63 s, ``[dev]`` 113 s, train 5 s, collection
13 s, the extras' tests 13 s: 3 min 44 s, pip's two installs 80% of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, missing, require_program
from tests.test_readme import match, normalise, readme_examples

pytestmark = pytest.mark.slow

GUARD = "SWEEPLR_FRESH_VENV"


def set_up_lines(readme: str) -> dict[str, str]:
    """The README's set-up commands by role, comments cut: venv, torch, install, test."""
    section = readme.split("\n## Set up\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "the README's Set up section has no bash block"
    lines = [re.split(r"\s{2,}#", line)[0].strip() for line in block[1].splitlines()]
    roles = {
        "venv": lambda line: "-m venv" in line,
        "torch": lambda line: line.startswith("pip install torch"),
        "install": lambda line: line.startswith("pip install -e"),
        "test": lambda line: line.startswith("pytest"),
    }
    found = {role: [line for line in lines if is_role(line)] for role, is_role in roles.items()}
    assert all(len(hits) == 1 for hits in found.values()), found
    assert len(lines) == len(roles), lines  # nothing else to run
    return {role: hits[0] for role, hits in found.items()}


def test_set_up_lines_are_read_from_the_readme():
    lines = set_up_lines((ROOT / "README.md").read_text())
    assert lines["install"] == 'pip install -e ".[dev]" && python train.py'
    assert lines["test"] == "pytest"
    assert lines["torch"] == "pip install torch==2.13.0"  # the CPU wheel pip finds here
    assert lines["venv"].endswith(". .venv/bin/activate")


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float):
    return subprocess.run(
        ["bash", "-c", f'set -eo pipefail\npython3() {{ "{sys.executable}" "$@"; }}\n{script}'],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_fresh_clone_sets_up_trains_and_collects_its_tests(tmp_path):
    if os.environ.get(GUARD):
        pytest.skip(f"{GUARD} is set: this is the fresh venv's own run")
    git = require_program("git", "apt-get install -y git")
    if subprocess.run([sys.executable, "-c", "import ensurepip"], check=False).returncode:
        missing("Python's ensurepip (for python3 -m venv)", "apt-get install -y python3-venv")
    readme = (ROOT / "README.md").read_text()
    lines = set_up_lines(readme)
    head = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = tmp_path / "sweeplr"
    for command in (
        [git, "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)],
        [git, "-C", str(clone), "checkout", "--quiet", head],
    ):
        subprocess.run(command, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CI")}
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update({GUARD: "1", "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"})

    setup = bash(
        f"{lines['venv']}\n{lines['torch']}\n{lines['install']}",
        clone,
        env,
        timeout=1800,
    )
    assert setup.returncode == 0, setup.stdout[-4000:]
    out = setup.stdout.splitlines()
    report = out[next(i for i, line in enumerate(out) if line.startswith("sweeplr: ")) :]
    shown = next(e for e in readme_examples(readme) if e.command == "python train.py")
    assert match(normalise(shown.expected), normalise(report)) is not None, "\n".join(report)
    assert (clone / ".venv" / "bin" / "sweeplr").exists()  # installed into the new venv

    activate = lines["venv"].split("&&")[-1].strip()  # the README's own activation
    collected = bash(f"{activate}\n{lines['test']} --collect-only -q", clone, env, timeout=600)
    assert collected.returncode == 0, collected.stdout[-4000:]
    assert re.search(r"^\d+ tests collected", collected.stdout, re.MULTILINE), collected.stdout

    extras = bash(
        f"{activate}\n{lines['test']} -m 'not slow' -rs -p no:cacheprovider "
        "tests/test_kernels.py tests/test_trackers.py",
        clone,
        env,
        timeout=600,
    )
    assert extras.returncode == 0, extras.stdout[-4000:]
    skips = [line for line in extras.stdout.splitlines() if line.startswith("SKIPPED")]
    for extra in ("gpu", "tensorboard", "mlflow"):
        assert any(f'pip install -e ".[{extra}]"' in line for line in skips), skips
    assert re.search(r"\d+ passed", extras.stdout), extras.stdout[-2000:]
