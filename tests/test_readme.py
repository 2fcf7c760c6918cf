"""The README stays true: its shell examples with pasted output are run and compared.

An example is a line ``$ COMMAND`` in a fenced block, followed by the output it shows (up to the
next ``$`` line or the end of the block). Every example runs in one temp directory, in README
order, with bash, as a user in the project's folder would (``train.py`` and ``conf/`` are linked
in; ``python`` is this interpreter, ``sweeplr`` the CLI module of the tree under test), so a
command may use what an earlier one made (``multirun/seeds``). stdout and stderr are read
together, as on a terminal.

Compared: every line shown, number for number. Masked on both sides: timestamps, the dated
folder names Hydra and the lr finder make, absolute paths up to ``outputs/``/``multirun/``,
durations (``in 0.04 s``), Optuna study hashes and the ``wall_seconds`` column; runs of spaces
count as one. A line ``...`` stands for any number of lines. A dated folder a command names
(``sweeplr predict outputs/DATE/TIME``) is the one an earlier example's output showed under that
name.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
ELISION = "..."

DATED = re.compile(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d+")
DATED_DIR = re.compile(r"(?:outputs|multirun|lr_find)/" + DATED.pattern)
MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+"), "<time>"),
    (re.compile(r"(?:/[^\s/:'\"]+)+/(?=(?:outputs|multirun|lr_find)/)"), "<cwd>/"),
    (DATED, "<date>"),
    (re.compile(r"\bin \d+(?:\.\d+)? s\b"), "in <s> s"),
    (re.compile(r"\boptuna-[0-9a-f]{8}\b"), "optuna-<hash>"),
]
UNSTABLE_COLUMNS = ("wall_seconds",)


@dataclass
class Example:
    line: int  # the README line of the command, 1-based
    command: str
    expected: list[str]


def readme_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    in_block = False
    current: Example | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_block = not in_block
            current = None
        elif in_block and line.startswith("$ "):
            current = Example(number, line[2:], [])
            examples.append(current)
        elif current is not None:
            current.expected.append(line)
    return examples


def mask_columns(lines: list[str]) -> list[str]:
    """Mask the values under an unstable column's header (aligned text or markdown tables)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []  # (end of the header word, markdown cell index or -1)
    for line in lines:
        if not line.strip():  # a table ends at a blank line
            spans = []
            out.append(line)
            continue
        header = False
        for name in UNSTABLE_COLUMNS:
            if line.lstrip().startswith("|"):
                cells = [cell.strip() for cell in line.split("|")]
                if name in cells:
                    spans.append((0, cells.index(name)))
                    header = True
            else:
                match = re.search(rf"(?<!\S){name}(?!\S)", line)
                if match:
                    spans.append((match.end(), -1))
                    header = True
        if not header and spans:
            for end, cell in spans:
                if cell >= 0:
                    cells = line.split("|")
                    if cell < len(cells) and not set(cells[cell].strip()) <= {"-", ":"}:
                        cells[cell] = " <s> "
                        line = "|".join(cells)
                else:
                    line = re.sub(r"\S+", lambda m, e=end: "<s>" if m.end() == e else m[0], line)
        out.append(line)
    return out


def normalise(lines: list[str]) -> list[str]:
    out = []
    for line in mask_columns(lines):
        for pattern, replacement in MASKS:
            line = pattern.sub(replacement, line)
        out.append(" ".join(line.split()))
    return out


def match(expected: list[str], actual: list[str]) -> list[tuple[int, int]] | None:
    """Match ``expected`` (with ``...`` lines) to all of ``actual``; the matched line pairs."""
    memo: dict[tuple[int, int], list[tuple[int, int]] | None] = {}

    def go(i: int, j: int) -> list[tuple[int, int]] | None:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(expected):
            result = [] if j == len(actual) else None
        elif expected[i] == ELISION:
            result = None
            for k in range(j, len(actual) + 1):
                result = go(i + 1, k)
                if result is not None:
                    break
        elif j < len(actual) and expected[i] == actual[j]:
            rest = go(i + 1, j + 1)
            result = None if rest is None else [(i, j), *rest]
        else:
            result = None
        memo[i, j] = result
        return result

    return go(0, 0)


def run_example(cwd: Path, command: str, env: dict[str, str], last_rc: int):
    script = (
        'python() { "$SWEEPLR_PYTHON" "$@"; }\n'
        'sweeplr() { "$SWEEPLR_PYTHON" -m sweeplr.cli "$@"; }\n'
        f"(exit {last_rc})\n{command}\n"
    )
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_readme_examples_print_what_they_show(tmp_path):
    examples = readme_examples(README.read_text())
    assert len(examples) >= 10, "the README's examples were not found"
    (tmp_path / "train.py").symlink_to(ROOT / "train.py")
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    env = {
        **os.environ,
        "SWEEPLR_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",  # the interleaving of stdout and stderr a terminal shows
        "HYDRA_FULL_ERROR": "0",
        "COLUMNS": "200",
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    dated: dict[str, str] = {}  # a dated folder the README shows -> the one made here
    last_rc = 0
    failures = []
    for example in examples:
        command = example.command
        unmade = [shown for shown in DATED_DIR.findall(command) if shown not in dated]
        if unmade:
            failures.append(f"README.md:{example.line}: no example above printed {unmade[0]}")
            continue
        for shown in DATED_DIR.findall(command):
            command = command.replace(shown, dated[shown])
        proc = run_example(tmp_path, command, env, last_rc)
        last_rc = proc.returncode
        actual = proc.stdout.splitlines()
        expected, got = normalise(example.expected), normalise(actual)
        pairs = match(expected, got)
        if pairs is None:
            diff = "\n".join(difflib.unified_diff(expected, got, "README", "now", lineterm=""))
            failures.append(f"README.md:{example.line}: $ {example.command}\n{diff}")
            continue
        for i, j in pairs:
            for shown, made in zip(
                DATED_DIR.findall(example.expected[i]), DATED_DIR.findall(actual[j]), strict=True
            ):
                dated.setdefault(shown, made)
    assert not failures, "\n\n".join(failures)


def test_masks_keep_the_numbers():
    header = "job   lr  status     objective  wall_seconds  run_dir"
    row = "  1  0.1  completed    0.01246  {:>12}  multirun/{}/1"
    shown = [header, row.format("0.0334", "2026-11-28/04-27-11-086564")]
    now = [header, row.format("12.5", "2026-11-29/01-02-03-000001")]
    assert match(normalise(shown), normalise(now)) is not None
    assert (
        match(normalise(shown), normalise([header, now[1].replace("0.01246", "0.01247")])) is None
    )
    assert match(normalise(shown), normalise([header, now[1].replace("  1 ", "  2 ")])) is None
    markdown = ["| job | wall_seconds |", "| ---: | ---: |", "| 1 | {} |"]
    assert match(normalise(markdown), normalise([*markdown[:2], "| 1 | 9.9 |"])) is not None
    assert match(normalise(["a", ELISION, "d"]), normalise(["a", "b", "c", "d"])) is not None
    assert match(normalise(["a", ELISION]), normalise(["b"])) is None
    assert match(normalise(["a"]), normalise(["a", "b"])) is None
