"""host.watch(): a plugin whose files change is reloaded, and a broken version is refused."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from tests.test_lifecycle import answering
from wasm_plugins import PluginHost
from wasm_plugins.errors import PluginError

pytest.importorskip("watchfiles", reason="the watch extra is not installed")

WAIT = 60.0
"""Seconds to wait for the watcher to act: generous, it normally takes the debounce."""


def test_a_changed_module_is_reloaded_and_a_broken_one_refused(tmp_path: Path) -> None:
    module = tmp_path / "answers.wat"
    module.write_text(answering("one"))
    toml = tmp_path / "plugin.toml"
    toml.write_text('name = "answers"\nversion = "1.0.0"\n[module]\npath = "answers.wat"\n')
    reloads: queue.Queue[tuple[str, PluginError | None]] = queue.Queue()
    with PluginHost(engine="wasmtime", module_cache=False) as host:
        host.load(toml)
        assert host.call("answers", "answer") == "one"
        watcher = host.watch(debounce=0.05, on_reload=lambda *seen: reloads.put(seen))
        assert {path.name for path in watcher.files()} == {"answers.wat", "plugin.toml"}
        assert watcher.ready.wait(WAIT)

        module.write_text(answering("two"))
        assert reloads.get(timeout=WAIT) == ("answers", None)
        assert host.call("answers", "answer") == "two"

        module.write_text("(module (func")
        name, error = reloads.get(timeout=WAIT)
        assert name == "answers" and error is not None
        assert error.field == "replace.compile"  # type: ignore[attr-defined]
        assert host.call("answers", "answer") == "two"

        toml.write_text(toml.read_text().replace("1.0.0", "1.1.0"))
        module.write_text(answering("three"))
        # Both files in one burst: normally one reload, two if the burst was split.
        while host.call("answers", "answer") != "three":
            assert reloads.get(timeout=WAIT) == ("answers", None)
        assert host.plugins["answers"].manifest.version == "1.1.0"
        assert watcher.running
    # Closing the host stopped it.
    assert not watcher.running
