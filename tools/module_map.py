"""The README's module map, read from the imports of ``sweeplr/`` and ``train.py`` with ``ast``.

    python -m tools.module_map           # print the map
    python -m tools.module_map --write   # rewrite the README's block between the markers

An import is *at the top* when it runs as the module is imported (module level, a class body,
a ``try`` at module level) and *lazy* when it sits inside a function, so it runs only when that
function does. Imports under ``if TYPE_CHECKING:`` never run and are left out. The package
``sweeplr`` itself (``__version__``, ``SweeplrError``, the lazy ``sweeplr.load_sweep``) is left
out of the arrows: Python imports it before any of its modules anyway.

tests/test_module_map.py checks that the README's block is this output, and the rules the map
states: no import cycle, the core never imports Hydra, the plugins import nothing heavy at
the top.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sweeplr"
README = ROOT / "README.md"
COMMAND = "python -m tools.module_map --write"
BEGIN = f"<!-- module map: begin. Generated from the imports by `{COMMAND}` -->"
END = "<!-- module map: end -->"

# Third-party packages that are Hydra.
HYDRA = frozenset({"hydra", "hydra_plugins"})
# The Hydra edge: the modules that may import Hydra. Every other module is core and never does.
HYDRA_EDGE = frozenset(
    {
        "train.py",
        "experiment",
        "pruning",
        "callbacks",
        "cli",
        "overrides",
        "config",  # register_configs, inside the function: the ConfigStore
        "provenance",  # the sweep's command and search space, rebuilt as Hydra builds them
    }
)
# Hydra imports every installed plugin when any Hydra app starts: a plugin's imports at the
# top (and theirs, down the chain) must not reach these.
HEAVY = frozenset(
    {
        "torch",
        "numpy",
        "pandas",
        "matplotlib",
        "sklearn",
        "scipy",
        "optuna",
        "sqlalchemy",
        "triton",
        "mlflow",
        "tensorboard",
    }
)


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from the module that holds it."""

    target: str  # a sweeplr module ("runner", "plugins.job_runner") or a package ("torch")
    internal: bool  # target is a module of sweeplr
    lazy: bool  # inside a function: runs only when the function does
    line: int


@dataclass(frozen=True)
class Module:
    name: str  # "experiment", "plugins.batch_launcher", "trackers" (its __init__), "train.py"
    path: Path
    summary: str  # the docstring's first line
    imports: tuple[Import, ...]

    def targets(self, *, internal: bool, lazy: bool | None = None) -> list[str]:
        """The sorted distinct targets, lazy or at the top (a target both ways counts at the top)."""
        top = {i.target for i in self.imports if i.internal == internal and not i.lazy}
        found = {i.target for i in self.imports if i.internal == internal}
        if lazy is None:
            return sorted(found)
        return sorted(found - top) if lazy else sorted(top)


def module_name(path: Path) -> str:
    """``sweeplr/plugins/batch_launcher.py`` -> ``plugins.batch_launcher``; train.py as is."""
    if path.parent == ROOT:
        return path.name
    parts = list(path.relative_to(ROOT / PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or PACKAGE


@cache
def _is_module(dotted: str) -> bool:
    """Whether ``sweeplr.<dotted>`` is a module or a package on disk."""
    base = ROOT / PACKAGE / Path(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _internal(name: str, names: Iterable[str]) -> list[str]:
    """The sweeplr modules that ``from <name> import <names>`` (or ``import <name>``) loads."""
    if name == PACKAGE:
        inner = ""
    elif name.startswith(PACKAGE + "."):
        inner = name[len(PACKAGE) + 1 :]
    else:
        return []
    found = []
    for attr in names:
        sub = f"{inner}.{attr}" if inner else attr
        if _is_module(sub):
            found.append(sub)
        else:
            found.append(inner or PACKAGE)
    return found or [inner or PACKAGE]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.depth = 0  # functions we are inside
        self.found: list[Import] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs: the names are for the type checker
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def _add(self, name: str, names: Iterable[str], line: int) -> None:
        lazy = self.depth > 0
        internal = _internal(name, names)
        if internal:
            for target in internal:
                if target != PACKAGE:
                    self.found.append(Import(target, True, lazy, line))
        elif name != "__future__" and name.split(".")[0] not in sys.stdlib_module_names:
            self.found.append(Import(name.split(".")[0], False, lazy, line))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, [], node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        name = node.module or ""
        if node.level:  # relative: from the importing module's package
            package = self.module.split(".")
            if not (ROOT / PACKAGE / Path(*package) / "__init__.py").is_file():
                package = package[:-1]
            base = [PACKAGE, *package][: len(package) + 2 - node.level]
            name = ".".join([*base, *([name] if name else [])])
        self._add(name, [alias.name for alias in node.names], node.lineno)


def read_module(path: Path, name: str | None = None) -> Module:
    """``path``'s imports; ``name`` is the module's (by default, read from ``path``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = name or module_name(path)
    visitor = _Imports(name)
    visitor.visit(tree)
    summary = (ast.get_docstring(tree) or "").strip().split("\n")[0]
    return Module(name, path, summary, tuple(visitor.found))


def read_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module of sweeplr and train.py, by name."""
    paths = [root / "train.py", *sorted((root / PACKAGE).rglob("*.py"))]
    modules = [read_module(p) for p in paths]
    return {m.name: m for m in modules if m.name != PACKAGE}


def graph(modules: Mapping[str, Module]) -> dict[str, set[str]]:
    """module -> the sweeplr modules it imports, at the top or lazily."""
    return {name: set(m.targets(internal=True)) for name, m in modules.items()}


def cycle(edges: Mapping[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]`` (each imports the next), or ``[]`` when none."""
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError as error:
        return list(reversed(error.args[1]))
    return []


def layers(edges: Mapping[str, set[str]]) -> dict[str, int]:
    """module -> its height: 0 for a module importing none of sweeplr's, else 1 + the highest
    of those it imports (a cycle's back edge counts 0, so a broken map still prints)."""
    height: dict[str, int] = {}
    visiting: set[str] = set()

    def visit(node: str) -> int:
        if node in height:
            return height[node]
        if node in visiting:
            return 0
        visiting.add(node)
        height[node] = 1 + max((visit(n) for n in edges.get(node, ())), default=-1)
        visiting.discard(node)
        return height[node]

    for node in edges:
        visit(node)
    return height


def top_down(modules: Mapping[str, Module]) -> list[str]:
    """The modules from the top down: each above every module it imports."""
    height = layers(graph(modules))
    return sorted(modules, key=lambda name: (-height[name], name))


def hydra_imports(module: Module) -> list[Import]:
    return [i for i in module.imports if not i.internal and i.target in HYDRA]


def heavy_at_import(name: str, modules: Mapping[str, Module]) -> dict[str, list[str]]:
    """The heavy packages that importing ``name`` loads, each with the chain of modules that
    imports it at the top (following sweeplr's imports at the top)."""
    found: dict[str, list[str]] = {}
    seen = {name}
    queue = [[name]]
    while queue:
        chain = queue.pop(0)
        module = modules[chain[-1]]
        for package in module.targets(internal=False, lazy=False):
            if package in HEAVY and package not in found:
                found[package] = chain
        for inner in module.targets(internal=True, lazy=False):
            if inner in modules and inner not in seen:
                seen.add(inner)
                queue.append([*chain, inner])
    return found


def _names(names: Iterable[str], lazy: Iterable[str]) -> str:
    shown = [f"`{n}`" for n in names] + [f"*{n}*" for n in lazy]
    return ", ".join(shown)


def _listing(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "none"


def render(modules: Mapping[str, Module]) -> str:
    """The README's block, markers included."""
    rows = [
        "| module | imports of sweeplr's | other packages | what it is |",
        "|---|---|---|---|",
    ]
    for name in top_down(modules):
        m = modules[name]
        inner = _names(m.targets(internal=True, lazy=False), m.targets(internal=True, lazy=True))
        outer = _names(m.targets(internal=False, lazy=False), m.targets(internal=False, lazy=True))
        summary = m.summary.replace("|", "\\|")
        rows.append(f"| `{name}` | {inner} | {outer} | {summary} |")
    at_top = sorted(n for n, m in modules.items() if any(not i.lazy for i in hydra_imports(m)))
    lazily = sorted(n for n, m in modules.items() if hydra_imports(m) and n not in at_top)
    plugins = sorted(n for n in modules if n.startswith("plugins."))
    heavy = sorted({p for n in plugins for p in heavy_at_import(n, modules)})
    heavy_text = f"none of {_listing(sorted(HEAVY))}" if not heavy else _listing(heavy)
    lines = [
        BEGIN,
        "From the top down: a module imports only modules below it, so no two modules import",
        "each other. `code`: imported at the top, as the module is imported; *italics*: only",
        "inside functions, when they run. Imports under `if TYPE_CHECKING:` are left out, and so",
        "is the package `sweeplr` itself (`__version__`, `SweeplrError`, `sweeplr.load_sweep`).",
        "",
        *rows,
        "",
        *textwrap.wrap(
            f"- Hydra is imported at the top by {_listing(at_top)}; only inside functions by "
            f"{_listing(lazily)}; by no other module: the core never imports Hydra.",
            width=100,
            subsequent_indent="  ",
        ),
        *textwrap.wrap(
            f"- The plugins ({_listing(plugins)}) import at the top, down the chain, {heavy_text}: "
            "Hydra imports every installed plugin when any Hydra app starts.",
            width=100,
            subsequent_indent="  ",
        ),
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with its block between the markers (included) replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{README.name} has no module map between {BEGIN!r} and {END!r}")
    return text[:start] + block + text[end + len(END) :]


def readme_block(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{README.name} has no module map between {BEGIN!r} and {END!r}")
    return text[start : end + len(END)]


def main(argv: list[str]) -> int:
    block = render(read_modules())
    if argv == ["--write"]:
        text = README.read_text(encoding="utf-8")
        new = replace_block(text, block)
        if new != text:
            README.write_text(new, encoding="utf-8")
        print(
            f"{README.relative_to(ROOT)}: module map {'rewritten' if new != text else 'unchanged'}"
        )
        return 0
    if argv:
        print(f"usage: {COMMAND.replace(' --write', '')} [--write]", file=sys.stderr)
        return 2
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
