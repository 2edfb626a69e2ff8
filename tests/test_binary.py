"""Tests for wasm_plugins.sandbox._binary: memory clamping and memory.grow instrumentation."""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_plugins.sandbox._binary import (
    GROW_PROBE_EXPORT,
    PAGE_SIZE,
    MemoryInfo,
    PreparedModule,
    WasmBinaryError,
    prepare_module,
    read_memories,
)

_FEATURES = (
    "wasm_multi_memory",
    "wasm_memory64",
    "wasm_custom_page_sizes",
    "wasm_exceptions",
    "wasm_threads",
    "wasm_function_references",
    "wasm_gc",
    "wasm_tail_call",
    "wasm_simd",
    "wasm_relaxed_simd",
)


@functools.cache
def _engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    for feature in _FEATURES:
        setattr(config, feature, True)
    config.shared_memory = True
    return wasmtime.Engine(config)


def _wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def _validates(wasm: bytes) -> bool:
    try:
        wasmtime.Module.validate(_engine(), wasm)
    except wasmtime.WasmtimeError:
        return False
    return True


class _Running:
    """A module instantiated in its own store, with call and global helpers."""

    def __init__(self, wasm: bytes, imports: list[Any] | None = None) -> None:
        engine = _engine()
        self.store = wasmtime.Store(engine)
        module = wasmtime.Module(engine, wasm)
        resolved = [make(self.store) for make in imports or []]
        self.instance = wasmtime.Instance(self.store, module, resolved)
        self.exports = self.instance.exports(self.store)

    def call(self, name: str, *args: Any) -> Any:
        func = self.exports[name]
        assert isinstance(func, wasmtime.Func)
        return func(self.store, *args)

    def global_value(self, name: str) -> Any:
        global_ = self.exports[name]
        assert isinstance(global_, wasmtime.Global)
        return global_.value(self.store)

    def _memory(self, name: str) -> wasmtime.Memory:
        memory = self.exports[name]
        assert isinstance(memory, wasmtime.Memory)
        return memory

    def memory_max(self, name: str = "memory") -> int | None:
        return self._memory(name).type(self.store).limits.max

    def memory_pages(self, name: str = "memory") -> int:
        return self._memory(name).size(self.store)


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    """(id, payload) of every section, independently of the module under test."""
    out = []
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, body = _leb(wasm, pos + 1)
        out.append((section_id, wasm[body : body + size]))
        pos = body + size
    return out


def _section(wasm: bytes, section_id: int) -> bytes | None:
    for found_id, payload in _sections(wasm):
        if found_id == section_id:
            return payload
    return None


def _custom_sections(wasm: bytes) -> list[bytes]:
    return [payload for section_id, payload in _sections(wasm) if section_id == 0]


GROWER = """
(module
  (memory (export "memory") {memory})
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "size") (result i32) (memory.size)))
"""


def _grower(memory: str) -> bytes:
    return _wasm(GROWER.format(memory=memory))


class TestReadMemories:
    def test_defined_memory_without_maximum(self) -> None:
        """A plain defined memory reports its initial size in bytes and no maximum."""
        assert read_memories(_grower("2")) == (
            MemoryInfo(
                index=0,
                imported=False,
                initial_bytes=2 * PAGE_SIZE,
                maximum_bytes=None,
                memory64=False,
                shared=False,
            ),
        )

    def test_imported_memories_come_first(self) -> None:
        """Imported memories take the low indices, defined ones follow."""
        wasm = _wasm('(module (import "env" "m" (memory 1 3)) (memory 4 8))')
        infos = read_memories(wasm)
        assert [(m.index, m.imported) for m in infos] == [(0, True), (1, False)]
        assert infos[0].maximum_bytes == 3 * PAGE_SIZE
        assert infos[1].initial_bytes == 4 * PAGE_SIZE

    def test_memory64_and_shared_flags(self) -> None:
        """The memory64 and shared flags are reported."""
        wasm = _wasm("(module (memory i64 1 2) (memory 1 2 shared))")
        infos = read_memories(wasm)
        assert (infos[0].memory64, infos[0].shared) == (True, False)
        assert (infos[1].memory64, infos[1].shared) == (False, True)

    def test_custom_page_size(self) -> None:
        """Sizes of a memory with 1-byte pages are counted in those pages."""
        wasm = _wasm("(module (memory 100 300 (pagesize 1)))")
        (info,) = read_memories(wasm)
        assert (info.initial_bytes, info.maximum_bytes) == (100, 300)

    def test_no_memory(self) -> None:
        """A module without memories yields an empty tuple."""
        assert read_memories(_wasm("(module (func))")) == ()

    def test_garbage_is_rejected(self) -> None:
        """Bytes that are not a module raise WasmBinaryError at offset 0."""
        with pytest.raises(WasmBinaryError) as info:
            read_memories(b"hello world")
        assert info.value.offset == 0


class TestWasmBinaryError:
    def test_attributes(self) -> None:
        """The message and offset are kept as attributes and shown in str()."""
        error = WasmBinaryError("bad thing", 17)
        assert (error.message, error.offset) == ("bad thing", 17)
        assert "bad thing" in str(error)
        assert "17" in str(error)

    def test_pickle_round_trip(self) -> None:
        """The error survives pickling (e.g. across a process pool)."""
        error = pickle.loads(pickle.dumps(WasmBinaryError("x", 3)))
        assert (error.message, error.offset) == ("x", 3)

    def test_bad_version_offset(self) -> None:
        """A wrong version field is reported at offset 4."""
        with pytest.raises(WasmBinaryError) as info:
            prepare_module(b"\x00asm\x0d\x00\x01\x00", memory_limit_bytes=None)
        assert info.value.offset == 4

    def test_section_past_end(self) -> None:
        """A section size running past the end of the module is reported."""
        with pytest.raises(WasmBinaryError, match="past the end"):
            prepare_module(b"\x00asm\x01\x00\x00\x00\x01\x05\x01", memory_limit_bytes=None)

    def test_section_out_of_order(self) -> None:
        """A function section after a code section is reported at its id byte."""
        wasm = b"\x00asm\x01\x00\x00\x00" + b"\x0a\x01\x00" + b"\x03\x01\x00"
        with pytest.raises(WasmBinaryError, match="order") as info:
            prepare_module(wasm, memory_limit_bytes=None)
        assert info.value.offset == 11

    def test_leb_overflow(self) -> None:
        """A section size LEB128 longer than five bytes is reported."""
        wasm = b"\x00asm\x01\x00\x00\x00\x01\x80\x80\x80\x80\x80\x00"
        with pytest.raises(WasmBinaryError, match="too long"):
            prepare_module(wasm, memory_limit_bytes=None)


class TestPrepareModuleMemoryClamp:
    def test_defined_memory_without_maximum(self) -> None:
        """A memory with no maximum gets the limit as its maximum."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=4 * PAGE_SIZE)
        assert _validates(prepared.wasm)
        assert _Running(prepared.wasm).memory_max() == 4
        assert read_memories(prepared.wasm)[0].maximum_bytes == 4 * PAGE_SIZE
        assert prepared.memories[0].maximum_bytes is None

    def test_larger_maximum_is_lowered(self) -> None:
        """A declared maximum above the limit is lowered to the limit."""
        prepared = prepare_module(_grower("1 100"), memory_limit_bytes=3 * PAGE_SIZE)
        assert _Running(prepared.wasm).memory_max() == 3
        assert prepared.memories[0].maximum_bytes == 100 * PAGE_SIZE

    def test_smaller_maximum_is_kept(self) -> None:
        """A declared maximum under the limit is kept and the bytes are untouched."""
        original = _grower("1 2")
        prepared = prepare_module(original, memory_limit_bytes=8 * PAGE_SIZE, instrument_grow=False)
        assert prepared.wasm == original
        assert _Running(prepared.wasm).memory_max() == 2

    def test_limit_rounds_down_to_pages(self) -> None:
        """A limit that is not a multiple of the page size allows only whole pages."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=3 * PAGE_SIZE - 1)
        assert _Running(prepared.wasm).memory_max() == 2

    def test_imported_memory(self) -> None:
        """An imported memory's maximum is clamped, so a larger host memory no longer links."""
        wasm = _wasm(
            '(module (import "env" "memory" (memory 1))'
            ' (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))'
        )
        prepared = prepare_module(wasm, memory_limit_bytes=4 * PAGE_SIZE)
        import_type = wasmtime.Module(_engine(), prepared.wasm).imports[0].type
        assert isinstance(import_type, wasmtime.MemoryType)
        assert import_type.limits.max == 4
        assert prepared.memories[0].imported

        def small(store: wasmtime.Store) -> wasmtime.Memory:
            return wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, 4)))

        def unbounded(store: wasmtime.Store) -> wasmtime.Memory:
            return wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, None)))

        running = _Running(prepared.wasm, [small])
        assert running.call("grow", 5) == -1
        assert running.global_value(GROW_PROBE_EXPORT) == 5
        with pytest.raises(wasmtime.WasmtimeError):
            _Running(prepared.wasm, [unbounded])

    def test_no_memory(self) -> None:
        """A module without memory comes back byte for byte."""
        original = _wasm('(module (func (export "f") (result i32) (i32.const 1)))')
        prepared = prepare_module(original, memory_limit_bytes=PAGE_SIZE)
        assert prepared == PreparedModule(wasm=original, memories=(), grow_probe=None, grow_sites=0)

    def test_grow_past_clamp_fails_at_run_time(self) -> None:
        """Without instrumentation the clamp alone makes memory.grow return -1."""
        prepared = prepare_module(
            _grower("1"), memory_limit_bytes=2 * PAGE_SIZE, instrument_grow=False
        )
        running = _Running(prepared.wasm)
        assert running.call("grow", 2) == -1
        assert running.call("grow", 1) == 1
        assert running.call("size") == 2

    def test_no_limit_means_no_clamp(self) -> None:
        """memory_limit_bytes=None leaves the limits alone."""
        original = _grower("1")
        prepared = prepare_module(original, memory_limit_bytes=None, instrument_grow=False)
        assert prepared.wasm == original

    def test_initial_above_limit_is_left_alone(self) -> None:
        """A memory whose initial size exceeds the limit keeps its limits; initial_bytes tells."""
        original = _grower("10 20")
        prepared = prepare_module(original, memory_limit_bytes=4 * PAGE_SIZE)
        assert _section(prepared.wasm, 5) == _section(original, 5)
        assert prepared.memories[0].initial_bytes == 10 * PAGE_SIZE
        assert read_memories(prepared.wasm) == read_memories(original)

    def test_huge_limit_stays_within_32_bit_address_space(self) -> None:
        """A limit above 4 GiB caps a 32-bit memory at 65536 pages, keeping it valid."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=1 << 40)
        assert _validates(prepared.wasm)
        assert read_memories(prepared.wasm)[0].maximum_bytes == 1 << 32

    def test_every_memory_is_clamped(self) -> None:
        """Imported, defined, 64-bit, shared and custom-page memories all get the clamp."""
        wasm = _wasm(
            '(module (import "env" "m" (memory 1))'
            " (memory 1 1000) (memory i64 2) (memory 1 9 shared) (memory 5 (pagesize 1)))"
        )
        prepared = prepare_module(wasm, memory_limit_bytes=4 * PAGE_SIZE)
        assert _validates(prepared.wasm)
        maxima = [m.maximum_bytes for m in read_memories(prepared.wasm)]
        assert maxima == [4 * PAGE_SIZE] * 5
        assert [m.shared for m in read_memories(prepared.wasm)] == [
            False,
            False,
            False,
            True,
            False,
        ]

    def test_custom_page_size_limit(self) -> None:
        """With 1-byte pages the maximum becomes the limit in bytes."""
        wasm = _wasm('(module (memory (export "memory") 10 (pagesize 1)))')
        prepared = prepare_module(wasm, memory_limit_bytes=1000)
        assert _Running(prepared.wasm).memory_max() == 1000

    def test_negative_limit_is_a_caller_error(self) -> None:
        """A negative limit is a programming error, not a module error."""
        with pytest.raises(ValueError, match="negative"):
            prepare_module(_grower("1"), memory_limit_bytes=-1)


MANY_KINDS = """
(module
  (type $i2i (func (param i32) (result i32)))
  (import "env" "twice" (func $twice (param i32) (result i32)))
  (global $g (import "env" "g") (mut i32))
  (global $h (mut i64) (i64.const -9223372036854775808))
  (memory (export "memory") 1 16)
  (table 2 funcref)
  (elem (i32.const 0) $grow_one $ident)
  (data $d "\\40\\40\\40\\40")
  {fillers}
  (func $ident (type $i2i) (local.get 0))
  (func $grow_one (type $i2i) (memory.grow (i32.const 1)))
  (func (export "mix") (param $x i32) (result i32)
    (local $acc i32) (local $wide i64) (local $v v128)
    {many_locals}
    (local.set 64 (i32.const 1))
    (block $b2 (block $b1 (block $b0
      (br_table $b0 $b1 $b2 (local.get $x)))
      (local.set $acc (i32.add (memory.grow (i32.const 0)) (i32.const -64)))
      (br $b2))
      (local.set $acc (call_indirect (type $i2i) (local.get $x) (i32.const 0))))
    (loop $l
      (if (i32.lt_u (memory.size) (i32.const 3))
        (then (drop (memory.grow (local.get 64))) (br $l))
        (else (nop))))
    (local.set $wide (i64.add (i64.const 9223372036854775807) (i64.const -4611686018427387904)))
    (local.set $v (v128.const i8x16 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64))
    (local.set $v (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
                                 (local.get $v) (v128.const i64x2 0x4040 2)))
    (memory.fill (i32.const 64) (i32.const 0x40) (i32.const 8))
    (memory.copy (i32.const 128) (i32.const 64) (i32.const 8))
    (memory.init $d (i32.const 200) (i32.const 0) (i32.const 4))
    (i32.store offset=64 (i32.const 0) (i32.extend8_s (i32.const 0xC0)))
    (i32.add
      (i32.add
        (select (local.get $acc) (call $f64 (i32.const 64)) (local.get $x))
        (select (result i32) (i32.const 64) (call $twice (local.get $x)) (i32.const 0)))
      (i32.add
        (i32.add (i32.trunc_f64_s (f64.const 2.0)) (i32.trunc_f32_s (f32.const 3.0)))
        (i32.add
          (i32.wrap_i64 (i64.rotl (local.get $wide) (i64.const 64)))
          (i32.add
            (i8x16.extract_lane_u 3 (local.get $v))
            (i32.add (i32.load offset=64 (i32.const 0)) (i32.load8_u (i32.const 203))))))))
  (func (export "plain") (param i32) (result i32)
    (i32.add (local.get 0) (i32.const -64)))
  (func (export "grow_global") (result i32)
    (global.set $g (memory.grow (i32.const 2)))
    (global.set $h (i64.extend_i32_s (global.get $g)))
    (i32.wrap_i64 (global.get $h)))
  (func (export "grow_many") (param i32) (result i32)
    (drop (memory.grow (i32.const 0)))
    (drop (memory.grow (i32.const 0)))
    (memory.grow (local.get 0))))
"""


def _many_kinds() -> bytes:
    # 64 filler functions so that calling $f64 encodes "call 0x40".
    fillers = " ".join(f"(func $f{i} (param i32) (result i32) (local.get 0))" for i in range(65))
    many_locals = "(local " + " ".join(["i32"] * 62) + ")"
    return _wasm(MANY_KINDS.format(fillers=fillers, many_locals=many_locals))


def _many_kinds_imports() -> list[Callable[[wasmtime.Store], Any]]:
    i32 = wasmtime.ValType.i32()

    def twice(store: wasmtime.Store) -> wasmtime.Func:
        return wasmtime.Func(store, wasmtime.FuncType([i32], [i32]), lambda x: 2 * x)

    def global_(store: wasmtime.Store) -> wasmtime.Global:
        return wasmtime.Global(store, wasmtime.GlobalType(i32, True), wasmtime.Val.i32(7))

    return [twice, global_]


class TestPrepareModuleGrowInstrumentation:
    def test_refused_grow_records_delta(self) -> None:
        """A grow past the limit returns -1 and the probe holds the requested delta."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=4 * PAGE_SIZE)
        assert prepared.grow_probe == GROW_PROBE_EXPORT
        assert prepared.grow_sites == 1
        running = _Running(prepared.wasm)
        assert running.global_value(GROW_PROBE_EXPORT) == 0
        assert running.call("grow", 7) == -1
        assert running.global_value(GROW_PROBE_EXPORT) == 7
        assert running.call("size") == 1

    def test_successful_grow_leaves_probe_zero(self) -> None:
        """A grow within the limit returns the old size and leaves the probe at 0."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=4 * PAGE_SIZE)
        running = _Running(prepared.wasm)
        assert running.call("grow", 2) == 1
        assert running.call("grow", 1) == 3
        assert running.call("size") == 4
        assert running.global_value(GROW_PROBE_EXPORT) == 0

    def test_many_instruction_kinds_behave_identically(self) -> None:
        """A function mixing many instruction kinds around memory.grow behaves the same."""
        original = _many_kinds()
        prepared = prepare_module(original, memory_limit_bytes=16 * PAGE_SIZE)
        assert prepared.grow_sites == 7
        assert _validates(prepared.wasm)
        calls: list[tuple[Any, ...]] = [("mix", 0), ("mix", 1), ("mix", 2), ("mix", 3)]
        calls += [("plain", 5)]
        calls += [("grow_global",), ("grow_many", 3), ("grow_many", 100)]
        for call in calls:
            before = _Running(original, _many_kinds_imports())
            after = _Running(prepared.wasm, _many_kinds_imports())
            assert after.call(*call) == before.call(*call), call
            assert after.call("mix", 1) == before.call("mix", 1), call
            assert after.memory_pages() == before.memory_pages()
        after = _Running(prepared.wasm, _many_kinds_imports())
        assert after.call("grow_many", 100) == -1
        assert after.global_value(GROW_PROBE_EXPORT) == 100

    def test_newer_proposals_decode(self) -> None:
        """Tail calls, typed function references, try_table and atomics are skipped correctly."""
        original = _wasm(
            """
            (module
              (type $i2i (func (param i32) (result i32)))
              (tag $t (param i32))
              (memory (export "memory") 1 8 shared)
              (table $tab 1 funcref)
              (elem declare func $grow)
              (func $grow (type $i2i) (memory.grow (local.get 0)))
              (func $tail (param i32) (result i32) (return_call $grow (local.get 0)))
              (func (export "run") (param $n i32) (result i32) (local $r (ref null $i2i))
                (local.set $r (ref.func $grow))
                (drop (call_ref $i2i (i32.const 0) (local.get $r)))
                (block $h (result i32)
                  (try_table (catch $t $h)
                    (drop (i32.atomic.rmw.add offset=64 (i32.const 0) (i32.const 1)))
                    (atomic.fence)
                    (drop (table.get $tab (i32.const 0)))
                    (block $nn (br_on_null $nn (local.get $r)) (drop))
                    (if (i32.eqz (local.get $n)) (then (throw $t (memory.grow (i32.const 1))))))
                  (i32.add (call $tail (local.get $n)) (i32.load offset=64 (i32.const 0))))))
            """
        )
        prepared = prepare_module(original, memory_limit_bytes=8 * PAGE_SIZE)
        assert prepared.grow_sites == 2
        assert _validates(prepared.wasm)
        for n in (0, 1, 2, 9):
            before = _Running(original)
            after = _Running(prepared.wasm)
            assert after.call("run", n) == before.call("run", n), n
            assert after.call("run", n) == before.call("run", n), n
        assert after.global_value(GROW_PROBE_EXPORT) == 9

    def test_legacy_exception_handling_decodes(self) -> None:
        """Grow sites inside legacy try/catch/catch_all/delegate blocks are all found."""
        wasm = _wasm(
            """
            (module (tag $t) (memory 1)
              (func (result i32)
                try
                  (drop (memory.grow (i32.const 1)))
                catch $t
                  (drop (memory.grow (i32.const 2)))
                  rethrow 0
                catch_all
                  (drop (memory.grow (i32.const 3)))
                end
                block
                  try
                    throw $t
                  delegate 0
                end
                (memory.grow (i32.const 4))))
            """
        )
        assert prepare_module(wasm, memory_limit_bytes=None).grow_sites == 4

    def test_other_memories_are_left_alone(self) -> None:
        """memory.grow on memory 1 is not rewritten and does not touch the probe."""
        wasm = _wasm(
            """
            (module (memory $a 1) (memory $b (export "mem_b") 1)
              (func (export "a") (param i32) (result i32) (memory.grow $a (local.get 0)))
              (func (export "b") (param i32) (result i32) (memory.grow $b (local.get 0))))
            """
        )
        prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
        assert prepared.grow_sites == 1
        running = _Running(prepared.wasm)
        assert running.call("b", 5) == -1
        assert running.global_value(GROW_PROBE_EXPORT) == 0
        assert running.call("a", 5) == -1
        assert running.global_value(GROW_PROBE_EXPORT) == 5

    def test_no_grow_leaves_code_untouched(self) -> None:
        """Without memory.grow there is no probe and the code section is unchanged."""
        original = _wasm(
            '(module (memory 1) (func (export "f") (result i32)'
            " (block (result i32) (i32.const 64) (f64.const 2.0) (drop))))"
        )
        prepared = prepare_module(original, memory_limit_bytes=4 * PAGE_SIZE)
        assert (prepared.grow_probe, prepared.grow_sites) == (None, 0)
        assert _section(prepared.wasm, 10) == _section(original, 10)
        assert _section(prepared.wasm, 7) == _section(original, 7)
        assert _section(prepared.wasm, 5) != _section(original, 5)

    def test_instrumentation_can_be_disabled(self) -> None:
        """instrument_grow=False only clamps."""
        prepared = prepare_module(_grower("1"), memory_limit_bytes=PAGE_SIZE, instrument_grow=False)
        assert (prepared.grow_probe, prepared.grow_sites) == (None, 0)
        assert GROW_PROBE_EXPORT not in _Running(prepared.wasm).exports

    def test_memory64_is_not_instrumented(self) -> None:
        """A 64-bit memory 0 is clamped but its grows are not rewritten."""
        wasm = _wasm(
            '(module (memory (export "memory") i64 1)'
            ' (func (export "grow") (param i64) (result i64) (memory.grow (local.get 0))))'
        )
        prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
        assert (prepared.grow_probe, prepared.grow_sites) == (None, 0)
        assert _Running(prepared.wasm).call("grow", 5) == -1

    def test_sections_are_created_when_absent(self) -> None:
        """A module with no global or export section gains both, in valid order."""
        wasm = _wasm("(module (memory 1) (func $f (drop (memory.grow (i32.const 9)))) (start $f))")
        assert _section(wasm, 6) is None
        assert _section(wasm, 7) is None
        prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
        assert _validates(prepared.wasm)
        assert _Running(prepared.wasm).global_value(GROW_PROBE_EXPORT) == 9

    def test_indices_account_for_imports(self) -> None:
        """Imported functions and globals shift the wrapper and probe indices correctly."""
        wasm = _wasm(
            """
            (module
              (import "env" "f" (func $f (param i32) (result i32)))
              (import "env" "g" (global $g i32))
              (global $h (export "h") (mut i32) (i32.const 11))
              (memory 1)
              (func (export "grow") (param i32) (result i32)
                (i32.add (call $f (memory.grow (local.get 0))) (global.get $g))))
            """
        )
        prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
        i32 = wasmtime.ValType.i32()
        imports: list[Callable[[wasmtime.Store], Any]] = [
            lambda s: wasmtime.Func(s, wasmtime.FuncType([i32], [i32]), lambda x: x * 10),
            lambda s: wasmtime.Global(s, wasmtime.GlobalType(i32, False), wasmtime.Val.i32(1)),
        ]
        running = _Running(prepared.wasm, imports)
        assert running.call("grow", 1) == 11
        assert running.call("grow", 3) == -9
        assert running.global_value(GROW_PROBE_EXPORT) == 3
        assert running.global_value("h") == 11

    def test_existing_probe_export_is_rejected(self) -> None:
        """A module that already exports the probe name is refused."""
        wasm = _wasm(
            f'(module (memory 1) (global (export "{GROW_PROBE_EXPORT}") i32 (i32.const 0))'
            " (func (drop (memory.grow (i32.const 1)))))"
        )
        with pytest.raises(WasmBinaryError, match=GROW_PROBE_EXPORT) as info:
            prepare_module(wasm, memory_limit_bytes=PAGE_SIZE)
        name = GROW_PROBE_EXPORT.encode()
        entry = info.value.offset
        assert wasm[entry] == len(name)
        assert wasm[entry + 1 : entry + 1 + len(name)] == name

    def test_probe_name_is_reserved_without_grow(self) -> None:
        """The probe name is refused even with nothing to instrument, unless disabled."""
        wasm = _wasm(f'(module (memory 1) (func (export "{GROW_PROBE_EXPORT}")))')
        with pytest.raises(WasmBinaryError):
            prepare_module(wasm, memory_limit_bytes=PAGE_SIZE)
        prepared = prepare_module(wasm, memory_limit_bytes=PAGE_SIZE, instrument_grow=False)
        assert prepared.grow_probe is None

    def test_gc_types_skip_instrumentation(self) -> None:
        """Rec groups and subtypes in the type section skip instrumentation but still clamp."""
        for types in ("(rec (type (func)) (type (func)))", "(type (sub (func)))"):
            wasm = _wasm(
                f'(module {types} (memory (export "memory") 1)'
                ' (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))'
            )
            prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
            assert (prepared.grow_probe, prepared.grow_sites) == (None, 0), types
            assert _Running(prepared.wasm).memory_max() == 2

    def test_unknown_opcode_skips_instrumentation(self) -> None:
        """A GC-prefixed instruction stops instrumentation without failing the clamp."""
        wasm = _wasm(
            '(module (memory (export "memory") 1)'
            ' (func (export "grow") (param i32) (result i32)'
            " (drop (ref.i31 (i32.const 1))) (memory.grow (local.get 0))))"
        )
        prepared = prepare_module(wasm, memory_limit_bytes=2 * PAGE_SIZE)
        assert (prepared.grow_probe, prepared.grow_sites) == (None, 0)
        assert _Running(prepared.wasm).memory_max() == 2

    def test_custom_and_name_sections_preserved(self) -> None:
        """Custom sections, including "name", come back byte for byte and in order."""
        original = _wasm(
            '(module (@custom "before" (before type) "\\00\\01") (@custom "after" "xyz")'
            ' (memory $mem 1) (func $grower (export "grow") (param $delta i32) (result i32)'
            " (memory.grow (local.get $delta))))"
        )
        prepared = prepare_module(original, memory_limit_bytes=2 * PAGE_SIZE)
        assert prepared.grow_sites == 1
        customs = _custom_sections(original)
        assert len(customs) == 3
        assert any(c.startswith(b"\x04name") for c in customs)
        assert _custom_sections(prepared.wasm) == customs
        assert _sections(prepared.wasm)[0][0] == 0

    def test_runs_on_wasmer(self) -> None:
        """The rewritten module reports a refused grow on wasmer too."""
        wasmer = pytest.importorskip("wasmer")
        cranelift = pytest.importorskip("wasmer_compiler_cranelift")
        prepared = prepare_module(_grower("1"), memory_limit_bytes=3 * PAGE_SIZE)
        store = wasmer.Store(wasmer.engine.Universal(cranelift.Compiler))
        instance = wasmer.Instance(wasmer.Module(store, prepared.wasm))
        exports = instance.exports
        assert exports.memory.type.maximum == 3
        assert exports.grow(1) == 1
        assert getattr(exports, GROW_PROBE_EXPORT).value == 0
        assert exports.grow(6) == -1
        assert getattr(exports, GROW_PROBE_EXPORT).value == 6
        assert exports.size() == 2

    def test_large_module(self) -> None:
        """A module of about 1 MB with a grow in every body: every site is instrumented (its
        speed is measured in benchmarks/run.py, not asserted here)."""
        body = " ".join(
            [
                "(local.set 1 (i64.add (local.get 1) (i64.const 1234567890123)))",
                "(i32.store offset=64 (local.get 0) (i32.load offset=8 (i32.const 100)))",
                "(local.set 2 (f64.mul (local.get 2) (f64.const 2.0)))",
                "(drop (memory.grow (i32.const 0)))",
            ]
            * 8
        )
        funcs = " ".join(
            f"(func (param i32) (local i64 f64) (block (loop {body} (br_if 0 (local.get 0)))))"
            for _ in range(3000)
        )
        wasm = _wasm(f"(module (memory 1) {funcs})")
        assert len(wasm) > 1_000_000
        prepared = prepare_module(wasm, memory_limit_bytes=8 * PAGE_SIZE)
        assert prepared.grow_sites == 3000 * 8
        assert _validates(prepared.wasm)


ROBUST_SOURCE = """
(module
  (@custom "meta" "hello")
  (type $i2i (func (param i32) (result i32)))
  (import "env" "f" (func $f (param i32) (result i32)))
  (import "env" "m" (memory 1 100))
  (global $g (mut i32) (i32.const 3))
  (table 1 funcref)
  (elem (i32.const 0) $grow)
  (data (i32.const 8) "abc")
  (func $grow (export "grow") (type $i2i)
    (block $b (result i32)
      (br_if $b (i32.const 1) (i32.eqz (local.get 0)))
      (drop (call_indirect (type $i2i) (local.get 0) (i32.const 0)))
      (i32.add (memory.grow (local.get 0)) (global.get $g))))
  (func (export "v") (result i32)
    (i32x4.extract_lane 1 (v128.const i32x4 1 2 3 4))))
"""


@functools.cache
def _robust_source() -> bytes:
    return _wasm(ROBUST_SOURCE)


def _prepare_or_reject(wasm: bytes) -> PreparedModule | None:
    """Run both entry points; only WasmBinaryError may escape, and it is swallowed."""
    with contextlib.suppress(WasmBinaryError):
        read_memories(wasm)
    try:
        return prepare_module(wasm, memory_limit_bytes=4 * PAGE_SIZE)
    except WasmBinaryError:
        return None


_ROBUST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestPrepareModuleRobustness:
    @_ROBUST
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes either prepare or raise WasmBinaryError."""
        _prepare_or_reject(data)

    @_ROBUST
    @given(st.binary(max_size=300))
    def test_random_bytes_after_header(self, data: bytes) -> None:
        """Random sections after a valid header either prepare or raise WasmBinaryError."""
        _prepare_or_reject(b"\x00asm\x01\x00\x00\x00" + data)

    def test_every_truncation(self) -> None:
        """Every prefix of a valid module either prepares or raises WasmBinaryError."""
        source = _robust_source()
        outcomes = [_prepare_or_reject(source[:cut]) for cut in range(len(source) + 1)]
        assert outcomes[-1] is not None
        assert outcomes[-1].grow_sites == 1
        assert outcomes[5] is None

    @_ROBUST
    @given(st.data())
    def test_single_byte_flips(self, data: st.DataObject) -> None:
        """A flipped byte prepares or raises; valid input gives valid output."""
        source = bytearray(_robust_source())
        index = data.draw(st.integers(0, len(source) - 1))
        source[index] = data.draw(st.integers(0, 255))
        mutated = bytes(source)
        prepared = _prepare_or_reject(mutated)
        if prepared is not None and _validates(mutated):
            assert _validates(prepared.wasm)

    def test_every_single_byte_flip_of_code(self) -> None:
        """Setting each code byte to 0x40 keeps validity whenever the input stays valid."""
        source = _robust_source()
        code = _section(source, 10)
        assert code is not None
        start = source.index(code)
        for index in range(start, start + len(code)):
            mutated = source[:index] + b"\x40" + source[index + 1 :]
            prepared = _prepare_or_reject(mutated)
            if prepared is not None and _validates(mutated):
                assert _validates(prepared.wasm), index
