"""The package's import graph: layers import only downwards, and no module circles.

Every ``import`` counts, wherever it stands: module level, inside a function, or under
``TYPE_CHECKING`` (an annotation that names a higher layer is still a dependency on it).
``docs/architecture.md`` explains the layers; this test is what keeps them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "wasm_plugins"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    ("_units", "_version", "_escape", "_correlation", "_suggest", "_log"),
    ("errors",),
    ("services",),
    ("engine",),
    ("sandbox",),
    ("manifest",),
    ("trust",),
    ("isolation",),
    ("provider",),
    ("policy",),
    ("hookspecs",),
    ("builtin", "discovery", "integrations"),
    ("host", "watching", "_async_calls"),
    ("targets", "_tables", "cluster"),
    ("testing", "_demo", "_demo_policy", "guest"),
    ("cli",),
    ("",),
)
"""From the bottom up: a module may import its own layer's modules and those of lower layers.
Each entry names a module or a package below ``wasm_plugins`` (``""`` is the package itself)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    _module_name(path): path
    for path in sorted(ROOT.rglob("*.py"))
    if "__pycache__" not in path.parts
}


def _layer(module: str) -> int:
    relative = module[len(PACKAGE) + 1 :] if module != PACKAGE else ""
    best = -1
    best_length = -1
    for index, names in enumerate(LAYERS):
        for name in names:
            matches = (
                relative == ""
                if name == ""
                else relative == name or relative.startswith(name + ".")
            )
            if matches and len(name) > best_length:
                best, best_length = index, len(name)
    return best


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package_parts = module.split(".")
    if MODULES[module].name != "__init__.py":
        package_parts = package_parts[:-1]
    base = package_parts[: len(package_parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """The package modules ``module`` imports, with the line of each import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield _nearest_module(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield (submodule if submodule in MODULES else _nearest_module(target)), node.lineno


def _nearest_module(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


GRAPH = {
    module: {target for target, _ in _imports(module) if target != module} for module in MODULES
}


class TestLayers:
    def test_every_module_has_a_layer(self) -> None:
        """A new module is placed in a layer on purpose, not by accident."""
        unplaced = [module for module in MODULES if _layer(module) < 0]
        assert unplaced == []

    def test_no_import_climbs_to_a_higher_layer(self) -> None:
        """A layer imports its own layer and those below it, never one above."""
        climbs = [
            f"{module}:{line} imports {target}"
            for module in MODULES
            for target, line in _imports(module)
            if _layer(target) > _layer(module)
        ]
        assert climbs == []


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
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

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


class TestCircles:
    def test_no_modules_import_each_other_in_a_circle(self) -> None:
        """A circle loads only while some of its imports hide in functions: none at all."""
        assert _circles() == []

    @pytest.mark.parametrize(
        ("edges", "expected"),
        [
            ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
            ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ],
    )
    def test_the_circle_finder_finds_circles(
        self, monkeypatch: pytest.MonkeyPatch, edges: dict[str, set[str]], expected: list[list[str]]
    ) -> None:
        """The check itself can fail: a made-up graph with a circle is reported."""
        monkeypatch.setattr(f"{__name__}.GRAPH", edges)
        assert _circles() == expected
