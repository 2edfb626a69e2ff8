"""Tests that a package uses only the public names of the packages beside it.

A name or module whose name starts with an underscore belongs to the package that holds it (and
the packages inside that one); anything else imports it through that package's ``__all__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wasm_plugins

PACKAGE_ROOT = Path(wasm_plugins.__file__).parent
CHECKED = (".",)
"""The parts of the framework held to the rule here: all of it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def private_reach_ins(source: str, importer: str) -> list[str]:
    """Imports in ``source``, a module of package ``importer``, at any level, of a private
    module or name of another package."""

    def owned(owner: str) -> bool:
        return importer == owner or importer.startswith(owner + ".")

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        parts = node.module.split(".")
        if parts[0] != "wasm_plugins":
            continue
        for index, part in enumerate(parts):
            if part.startswith("_") and not owned(".".join(parts[:index])):
                found.append(f"line {node.lineno}: {node.module}")
        for alias in node.names:
            dunder = alias.name.startswith("__") and alias.name.endswith("__")
            if alias.name.startswith("_") and not dunder and not owned(node.module):
                found.append(f"line {node.lineno}: {node.module}.{alias.name}")
    return found


def checked_modules() -> list[Path]:
    paths: list[Path] = []
    for part in CHECKED:
        target = PACKAGE_ROOT / part
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return paths


class TestPrivateImports:
    @pytest.mark.parametrize(
        "path", checked_modules(), ids=lambda path: module_name(path).removeprefix("wasm_plugins.")
    )
    def test_no_private_name_of_another_package(self, path: Path) -> None:
        """The module imports only public names of the packages it does not belong to."""
        assert private_reach_ins(path.read_text(), package_of(path)) == []

    def test_the_check_sees_a_reach_in(self) -> None:
        """A private module or name of a sibling package is found, in a function body too; one
        of the importer's own package or of a package that holds it is not."""
        source = (
            "from wasm_plugins._units import KiB\n"
            "from wasm_plugins.isolation import _protocol\n"
            "def f():\n"
            "    from wasm_plugins.sandbox._binary import PAGE_SIZE\n"
            "    from wasm_plugins.sandbox import _hidden\n"
        )
        assert private_reach_ins(source, "wasm_plugins.isolation") == [
            "line 4: wasm_plugins.sandbox._binary",
            "line 5: wasm_plugins.sandbox._hidden",
        ]
