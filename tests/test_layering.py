"""The package's layers only point down (DESIGN.md section 6), read from the source with ``ast``.

* no import cycle between modules of ``src/sctopic`` at module level, nor one that a
  function-level import only hides (``if TYPE_CHECKING:`` imports never run and do not count);
* ``sctopic.utils`` imports nothing of the package but ``sctopic.errors``;
* the low layers (``data``, ``utils``, ``metrics``, ``genesets``) never import ``nn``,
  ``models`` or ``train``, not even inside a function;
* ``sctopic.metrics`` and ``sctopic.genesets`` load without torch.

An edge of the import graph is an ``import`` or ``from ... import`` of a package module (``from
sctopic.x import y`` counts as importing ``sctopic.x.y`` when that is a module). Python also runs
a package's ``__init__`` before any of its submodules; those implicit edges are left out, as
they close no cycle that can fail (the package is already being initialised).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sctopic"


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    source: str  #: importing module, e.g. ``sctopic.data.loader``
    target: str  #: imported module, e.g. ``sctopic.nn.sparse``
    line: int
    #: ``"module"`` (run when ``source`` is imported), ``"function"`` (inside a function: run on
    #: first call) or ``"typing"`` (under ``if TYPE_CHECKING:``: never run)
    when: str = "module"

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({_path(self.source)}:{self.line}, {self.when} level)"


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(SRC.parent))


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _owning_module(name: str) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the package."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def _when(tree: ast.Module) -> dict[int, str]:
    """``id(node) -> "module" | "function" | "typing"`` for every node of ``tree`` (see Import)."""
    out: dict[int, str] = {}

    def visit(node, when):
        out[id(node)] = when
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and when == "module":
            when = "function"
        for child in ast.iter_child_nodes(node):
            inner = when
            test = node.test if isinstance(node, ast.If) else None
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING" and child in node.body:
                inner = "typing"
            visit(child, inner)

    visit(tree, "module")
    return out


def _imports(module: str) -> list[Import]:
    """The package modules ``module`` imports, at any level of nesting."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    when = _when(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [_owning_module(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if _is_package(module) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from sctopic.x import y``: y may be a submodule (then that is what is imported)
            targets = [
                f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else _owning_module(name)
                for a in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target is not None and target != module:
                found.append(Import(module, target, node.lineno, when[id(node)]))
    return found


IMPORTS = [imp for module in MODULES for imp in _imports(module)]


def _cycles(edges: list[Import]) -> list[list[Import]]:
    """One shortest cycle (as its edges) per group of modules that import each other."""
    graph: dict[str, dict[str, Import]] = {}
    for e in sorted(edges, key=lambda e: (e.source, e.line)):
        graph.setdefault(e.source, {}).setdefault(e.target, e)
        graph.setdefault(e.target, {})

    def reach(start: str) -> dict[str, Import]:
        """Modules reachable from ``start`` -> the edge that first reached them (breadth first)."""
        prev: dict[str, Import] = {}
        frontier = [start]
        while frontier:
            nxt = []
            for m in frontier:
                for t, e in graph[m].items():
                    if t not in prev:
                        prev[t] = e
                        nxt.append(t)
            frontier = nxt
        return prev

    reached = {m: reach(m) for m in graph}
    cycles, done = [], set()
    for m in sorted(graph):
        if m in done or m not in reached[m]:
            continue
        done |= {t for t in reached[m] if m in reached[t]}
        path = [reached[m][m]]
        while path[0].source != m:
            path.insert(0, reached[m][path[0].source])
        cycles.append(path)
    return cycles


def test_graph_is_read():
    assert {"sctopic.data.loader", "sctopic.nn.sparse", "sctopic.utils.sparse"} <= set(MODULES)
    assert any(e.source == "sctopic.nn.sparse" and e.target == "sctopic.utils.sparse" for e in IMPORTS)
    a, b, c = "sctopic.nn.sparse", "sctopic.utils.sparse", "sctopic.errors"  # a cycle is found
    assert _cycles([Import(a, b, 1), Import(b, c, 2, "function"), Import(c, a, 3)]) == [
        [Import(c, a, 3), Import(a, b, 1), Import(b, c, 2, "function")]  # from the first module
    ]


def _describe(cycles: list[list[Import]]) -> str:
    return "\n".join("cycle:\n  " + "\n  ".join(map(str, c)) for c in cycles)


def test_no_import_cycles():
    cycles = _cycles([e for e in IMPORTS if e.when == "module"])
    assert not cycles, "module-level import cycles:\n" + _describe(cycles)


def test_no_cycles_dodged_by_function_level_imports():
    """An import moved into a function to break a cycle still ties the layers together."""
    cycles = _cycles([e for e in IMPORTS if e.when != "typing"])
    assert not cycles, "import cycles through function-level imports:\n" + _describe(cycles)


LOW = tuple(f"{PACKAGE}.{p}" for p in ("data", "utils", "metrics", "genesets"))
HIGH = tuple(f"{PACKAGE}.{p}" for p in ("nn", "models", "train"))


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_low_layers_never_import_high_layers():
    bad = [e for e in IMPORTS if _under(e.source, LOW) and _under(e.target, HIGH)]
    assert not bad, "low layers import nn/models/train:\n  " + "\n  ".join(map(str, bad))


def test_utils_imports_only_errors():
    bad = [e for e in IMPORTS if _under(e.source, (f"{PACKAGE}.utils",))
           and not _under(e.target, (f"{PACKAGE}.utils", f"{PACKAGE}.errors"))]
    assert not bad, "sctopic.utils imports more of the package than sctopic.errors:\n  " + "\n  ".join(
        map(str, bad)
    )


@pytest.mark.parametrize("package", ["sctopic.metrics", "sctopic.genesets"])
def test_no_torch(package):
    code = (
        "import sys, importlib, pkgutil\n"
        f"pkg = importlib.import_module({package!r})\n"
        "if 'torch' in sys.modules:\n"
        "    sys.exit(f'importing {pkg.__name__} imported torch')\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'importing {m.name} imported torch')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"{package}: {r.stderr.strip()}"
