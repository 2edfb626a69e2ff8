"""Installing a throw-away distribution for a test: a package and its ``.dist-info`` in a folder put
on ``sys.path``, so that ``importlib.metadata`` finds its entry points exactly as it finds those of
a pip-installed distribution."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest


def install_distribution(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    name: str,
    package: str,
    files: Mapping[str, str],
    entry_points: Mapping[str, str],
    version: str = "1.0.0",
) -> Path:
    """Write ``package`` (``files`` by relative path) and a dist-info declaring ``entry_points``
    (entry point name to object reference) in the ``wasm_plugins`` group, into ``site``, and put
    ``site`` first on ``sys.path`` for the test. Returns the package's folder."""
    folder = site / package
    for relative, text in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = ["[wasm_plugins]", *(f"{key} = {value}" for key, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, module)
    return folder
