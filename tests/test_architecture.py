"""The architecture's rules, checked on the source (``ast``; nothing of the product is imported).

- No product module imports a private module or name of another package (issue 26 item 2).
- No import cycles among product modules, counting every import statement anywhere in a
  module (top level or inside a function: a lazy import still ties the two modules).
  Imports under ``if TYPE_CHECKING:`` are left out of the cycle check: they never run
  (PEP 563 annotations are strings), so they cannot take part in an import-time cycle,
  and they are the documented way to name a type without a runtime dependency. They do
  count for the layering and the private-import checks.
- No product module over 450 lines.
- The layers: configuration at the bottom, the CLI on top (see ``docs/architecture.md``);
  a module imports only from its own layer or the ones below it.

Product modules are the ``.py`` files of the repository (the package ``mcu_sim``) outside
``tests/``, ``bench/``, ``scripts/`` and dot-folders. ``mcu_sim.a.b`` resolves to ``a/b.py``
or ``a/b/__init__.py``; ``from mcu_sim.a import b`` counts as importing ``a/b.py`` when that
submodule exists, otherwise ``a/__init__.py``. Importing ``mcu_sim.a.b`` is counted as an
edge to ``a/b.py`` only, not to the parent packages' ``__init__.py`` that Python also runs.
"""

from __future__ import annotations

import ast
import fnmatch
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mcu_sim"
NOT_PRODUCT = {"tests", "bench", "scripts", "build", "dist"}
MAX_LINES = 450

# Bottom to top; a module may import from its own layer and the layers listed before it.
# A module belongs to the layer of its most specific (longest) matching pattern. The root
# package (``__version__``, the lazy public API over config and personas) sits right above
# what it exposes; ``graphs/studio.py`` is LangGraph Studio's entry point (langgraph.json),
# on top with the CLI, since it builds what a run needs.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "config",
        ("mcu_sim.config", "mcu_sim.config_*", "mcu_sim.redaction", "mcu_sim.storage_errors"),
    ),
    ("personas", ("mcu_sim.personas", "mcu_sim.personas.*")),
    ("package API", ("mcu_sim",)),
    ("agents.llm", ("mcu_sim.agents.llm", "mcu_sim.agents.llm.*")),
    ("agents", ("mcu_sim.agents", "mcu_sim.agents.*")),
    ("tools", ("mcu_sim.tools", "mcu_sim.tools.*")),
    ("graphs", ("mcu_sim.graphs", "mcu_sim.graphs.*")),
    (
        "runner, dataset, debug, viewer, testing",
        tuple(
            f"mcu_sim.{package}{suffix}"
            for package in ("runner", "dataset", "debug", "viewer", "testing")
            for suffix in ("", ".*")
        ),
    ),
    ("entry points", ("mcu_sim.cli", "mcu_sim.graphs.studio")),
]


@dataclass(frozen=True)
class Import:
    """One imported target as written: ``module`` absolute, ``names`` of a from-import."""

    module: str
    names: tuple[str, ...]
    line: int
    type_checking: bool


# ------------------------------------------------------------------ reading the tree


def product_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every product module under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        folders = rel.parts[:-1]
        if folders and (folders[0] in NOT_PRODUCT or any(p.startswith(".") for p in folders)):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _base_package(module: str, is_package: bool, level: int) -> str:
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import in the file, wherever it is; relative ones made absolute. A call
    ``import_module("x.y")`` with a literal name counts as ``import x.y``."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, (), node.lineno, guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = _base_package(module, is_package, node.level)
                target = f"{base}.{target}" if target else base
            names = tuple(a.name for a in node.names)
            found.append(Import(target, names, node.lineno, guarded))
        elif isinstance(node, ast.Call) and _literal_import_module(node):
            found.append(Import(node.args[0].value, (), node.lineno, guarded))  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return found


def _literal_import_module(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return (
        name == "import_module"
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The product module that ``name`` loads: itself, or its nearest existing parent."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def internal_targets(imp: Import, modules: dict[str, Path]) -> Iterator[str]:
    """The product modules one import loads (a from-import of submodules loads each)."""
    if imp.module != PACKAGE and not imp.module.startswith(PACKAGE + "."):
        return
    if not imp.names:
        target = _resolve(imp.module, modules)
        if target:
            yield target
        return
    for name in imp.names:
        target = _resolve(f"{imp.module}.{name}", modules)
        if target:
            yield target


# ------------------------------------------------------------------ the checks


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports(root: Path) -> list[str]:
    """``file:line imports x`` for each private module or name of another package."""
    found = []
    for module, path in product_modules(root).items():
        for imp in imports_of(path, module):
            top = imp.module.split(".")[0]
            if top == PACKAGE:
                continue
            bad = [p for p in imp.module.split(".") if _private(p)]
            bad += [n for n in imp.names if _private(n)]
            if bad:
                what = imp.module + (f" import {', '.join(imp.names)}" if imp.names else "")
                found.append(f"{path.relative_to(root)}:{imp.line} imports {what}")
    return found


def unresolved_imports(root: Path) -> list[str]:
    """``file:line imports x`` for each import of a ``mcu_sim`` module that does not exist
    (the checks above would otherwise count it as an import of its nearest parent)."""
    modules = product_modules(root)
    found = []
    for module, path in modules.items():
        for imp in imports_of(path, module):
            top = imp.module.split(".")[0]
            if top == PACKAGE and imp.module not in modules:
                found.append(f"{path.relative_to(root)}:{imp.line} imports {imp.module}")
    return found


def import_graph(root: Path, with_type_checking: bool = False) -> dict[str, dict[str, int]]:
    """module -> {imported product module: first line}."""
    modules = product_modules(root)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module, path in modules.items():
        for imp in imports_of(path, module):
            if imp.type_checking and not with_type_checking:
                continue
            for target in internal_targets(imp, modules):
                if target != module:
                    graph[module].setdefault(target, imp.line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                components.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _shortest_cycle(graph: dict[str, dict[str, int]], start: str, inside: set[str]) -> list[str]:
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt in inside and nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return []


def import_cycles(root: Path) -> list[str]:
    """One line per distinct shortest cycle through each module of each cycle component:
    ``a (a.py:12) -> b (b.py:3) -> a``, with the line of each import."""
    graph = import_graph(root)
    modules = product_modules(root)
    lines: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        for start in component:
            cycle = _shortest_cycle(graph, start, set(component))
            pivot = cycle.index(min(cycle[:-1]))
            key = tuple(cycle[pivot:-1] + cycle[:pivot])
            if key in seen:
                continue
            seen.add(key)
            steps = [
                f"{a} ({modules[a].relative_to(root)}:{graph[a][b]})"
                for a, b in itertools.pairwise(cycle)
            ]
            lines.append(" -> ".join([*steps, cycle[-1]]))
    return lines


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    found = []
    for path in product_modules(root).values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            found.append(f"{path.relative_to(root)}: {count} lines")
    return found


def layer_of(module: str) -> int:
    matches = [
        (len(pattern), rank)
        for rank, (_, patterns) in enumerate(LAYERS)
        for pattern in patterns
        if fnmatch.fnmatchcase(module, pattern)
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return max(matches)[1]


def layering_violations(root: Path) -> list[str]:
    """``a imports b`` where b's layer is above a's (TYPE_CHECKING imports included)."""
    graph = import_graph(root, with_type_checking=True)
    modules = product_modules(root)
    found = []
    for module, targets in graph.items():
        for target, line in targets.items():
            if layer_of(target) > layer_of(module):
                found.append(
                    f"{modules[module].relative_to(root)}:{line}: {module} "
                    f"({LAYERS[layer_of(module)][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    return found


# ------------------------------------------------------------------ on this repository


def _listing(found: list[str]) -> str:
    return "\n  " + "\n  ".join(found)


def test_no_product_module_imports_a_private_module_of_another_package() -> None:
    found = private_imports(REPO)
    assert not found, "private imports of other packages:" + _listing(found)


def test_every_import_of_the_package_names_a_module_that_exists() -> None:
    found = unresolved_imports(REPO)
    assert not found, "imports of modules that do not exist:" + _listing(found)


def test_no_import_cycles() -> None:
    found = import_cycles(REPO)
    assert not found, "import cycles (break them; a lazy import counts):" + _listing(found)


def test_no_product_module_over_the_line_limit() -> None:
    found = long_modules(REPO)
    assert not found, f"modules over {MAX_LINES} lines (split them):" + _listing(found)


def test_each_module_imports_only_its_layer_and_below() -> None:
    found = layering_violations(REPO)
    assert not found, "imports upward across the layers:" + _listing(found)


def test_configuration_imports_nothing_above_it() -> None:
    """The configuration (and redaction) import only each other: a config can be loaded
    and checked without importing agents, tools or graphs."""
    graph = import_graph(REPO, with_type_checking=True)
    bottom = [m for m in graph if layer_of(m) == 0]
    assert {"mcu_sim.config", "mcu_sim.config_schema", "mcu_sim.redaction"} <= set(bottom)
    upward = {m: sorted(t for t in graph[m] if layer_of(t) != 0) for m in bottom}
    assert not any(upward.values()), upward


# ------------------------------------------------------------------ the checks catch plants


def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / PACKAGE
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


CYCLE_PLANTS = {
    "lazy import in a function": (
        {
            "tools/__init__.py": "",
            "tools/a.py": "from mcu_sim.tools.b import B\n",
            "tools/b.py": "B = 1\ndef f():\n    from mcu_sim.tools import a\n    return a\n",
        },
        ["mcu_sim.tools.a (tools/a.py:1) -> mcu_sim.tools.b (tools/b.py:3) -> mcu_sim.tools.a"],
    ),
    "relative imports through a package": (
        {
            "graphs/__init__.py": "from .x import X\n",
            "graphs/x.py": "import mcu_sim.graphs.y\nX = 1\n",
            "graphs/y.py": "from .. import graphs\n",
        },
        [
            "mcu_sim.graphs (graphs/__init__.py:1) -> mcu_sim.graphs.x (graphs/x.py:1) -> "
            "mcu_sim.graphs.y (graphs/y.py:1) -> mcu_sim.graphs"
        ],
    ),
    "a literal import_module": (
        {
            "a.py": "import importlib\nM = importlib.import_module('mcu_sim.b')\n",
            "b.py": "import mcu_sim.a\n",
        },
        ["mcu_sim.a (a.py:2) -> mcu_sim.b (b.py:1) -> mcu_sim.a"],
    ),
    "TYPE_CHECKING only: not a cycle": (
        {
            "a.py": "from mcu_sim.b import B\nA = 1\n",
            "b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from mcu_sim.a import A\nB = 1\n"
            ),
        },
        [],
    ),
    "tests and bench are not product": (
        {
            "a.py": "B = 1\n",
            "tests/test_a.py": "import mcu_sim.bench.b\n",
            "bench/b.py": "import mcu_sim.tests.test_a\n",
        },
        [],
    ),
}


@pytest.mark.parametrize("case", sorted(CYCLE_PLANTS))
def test_the_cycle_check_reports_a_planted_cycle(tmp_path: Path, case: str) -> None:
    files, expected = CYCLE_PLANTS[case]
    assert import_cycles(_plant(tmp_path, files)) == expected


def test_the_private_import_check_reports_each_form(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "a.py": (
                "from __future__ import annotations\n"
                "import langgraph._internal._runnable\n"
                "from langgraph.pregel._algo import x\n"
                "from aiosqlite import _thread, connect\n"
                "import langgraph.graph\n"
                "from mcu_sim._own import y\n"
                "from . import _sibling\n"
                "def f():\n    from pkg._lazy import z\n"
            ),
        },
    )
    assert private_imports(root) == [
        "a.py:2 imports langgraph._internal._runnable",
        "a.py:3 imports langgraph.pregel._algo import x",
        "a.py:4 imports aiosqlite import _thread, connect",
        "a.py:9 imports pkg._lazy import z",
    ]


def test_the_resolution_check_reports_a_missing_module(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "llm/__init__.py": "",
            "llm/client.py": "from mcu_sim.llm.client.cache import x\nfrom mcu_sim.llm import y\n",
            "llm/cache.py": "import mcu_sim.llm.cache\nfrom mcu_sim.llm.cache import z\n",
        },
    )
    assert unresolved_imports(root) == ["llm/client.py:1 imports mcu_sim.llm.client.cache"]


def test_the_line_limit_check_reports_a_long_module(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "long.py": "x = 1\n" * (MAX_LINES + 1),
            "fits.py": "x = 1\n" * MAX_LINES,
            "tests/test_long.py": "x = 1\n" * (MAX_LINES + 1),
        },
    )
    assert long_modules(root) == [f"long.py: {MAX_LINES + 1} lines"]


def test_the_layering_check_reports_an_upward_import(tmp_path: Path) -> None:
    root = _plant(
        tmp_path,
        {
            "config.py": "def f():\n    from mcu_sim.graphs.filters import F\n",
            "redaction.py": "from mcu_sim.config import f\n",
            "graphs/__init__.py": "",
            "graphs/filters.py": "from mcu_sim.config import f\nF = 1\n",
        },
    )
    assert layering_violations(root) == [
        "config.py:2: mcu_sim.config (config) imports mcu_sim.graphs.filters (graphs)"
    ]
