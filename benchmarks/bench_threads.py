"""Calls from 1, 2 and 8 threads on wasmtime, counted in what a busy machine does not change.

``benchmarks/run.py --parts threads`` gives calls per second of wall-clock time; on a machine whose
cores are taken by other processes, those figures measure the load more than the code. Here every
batch also counts, per call of all threads together:

- ``cpu``: the CPU time of the calling threads (``time.thread_time``): what a call costs, whoever
  else runs;
- ``waits``: the calling threads' voluntary context switches (``getrusage(RUSAGE_THREAD)``): a
  thread that gives up its core by itself in these loops does so to wait for the GIL;
- ``cores``: CPU time over wall-clock time: the cores the threads had. Two threads cannot run
  1.7x faster than one when they had 1.2 cores between them.

The actions, from the engine's own functions to the full host:

- ``wasmtime_memory_data_size`` through a ``ctypes.CDLL`` handle (releases the GIL around the
  call) and through a ``ctypes.PyDLL`` handle (keeps it): no wasm-plugins code at all;
- a call of an empty export through wasmtime-py's public API (``Func.__call__``, which releases
  the GIL around the guest): the bare engine;
- ``Sandbox.call`` and ``PluginHost.call`` of the JSON echo, and ``PluginHost.call`` of a guest
  doing about 300 µs of work, as the library makes them (short calls keep the GIL while other
  threads call guests too: see ``wasm_plugins/engine/_gil.py``); then the same three with the
  guest call always releasing the GIL (rows "GIL always released"): what that rule changes.

Before the table, a long guest call on each engine while another Python thread loops: on
wasmtime the other thread runs during the call; on wasmer 1.1, which keeps the GIL through a
guest call, it gets at most one switch interval, after the guest returned.

The threads live as long as the benchmark, each with its own store or instance, as an
application's threads do; rounds alternate between the actions, and figures are medians.

    python benchmarks/bench_threads.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins import PluginHost  # noqa: E402
from wasm_plugins.engine import _wasmtime  # noqa: E402
from wasm_plugins.sandbox import Sandbox  # noqa: E402

ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
SPIN = ROOT / "benchmarks" / "spin.wat"
PAYLOAD = {"text": "hello", "n": 1}
COUNTS = (1, 2, 8)
RELEASED = "GIL always released"
"""The suffix of the rows whose instances never keep the GIL."""
EMPTY = '(module (func (export "nothing") (result i32) (i32.const 0)))'


class Gang:
    """``count`` threads that run ``action`` ``per_thread`` times per batch, counting."""

    def __init__(self, action: Callable[[], Any], count: int, calls: int) -> None:
        self.count = count
        self.per_thread = max(1, calls // count)
        self._action = action
        self._start = threading.Barrier(count + 1)
        self._done = threading.Barrier(count + 1)
        self._stopping = False
        self._counted: list[tuple[float, int]] = []
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        action = self._action
        while True:
            self._start.wait()
            if self._stopping:
                return
            switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
            cpu = time.thread_time()
            for _ in range(self.per_thread):
                action()
            cpu = time.thread_time() - cpu
            switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - switches
            self._counted.append((cpu, switches))
            self._done.wait()

    def batch(self) -> tuple[float, float, float]:
        """Wall-clock seconds, CPU seconds and voluntary switches per call of one batch."""
        self._counted.clear()
        self._start.wait()
        started = time.perf_counter()
        self._done.wait()
        wall = time.perf_counter() - started
        calls = self.per_thread * self.count
        cpu = sum(counted[0] for counted in self._counted)
        switches = sum(counted[1] for counted in self._counted)
        return wall / calls, cpu / calls, switches / calls

    def close(self) -> None:
        self._stopping = True
        self._start.wait()
        for thread in self._threads:
            thread.join()


def foreign_calls(sandbox: Sandbox) -> dict[str, Callable[[], Any]]:
    """``wasmtime_memory_data_size`` on the sandbox's memory, releasing and keeping the GIL."""
    memory = sandbox._state().session.instance.memory
    context, reference = memory._context, memory._memory_ref
    library = _ffi.dll
    actions = {}
    for label, handle in (
        ("C function, GIL released", library),
        ("C function, GIL kept", ctypes.PyDLL(library._name, handle=library._handle)),
    ):
        size = handle["wasmtime_memory_data_size"]
        size.restype = ctypes.c_size_t
        actions[label] = lambda size=size: size(context, reference)
    return actions


def engine_call() -> Callable[[], Any]:
    """An empty export called through wasmtime-py's public API, one store per thread."""
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, EMPTY)
    local = threading.local()

    def call() -> Any:
        made = getattr(local, "made", None)
        if made is None:
            store = wasmtime.Store(engine)
            made = local.made = (store, wasmtime.Instance(store, module, []).exports(store))
        store, exports = made
        return exports["nothing"](store)

    return call


def spin_units(seconds: float) -> int:
    """The input that makes ``spin`` take about ``seconds`` (the fastest of a few calls)."""
    with Sandbox(SPIN, engine="wasmtime", name="spin") as sandbox:

        def duration(units: int) -> float:
            best = float("inf")
            for _ in range(9):
                started = time.perf_counter()
                sandbox.call("spin", units)
                best = min(best, time.perf_counter() - started)
            return best

        units = 100
        while duration(units) < seconds / 4:
            units *= 4
        return max(1, round(units * seconds / duration(units)))


def python_beside_a_guest(engine: str, units: int) -> tuple[float, float]:
    """The CPU time another Python thread had while a long guest call ran, and the call's
    wall-clock time: at most one switch interval (after the guest returned) when the engine keeps
    the GIL through the guest call."""
    with Sandbox(SPIN, engine=engine, name="spin") as sandbox:
        sandbox.call("spin", 1)
        progress: list[tuple[float, float]] = []
        calling = threading.Event()
        calling.set()

        def python_work() -> None:
            while calling.is_set():
                progress.append((time.perf_counter(), time.thread_time()))

        beside = threading.Thread(target=python_work)
        beside.start()
        while not progress:
            time.sleep(0.001)
        began = time.perf_counter()
        sandbox.call("spin", units)
        ended = time.perf_counter()
        calling.clear()
        beside.join()
    inside = [cpu for at, cpu in progress if began <= at <= ended]
    return (inside[-1] - inside[0] if len(inside) > 1 else 0.0), ended - began


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per batch of tiny calls")
    arguments = parser.parse_args()
    calls = arguments.calls

    sandbox = Sandbox(ECHO, engine="wasmtime", name="echo")
    host = PluginHost(engine="wasmtime", blocked=(), module_cache=False)
    host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
    units = spin_units(300e-6)
    adaptive = _wasmtime.WasmtimeInstance._keep_gil

    def always_released(instance: Any, keep: bool) -> None:
        adaptive(instance, False)

    host.load({"name": "spin", "module": {"path": str(SPIN)}, "policy": {"fallbacks": []}})
    actions: dict[str, tuple[Callable[[], Any], int]] = {
        label: (action, calls * 4) for label, action in foreign_calls(sandbox).items()
    }
    actions["wasmtime-py Func call, empty export"] = (engine_call(), calls // 4)
    actions["Sandbox.call, echo"] = (lambda: sandbox.call("echo", PAYLOAD), calls)
    actions["PluginHost.call, echo"] = (lambda: host.call("echo", "echo", PAYLOAD), calls)
    actions["PluginHost.call, 300 µs of work"] = (
        lambda: host.call("spin", "spin", units),
        max(40, calls // 25),
    )
    # The same calls with the guest call always releasing the GIL: what keeping it for short
    # calls while other threads call too changes (see engine/_gil.py). Each row's threads have
    # instances of their own, which look at whether to keep it only during that row.
    for label in ("Sandbox.call, echo", "PluginHost.call, echo", "PluginHost.call, 300 µs of work"):
        actions[f"{label}, {RELEASED}"] = actions[label]
    gangs = {
        (label, count): Gang(action, count, batch)
        for label, (action, batch) in actions.items()
        for count in COUNTS
    }
    samples: dict[tuple[str, int], list[tuple[float, float, float]]] = {key: [] for key in gangs}
    loads = []
    for round in range(arguments.rounds + 1):
        loads.append(os.getloadavg()[0])
        for key, gang in gangs.items():
            keep_gil = always_released if key[0].endswith(RELEASED) else adaptive
            _wasmtime.WasmtimeInstance._keep_gil = keep_gil  # type: ignore[method-assign]
            figures = gang.batch()
            if round:  # the first is a warm-up, where every thread makes its instance
                samples[key].append(figures)
    _wasmtime.WasmtimeInstance._keep_gil = adaptive  # type: ignore[method-assign]
    for gang in gangs.values():
        gang.close()
    host.close()
    sandbox.close()

    print(
        f"CPython {sys.version.split()[0]}, wasmtime {version('wasmtime')}, "
        f"{os.cpu_count()} CPUs, load average {min(loads):.1f}-{max(loads):.1f}; "
        f"median of {arguments.rounds} alternating rounds, per call of all threads together"
    )
    header = f"| {'action':<42} | threads | wall µs | cpu µs | waits | cores | wall vs 1 |"
    for engine in ("wasmtime", "wasmer"):
        try:
            beside, call = python_beside_a_guest(engine, units * 300)
        except Exception as exc:  # wasmer is not installed on every Python
            print(f"{engine}: not measured ({type(exc).__name__})")
            continue
        print(
            f"{engine}: during a guest call of {call * 1e3:.0f} ms, another Python thread ran "
            f"{beside * 1e3:.1f} ms"
        )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for label in actions:
        one = statistics.median(sample[0] for sample in samples[(label, 1)])
        for count in COUNTS:
            rounds = samples[(label, count)]
            wall = statistics.median(sample[0] for sample in rounds)
            cpu = statistics.median(sample[1] for sample in rounds)
            waits = statistics.median(sample[2] for sample in rounds)
            cores = statistics.median(sample[1] / sample[0] for sample in rounds)
            print(
                f"| {label:<42} | {count:>7} | {wall * 1e6:>7.2f} | {cpu * 1e6:>6.2f} "
                f"| {waits:>5.2f} | {cores:>5.2f} | {one / wall:>8.2f}x |"
            )


if __name__ == "__main__":
    main()
