"""The pytest plugin of wasm-plugins, loaded through the ``pytest11`` entry point ``wasm_plugins``
wherever the package is installed (``-p no:wasm_plugins`` turns it off).

Fixtures:

- ``fake_clock``: a :class:`~wasm_plugins.testing.clock.FakeClock` (time moves only when told);
- ``fault_injector``: a :class:`~wasm_plugins.testing.faults.FaultInjector`, off unless the test
  is marked ``wasm_faults``;
- ``plugin_host``: an isolated :class:`~wasm_plugins.PluginHost`: no installed plugin, no
  ``WASM_PLUGINS_DISABLE``, the fake clock, a jitter that always draws its longest wait, the fault
  injector registered; closed after the test. ``@pytest.mark.wasm_host(discover=True, ...)``
  discovers the installed plugins instead, and passes other keywords to the host.

Marker: ``@pytest.mark.wasm_faults(rate=1.0, kinds=["network"], seed=None, plugins=None,
functions=None, latency=1.0, value=None, faults=None)`` runs the test under faults: the
``fault_injector`` is on with these settings. The seed defaults to ``--wasm-faults-seed`` or,
without it, to a number derived from the test's id, so a run is repeatable; a failing test's
report shows the seed and every fault injected.

This module imports neither Hypothesis nor an engine when pytest loads it; the fixtures import what
they need when a test asks for them.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from wasm_plugins.host import PluginHost
    from wasm_plugins.testing import FakeClock
    from wasm_plugins.testing.faults import FaultInjector

__all__ = ["fake_clock", "fault_injector", "plugin_host"]

_INJECTOR = pytest.StashKey["FaultInjector"]()
_SEED = pytest.StashKey[int]()

FAULTS_MARKER = (
    "wasm_faults(rate=1.0, kinds=None, seed=None, plugins=None, functions=None, latency=1.0, "
    "value=None, faults=None): run the test with the fault_injector on (wasm-plugins)"
)
HOST_MARKER = (
    "wasm_host(discover=False, **options): how the plugin_host fixture makes its host "
    "(wasm-plugins)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--wasm-faults-seed``."""
    group = parser.getgroup("wasm-plugins")
    group.addoption(
        "--wasm-faults-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the fault injector of tests marked wasm_faults without a seed "
        "(default: derived from each test's id)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (so that ``--strict-markers`` knows them)."""
    config.addinivalue_line("markers", FAULTS_MARKER)
    config.addinivalue_line("markers", HOST_MARKER)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fake monotonic clock: ``sleep`` and ``advance`` move it, ``sleeps`` records waits."""
    from wasm_plugins.testing import FakeClock  # noqa: PLC0415 lazy: loaded by every pytest run

    return FakeClock()


@pytest.fixture
def fault_injector(request: pytest.FixtureRequest, fake_clock: FakeClock) -> FaultInjector:
    """A fault injector (a pluggy plugin for ``host.register_policy``), on with the settings of
    the test's ``wasm_faults`` marker, off without one (``enable()`` turns it on)."""
    from wasm_plugins.testing.faults import injector_from_options  # noqa: PLC0415 lazy: loaded by every pytest run

    marker = request.node.get_closest_marker("wasm_faults")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise pytest.UsageError("wasm_faults takes keyword arguments only")
    seed = options.get("seed")
    if seed is None:
        seed = request.config.getoption("wasm_faults_seed")
    if seed is None:
        seed = zlib.crc32(request.node.nodeid.encode())
    options["seed"] = seed
    try:
        injector = injector_from_options(options, clock=fake_clock, enabled=marker is not None)
    except (TypeError, ValueError) as problem:
        raise pytest.UsageError(f"{request.node.nodeid}: wasm_faults: {problem}") from None
    request.node.stash[_INJECTOR] = injector
    request.node.stash[_SEED] = seed
    return injector


@pytest.fixture
def plugin_host(
    request: pytest.FixtureRequest, fake_clock: FakeClock, fault_injector: FaultInjector
) -> Iterator[PluginHost]:
    """An isolated host on the fake clock, with the fault injector registered; closed after the
    test. Load plugins with ``plugin_host.load(...)``."""
    from wasm_plugins.host import PluginHost  # noqa: PLC0415 lazy: loaded by every pytest run
    from wasm_plugins.testing import FixedRandom  # noqa: PLC0415 lazy: loaded by every pytest run

    marker = request.node.get_closest_marker("wasm_host")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    discover = bool(options.pop("discover", False))
    options.setdefault("clock", fake_clock)
    options.setdefault("random", FixedRandom())
    options.setdefault("blocked", ())
    host = PluginHost.discover(**options) if discover else PluginHost(**options)
    try:
        host.register_policy(fault_injector, name="wasm-plugins-fault-injector")
        yield host
    finally:
        host.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Add the seed and the faults injected to the report of a failed test marked wasm_faults."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    injector = item.stash.get(_INJECTOR, None)
    if injector is None or not report.failed or item.get_closest_marker("wasm_faults") is None:
        return
    seed = item.stash.get(_SEED, None)
    lines = [f"seed {seed} (rerun with @pytest.mark.wasm_faults(seed={seed}, ...))"]
    lines.append(f"{len(injector.injected)} faults injected in {injector.attempts} attempts:")
    lines.extend(
        f"  {injection.plugin}.{injection.function} attempt {injection.attempt}: "
        f"{injection.fault!r}"
        for injection in injector.injected[:50]
    )
    if len(injector.injected) > 50:
        lines.append(f"  ... and {len(injector.injected) - 50} more")
    report.sections.append((f"wasm faults ({report.when})", "\n".join(lines)))
