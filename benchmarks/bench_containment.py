"""Containment costs: how late a wasmtime timeout fires while Python threads keep the interpreter
busy, and what one guest stack overflow costs the host.

Timeouts: a guest loops for ever under a 200 ms timeout while ``--busy`` Python threads spin; the
figure is the call's wall-clock time, median of ``--rounds`` rounds, for each epoch ticker:

- ``native``: a POSIX timer calls ``wasmtime_engine_increment_epoch`` outside the interpreter;
- ``thread``: a Python thread does it, and needs the GIL for every 2 ms tick.

Each ticker runs in a fresh interpreter (the ticker is chosen at import through
``WASM_PLUGINS_EPOCH_TICKER``), so the two are measured side by side under the same load.

Stack overflow: an endless guest recursion on the main thread's stack, in a fresh interpreter
each; the figures are the growth of the process's peak resident memory (``ru_maxrss``) and the
call's wall-clock time, on each engine, with the call-depth bound the sandbox writes into modules
for wasmer and (``unbounded``) with the engine's own guard only.

    python benchmarks/bench_containment.py [--busy 4] [--rounds 5] [--timeout 0.2] [--only stack]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import statistics, sys, threading, time
from wasm_plugins.engine._epoch import native_ticks
from wasm_plugins.errors import DeadlineExceeded
from wasm_plugins.sandbox import Limits, Sandbox

busy, rounds, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
SPIN = '''(module (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0)))'''
sandbox = Sandbox(SPIN, engine="wasmtime", limits=Limits(timeout=timeout))
stop = threading.Event()

def spin():
    while not stop.is_set():
        pass

threads = [threading.Thread(target=spin) for _ in range(busy)]
for thread in threads:
    thread.start()
took = []
for _ in range(rounds):
    started = time.perf_counter()
    try:
        sandbox.call("spin")
    except DeadlineExceeded:
        pass
    took.append(time.perf_counter() - started)
stop.set()
for thread in threads:
    thread.join()
print(native_ticks(), statistics.median(took), max(took))
"""


OVERFLOW_CHILD = """
import resource, sys, time
import attrs
from wasm_plugins.engine import get_engine
from wasm_plugins.errors import ExecutionError
from wasm_plugins.sandbox import Sandbox

name, bounded = sys.argv[1], sys.argv[2] == "bounded"
RECURSE = '''(module (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $down (param i32) (result i32)
    (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "recurse") (param i32 i32) (result i64)
    (drop (call $down (i32.const 0))) (i64.const 0)))'''
engine = get_engine(name)
if not bounded:
    # The engine as if its own guard were cheap: no bound written into the module.
    engine.features = attrs.evolve(engine.features, call_depth_by_instrumentation=False)
sandbox = Sandbox(RECURSE, engine=engine, codec="raw")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    sandbox.call_bytes("recurse", b"")
except ExecutionError as error:
    trap = error.trap
took = time.perf_counter() - started
print(trap, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, took)
"""


def stack_overflow() -> None:
    """Peak memory and time of one guest stack overflow, per engine, bounded or not."""
    print("one guest stack overflow on the main thread (8 MiB stack):")
    for engine in ("wasmer", "wasmtime"):
        for mode in ("bounded", "unbounded") if engine == "wasmer" else ("bounded",):
            result = subprocess.run(
                [sys.executable, "-c", OVERFLOW_CHILD, engine, mode],
                check=False,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(f"{engine:>9} {mode:>9}: unavailable ({result.stderr.strip()[-200:]})")
                continue
            trap, grown, took = result.stdout.split()
            print(
                f"{engine:>9} {mode:>9}: {trap}, peak memory +{int(grown) / 1024:6.1f} MiB, "
                f"{float(took) * 1000:6.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=0.2)
    parser.add_argument("--only", choices=("timeout", "stack"), default=None)
    options = parser.parse_args()
    if options.only != "timeout":
        stack_overflow()
    if options.only == "stack":
        return
    print(f"timeout {options.timeout * 1000:.0f} ms, {options.busy} busy Python threads")
    for ticker in ("native", "thread"):
        output = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(options.busy),
                str(options.rounds),
                str(options.timeout),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "WASM_PLUGINS_EPOCH_TICKER": ticker},
        ).stdout.split()
        native, median, worst = output[0] == "True", float(output[1]), float(output[2])
        label = ticker if native == (ticker == "native") else f"{ticker} (unavailable: thread)"
        print(
            f"{label:>8}: median {median * 1000:7.0f} ms, worst {worst * 1000:7.0f} ms, "
            f"{median / options.timeout:5.2f}x the timeout"
        )


if __name__ == "__main__":
    main()
