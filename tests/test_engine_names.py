"""Engine names: ``wasmer`` is the fastest Wasmer that runs here (the in-process 1.1 binding where
it installs, the Wasmer SDK elsewhere), ``auto`` an in-process engine that enforces every limit,
and an error names the engine and isolation that really ran the call."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import SDK_ENGINE, engine_named
from wasm_plugins import ContextualError, PluginHost
from wasm_plugins.engine import (
    ENGINE_ENVIRONMENT_VARIABLE,
    Engine,
    EngineRegistry,
    default_registry,
)
from wasm_plugins.errors import ConfigurationError, ExecutionError
from wasm_plugins.sandbox import Sandbox

TRAP = """(module (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "boom") (param i32 i32) (result i64) unreachable))"""


def _registry(**loads: bool) -> EngineRegistry:
    """A registry of the three built-in names whose factories load or fail as told."""
    registry = EngineRegistry()
    for name in ("wasmer", "wasmtime", "wasmer-sdk"):

        def factory(name: str = name) -> Engine:
            if not loads.get(name.replace("-", "_"), True):
                raise ImportError(f"No module named {name!r}")
            return default_registry().get("wasmtime")

        registry.register(name, factory)
    return registry


class TestWasmerName:
    def test_wasmer_is_the_binding_where_it_loads(self) -> None:
        assert _registry().resolve_name("wasmer") == "wasmer"

    def test_wasmer_is_the_sdk_where_the_binding_does_not_load(self) -> None:
        assert _registry(wasmer=False).resolve_name("wasmer") == "wasmer-sdk"

    def test_wasmer_reports_the_binding_when_neither_loads(self) -> None:
        """With no Wasmer at all, the error says why the binding cannot load and how to get a
        Wasmer here."""
        with pytest.raises(ConfigurationError) as caught:
            _registry(wasmer=False, wasmer_sdk=False).get("wasmer")
        assert "'wasmer' cannot be loaded" in caught.value.message
        assert "wasmer-sdk" in (caught.value.suggestion or "")

    def test_environment_variable_names_wasmer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, "wasmer")
        assert _registry(wasmer=False).resolve_name("auto") == "wasmer-sdk"
        assert _registry().resolve_name(None) == "wasmer"

    def test_availability_is_per_engine_not_per_name(self) -> None:
        """Availability says whether each engine loads: ``wasmer`` is the 1.1 binding there,
        even when the name would run the SDK."""
        availability = _registry(wasmer=False).availability()
        assert availability["wasmer"] is not None
        assert availability["wasmer-sdk"] is None

    def test_here(self) -> None:
        """On this Python: the binding on 3.10, the SDK from 3.11 on."""
        expected = "wasmer" if sys.version_info < (3, 11) else SDK_ENGINE
        assert default_registry().resolve_name("wasmer") == expected


class TestAuto:
    def test_auto_never_picks_the_sdk_while_an_in_process_engine_loads(self) -> None:
        assert _registry(wasmer=False).resolve_name("auto") == "wasmtime"
        assert _registry().resolve_name("auto") == "wasmer"

    def test_auto_falls_back_to_the_sdk_when_nothing_else_loads(self) -> None:
        assert _registry(wasmer=False, wasmtime=False).resolve_name("auto") == "wasmer-sdk"


class TestErrorsSayWhatRan:
    def test_a_host_on_wasmer_names_the_engine_and_isolation_that_ran(self) -> None:
        """``engine="wasmer"`` on a host: the error's context names the real engine (and, on
        the SDK, its isolation)."""
        engine_named(default_registry().resolve_name("wasmer"))
        sandbox = Sandbox(TRAP, engine=default_registry().get("wasmer"))
        with pytest.raises(ExecutionError) as caught:
            sandbox.call("boom", {})
        environment = caught.value.context.environment
        assert environment.engine == sandbox.engine.name
        assert "wasmer" in environment.engine
        if environment.engine == SDK_ENGINE:
            assert environment.isolation == "sdk-process"
        else:
            assert "sdk" not in environment.engine

    @pytest.mark.parametrize("where", ["host", "manifest", "environment"])
    def test_wasmer_named_on_the_host_in_a_manifest_or_the_environment(
        self, where: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``wasmer`` on the host, in a manifest or in ``WASM_PLUGINS_ENGINE`` runs the plugin
        on the Wasmer this Python has, and its failure names it."""
        name = default_registry().resolve_name("wasmer")
        engine_named(name)
        if where == "environment":
            monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, "wasmer")
        manifest = {"name": "trap", "module": {"wat": TRAP}, "policy": {"max_attempts": 1}}
        if where == "manifest":
            manifest["engine"] = "wasmer"
        with PluginHost(engine="wasmer" if where == "host" else "auto") as host:
            host.load(manifest)
            assert host.engine_for("trap").name == name
            with pytest.raises(ContextualError) as caught:
                host.call("trap", "boom", {})
        assert isinstance(caught.value.error, ExecutionError)
        assert caught.value.context.environment.engine == name
