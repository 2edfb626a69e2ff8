"""Metering by instrumentation: the rewriter pass, the meter, and fuel and timeouts on wasmer 1.1.

No test here measures time: the clock is injected where a test needs one, and the one test that
runs a real deadline (an endless loop under a 200 ms timeout) asserts what happened, not when.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import CONFORMANCE, ROOT, SDK_ENGINE, engine_named
from wasm_plugins.engine import CallBudget, Engine, HostImport
from wasm_plugins.engine._meter import CHUNK, FUEL_EXPORT, METER_MODULE, Meter
from wasm_plugins.errors import (
    CallCancelled,
    ConfigurationError,
    DeadlineExceeded,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
)
from wasm_plugins.isolation import choose_isolation, limits_needing_worker
from wasm_plugins.sandbox import Limits, ModuleCache, Sandbox, meter_module
from wasm_plugins.sandbox._binary import WasmBinaryError
from wasm_plugins.testing.strategies import generated_modules, mutated_modules

ABI = CONFORMANCE / "abi.wat"
HOSTILE = ROOT / "plugins" / "hostile-pack" / "src" / "wasm_plugins_hostile_pack"
TEXT_TOOLS = ROOT / "plugins" / "text-tools" / "src" / "wasm_plugins_text_tools" / "text_tools.wasm"

# A module that exercises every place a function index lives: imports before the defined
# functions, exports, an active table segment of indices and one of expressions, a passive
# segment, a funcref global, ref.func in code, a start function, and a name section.
RENUMBERING = """
(module
  (import "env" "add_one" (func $add_one (param i32) (result i32)))
  (import "env" "base" (global $base i32))
  (type $unary (func (param i32) (result i32)))
  (table $t 4 funcref)
  (elem (i32.const 0) $double $triple)
  (elem (table $t) (i32.const 2) funcref (ref.func $square) (ref.null func))
  (elem $later func $triple)
  (global $picked (mut funcref) (ref.func $square))
  (global $started (mut i32) (i32.const 0))
  (memory (export "memory") 1)
  (func $double (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
  (func $triple (param i32) (result i32) (i32.mul (local.get 0) (i32.const 3)))
  (func $square (param i32) (result i32) (i32.mul (local.get 0) (local.get 0)))
  (func $init (global.set $started (call $add_one (global.get $base))))
  (start $init)
  (func (export "indirect") (param $slot i32) (param $x i32) (result i32)
    (call_indirect (type $unary) (local.get $x) (local.get $slot)))
  (func (export "direct") (param $x i32) (result i32)
    (call $add_one (call $triple (call $double (local.get $x)))))
  (func (export "through_ref") (param $x i32) (result i32)
    (table.set $t (i32.const 3) (ref.func $double))
    (call_indirect (type $unary) (local.get $x) (i32.const 3)))
  (func (export "through_global") (param $x i32) (result i32)
    (table.set $t (i32.const 3) (global.get $picked))
    (call_indirect (type $unary) (local.get $x) (i32.const 3)))
  (func (export "passive") (param $x i32) (result i32)
    (table.init $t $later (i32.const 3) (i32.const 0) (i32.const 1))
    (call_indirect (type $unary) (local.get $x) (i32.const 3)))
  (func (export "started") (result i32) (global.get $started))
  (func (export "sum") (param $n i32) (result i32)
    (local $total i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.and (local.get $n) (i32.const 1))
          (then (local.set $total (i32.add (local.get $total) (local.get $n))))
          (else (local.set $total (i32.sub (local.get $total) (i32.const 1)))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $total))
  (func $recurse (export "recurse") (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $recurse (i32.sub (local.get $n) (i32.const 1)))))))
  (func (export "nested") (param $n i32) (result i32)
    (local $i i32) (local $j i32) (local $total i32)
    (loop $outer
      (local.set $j (i32.const 0))
      (loop $inner
        (local.set $total (i32.add (local.get $total) (i32.const 1)))
        (br_if $inner (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1)))
                                (local.get $n))))
      (br_if $outer (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))
                              (local.get $n))))
    (local.get $total))
)
"""

CALLS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("indirect", (0, 5)),
    ("indirect", (1, 5)),
    ("indirect", (2, 5)),
    ("direct", (4,)),
    ("through_ref", (7,)),
    ("through_global", (7,)),
    ("passive", (7,)),
    ("started", ()),
    ("sum", (100,)),
    ("recurse", (50,)),
    ("nested", (30,)),
)

LOOP = """
(module
  (func (export "spin") (param $n i32) (result i32)
    (local $total i32)
    (loop $again
      (local.set $total (i32.add (local.get $total) (i32.xor (local.get $n) (i32.const 7))))
      (br_if $again (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (local.get $total)))
"""


def _wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def _env(engine: Engine) -> list[HostImport]:
    from wasm_plugins.engine import FuncSignature

    return [
        HostImport("env", "add_one", FuncSignature(("i32",), ("i32",)), lambda _m, x: x + 1),
    ]


class _Raw:
    """A module run through the engine adapter directly (no sandbox)."""

    def __init__(self, engine: Engine, wasm: bytes, budget: CallBudget, *, fuel: bool) -> None:
        module = engine.compile(wasm, fuel=fuel)
        self.instance: Any = module.instantiate(_env(engine), budget)

    def call(self, name: str, *args: int) -> Any:
        return self.instance.call(self.instance.export_function(name), *args)


def _renumbering_wasm() -> bytes:
    # wasmtime's WAT parser has no imported-global initialiser: give the import a value by
    # turning it into a defined constant for the raw runs (the renumbering is what matters).
    text = RENUMBERING.replace(
        '(import "env" "base" (global $base i32))', "(global $base i32 (i32.const 41))"
    )
    return _wasm(text)


class TestRewriter:
    def test_metered_module_behaves_as_the_original(self, engine: Engine) -> None:
        """Every kind of function index is renumbered: calls, indirect calls through active,
        passive and expression segments, ref.func in code and globals, the start function."""
        wasm = _renumbering_wasm()
        metered = meter_module(wasm)
        engine.validate(metered)
        plain = _Raw(engine, wasm, CallBudget(), fuel=False)
        budget = CallBudget(fuel=10**9)
        metered_run: Any
        if engine.name == "wasmer":
            metered_run = _Raw(engine, metered, budget, fuel=True)
        else:  # wasmtime meters natively: link the meter by hand to run the pass's output
            metered_run = _MeteredOnWasmtime(engine, metered, budget)
        for name, args in CALLS:
            assert metered_run.call(name, *args) == plain.call(name, *args), name

    def test_import_and_global_are_appended(self) -> None:
        """The meter is the last import (one index after the imported functions) and the fuel
        global the last global: no global index moves."""
        metered = meter_module(_renumbering_wasm())
        module = wasmtime.Module(wasmtime.Engine(), metered)
        imports = [(item.module, item.name) for item in module.imports]
        assert imports == [("env", "add_one"), (METER_MODULE, "refill")]
        exports = {item.name: item.type for item in module.exports}
        assert isinstance(exports[FUEL_EXPORT], wasmtime.GlobalType)
        assert exports[FUEL_EXPORT].mutable

    def test_name_section_follows_the_functions(self) -> None:
        """Function names move with their functions: a trap names the function it was in."""
        text = """(module
          (import "env" "add_one" (func $add_one (param i32) (result i32)))
          (func $helper (result i32) unreachable)
          (func $outer (export "outer") (result i32) (call $helper)))"""
        metered = meter_module(_wasm(text))
        store = wasmtime.Store()
        add_one = wasmtime.Func(
            store, wasmtime.FuncType([wasmtime.ValType.i32()], [wasmtime.ValType.i32()]), abs
        )
        refill = wasmtime.Func(
            store,
            wasmtime.FuncType([wasmtime.ValType.i64()], [wasmtime.ValType.i64()]),
            lambda _counter: 1000,
        )
        instance = wasmtime.Instance(
            store, wasmtime.Module(store.engine, metered), [add_one, refill]
        )
        with pytest.raises(wasmtime.Trap) as caught:
            instance.exports(store)["outer"](store)
        names = [frame.func_name for frame in caught.value.frames]
        assert names == ["helper", "outer"]

    def test_reserved_names_are_refused(self) -> None:
        """A module that already exports the fuel global or imports from the meter's module is
        refused: it could otherwise pose as metered."""
        exports_fuel = f'(module (global (export "{FUEL_EXPORT}") (mut i64) (i64.const 9)))'
        imports_meter = (
            f'(module (import "{METER_MODULE}" "refill" (func (param i64) (result i64))))'
        )
        for text in (exports_fuel, imports_meter):
            with pytest.raises(WasmBinaryError):
                meter_module(_wasm(text))

    def test_code_cannot_reach_the_fuel_counter(self) -> None:
        """Function bodies are not validated before the pass: a global index one past the
        module's globals, invalid as it stands, would name the appended counter (a guest could
        refill itself). Such a module is refused."""
        for access in ("(global.set 1 (i64.const 1000000000))", "(drop (global.get 1))"):
            text = f"(module (global (mut i32) (i32.const 0)) (func {access}))"
            with pytest.raises(WasmBinaryError, match="global index out of range"):
                meter_module(_wasm(text))

    def test_every_loop_iteration_costs_fuel(self) -> None:
        """An empty-looking loop still costs at least one unit per iteration."""
        text = '(module (func (export "f") (loop $l (br $l))))'
        budget = CallBudget(fuel=1000)
        run = _MeteredOnWasmtime(None, meter_module(_wasm(text)), budget)
        with pytest.raises(ResourceLimitExceeded):
            run.call("f")

    @pytest.mark.parametrize("engine_name", ["wasmer", SDK_ENGINE])
    @given(module=generated_modules(), data=st.binary(max_size=64))
    def test_generated_modules_give_the_same_results(
        self, engine_name: str, module: Any, data: bytes
    ) -> None:
        """Hypothesis: for generated ABI modules, a metered sandbox answers as an unmetered one
        (on wasmer 1.1 and wasmer-sdk, where the pass is what meters)."""
        wasm = _wasm(module.wat)
        with _metered_sandbox(wasm, engine_name) as sandbox:
            for name in module.names:
                expected = module.expected(name, data)
                assert sandbox.call(name, data) == expected

    @given(
        wasm=st.one_of(
            mutated_modules(),
            mutated_modules(st.builds(_renumbering_wasm)),
        )
    )
    def test_mutants_are_metered_or_refused(self, wasm: bytes) -> None:
        """Hypothesis: whatever the bytes, the pass returns a module or raises WasmBinaryError;
        and what it returns for a valid module is valid."""
        try:
            metered = meter_module(wasm)
        except WasmBinaryError:
            return
        engine = wasmtime.Engine()
        try:
            wasmtime.Module.validate(engine, wasm)
        except wasmtime.WasmtimeError:
            return
        wasmtime.Module.validate(engine, metered)

    @pytest.mark.parametrize(
        "path",
        [
            *sorted(HOSTILE.glob("*.wat")),
            CONFORMANCE / "abi.wat",
            ROOT / "hostapi/examples/echo.wat",
        ],
    )
    def test_project_modules_validate_after_metering(self, path: Path) -> None:
        """The project's own modules, metered, still validate on both engines."""
        metered = meter_module(_wasm(path.read_text()))
        wasmtime.Module.validate(wasmtime.Engine(), metered)


def _metered_sandbox(wasm: bytes, engine_name: str) -> Sandbox:
    """A sandbox metered by the pass (wasmer 1.1 is skipped where it does not install)."""
    return Sandbox(wasm, engine=engine_named(engine_name), limits=Limits(fuel=10**8), codec="raw")


class _MeteredOnWasmtime:
    """A metered module on wasmtime without native fuel, its meter linked by hand."""

    def __init__(self, engine: Engine | None, wasm: bytes, budget: CallBudget) -> None:
        self.store = wasmtime.Store()
        self.meter = meter = Meter(budget)
        meter.arm(handing=False)
        module = wasmtime.Module(self.store.engine, wasm)
        externs: list[Any] = []
        for item in module.imports:
            if item.module == METER_MODULE:
                externs.append(
                    wasmtime.Func(
                        self.store,
                        wasmtime.FuncType([wasmtime.ValType.i64()], [wasmtime.ValType.i64()]),
                        lambda counter: meter.refill(None, counter),  # no cycle back to self
                    )
                )
            else:  # env.add_one, or any other function import
                externs.append(_stand_in(self.store, item.type))
        self.instance = wasmtime.Instance(self.store, module, externs)
        self.exports = self.instance.exports(self.store)
        self.arm()

    def arm(self) -> None:
        self.exports[FUEL_EXPORT].set_value(self.store, wasmtime.Val.i64(self.meter.arm()))

    def consumed(self) -> int | None:
        return self.meter.consumed(self.exports[FUEL_EXPORT].value(self.store))

    def call(self, name: str, *args: int) -> Any:
        return self.exports[name](self.store, *args)


class TestMeter:
    """The host side, with an injected clock."""

    def test_fuel_alone_is_handed_over_at_once(self) -> None:
        meter = Meter(CallBudget(fuel=5000))
        assert meter.arm() == 5000
        with pytest.raises(ResourceLimitExceeded) as caught:
            meter.refill(None, -3)
        assert (caught.value.resource, caught.value.limit, caught.value.unit) == (
            "fuel",
            5000,
            "units",
        )
        assert meter.consumed(-3) == 5000

    def test_a_deadline_hands_out_chunks_and_looks_at_the_clock(self) -> None:
        now = [100.0]
        pauses: list[float] = []
        meter = Meter(CallBudget(timeout=0.2), clock=lambda: now[0], pause=pauses.append)
        assert meter.arm() == CHUNK
        assert meter.refill(None, -5) == CHUNK
        assert pauses == []  # not at every visit: waiting threads would never ask for the GIL
        now[0] = 100.05
        assert meter.refill(None, -5) == CHUNK
        assert pauses == [0]  # other threads had their turn
        now[0] = 100.2
        with pytest.raises(DeadlineExceeded) as caught:
            meter.refill(None, -5)
        assert caught.value.limit == pytest.approx(0.2)
        assert caught.value.operation == "instantiation"

    def test_fuel_and_deadline_together(self) -> None:
        now = [0.0]
        budget = CallBudget(fuel=CHUNK * 2 + 10, timeout=1.0)
        meter = Meter(budget, clock=lambda: now[0], pause=lambda _s: None)
        assert meter.arm() == CHUNK
        assert meter.refill(None, -1) == CHUNK
        assert meter.consumed(CHUNK // 2) == CHUNK + 1 + CHUNK // 2
        assert meter.refill(None, -1) == 8  # what is left, less the overdraft
        with pytest.raises(ResourceLimitExceeded):
            meter.refill(None, -9)
        assert meter.consumed(-9) == budget.fuel


class TestWasmerFuelAndTimeouts:
    def test_fuel_exhaustion_is_the_same_error_on_every_engine(self, engine: Engine) -> None:
        """An endless loop under fuel ends in the fuel resource error wasmtime raises."""
        sandbox = Sandbox(ABI, engine=engine, limits=Limits(fuel=100_000))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("loop_forever")
        error = caught.value
        assert (error.resource, error.used, error.limit, error.unit) == (
            "fuel",
            100_000,
            100_000,
            "units",
        )
        assert error.context is not None and error.context.environment.engine == engine.name
        assert sandbox.call("echo", "ok") == "ok"  # a fresh instance

    def test_fuel_is_per_call(self, engine: Engine) -> None:
        """Many cheap calls never run out: every call gets the whole budget again."""
        sandbox = Sandbox(ABI, engine=engine, limits=Limits(fuel=5_000))
        for _ in range(200):
            assert sandbox.call("upper", "abc") == "ABC"

    def test_start_function_is_stopped(self, engine: Engine) -> None:
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(CONFORMANCE / "start_loop.wat", engine=engine, limits=Limits(fuel=1000))
        assert caught.value.resource == "fuel"
        with pytest.raises(DeadlineExceeded) as timed:
            Sandbox(CONFORMANCE / "start_loop.wat", engine=engine, limits=Limits(timeout=0.05))
        assert timed.value.operation == "instantiation"

    def test_fuel_consumed_is_reported_and_close_to_wasmtime(self, engine: Engine) -> None:
        """The units used by a loop agree with wasmtime's native fuel on the same code."""
        wasm = _wasm(LOOP)
        expected = _native_fuel(wasm, "spin", 1000)
        if engine.name == "wasmer":
            run: Any = _Raw(engine, meter_module(wasm), CallBudget(fuel=10**9), fuel=True)
            run.instance.arm()
            run.call("spin", 1000)
            used = run.instance.fuel_consumed()
        else:
            run = _MeteredOnWasmtime(engine, meter_module(wasm), CallBudget(fuel=10**9))
            run.call("spin", 1000)
            used = run.consumed()
        assert expected is not None and used is not None
        assert 0.95 <= used / expected <= 1.05, (used, expected)

    @pytest.mark.parametrize(("name", "args"), CALLS)
    def test_units_match_wasmtime_native_fuel(self, name: str, args: tuple[int, ...]) -> None:
        """On calls, loops, arms of ifs and indirect calls, the instrumented units are wasmtime's
        own, within a unit or two (a branch out of a region leaves its rest charged; wasmtime
        charges a unit more for table.init)."""
        wasm = _renumbering_wasm()
        run = _MeteredOnWasmtime(None, meter_module(wasm), CallBudget(fuel=10**9))
        run.call(name, *args)
        used = run.consumed()
        native = _native_fuel(wasm, name, *args, host=True)
        assert used is not None and abs(used - native) <= native * 0.01 + 2, (used, native)

    @pytest.mark.parametrize("function", ["word_count", "slugify", "top_words"])
    def test_units_match_on_a_real_plugin(self, function: str) -> None:
        """The text-tools plugin (C, compiled by clang): instrumented and native units agree."""
        wasm = TEXT_TOOLS.read_bytes()
        data = b'{"text": "Hello wonderful world, creme brulee a la mode, hello world"}'
        run = _MeteredOnWasmtime(None, meter_module(wasm), CallBudget(fuel=10**9))
        pointer = run.call("wp_alloc", len(data))
        run.exports["memory"].write(run.store, data, pointer)
        run.arm()
        run.call(function, pointer, len(data))
        native = _native_fuel(wasm, function, host=True, data=data)
        assert run.consumed() == native

    def test_bulk_memory_is_charged_by_length(self, engine: Engine) -> None:
        """memory.fill and memory.copy cost a unit per byte, as on wasmtime: a fill larger than
        the fuel left stops before it runs."""
        text = """(module (memory 2)
          (func (export "fill") (param $n i32)
            (memory.fill (i32.const 0) (i32.const 7) (local.get $n)))
          (func (export "copy") (param $n i32)
            (memory.copy (i32.const 0) (i32.const 9) (local.get $n))))"""
        wasm = _wasm(text)
        budget = CallBudget(fuel=100_000)
        run: Any
        for name in ("fill", "copy"):
            if engine.name == "wasmer":
                run = _Raw(engine, meter_module(wasm), budget, fuel=True)
                run.instance.arm()
                run.call(name, 50_000)
                assert run.instance.fuel_consumed() == _native_fuel(wasm, name, 50_000)
                with pytest.raises(ResourceLimitExceeded):
                    run.call(name, 60_000)
            else:
                run = _MeteredOnWasmtime(engine, meter_module(wasm), budget)
                run.call(name, 50_000)
                assert run.consumed() == _native_fuel(wasm, name, 50_000)

    def test_one_budget_shared_by_every_entry(self, wasmer_engine: Engine) -> None:
        """Until the next arm, every guest entry draws on the same fuel; arming refills it."""
        wasm = meter_module(_wasm(LOOP))
        run = _Raw(wasmer_engine, wasm, CallBudget(fuel=30_000), fuel=True)
        run.instance.arm()
        run.call("spin", 1000)  # 11 units an iteration
        first = run.instance.fuel_consumed()
        assert first is not None and 10_000 < first < 12_000
        run.call("spin", 1000)
        assert run.instance.fuel_consumed() == 2 * first
        with pytest.raises(ResourceLimitExceeded):
            run.call("spin", 1000)
        fresh = _Raw(wasmer_engine, wasm, CallBudget(fuel=30_000), fuel=True)
        for _ in range(5):
            fresh.instance.arm()
            fresh.call("spin", 1000)
        assert fresh.instance.fuel_consumed() == first

    def test_unmetered_module_refuses_a_budget(self, wasmer_engine: Engine) -> None:
        """The engine adapter never runs a limited budget on a module that was not metered."""
        with pytest.raises(ConfigurationError):
            wasmer_engine.compile(_wasm(LOOP), fuel=True)
        module = wasmer_engine.compile(_wasm(LOOP))
        with pytest.raises(ConfigurationError):
            module.instantiate([], CallBudget(timeout=1.0))

    def test_meter_import_is_hidden_only_when_metered(self, wasmer_engine: Engine) -> None:
        """A plugin that imports the meter itself is not linked to it: the import is refused
        like any other the host does not offer."""
        text = f"""(module
          (import "{METER_MODULE}" "refill" (func (param i64) (result i64)))
          (memory (export "memory") 1)
          (func (export "wp_alloc") (param i32) (result i32) (i32.const 0))
          (func (export "wp_free") (param i32 i32))
          (func (export "f") (param i32 i32) (result i64) (i64.const 0)))"""
        with pytest.raises(PluginError) as caught:
            Sandbox(text, engine=wasmer_engine)
        assert METER_MODULE in str(caught.value)
        with pytest.raises(ModuleError):
            Sandbox(text, engine=wasmer_engine, limits=Limits(timeout=1))

    def test_endless_loop_times_out_in_process_and_the_host_stays_responsive(
        self, wasmer_engine: Engine
    ) -> None:
        """An endless loop under a 200 ms timeout on wasmer ends as a typed timeout, in this
        process, while another Python thread keeps running (the meter lets it)."""
        limits = Limits(timeout="200 ms")
        assert choose_isolation(wasmer_engine, limits) == "in-process"
        assert limits_needing_worker(wasmer_engine, limits) == ()
        sandbox = Sandbox(ABI, engine=wasmer_engine, limits=limits)
        counted = [0]
        running = threading.Event()
        done = threading.Event()

        def count() -> None:
            running.set()
            while not done.is_set():
                counted[0] += 1

        thread = threading.Thread(target=count)
        thread.start()
        try:
            running.wait()
            before = counted[0]
            with pytest.raises(DeadlineExceeded) as caught:
                sandbox.call("loop_forever")
            during = counted[0] - before
        finally:
            done.set()
            thread.join()
        error = caught.value
        assert error.limit == pytest.approx(0.2)
        assert error.operation == "call"
        assert error.context is not None and error.context.environment.isolation == "in-process"
        assert during > 0
        assert sandbox.call("echo", "ok") == "ok"

    def test_a_deadline_restarts_without_a_new_share(self) -> None:
        """A deadline alone is re-armed without touching the guest's counter (wasmer 1.1 keeps
        what is left of the last share): the clock starts again at the re-arm, and the next
        visit still gets a share, or the deadline's error once it passed."""
        now = [0.0]
        meter = Meter(CallBudget(timeout=1.0), clock=lambda: now[0], pause=lambda _s: None)
        assert meter.arm(handing=False) == 0
        now[0] = 0.5
        assert meter.refill(None, -1) == CHUNK
        now[0] = 10.0
        meter.arm(handing=False)
        now[0] = 10.5
        assert meter.refill(None, 0) == CHUNK
        now[0] = 11.5
        with pytest.raises(DeadlineExceeded):
            meter.refill(None, -3)

    def test_every_call_gets_its_own_deadline(self, wasmer_engine: Engine) -> None:
        """Calls that leave part of their share in the counter do not carry it into a call
        that loops: that one still ends at its own deadline, and so does the next."""
        sandbox = Sandbox(ABI, engine=wasmer_engine, limits=Limits(timeout="50 ms"))
        for _ in range(2):
            assert sandbox.call("echo", "ok") == "ok"
            with pytest.raises(DeadlineExceeded) as caught:
                sandbox.call("loop_forever")
            assert caught.value.limit == pytest.approx(0.05)
        assert sandbox.call("echo", "ok") == "ok"

    @pytest.mark.parametrize("limits", [Limits(timeout=600.0), Limits(fuel=10**15)])
    def test_a_watched_call_is_cancelled(self, wasmer_engine: Engine, limits: Limits) -> None:
        """A metered module can be stopped from another thread: at its next visit to the meter
        once the event is set (set here before the call: no waiting)."""
        sandbox = Sandbox(ABI, engine=wasmer_engine, limits=limits)
        cancelled = threading.Event()
        assert sandbox.watch(cancelled)
        cancelled.set()
        with pytest.raises(CallCancelled) as caught:
            sandbox.call("loop_forever")
        assert caught.value.operation == "call"
        sandbox.watch(None)
        assert sandbox.call("echo", "ok") == "ok"
        assert not Sandbox(ABI, engine=wasmer_engine).watch(cancelled)  # not metered

    def test_watching_an_armed_budget_hands_back_all_but_a_chunk(self) -> None:
        meter = Meter(CallBudget(fuel=CHUNK * 5), clock=lambda: 0.0, pause=lambda _s: None)
        counter = meter.arm()
        assert counter == CHUNK * 5
        cancelled = threading.Event()
        assert meter.watch(cancelled, counter) == CHUNK
        assert meter.consumed(CHUNK) == 0
        assert meter.refill(None, -1) == CHUNK  # visits come every chunk
        cancelled.set()
        with pytest.raises(CallCancelled):
            meter.refill(None, -1)

    def test_metered_and_unmetered_never_share_a_cache_entry(
        self, wasmer_engine: Engine, tmp_path: Path
    ) -> None:
        cache = ModuleCache(tmp_path)
        plain = Sandbox(ABI, engine=wasmer_engine, cache=cache)
        assert not plain.loaded.compiled_from_cache
        timed = Sandbox(ABI, engine=wasmer_engine, limits=Limits(timeout=0.05), cache=cache)
        assert not timed.loaded.compiled_from_cache
        again = Sandbox(ABI, engine=wasmer_engine, limits=Limits(timeout=0.05), cache=cache)
        assert again.loaded.compiled_from_cache
        with pytest.raises(DeadlineExceeded):
            again.call("loop_forever")
        # Fuel and timeouts run the same metered code (the budget is set per call).
        fueled = Sandbox(ABI, engine=wasmer_engine, limits=Limits(fuel=1000), cache=cache)
        assert fueled.loaded.compiled_from_cache
        with pytest.raises(ResourceLimitExceeded):
            fueled.call("loop_forever")
        assert Sandbox(ABI, engine=wasmer_engine, cache=cache).loaded.compiled_from_cache


def _native_fuel(
    wasm: bytes, name: str, *args: int, host: bool = False, data: bytes | None = None
) -> int:
    """The fuel wasmtime's own metering charges for one call (``host``: link stand-ins of the
    imports; ``data``: the ABI input, copied in first and passed as the arguments)."""
    config = wasmtime.Config()
    config.consume_fuel = True
    store = wasmtime.Store(wasmtime.Engine(config))
    store.set_fuel(10**9)
    module = wasmtime.Module(store.engine, wasm)
    externs = [_stand_in(store, item.type) for item in module.imports] if host else []
    exports = wasmtime.Instance(store, module, externs).exports(store)
    if data is not None:
        pointer = exports["wp_alloc"](store, len(data))
        exports["memory"].write(store, data, pointer)
        args = (pointer, len(data))
    store.set_fuel(10**9)
    exports[name](store, *args)
    return int(10**9 - store.get_fuel())


def _stand_in(store: wasmtime.Store, kind: Any) -> wasmtime.Func:
    """A host function of the import's type: adds one to its first argument, or does nothing."""
    assert isinstance(kind, wasmtime.FuncType)
    return wasmtime.Func(store, kind, lambda *args: args[0] + 1 if kind.results else None)
