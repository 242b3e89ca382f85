"""The shape of the package: which part may import which, and no import cycles.

Read from the source with ``ast`` (every import, also inside functions), so a forbidden
import fails here before it can grow into a tangle. The table is the README's layout.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tododb"

SHARED = ("tododb.infra",)
"""Plumbing every part but the domain and the contract may use (settings, pools, retries)."""

ALLOWED: dict[str, tuple[str, ...]] = {
    "tododb.domain": ("tododb.domain",),
    "tododb.contract": ("tododb.contract",),
    "tododb.infra": ("tododb.infra",),
    "tododb.application": ("tododb.domain", *SHARED),
    "tododb.eventstore": ("tododb.eventstore", "tododb.domain", *SHARED),
    "tododb.projections": (
        "tododb.projections",
        "tododb.application",
        "tododb.eventstore",
        "tododb.domain",
        *SHARED,
    ),
    "tododb.relay": (
        "tododb.relay",
        "tododb.application",
        "tododb.eventstore",
        "tododb.domain",
        "tododb.contract",
        *SHARED,
    ),
    "tododb.consumers": ("tododb.consumers", "tododb.contract", *SHARED),
    "tododb.api": (
        "tododb.api",
        "tododb.application",
        "tododb.domain",
        "tododb.projections.queries",
        "tododb.projections.admin",
        "tododb.consumers.notifications.store",
        "tododb.consumers.analytics.store",
        *SHARED,
    ),
    "tododb.monitoring": (
        "tododb.monitoring",
        "tododb.projections",
        "tododb.relay",
        "tododb.consumers",
        "tododb.application",
        *SHARED,
    ),
    "tododb.devservers": ("tododb.devservers", *SHARED),
    "tododb.entrypoints": ("tododb",),
}
"""Part → what it may import (prefixes). Entry points alone may import everything."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every tododb import in the file, resolved to a module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tododb"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = absolute(path, node.module, node.level)
            if not base.startswith("tododb"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in MODULES else base


def absolute(path: Path, module: str | None, level: int) -> str:
    """The absolute name of ``from <dots><module> import ...`` in ``path`` (relative
    imports count like any other: they must not slip past the table or the cycle check)."""
    if level == 0:
        return module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def part_of(module: str) -> str:
    matches = [p for p in ALLOWED if module == p or module.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{module} belongs to no part: add it to the table")
    return max(matches, key=len)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_every_module_belongs_to_a_part() -> None:
    for module in MODULES:
        if module != "tododb":
            part_of(module)


def test_no_import_crosses_the_lines() -> None:
    crossings = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
        for module, path in MODULES.items()
        if module != "tododb"
        for line, target in imports_of(path)
        if not within(target, ALLOWED[part_of(module)])
    ]
    assert crossings == []


def test_no_import_cycles() -> None:
    graph = {
        m: {t for _, t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()
    }
    cycles = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("name", ["platform", "types", "logging", "json", "random", "queue"])
def test_no_module_is_named_after_the_standard_library(name: str) -> None:
    assert not [m for m in MODULES if m.rsplit(".", 1)[-1] == name]
