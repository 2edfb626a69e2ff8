"""The documentation site as built by MkDocs: the pages are there and the API reference is whole.

``nox -s docs`` builds the site strictly and runs this module against it (``WASM_PLUGINS_SITE``
names the built directory; a missing site fails). Elsewhere the module builds the site itself where
MkDocs is installed, and is skipped where it is not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wasm_plugins
from tests.conftest import ROOT
from wasm_plugins import hookspecs

HOOKS = sorted(name for name in vars(hookspecs) if name.startswith("wasm_plugins_"))
_ANCHOR = re.compile(r'\bid="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site: the one named by WASM_PLUGINS_SITE, or a strict build made here."""
    configured = os.environ.get("WASM_PLUGINS_SITE")
    if configured:
        built = Path(configured)
        if not (built / "index.html").is_file():
            pytest.fail(f"WASM_PLUGINS_SITE={configured} holds no built site")
        return built
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    built = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(built)],
        cwd=ROOT,
        check=True,
    )
    return built


def _anchors(page: Path) -> set[str]:
    return set(_ANCHOR.findall(page.read_text(encoding="utf-8")))


class TestSite:
    def test_the_index_links_every_page_of_the_navigation(self, site: Path) -> None:
        """The home page's navigation reaches the guides, the API reference and the guest ABI."""
        index = (site / "index.html").read_text(encoding="utf-8")
        for page in ("getting-started/", "hooks/", "architecture/", "api/", "hostapi/ABI/"):
            assert f'href="{page}"' in index, page

    @pytest.mark.parametrize("name", wasm_plugins.__all__)
    def test_every_public_name_is_in_the_api_reference(self, site: Path, name: str) -> None:
        """Each name of ``wasm_plugins.__all__`` has its own entry in the API reference."""
        assert f"wasm_plugins.{name}" in _anchors(site / "api" / "index.html")

    @pytest.mark.parametrize("hook", HOOKS)
    def test_every_hook_is_in_the_api_reference(self, site: Path, hook: str) -> None:
        """Each hook has its own entry in the API reference, and the search index finds it."""
        assert f"wasm_plugins.hookspecs.{hook}" in _anchors(site / "api" / "index.html")
        search = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
        assert any(hook in entry["title"] for entry in search["docs"])

    def test_the_guest_abi_is_published_with_the_pages(self, site: Path) -> None:
        """Links from the pages to the guest contract resolve inside the site."""
        assert (site / "hostapi" / "ABI" / "index.html").is_file()
        assert (site / "hostapi" / "wasm_plugins.h").is_file()
        index = (site / "index.html").read_text(encoding="utf-8")
        assert "../hostapi/" not in index
