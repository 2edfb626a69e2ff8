"""Engine conformance: every available engine turns every failure into the same typed error.

Each test runs once per engine (the ``engine`` fixture); after every failure the same Sandbox must
answer a good call correctly.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ALL_ENGINE_NAMES, CONFORMANCE, ENGINE_NAMES, EXAMPLES, engine_named
from wasm_plugins.engine import CallBudget, Engine, FuncSignature, HostImport
from wasm_plugins.errors import (
    CommunicationError,
    CompilationError,
    ConfigurationError,
    DeadlineExceeded,
    ExecutionError,
    InstanceError,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
    SecurityViolation,
)
from wasm_plugins.sandbox import HostCall, HostFunction, Limits, Sandbox

ABI = CONFORMANCE / "abi.wat"


@pytest.fixture(params=ALL_ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Every engine, wasmer-sdk (out of process) included."""
    return engine_named(request.param)


def assert_still_answers(sandbox: Sandbox) -> None:
    """The sandbox that just failed answers a good call correctly."""
    assert sandbox.call("echo", {"still": ["here", 1]}) == {"still": ["here", 1]}
    assert sandbox.call("upper", "abc") == "ABC"


def fails_with(
    sandbox: Sandbox, function: str, error_type: type[PluginError], value: Any = None
) -> Any:
    with pytest.raises(error_type) as caught:
        sandbox.call(function, value)
    assert_still_answers(sandbox)
    return caught.value


class TestGoodCalls:
    def test_echo_round_trips_json(self, engine: Engine) -> None:
        """A JSON document goes through the guest and comes back equal."""
        sandbox = Sandbox(ABI, engine=engine)
        document = {"text": "héllo wörld", "n": [1, 2.5, None, True], "nested": {"a": {}}}
        assert sandbox.call("echo", document) == document

    def test_guest_owned_output(self, engine: Engine) -> None:
        """Output written to a guest-owned buffer is read back correctly, across sizes."""
        sandbox = Sandbox(ABI, engine=engine)
        for size in (0, 1, 255, 256, 257, 10_000, 100_000):
            text = "ab" * (size // 2)
            assert sandbox.call("upper", text) == text.upper()

    def test_raw_codec(self, engine: Engine) -> None:
        """The raw codec passes bytes through unchanged, including bytes that are not UTF-8."""
        sandbox = Sandbox(ABI, engine=engine, codec="raw")
        payload = bytes(range(256)) * 3
        assert sandbox.call("echo", payload) == payload

    def test_example_plugin(self, engine: Engine) -> None:
        """The documented example plugin works as written."""
        sandbox = Sandbox(EXAMPLES / "echo.wat", engine=engine, functions=["echo"])
        assert sandbox.functions == ("echo",)
        assert sandbox.call("echo", [1, "two"]) == [1, "two"]

    def test_binary_source_and_path(self, engine: Engine, tmp_path: Path) -> None:
        """Bytes and a .wasm path load the same module as WAT text."""
        wasm = engine.wat_to_wasm(ABI.read_text())
        (tmp_path / "abi.wasm").write_bytes(wasm)
        assert Sandbox(wasm, engine=engine).call("upper", "x") == "X"
        assert Sandbox(tmp_path / "abi.wasm", engine=engine).call("upper", "y") == "Y"

    def test_serialized_module_round_trip(self, engine: Engine) -> None:
        """A compiled module serializes and deserializes into a module that runs."""
        module = engine.compile(engine.wat_to_wasm(ABI.read_text()))
        again = engine.deserialize(module.serialize())
        assert {e.name for e in again.exports} == {e.name for e in module.exports}
        from wasm_plugins.sandbox import Session, abi_host_functions

        session = Session()
        imports = [
            HostImport(
                f.module,
                f.name,
                f.signature,
                lambda memory, *a, f=f: f.implementation(HostCall(memory, "p", session), *a),
            )
            for f in abi_host_functions()
        ]
        session.attach(again.instantiate(imports, CallBudget()))
        assert json.loads(session.invoke(session.function("upper"), b'"ok"', 100)) == "OK"


class TestLoadErrors:
    def test_wat_syntax_error(self, engine: Engine) -> None:
        """WAT that does not parse is a compilation error with line and column."""
        with pytest.raises(CompilationError) as caught:
            Sandbox('(module\n  (func (export "f")\n    i32.add', engine=engine)
        diagnostic = caught.value.diagnostics[0]
        assert (diagnostic.line, diagnostic.column) == (3, 12)
        assert "line 3, column 12" in caught.value.message

    @pytest.mark.parametrize(
        ("data", "offset"),
        [
            (b"garbage that is not wasm", 0),
            (b"\0asm\1\0\0\0\1\5", 10),
            (b"\0asm\2\0\0\0", 4),
            (b"", 0),
        ],
    )
    def test_garbage_and_truncated_bytes(self, engine: Engine, data: bytes, offset: int) -> None:
        """Bytes that are not a module are a module error with the offset of the problem."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(data, engine=engine)
        assert caught.value.validation_errors[0].offset == offset

    def test_module_that_does_not_validate(self, engine: Engine) -> None:
        """A well-formed module with a type error is a module error, with the offset."""
        wasm = engine.wat_to_wasm("(module (func (result i32) i64.const 1))")
        with pytest.raises(ModuleError) as caught:
            Sandbox(wasm, engine=engine)
        issue = caught.value.validation_errors[0]
        assert "type mismatch" in issue.message
        assert issue.offset is not None and issue.offset > 8

    def test_missing_abi_export(self, engine: Engine) -> None:
        """A module without wp_alloc is refused, naming the export."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(CONFORMANCE / "no_alloc.wat", engine=engine)
        assert caught.value.missing_export == "wp_alloc"
        assert "wp_alloc" in caught.value.message

    def test_missing_declared_function(self, engine: Engine) -> None:
        """A declared function the module does not export is refused, naming it."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(ABI, engine=engine, functions=["echo", "word_count"])
        assert caught.value.missing_export == "word_count"

    def test_declared_function_with_wrong_type(self, engine: Engine) -> None:
        """A declared function with another type than (i32, i32) -> i64 is refused."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(ABI, engine=engine, functions=["not_a_plugin_function"])
        assert "(i32) -> (i32)" in caught.value.message

    def test_start_function_trap(self, engine: Engine) -> None:
        """A trap in the start function is an instance error."""
        with pytest.raises(InstanceError) as caught:
            Sandbox(CONFORMANCE / "start_trap.wat", engine=engine)
        assert caught.value.state == "instantiating"
        assert "unreachable" in caught.value.message

    def test_initial_memory_over_limit(self, engine: Engine) -> None:
        """A module whose initial memory is over the limit fails at load with the figures."""
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(CONFORMANCE / "big_initial_memory.wat", engine=engine)
        error = caught.value
        assert (error.resource, error.used, error.limit) == ("memory", 100 * 2**20, 64 * 2**20)
        assert error.message == "Resource limit exceeded: memory - used 100 MiB, limit 64 MiB"

    def test_unresolved_import(self, engine: Engine) -> None:
        """An import no host function provides is a module error naming it."""
        wat = ABI.read_text().replace(
            '(import "wasm_plugins" "error"',
            '(import "env" "launch_missiles" (func (param i32)))\n  (import "wasm_plugins" "error"',
        )
        with pytest.raises(ModuleError) as caught:
            Sandbox(wat, engine=engine)
        assert "env.launch_missiles" in caught.value.message

    def test_capability_denied_at_load(self, engine: Engine) -> None:
        """Importing a host function whose capability is not granted is a security violation."""
        calls: list[int] = []

        def tick(call: HostCall) -> int:
            calls.append(1)
            return 42

        clock = HostFunction(
            module="wasm_plugins",
            name="clock_now",
            signature=FuncSignature((), ("i64",)),
            implementation=tick,
            capability="clock",
        )
        wat = """(module
          (import "wasm_plugins" "clock_now" (func $now (result i64)))
          (memory (export "memory") 1)
          (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "wp_free") (param i32 i32))
          (func (export "now") (param i32 i32) (result i64)
            (local $v i32)
            (local.set $v (i32.wrap_i64 (call $now)))
            (i32.store8 (i32.const 0)
              (i32.add (i32.const 48) (i32.div_u (local.get $v) (i32.const 10))))
            (i32.store8 (i32.const 1)
              (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
            (i64.const 2)))"""
        with pytest.raises(SecurityViolation) as caught:
            Sandbox(wat, engine=engine, host_functions=[clock])
        assert caught.value.capability == "clock"
        assert caught.value.resource == "wasm_plugins.clock_now"
        assert calls == []
        granted = Sandbox(wat, engine=engine, host_functions=[clock], capabilities={"clock"})
        assert granted.call("now") == 42
        assert calls == [1]

    def test_wasi_import_needs_capability(self, engine: Engine) -> None:
        """A module importing WASI without the wasi capability is refused."""
        wat = ABI.read_text().replace(
            '(import "wasm_plugins" "error"',
            '(import "wasi_snapshot_preview1" "fd_write"'
            " (func (param i32 i32 i32 i32) (result i32)))\n"
            '  (import "wasm_plugins" "error"',
        )
        with pytest.raises(SecurityViolation) as caught:
            Sandbox(wat, engine=engine)
        assert caught.value.capability == "wasi"


class TestTraps:
    @pytest.mark.parametrize(
        ("function", "trap"),
        [
            ("trap_unreachable", "unreachable"),
            ("trap_divide_by_zero", "integer_divide_by_zero"),
            ("trap_out_of_bounds", "memory_out_of_bounds"),
            ("trap_stack_overflow", "stack_overflow"),
        ],
    )
    def test_trap_is_runtime_error_with_frames(
        self, engine: Engine, function: str, trap: str
    ) -> None:
        """Each trap is a runtime error with its canonical name and the guest's frames."""
        sandbox = Sandbox(ABI, engine=engine, name="conformance")
        error = fails_with(sandbox, function, ExecutionError)
        assert error.trap == trap
        assert error.guest_stack, "the guest frames are reported"
        assert error.context is not None and error.context.guest_stack == error.guest_stack
        assert (error.plugin, error.function) == ("conformance", function)
        assert error.context.environment.engine == engine.name

    def test_stack_overflow_keeps_few_frames(self, engine: Engine) -> None:
        """A stack overflow reports a bounded number of frames, all of the recursing function."""
        sandbox = Sandbox(ABI, engine=engine)
        error = fails_with(sandbox, "trap_stack_overflow", ExecutionError)
        assert 1 <= len(error.guest_stack) <= 32
        assert {frame.function for frame in error.guest_stack} == {"recurse"}
        assert len(error.message) < 300

    def test_guest_reported_error(self, engine: Engine) -> None:
        """An error the guest reports is a runtime error that keeps its message and details."""
        sandbox = Sandbox(ABI, engine=engine)
        error = fails_with(sandbox, "guest_error", ExecutionError)
        assert error.trap == "guest_error"
        assert error.details == {"message": "input rejected", "details": {"field": "text"}}
        assert "input rejected" in error.message

    def test_guest_error_pointer_out_of_bounds(self, engine: Engine) -> None:
        """A guest that reports an error from outside its memory gets a communication error."""
        sandbox = Sandbox(ABI, engine=engine)
        error = fails_with(sandbox, "error_out_of_bounds", CommunicationError)
        assert error.channel == "guest-memory"


DIRTY = """
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $marked (export "marked") (mut i32) (i32.const 0))
  (func (export "wp_alloc") (param $size i32) (result i32) (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))
  ;; Marks the instance: a byte of memory and a global.
  (func $mark (memory.fill (i32.const 64) (i32.const 88) (i32.const 4))
    (global.set $marked (i32.const 1)))
  (func (export "mark") (param i32 i32) (result i64) (call $mark) (i64.const 0))
  (func (export "mark_then_trap") (param i32 i32) (result i64) (call $mark) unreachable)
  ;; The 4 bytes at 64, then '0' + the global: "\0\0\0\00" in an unmarked instance.
  (func (export "peek") (param i32 i32) (result i64)
    (i32.store8 (i32.const 68) (i32.add (global.get $marked) (i32.const 48)))
    (i64.const 274877906949))
)
"""
"""A module whose calls can mark their instance (memory and a global), then trap or not."""

UNMARKED = b"\0\0\0\0" + b"0"
MARKED = b"XXXX1"


class TestAfterATrap:
    """A trapped instance is never reused: whatever the trapping call wrote is gone, however
    the sandbox makes the next instance (kept handles, imports or a spare instance)."""

    def test_an_instance_that_returned_keeps_what_the_call_wrote(self, engine: Engine) -> None:
        """(The control: an instance that returned normally serves the next call.)"""
        sandbox = Sandbox(DIRTY, engine=engine, codec="raw")
        assert sandbox.call("peek", b"") == UNMARKED
        sandbox.call("mark", b"")
        assert sandbox.call("peek", b"") == MARKED

    def test_the_next_call_sees_nothing_the_trapping_call_wrote(self, engine: Engine) -> None:
        sandbox = Sandbox(DIRTY, engine=engine, codec="raw")
        for _ in range(3):
            with pytest.raises(ExecutionError) as caught:
                sandbox.call("mark_then_trap", b"")
            assert caught.value.trap == "unreachable"
            assert sandbox.call("peek", b"") == UNMARKED
            # The next instance serves later calls as usual.
            sandbox.call("mark", b"")
            assert sandbox.call("peek", b"") == MARKED

    def test_an_export_that_is_no_function_is_refused(self, engine: Engine) -> None:
        """A memory or a global named as a plugin function is a module error, before the guest
        runs; the instance is not touched and serves the next call."""
        sandbox = Sandbox(DIRTY, engine=engine, codec="raw")
        sandbox.call("mark", b"")
        for name in ("memory", "marked", "nothing"):
            with pytest.raises(ModuleError) as caught:
                sandbox.call(name, b"")
            assert caught.value.missing_export == name
        assert sandbox.call("peek", b"") == MARKED

    def test_each_trap_is_a_new_error_object(self, engine: Engine) -> None:
        """Errors are annotated and handed to callers, so two traps never share one object
        (nor its guest stack's tuple or details)."""
        sandbox = Sandbox(DIRTY, engine=engine, codec="raw")
        errors = []
        for _ in range(2):
            with pytest.raises(ExecutionError) as caught:
                sandbox.call("mark_then_trap", b"")
            errors.append(caught.value)
        first, second = errors
        assert first is not second
        assert first.details is not second.details
        assert first.context is not second.context
        assert (first.message, first.trap, first.guest_stack, first.details) == (
            second.message,
            second.trap,
            second.guest_stack,
            second.details,
        )


class TestTrappedInstanceRelease:
    @pytest.fixture(params=ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """The engines whose instances live in this process."""
        return engine_named(request.param)

    def test_a_trapped_instance_is_released_without_the_garbage_collector(
        self, engine: Engine
    ) -> None:
        """Once the caller drops the error, nothing keeps the trapped instance alive: a cycle
        through the error's traceback would hold it (and its memory) until a collection."""
        sandbox = Sandbox(DIRTY, engine=engine, codec="raw")
        instance = weakref.ref(sandbox._state().session.instance)
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(ExecutionError):
                sandbox.call("mark_then_trap", b"")
            assert sandbox.instances == 0
            assert instance() is None
        finally:
            gc.enable()


FREEING = """
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (global $freed (mut i32) (i32.const 0))
  (func (export "wp_alloc") (param $size i32) (result i32) (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  ;; Records the sizes freed, added up.
  (func (export "wp_free") (param i32 i32)
    (global.set $freed (i32.add (global.get $freed) (local.get 1))))
  ;; The sizes freed so far, as 4 little-endian bytes at 16.
  (func (export "freed") (param i32 i32) (result i64)
    (i32.store (i32.const 16) (global.get $freed))
    (i64.const 68719476740))
)
"""


class TestInputBuffer:
    def test_a_larger_input_frees_the_buffer_it_replaces(self, engine: Engine) -> None:
        """The input buffer comes from wp_alloc and goes back to wp_free when a larger input
        replaces it (the smallest is 256 bytes, then powers of two)."""
        sandbox = Sandbox(FREEING, engine=engine, codec="raw")
        assert sandbox.call("freed", b"x") == (0).to_bytes(4, "little")
        assert sandbox.call("freed", b"x" * 200) == (0).to_bytes(4, "little")
        assert sandbox.call("freed", b"x" * 300) == (256).to_bytes(4, "little")
        assert sandbox.call("freed", b"x" * 1000) == (256 + 512).to_bytes(4, "little")


class TestWasmerTrapText:
    """The reading of Wasmer's trap text (kept per text, as a plugin traps the same way again)."""

    TEXT = "unreachable\n    at boom (<module>[3]:0x177)\n    at <unnamed> (<module>[1]:0x20)"

    def test_the_same_text_gives_equal_but_separate_errors(self) -> None:
        from wasm_plugins.engine._traps import wasmer_trap

        first, second = wasmer_trap(self.TEXT), wasmer_trap(self.TEXT)
        assert first is not second and first.details is not second.details
        assert (first.trap, first.message, first.guest_stack) == (
            second.trap,
            second.message,
            second.guest_stack,
        )
        assert [frame.function for frame in first.guest_stack] == ["boom", None]
        assert first.guest_stack[0].module_offset == 0x177
        # Annotating one error leaves the next one of the same text untouched.
        first.plugin = "mine"
        assert wasmer_trap(self.TEXT).plugin is None

    def test_texts_are_told_apart(self) -> None:
        from wasm_plugins.engine._traps import wasmer_trap

        assert wasmer_trap(self.TEXT).trap == "unreachable"
        other = wasmer_trap(self.TEXT.replace("unreachable", "integer divide by zero"))
        assert other.trap == "integer_divide_by_zero"
        assert wasmer_trap(self.TEXT).trap == "unreachable"

    def test_a_deep_stack_is_read_but_not_kept(self) -> None:
        from wasm_plugins.engine import _traps

        text = "call stack exhausted" + "\n    at recurse (<module>[2]:0x40)" * 5000
        error = _traps.wasmer_trap(text)
        assert error.trap == "stack_overflow"
        assert len(error.guest_stack) == _traps.MAX_FRAMES
        assert "(+4968 more frames)" in error.message
        assert text not in _traps._PARSED


class TestResults:
    def test_result_pointer_outside_memory(self, engine: Engine) -> None:
        """A result outside guest memory is a communication error, and nothing is read."""
        sandbox = Sandbox(ABI, engine=engine)
        memory = sandbox._state().session.instance.memory
        reads: list[tuple[int, int]] = []
        original = memory.read

        def recording_read(ptr: int, length: int) -> bytes:
            reads.append((ptr, length))
            return original(ptr, length)

        memory.read = recording_read  # type: ignore[method-assign]
        for function in ("bad_pointer", "pointer_past_end"):
            with pytest.raises(CommunicationError) as caught:
                sandbox.call(function)
            assert caught.value.channel == "guest-output"
        assert all(ptr + length <= memory.size() for ptr, length in reads)
        assert reads == []
        assert_still_answers(sandbox)

    def test_output_not_json(self, engine: Engine) -> None:
        """Output that is not JSON is a communication error quoting its start."""
        sandbox = Sandbox(ABI, engine=engine)
        error = fails_with(sandbox, "bad_json", CommunicationError)
        assert "{not json" in error.message

    def test_output_over_limit(self, engine: Engine) -> None:
        """Output over max_output is a resource limit error with its size."""
        sandbox = Sandbox(ABI, engine=engine, limits=Limits(max_output="1 KiB"))
        error = fails_with(sandbox, "whole_memory", ResourceLimitExceeded)
        assert (error.resource, error.limit) == ("output", 1024)
        assert error.used is not None and error.used >= 65536

    def test_input_over_limit(self, engine: Engine) -> None:
        """Input over max_input is refused before the guest runs."""
        sandbox = Sandbox(ABI, engine=engine, limits=Limits(max_input=100))
        error = fails_with(sandbox, "echo", ResourceLimitExceeded, "x" * 200)
        assert (error.resource, error.used, error.limit) == ("input", 202, 100)

    def test_unencodable_input(self, engine: Engine) -> None:
        """An input the codec cannot encode is a typed error and nothing reaches the guest."""
        sandbox = Sandbox(ABI, engine=engine)
        for value in ({1, 2}, float("nan"), object()):
            with pytest.raises(CommunicationError) as caught:
                sandbox.call("echo", value)
            assert caught.value.direction == "host-to-guest"
        with pytest.raises(CommunicationError):
            Sandbox(ABI, engine=engine, codec="raw").call("echo", "not bytes")

    def test_unknown_function(self, engine: Engine) -> None:
        """Calling a function the module does not export names it."""
        sandbox = Sandbox(ABI, engine=engine)
        for name in ("nope", "memory", "wp_alloc", "not_a_plugin_function"):
            error = fails_with(sandbox, name, ModuleError)
            assert error.missing_export == name


class TestLimits:
    def test_memory_growth_past_limit(self, engine: Engine) -> None:
        """Growing memory past the limit is a resource limit error with used and limit."""
        limit = 4 * 2**20
        sandbox = Sandbox(ABI, engine=engine, limits=Limits(memory=limit))
        error = fails_with(sandbox, "memory_bomb", ResourceLimitExceeded)
        assert error.resource == "memory"
        assert error.limit == limit
        assert error.used is not None and limit < error.used <= limit + 16 * 65536
        assert error.message.startswith("Resource limit exceeded: memory - used 4.")
        assert error.percentage is not None and error.percentage > 100
        assert isinstance(error.__cause__, ExecutionError)

    def test_imported_memory_is_limited(self, engine: Engine) -> None:
        """An imported memory gets the same maximum as a defined one."""
        limit = 2 * 2**20
        sandbox = Sandbox(
            CONFORMANCE / "imported_memory.wat", engine=engine, limits=Limits(memory=limit)
        )
        assert sandbox.link_plan.memory is not None
        assert sandbox.link_plan.memory.maximum == 32
        error = fails_with_echo_only(sandbox, "memory_bomb")
        assert (error.resource, error.limit) == ("memory", limit)

    def test_unenforceable_limits_are_refused(self, engine: Engine) -> None:
        """An engine that cannot enforce a limit in-process refuses it at load, saying why."""
        for limits, field in (
            (Limits(timeout=1), "limits.timeout"),
            (Limits(fuel=10_000), "limits.fuel"),
        ):
            if getattr(engine.features, field.removeprefix("limits.")):
                Sandbox(ABI, engine=engine, limits=limits)
                continue
            with pytest.raises(ConfigurationError) as caught:
                Sandbox(ABI, engine=engine, limits=limits)
            assert caught.value.field == field
            assert caught.value.suggestion is not None and "wasmtime" in caught.value.suggestion


def fails_with_echo_only(sandbox: Sandbox, function: str) -> ResourceLimitExceeded:
    with pytest.raises(ResourceLimitExceeded) as caught:
        sandbox.call(function)
    assert sandbox.call("echo", "ok") == "ok"
    return caught.value


class TestWasmtimeDeadlines:
    def test_endless_loop_times_out(self, wasmtime_engine: Engine) -> None:
        """An endless loop under a timeout ends in a timeout error with the duration."""
        sandbox = Sandbox(ABI, engine=wasmtime_engine, limits=Limits(timeout="50 ms"))
        error = fails_with(sandbox, "loop_forever", DeadlineExceeded)
        assert error.limit == pytest.approx(0.05)
        assert error.duration is not None and error.duration >= 0.05

    def test_late_ticks_arriving_together_do_not_stop_a_call_early(
        self, wasmtime_engine: Engine
    ) -> None:
        """Epoch ticks that were late when a deadline was armed (a loaded machine) may all arrive
        at once: the guest still gets its whole timeout. Here the guest makes 10 000 ticks (20 s
        of ticks) itself in a few milliseconds, under a 10 s timeout, and returns normally."""
        raw = wasmtime_engine.wasmtime_engine(False)  # type: ignore[attr-defined]

        def burst(call: HostCall) -> int:
            for _ in range(10_000):
                raw.increment_epoch()
            return 0

        module = """(module
          (import "test" "burst" (func $burst (result i64)))
          (memory (export "memory") 1)
          (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
          (func (export "wp_free") (param i32 i32))
          (data (i32.const 16) "\\22ok\\22")
          (func (export "after_burst") (param $left i32) (param i32) (result i64)
            (drop (call $burst))
            ;; A loop: its back edge is where wasmtime looks at the epoch deadline.
            (local.set $left (i32.const 100))
            (loop $again
              (br_if $again (local.tee $left (i32.sub (local.get $left) (i32.const 1)))))
            (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 4))))"""
        sandbox = Sandbox(
            module,
            engine=wasmtime_engine,
            limits=Limits(timeout=10.0),
            host_functions=(HostFunction("test", "burst", FuncSignature((), ("i64",)), burst),),
        )
        assert sandbox.call("after_burst") == "ok"

    def test_fuel_exhaustion(self, wasmtime_engine: Engine) -> None:
        """An endless loop under a fuel limit ends in a fuel resource error."""
        sandbox = Sandbox(ABI, engine=wasmtime_engine, limits=Limits(fuel=100_000))
        error = fails_with(sandbox, "loop_forever", ResourceLimitExceeded)
        assert (error.resource, error.limit, error.unit) == ("fuel", 100_000, "units")

    def test_fuel_is_per_call(self, wasmtime_engine: Engine) -> None:
        """Fuel is refilled for every call: many cheap calls never run out."""
        sandbox = Sandbox(ABI, engine=wasmtime_engine, limits=Limits(fuel=5_000))
        for _ in range(200):
            assert sandbox.call("upper", "abc") == "ABC"

    def test_start_function_loop_times_out(self, wasmtime_engine: Engine) -> None:
        """A start function that never returns is stopped by the timeout at load."""
        with pytest.raises(DeadlineExceeded) as caught:
            Sandbox(
                CONFORMANCE / "start_loop.wat", engine=wasmtime_engine, limits=Limits(timeout=0.05)
            )
        assert caught.value.operation == "instantiation"

    def test_start_function_runs_out_of_fuel(self, wasmtime_engine: Engine) -> None:
        """A start function that never returns is stopped by fuel at load."""
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(
                CONFORMANCE / "start_loop.wat", engine=wasmtime_engine, limits=Limits(fuel=1000)
            )
        assert caught.value.resource == "fuel"


class TestEngineFastPath:
    def test_wasmtime_calls_go_through_the_fast_path(self, wasmtime_engine: Engine) -> None:
        """The installed wasmtime has the symbols the fast path needs, so the conformance tests
        exercise it (a release without them would silently fall back to the public API)."""
        from wasm_plugins.engine import _wasmtime

        assert _wasmtime.FAST_PATH
        sandbox = Sandbox(ABI, engine=wasmtime_engine)
        instance: Any = sandbox._state().session.instance
        assert instance._unguarded
        assert sandbox.call("upper", "abc" * 50_000) == "ABC" * 50_000  # memory grows
        assert sandbox.call("echo", {"after": "growth"}) == {"after": "growth"}

    def test_only_the_guest_call_releases_the_gil(self, wasmtime_engine: Engine) -> None:
        """The C functions that read or set a field, and the copy of the input, keep the GIL
        (releasing it hands it to a thread waiting with Python work, and the call then waits
        for that thread's turn); the guest call releases it, so guests run in parallel."""
        import ctypes

        from wasm_plugins.engine import _wasmtime

        keeps_gil = ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
        for function in (
            _wasmtime._memory_data,
            _wasmtime._memory_data_size,
            _wasmtime._set_epoch_deadline,
            _wasmtime._memmove,
        ):
            assert function._flags_ & keeps_gil, function
        assert not _wasmtime._call_unchecked._flags_ & keeps_gil
        # Watching a store for cancellation sets its deadline through the same function.
        sandbox = Sandbox(ABI, engine=wasmtime_engine)
        assert sandbox.watch(threading.Event())
        assert sandbox.call("upper", "abc") == "ABC"
        sandbox.watch(None)
        assert sandbox.call("upper", "abc") == "ABC"
