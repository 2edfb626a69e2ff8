"""The two plugins the testing toolkit ships (an echo and a failing one), with modules inline."""

from __future__ import annotations

import pytest

from wasm_plugins import ContextualError, PluginHost
from wasm_plugins.engine import Engine
from wasm_plugins.testing import ECHO, FAILING


class TestShippedPlugins:
    def test_echo_returns_its_input(self, engine: Engine) -> None:
        """``echo`` answers what it was given, on every engine."""
        with PluginHost(engine=engine.name) as host:
            host.load(ECHO)
            assert host.call("echo", "echo", {"a": [1, "two"]}) == {"a": [1, "two"]}

    @pytest.mark.parametrize(
        ("function", "trap", "message"),
        [("trap", "unreachable", "unreachable"), ("refuse", "guest_error", "refused")],
    )
    def test_failing_fails_with_a_typed_error(
        self, engine: Engine, function: str, trap: str, message: str
    ) -> None:
        """``trap`` traps and ``refuse`` reports a handled error; both are runtime errors."""
        with PluginHost(engine=engine.name) as host:
            host.load(FAILING)
            with pytest.raises(ContextualError) as raised:
                host.call("failing", function, {})
        assert raised.value.error.kind == "runtime"
        assert raised.value.error.trap == trap
        assert message in str(raised.value.error)

    def test_the_manifests_are_read_only_and_extensible(self) -> None:
        """A test cannot change the shared manifest, but can load a variant of it."""
        with pytest.raises(TypeError):
            ECHO["name"] = "changed"  # type: ignore[index]
        with PluginHost(engine="wasmtime") as host:
            host.load({**ECHO, "name": "mirror", "functions": {"echo": {"default": "x"}}})
            assert host.call("mirror", "echo", 5) == 5
