"""The package's face: its version comes from the installed distribution."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import wasm_plugins


class TestVersion:
    def test_version_is_the_distribution_version(self) -> None:
        """``__version__`` is what the installed distribution says, not a copy kept by hand."""
        assert wasm_plugins.__version__ == metadata.version("wasm-plugins")

    def test_version_of_an_uninstalled_checkout(self) -> None:
        """Without installed metadata the package still imports, with a version that says so."""
        script = (
            "from importlib import metadata\n"
            "def missing(name):\n"
            "    raise metadata.PackageNotFoundError(name)\n"
            "metadata.version = missing\n"
            "import wasm_plugins\n"
            "print(wasm_plugins.__version__)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "0+unknown"
