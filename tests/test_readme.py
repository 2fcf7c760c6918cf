"""The README stays true: its shell examples with pasted output are run and compared.

An example is a line ``$ COMMAND`` in a fenced block, followed by the output it shows (up to the
next ``$`` line or the end of the block). Every example runs in one temp directory, in README
order, with bash, as a user in the project's folder would (``train.py`` and ``conf/`` are linked
in; ``python`` is this interpreter, ``sweeplr`` the CLI module of the tree under test), so a
command may use what an earlier one made (``multirun/seeds``). stdout and stderr are read
together, as on a terminal.

Compared: every line shown. Its text must be identical and its integers equal (epochs,
iterations, rows, jobs: a count that moves is a changed result). A number with a decimal point
or an exponent stands for the values that round to it (`rounding_unit`: its last printed digit,
but no coarser than its third significant one, since a shorter number had zeros dropped); the
README's and this run's agree when those ranges, each widened by ``FLOAT_RTOL`` relative,
overlap. Why: same config and same seed give the same bits on one machine, not across CPUs.
torch's CPU kernels (AVX2, AVX-512, NEON or scalar) and the BLAS (MKL, OpenBLAS) sum in
different orders, so float32 results differ in their last bits, and a value near a rounding
boundary flips its last printed digit. Under ``OTHER_ROUNDING`` (below) the numbers this README
prints moved by 7.6e-8 relative at most (those printed in full: ``[job 0] completed
val_loss=0.02680116705596447`` became ...891860962); with torch's scalar kernels the default
run's val loss moved by 1.4e-7 in its unprinted digits.
``FLOAT_RTOL`` = 1e-5 is 70 times that, and still catches a changed result: solving L-BFGS in
float64 instead of float32 moved the README's numbers by 4.8e-5 (``val_loss=0.2078285574913025``
became 0.20781857669353485) to 4e-4. Counts do not move across CPUs: L-BFGS, whose stopping
tests sit below float32's resolution of the loss, solves in float64
(`sweeplr.fitting.lbfgs_dtype`); in float32 it stopped at 45 iterations or 47 (cv=5, C=10).

Masked on both sides: timestamps, the dated folder names Hydra and the lr finder make, absolute
paths up to ``outputs/``/``multirun/``, durations (``in 0.04 s``), Optuna study hashes and the
``wall_seconds`` column; runs of spaces count as one. A line ``...`` stands for any number of
lines. A dated folder a command names (``sweeplr predict outputs/DATE/TIME``) is the one an
earlier example's output showed under that name.

Another CPU's rounding, here: the examples run a second time with ``OTHER_ROUNDING`` set,
``ATEN_CPU_CAPABILITY=default`` (torch's scalar kernels instead of its AVX2 ones: other
reduction orders and matrix-product paths) and ``MKL_CBWR=COMPATIBLE`` (MKL's matrix products
in its compatible code path's order). Each alone changes the last bits of a float32 matrix
product on this 2-core AMD EPYC; threads do not (``OMP_NUM_THREADS=1`` changed nothing). The
test first checks that they change torch's float32 results on this machine
(``OTHER_ROUNDING_PROBE``); where they change nothing (an ARM CPU has no MKL, and its torch may
have no other kernel level) it skips, and fails in CI.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import ROOT, missing

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

# A number on its own (not inside a word, a version or a path); group 1 is its text.
NUMBER = re.compile(r"(?<![\w.])([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])")
FLOAT_RTOL = Decimal("1e-5")  # see the module docstring

OTHER_ROUNDING = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
# float32 results of torch's CPU kernels as bits: a matrix product and a sum of 60,000 values
OTHER_ROUNDING_PROBE = (
    "import torch\n"
    "g = torch.Generator().manual_seed(0)\n"
    "X, w = torch.randn(500, 30, generator=g), torch.randn(4, 30, generator=g)\n"
    "print(torch.addmm(torch.zeros(4, 1), w, X.t()).numpy().tobytes().hex(), "
    "X.repeat(4, 1).sum().item().hex())\n"
)


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


def rounding_unit(number: Decimal) -> Decimal:
    """The unit a printed number was rounded to: its last digit, but no coarser than its third
    significant one (every format here prints at least three; a shorter number dropped zeros)."""
    last = number.as_tuple().exponent
    assert isinstance(last, int), number  # not inf or nan: NUMBER matches digits only
    return Decimal(1).scaleb(last if number == 0 else min(last, number.adjusted() - 2))


def same_number(shown: str, now: str) -> bool:
    """Integers equal; other numbers could be roundings of values ``FLOAT_RTOL`` apart."""
    if not any(c in text for text in (shown, now) for c in ".eE"):
        return int(shown) == int(now)
    a, b = Decimal(shown), Decimal(now)
    allowed = (rounding_unit(a) + rounding_unit(b)) / 2 + FLOAT_RTOL * max(abs(a), abs(b))
    return abs(a - b) <= allowed


def same_line(shown: str, now: str) -> bool:
    """The same text around the same numbers (`same_number`)."""
    if shown == now:
        return True
    shown_parts, now_parts = NUMBER.split(shown), NUMBER.split(now)
    if len(shown_parts) != len(now_parts):
        return False
    return all(
        (a == b) if i % 2 == 0 else same_number(a, b)  # odd parts are the numbers
        for i, (a, b) in enumerate(zip(shown_parts, now_parts, strict=True))
    )


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
        elif j < len(actual) and same_line(expected[i], actual[j]):
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


def rounding_of_this_machine(env: dict[str, str]) -> str:
    """``OTHER_ROUNDING_PROBE``'s output: torch's float32 rounding under ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", OTHER_ROUNDING_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("rounding", [{}, OTHER_ROUNDING], ids=["this_cpu", "other_rounding"])
def test_the_readme_examples_print_what_they_show(tmp_path, rounding):
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
    if rounding:
        if rounding_of_this_machine(env) == rounding_of_this_machine({**env, **rounding}):
            missing(
                "another float rounding of torch's CPU kernels",
                f"{' '.join(f'{k}={v}' for k, v in rounding.items())} changes nothing here",
            )
        env.update(rounding)
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
    assert (  # one unit in the last digit: another CPU's rounding
        match(normalise(shown), normalise([header, now[1].replace("0.01246", "0.01247")]))
        is not None
    )
    assert (
        match(normalise(shown), normalise([header, now[1].replace("0.01246", "0.01248")])) is None
    )
    assert match(normalise(shown), normalise([header, now[1].replace("  1 ", "  2 ")])) is None
    markdown = ["| job | wall_seconds |", "| ---: | ---: |", "| 1 | {} |"]
    assert match(normalise(markdown), normalise([*markdown[:2], "| 1 | 9.9 |"])) is not None
    assert match(normalise(["a", ELISION, "d"]), normalise(["a", "b", "c", "d"])) is not None
    assert match(normalise(["a", ELISION]), normalise(["b"])) is None
    assert match(normalise(["a"]), normalise(["a", "b"])) is None


def test_numbers_compare_to_the_precision_another_cpu_keeps():
    assert same_line("completed after 25 iterations", "completed after 25 iterations")
    assert not same_line("completed after 25 iterations", "completed after 26 iterations")
    assert not same_line("completed after 25 iterations", "completed after 25 epochs")
    assert same_line("val_loss=0.2078285574913025 (lr=0.1)", "val_loss=0.2078295 (lr=0.1)")
    assert not same_line("val_loss=0.2078285574913025", "val_loss=0.2078385574913025")
    assert same_line("test 0.0997 1.0000", "test 0.0996 1.0000")  # a last digit that flipped
    assert same_line("0.09219 0.08609", "0.09219 0.08608")  # cv=5 C=10's test loss, elsewhere
    # L-BFGS in float32 on another CPU: 26 iterations instead of 25, a changed result
    assert not same_line("val_loss = 0.100469", "val_loss = 0.100475")
    assert not same_line("test 0.0997 1.0000", "test 0.0995 1.0000")
    assert same_line("objective 0.14", "objective 0.1401")  # %g drops trailing zeros
    assert not same_line("objective 0.14", "objective 0.1411")
    assert same_line("lr 1e-05", "lr 1.00001e-05") and not same_line("lr 1e-05", "lr 2e-05")
    assert not same_line("(536 train / 134 val)", "(535 train / 135 val)")
    assert not same_line("sweeplr 0.1.0", "sweeplr 0.1.1")  # a version is text
    assert not same_line("weights: 23 of 30", "weights: 23 of 30 exactly zero")
