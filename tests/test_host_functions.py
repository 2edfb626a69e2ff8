"""Host functions: each denied without its capability and working with it, stores isolated per
plugin, WASI confined to its preopened directories, on every engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from tests.conftest import ROOT, SDK_ENGINE, engine_named
from wasm_plugins import (
    ConfigurationError,
    ContextualError,
    HostServices,
    ModuleError,
    PluginHost,
    SecurityViolation,
)
from wasm_plugins.engine import Engine

ALLOCATOR = """
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (data (i32.const 4000) "<missing>")
"""

# One module per capability: imports exactly the functions of that capability. Input and output
# are raw bytes; scratch output goes to 4096.
MODULES = {
    "log": """
      (import "wasm_plugins" "log" (func $log (param i32 i32 i32)))
      (func (export "run") (param $ptr i32) (param $len i32) (result i64)
        (call $log (i32.const 2) (local.get $ptr) (local.get $len))
        (call $pack (local.get $ptr) (local.get $len)))""",
    "config": """
      (import "wasm_plugins" "config_get" (func $get (param i32 i32 i32 i32) (result i32)))
      (func (export "run") (param $ptr i32) (param $len i32) (result i64)
        (local $n i32)
        (local.set $n
          (call $get (local.get $ptr) (local.get $len) (i32.const 4096) (i32.const 1024)))
        (if (result i64) (i32.lt_s (local.get $n) (i32.const 0))
          (then (call $pack (i32.const 4000) (i32.const 9)))
          (else (call $pack (i32.const 4096) (local.get $n)))))""",
    "kv": """
      (import "wasm_plugins" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
      (import "wasm_plugins" "kv_set" (func $set (param i32 i32 i32 i32) (result i32)))
      (import "wasm_plugins" "kv_delete" (func $delete (param i32 i32) (result i32)))
      ;; put: the first byte is the key's length, then the key, then the value.
      (func (export "put") (param $ptr i32) (param $len i32) (result i64)
        (local $k i32)
        (local.set $k (i32.load8_u (local.get $ptr)))
        (i32.store (i32.const 4096)
          (call $set (i32.add (local.get $ptr) (i32.const 1)) (local.get $k)
                     (i32.add (i32.add (local.get $ptr) (i32.const 1)) (local.get $k))
                     (i32.sub (i32.sub (local.get $len) (i32.const 1)) (local.get $k))))
        (call $pack (i32.const 4096) (i32.const 4)))
      (func (export "get") (param $ptr i32) (param $len i32) (result i64)
        (local $n i32)
        (local.set $n
          (call $get (local.get $ptr) (local.get $len) (i32.const 4096) (i32.const 1024)))
        (if (result i64) (i32.lt_s (local.get $n) (i32.const 0))
          (then (call $pack (i32.const 4000) (i32.const 9)))
          (else (call $pack (i32.const 4096) (local.get $n)))))
      (func (export "delete") (param $ptr i32) (param $len i32) (result i64)
        (i32.store (i32.const 4096) (call $delete (local.get $ptr) (local.get $len)))
        (call $pack (i32.const 4096) (i32.const 4)))""",
    "clock": """
      (import "wasm_plugins" "clock_now" (func $now (result i64)))
      (import "wasm_plugins" "clock_monotonic" (func $mono (result i64)))
      (func (export "run") (param i32 i32) (result i64)
        (i64.store (i32.const 4096) (call $now))
        (i64.store (i32.const 4104) (call $mono))
        (call $pack (i32.const 4096) (i32.const 16)))""",
    "random": """
      (import "wasm_plugins" "random_fill" (func $fill (param i32 i32) (result i32)))
      (func (export "run") (param i32 i32) (result i64)
        (drop (call $fill (i32.const 4096) (i32.const 16)))
        (call $pack (i32.const 4096) (i32.const 16)))""",
}


def module(capability: str) -> str:
    return f"(module {MODULES[capability]}\n{ALLOCATOR})"


def manifest(name: str, capability: str, engine: Engine, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "module": {"wat": module(capability)},
        "codec": "raw",
        "engine": engine.name,
        **extra,
    }


@pytest.fixture
def services() -> HostServices:
    """Services with a fixed clock and a fixed random source."""
    return HostServices(
        wall_clock_ns=lambda: 1_700_000_000_250_000_000,
        monotonic_ns=lambda: 42_500_000_000,
        random_bytes=lambda size: bytes(range(7, 7 + size)),
    )


@pytest.fixture
def host(services: HostServices) -> Iterator[PluginHost]:
    with PluginHost(services=services, blocked=()) as made:
        yield made


class TestCapabilityGating:
    @pytest.mark.parametrize("capability", sorted(MODULES))
    def test_denied_without_capability(
        self, host: PluginHost, engine: Engine, capability: str
    ) -> None:
        """A module importing a host function its manifest does not grant fails to load."""
        host.load(manifest("plugin", capability, engine))
        function = "get" if capability == "kv" else "run"
        with pytest.raises(ContextualError) as caught:
            host.call("plugin", function, b"x")
        error = caught.value.error
        assert isinstance(error, SecurityViolation)
        assert error.capability == capability
        assert error.resource is not None and error.resource.startswith("wasm_plugins.")

    def test_log(self, host: PluginHost, engine: Engine) -> None:
        """log writes the guest's message with the plugin's name bound."""
        records: list[dict[str, Any]] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda message: records.append(message.record), level="TRACE")
        try:
            host.load(manifest("talker", "log", engine, capabilities=["log"]))
            assert host.call("talker", "run", b"hello log") == b"hello log"
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        guest = [r for r in records if r["extra"].get("source") == "guest"]
        assert [(r["message"], r["level"].name, r["extra"]["plugin"]) for r in guest] == [
            ("hello log", "INFO", "talker")
        ]

    def test_config(self, services: HostServices, engine: Engine) -> None:
        """config_get reads the manifest's values, overridden by the host's, per plugin."""
        with PluginHost(services=services, config={"configured": {"greeting": "hi"}}) as host:
            host.load(
                manifest(
                    "configured",
                    "config",
                    engine,
                    capabilities=["config"],
                    config={"greeting": "hello", "retries": 3},
                )
            )
            assert host.call("configured", "run", b"greeting") == b"hi"
            assert host.call("configured", "run", b"retries") == b"3"
            assert host.call("configured", "run", b"absent") == b"<missing>"

    def test_clock(self, host: PluginHost, engine: Engine) -> None:
        """clock_now and clock_monotonic come from the host's injected clocks, in nanoseconds."""
        host.load(manifest("clocked", "clock", engine, capabilities=["clock"]))
        output = host.call("clocked", "run", b"")
        now = int.from_bytes(output[:8], "little")
        monotonic = int.from_bytes(output[8:], "little")
        assert (now, monotonic) == (1_700_000_000_250_000_000, 42_500_000_000)

    def test_random(self, host: PluginHost, engine: Engine) -> None:
        """random_fill fills the guest's buffer from the host's injected source."""
        host.load(manifest("dice", "random", engine, capabilities=["random"]))
        assert host.call("dice", "run", b"") == bytes(range(7, 23))

    def test_unknown_capability_is_refused(self, host: PluginHost, engine: Engine) -> None:
        """A misspelt capability in a manifest is a configuration error with a suggestion."""
        host.load(manifest("typo", "kv", engine, capabilities=["kvv"]))
        with pytest.raises(ContextualError) as caught:
            host.call("typo", "get", b"k")
        error = caught.value.error
        assert isinstance(error, ConfigurationError)
        assert error.field == "capabilities"
        assert "'kv'" in (error.suggestion or "")

    def test_blocked_builtin_functions(self, services: HostServices, engine: Engine) -> None:
        """With the built-in host functions blocked by name, their imports no longer resolve."""
        with PluginHost(services=services, blocked={"builtin-host-functions"}) as host:
            host.load(manifest("plugin", "random", engine, capabilities=["random"]))
            with pytest.raises(ContextualError) as caught:
                host.call("plugin", "run", b"")
            assert isinstance(caught.value.error, ConfigurationError | ModuleError)


class TestKeyValueStore:
    def test_round_trip(self, host: PluginHost, engine: Engine) -> None:
        """A plugin reads back what it stored, and deletes it."""
        host.load(manifest("keeper", "kv", engine, capabilities=["kv"]))
        assert host.call("keeper", "put", b"\x03keyvalue") == (0).to_bytes(4, "little")
        assert host.call("keeper", "get", b"key") == b"value"
        assert host.call("keeper", "delete", b"key") == (1).to_bytes(4, "little")
        assert host.call("keeper", "delete", b"key") == (0).to_bytes(4, "little")
        assert host.call("keeper", "get", b"key") == b"<missing>"

    def test_plugins_are_isolated(self, host: PluginHost, engine: Engine) -> None:
        """One plugin cannot read or delete another plugin's keys."""
        host.load(manifest("alice", "kv", engine, capabilities=["kv"]))
        host.load(manifest("mallory", "kv", engine, capabilities=["kv"]))
        host.call("alice", "put", b"\x06secretalice's value")
        assert host.call("mallory", "get", b"secret") == b"<missing>"
        assert host.call("mallory", "delete", b"secret") == (0).to_bytes(4, "little")
        host.call("mallory", "put", b"\x06secretoverwritten")
        assert host.call("alice", "get", b"secret") == b"alice's value"
        assert host.services.store.get("alice", b"secret") == b"alice's value"

    def test_quota(self, host: PluginHost, engine: Engine) -> None:
        """A plugin over its store quota gets -1 from kv_set and its other keys survive."""
        host.services.store.max_keys = 2  # type: ignore[attr-defined]
        host.load(manifest("hoarder", "kv", engine, capabilities=["kv"]))
        assert host.call("hoarder", "put", b"\x01a1") == (0).to_bytes(4, "little")
        assert host.call("hoarder", "put", b"\x01b2") == (0).to_bytes(4, "little")
        assert host.call("hoarder", "put", b"\x01c3") == (-1).to_bytes(4, "little", signed=True)
        assert host.call("hoarder", "get", b"a") == b"1"


WASI_ESCAPE = ROOT / "plugins" / "hostile-pack" / "src" / "wasm_plugins_hostile_pack"


@pytest.fixture
def wasi_tree(tmp_path: Path) -> Path:
    """A preopen with a file inside, a secret beside it, and a symlink pointing out."""
    inside = tmp_path / "sandbox"
    inside.mkdir()
    (inside / "inside.txt").write_text("hello\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (inside / "link-to-outside").symlink_to(tmp_path / "secret.txt")
    return inside


def wasi_manifest(engine: Engine, directory: Path, *, read_only: bool = True) -> dict[str, Any]:
    return {
        "name": "wasi-escape",
        "module": {"path": str(WASI_ESCAPE / "wasi-escape.wat")},
        "engine": engine.name,
        "capabilities": ["wasi"],
        "wasi": {"preopens": [{"host": str(directory), "guest": "/data", "read_only": read_only}]},
    }


class TestWasi:
    @pytest.mark.parametrize(
        "function", ["read_parent", "read_absolute", "read_symlink", "write_readonly"]
    )
    def test_escapes_are_refused(
        self, wasmtime_engine: Engine, wasi_tree: Path, function: str
    ) -> None:
        """`..`, absolute paths, symlinks out and writes to a read-only preopen all fail."""
        with PluginHost() as host:
            host.load(wasi_manifest(wasmtime_engine, wasi_tree))
            result = host.call("wasi-escape", function)
        assert result.get("ok") is not True and result["errno"] != 0
        assert not (wasi_tree / "new.txt").exists()

    def test_inside_is_readable(self, wasmtime_engine: Engine, wasi_tree: Path) -> None:
        """A file inside the preopen is readable: the refusals above are not blanket failures."""
        with PluginHost() as host:
            host.load(wasi_manifest(wasmtime_engine, wasi_tree))
            assert host.call("wasi-escape", "read_inside") == {"ok": True, "content": "hello\n"}

    def test_wasi_needs_capability(self, engine: Engine, wasi_tree: Path) -> None:
        """Without the wasi capability, a WASI module does not load."""
        data = wasi_manifest(engine, wasi_tree)
        data["capabilities"] = []
        with PluginHost() as host:
            host.load(data)
            with pytest.raises(ContextualError) as caught:
                host.call("wasi-escape", "read_inside")
        assert isinstance(caught.value.error, SecurityViolation)
        assert caught.value.error.capability == "wasi"

    def test_wasmer_refuses_directories(self, wasmer_engine: Engine, wasi_tree: Path) -> None:
        """wasmer 1.1 cannot confine a preopened directory, so a plugin asking for one is refused
        at load, naming wasmtime."""
        for read_only in (True, False):
            with PluginHost() as host:
                host.load(wasi_manifest(wasmer_engine, wasi_tree, read_only=read_only))
                with pytest.raises(ContextualError) as caught:
                    host.call("wasi-escape", "read_inside")
            error = caught.value.error
            assert isinstance(error, ConfigurationError)
            assert error.field == "wasi.preopens"
            assert "wasmtime" in (error.suggestion or "")

    def test_wasmer_sdk_refuses_directories(self, wasi_tree: Path) -> None:
        """The Wasmer SDK (0.5) cannot map a host directory into its sandbox: files are copied
        into an in-memory tree under /workspace, writable, and the guest's preopens are the
        sandbox's root. A plugin asking for a directory is refused at load, naming wasmtime."""
        sdk = engine_named(SDK_ENGINE)
        for read_only in (True, False):
            with PluginHost() as host:
                host.load(wasi_manifest(sdk, wasi_tree, read_only=read_only))
                with pytest.raises(ContextualError) as caught:
                    host.call("wasi-escape", "read_inside")
            error = caught.value.error
            assert isinstance(error, ConfigurationError)
            assert error.field == "wasi.preopens"
            assert "wasmtime" in (error.suggestion or "")

    def test_output_is_captured(self, wasmtime_engine: Engine) -> None:
        """A WASI guest's stdout goes to the log with the plugin's name, not to the terminal."""
        wat = (
            '(module (import "wasi_snapshot_preview1" "fd_write"'
            " (func $w (param i32 i32 i32 i32) (result i32)))"
            + ALLOCATOR
            + """
              (data (i32.const 100) "printed by the guest\\n")
              (func (export "run") (param i32 i32) (result i64)
                (i32.store (i32.const 200) (i32.const 100))
                (i32.store (i32.const 204) (i32.const 21))
                (drop (call $w (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))
                (call $pack (i32.const 4000) (i32.const 0))))"""
        )
        records: list[dict[str, Any]] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda message: records.append(message.record), level="INFO")
        try:
            with PluginHost() as host:
                host.load(
                    {
                        "name": "printer",
                        "module": {"wat": wat},
                        "codec": "raw",
                        "engine": wasmtime_engine.name,
                        "capabilities": ["wasi"],
                    }
                )
                assert host.call("printer", "run", b"") == b""
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        messages = [r["message"] for r in records if r["extra"].get("plugin") == "printer"]
        assert messages == ["stdout: printed by the guest"]


def test_log_levels_documented() -> None:
    """The log levels the ABI names match the host's table."""
    from wasm_plugins.builtin.host_functions import LOG_LEVELS

    abi = (ROOT / "hostapi" / "ABI.md").read_text()
    assert "0 trace, 1 debug, 2 info, 3 warning, 4 error" in abi
    assert [level.lower() for level in LOG_LEVELS] == ["trace", "debug", "info", "warning", "error"]
    assert json.loads("1") == 1
