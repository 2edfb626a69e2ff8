"""Every benchmark in one run, printed as one table, with the ratios against the targets in docs/performance.md.

    python benchmarks/run.py [--rounds 9] [--calls 5000] [--markdown]

What is measured (all on the same tiny JSON echo, ``{"text": "hello", "n": 1}``, per engine):

- raw export call: the engine's public API calling the ``echo`` export with a pointer and a
  length (no copy, no encoding), then the same call through the adapter's ABI fast path;
- minimal ABI call: what a careful hand-written host does for one call, with nothing else: JSON
  encode, copy in, call, copy out, JSON decode; on the engine's public API, and on wasmtime
  also through wasmtime-py's own ctypes layer with the function's types looked up once (the
  strictest baseline: the policy target is checked against the fastest minimal call);
- ``Sandbox.call``; ``PluginHost.call`` (the full policy: breaker, attempt, reporters); a
  circuit-open fast fail (``PluginHost.invoke`` refused by an open breaker, no fallback, raising
  a ContextualError that is caught);
- a call through a worker process: ``ProcessSandbox.call`` against ``Sandbox.call``, and
  ``PluginHost.call`` of a plugin isolated in a worker against the in-process one;
- compiling a real plugin (``text_tools.wasm``, C, 20 KiB) against loading it from the
  compiled-module cache (read, digest check, deserialize);
- a call that traps and the call after it (a fresh instance), against the engine's public API
  doing the same (``--parts failures``);
- a loop-heavy plugin (an FNV-1a hash) with and without fuel (``--parts metering``);
- starting a process that imports the package, or prints ``wasm-plugins --help``, against one
  that imports pluggy and attrs (``--parts startup``);
- the same JSON echo through the Extism Python SDK (``pip install extism``), with an equivalent
  plugin for Extism's ABI (``benchmarks/extism_echo.wat``), when it is installed.

Benchmarks are timed in interleaved rounds (round 1 of every benchmark, then round 2...), each
after a warm-up, and each figure is the median of its rounds: a machine that gets busier during
the run slows every benchmark alike, and the ratios, which are what the targets are about, stay
comparable. Ratios are computed from figures of this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_metering import HASH as HASH_PLUGIN  # noqa: E402
from benchmarks.modules import synthetic_module  # noqa: E402
from wasm_plugins import ContextualError, PluginHost  # noqa: E402
from wasm_plugins.engine import Engine, default_registry  # noqa: E402
from wasm_plugins.errors import DeadlineExceeded, ExecutionError  # noqa: E402
from wasm_plugins.isolation import ProcessSandbox, WorkerPool  # noqa: E402
from wasm_plugins.sandbox import Limits, LoadedModule, ModuleCache, Sandbox  # noqa: E402

ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
ENDLESS = (
    ROOT / "plugins" / "hostile-pack" / "src" / "wasm_plugins_hostile_pack" / "endless-loop.wat"
)
EXTISM_ECHO = ROOT / "benchmarks" / "extism_echo.wat"
TRAPPING = ECHO.read_text().rstrip().removesuffix(")") + (
    '  (func (export "boom") (param i32 i32) (result i64) unreachable)\n)\n'
)
"""The echo plugin with a function that traps."""
SPIN = ROOT / "benchmarks" / "spin.wat"
REAL_PLUGIN = (
    ROOT / "plugins" / "text-tools" / "src" / "wasm_plugins_text_tools" / "text_tools.wasm"
)
PAYLOAD = {"text": "hello", "n": 1}
ENGINES = ("wasmer", "wasmtime")
SIZES = {"20 KiB": 20 * 1024, "1 MB": 1 << 20, "20 MB": 20 << 20}

Action = Callable[[], Any]


@dataclass
class Benchmark:
    """One row and column of the table: an action timed per call."""

    row: str
    column: str
    action: Action
    calls: int
    samples: list[float] = field(default_factory=list)

    def warm_up(self) -> None:
        for _ in range(max(1, self.calls // 5)):
            self.action()

    def round(self) -> None:
        action = self.action
        started = time.perf_counter()
        for _ in range(self.calls):
            action()
        self.samples.append((time.perf_counter() - started) / self.calls)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


# -- hand-written minimal calls -------------------------------------------------------------------


def minimal_wasmer(wat: str) -> Action:
    """The echo through wasmer's public API, nothing else."""
    import wasmer
    import wasmer_compiler_cranelift

    store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
    instance = wasmer.Instance(wasmer.Module(store, wat))
    echo = instance.exports.echo
    view = memoryview(instance.exports.memory.buffer).cast("B")
    buffer = instance.exports.wp_alloc(256)

    def call() -> Any:
        data = json.dumps(PAYLOAD).encode()
        view[buffer : buffer + len(data)] = data
        packed = echo(buffer, len(data))
        pointer, length = packed >> 32, packed & 0xFFFFFFFF
        return json.loads(view[pointer : pointer + length].tobytes())

    return call


def refusing_host(engine: str) -> tuple[Action, PluginHost]:
    """A host whose breaker of ``echo.echo`` is open, and a call it refuses.

    Open for the whole run: with the default recovery time (30 s), a run longer than that would
    let a probe through, the probe would close the breaker, and the row would time successful
    calls instead of refusals. A call let through stops the run.
    """
    host = PluginHost(engine=engine, blocked=(), module_cache=False)
    host.load(
        {
            "name": "echo",
            "module": {"path": str(ECHO)},
            "policy": {"fallbacks": [], "breaker": {"recovery_time": "24 h"}},
        }
    )
    host.breaker("echo", "echo").force_open("benchmark")

    def fast_fail() -> None:
        try:
            host.invoke("echo", "echo", PAYLOAD)
        except ContextualError:
            pass
        else:
            raise RuntimeError("circuit-open fast fail: the breaker let a call through")

    return fast_fail, host


def _wasmtime_instance(wat: str) -> tuple[Any, Any, Any, int]:
    import wasmtime

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wat), [])
    exports = instance.exports(store)
    return store, exports["echo"], exports["memory"], exports["wp_alloc"](store, 256)


def minimal_wasmtime_public(wat: str) -> Action:
    """The echo through wasmtime-py's public API, nothing else."""
    store, echo, memory, buffer = _wasmtime_instance(wat)

    def call() -> Any:
        data = json.dumps(PAYLOAD).encode()
        memory.write(store, data, buffer)
        packed = echo(store, buffer, len(data))
        pointer, length = packed >> 32, packed & 0xFFFFFFFF
        return json.loads(memory.read(store, pointer, pointer + length))

    return call


def minimal_wasmtime_ctypes(wat: str) -> Action:
    """The echo through wasmtime-py's own ctypes layer, the function's type checked once: what
    a hand-written host that knows wasmtime-py's internals does."""
    from wasmtime import _bindings as ffi

    store, echo, memory, buffer = _wasmtime_instance(wat)
    context = store._context()
    function = ctypes.byref(echo._func)
    values = (ffi.wasmtime_val_raw_t * 2)()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    trap_reference = ctypes.byref(trap)
    base = ctypes.cast(
        ffi.wasmtime_memory_data(context, ctypes.byref(memory._memory)), ctypes.c_void_p
    ).value
    assert base is not None
    call_unchecked = ffi.wasmtime_func_call_unchecked

    def call() -> Any:
        assert store  # the store must outlive its context
        data = json.dumps(PAYLOAD).encode()
        ctypes.memmove(base + buffer, data, len(data))
        values[0].i32 = buffer
        values[1].i32 = len(data)
        if call_unchecked(context, function, values, 2, trap_reference) or trap:
            raise RuntimeError("the echo trapped")
        packed = values[0].i64
        pointer, length = packed >> 32, packed & 0xFFFFFFFF
        return json.loads(ctypes.string_at(base + pointer, length))

    return call


def floor_trap_wasmtime(wat: str) -> Action:
    """A trapping call, a new instance and the echo, through wasmtime-py's public API."""
    import wasmtime

    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wat)

    def exports() -> tuple[Any, Any]:
        store = wasmtime.Store(engine)
        return store, wasmtime.Instance(store, module, []).exports(store)

    def step() -> Any:
        store, found = exports()
        try:  # noqa: SIM105 - contextlib.suppress would be timed too
            found["boom"](store, 0, 0)
        except wasmtime.Trap:
            pass
        store, found = exports()
        buffer = found["wp_alloc"](store, 256)
        data = json.dumps(PAYLOAD).encode()
        found["memory"].write(store, data, buffer)
        packed = found["echo"](store, buffer, len(data))
        pointer, length = packed >> 32, packed & 0xFFFFFFFF
        return json.loads(found["memory"].read(store, pointer, pointer + length))

    return step


def floor_trap_wasmer(wat: str) -> Action:
    """A trapping call, a new instance and the echo, through wasmer's public API."""
    import wasmer
    import wasmer_compiler_cranelift

    store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
    module = wasmer.Module(store, wat)

    def step() -> Any:
        try:  # noqa: SIM105 - contextlib.suppress would be timed too
            wasmer.Instance(module).exports.boom(0, 0)
        except RuntimeError:
            pass
        instance = wasmer.Instance(module)
        view = memoryview(instance.exports.memory.buffer).cast("B")
        buffer = instance.exports.wp_alloc(256)
        data = json.dumps(PAYLOAD).encode()
        view[buffer : buffer + len(data)] = data
        packed = instance.exports.echo(buffer, len(data))
        pointer, length = packed >> 32, packed & 0xFFFFFFFF
        return json.loads(view[pointer : pointer + length].tobytes())

    return step


def raw_export(engine: Engine, sandbox: Sandbox) -> Action:
    """The engine's public API calling ``echo(ptr, len)`` on the sandbox's own instance."""
    instance: Any = sandbox._state().session.instance
    if engine.name == "wasmtime":
        func = instance._exports["echo"]
        store = instance._store
        return lambda: func(store, 1024, 22)
    func = instance._instance.exports.echo
    return lambda: func(1024, 22)


def raw_loaders(
    engine: Engine, wasm: bytes, directory: Path
) -> tuple[Action, Action, Action | None]:
    """The engine's own compile, deserialize (from bytes) and deserialize from a file, through
    its public API, with the configuration the adapter gives it (on wasmtime, epoch
    interruption, which timeouts need and which makes compiled code larger)."""
    if engine.name == "wasmtime":
        import wasmtime

        raw = engine.wasmtime_engine(False)  # type: ignore[attr-defined]
        serialized = wasmtime.Module(raw, wasm).serialize()
        path = directory / f"raw-{len(wasm)}.cwasm"
        path.write_bytes(serialized)
        return (
            lambda: wasmtime.Module(raw, wasm),
            lambda: wasmtime.Module.deserialize(raw, serialized),
            lambda: wasmtime.Module.deserialize_file(raw, str(path)),
        )
    import wasmer
    import wasmer_compiler_cranelift

    store = wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))
    serialized = wasmer.Module(store, wasm).serialize()
    return (
        lambda: wasmer.Module(store, wasm),
        lambda: wasmer.Module.deserialize(store, serialized),
        None,
    )


class _WithoutDepthBound:
    """An engine whose modules are loaded without the call-depth bound (the rewrite engines
    without a cheap native stack guard get, wasmer 1.1's): what the memory rewrite alone costs
    on it, the cold load's target. Everything else is the engine's own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.features = attrs.evolve(engine.features, call_depth_by_instrumentation=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def without_depth_bound(engine: Engine) -> Engine:
    """The engine itself when it bounds no call depth by rewriting, else the same engine whose
    loads skip that rewrite (the cold load of "the memory rewrite alone")."""
    if not engine.features.call_depth_by_instrumentation:
        return engine
    return cast(Engine, _WithoutDepthBound(engine))


def spin_host(engine: Engine, seconds: float) -> tuple[PluginHost, int]:
    """A host with the spin plugin, and the input that makes ``spin`` take about ``seconds``
    (measured on a bare sandbox, the fastest of a few calls)."""
    sandbox = Sandbox(SPIN, engine=engine, name="spin")
    try:

        def duration(units: int) -> float:
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                sandbox.call("spin", units)
                best = min(best, time.perf_counter() - started)
            return best

        units = 100
        while duration(units) < seconds / 4 and units < 10**7:
            units *= 4
        units = max(1, round(units * seconds / duration(units)))
    finally:
        sandbox.close()
    host = PluginHost(engine=engine.name, blocked=(), module_cache=False)
    host.load({"name": "spin", "module": {"path": str(SPIN)}, "policy": {"fallbacks": []}})
    assert host.call("spin", "spin", units) == units
    return host, units


class ThreadGang:
    """``count`` threads that live as long as the benchmark and run ``action`` together, in
    batches: as an application's threads do, each keeps its own instance of the plugin (threads
    started per batch would time thread starts and instantiations, not calls). The gang counts
    its threads' CPU time against the wall-clock time of its batches: the cores they had."""

    def __init__(self, action: Action, count: int, batch: int = 200) -> None:
        self.per_thread = max(1, batch // count)
        self.batch = self.per_thread * count
        self._action = action
        self._start = threading.Barrier(count + 1)
        self._done = threading.Barrier(count + 1)
        self._stopping = False
        self._cpu: list[float] = []
        self._wall = 0.0
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        action = self._action
        while True:
            self._start.wait()
            if self._stopping:
                return
            cpu = time.thread_time()
            for _ in range(self.per_thread):
                action()
            self._cpu.append(time.thread_time() - cpu)
            self._done.wait()

    def run_batch(self) -> None:
        self._start.wait()
        started = time.perf_counter()
        self._done.wait()
        self._wall += time.perf_counter() - started

    @property
    def cores(self) -> float | None:
        """CPU time over wall-clock time of every batch so far: on a machine whose other
        processes take cores, less than the threads could use, whatever the code."""
        return sum(self._cpu) / self._wall if self._wall else None

    def close(self) -> None:
        self._stopping = True
        self._start.wait()
        for thread in self._threads:
            thread.join()


def whole_batches(gang: ThreadGang, calls: int) -> int:
    """The calls per round nearest ``calls`` that make whole batches of the gang: every round
    then runs as many batches. A round of 250 steps over batches of 100 ran 2 or 3 of them,
    timed 0.8x or 1.2x the batch's own time per call, and the row's median was the slowest of
    its rounds of 2."""
    return gang.batch * max(1, round(calls / gang.batch))


def in_threads(gang: ThreadGang) -> Action:
    """An action that makes the gang's threads run a batch every ``gang.batch`` calls: timed per
    call, the figure is the inverse of the threads' joint throughput."""
    state = {"left": 0}

    def step() -> None:
        if state["left"] == 0:
            gang.run_batch()
            state["left"] = gang.batch
        state["left"] -= 1

    return step


BATCH = 100
"""Calls per batch of the awaited-call benchmarks."""

PYTHON_ALONE = "Python alone: the echo's JSON round trip, no guest"

THREAD_CALLS = 4
"""The thread rows' rounds make this many times ``--calls`` calls. In rounds of 30 ms (a few
switch intervals, a few batches of 8 threads) 8 threads were slower than 2 in 7 or 8 of 9
rounds on wasmtime, at medians of 0.97 to 1.00, in each of five full runs; in rounds four times
as long, in 1 to 6 of 9, at 0.99 to 1.03, in nine."""


def python_alone() -> None:
    """Work that keeps the GIL and calls no guest: what the thread rows compare against."""
    json.loads(json.dumps(PAYLOAD))


async def gather_of_resolved_futures(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio itself costs per gathered call: a gather of :data:`BATCH` futures that the
    loop resolves in one batch, as the host's threads do (``acall`` returns a future, which
    ``gather`` takes as it is); no call at all."""
    futures = [loop.create_future() for _ in range(BATCH)]

    def resolve() -> None:
        for future in futures:
            future.set_result(None)

    loop.call_soon(resolve)
    await asyncio.gather(*futures)


ASYNCIO_ALONE = "asyncio alone: gather of 100 futures resolved on the loop, no call"
"""The row of what asyncio costs per gathered call, whatever runs the call."""


def in_batches(batch: Action) -> Action:
    """An action that runs ``batch`` (:data:`BATCH` calls) once every :data:`BATCH` calls."""
    state = {"left": 0}

    def step() -> None:
        if state["left"] == 0:
            batch()
            state["left"] = BATCH
        state["left"] -= 1

    return step


# -- the benchmarks -------------------------------------------------------------------------------


class Suite:
    def __init__(self, calls: int, rounds: int, cache_directory: Path) -> None:
        self.calls = calls
        self.rounds = rounds
        self.cache_directory = cache_directory
        self.benchmarks: list[Benchmark] = []
        self.notes: list[str] = []
        self._closers: list[Callable[[], None]] = []
        self.gangs: dict[tuple[str, str], ThreadGang] = {}
        """The thread gangs by (row, column), for the cores their threads had."""

    def add(self, row: str, column: str, action: Action, calls: int | None = None) -> None:
        self.benchmarks.append(Benchmark(row, column, action, calls or self.calls))

    def engine(self, engine: Engine) -> None:
        name = engine.name
        wat = ECHO.read_text()
        sandbox = Sandbox(ECHO, engine=engine, name="echo")
        assert sandbox.call("echo", PAYLOAD) == PAYLOAD
        session = sandbox._state().session
        export = session.function("echo")
        instance = session.instance
        self.add("raw export call, engine's public API", name, raw_export(engine, sandbox))
        self.add(
            "raw export call, adapter fast path",
            name,
            lambda: instance.call_abi(export, 1024, 22),
        )
        if name == "wasmer":
            self.add("minimal ABI call, engine's public API", name, minimal_wasmer(wat))
        else:
            public = minimal_wasmtime_public(wat)
            self.add(
                "minimal ABI call, engine's public API", name, public, max(200, self.calls // 20)
            )
            self.add("minimal ABI call, ctypes, types cached", name, minimal_wasmtime_ctypes(wat))
        self.add("Sandbox.call", name, lambda: sandbox.call("echo", PAYLOAD))

        host = PluginHost(engine=name, blocked=(), module_cache=False)
        host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
        assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
        self.add("PluginHost.call (full policy)", name, lambda: host.call("echo", "echo", PAYLOAD))
        fast_fail, refusing = refusing_host(name)
        self.add("circuit-open fast fail", name, fast_fail)
        working, units = spin_host(engine, 1e-3)
        self.add(
            "PluginHost.call, 1 ms of work",
            name,
            lambda: working.call("spin", "spin", units),
            max(20, self.calls // 50),
        )
        self._closers.append(working.close)

        pool = WorkerPool(1, name=f"bench-{name}")
        remote = ProcessSandbox(ECHO, engine=engine, pool=pool, name="echo")
        assert remote.call("echo", PAYLOAD) == PAYLOAD
        self.add(
            "worker-process call, ProcessSandbox.call",
            name,
            lambda: remote.call("echo", PAYLOAD),
        )
        isolated = PluginHost(engine=name, blocked=(), module_cache=False, isolation="process")
        isolated.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
        assert isolated.call("echo", "echo", PAYLOAD) == PAYLOAD
        self.add(
            "worker-process call, PluginHost.call",
            name,
            lambda: isolated.call("echo", "echo", PAYLOAD),
        )

        # The module as a sandbox compiles it: after the rewrite that clamps its memory.
        wasm = LoadedModule.load(REAL_PLUGIN, engine=engine, limits=Limits()).wasm
        assert wasm is not None
        cache = ModuleCache(self.cache_directory / name)
        cache.compile(engine, wasm)
        assert cache.compile(engine, wasm).hit
        loads = max(10, self.calls // 200)
        self.add("compile a real plugin (20 KiB)", name, lambda: engine.compile(wasm), loads)
        self.add(
            "load it from the compiled-module cache",
            name,
            lambda: cache.compile(engine, wasm),
            loads,
        )
        self._closers += [sandbox.close, host.close, refusing.close, remote.close, pool.close]
        self._closers.append(isolated.close)

    def loads(self, engine: Engine, sizes: list[str]) -> None:
        """Loading modules of each size: the engine's raw compile and deserialize against a
        ``LoadedModule.load`` (what a ``Sandbox`` does) with no cache, a cache miss, a warm
        cache."""
        name = engine.name
        for size in sizes:
            path = self.module_file(size)
            wasm = path.read_bytes()
            limits = Limits(memory="16 MiB")
            cold_loads = 3 if size == "20 KiB" else 1
            compile_raw, deserialize_raw, deserialize_file = raw_loaders(
                engine, wasm, self.cache_directory
            )
            if size != "20 MB":  # minutes under load; no target at this size
                self.add(f"raw compile, {size}", name, compile_raw, cold_loads)
            self.add(f"raw deserialize, {size}", name, deserialize_raw, 5)
            if deserialize_file is not None:
                self.add(f"raw deserialize from a file, {size}", name, deserialize_file, 5)
            if size != "20 MB":
                self.add(
                    f"cold load, no cache, {size}",
                    name,
                    lambda path=path: LoadedModule.load(path, engine=engine, limits=limits),
                    cold_loads,
                )
                memory_only = without_depth_bound(engine)
                self.add(
                    f"cold load, memory rewrite alone, {size}",
                    name,
                    lambda path=path: LoadedModule.load(path, engine=memory_only, limits=limits),
                    cold_loads,
                )
            cache = ModuleCache(self.cache_directory / f"{name}-{size}")
            LoadedModule.load(path, engine=engine, limits=limits, cache=cache)
            assert LoadedModule.load(
                path, engine=engine, limits=limits, cache=cache
            ).compiled_from_cache
            self.add(
                f"warm-cache load, {size}",
                name,
                lambda path=path, cache=cache: LoadedModule.load(
                    path, engine=engine, limits=limits, cache=cache
                ),
                5,
            )
        # What a host loads from its cache was written long ago: the cache trusts the status
        # of no file changed in the last 2 s, so the files just written are left to settle.
        time.sleep(2.1)

    def awaited(self, engine: Engine) -> None:
        """Awaited calls of the echo against a loop of ``PluginHost.call``: ``await
        host.acall`` one at a time and ``asyncio.gather`` of 100 (a plugin whose limits do not
        bound its calls: they run on the host's threads), the same two forms through
        ``asyncio.to_thread(host.call, ...)`` (what ``acall`` did before), and a plugin whose
        limits bound its calls (run on the loop). Batches of 100 calls on one event loop."""
        name = engine.name
        # The bound raised so that a busy machine never times the echo out (on wasmer, whose
        # calls cannot be stopped in-process, a timeout sends the plugin to a worker process:
        # that row is measured on wasmtime only).
        host = PluginHost(engine=name, blocked=(), module_cache=False, inline_async_calls=1.0)
        host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
        if name == "wasmtime":
            host.load(
                {
                    "name": "bounded",
                    "module": {"path": str(ECHO)},
                    "limits": {"timeout": "500 ms"},
                    "policy": {"fallbacks": [], "deadline": "500 ms"},
                }
            )
        loop = asyncio.new_event_loop()
        self._closers += [host.close, loop.close]

        def call() -> Any:
            return host.call("echo", "echo", PAYLOAD)

        async def one_at_a_time(plugin: str) -> None:
            for _ in range(BATCH):
                await host.acall(plugin, "echo", PAYLOAD)

        async def gathered() -> None:
            await asyncio.gather(*(host.acall("echo", "echo", PAYLOAD) for _ in range(BATCH)))

        async def bounded_gathered() -> None:
            await asyncio.gather(*(host.acall("bounded", "echo", PAYLOAD) for _ in range(BATCH)))

        async def to_thread_one_at_a_time() -> None:
            for _ in range(BATCH):
                await asyncio.to_thread(call)

        async def to_thread_gathered() -> None:
            await asyncio.gather(*(asyncio.to_thread(call) for _ in range(BATCH)))

        forms: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "acall, awaited one at a time": lambda: one_at_a_time("echo"),
            "acall, asyncio.gather of 100": gathered,
            "asyncio.to_thread(host.call), one at a time": to_thread_one_at_a_time,
            "asyncio.to_thread(host.call), asyncio.gather of 100": to_thread_gathered,
        }
        if name == "wasmtime":
            forms["acall of a bounded plugin (on the loop), one at a time"] = lambda: one_at_a_time(
                "bounded"
            )
            forms["acall of a bounded plugin (on the loop), asyncio.gather of 100"] = (
                bounded_gathered
            )
        forms[ASYNCIO_ALONE] = lambda: gather_of_resolved_futures(loop)
        self.add("PluginHost.call in a loop", name, call)
        for row, form in forms.items():
            self.add(row, name, in_batches(lambda form=form: loop.run_until_complete(form())))

    def metering(self, engine: Engine) -> None:
        """A loop-heavy plugin (an FNV-1a hash, a few ms a call) with and without fuel: metered
        by instrumentation on wasmer, natively on wasmtime (``benchmarks/bench_metering.py``
        has the detail, wasmtime's instrumented fuel too)."""
        name = engine.name
        source = HASH_PLUGIN
        plain = Sandbox(source, engine=engine, name="hash", codec="raw")
        fueled = Sandbox(
            source, engine=engine, name="hash", codec="raw", limits=Limits(fuel=10**15)
        )
        work = bytes([10])
        self.add("loop-heavy plugin", name, lambda: plain.call("hash", work), 5)
        self.add("loop-heavy plugin with fuel", name, lambda: fueled.call("hash", work), 5)

    def timeouts(self, engine: Engine) -> None:
        """A successful call with a timeout against one without, and how late a timeout ends an
        endless loop (engines that enforce timeouts in-process only)."""
        if not engine.features.timeout:
            return
        name = engine.name
        timed = Sandbox(ECHO, engine=engine, name="echo", limits=Limits(timeout=5.0))
        plain = Sandbox(ECHO, engine=engine, name="echo")
        if not any(b.row == "Sandbox.call" and b.column == name for b in self.benchmarks):
            self.add("Sandbox.call", name, lambda: plain.call("echo", PAYLOAD))
        self.add("Sandbox.call with a timeout", name, lambda: timed.call("echo", PAYLOAD))
        for milliseconds in (10, 100):
            endless = Sandbox(
                ENDLESS, engine=engine, name="endless", limits=Limits(timeout=milliseconds / 1000)
            )

            def spin(endless: Sandbox = endless) -> None:
                try:  # noqa: SIM105 - contextlib.suppress would be timed too
                    endless.call("spin")
                except DeadlineExceeded:
                    pass

            self.add(f"endless loop, timeout {milliseconds} ms", name, spin, 3)
            self._closers.append(endless.close)
        self._closers += [timed.close, plain.close]

    def failures(self, engine: Engine) -> None:
        """A call that traps and the call after it (which needs a fresh instance), against the
        engine's public API doing the same: the trapping call, a new instance, the echo."""
        name = engine.name
        sandbox = Sandbox(TRAPPING, engine=engine, name="trapping")

        def trap_then_call() -> Any:
            try:  # noqa: SIM105 - contextlib.suppress would be timed too
                sandbox.call("boom", PAYLOAD)
            except ExecutionError:
                pass
            return sandbox.call("echo", PAYLOAD)

        floor = floor_trap_wasmtime(TRAPPING) if name == "wasmtime" else floor_trap_wasmer(TRAPPING)
        assert trap_then_call() == PAYLOAD and floor() == PAYLOAD
        calls = max(20, self.calls // 50)
        self.add("trap + next call, Sandbox.call", name, trap_then_call, calls)
        self.add("trap + next call, engine's public API", name, floor, calls)
        self._closers.append(sandbox.close)

    def startup(self) -> None:
        """Starting a Python process that imports the package, or prints the command line's
        help, against one that imports pluggy and attrs (what a plugin host imports anyway)."""
        python = sys.executable
        commands = {
            "start-up: python -c pass": "pass",
            "start-up: import pluggy, attrs": "import pluggy, attrs",
            "start-up: import wasm_plugins": "import wasm_plugins",
            "start-up: from wasm_plugins import PluginHost": (
                "from wasm_plugins import PluginHost"
            ),
            "start-up: wasm-plugins --help": (
                "from wasm_plugins.cli import main; raise SystemExit(main(['--help']))"
            ),
        }
        for row, code in commands.items():
            self.add(
                row,
                "process",
                lambda code=code: subprocess.run(
                    [python, "-c", code], check=True, stdout=subprocess.DEVNULL
                ),
                3,
            )

    def threads(self, engine: Engine) -> None:
        """Calls per second from 1, 2 and 8 threads at once, bare Sandbox.call against
        PluginHost.call; each figure is the time per call of all threads together."""
        name = engine.name
        sandbox = Sandbox(ECHO, engine=engine, name="echo")
        host = PluginHost(engine=name, blocked=(), module_cache=False)
        host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
        actions = {
            "Sandbox.call": lambda: sandbox.call("echo", PAYLOAD),
            "PluginHost.call": lambda: host.call("echo", "echo", PAYLOAD),
        }
        self._closers += [sandbox.close, host.close]
        for label, action in actions.items():
            for count in (1, 2, 8):
                # As many calls per thread in each batch, whatever the threads: the barriers
                # that start and end a batch cost the same per call at 2 and at 8 threads.
                gang = ThreadGang(action, count, 200 * count)
                self._closers.insert(0, gang.close)
                row = f"{label}, {count} thread(s)"
                self.gangs[(row, name)] = gang
                self.add(
                    row, name, in_threads(gang), whole_batches(gang, THREAD_CALLS * self.calls)
                )
        for count in (2, 8):
            # The interpreter's own cost of more threads, with no guest and no library: each
            # thread waiting for the GIL asks for it once a switch interval, so 7 waiting
            # threads make the holder switch more often than 1, and every switch wakes a thread
            # on the other core.
            gang = ThreadGang(python_alone, count, 200 * count)
            self._closers.insert(0, gang.close)
            row = f"{PYTHON_ALONE}, {count} thread(s)"
            self.gangs[(row, name)] = gang
            self.add(row, name, in_threads(gang), whole_batches(gang, THREAD_CALLS * self.calls))
        working, units = spin_host(engine, 300e-6)
        self._closers.append(working.close)
        for count in (1, 2):
            # Batches of 60 ms or so, two a round: the barriers that start and end a batch wake
            # each thread, and a wake-up can wait a switch interval for the GIL; over a batch
            # of a few calls that wait, not the calls, would set the figure (batches of 30 ms,
            # two or three a round, read 1.30x to 1.70x from 2 threads where a gang of its own
            # read 1.9x to 2.1x).
            gang = ThreadGang(lambda: working.call("spin", "spin", units), count, 200)
            self._closers.insert(0, gang.close)
            row = f"PluginHost.call, 300 µs of work, {count} thread(s)"
            self.gangs[(row, name)] = gang
            calls = whole_batches(gang, max(400, self.calls // 10))
            self.add(row, name, in_threads(gang), calls)
        if name == "wasmtime":
            self.foreign_calls(sandbox)

    def foreign_calls(self, sandbox: Sandbox) -> None:
        """One of the tiny functions a call makes through ctypes (the memory's size), from 1, 2
        and 8 threads: through the library's ``ctypes.CDLL`` handle, which releases the GIL
        around it, and through a ``ctypes.PyDLL`` handle to the same library, which keeps it."""
        memory = sandbox._state().session.instance.memory
        context, reference = memory._context, memory._memory_ref
        from wasmtime import _ffi  # noqa: PLC0415 - wasmtime only

        library = _ffi.dll
        handles = {
            "GIL released": library,
            "GIL kept": ctypes.PyDLL(library._name, handle=library._handle),
        }
        for label, handle in handles.items():
            size = handle["wasmtime_memory_data_size"]
            size.restype = ctypes.c_size_t
            for count in (1, 2, 8):
                gang = ThreadGang(lambda size=size: size(context, reference), count, 2000)
                self._closers.insert(0, gang.close)
                self.add(
                    f"foreign call, {label}, {count} thread(s)",
                    "wasmtime",
                    in_threads(gang),
                    whole_batches(gang, self.calls * 4),
                )

    def module_file(self, size: str) -> Path:
        if size == "20 KiB":
            return REAL_PLUGIN
        path = self.cache_directory / f"module-{size.replace(' ', '')}.wasm"
        if not path.exists():
            total = SIZES[size]
            # Large plugins are language runtimes: some MB of code and a large data snapshot.
            path.write_bytes(synthetic_module(total, code=min(total, 2 << 20)))
        return path

    def extism_loads(self, sizes: list[str]) -> None:
        try:
            import extism
        except ImportError:
            return
        for size in sizes:
            # Extism would have to provide the 20 KiB plugin's import: a synthetic module of
            # the same size stands in for it.
            wasm = (
                synthetic_module(SIZES[size])
                if size == "20 KiB"
                else self.module_file(size).read_bytes()
            )
            config = self.cache_directory / "extism-cache.toml"
            config.write_text(f'[cache]\ndirectory = "{self.cache_directory / "extism-cache"}"\n')

            def uncached(wasm: bytes = wasm) -> None:
                os.environ.pop("EXTISM_CACHE_CONFIG", None)
                extism.Plugin(wasm, wasi=False)

            def cached(wasm: bytes = wasm, config: Path = config) -> None:
                os.environ["EXTISM_CACHE_CONFIG"] = str(config)
                try:
                    extism.Plugin(wasm, wasi=False)
                finally:
                    os.environ.pop("EXTISM_CACHE_CONFIG", None)

            cached()
            if size != "20 MB":
                self.add(
                    f"cold load, no cache, {size}", "extism", uncached, 3 if size == "20 KiB" else 1
                )
            self.add(f"warm-cache load, {size}", "extism", cached, 5)

    def extism(self) -> None:
        try:
            import extism
            import wasmtime
        except ImportError:
            self.notes.append("extism: not installed (pip install extism), not measured")
            return
        plugin = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_ECHO.read_text())), wasi=False)

        def call() -> Any:
            return plugin.call(
                "echo", json.dumps(PAYLOAD), parse=lambda out: json.loads(bytes(out))
            )

        assert call() == PAYLOAD
        self.add("Extism SDK call (same JSON echo)", "extism", call)

    def run(self) -> None:
        for benchmark in self.benchmarks:
            benchmark.warm_up()
        for _ in range(self.rounds):
            for benchmark in self.benchmarks:
                benchmark.round()

    def close(self) -> None:
        for close in self._closers:
            close()

    def figure(self, row: str, column: str) -> float | None:
        for benchmark in self.benchmarks:
            if benchmark.row == row and benchmark.column == column:
                return benchmark.median
        return None


# -- the report -----------------------------------------------------------------------------------


def _versions() -> str:
    parts = [f"{platform.python_implementation()} {platform.python_version()}"]
    for package in ("wasmer", "wasmtime", "extism"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{package} {version(package)}")
    with contextlib.suppress(ImportError):
        import extism

        parts.append(f"Extism runtime {extism.extism_version()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpus = os.cpu_count()
    parts.append(f"{platform.system()} {platform.machine()}, {cpus} CPUs, load {load:.2f}")
    return ", ".join(parts)


ROWS = (
    "raw export call, engine's public API",
    "raw export call, adapter fast path",
    "minimal ABI call, engine's public API",
    "minimal ABI call, ctypes, types cached",
    "Sandbox.call",
    "Sandbox.call with a timeout",
    "endless loop, timeout 10 ms",
    "endless loop, timeout 100 ms",
    "loop-heavy plugin",
    "loop-heavy plugin with fuel",
    "Sandbox.call, 1 thread(s)",
    "Sandbox.call, 2 thread(s)",
    "Sandbox.call, 8 thread(s)",
    "PluginHost.call, 1 thread(s)",
    "PluginHost.call, 2 thread(s)",
    "PluginHost.call, 8 thread(s)",
    "PluginHost.call, 300 µs of work, 1 thread(s)",
    "PluginHost.call, 300 µs of work, 2 thread(s)",
    "foreign call, GIL released, 1 thread(s)",
    "foreign call, GIL released, 2 thread(s)",
    "foreign call, GIL released, 8 thread(s)",
    "foreign call, GIL kept, 1 thread(s)",
    "foreign call, GIL kept, 2 thread(s)",
    "foreign call, GIL kept, 8 thread(s)",
    f"{PYTHON_ALONE}, 2 thread(s)",
    f"{PYTHON_ALONE}, 8 thread(s)",
    "PluginHost.call (full policy)",
    "PluginHost.call in a loop",
    "acall, awaited one at a time",
    "acall, asyncio.gather of 100",
    "acall of a bounded plugin (on the loop), one at a time",
    "acall of a bounded plugin (on the loop), asyncio.gather of 100",
    "asyncio.to_thread(host.call), one at a time",
    "asyncio.to_thread(host.call), asyncio.gather of 100",
    "asyncio alone: gather of 100 futures resolved on the loop, no call",
    "circuit-open fast fail",
    "PluginHost.call, 1 ms of work",
    "worker-process call, ProcessSandbox.call",
    "worker-process call, PluginHost.call",
    "Extism SDK call (same JSON echo)",
    "compile a real plugin (20 KiB)",
    "load it from the compiled-module cache",
    "trap + next call, Sandbox.call",
    "trap + next call, engine's public API",
    "start-up: python -c pass",
    "start-up: import pluggy, attrs",
    "start-up: import wasm_plugins",
    "start-up: from wasm_plugins import PluginHost",
    "start-up: wasm-plugins --help",
)
IN_MILLISECONDS = {
    "start-up: python -c pass",
    "start-up: import pluggy, attrs",
    "start-up: import wasm_plugins",
    "start-up: from wasm_plugins import PluginHost",
    "start-up: wasm-plugins --help",
    "endless loop, timeout 10 ms",
    "endless loop, timeout 100 ms",
    "compile a real plugin (20 KiB)",
    "load it from the compiled-module cache",
}


LOAD_ROWS = (
    "raw compile",
    "raw deserialize",
    "raw deserialize from a file",
    "cold load, no cache",
    "cold load, memory rewrite alone",
    "warm-cache load",
)


def _is_load(row: str) -> bool:
    return row.rsplit(",", maxsplit=1)[0] in LOAD_ROWS


def _cell(value: float | None, row: str) -> str:
    if value is None:
        return ""
    if row in IN_MILLISECONDS or _is_load(row):
        return f"{value * 1e3:.3f} ms"
    return f"{value * 1e6:.2f} µs"


def table(suite: Suite, columns: list[str]) -> list[str]:
    measured = {benchmark.row for benchmark in suite.benchmarks}
    rows = [row for row in ROWS if row in measured]
    rows += [
        f"{row}, {size}" for size in SIZES for row in LOAD_ROWS if f"{row}, {size}" in measured
    ]
    width = max(len(row) for row in rows)
    lines = [
        "| " + "measurement".ljust(width) + " | " + " | ".join(f"{c:>11}" for c in columns) + " |",
        "|" + "-" * (width + 2) + "|" + "|".join("-" * 12 + ":" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [f"{_cell(suite.figure(row, column), row):>11}" for column in columns]
        lines.append("| " + row.ljust(width) + " | " + " | ".join(cells) + " |")
    return lines


@dataclass
class Target:
    name: str
    numerator: str
    denominator: str | tuple[str, ...]
    limit: float
    denominator_column: str | None = None
    """Where the denominator comes from when it is not the engine's own column."""
    constant: float | None = None
    """A fixed denominator (seconds) instead of a measured one."""
    numerator_column: str | None = None
    """Where the numerator comes from when it is not the engine's own column."""


TARGETS = (
    Target(
        "policy call ≤ 1.5 x minimal ABI call (the fastest one)",
        "PluginHost.call (full policy)",
        ("minimal ABI call, ctypes, types cached", "minimal ABI call, engine's public API"),
        1.5,
    ),
    Target(
        "policy call ≤ 0.5 x Extism SDK call",
        "PluginHost.call (full policy)",
        "Extism SDK call (same JSON echo)",
        0.5,
        "extism",
    ),
    Target(
        "circuit-open fast fail ≤ 1.0 x policy call",
        "circuit-open fast fail",
        "PluginHost.call (full policy)",
        1.0,
    ),
    Target(
        "circuit-open fast fail ≤ 0.05 x a call doing 1 ms of work",
        "circuit-open fast fail",
        "PluginHost.call, 1 ms of work",
        0.05,
    ),
    Target(
        "cached load ≤ 1/10 x compile",
        "load it from the compiled-module cache",
        "compile a real plugin (20 KiB)",
        0.1,
    ),
    Target(
        "call with a timeout ≤ 1.2 x without",
        "Sandbox.call with a timeout",
        "Sandbox.call",
        1.2,
    ),
    Target(
        "loop-heavy plugin with fuel ≤ 1.3 x without",
        "loop-heavy plugin with fuel",
        "loop-heavy plugin",
        1.3,
    ),
    Target(
        "10 ms timeout ends the call ≤ 1.3 x 10 ms",
        "endless loop, timeout 10 ms",
        "",
        1.3,
        constant=0.010,
    ),
    Target(
        "100 ms timeout ends the call ≤ 1.05 x 100 ms",
        "endless loop, timeout 100 ms",
        "",
        1.05,
        constant=0.100,
    ),
    Target(
        "trap + next call ≤ 2 x the engine's public API",
        "trap + next call, Sandbox.call",
        "trap + next call, engine's public API",
        2.0,
    ),
    Target(
        "import wasm_plugins ≤ 2 x import pluggy, attrs",
        "start-up: import wasm_plugins",
        "start-up: import pluggy, attrs",
        2.0,
        "process",
        numerator_column="process",
    ),
    Target(
        "wasm-plugins --help ≤ 2 x import pluggy, attrs",
        "start-up: wasm-plugins --help",
        "start-up: import pluggy, attrs",
        2.0,
        "process",
        numerator_column="process",
    ),
    Target(
        "worker-process call ≤ 4 x in-process (Sandbox.call)",
        "worker-process call, ProcessSandbox.call",
        "Sandbox.call",
        4.0,
    ),
    Target(
        "worker-process call ≤ 4 x in-process (PluginHost.call)",
        "worker-process call, PluginHost.call",
        "PluginHost.call (full policy)",
        4.0,
    ),
)


def load_targets() -> tuple[Target, ...]:
    made = []
    for size in SIZES:
        made.append(
            Target(
                f"warm-cache load ≤ 2 x raw deserialize, {size}",
                f"warm-cache load, {size}",
                f"raw deserialize, {size}",
                2.0,
            )
        )
        made.append(
            Target(
                f"warm-cache load ≤ 2 x raw deserialize from a file, {size}",
                f"warm-cache load, {size}",
                f"raw deserialize from a file, {size}",
                2.0,
            )
        )
        made.append(
            Target(
                f"cold load (memory rewrite alone) ≤ 1.3 x raw compile, {size}",
                f"cold load, memory rewrite alone, {size}",
                f"raw compile, {size}",
                1.3,
            )
        )
        made.append(
            Target(
                f"cold load (all of it) ≤ 2 x raw compile, {size}",
                f"cold load, no cache, {size}",
                f"raw compile, {size}",
                2.0,
            )
        )
    return tuple(made)


def targets(suite: Suite, engines: list[str]) -> tuple[list[str], bool]:
    every = TARGETS + load_targets()
    width = max(len(target.name) for target in every)
    lines = [
        "| " + "target".ljust(width) + " | " + " | ".join(f"{e:>14}" for e in engines) + " |",
        "|" + "-" * (width + 2) + "|" + "|".join("-" * 15 + ":" for _ in engines) + "|",
    ]
    everything = True
    for target in every:
        cells = []
        for engine in engines:
            numerator = suite.figure(target.numerator, target.numerator_column or engine)
            names = (
                target.denominator
                if isinstance(target.denominator, tuple)
                else (target.denominator,)
            )
            column = target.denominator_column or engine
            denominator = target.constant or next(
                (f for f in (suite.figure(n, column) for n in names) if f is not None), None
            )
            if numerator is None or denominator is None:
                cells.append(f"{'n/a':>14}")
                continue
            ratio = numerator / denominator
            passed = ratio <= target.limit
            everything &= passed
            cells.append(f"{ratio:>7.2f}x {'pass' if passed else 'FAIL':>5}")
        if any("n/a" not in cell for cell in cells):
            lines.append("| " + target.name.ljust(width) + " | " + " | ".join(cells) + " |")
    return lines, everything


def awaited_calls(suite: Suite, engines: list[str]) -> list[str]:
    """Calls per second of each awaited form over a loop of ``PluginHost.call`` (target: the
    gather of unbounded calls at least 0.5x)."""
    lines = []
    for engine in engines:
        loop = suite.figure("PluginHost.call in a loop", engine)
        if loop is None:
            continue
        for row in ROWS:
            if row.startswith(("acall", "asyncio.to_thread")):
                figure = suite.figure(row, engine)
                if figure is None:
                    continue
                line = f"{engine}: {row}: {loop / figure:.2f}x the calls/s of a loop of call"
                if row == "acall, asyncio.gather of 100":
                    passed = loop / figure >= 0.5
                    line += f" (target ≥ 0.5) {'pass' if passed else 'FAIL'}"
                lines.append(line)
        alone = suite.figure(ASYNCIO_ALONE, engine)
        if alone is not None:
            # The GIL runs the loop's part and the call's one after the other: no hand-over
            # to a thread does better than this.
            lines.append(
                f"{engine}: ceiling of a gathered call off the loop (a call plus asyncio alone): "
                f"{loop / (loop + alone):.2f}x the calls/s of a loop of call"
            )
    return lines


def thread_scaling(suite: Suite, engines: list[str]) -> list[str]:
    """Throughput with N threads over one thread's, and PluginHost.call's scaling over the bare
    Sandbox.call's (target: at least 0.9 at 2 threads; 8 threads no worse than 2)."""
    lines = []
    for engine in engines:

        def had(*rows: str, engine: str = engine) -> str:
            """The cores the rows' threads had: the bound a busy machine sets on scaling."""
            gangs = [suite.gangs[(row, engine)] for row in rows if (row, engine) in suite.gangs]
            cores = [gang.cores for gang in gangs]
            shown = " / ".join(f"{value:.2f}" for value in cores if value is not None)
            return f" (the threads had {shown} cores)" if shown else ""

        figures = {}
        for label in ("Sandbox.call", "PluginHost.call"):
            one = suite.figure(f"{label}, 1 thread(s)", engine)
            for count in (2, 8):
                many = suite.figure(f"{label}, {count} thread(s)", engine)
                if one is not None and many is not None:
                    figures[(label, count)] = one / many
        if not figures:
            continue
        for (label, count), value in figures.items():
            lines.append(f"{engine}: {label} with {count} threads: {value:.2f}x one thread")
        if ("Sandbox.call", 2) in figures and ("PluginHost.call", 2) in figures:
            ratio = figures[("PluginHost.call", 2)] / figures[("Sandbox.call", 2)]
            verdict = "pass" if ratio >= 0.9 else "FAIL"
            lines.append(
                f"{engine}: PluginHost.call 2-thread scaling / Sandbox.call's: {ratio:.2f} "
                f"(target ≥ 0.9) {verdict}"
            )
        one = suite.figure("PluginHost.call, 300 µs of work, 1 thread(s)", engine)
        two = suite.figure("PluginHost.call, 300 µs of work, 2 thread(s)", engine)
        if one is not None and two is not None:
            verdict = "(target ≥ 1.7) " + ("pass" if one / two >= 1.7 else "FAIL")
            if engine == "wasmer":
                verdict = "(no target: wasmer 1.1 keeps the GIL through a guest call)"
            lines.append(
                f"{engine}: PluginHost.call of 300 µs of work with 2 threads: {one / two:.2f}x "
                f"one thread {verdict}"
                + had(
                    "PluginHost.call, 300 µs of work, 1 thread(s)",
                    "PluginHost.call, 300 µs of work, 2 thread(s)",
                )
            )
        released = suite.figure("foreign call, GIL released, 1 thread(s)", engine)
        kept = suite.figure("foreign call, GIL kept, 1 thread(s)", engine)
        if released is not None and kept is not None:

            def scaling(label: str, one: float, engine: str = engine) -> str:
                many = (
                    suite.figure(f"foreign call, {label}, {n} thread(s)", engine) for n in (2, 8)
                )
                return " / ".join(f"{one / figure:.2f}x" for figure in many if figure)

            lines.append(
                f"{engine}: a tiny foreign call releasing the GIL: {released / kept:.2f}x the time "
                "of one keeping it; 2 / 8 threads over one: released "
                f"{scaling('GIL released', released)}, kept {scaling('GIL kept', kept)}"
            )
        if ("PluginHost.call", 8) in figures and ("PluginHost.call", 2) in figures:
            ratio = figures[("PluginHost.call", 8)] / figures[("PluginHost.call", 2)]
            eight, two = "PluginHost.call, 8 thread(s)", "PluginHost.call, 2 thread(s)"
            host = round_ratios(suite, eight, two, engine)
            slower = sum(r < 1 for r in host)
            # No worse: the two rows do the same work per call on 2 cores, so their ratio is 1
            # give or take the run's noise, and a median below 1 alone says nothing. Worse is
            # slower in more than two thirds of the rounds (each timed beside the other row's
            # round of the same number), or by more than 5 % at the median.
            worse = ratio < 0.95 or 3 * slower > 2 * len(host)
            line = (
                f"{engine}: PluginHost.call 8 threads / 2 threads: {ratio:.2f}, slower in "
                f"{slower} of {len(host)} rounds (target: no worse) {'FAIL' if worse else 'pass'}"
            )
            python = round_ratios(
                suite, f"{PYTHON_ALONE}, 8 thread(s)", f"{PYTHON_ALONE}, 2 thread(s)", engine
            )
            if python:
                # What the interpreter itself loses with 8 threads, no guest and no library,
                # in the same passes: shown beside it, not judged (it moves by 2 % between
                # runs, as much as the call's ratio does).
                line += f"; Python alone {statistics.median(python):.2f}"
            lines.append(line + had(two, eight))
    return lines


def round_ratios(suite: Suite, row: str, other: str, column: str) -> list[float]:
    """Round by round, the calls per second of ``row`` over those of ``other`` (the rounds are
    interleaved: round i of each was timed within the same pass); empty when either is
    missing."""
    samples = {(b.row, b.column): b.samples for b in suite.benchmarks}
    mine, theirs = samples.get((row, column)), samples.get((other, column))
    if not mine or not theirs:
        return []
    return [b / a for a, b in zip(mine, theirs, strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per benchmark")
    parser.add_argument("--calls", type=int, default=5000, help="calls per round")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to measure")
    parser.add_argument(
        "--parts",
        default="calls,loads,timeouts,metering,threads,async,failures,startup",
        help="what to measure: calls, loads, timeouts, metering, threads, async, failures, "
        "startup (comma-separated)",
    )
    parser.add_argument("--sizes", default=",".join(SIZES), help="module sizes for the loads")
    arguments = parser.parse_args()
    parts = arguments.parts.split(",")
    sizes = [size.strip() for size in arguments.sizes.split(",")]
    availability = default_registry().availability()
    engines = []
    with tempfile.TemporaryDirectory(
        prefix="wasm-plugins-bench-", ignore_cleanup_errors=True
    ) as directory:
        suite = Suite(arguments.calls, arguments.rounds, Path(directory))
        for name in arguments.engines.split(","):
            reason = availability.get(name, "unknown engine")
            if reason is not None:
                suite.notes.append(f"{name}: not available ({reason}), not measured")
                continue
            engines.append(name)
            engine = default_registry().get(name)
            if "calls" in parts:
                suite.engine(engine)
            if "loads" in parts:
                suite.loads(engine, sizes)
            if "timeouts" in parts:
                suite.timeouts(engine)
            if "metering" in parts:
                suite.metering(engine)
            if "threads" in parts:
                suite.threads(engine)
            if "async" in parts:
                suite.awaited(engine)
            if "failures" in parts:
                suite.failures(engine)
        if "calls" in parts:
            suite.extism()
        if "loads" in parts:
            suite.extism_loads(sizes)
        if "startup" in parts:
            suite.startup()
        try:
            suite.run()
        finally:
            suite.close()
    columns = engines + [
        column
        for column in ("extism", "process")
        if any(b.column == column for b in suite.benchmarks)
    ]
    print(f"wasm-plugins benchmarks: {_versions()}")
    print(f"median of {arguments.rounds} interleaved rounds, after a warm-up; per call")
    print()
    print("\n".join(table(suite, columns)))
    print()
    lines, everything = targets(suite, engines)
    print("\n".join(lines))
    awaited = awaited_calls(suite, engines)
    if awaited:
        print()
        print("\n".join(awaited))
    scaling = thread_scaling(suite, engines)
    if scaling:
        print()
        print("\n".join(scaling))
    for note in suite.notes:
        print(f"\nnote: {note}")
    print()
    # The awaited calls' and the threads' targets are lines of their own.
    everything = everything and not any("FAIL" in line for line in [*awaited, *scaling])
    print("every target met" if everything else "some targets are not met (FAIL above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
