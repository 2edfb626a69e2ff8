"""The pytest plugin, in a fresh pytester project with no conftest: it must come from the
``pytest11`` entry point of the installed package.

Where wasm-plugins is installed (``pip install -e .``, as the test sessions do), its own entry
point is used. From a bare checkout (the package importable through ``PYTHONPATH`` only), the
test installs a stand-in distribution whose ``entry_points.txt`` is the
``[project.entry-points.pytest11]`` table of ``pyproject.toml``: the plugin is then still found
through an entry point, the one the package declares, and never through a conftest or ``-p``.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytest_plugins = ["pytester"]

PLUGIN_MODULE = "wasm_plugins.testing.pytest_plugin"

INNER_TESTS = '''
import pytest

from wasm_plugins import ContextualError
from wasm_plugins.testing.clock import FakeClock
from wasm_plugins.testing.faults import FaultInjector

ECHO = """(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))"""


def test_fixtures(plugin_host, fake_clock, fault_injector):
    plugin_host.load({"name": "echo", "module": {"wat": ECHO}})
    assert plugin_host.call("echo", "echo", [1, 2]) == [1, 2]
    assert plugin_host.clock is fake_clock and isinstance(fake_clock, FakeClock)
    assert isinstance(fault_injector, FaultInjector) and not fault_injector.enabled
    assert fault_injector.attempts == 1 and fault_injector.injected == []
    assert plugin_host.plugins.keys() == {"echo"}, "isolated: no installed plugin"


@pytest.mark.wasm_faults(rate=1.0, kinds=["network"], seed=7)
def test_under_faults(plugin_host, fault_injector, fake_clock):
    plugin_host.load({"name": "echo", "module": {"wat": ECHO}})
    with pytest.raises(ContextualError) as caught:
        plugin_host.call("echo", "echo", 1)
    assert caught.value.error.kind == "network"
    assert len(fault_injector.injected) == 3
    assert fake_clock.sleeps == [0.05, 0.1], "the backoff waited on the fake clock"


@pytest.mark.wasm_faults(rate=0.5, kinds=["io"], seed=11)
def test_fails_under_faults(plugin_host):
    plugin_host.load({"name": "echo", "module": {"wat": ECHO}, "policy": {"max_attempts": 1}})
    for n in range(10):
        plugin_host.call("echo", "echo", n)


@pytest.mark.wasm_faults(kinds=["timeout"])
def test_seed_option(fault_injector):
    assert fault_injector.seed == 1234 and fault_injector.enabled


@pytest.mark.wasm_host(discover=True)
def test_discovering_host(plugin_host):
    assert isinstance(plugin_host.plugins, dict)


def test_provenance(request):
    manager = request.config.pluginmanager
    plugin = manager.get_plugin("wasm_plugins")
    assert plugin is not None and plugin.__name__ == "wasm_plugins.testing.pytest_plugin"
    assert any(registered is plugin for registered, _ in manager.list_plugin_distinfo())
    names = [d.metadata["Name"] for p, d in manager.list_plugin_distinfo() if p is plugin]
    print("PLUGIN FROM", *names)
'''


def installed_entry_point() -> bool:
    """Whether an installed distribution declares the plugin under pytest11."""
    return any(entry.value == PLUGIN_MODULE for entry in metadata.entry_points(group="pytest11"))


def declared_entry_points() -> dict[str, str]:
    """The ``[project.entry-points.pytest11]`` table of pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    table: dict[str, str] = data["project"]["entry-points"]["pytest11"]
    return table


def stand_in_distribution(directory: Path) -> Path:
    """A site directory with a distribution that declares pyproject.toml's pytest11 table."""
    info = directory / "wasm_plugins_checkout-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: wasm-plugins-checkout\nVersion: 0.0.0\n", encoding="utf-8"
    )
    lines = [
        "[pytest11]",
        *(f"{name} = {value}" for name, value in declared_entry_points().items()),
    ]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture
def project(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> pytest.Pytester:
    """A fresh project holding only a test module; the plugin comes from an entry point."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)
    paths = [str(ROOT)]
    if not installed_entry_point():
        paths.insert(0, str(stand_in_distribution(tmp_path_factory.mktemp("site"))))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    pytester.makepyfile(test_inner=INNER_TESTS)
    assert not list(pytester.path.glob("conftest.py"))
    return pytester


class TestPytestPlugin:
    def test_pyproject_declares_the_entry_point(self) -> None:
        """pyproject.toml declares the plugin under pytest11, named wasm_plugins."""
        assert declared_entry_points() == {"wasm_plugins": PLUGIN_MODULE}

    def test_fixtures_and_marker_in_a_fresh_project(self, project: pytest.Pytester) -> None:
        """In a fresh project, the fixtures exist, the marker is known (strict markers) and runs
        a test under faults, --wasm-faults-seed seeds it, and a failure under faults reports its
        seed and faults."""
        result = project.runpytest_subprocess(
            "--strict-markers", "--wasm-faults-seed", "1234", "-p", "no:cacheprovider", "-s"
        )
        result.assert_outcomes(passed=5, failed=1)
        result.stdout.fnmatch_lines(
            [
                "*wasm faults (call)*",
                "seed 11 (rerun with @pytest.mark.wasm_faults(seed=11, ...))",
                "*faults injected in * attempts:",
                "  echo.echo attempt 1: Fault.error('io')",
            ]
        )
        result.stdout.fnmatch_lines(["*PLUGIN FROM wasm-plugins*"])

    def test_the_entry_point_is_what_provides_them(self, project: pytest.Pytester) -> None:
        """Blocking the entry point's name removes the fixtures and the marker: nothing else
        (no conftest) provides them."""
        result = project.runpytest_subprocess(
            "-p", "no:wasm_plugins", "-p", "no:cacheprovider", "-k", "test_fixtures"
        )
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*fixture 'plugin_host' not found*"])
