"""The package's shape: layers that import only downward, no import cycle, tools kept apart.

The graph is read from the source (every `import`, including those under `TYPE_CHECKING` and
inside functions), so a cycle hidden from the interpreter still fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.support.processes import ROOT

PACKAGE = ROOT / "gateway"

#: Each layer and the rank it sits at: a module may import modules of its own rank or below.
LAYERS: dict[str, int] = {
    "gateway.upstream": 1,
    "gateway.resilience": 2,
    "gateway.outbox": 3,
    "gateway.edge": 4,
    "gateway.ops": 5,
    "gateway.app": 6,
    "gateway.tools": 7,
    "gateway.cli": 8,
    "gateway.__main__": 8,
}
#: The shared root modules every layer may use (rank 0).
SHARED = {
    "gateway",
    "gateway.clock",
    "gateway.config",
    "gateway.errors",
    "gateway.headers",
    "gateway.jsonpointer",
    "gateway.keyhash",
    "gateway.operations",
    "gateway.quantities",
    "gateway.sensitive",
}
#: Modules that may import `gateway.tools`: the tools themselves and the command line.
MAY_IMPORT_TOOLS = ("gateway.tools", "gateway.cli", "gateway.__main__")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports, from every import statement in its source."""
    sources = {module_name(path, package.parent): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in sources else node.module)
        graph[name] = {target for target in targets if target in sources and target != name}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def rank(module: str) -> int:
    if module in SHARED:
        return 0
    for layer, layer_rank in LAYERS.items():
        if module == layer or module.startswith(layer + "."):
            return layer_rank
    raise AssertionError(f"{module} is in no layer: add it to a layer or to the shared root")


def test_the_cycle_finder_finds_a_cycle_through_a_type_only_import(tmp_path: Path) -> None:
    """A cycle closed only by a `TYPE_CHECKING` import is still a cycle."""
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from gateway.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway import a\n"
    )
    assert [["gateway.a", "gateway.b"]] == cycles(import_graph(package))


def test_no_import_cycle_in_the_package() -> None:
    """No two modules of `gateway/` import each other, directly or around a loop."""
    assert [] == cycles(import_graph())


def test_every_layer_imports_only_downward() -> None:
    """cli → tools → app → ops → edge → outbox → resilience → upstream → shared root."""
    upward = sorted(
        f"{module} → {target}"
        for module, targets in import_graph().items()
        for target in targets
        if rank(target) > rank(module)
    )
    assert [] == upward


def test_no_runtime_module_imports_the_tools() -> None:
    """The running gateway never loads the simulator, demo, drills, load generator or bench."""
    offenders = sorted(
        f"{module} → {target}"
        for module, targets in import_graph().items()
        if not module.startswith(MAY_IMPORT_TOOLS)
        for target in targets
        if target.startswith("gateway.tools")
    )
    assert [] == offenders


def test_the_root_holds_only_the_layers_and_the_shared_vocabulary() -> None:
    """At most 20 entries directly in `gateway/`, each a layer or a shared module."""
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 20, entries
    names = {f"gateway.{Path(entry).stem}" for entry in entries if entry != "py.typed"}
    assert set() == names - SHARED - set(LAYERS) - {"gateway.__init__"}


@pytest.mark.parametrize(
    "layer", sorted(name for name in LAYERS if (ROOT / name.replace(".", "/")).is_dir())
)
def test_each_layer_says_what_it_owns_and_may_import(layer: str) -> None:
    """Each layer's `__init__.py` opens with a paragraph naming what it may import."""
    init = ROOT / layer.replace(".", "/") / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "import" in docstring, f"{init} has no docstring saying what the layer may import"
