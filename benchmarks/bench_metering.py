"""Metering by instrumentation: what it costs a guest, how its units compare with wasmtime's
native fuel, and how late an in-process timeout on wasmer 1.1 ends an endless loop.

Figures are medians of ``--rounds`` rounds, as ratios against the same guest without metering:

- guest compute: two loop-heavy plugins (``spin``, a count-down loop of five instructions, the
  worst case for a charge per loop iteration; ``hash``, an FNV-1a hash over a buffer, a loop of
  ordinary work), called through a Sandbox on wasmer 1.1 with no limit, with fuel, and with a
  timeout (both metered by instrumentation); on wasmtime through its public API with no metering,
  with native fuel, and with the instrumented module and its meter linked by hand;
- the same two plugins on wasmer-sdk (the guest in a Wasmer SDK process), without limits and with
  fuel (instrumented, the meter asked only when the whole budget is spent), whole calls through a
  Sandbox (each call is a frame round trip too);
- a real plugin: text-tools (C, branchy text processing), whole calls with and without fuel;
- fuel units: instrumented against native on wasmtime, on the same calls;
- a chunk: how long the guest runs on :data:`~wasm_plugins.engine._meter.CHUNK` units (how often
  a timed call comes back to the meter);
- timeout overshoot: an endless loop under a 200 ms (and a 10 ms) timeout on wasmer in-process,
  the call's wall-clock time past its timeout.

    python benchmarks/bench_metering.py [--rounds 7] [--only wasmer-sdk]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins.engine import CallBudget, default_registry  # noqa: E402
from wasm_plugins.engine._meter import CHUNK, FUEL_EXPORT, METER_MODULE, Meter  # noqa: E402
from wasm_plugins.errors import DeadlineExceeded  # noqa: E402
from wasm_plugins.sandbox import Limits, Sandbox, meter_module  # noqa: E402

SPIN = ROOT / "benchmarks" / "spin.wat"
HASH = """(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  ;; FNV-1a over a 4 KiB buffer, as many times as the input's first byte says (times 100).
  (func (export "hash") (param $ptr i32) (param $len i32) (result i64)
    (local $rounds i32) (local $i i32) (local $h i32)
    (local.set $rounds (i32.mul (i32.load8_u (local.get $ptr)) (i32.const 100)))
    (local.set $h (i32.const 0x811c9dc5))
    (loop $round
      (local.set $i (i32.const 0))
      (loop $byte
        (local.set $h (i32.mul
          (i32.xor (local.get $h) (i32.load8_u offset=2048 (local.get $i)))
          (i32.const 0x01000193)))
        (br_if $byte (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1)))
                               (i32.const 4096))))
      (br_if $round (local.tee $rounds (i32.sub (local.get $rounds) (i32.const 1)))))
    (i32.store (i32.const 0) (local.get $h))
    (i64.const 4)))"""
ENDLESS = """(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))"""

WORK = {"spin": b"20000", "hash": bytes([10])}
"""Inputs for a call of roughly 10 to 30 ms of guest work."""


def median_time(rounds: int, action: Callable[[], Any]) -> float:
    action()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _source(name: str) -> str:
    return SPIN.read_text() if name == "spin" else HASH


def wasmer_rows(rounds: int) -> dict[str, float]:
    engine = default_registry().get("wasmer")
    rows = {}
    for name, data in WORK.items():
        source = _source(name)
        plain = Sandbox(source, engine=engine, codec="raw")
        fuel = Sandbox(source, engine=engine, codec="raw", limits=Limits(fuel=10**15))
        timed = Sandbox(source, engine=engine, codec="raw", limits=Limits(timeout=600.0))
        base = median_time(rounds, lambda s=plain, n=name, d=data: s.call(n, d))
        rows[f"wasmer {name}: no metering (ms)"] = base * 1000
        for label, sandbox in (("fuel", fuel), ("timeout", timed)):
            took = median_time(rounds, lambda s=sandbox, n=name, d=data: s.call(n, d))
            rows[f"wasmer {name}: instrumented {label} / none"] = took / base
    return rows


def wasmer_sdk_rows(rounds: int) -> dict[str, float]:
    engine = default_registry().get("wasmer-sdk")
    rows = {}
    for name, data in WORK.items():
        source = _source(name)
        plain = Sandbox(source, engine=engine, codec="raw")
        fuel = Sandbox(source, engine=engine, codec="raw", limits=Limits(fuel=10**15))
        base = median_time(rounds, lambda s=plain, n=name, d=data: s.call(n, d))
        took = median_time(rounds, lambda s=fuel, n=name, d=data: s.call(n, d))
        rows[f"wasmer-sdk {name}: no metering (ms)"] = base * 1000
        rows[f"wasmer-sdk {name}: instrumented fuel / none"] = took / base
        plain.close()
        fuel.close()
    return rows


class RawWasmtime:
    """A module on wasmtime's public API: plain, with native fuel, or instrumented."""

    def __init__(self, wasm: bytes, *, native_fuel: bool = False, metered: bool = False) -> None:
        config = wasmtime.Config()
        config.consume_fuel = native_fuel
        self.store = wasmtime.Store(wasmtime.Engine(config))
        self.native_fuel = native_fuel
        module = wasmtime.Module(self.store.engine, meter_module(wasm) if metered else wasm)
        self.meter = meter = Meter(CallBudget(fuel=10**15))
        meter.arm(handing=False)
        externs: list[Any] = []
        for item in module.imports:
            assert item.module == METER_MODULE
            i64 = wasmtime.ValType.i64()
            externs.append(
                wasmtime.Func(
                    self.store,
                    wasmtime.FuncType([i64], [i64]),
                    lambda counter: meter.refill(None, counter),
                )
            )
        if native_fuel:
            self.store.set_fuel(10**15)
        self.exports = instance_exports = wasmtime.Instance(self.store, module, externs).exports(
            self.store
        )
        self.fuel_global = instance_exports[FUEL_EXPORT] if metered else None
        self.memory = instance_exports["memory"]

    def arm(self) -> None:
        if self.native_fuel:
            self.store.set_fuel(10**15)
        if self.fuel_global is not None:
            self.fuel_global.set_value(self.store, wasmtime.Val.i64(self.meter.arm()))

    def used(self) -> int:
        if self.native_fuel:
            return int(10**15 - self.store.get_fuel())
        assert self.fuel_global is not None
        return int(self.meter.consumed(self.fuel_global.value(self.store)) or 0)

    def call(self, name: str, data: bytes) -> Any:
        self.arm()
        self.memory.write(self.store, data, 1024)
        return self.exports[name](self.store, 1024, len(data))


def wasmtime_rows(rounds: int) -> dict[str, float]:
    rows = {}
    for name, data in WORK.items():
        wasm = bytes(wasmtime.wat2wasm(_source(name)))
        plain = RawWasmtime(wasm)
        native = RawWasmtime(wasm, native_fuel=True)
        metered = RawWasmtime(wasm, metered=True)
        base = median_time(rounds, lambda r=plain, n=name, d=data: r.call(n, d))
        rows[f"wasmtime {name}: no metering (ms)"] = base * 1000
        took_native = median_time(rounds, lambda r=native, n=name, d=data: r.call(n, d))
        took_metered = median_time(rounds, lambda r=metered, n=name, d=data: r.call(n, d))
        rows[f"wasmtime {name}: native fuel / none"] = took_native / base
        rows[f"wasmtime {name}: instrumented fuel / none"] = took_metered / base
        rows[f"wasmtime {name}: instrumented / native fuel (time)"] = took_metered / took_native
        native.call(name, data)
        metered.call(name, data)
        units = metered.used() / native.used()
        rows[f"wasmtime {name}: instrumented / native fuel (units)"] = units
        units_per_second = metered.used() / took_metered
        rows[f"wasmtime {name}: one chunk of {CHUNK} units (ms)"] = CHUNK / units_per_second * 1000
    return rows


TEXT_TOOLS = ROOT / "plugins" / "text-tools" / "src" / "wasm_plugins_text_tools" / "text_tools.wasm"
TEXT = {"text": "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 1000}


def real_plugin_rows(
    rounds: int, engines: tuple[str, ...] = ("wasmer", "wasmtime", "wasmer-sdk")
) -> dict[str, float]:
    """The text-tools plugin (C, branchy text processing; 55 KB of JSON in), through a Sandbox:
    with fuel against without (instrumented on wasmer and wasmer-sdk, native on wasmtime)."""
    rows = {}
    for name in engines:
        if default_registry().availability()[name] is not None:
            continue
        engine = default_registry().get(name)
        plain = Sandbox(TEXT_TOOLS, engine=engine)
        fuel = Sandbox(TEXT_TOOLS, engine=engine, limits=Limits(fuel=10**15))
        for function in ("word_count", "top_words"):
            base = median_time(rounds, lambda s=plain, f=function: s.call(f, TEXT))
            took = median_time(rounds, lambda s=fuel, f=function: s.call(f, TEXT))
            kind = "native" if name == "wasmtime" else "instrumented"
            rows[f"{name} text-tools {function}: {kind} fuel / none (call)"] = took / base
    return rows


def overshoot_rows(rounds: int) -> dict[str, float]:
    engine = default_registry().get("wasmer")
    rows = {}
    for timeout in (0.2, 0.01):
        sandbox = Sandbox(ENDLESS, engine=engine, limits=Limits(timeout=timeout))
        late = []
        for _ in range(rounds):
            started = time.perf_counter()
            with contextlib.suppress(DeadlineExceeded):
                sandbox.call("spin")
            late.append(time.perf_counter() - started - timeout)
        ms = int(timeout * 1000)
        rows[f"wasmer in-process timeout {ms} ms: overshoot, median (ms)"] = (
            statistics.median(late) * 1000
        )
        rows[f"wasmer in-process timeout {ms} ms: overshoot, max (ms)"] = max(late) * 1000
    return rows


def responsiveness_rows() -> dict[str, float]:
    """How much a busy Python thread gets done while a wasmer guest loops under a 200 ms timeout,
    against 200 ms on its own (two threads sharing the interpreter get about half each)."""
    engine = default_registry().get("wasmer")
    sandbox = Sandbox(ENDLESS, engine=engine, limits=Limits(timeout=0.2))
    counted = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            counted[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    time.sleep(0.2)
    alone = counted[0]
    with contextlib.suppress(DeadlineExceeded):
        sandbox.call("spin")
    during = counted[0] - alone
    done.set()
    thread.join()
    return {"wasmer 200 ms timed loop: a busy thread's progress, against alone": during / alone}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per figure")
    parser.add_argument("--only", choices=["wasmer-sdk"], help="only this engine's figures")
    options = parser.parse_args()
    rows: dict[str, float] = {}
    sdk = default_registry().availability()["wasmer-sdk"] is None
    if options.only == "wasmer-sdk":
        rows.update(wasmer_sdk_rows(options.rounds))
        rows.update(real_plugin_rows(options.rounds, ("wasmer-sdk",)))
    elif default_registry().availability()["wasmer"] is None:
        rows.update(wasmer_rows(options.rounds))
        rows.update(overshoot_rows(options.rounds))
        rows.update(responsiveness_rows())
    if options.only is None:
        if sdk:
            rows.update(wasmer_sdk_rows(options.rounds))
        rows.update(wasmtime_rows(options.rounds))
        rows.update(real_plugin_rows(options.rounds))
    width = max(map(len, rows))
    for label, value in rows.items():
        print(f"{label:<{width}}  {value:10.3f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"(load average {load:.2f}, {options.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
