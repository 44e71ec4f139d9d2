"""The layout rules of docs/architecture.md, computed from the source's own imports.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a rule
that could be dodged by moving an import into a function would not hold anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import modelmint

SOURCE = Path(modelmint.__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
# Each top-level package's layer: a package imports only packages of its own layer or
# below (and, by the cycle test, never one that imports it back). docs/architecture.md
# has the same table with what each layer is for.
LAYERS = {
    # 0 foundations: no modelmint imports but each other
    "errors": 0, "clock": 0, "ids": 0, "config": 0, "caching": 0, "observability": 0,
    # 1 storage: engine, sessions, tables, migrations
    "storage": 1,
    # 2 domains: each one concept, plain Python over storage
    "accounts": 2, "registry": 2, "billing": 2, "metering": 2, "limits": 2, "serving": 2,
    "training": 2,
    # 3 services: request-time spend, admin operations, read models, collection, inference
    "charging": 3, "billing_admin": 3, "analytics": 3, "feedback": 3, "payments": 3,
    "customer": 3, "erasure": 3, "inference": 3,
    # 4 composition: the platform that wires the services, shared HTTP pieces, the demo
    "web": 4, "platform": 4, "demo": 4,
    # 5 edges: HTTP apps and the command line
    "gateway": 5, "dashboard": 5, "portal": 5, "app": 5, "server": 5, "cli": 5, "__main__": 5,
}  # fmt: skip
# The only code that may name the Billing* tables: their definition and the billing store.
BILLING_TABLES_HOMES = ("modelmint.storage.tables", "modelmint.billing.store")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported modelmint module
    names: tuple[str, ...]  # names taken from it (``from target import names``)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SOURCE / "modelmint").rglob("*.py"))}


def _is_migration(module: str) -> bool:
    return module.startswith("modelmint.storage.migrations.")


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@cache
def _imports() -> tuple[Import, ...]:
    modules = _modules()
    found: list[Import] = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(module, a.name, ()) for a in node.names if a.name in modules]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, path, node)
                names = tuple(a.name for a in node.names)
                # ``from package import submodule`` imports the submodule.
                found += [
                    Import(module, f"{target}.{n}", ()) for n in names if f"{target}.{n}" in modules
                ]
                if target in modules:
                    found.append(Import(module, target, names))
    return tuple(found)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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


def _package(module: str) -> str:
    """The top-level package a module belongs to: ``modelmint.gateway.routes.x`` -> ``gateway``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges(inner: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in _imports():
        if inner:
            if imp.module != imp.target and not imp.module.startswith(imp.target + "."):
                # a package's __init__ is not "imported" by its own submodules' imports
                graph.setdefault(imp.module, set()).add(imp.target)
        else:
            a, b = _package(imp.module), _package(imp.target)
            if a and b and a != b:
                graph.setdefault(a, set()).add(b)
    return graph


def test_no_module_import_cycle() -> None:
    assert _cycles(_edges(inner=True)) == []


def test_no_import_cycle_between_top_level_packages() -> None:
    # gateway and dashboard, say, both build on the composition root; neither imports the other.
    assert _cycles(_edges(inner=False)) == []


def test_every_package_imports_only_its_own_layer_or_below() -> None:
    packages = {_package(m) for m in _modules()} - {""}
    assert sorted(packages - LAYERS.keys()) == [], "place each new package in LAYERS"
    upward = sorted(
        f"{a} ({LAYERS[a]}) imports {b} ({LAYERS[b]})"
        for a, targets in _edges(inner=False).items()
        for b in targets
        if LAYERS[b] > LAYERS[a]
    )
    assert upward == []


def test_no_module_over_the_size_cap() -> None:
    too_long = {
        module: lines
        for module, path in _modules().items()
        if not _is_migration(module)
        and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}


def _billing_table_uses() -> Iterator[str]:
    for imp in _imports():
        if imp.module.startswith(BILLING_TABLES_HOMES) or _is_migration(imp.module):
            continue
        if not imp.target.startswith("modelmint.storage.tables"):
            continue
        billing = [n for n in imp.names if n.startswith("Billing")]
        if billing:
            yield f"{imp.module}: {', '.join(billing)}"
        elif imp.target != "modelmint.storage.tables" or not imp.names:
            # ``import modelmint.storage.tables`` or a billing submodule: check attribute use
            path = _modules()[imp.module]
            if "tables.Billing" in path.read_text():
                yield f"{imp.module}: tables.Billing*"


def test_only_the_billing_store_names_the_billing_tables() -> None:
    assert sorted(set(_billing_table_uses())) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycles_are_found(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected
