"""Rooms read in one sitting: no module of the package over 600 lines, no function over 80.

Two functions are excepted, each one piece that reads better whole: the strong-Wolfe line
search ported from torch (kept line for line with its original, so it can be compared), and the
Triton kernel's body (one GPU program; helpers inside it are inlined by Triton anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sweeplr"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
EXCEPTED = {"batched/wolfe.py:strong_wolfe", "kernels.py:_binary_step_kernel"}


def sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_is_over_600_lines():
    long = {
        name: n
        for name, text in sources().items()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_80_lines_but_the_excepted():
    long = {}
    for name, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in EXCEPTED:
                    long[f"{name}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_excepted_functions_still_exist():
    # An exception outliving its function would let the next long one in under its name.
    defined = {
        f"{name}:{node.name}"
        for name, text in sources().items()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef)
    }
    assert defined >= EXCEPTED
