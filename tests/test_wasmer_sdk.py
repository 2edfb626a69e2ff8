"""The wasmer-sdk engine: the command wrapper, the frame protocol, bad guests, limits and exit.

The wrapper tests need only wasmtime (to validate what the wrapper makes); the rest run plugins
in Wasmer SDK processes. Tests that could crash the interpreter run in a child process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.conftest import CONFORMANCE, ROOT, SDK_ENGINE, engine_named
from wasm_plugins.engine import (
    CallBudget,
    Engine,
    FuncSignature,
    LinkedModule,
    WasiCommand,
    WasiSettings,
)
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    DeadlineExceeded,
    ExecutionError,
    InstanceError,
    ModuleError,
    ResourceLimitExceeded,
)
from wasm_plugins.sandbox import (
    HostCall,
    HostFunction,
    Limits,
    Sandbox,
    meter_module,
    u32,
    wrap_command,
)
from wasm_plugins.sandbox._loaded import compiled_with_fuel

ABI = CONFORMANCE / "abi.wat"
PLUGIN_TYPE = FuncSignature(("i32", "i32"), ("i64",))


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def valid(wasm: bytes) -> None:
    wasmtime.Module.validate(wasmtime.Engine(), wasm)


@pytest.fixture(scope="module")
def sdk() -> Engine:
    return engine_named(SDK_ENGINE)


@pytest.fixture(scope="module")
def abi_sandbox(sdk: Engine) -> Iterator[Sandbox]:
    """One sandbox (one process) reused by the tests that only call it."""
    sandbox = Sandbox(ABI, engine=sdk)
    yield sandbox
    sandbox.close()


# -- the command wrapper ---------------------------------------------------------------------------

ALLOC = """
  (global $heap (mut i32) (i32.const 4096))
  (func $alloc (export "wp_alloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "wp_free") (param i32 i32))
"""


class TestWrapper:
    def test_wraps_the_conformance_module(self) -> None:
        """The wrapped module validates, exports _start and serves every integer export."""
        command = wrap_command(wat(ABI.read_text()))
        valid(command.wasm)
        names = [name for name, _ in command.functions]
        assert {"wp_alloc", "wp_free", "echo", "trap_unreachable"} <= set(names)
        assert dict(command.functions)["echo"] == PLUGIN_TYPE
        exports = {e.name for e in wasmtime.Module(wasmtime.Engine(), command.wasm).exports}
        assert "_start" in exports and "memory" in exports

    def test_reactor_and_command_entry_points_are_dropped(self) -> None:
        """_initialize (called first by the new _start) and a () -> () _start are not exported:
        a wrapped module that still exported _initialize would run as a reactor."""
        module = wat(f"""(module (memory (export "memory") 1) {ALLOC}
          (func (export "_initialize")) (func (export "_start")))""")
        command = wrap_command(module)
        valid(command.wasm)
        exports = [e.name for e in wasmtime.Module(wasmtime.Engine(), command.wasm).exports]
        assert exports.count("_start") == 1 and "_initialize" not in exports
        assert "_initialize" not in dict(command.functions)

    def test_renumbers_calls_tables_globals_and_start(self) -> None:
        """Host imports become defined functions: every function index is renumbered."""
        module = wat(f"""(module
          (import "wasm_plugins" "log" (func $log (param i32 i32 i32)))
          (import "wasi_snapshot_preview1" "random_get" (func $rnd (param i32 i32) (result i32)))
          (memory (export "memory") 1) {ALLOC}
          (table 2 funcref) (elem (i32.const 0) $f $log)
          (global $g funcref (ref.func $f))
          (func $f (param i32 i32) (result i64)
            (call $log (i32.const 0) (i32.const 0) (i32.const 0))
            (i64.const 7))
          (func $init (drop (call $rnd (i32.const 0) (i32.const 0))))
          (start $init)
          (export "f" (func $f)))""")
        command = wrap_command(module)
        valid(command.wasm)
        assert command.host_imports == (
            ("wasm_plugins", "log", FuncSignature(("i32", "i32", "i32"), ())),
        )

    @pytest.mark.parametrize(
        ("reason", "module"),
        [
            ("no-memory-export", f'(module (memory 1) {ALLOC} (func (export "f")))'),
            (
                "start-export-type",
                f'(module (memory (export "memory") 1) {ALLOC}'
                ' (func (export "_start") (param i32)))',
            ),
            (
                "unsupported-import",
                '(module (import "env" "t" (table 1 funcref))'
                f' (memory (export "memory") 1) {ALLOC})',
            ),
            (
                "unsupported-import",
                '(module (import "wasm_plugins" "x" (func (param f32)))'
                f' (memory (export "memory") 1) {ALLOC})',
            ),
            (
                "no-scratch-allocator",
                '(module (memory (export "memory") 1)'
                ' (func (export "wp_alloc") (param i64) (result i32) (i32.const 0)))',
            ),
        ],
    )
    def test_unwrappable_modules_are_refused_with_the_reason(
        self, reason: str, module: str
    ) -> None:
        with pytest.raises(ModuleError) as caught:
            wrap_command(wat(module))
        assert caught.value.validation_errors[0].message.startswith(reason)
        assert reason in caught.value.message

    def test_refused_at_load_through_the_sandbox(self, sdk: Engine) -> None:
        """The sandbox reports the wrapper's refusal as a module error at load."""
        module = f"""(module (memory (export "memory") 1) {ALLOC}
          (func (export "_start") (param i32)))"""
        with pytest.raises(ModuleError) as caught:
            Sandbox(module, engine=sdk)
        assert "start-export-type" in caught.value.message
        assert caught.value.context is not None
        assert caught.value.context.environment.engine == SDK_ENGINE


# -- calls -----------------------------------------------------------------------------------------


class TestCalls:
    def test_calls_and_errors_name_the_engine_and_isolation(self, abi_sandbox: Sandbox) -> None:
        assert abi_sandbox.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(ExecutionError) as caught:
            abi_sandbox.call("trap_unreachable")
        assert caught.value.trap == "unreachable"
        environment = caught.value.context.environment  # type: ignore[union-attr]
        assert (environment.engine, environment.isolation) == (SDK_ENGINE, "sdk-process")
        assert abi_sandbox.call("upper", "ok") == "OK"

    def test_large_output_beyond_the_prefetch(self, abi_sandbox: Sandbox) -> None:
        """Output larger than what comes back with the result is read with a frame of its own."""
        from wasm_plugins.engine._wasmer_sdk import PREFETCH

        text = "ab" * (PREFETCH // 2 + 10)
        assert abi_sandbox.call("upper", text) == text.upper()

    def test_called_from_a_running_event_loop(self, abi_sandbox: Sandbox) -> None:
        """The SDK runs on a private loop, never on the caller's."""

        async def main() -> Any:
            return abi_sandbox.call("echo", [3])

        assert asyncio.run(main()) == [3]

    def test_serialized_module_round_trip(self, sdk: Engine) -> None:
        module = sdk.compile(sdk.wat_to_wasm(ABI.read_text()))
        again = sdk.deserialize(module.serialize())
        assert [e.name for e in again.exports] == [e.name for e in module.exports]

    def test_a_kernel_from_another_engine_is_refused(self, sdk: Engine) -> None:
        """The linked module (the Extism kernel) runs in-process on the linking engine: one
        compiled by another engine is a typed configuration error."""
        kernel = sdk.compile(sdk.wat_to_wasm(ABI.read_text()))
        module = sdk.compile(sdk.wat_to_wasm(ABI.read_text()))
        with pytest.raises(ConfigurationError) as caught:
            module.instantiate(
                [], CallBudget(), linked=LinkedModule(module=kernel, namespace="extism:host/env")
            )
        assert caught.value.field == "engine"
        assert "wasmtime" in caught.value.message


# -- Extism plugins --------------------------------------------------------------------------------

COUNT_VOWELS = ROOT / "benchmarks" / "extism_count_vowels.wat"
KITCHEN = Path(__file__).parent / "extism" / "kitchen.wat"


class TestExtism:
    def test_an_extism_plugin_answers_like_on_wasmtime(self, sdk: Engine) -> None:
        """The plugin runs in an SDK process, its kernel in-process on wasmtime: the outputs are
        those of the plugin on wasmtime."""
        wasmtime_engine = engine_named("wasmtime")
        ours = Sandbox(COUNT_VOWELS, engine=sdk, codec="raw")
        theirs = Sandbox(COUNT_VOWELS, engine=wasmtime_engine, codec="raw")
        assert ours.abi == "extism"
        for data in (b"", b"a", b"Hello, World!", bytes(range(256))):
            assert ours.call_bytes("count_vowels", data) == theirs.call_bytes("count_vowels", data)
        ours.close()

    def test_an_extism_plugin_exporting_initialize_is_initialized_once(self, sdk: Engine) -> None:
        """An Extism plugin exporting _initialize (as real toolchains build them) instantiates,
        serves calls, and its _initialize ran once before the first call."""
        sandbox = Sandbox(KITCHEN, engine=sdk, codec="raw")
        assert sandbox.call_bytes("initialized", b"") == b"1"
        assert sandbox.call_bytes("count_vowels", b"hello") == b'{"count": 2}'
        sandbox.close()

    def test_an_endless_extism_plugin_times_out_and_the_next_call_answers(
        self, sdk: Engine
    ) -> None:
        """The call's deadline covers the plugin in its process and the kernel calls it makes;
        past it the process is killed and the next call gets a fresh instance and kernel."""
        plugin = """(module
          (import "extism:host/env" "input_length" (func $input_length (result i64)))
          (memory (export "memory") 1)
          (func (export "spin") (result i32)
            (loop $l (drop (call $input_length)) (br $l))
            (i32.const 0))
          (func (export "ok") (result i32) (i32.const 0)))"""
        sandbox = Sandbox(plugin, engine=sdk, codec="raw", limits=Limits(timeout=0.5))
        with pytest.raises(DeadlineExceeded):
            sandbox.call_bytes("spin", b"x")
        assert sandbox.call_bytes("ok", b"") == b""
        sandbox.close()

    def test_fuel_covers_the_plugin_and_its_kernel(self, sdk: Engine) -> None:
        """With a fuel limit the plugin (metering pass) and the kernel (wasmtime's fuel) are
        metered: a call within the budget answers, one past it is a fuel limit, and the next
        call answers."""
        sandbox = Sandbox(KITCHEN, engine=sdk, codec="raw", limits=Limits(fuel=100_000))
        assert sandbox.call_bytes("count_vowels", b"hello") == b'{"count": 2}'
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("grow", b"x" * 100)
        assert caught.value.resource == "fuel"
        assert sandbox.call_bytes("count_vowels", b"a") == b'{"count": 1}'
        sandbox.close()

    def test_a_module_without_wp_alloc_is_served(self, sdk: Engine) -> None:
        """Without wp_alloc, the serving loop grows a page of its own for its scratch buffer."""
        wasm = wat(
            """(module (memory (export "memory") 1)
              (func (export "add") (param i32 i32) (result i32)
                (i32.add (local.get 0) (local.get 1))))"""
        )
        command = wrap_command(wasm)
        valid(command.wasm)
        instance = sdk.compile(wasm).instantiate([], CallBudget(timeout=30))
        try:
            assert instance.call(instance.export_function("add"), 2, 3) == 5
            assert instance.memory.size() == 2 * 65536  # the page grown for the scratch buffer
        finally:
            close = getattr(instance, "close", None)
            if callable(close):
                close()

    def test_a_module_whose_memory_cannot_grow_is_an_instance_error(self, sdk: Engine) -> None:
        """Without wp_alloc and without room to grow a page, instantiation fails, typed."""
        wasm = wat(
            """(module (memory (export "memory") 1 1)
              (func (export "one") (result i32) (i32.const 1)))"""
        )
        with pytest.raises(InstanceError):
            sdk.compile(wasm).instantiate([], CallBudget(timeout=30))


PRINTER = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1) {ALLOC}
  (data (i32.const 100) "to stdout\\n")
  (data (i32.const 200) "to stderr\\n")
  (func $print (param $fd i32) (param $p i32) (param $n i32)
    (i32.store (i32.const 0) (local.get $p)) (i32.store (i32.const 4) (local.get $n))
    (drop (call $w (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "print") (param $p i32) (param $n i32) (result i64)
    (call $print (i32.const 1) (i32.const 100) (i32.const 10))
    (call $print (i32.const 2) (i32.const 200) (i32.const 10))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func (export "read_stdin") (param $p i32) (param $n i32) (result i64)
    ;; The guest's stdin carries the host's frames: it reads as empty.
    (i32.store (i32.const 0) (i32.const 300)) (i32.store (i32.const 4) (i32.const 16))
    (i32.store (i32.const 8) (i32.const 99))
    (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store8 (i32.const 300) (i32.add (i32.const 48) (i32.load (i32.const 8))))
    (i64.const 0x12c00000001))
  (func (export "exit") (param i32 i32) (result i64) (call $exit (i32.const 3)) (i64.const 0))
  (func (export "close_stdout") (param i32 i32) (result i64)
    (drop (call $close (i32.const 1))) (i64.const 0))
)"""


@pytest.fixture(scope="module")
def printer(sdk: Engine) -> Iterator[tuple[Sandbox, list[tuple[str, bytes]]]]:
    lines: list[tuple[str, bytes]] = []
    sandbox = Sandbox(
        PRINTER,
        engine=sdk,
        codec="raw",
        capabilities=["wasi"],
        wasi=WasiSettings(output=lambda stream, data: lines.append((stream, data))),
    )
    yield sandbox, lines
    sandbox.close()


class TestGuestOutput:
    def test_printing_keeps_the_framing_and_reaches_the_output(
        self, printer: tuple[Sandbox, list[tuple[str, bytes]]]
    ) -> None:
        sandbox, lines = printer
        lines.clear()
        assert sandbox.call("print", b"answer") == b"answer"
        assert lines == [("stdout", b"to stdout\n"), ("stderr", b"to stderr\n")]

    def test_guest_stdin_reads_as_empty(
        self, printer: tuple[Sandbox, list[tuple[str, bytes]]]
    ) -> None:
        sandbox, _ = printer
        assert sandbox.call("read_stdin", b"x") == b"0"

    def test_exit_mid_call_is_an_instance_error_and_the_process_is_replaced(
        self, printer: tuple[Sandbox, list[tuple[str, bytes]]]
    ) -> None:
        sandbox, _ = printer
        with pytest.raises(InstanceError) as caught:
            sandbox.call("exit", b"")
        assert caught.value.exit_code == 3
        assert sandbox.call("print", b"again") == b"again"

    def test_closing_stdout_is_a_typed_error(
        self, printer: tuple[Sandbox, list[tuple[str, bytes]]]
    ) -> None:
        sandbox, _ = printer
        with pytest.raises((InstanceError, CommunicationError)):
            sandbox.call("close_stdout", b"")
        assert sandbox.call("print", b"again") == b"again"


# -- a guest that breaks the protocol -------------------------------------------------------------

HELLO = r"\0b\00\00\00\08\00\00\00\01\00\00\00\00\00\00\00"


def raw_command(behaviour: str, data: str = "") -> bytes:
    """A WASI command that says hello like the wrapper, waits for a frame, then misbehaves."""
    return wat(f"""(module
      (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "{HELLO}")
      (data (i32.const 128) "{data}")
      (func $out (param $p i32) (param $n i32)
        (i32.store (i32.const 0) (local.get $p)) (i32.store (i32.const 4) (local.get $n))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      (func $wait (result i32)
        (i32.store (i32.const 16) (i32.const 1024)) (i32.store (i32.const 20) (i32.const 4096))
        (drop (call $r (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (i32.load (i32.const 24)))
      (func (export "_start")
        (call $out (i32.const 64) (i32.const 16))
        (drop (call $wait))
        {behaviour}
        ;; then hang on stdin until it closes
        (loop $l (br_if $l (call $wait)))))""")


def raw_instance(sdk: Engine, wasm: bytes, timeout: float | None = None) -> Any:
    from wasm_plugins.engine._module_types import read_module_types
    from wasm_plugins.engine._wasmer_sdk import SdkModule

    command = WasiCommand(wasm=wasm, functions=(("f", PLUGIN_TYPE),), globals=(), host_imports=())
    module = SdkModule(sdk, command, read_module_types(wasm))  # type: ignore[arg-type]
    return module.instantiate([], CallBudget(timeout=timeout))


class TestBrokenProtocol:
    @pytest.mark.parametrize(
        ("behaviour", "data", "error"),
        [
            ("(call $out (i32.const 128) (i32.const 8))", r"\63\00\00\00\00\00\00\00", "kind 99"),
            ("(call $out (i32.const 128) (i32.const 8))", r"\02\00\00\00\ff\ff\ff\7f", "announces"),
            ("(call $out (i32.const 128) (i32.const 9))", r"\02\00\00\00\01\00\00\00Z", "short"),
        ],
    )
    def test_garbage_frames_are_communication_errors(
        self, sdk: Engine, behaviour: str, data: str, error: str
    ) -> None:
        instance = raw_instance(sdk, raw_command(behaviour, data))
        with pytest.raises(CommunicationError) as caught:
            instance.call_abi(instance.export_function("f"), 0, 0)
        assert error in caught.value.message
        assert caught.value.channel == "guest-process"
        with pytest.raises(InstanceError):  # the process is gone: the instance says so
            instance.call_abi(instance.export_function("f"), 0, 0)

    @pytest.mark.parametrize(
        "behaviour",
        ["(drop (call $close (i32.const 1)))", "(call $exit (i32.const 9))"],
        ids=["closes-stdout", "exits"],
    )
    def test_dead_pipes_are_instance_errors(self, sdk: Engine, behaviour: str) -> None:
        instance = raw_instance(sdk, raw_command(behaviour))
        with pytest.raises(InstanceError):
            instance.call_abi(instance.export_function("f"), 0, 0)

    def test_a_silent_guest_is_stopped_at_the_deadline(self, sdk: Engine) -> None:
        """A guest that keeps its pipes open and never answers: the read has the deadline."""
        instance = raw_instance(sdk, raw_command(""), timeout=0.2)
        instance.arm()
        with pytest.raises(DeadlineExceeded):
            instance.call_abi(instance.export_function("f"), 0, 0)

    def test_garbage_instead_of_hello_is_refused_at_instantiation(self, sdk: Engine) -> None:
        hello = b"\x0b\x00\x00\x00\x08\x00\x00\x00"
        wasm = raw_command("").replace(hello, b"\xff" * 8)
        with pytest.raises(CommunicationError):
            raw_instance(sdk, wasm, timeout=30)


# -- limits ----------------------------------------------------------------------------------------


BURN_CHILD = f"""
import asyncio, sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from wasm_plugins import PluginHost
from wasm_plugins.errors import DeadlineExceeded
from wasm_plugins.sandbox import Limits, Sandbox

sandbox = Sandbox(Path({str(ABI)!r}), engine="wasmer-sdk", limits=Limits(timeout=0.1))
for _ in range(3):
    try:
        sandbox.call("loop_forever")
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("the endless loop returned")

async def cancel_one():
    with PluginHost(engine="wasmer-sdk") as host:
        host.load({{"name": "abi", "module": {{"path": {str(ABI)!r}}}}})
        call = asyncio.ensure_future(host.acall("abi", "loop_forever"))
        await asyncio.sleep(0.2)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass

asyncio.run(cancel_one())
wall, used = time.perf_counter(), time.process_time()
threading.Event().wait(0.5)
print((time.process_time() - used) / (time.perf_counter() - wall))
"""


def run_child(code: str) -> float:
    """Run ``code`` in a child process (a crash fails the test) and read its last line."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])


class TestLimits:
    def test_endless_loop_times_out_and_the_next_call_gets_a_fresh_process(
        self, sdk: Engine
    ) -> None:
        sandbox = Sandbox(ABI, engine=sdk, limits=Limits(timeout="300 ms"))
        first = sandbox._state().session.instance
        with pytest.raises(DeadlineExceeded) as caught:
            sandbox.call("loop_forever")
        assert caught.value.limit == pytest.approx(0.3)
        assert sandbox.call("echo", 1) == 1
        assert sandbox._state().session.instance is not first

    def test_a_timed_out_guest_stops_computing(self) -> None:
        """Killing the SDK process does not stop a guest that computes (it runs on a thread of
        the SDK's runtime in this process): every module is metered on this engine, so the guest
        asks the host for more fuel at least every slice, and a guest whose process is gone
        stops there. Three timed-out endless loops and a cancelled one, then this process burns
        next to no CPU (a guest still computing would burn a core)."""
        rate = run_child(BURN_CHILD)
        assert rate < 0.2, f"{rate:.2f} CPU seconds per second after the calls ended"

    def test_live_processes_are_bounded_least_recently_used_first(
        self, sdk: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from wasm_plugins.engine._wasmer_sdk import live_processes

        monkeypatch.setenv("WASM_PLUGINS_SDK_MAX_PROCESSES", "2")
        sandboxes = [Sandbox(ABI, engine=sdk) for _ in range(3)]
        for sandbox in sandboxes:
            assert sandbox.call("echo", "x") == "x"
        assert live_processes() <= 2
        # The first was closed (least recently used): its next call runs on a fresh process.
        assert sandboxes[0].call("echo", "again") == "again"
        assert live_processes() <= 2
        for sandbox in sandboxes:
            sandbox.close()


# -- host functions --------------------------------------------------------------------------------

REVERSER = f"""(module
  (import "test" "reverse" (func $reverse (param i32 i32) (result i32)))
  (memory (export "memory") 1) {ALLOC}
  (func (export "reverse") (param $p i32) (param $n i32) (result i64)
    (drop (call $reverse (local.get $p) (local.get $n)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n)))))"""


def _reverse(call: HostCall, ptr: int, length: int) -> int:
    data = call.memory.read(u32(ptr), u32(length))
    if data == b"fail":
        raise RuntimeError("the host function failed")
    call.memory.write(u32(ptr), data[::-1])
    return len(data)


REVERSE = HostFunction("test", "reverse", FuncSignature(("i32", "i32"), ("i32",)), _reverse)


SPIN = f"""(module (memory (export "memory") 1) {ALLOC}
  (func (export "spin") (param $n i32) (result i32)
    (local $total i32)
    (loop $again
      (local.set $total (i32.add (local.get $total) (i32.xor (local.get $n) (i32.const 7))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (local.get $total)))"""
TEXT_TOOLS = ROOT / "plugins" / "text-tools" / "src" / "wasm_plugins_text_tools" / "text_tools.wasm"


class TestFuel:
    """Fuel through the metering pass: the wrapped module calls the host's meter (a host call)
    only when its counter runs out."""

    def test_fuel_exhaustion_is_the_typed_error_and_the_next_call_works(self, sdk: Engine) -> None:
        sandbox = Sandbox(ABI, engine=sdk, limits=Limits(fuel=100_000))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("loop_forever")
        error = caught.value
        assert (error.resource, error.used, error.limit, error.unit) == (
            "fuel",
            100_000,
            100_000,
            "units",
        )
        assert error.context is not None and error.context.environment.engine == SDK_ENGINE
        assert error.context.environment.isolation == "sdk-process"
        assert sandbox.call("echo", "ok") == "ok"  # a fresh process
        assert sandbox.call("upper", "abc") == "ABC"

    def test_same_message_as_wasmtime(self, sdk: Engine) -> None:
        messages = []
        for engine in (sdk, engine_named("wasmtime")):
            with pytest.raises(ResourceLimitExceeded) as caught:
                Sandbox(ABI, engine=engine, limits=Limits(fuel=5000)).call("loop_forever")
            messages.append((caught.value.message, caught.value.suggestion))
        assert messages[0] == messages[1]

    def test_fuel_is_per_call(self, sdk: Engine) -> None:
        sandbox = Sandbox(ABI, engine=sdk, limits=Limits(fuel=5_000))
        for _ in range(50):
            assert sandbox.call("upper", "abc") == "ABC"

    def test_fuel_and_timeout_together(self, sdk: Engine) -> None:
        """Fuel stops an endless loop before a long deadline; the deadline stops one with
        plenty of fuel (the process is killed)."""
        sandbox = Sandbox(ABI, engine=sdk, limits=Limits(fuel=200_000, timeout=30.0))
        assert sandbox.call("echo", "ok") == "ok"
        with pytest.raises(ResourceLimitExceeded):
            sandbox.call("loop_forever")
        assert sandbox.call("echo", "ok") == "ok"
        timed = Sandbox(ABI, engine=sdk, limits=Limits(fuel=10**15, timeout="200 ms"))
        with pytest.raises(DeadlineExceeded):
            timed.call("loop_forever")
        assert timed.call("echo", 2) == 2

    def test_every_module_is_compiled_metered(self, sdk: Engine) -> None:
        """Whatever the limits, the sandbox meters the module for this engine (before it
        bounds the call depth, whose check must open every body)."""
        for limits in (Limits(), Limits(timeout=1.0), Limits(fuel=1000, timeout=1.0)):
            assert compiled_with_fuel(sdk, limits)

    def test_stack_overflow_is_named_with_fuel(self, sdk: Engine) -> None:
        """Metering and the call-depth bound together: the overflow is still a stack overflow."""
        sandbox = Sandbox(ABI, engine=sdk, limits=Limits(fuel=10**12))
        with pytest.raises(ExecutionError) as caught:
            sandbox.call("trap_stack_overflow")
        assert caught.value.trap == "stack_overflow"

    def test_start_function_is_stopped(self, sdk: Engine) -> None:
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(CONFORMANCE / "start_loop.wat", engine=sdk, limits=Limits(fuel=1000))
        assert caught.value.resource == "fuel"

    def test_memory_borrowed_before_the_scratch_buffer_is_restored(self, sdk: Engine) -> None:
        """The meter's first call comes from the start function, before the serving loop has a
        buffer: the words it borrows for its frames hold the module's data again after."""
        text = """(module
          (memory (export "memory") 1)
          (data (i32.const 8) "0123456789abcdefghijklmnopqrstuvwxyz")
          (global $started (mut i32) (i32.const 0))
          (func $start (global.set $started (i32.const 1)))
          (start $start)
          (func (export "wp_alloc") (param i32) (result i32) (i32.const 4096))
          (func (export "wp_free") (param i32 i32))
          (func (export "peek") (param i32 i32) (result i64)
            (i64.or (i64.shl (i64.const 8) (i64.const 32))
                    (i64.extend_i32_u (i32.add (i32.const 35) (global.get $started))))))"""
        sandbox = Sandbox(text, engine=sdk, limits=Limits(fuel=10_000), codec="raw")
        assert sandbox.call("peek", b"") == b"0123456789abcdefghijklmnopqrstuvwxyz"

    def test_units_equal_wasmtime_native_fuel(self, sdk: Engine) -> None:
        from tests.test_metering import _native_fuel

        wasm = wat(SPIN)
        instance = sdk.compile(meter_module(wasm), fuel=True).instantiate(
            [], CallBudget(fuel=10**9)
        )
        spin = instance.export_function("spin")
        for n in (1000, 5000):
            instance.arm()
            instance.call(spin, n)
            assert instance.fuel_consumed() == _native_fuel(wasm, "spin", n)
        instance.arm()
        assert instance.fuel_consumed() == 0

    def test_units_equal_on_a_real_plugin(self, sdk: Engine) -> None:
        from tests.test_metering import _native_fuel

        wasm = TEXT_TOOLS.read_bytes()
        data = b'{"text": "Hello wonderful world, creme brulee a la mode, hello world"}'
        instance = sdk.compile(meter_module(wasm), fuel=True).instantiate(
            [], CallBudget(fuel=10**9)
        )
        pointer = instance.call(instance.export_function("wp_alloc"), len(data))
        instance.memory.write(pointer, data)
        instance.arm()
        instance.call_abi(instance.export_function("word_count"), pointer, len(data))
        assert instance.fuel_consumed() == _native_fuel(wasm, "word_count", host=True, data=data)

    def test_one_budget_shared_by_every_entry(self, sdk: Engine) -> None:
        """Until the next arm every guest entry draws on the same fuel; arming refills it."""
        module = sdk.compile(meter_module(wat(SPIN)), fuel=True)
        instance = module.instantiate([], CallBudget(fuel=30_000))
        spin = instance.export_function("spin")
        instance.arm()
        instance.call(spin, 1000)
        first = instance.fuel_consumed()
        assert first is not None and 10_000 < first < 12_000
        instance.call(spin, 1000)
        assert instance.fuel_consumed() == 2 * first
        with pytest.raises(ResourceLimitExceeded):
            instance.call(spin, 1000)
        assert instance.fuel_consumed() == 30_000

    def test_metered_module_without_fuel_runs_unmetered(self, sdk: Engine) -> None:
        instance = sdk.compile(meter_module(wat(SPIN)), fuel=True).instantiate([], CallBudget())
        instance.arm()
        assert instance.call(instance.export_function("spin"), 100_000) != 0
        assert instance.fuel_consumed() is None

    def test_unmetered_module_refuses_fuel(self, sdk: Engine) -> None:
        """``fuel=True`` promises a module the sandbox metered: an unmetered one is refused."""
        with pytest.raises(ConfigurationError):
            sdk.compile(wat(SPIN), fuel=True)

    def test_a_module_compiled_without_fuel_is_metered_all_the_same(self, sdk: Engine) -> None:
        """Every module is metered on this engine (so that a guest whose process was killed
        stops computing): one compiled without ``fuel`` runs under a fuel budget too, and its
        meter is not among the imports the sandbox links."""
        module = sdk.compile(wat(ABI.read_text()))
        assert all(item.module != "__wasm_plugins_meter" for item in module.imports)
        instance = module.instantiate([], CallBudget(fuel=100_000))
        instance.arm()
        with pytest.raises(ResourceLimitExceeded):
            instance.call_abi(instance.export_function("loop_forever"), 0, 0)


class TestHostFunctions:
    def test_host_function_reads_and_writes_guest_memory(self, sdk: Engine) -> None:
        sandbox = Sandbox(REVERSER, engine=sdk, codec="raw", host_functions=[REVERSE])
        assert sandbox.call("reverse", b"abcdef") == b"fedcba"

    def test_failing_host_function_replaces_the_process(self, sdk: Engine) -> None:
        sandbox = Sandbox(REVERSER, engine=sdk, codec="raw", host_functions=[REVERSE])
        with pytest.raises(ExecutionError):
            sandbox.call("reverse", b"fail")
        assert sandbox.call("reverse", b"ok") == b"ko"


# -- exit ------------------------------------------------------------------------------------------

EXIT_CHILD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from wasm_plugins.sandbox import Sandbox

sandbox = Sandbox(Path({str(ABI)!r}), engine="wasmer-sdk")
assert sandbox.call("echo", 1) == 1
try:
    sandbox.call("trap_unreachable")
except Exception:
    pass

class Cycle:
    pass

cycle = Cycle()
cycle.cycle = cycle
cycle.sandbox = Sandbox(Path({str(ABI)!r}), engine="wasmer-sdk")
assert cycle.sandbox.call("echo", 2) == 2
del cycle
print("done")
"""


@pytest.mark.slow
def test_exit_after_using_the_engine_is_clean(sdk: Engine, tmp_path: Path) -> None:
    """SDK objects left in reference cycles are closed at exit, not by the final collection
    (which made a tokio thread call into a finalizing interpreter and abort). The SDK's
    compiled modules go to the framework's cache directory, not the working directory."""
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(EXIT_CHILD)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert "FATAL" not in done.stderr
        assert done.stdout.strip() == "done"
        assert not (tmp_path / ".wasmer").exists()


ENVIRON = f"""(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (memory (export "memory") 1) {ALLOC}
  (func (export "environ") (param i32 i32) (result i64)
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 16) (i32.const 1024)))
    (i64.or (i64.const 0x40000000000) (i64.extend_i32_u (i32.load (i32.const 4))))))"""


def test_wasi_environment_reaches_the_guest(sdk: Engine) -> None:
    """The granted environment is the SDK process's environment, and nothing else is."""
    sandbox = Sandbox(
        ENVIRON,
        engine=sdk,
        codec="raw",
        capabilities=["wasi"],
        wasi=WasiSettings(environment=(("GREETING", "hello"),)),
    )
    variables = sandbox.call("environ", b"").split(b"\0")
    assert b"GREETING=hello" in variables
    assert not any(v.startswith(b"PATH=") or v.startswith(b"HOME=") for v in variables)


REACTOR = f"""(module
  (memory (export "memory") 1) {ALLOC}
  (global $ready (mut i32) (i32.const 0))
  (data (i32.const 100) "0123")
  (func (export "_initialize") (global.set $ready (i32.const 2)))
  (func (export "ready") (param i32 i32) (result i64)
    (i64.or (i64.const 0x6400000000) (i64.extend_i32_u (global.get $ready)))))"""


def test_a_reactor_module_runs_and_is_initialized(sdk: Engine) -> None:
    """A module exporting _initialize is served (the SDK would run it as a reactor, and spawning
    it would hang), and _initialize runs before the first call."""
    sandbox = Sandbox(REACTOR, engine=sdk, codec="raw")
    assert sandbox.call("ready", b"") == b"01"


SPINNER = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) {ALLOC}
  (data (i32.const 100) "spinning")
  (func (export "spin") (param i32 i32) (result i64)
    (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 8))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))
    (i64.const 0)))"""


def test_a_watched_call_is_cancelled_and_the_process_replaced(sdk: Engine) -> None:
    """Cancelling a running call (as an awaited call's cancellation does) kills its process."""
    from wasm_plugins.errors import CallCancelled

    cancelled = threading.Event()
    sandbox = Sandbox(
        SPINNER,
        engine=sdk,
        codec="raw",
        capabilities=["wasi"],
        # The guest's first output says it is running: the cancellation comes mid-call.
        wasi=WasiSettings(output=lambda stream, data: cancelled.set()),
    )
    assert sandbox.watch(cancelled)
    with pytest.raises(CallCancelled):
        sandbox.call("spin", b"")
    sandbox.watch(None)
    cancelled.clear()
    assert sandbox.instances == 0


def test_the_instance_made_for_an_evicted_one_watches_what_it_watched(sdk: Engine) -> None:
    """An instance whose idle process was closed is replaced within the next call: the new one
    watches the cancellation the old one watched (a thread of awaited calls asks its sandbox to
    watch only once while its calls return)."""
    cancelled = threading.Event()
    sandbox = Sandbox(ABI, engine=sdk)
    try:
        assert sandbox.call("echo", {"n": 1}) == {"n": 1}
        assert sandbox.watch(cancelled)
        old = sandbox._local.state.session.instance
        assert old.evict()
        assert sandbox.call("echo", {"n": 2}) == {"n": 2}
        new = sandbox._local.state.session.instance
        assert new is not old
        assert new._cancelled is cancelled
    finally:
        sandbox.close()
