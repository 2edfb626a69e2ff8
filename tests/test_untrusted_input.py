"""Plugins and their manifests are untrusted input: malformed manifests are typed errors, an entry
point cannot end discovery, WASI's clock and random need their capabilities, and text a plugin
controls is escaped before a terminal or a log sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy
import pytest

from tests._distributions import install_distribution
from wasm_plugins import (
    ConfigurationError,
    ContextualError,
    Manifest,
    PluginHost,
    Sandbox,
    SecurityViolation,
)
from wasm_plugins._escape import escape, escape_lines
from wasm_plugins.discovery import load_entry_points
from wasm_plugins.engine import Engine
from wasm_plugins.hookspecs import PROJECT_NAME

HEADER = 'name = "x"\n[module]\nwat = "(module)"\n'


def from_toml(text: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        Manifest.from_toml(text)
    return caught.value


class TestMalformedManifests:
    """Anything a manifest can hold is either valid or a ConfigurationError naming the field."""

    @pytest.mark.parametrize("depth", [40, 1000, 100_000])
    def test_any_depth(self, depth: int) -> None:
        """Deeply nested arrays or inline tables: a typed error, never RecursionError."""
        for opening, closing in (("[", "]"), ("{a=", "}")):
            middle = "1" if opening != "[" else ""
            text = HEADER + "[config]\nv = " + opening * depth + middle + closing * depth
            assert from_toml(text).kind == "configuration"

    def test_any_depth_from_python(self) -> None:
        """A dict nested deeper than any manifest needs is refused with its field's path."""
        value: Any = 1
        for _ in range(5000):
            value = {"a": value}
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict({"name": "x", "module": {"wat": "(module)"}, "config": value})
        assert caught.value.field is not None and caught.value.field.startswith("config.a.a")

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            ("[limits]\nfuel = " + "9" * 5000, "manifest"),
            ("[limits]\nfuel = " + "9" * 30, "limits.fuel"),
            ("[config]\nbig = -" + "9" * 25, "config.big"),
            ("[policy]\ngrowth = nan", "policy.growth"),
            ("[policy]\ndeadline = inf", "policy.deadline"),
            ("[policy.breaker]\nfailure_ratio = nan", "policy.breaker.failure_ratio"),
            ("[config]\nx = [1.0, -inf]", "config.x.1"),
        ],
    )
    def test_any_number(self, text: str, field: str) -> None:
        """Huge integers, NaN and infinities are refused where they are."""
        assert from_toml(HEADER + text).field == field

    def test_nan_from_python(self) -> None:
        """A manifest built in Python cannot hold NaN either."""
        from wasm_plugins.manifest import PolicySpec

        with pytest.raises(ValueError, match="finite"):
            PolicySpec(growth=float("nan"))

    @pytest.mark.parametrize(
        "resource", ["../outside.wat", "a/../../outside.wat", "/etc/passwd", "C:\\x.wat", "..\\x"]
    )
    def test_a_resource_stays_in_its_folder(self, resource: str) -> None:
        """A resource path that leaves the manifest's folder is refused."""
        error = from_toml(f'name = "x"\n[module]\nresource = {resource!r}\n'.replace("'", '"'))
        assert error.field == "module.resource"

    def test_a_symlinked_resource_stays_in_its_folder(self, tmp_path: Path) -> None:
        """A resource that is a symlink out of the manifest's folder is refused when read."""
        outside = tmp_path / "secret.wat"
        outside.write_text("(module)")
        folder = tmp_path / "dist"
        folder.mkdir()
        (folder / "module.wat").symlink_to(outside)
        (folder / "plugin.toml").write_text('name = "x"\n[module]\nresource = "module.wat"\n')
        manifest = Manifest.from_file(folder / "plugin.toml")
        with pytest.raises(ConfigurationError) as caught:
            manifest.module_source()
        assert caught.value.field == "module.resource"

    def test_simplified_is_another_function(self) -> None:
        """The simplified fallback of a function may not be the function itself."""
        error = from_toml(HEADER + '[functions.f]\nsimplified = "f"\n')
        assert error.field == "functions.f.simplified"


class TestDiscoverySurvives:
    """An entry point that raises anything at import is a problem; the others still load."""

    @pytest.mark.parametrize(
        "statement",
        [
            "raise SystemExit(3)",
            "raise GeneratorExit()",
            "raise BaseException('custom')",
            "import sys; sys.exit('bye')",
            "raise ValueError('\\x1b[2Jforged')",
        ],
    )
    def test_anything_raised_at_import(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement: str
    ) -> None:
        """The failing distribution is recorded with its name; a healthy one still registers."""
        install_distribution(
            tmp_path,
            monkeypatch,
            name="explosive",
            package="explosive_plugin",
            files={"__init__.py": statement + "\n"},
            entry_points={"explosive": "explosive_plugin"},
        )
        install_distribution(
            tmp_path,
            monkeypatch,
            name="healthy",
            package="healthy_plugin",
            files={"__init__.py": "VALUE = 1\n"},
            entry_points={"healthy": "healthy_plugin"},
        )
        manager = pluggy.PluginManager(PROJECT_NAME)
        registered, problems = load_entry_points(manager)
        assert "healthy" in registered
        (problem,) = [p for p in problems if p.source.startswith("explosive")]
        assert problem.stage == "import" and problem.distribution == "explosive 1.0.0"
        assert "\x1b" not in str(problem)

    def test_keyboard_interrupt_still_stops(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ctrl-C during discovery stops it: the user asked."""
        install_distribution(
            tmp_path,
            monkeypatch,
            name="interrupted",
            package="interrupted_plugin",
            files={"__init__.py": "raise KeyboardInterrupt\n"},
            entry_points={"interrupted": "interrupted_plugin"},
        )
        with pytest.raises(KeyboardInterrupt):
            load_entry_points(pluggy.PluginManager(PROJECT_NAME))

    def test_the_host_lists_the_problem(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """PluginHost.discover() returns, with the problem listed."""
        install_distribution(
            tmp_path,
            monkeypatch,
            name="explosive",
            package="explosive_plugin",
            files={"__init__.py": "raise SystemExit(0)\n"},
            entry_points={"explosive": "explosive_plugin"},
        )
        with PluginHost.discover(module_cache=False) as host:
            assert any(p.source.startswith("explosive") for p in host.problems)


def wasi_importing(*names: str) -> str:
    signatures = {
        "clock_time_get": "(param i32 i64 i32) (result i32)",
        "clock_res_get": "(param i32 i32) (result i32)",
        "random_get": "(param i32 i32) (result i32)",
        "poll_oneoff": "(param i32 i32 i32 i32) (result i32)",
        "fd_write": "(param i32 i32 i32 i32) (result i32)",
    }
    imports = "".join(
        f'(import "wasi_snapshot_preview1" "{name}" (func {signatures[name]}))' for name in names
    )
    return f"""(module {imports}
      (memory (export "memory") 1)
      (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "wp_free") (param i32 i32))
      (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"""


class TestWasiClockAndRandom:
    """WASI's clocks and random source are gated by clock and random, as ours are."""

    @pytest.mark.parametrize(
        ("function", "capability"),
        [
            ("clock_time_get", "clock"),
            ("clock_res_get", "clock"),
            ("poll_oneoff", "clock"),
            ("random_get", "random"),
        ],
    )
    def test_denied_without_the_capability(
        self, engine: Engine, function: str, capability: str
    ) -> None:
        """With wasi alone, a module importing the function does not load."""
        with pytest.raises(SecurityViolation) as caught:
            Sandbox(wasi_importing(function), engine=engine, capabilities=["wasi"])
        assert caught.value.capability == capability
        assert function in (caught.value.resource or "")

    def test_granted_with_the_capability(self, wasmtime_engine: Engine) -> None:
        """With wasi, clock and random, the module loads and runs."""
        sandbox = Sandbox(
            wasi_importing("clock_time_get", "random_get"),
            engine=wasmtime_engine,
            capabilities=["wasi", "clock", "random"],
            codec="raw",
        )
        assert sandbox.call("run", b"") == b""


PRINTER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{\\"forged\\": true}\\1b[2J\\n")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "run") (param i32 i32) (result i64)
    (i32.store (i32.const 200) (i32.const 100))
    (i32.store (i32.const 204) (i32.const 20))
    (drop (call $w (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))
    (drop (call $w (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 300)))
    (i64.const 0)))"""


class TestOutputConfinement:
    """A guest never writes to the host process's own stdout or stderr, on any engine."""

    @pytest.mark.parametrize("capture", [True, False])
    def test_no_guest_output_reaches_the_host(
        self, engine: Engine, capture: bool, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """Captured into the log where the engine can; refused at load where it cannot (wasmer
        1.1 would hand the guest the host's own descriptors), whatever capture_output says."""
        manifest = {
            "name": "printer",
            "module": {"wat": PRINTER},
            "codec": "raw",
            "engine": engine.name,
            "capabilities": ["wasi"],
            "wasi": {"capture_output": capture},
        }
        with PluginHost(module_cache=False) as host:
            host.load(manifest)
            if engine.features.wasi_captured_output:
                assert host.call("printer", "run", b"") == b""
            else:
                with pytest.raises(ContextualError) as caught:
                    host.call("printer", "run", b"")
                assert caught.value.error.kind == "configuration"
                assert "fd_write" in caught.value.error.message
        out, err = capfd.readouterr()
        assert "forged" not in out and "forged" not in err


class TestEscape:
    """Control and invisible formatting characters are shown, never interpreted."""

    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("plain text, ünïcode ok", "plain text, ünïcode ok"),
            ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
            ("line\nforged: INFO", "line\\nforged: INFO"),
            ("over\rwrite", "over\\rwrite"),
            ("\u202eevil", "\\u202eevil"),
            ("\x9b31m", "\\x9b31m"),
            ("zero\u200bwidth", "zero\\u200bwidth"),
        ],
    )
    def test_escape(self, text: str, shown: str) -> None:
        """Each unsafe character becomes its escape; safe text is unchanged."""
        assert escape(text) == shown
        assert escape(escape(text)) == escape(text)

    def test_escape_lines_keeps_newlines(self) -> None:
        """For a block of text, newlines stay and the rest is escaped."""
        assert escape_lines("a\x1b\nb") == "a\\x1b\nb"


LOGGER = """(module
  (import "wasm_plugins" "log" (func $log (param i32 i32 i32)))
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "say") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 2) (local.get $ptr) (local.get $len))
    (i64.const 0))
  (func (export "fail") (param $ptr i32) (param $len i32) (result i64)
    (call $error (local.get $ptr) (local.get $len))
    (i64.const 0)))"""


class TestEscapedLogs:
    """What a guest puts in the host's log is escaped: no forged lines, no terminal escapes."""

    def test_guest_log_and_reported_errors(self, engine: Engine) -> None:
        """The guest's log message and its reported error reach the log records escaped."""
        from loguru import logger

        records: list[str] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda message: records.append(message.record["message"]))
        try:
            with PluginHost(module_cache=False) as host:
                host.load(
                    {
                        "name": "talker",
                        "module": {"wat": LOGGER},
                        "engine": engine.name,
                        "codec": "raw",
                        "capabilities": ["log"],
                        "policy": {"max_attempts": 1, "fallbacks": []},
                    }
                )
                host.call("talker", "say", b"\x1b[2J\nINFO forged line")
                with pytest.raises(ContextualError):
                    host.call("talker", "fail", b'{"message": "\\u001b[31mred\\nforged"}')
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        assert "\\x1b[2J\\nINFO forged line" in records
        assert records and not any("\x1b" in r or "\n" in r for r in records)
        assert any("\\x1b[31mred\\nforged" in r for r in records)
