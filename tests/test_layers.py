"""The package's imports run one way: the layers of docs/architecture.md, and no cycle.

Imports are read from the source (every ``import`` and ``from … import`` anywhere in a module,
type-checking ones included), so a lazy import inside a function counts like any other.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "syncworker"

# The layers, first to last: a module may import from its own layer and the ones before it.
# A name is a module or a package (then every module in it, unless a longer name claims it).
LAYERS: list[list[str]] = [
    ["syncworker", "syncworker.errors", "syncworker.events", "syncworker.privacy"],
    [
        "syncworker.codec",
        "syncworker.config",
        "syncworker.store.keys",
        "syncworker.store.scripts",
        "syncworker.store.connections",
        "syncworker.store.encoding",
    ],
    [
        "syncworker.intake",
        "syncworker.record",
        "syncworker.destinations",
        "syncworker.store.quarantine",
    ],
    ["syncworker.ledger", "syncworker.queue", "syncworker.delivery"],
    ["syncworker.bootstrap", "syncworker.observability"],
    [
        "syncworker.delivery.loop",
        "syncworker.delivery.schedule",
        "syncworker.delivery.deadletters",
        "syncworker.queue.jobs",
        "syncworker.jobs",
        "syncworker.ops",
        "syncworker.store",
    ],
    ["syncworker.web", "syncworker.intake.routes", "syncworker.cli", "syncworker.__main__"],
]
#: not production: only the entry points above may import it, and only lazily (cli: run, demo)
DEVKIT = "syncworker.devkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(module imported, line, at module level) for each syncworker import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod when that is a module
            names = [node.module] + [
                f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known
            ]
            if len(names) > 1:
                names = names[1:]
        else:
            continue
        for name in names:
            if name == "syncworker" or name.startswith("syncworker."):
                yield name, node.lineno, id(node) in top


def layer_of(name: str) -> int:
    best, found = -1, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {
        name: {imported for imported, _, _ in imports(path, known) if imported != name}
        for name, path in found.items()
    }


def test_every_module_has_a_layer() -> None:
    for name in modules():
        if name == DEVKIT or name.startswith(DEVKIT + "."):
            continue
        assert layer_of(name) >= 0, f"{name} is in no layer of tests/test_layers.py"


def test_no_module_imports_a_later_layer() -> None:
    found = modules()
    known = set(found)
    wrong = []
    for name, path in found.items():
        if name == DEVKIT or name.startswith(DEVKIT + "."):
            continue
        mine = layer_of(name)
        for imported, line, _ in imports(path, known):
            if imported == DEVKIT or imported.startswith(DEVKIT + "."):
                continue
            if layer_of(imported) > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert wrong == []


def test_only_entry_points_import_the_devkit_and_only_when_asked() -> None:
    found = modules()
    known = set(found)
    wrong = []
    for name, path in found.items():
        if name == DEVKIT or name.startswith(DEVKIT + "."):
            continue
        for imported, line, top_level in imports(path, known):
            if imported == DEVKIT or imported.startswith(DEVKIT + "."):
                if name != "syncworker.cli" or top_level:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    # a package's __init__ importing its own modules is not a cycle with them
    for name in list(edges):
        edges[name] = {m for m in edges[name] if not m.startswith(name + ".")}
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_each_layer_names_existing_modules(layer: int) -> None:
    known = set(modules())
    for prefix in LAYERS[layer]:
        assert any(m == prefix or m.startswith(prefix + ".") for m in known), prefix


def test_docs_architecture_lists_the_same_layers() -> None:
    """docs/architecture.md's numbered list names each layer's modules on its own line."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Imports, in layers", 1)[1].split("\n## ", 1)[0]
    lines: dict[int, str] = {}
    current = 0
    for line in section.splitlines():
        match = re.match(r"^(\d+)\. ", line)
        if match:
            current = int(match.group(1))
            lines[current] = line
        elif current and line.startswith("   "):
            lines[current] += line
    assert sorted(lines) == list(range(1, len(LAYERS) + 1))
    for index, layer in enumerate(LAYERS, start=1):
        for name in layer:
            short = name.removeprefix("syncworker.") if name != "syncworker" else name
            assert f"`{short}`" in lines[index], f"{short} is not on line {index}"
