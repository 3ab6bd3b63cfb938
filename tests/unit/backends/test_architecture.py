"""The import layering of the package, read from the source (every ``import`` statement,
including those inside functions; imports under ``if TYPE_CHECKING:`` are not executed and count
only for the leaf rule).

* no import cycles among the modules of ``composefs``;
* the bottom modules import nothing of ours: the tree model, the contract, the constants, the
  EROFS format;
* the pure backend never imports the orchestration (repository, OCI, CLI, ...) nor the backend
  selector.

Importing ``a.b.c`` from outside ``a.b`` also runs the ``__init__`` of ``a.b``: that edge counts
(``composefs.layer`` importing ``composefs.oci.media_types`` ran all of ``composefs.oci``, whose
pull imported ``composefs.layer`` back). Within a package the ``__init__`` edge is not counted (a
package's ``__init__`` importing its submodules is not a cycle with them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3] / "python"
PACKAGE = "composefs"

#: Modules that import nothing of ours.
LEAVES = (
    "composefs._contract",
    "composefs._pure.tree",
    "composefs.constants",
    "composefs.erofs_format",
)
#: What the pure backend must not import (prefixes).
ORCHESTRATION = (
    "composefs._backend",
    "composefs.cli",
    "composefs.oci.layer",
    "composefs.mount",
    "composefs.oci",
    "composefs.repository",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


MODULES = _modules()


#: The compiled extension (its submodules are registered by Rust; it imports ``_contract``).
NATIVE = "composefs._native"


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module or ``module.attribute``) refers to."""
    if name == NATIVE or name.startswith(NATIVE + "."):
        return NATIVE
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_only(tree: ast.AST) -> set[ast.AST]:
    """The statements inside ``if TYPE_CHECKING:`` blocks."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for stmt in node.body:
                found.update(ast.walk(stmt))
    return found


def _with_packages(module: str, target: str) -> Iterator[str]:
    """``target`` and the packages whose ``__init__`` importing it runs (those not containing
    ``module``)."""
    yield target
    parts = target.split(".")
    for i in range(2, len(parts)):
        package = ".".join(parts[:i])
        if package in MODULES and not module.startswith(package + "."):
            yield package


def _imports(module: str, *, type_only: bool = True) -> Iterator[tuple[int, str]]:
    """``(line, module of ours)`` for every import statement in ``module`` (with
    ``type_only=False``, not those under ``if TYPE_CHECKING:``)."""
    for line, target in _direct_imports(module, type_only=type_only):
        for found in _with_packages(module, target):
            yield line, found


def _direct_imports(module: str, *, type_only: bool) -> Iterator[tuple[int, str]]:
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                found = _resolve(alias.name)
                if found is not None:
                    yield node.lineno, found
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith(PACKAGE):
                continue
            for alias in node.names:
                # `from pkg import sub` names the submodule when there is one
                found = _resolve(f"{base}.{alias.name}")
                if found is not None:
                    yield node.lineno, found


#: Every import, type-only ones included.
GRAPH: dict[str, dict[str, int]] = {
    m: {target: line for line, target in _imports(m) if target != m} for m in MODULES
}
GRAPH[NATIVE] = {"composefs._contract": 0}
#: The imports executed at run time (the graph that must have no cycle).
RUNTIME: dict[str, dict[str, int]] = {
    m: {target: line for line, target in _imports(m, type_only=False) if target != m}
    for m in MODULES
}
RUNTIME[NATIVE] = GRAPH[NATIVE]


def test_the_package_is_found() -> None:
    assert "composefs._pure.tree" in MODULES
    assert "composefs.repository" in MODULES
    assert GRAPH["composefs._pure.merge"], "imports are not being read"


def _cycles() -> list[list[str]]:
    """The strongly connected components of :data:`RUNTIME` with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in RUNTIME[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(RUNTIME):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles()
    details = [
        ", ".join(
            f"{a} -> {b} (line {RUNTIME[a][b]})"
            for a in component
            for b in component
            if b in RUNTIME[a]
        )
        for component in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(details)


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_modules_import_nothing_of_ours(module: str) -> None:
    assert GRAPH[module] == {}


def test_pure_backend_does_not_import_the_orchestration() -> None:
    bad = [
        f"{module} imports {target} (line {line})"
        for module, targets in GRAPH.items()
        if module.startswith("composefs._pure")
        for target, line in targets.items()
        if target.startswith(ORCHESTRATION)
    ]
    assert not bad, "\n".join(bad)


def test_pure_layering() -> None:
    """The tree model at the bottom; the merge above the writers and the layer reader; the
    directory scanner above the merge. (Lower modules never import higher ones.)"""
    order = [
        "composefs._pure.tree",
        "composefs._pure.dumpfile",
        "composefs._pure.erofs",
        "composefs._pure.tar_split",
        "composefs._pure.merge",
        "composefs._pure.fs",
    ]
    for i, lower in enumerate(order):
        for higher in order[i + 1 :]:
            assert higher not in GRAPH[lower], f"{lower} imports {higher}"
