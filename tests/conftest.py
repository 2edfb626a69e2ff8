"""Shared fixtures: engines (a required one fails instead of skipping), paths, profiles."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from wasm_plugins.engine import Engine, default_registry

ROOT = Path(__file__).resolve().parent.parent
HOSTAPI = ROOT / "hostapi"
CONFORMANCE = HOSTAPI / "conformance"
EXAMPLES = HOSTAPI / "examples"

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile(
    "deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_REGISTRY = default_registry()
ENGINE_NAMES = ("wasmer", "wasmtime")
SDK_ENGINE = "wasmer-sdk"
ALL_ENGINE_NAMES = (*ENGINE_NAMES, SDK_ENGINE)
"""The in-process engines and wasmer-sdk (one process per instance): the conformance, hostile and
containment tests run on all of them."""


def required_engines() -> set[str]:
    """Engines whose tests must run here: wasmer wherever it installs (CPython 3.10 and older)."""
    configured = os.environ.get("WASM_PLUGINS_REQUIRE_ENGINES")
    if configured is not None:
        return {name.strip() for name in configured.split(",") if name.strip()}
    required = {"wasmer", "wasmtime"} if sys.version_info < (3, 11) else {"wasmtime"}
    if sys.platform in ("linux", "darwin"):
        required.add(SDK_ENGINE)  # a required dependency wherever its wheel exists
    return required


def _engine(name: str) -> Engine:
    reason = _REGISTRY.availability()[name]
    if reason is not None:
        if name in required_engines():
            pytest.fail(f"engine {name} is required here but cannot load: {reason}")
        pytest.skip(f"engine {name} not available: {reason}")
    return _REGISTRY.get(name)


@pytest.fixture(params=ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn; a required engine that cannot load fails the test."""
    return _engine(request.param)


def engine_named(name: str) -> Engine:
    """The engine called ``name``; skips (or fails, when it is required) if it cannot load."""
    return _engine(name)


@pytest.fixture
def wasmtime_engine() -> Engine:
    """The wasmtime engine (for behaviour only wasmtime offers in-process)."""
    return _engine("wasmtime")


@pytest.fixture
def epoch_deadlines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ticks of every wasmtime store deadline set through the fast path, from now on."""
    from wasm_plugins.engine import _wasmtime

    set_ticks: list[int] = []
    setter = _wasmtime._set_epoch_deadline

    def spy(context: Any, ticks: Any) -> None:
        set_ticks.append(ticks.value)
        setter(context, ticks)

    monkeypatch.setattr(_wasmtime, "_set_epoch_deadline", spy)
    return set_ticks


@pytest.fixture
def wasmer_engine() -> Engine:
    """The wasmer engine."""
    return _engine("wasmer")


@pytest.fixture(scope="session", autouse=True)
def private_module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hosts cache compiled modules on disk by default: during the tests, in a directory of
    their own rather than the user's cache (unless WASM_PLUGINS_CACHE_DIR says where)."""
    if os.environ.get("WASM_PLUGINS_CACHE_DIR"):
        yield
        return
    os.environ["WASM_PLUGINS_CACHE_DIR"] = str(tmp_path_factory.mktemp("module-cache"))
    try:
        yield
    finally:
        os.environ.pop("WASM_PLUGINS_CACHE_DIR", None)


_skipped_required: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember skipped tests of a required engine: they count as failures."""
    if report.skipped and any(f"[{name}" in report.nodeid for name in required_engines()):
        _skipped_required.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_required and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_required:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped_required)} test(s) of a required engine were skipped:",
            red=True,
        )
        for nodeid in _skipped_required[:20]:
            terminalreporter.write_line(f"  {nodeid}")
