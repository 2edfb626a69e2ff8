"""The call-depth bound written into modules for engines whose own stack guard is costly."""

from __future__ import annotations

import pytest

from wasm_plugins.engine import Engine
from wasm_plugins.errors import ExecutionError, ModuleError
from wasm_plugins.sandbox import Sandbox
from wasm_plugins.sandbox._binary import DEPTH_EXPORT, WasmBinaryError, bound_call_depth
from wasm_plugins.sandbox._stack import MAX_DEPTH

_PRELUDE = """
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
"""

# Every way out of a function: falling off its end, `return` at the top and nested, a branch to
# the function's own label, several results; and a recursion of a chosen depth.
EXITS = f"""
(module
  {_PRELUDE}
  (func $pair (param i32) (result i32 i32)
    (if (i32.eqz (local.get 0)) (then (return (i32.const 1) (i32.const 2))))
    (if (i32.eq (local.get 0) (i32.const 1)) (then (br 1 (i32.const 3) (i32.const 4))))
    (i32.const 5) (i32.const 6))
  (func $nested_return (param i32) (result i32)
    (block (loop (if (local.get 0) (then (return (i32.const 7)))) (br 1)))
    (i32.const 8))
  (func $down (param $n i32) (result i32)
    (if (result i32) (local.get $n)
      (then (i32.add (call $down (i32.sub (local.get $n) (i32.const 1))) (i32.const 1)))
      (else (i32.const 0))))
  (func (export "exits") (param $ptr i32) (param $len i32) (result i64)
    (local $sum i32)
    (local.set $sum (i32.add (call $pair (i32.const 0))))
    (local.set $sum (i32.add (local.get $sum) (i32.mul (call $pair (i32.const 1)))))
    (local.set $sum (i32.add (local.get $sum) (i32.sub (call $pair (i32.const 2)))))
    (local.set $sum (i32.add (local.get $sum) (call $nested_return (i32.const 1))))
    (local.set $sum (i32.add (local.get $sum) (call $nested_return (i32.const 0))))
    (i32.store (i32.const 0) (local.get $sum))
    (i64.const 4))
  (func (export "deep") (param $ptr i32) (param $len i32) (result i64)
    (i32.store (i32.const 0) (call $down (i32.load (local.get $ptr))))
    (i64.const 4))
  (func (export "panic") (param i32 i32) (result i64) unreachable)
)
"""


def _int(value: int) -> bytes:
    return value.to_bytes(4, "little")


class TestCallDepthBound:
    def test_every_way_out_keeps_its_results(self, engine: Engine) -> None:
        """Returns, nested returns, branches to the function's label and several results give
        what they give without the bound (1+2, 3*4, 5-6, 7, 8)."""
        sandbox = Sandbox(EXITS, engine=engine, codec="raw")
        assert sandbox.call_bytes("exits", b"") == _int(3 + 12 - 1 + 7 + 8)

    def test_deep_recursion_within_the_bound_runs(self, engine: Engine) -> None:
        """A recursion of a thousand frames runs, several times on one instance (the depth
        comes back to zero after each call)."""
        sandbox = Sandbox(EXITS, engine=engine, codec="raw")
        for _ in range(3):
            assert sandbox.call_bytes("deep", _int(1000)) == _int(1000)

    def test_recursion_past_the_bound_is_a_stack_overflow(self, engine: Engine) -> None:
        """A recursion deeper than the bound is a typed stack overflow on every engine, and the
        instance that made it is replaced."""
        sandbox = Sandbox(EXITS, engine=engine, codec="raw")
        with pytest.raises(ExecutionError) as raised:
            sandbox.call_bytes("deep", _int(MAX_DEPTH * 4))
        assert raised.value.trap == "stack_overflow"
        assert sandbox.call_bytes("deep", _int(10)) == _int(10)

    def test_guest_unreachable_stays_unreachable(self, engine: Engine) -> None:
        """The guest's own ``unreachable`` is not mistaken for the bound."""
        sandbox = Sandbox(EXITS, engine=engine, codec="raw")
        with pytest.raises(ExecutionError) as raised:
            sandbox.call_bytes("panic", b"")
        assert raised.value.trap == "unreachable"

    def test_reserved_export_is_refused(self, wasmer_engine: Engine) -> None:
        """A module that exports the bound's name itself is a typed module error where the bound
        is written, and the pass says why."""
        clash = f'(module {_PRELUDE} (global (export "{DEPTH_EXPORT}") i32 (i32.const 0)))'
        wasm = wasmer_engine.wat_to_wasm(clash)
        with pytest.raises(WasmBinaryError, match="already exports"):
            bound_call_depth(wasm, MAX_DEPTH)
        with pytest.raises(ModuleError):
            Sandbox(clash, engine=wasmer_engine)

    def test_tail_calls_keep_the_engine_guard(self, wasmtime_engine: Engine) -> None:
        """A body that can leave its function without reaching its end another way (here a tail
        call) is left as it is."""
        tail = "(module (func $f (return_call $f)))"
        wasm = wasmtime_engine.wat_to_wasm(tail)
        assert bound_call_depth(wasm, MAX_DEPTH) == wasm


# Bytes of `return` (0x0f) and `end` (0x0b) in immediates (constants, local indexes, memarg
# offsets, a one-byte block type index), beside real returns in nested blocks: the pass skips
# runs of plain instructions in one step, and must tell the two apart.
IMMEDIATES = f"""
(module
  {_PRELUDE}
  (type $to_i32 (func (result i32)))
  (func $imm (param $n i32) (result i32)
    (local i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32)
    (local.set 15 (i32.const 15))
    (local.set 11 (i32.load offset=15 (i32.const 11)))
    (block (type $to_i32)
      (if (i32.eq (local.get $n) (i32.const 15)) (then (return (i32.const 11))))
      (i32.const 15))
    (drop)
    (if (i32.and (local.get $n) (i32.const 1))
      (then (return (i32.add (local.get 15) (i32.const 11)))))
    (i32.add (local.get 15) (i32.load8_u offset=15 (i32.const 0))))
  (func (export "many") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $sum i32)
    (loop $again
      (local.set $sum (i32.add (local.get $sum) (call $imm (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.load (local.get $ptr)))))
    (i32.store (i32.const 0) (local.get $sum))
    (i64.const 4))
)
"""


def test_returns_and_look_alike_bytes(engine: Engine) -> None:
    """Every real return comes back through the decrement (many more calls than the bound run
    in one guest call), and no byte of an immediate is taken for one (the results hold)."""
    sandbox = Sandbox(IMMEDIATES, engine=engine, codec="raw")
    calls = MAX_DEPTH * 3
    expected = sum(11 if n == 15 else 26 if n % 2 else 15 for n in range(calls))
    assert sandbox.call_bytes("many", _int(calls)) == _int(expected)
