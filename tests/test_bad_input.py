"""Bad input of every sort ends in a typed error of the taxonomy, never a bare engine exception."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CONFORMANCE
from wasm_plugins.engine import Engine
from wasm_plugins.errors import PluginError
from wasm_plugins.sandbox import Limits, Sandbox

ABI = CONFORMANCE / "abi.wat"


@pytest.fixture(scope="module")
def sandboxes() -> Iterator[dict[str, Sandbox]]:
    """One sandbox per engine, shared by the examples of a test (loading is the slow part)."""
    cache: dict[str, Sandbox] = {}
    yield cache
    for sandbox in cache.values():
        sandbox.close()
    cache.clear()


def _shared(cache: dict[str, Sandbox], engine: Engine) -> Sandbox:
    if engine.name not in cache:
        cache[engine.name] = Sandbox(ABI, engine=engine)
    return cache[engine.name]


_engine_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(source: Any, engine: Engine) -> Sandbox | None:
    """Load, accepting only a Sandbox or a PluginError as the outcome."""
    try:
        return Sandbox(source, engine=engine, limits=Limits(memory="1 MiB"))
    except PluginError:
        return None


class TestBadModules:
    @_engine_settings
    @given(data=st.binary(max_size=200))
    def test_random_bytes(self, engine: Engine, data: bytes) -> None:
        """Random bytes, with or without a valid header, load or fail with a typed error."""
        assert _load(data, engine) is None or data.startswith(b"\0asm")
        _load(b"\0asm\1\0\0\0" + data, engine)

    @_engine_settings
    @given(text=st.text(max_size=200))
    def test_random_wat_text(self, engine: Engine, text: str) -> None:
        """Any text given as WAT loads or fails with a typed error."""
        _load(text, engine)
        _load("(module " + text + ")", engine)

    @_engine_settings
    @given(data=st.data())
    def test_mutated_module(self, engine: Engine, data: st.DataObject) -> None:
        """Truncations and byte flips of a valid module load or fail with a typed error."""
        wasm = bytearray(engine.wat_to_wasm(ABI.read_text()))
        cut = data.draw(st.integers(min_value=0, max_value=len(wasm)), label="cut")
        _load(bytes(wasm[:cut]), engine)
        for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="flips")):
            position = data.draw(st.integers(min_value=8, max_value=len(wasm) - 1))
            wasm[position] = data.draw(st.integers(min_value=0, max_value=255))
        sandbox = _load(bytes(wasm), engine)
        if sandbox is None or not engine.features.timeout:
            # A flipped byte can turn any loop endless: only an engine that enforces a timeout
            # in-process can run what it loaded.
            return
        bounded = Sandbox(bytes(wasm), engine=engine, limits=Limits(timeout=0.2, fuel=10**7))
        for function in bounded.functions:
            with contextlib.suppress(PluginError):
                bounded.call(function, "x")


class TestBadInputValues:
    @_engine_settings
    @given(
        value=st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats()
            | st.text()
            | st.binary()
            | st.sets(st.integers(), max_size=2),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=3)
                | st.tuples(children)
            ),
            max_leaves=8,
        )
    )
    def test_any_input_value(
        self, engine: Engine, sandboxes: dict[str, Sandbox], value: Any
    ) -> None:
        """Any Python value as input comes back as JSON data or fails with a typed error."""
        sandbox = _shared(sandboxes, engine)
        try:
            result = sandbox.call("echo", value)
        except PluginError as error:
            assert error.kind == "communication"
        else:
            assert isinstance(result, dict | list | str | int | float | bool | type(None))

    @_engine_settings
    @given(name=st.text(max_size=30))
    def test_any_function_name(
        self, engine: Engine, sandboxes: dict[str, Sandbox], name: str
    ) -> None:
        """Any function name calls that function or fails with a typed error."""
        sandbox = _shared(sandboxes, engine)
        with contextlib.suppress(PluginError):
            sandbox.call(name, None)
        assert sandbox.call("upper", "ok") == "OK"
