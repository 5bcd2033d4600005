"""The upper layers use only public names of other modules (DESIGN.md section 6).

No module under ``analysis/``, ``report/``, ``plotting/``, ``commands/`` (in ``src/sctopic``) or
``benchmarks/`` may import a name starting with ``_`` from another module, nor reach a private
attribute of an imported sctopic module (``graphs._knn``). Dunder names (``__future__``,
``__version__``) are public by convention.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / "src" / "sctopic" / d for d in ("analysis", "report", "plotting", "commands")] + \
    [ROOT / "benchmarks"]
#: git-ignored folders under benchmarks/ that hold other packages' code (the reference
#: environments made by setup_reference_envs.sh, whose site-packages are not ours) or scratch files
NOT_OURS = (ROOT / "benchmarks" / "envs", ROOT / "benchmarks" / "work")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(source: str, local: frozenset[str] = frozenset()) -> list[str]:
    """``"line: what"`` for each private name a module's source imports from sctopic or from
    the ``local`` modules (its folder's own files), or reaches as an attribute of an imported
    sctopic module. Third-party packages' private modules are their own business."""
    tree = ast.parse(source)

    def ours(module: str) -> bool:
        top = module.split(".")[0]
        return top == "sctopic" or top in local
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if not ours(node.module or ""):
                continue
            for part in (node.module or "").split("."):
                if _private(part):
                    found.append(f"{node.lineno}: from {node.module} import ...")
                    break
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                elif (node.module or "").startswith("sctopic"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not ours(alias.name):
                    continue
                if any(_private(p) for p in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
                elif alias.name.startswith("sctopic"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and \
                isinstance(node.value, ast.Name) and node.value.id in modules:
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_checker_sees_each_kind_of_private_use():
    src = ("from sctopic.data.graphs import _knn\nfrom sctopic.analysis._inputs import x\n"
           "import _common\nfrom sctopic.nn import sinkhorn\nsinkhorn._TransportCost\n"
           "from __future__ import annotations\nfrom sctopic import __version__\nobj._field\n")
    found = private_imports(src + "from torch.utils._pytree import tree_map\n", frozenset({"_common"}))
    assert [f.split(":")[0] for f in found] == ["1", "2", "3", "5"], found


@pytest.mark.parametrize("folder", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_upper_layers_import_no_private_names(folder):
    offenders = []
    for path in sorted(folder.rglob("*.py")):
        if any(path.is_relative_to(skip) for skip in NOT_OURS):
            continue
        local = frozenset(p.stem for p in path.parent.glob("*.py"))
        for hit in private_imports(path.read_text(), local):
            offenders.append(f"{path.relative_to(ROOT)}:{hit}")
    assert not offenders, "private names used across modules:\n" + "\n".join(offenders)
