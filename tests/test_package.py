"""The package's face: its version comes from the installed distribution."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

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


def _run(script: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout


class TestStartUp:
    def test_importing_the_package_loads_nothing_heavy(self) -> None:
        """``import wasm_plugins`` loads neither an engine, the policy, loguru nor asyncio: each
        public name is imported when first used."""
        loaded = _run(
            "import sys\n"
            "import wasm_plugins\n"
            "heavy = ('loguru', 'asyncio', 'wasmtime', 'wasmer', 'cattrs', 'pluggy',\n"
            "         'wasm_plugins.host', 'importlib.metadata')\n"
            "print(sorted(name for name in heavy if name in sys.modules))\n"
        )
        assert loaded.strip() == "[]"

    def test_importing_the_plugin_host_loads_nothing_it_may_not_use(self) -> None:
        """``from wasm_plugins import PluginHost`` loads no engine, nor what only some hosts
        use: asyncio (with ssl) comes with the first awaited call, loguru with the first
        record, urllib's HTTP client with an Extism plugin's first request."""
        loaded = _run(
            "import sys\n"
            "from wasm_plugins import PluginHost\n"
            "heavy = ('asyncio', 'ssl', 'loguru', 'wasmtime', 'wasmer', 'wasmer_sdk',\n"
            "         'wasm_plugins._async_calls', 'http.client', 'urllib.request')\n"
            "print(sorted(name for name in heavy if name in sys.modules))\n"
        )
        assert loaded.strip() == "[]"

    def test_a_host_imports_asyncio_for_its_first_awaited_call(self) -> None:
        """A host made, loaded and called imports neither asyncio nor loguru, nor an engine
        it does not use; its first awaited call that runs off the loop imports its threads.
        (ssl may come with prometheus_client, whose collector a host registers.)"""
        echo = Path(__file__).resolve().parent.parent / "hostapi" / "examples" / "echo.wat"
        manifest = {
            "name": "echo",
            "engine": "wasmtime",
            "isolation": "in-process",
            "module": {"path": str(echo)},
        }
        loaded = _run(
            "import sys\n"
            "watched = ('asyncio', 'wasm_plugins._async_calls', 'loguru', 'wasmer')\n"
            "from wasm_plugins import PluginHost\n"
            "host = PluginHost(module_cache=False, blocked=(), inline_async_calls=0)\n"
            f"host.load({manifest!r})\n"
            "assert host.call('echo', 'echo', {'n': 1}) == {'n': 1}\n"
            "print(sorted(n for n in watched if n in sys.modules))\n"
            "import asyncio\n"
            "assert asyncio.run(host.acall('echo', 'echo', {'n': 2})) == {'n': 2}\n"
            "print('wasm_plugins._async_calls' in sys.modules)\n"
            "host.close()\n"
        )
        assert loaded.splitlines() == ["[]", "True"]

    def test_names_the_host_module_passes_on_resolve(self) -> None:
        """``wasm_plugins.host`` still offers the names it passes on (``Outcome``, ``Attempt``,
        ``PluginSource``) before any host is made."""
        loaded = _run(
            "from wasm_plugins.host import Attempt, Outcome, PluginSource\n"
            "from wasm_plugins.policy import Outcome as PolicyOutcome\n"
            "print(Outcome is PolicyOutcome, Attempt.__name__, PluginSource is not None)\n"
        )
        assert loaded.split() == ["True", "Attempt", "True"]

    def test_command_line_help_loads_nothing_heavy(self) -> None:
        """``wasm-plugins --help`` and a command's ``--help`` load no engine, host or loguru:
        each command's module is imported when it runs or its options are parsed."""
        loaded = _run(
            "import contextlib, io, sys\n"
            "from wasm_plugins.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--help']) == 0\n"
            "    assert main(['new', '--help']) == 0\n"
            "heavy = ('loguru', 'asyncio', 'wasmtime', 'wasmer',\n"
            "         'wasm_plugins.host', 'wasm_plugins.trust')\n"
            "print(sorted(name for name in heavy if name in sys.modules))\n"
        )
        assert loaded.strip() == "[]"

    def test_public_names_resolve(self) -> None:
        """Every name in ``__all__`` is there when asked for, and unknown names are not."""
        for name in wasm_plugins.__all__:
            assert getattr(wasm_plugins, name) is not None
        assert "PluginHost" in dir(wasm_plugins)
        try:
            wasm_plugins.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError("an unknown name was found")


class TestLogsOffByDefault:
    SCRIPT = (
        "import sys\n"
        "import wasm_plugins\n"
        "from loguru import logger\n"
        "logger.remove()\n"
        "logger.add(sys.stdout.write, format='{message}')\n"
        "{decision}\n"
        "import os\n"
        "os.environ['WASM_PLUGINS_CACHE_MAX_SIZE'] = 'lots'\n"
        "wasm_plugins.ModuleCache.from_environment()  # warns: the size is ignored\n"
    )

    def test_off_unless_enabled(self) -> None:
        """The library's logs are off when loguru is first used, as they always were."""
        assert _run(self.SCRIPT.replace("{decision}", "")) == ""

    def test_an_application_that_enabled_them_first_keeps_them(self) -> None:
        """``logger.enable("wasm_plugins")`` before the library first logs is not undone."""
        script = self.SCRIPT.replace("{decision}", "logger.enable('wasm_plugins')")
        assert "ignored (using" in _run(script)
