"""The ``wasmer-sdk`` engine: Wasmer on every CPython 3, one sandboxed process per instance.

The Wasmer SDK (PyPI ``wasmer-sdk``) runs WASI commands in sandboxes, with stdin and stdout
pipes, and has no in-process instance API. So a plugin module is made a command by the command
wrapper (:mod:`wasm_plugins.sandbox._command`): its appended ``_start`` serves framed calls read
from stdin and answers on stdout. An instance is one long-lived process; its calls are
serialised. Host functions become ``HOSTCALL`` frames answered by this process, on the calling
thread (a host function may read and write guest memory: the guest serves ``READ`` and
``WRITE`` frames until the host's ``RETURN``). The guest's writes to its stdout and stderr become
``LOG`` frames, handed to the WASI output callback. Every module is metered (the sandbox's
metering pass), fuel or not: the meter is one more host call, answered by a :class:`Meter`
that hands the guest at most :data:`SLICE` units at a time, so that a guest whose process was
killed stops at its next visit (killing the process does not stop a guest that computes: it
runs on a thread of the SDK's runtime in this process). With fuel, the meter raises when the
budget is spent, and the process is replaced; deadlines stay with the process kill.

The SDK is asyncio-based. One private event loop runs in one daemon thread per host process,
shared by every instance, with one Wasmer client; coroutines are submitted to it from the
calling thread, and every wait has the call's deadline: a process that runs past it is killed
(``DeadlineExceeded``), and one that dies, closes its pipes or writes garbage is reported as a
typed error and never waited on. Live processes are bounded (``WASM_PLUGINS_SDK_MAX_PROCESSES``,
16 by default): an idle process is closed, least recently used first, and its instance, when
next used, asks the sandbox for a fresh one (``InstanceError`` with state ``evicted``). At exit
every process, sandbox and the client are closed on the loop, the loop is stopped and garbage
is collected, so no SDK object is left for the interpreter's final collection (a tokio thread
calling back into a finalizing interpreter aborts the process).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import functools
import gc
import importlib.metadata
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import wasmer_sdk

from wasm_plugins.engine._commands import (
    OP_CALL,
    OP_DATA,
    OP_GLOBAL_GET,
    OP_GLOBAL_SET,
    OP_HELLO,
    OP_HOSTCALL,
    OP_LOG,
    OP_READ,
    OP_REPORT,
    OP_RESULT,
    OP_RETURN,
    OP_SET_SCRATCH,
    OP_VALUE,
    OP_WRITE,
    WasiCommand,
    metered_module,
    wrap_as_command,
)
from wasm_plugins.engine._meter import (
    FUEL_EXPORT,
    METER_FUNCTION,
    METER_MODULE,
    METER_SIGNATURE,
    Meter,
)
from wasm_plugins.engine._module_types import ModuleTypes, pack, read_module_types, unpack
from wasm_plugins.engine._protocol import (
    CallBudget,
    Engine,
    EngineFeatures,
    EngineInstance,
    ExportFunction,
    ExternInfo,
    FuncSignature,
    GuestMemory,
    HostImport,
    LinkedModule,
    MemoryImport,
    WasiSettings,
)
from wasm_plugins.engine._traps import (
    check_range,
    truncate,
    wasmer_trap,
)
from wasm_plugins.errors import (
    CallCancelled,
    CommunicationError,
    ConfigurationError,
    DeadlineExceeded,
    ExecutionError,
    InstanceError,
    ModuleError,
    PluginError,
)

__all__ = ["ENGINE_NAME", "ISOLATION", "WasmerSdkEngine", "resource_usage"]

ENGINE_NAME = "wasmer-sdk"
ISOLATION = "sdk-process"
MAX_PROCESSES_VARIABLE = "WASM_PLUGINS_SDK_MAX_PROCESSES"
DEFAULT_MAX_PROCESSES = 16
MAX_FRAME = 64 * 1024 * 1024
"""The largest frame the host reads from a guest; a larger header is garbage."""
PREFETCH = 1024 * 1024
"""A plugin function's output up to this size comes back with its result (one round trip)."""
SPAWN_TIMEOUT = 60.0
"""Seconds the SDK may take to start a process (compiling the module the first time)."""
CLOSE_TIMEOUT = 5.0
DIAGNOSE_TIMEOUT = 5.0
_CAPTURE_BYTES = 64 * 1024
"""What the SDK keeps of a process's stdout and stderr besides the pipes (it keeps a copy)."""

MAX_CALL_DEPTH = 4096
"""The SDK runs guests on a native stack that held about 32 000 frames of the smallest kind: the
sandbox bounds the call depth below that, so that a recursion stops with its frames described."""
_CANCEL_POLL = 0.01
"""Seconds between looks at a watched call's cancellation event."""
_ALLOC = "wp_alloc"
_FREE = "wp_free"
_SCRATCH_BYTES = 336
"""The size of the serving loop's scratch buffer (``SCRATCH_BYTES`` of the command wrapper)."""
_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_RESULT = struct.Struct("<qI")
_MASK32 = 0xFFFFFFFF
SLICE = 20_000_000
"""The most fuel handed to a guest at a time (about 10 ms of its work on simple loops): each
visit to the meter is a pipe round trip (a few hundred microseconds), and a guest whose process
was killed computes on until its next visit."""
_MASK64 = (1 << 64) - 1
_T = TypeVar("_T")


# --------------------------------------------------------------------------
# The runtime: one loop thread and one client per process


class _Runtime:
    """The private event loop, its thread, the shared Wasmer client and the live processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: wasmer_sdk.Wasmer | None = None
        self._live: collections.OrderedDict[int, SdkInstance] = collections.OrderedDict()
        self._registered = False
        self._pid = os.getpid()

    @property
    def max_processes(self) -> int:
        try:
            value = int(os.environ.get(MAX_PROCESSES_VARIABLE, DEFAULT_MAX_PROCESSES))
        except ValueError:
            value = DEFAULT_MAX_PROCESSES
        return max(1, value)

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's loop thread is not here.
                self._loop = self._thread = self._client = None
                self._live.clear()
                self._pid = os.getpid()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="wasm-plugins-wasmer-sdk", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                if not self._registered:
                    atexit.register(self.shutdown)
                    self._registered = True
            return self._loop

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop if it runs in this process (never starts one: finalizers use this)."""
        loop = self._loop
        return loop if loop is not None and self._pid == os.getpid() else None

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """Run ``coroutine`` on the loop; ``TimeoutError`` (cancelling it) past ``timeout``."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    async def client(self) -> wasmer_sdk.Wasmer:
        if self._client is None:
            # Without a cache root the SDK writes its compiled modules to ./.wasmer, in
            # whatever directory the host runs in.
            self._client = wasmer_sdk.Wasmer(cache_root=_cache_root(), output_bytes=_CAPTURE_BYTES)
        return self._client

    # -- live processes ------------------------------------------------------------------------

    def admit(self, instance: SdkInstance) -> None:
        """Count a new live process, closing idle ones (least recently used first) past the
        bound."""
        with self._lock:
            self._live[id(instance)] = instance
            candidates = [other for other in self._live.values() if other is not instance]
            excess = len(self._live) - self.max_processes
        for other in candidates:
            if excess <= 0:
                break
            if other.evict():
                excess -= 1

    def touch(self, instance: SdkInstance) -> None:
        with self._lock:
            if id(instance) in self._live:
                self._live.move_to_end(id(instance))

    def forget(self, instance: SdkInstance) -> None:
        with self._lock:
            if self._live.get(id(instance)) is instance:
                del self._live[id(instance)]

    def live(self) -> int:
        with self._lock:
            return len(self._live)

    def shutdown(self) -> None:
        """Close every process, sandbox and the client on the loop, stop it, collect garbage."""
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            instances = list(self._live.values())
            self._live.clear()
            self._loop = self._thread = self._client = None
        if loop is None or self._pid != os.getpid():
            return

        async def close_all(instances: list[SdkInstance], client: wasmer_sdk.Wasmer | None) -> None:
            for instance in instances:
                await instance.close_process()
            if client is not None:
                with contextlib.suppress(wasmer_sdk.WasmerError):
                    await client.close()

        future = asyncio.run_coroutine_threadsafe(close_all(instances, client), loop)
        try:
            future.result(CLOSE_TIMEOUT)
        except Exception:
            future.cancel()
        del instances, client, future
        gc.collect()
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(CLOSE_TIMEOUT)
        if not loop.is_running():
            loop.close()
        gc.collect()


_RUNTIME = _Runtime()


def _cache_root() -> str:
    """Where the SDK keeps compiled modules: ``wasmer-sdk`` in the framework's cache directory
    (``$WASM_PLUGINS_CACHE_DIR``, else the platform's usual place, as the module cache)."""
    override = os.environ.get("WASM_PLUGINS_CACHE_DIR")
    if override:
        base = Path(override).expanduser()
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "wasm-plugins"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / (
            "wasm-plugins"
        )
    return str(base / "wasmer-sdk")


def resource_usage() -> dict[str, int]:
    """Live SDK processes, and this process's native threads and resident memory (Linux)."""
    usage = {"live_processes": _RUNTIME.live(), "threads": 0, "rss_bytes": 0}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Threads:"):
                    usage["threads"] = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    usage["rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return usage


# --------------------------------------------------------------------------
# Errors


def _trap_from_message(message: str) -> ExecutionError | None:
    """The trap an SDK message (``command execution failed: RuntimeError: unreachable ...``)
    describes, or ``None`` when it describes none."""
    position = message.find("RuntimeError: ")
    if position < 0:
        return None
    return wasmer_trap(message[position + len("RuntimeError: ") :])


class _Eof(Exception):
    """The guest's stdout ended."""


class _Garbage(Exception):
    """The guest wrote something that is not a frame of the protocol."""


def _communication(message: str) -> CommunicationError:
    return CommunicationError(
        message=f"Guest process broke the frame protocol: {message}",
        channel="guest-process",
        direction="guest-to-host",
        suggestion="the plugin wrote to the host's channel outside its own output; its "
        "process was replaced",
    )


def _unenforceable(limit: str) -> ConfigurationError:
    return ConfigurationError(
        field=f"limits.{limit}",
        message=(
            f"Invalid configuration: limits.{limit} - the {ENGINE_NAME} engine cannot enforce "
            f"a {limit} limit yet"
        ),
        suggestion=f"use engine='wasmtime', which enforces {limit}, or drop the {limit} limit",
    )


def _foreign_kernel(engine: str) -> ConfigurationError:
    return ConfigurationError(
        field="engine",
        message=(
            f"Invalid configuration: engine - a module linked to a {ENGINE_NAME} instance runs "
            f"in-process on its linking engine (wasmtime), not on {engine}"
        ),
        suggestion="compile the linked module (the Extism kernel) with the engine's linking_engine",
    )


# --------------------------------------------------------------------------
# The process


class _Channel:
    """One SDK process and the frames on its pipes (used on the loop only)."""

    def __init__(self, sandbox: wasmer_sdk.Sandbox, process: wasmer_sdk.Process) -> None:
        self.sandbox = sandbox
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._chunks = process.stdout.__aiter__()
        self._buffer = bytearray()
        self.closed = False

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise _Eof from None
            self._buffer += chunk

    async def exchange(self, outgoing: bytes, answer: bool) -> tuple[int, bytes]:
        """Send ``outgoing``; then, when ``answer``, read one frame."""
        if outgoing:
            try:
                await self._stdin.write(outgoing)
            except wasmer_sdk.WasmerError:
                raise _Eof from None
        if not answer:
            return 0, b""
        await self._fill(_HEADER.size)
        op, length = _HEADER.unpack_from(self._buffer)
        if length > MAX_FRAME:
            raise _Garbage(f"a frame header announces {length} bytes (at most {MAX_FRAME})")
        await self._fill(_HEADER.size + length)
        payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        return op, payload

    async def outcome(self) -> wasmer_sdk.Output | BaseException:
        """How the process ended (after its stdout did)."""
        try:
            return await asyncio.wait_for(self.process.wait(), DIAGNOSE_TIMEOUT)
        except (wasmer_sdk.WasmerError, asyncio.TimeoutError) as exc:
            return exc

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for step in (self.process.kill, self.sandbox.close):
            with contextlib.suppress(wasmer_sdk.WasmerError, asyncio.TimeoutError):
                await asyncio.wait_for(step(), CLOSE_TIMEOUT)
        with contextlib.suppress(wasmer_sdk.WasmerError, asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), CLOSE_TIMEOUT)


class _RemoteMemory:
    """The guest's memory, read and written with frames; its size is the one last reported."""

    def __init__(self, instance: SdkInstance) -> None:
        self._instance = instance
        self.pages = 0
        self.prefetched: tuple[int, bytes] | None = None

    def size(self) -> int:
        return self.pages * 65536

    def read(self, ptr: int, length: int) -> bytes:
        check_range(True, self.size, ptr, length, "guest-to-host")
        prefetched = self.prefetched
        if prefetched is not None and prefetched[0] == ptr and len(prefetched[1]) == length:
            return prefetched[1]
        if length == 0:
            return b""
        return self._instance.read_memory(ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        check_range(True, self.size, ptr, len(data), "host-to-guest")
        if data:
            self._instance.queue(_OP.WRITE, _U32.pack(ptr) + bytes(data))


class _OP:
    CALL = OP_CALL
    RESULT = OP_RESULT
    WRITE = OP_WRITE
    READ = OP_READ
    DATA = OP_DATA
    GLOBAL_GET = OP_GLOBAL_GET
    VALUE = OP_VALUE
    GLOBAL_SET = OP_GLOBAL_SET
    RETURN = OP_RETURN
    HELLO = OP_HELLO
    HOSTCALL = OP_HOSTCALL
    LOG = OP_LOG
    REPORT = OP_REPORT
    SET_SCRATCH = OP_SET_SCRATCH


class _Export:
    def __init__(self, name: str, signature: FuncSignature, slot: int) -> None:
        self.name = name
        self.signature = signature
        self.slot = slot


def _no_pause(_seconds: float) -> None:
    """The guest runs in the SDK's runtime, not on a Python thread: no lock to hand over."""


def _signed(value: int, kind: str) -> int:
    if kind == "i32":
        value &= _MASK32
        return value - (1 << 32) if value >= 1 << 31 else value
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


class SdkInstance:
    """One instance: one SDK process serving the wrapped module; calls are serialised."""

    def __init__(
        self,
        module: SdkModule,
        imports: Sequence[HostImport],
        budget: CallBudget,
        wasi: WasiSettings | None,
    ) -> None:
        self._module = module
        self._budget = budget
        self._lock = threading.RLock()
        self._pending: list[bytes] = []
        self._deadline: float | None = None
        self._started = 0.0
        self._channel: _Channel | None = None
        self._failure: str | None = None
        self._busy = 0
        self._output = None if wasi is None else wasi.output
        self._ready = False  # the serving loop runs (after hello): global frames are read
        imports = self._with_meter(module, imports, budget)
        by_name = {(item.module, item.name): item for item in imports}
        self._host: list[HostImport | None] = [
            by_name.get((module_name, name)) for module_name, name, _ in module.command.host_imports
        ]
        self._host_types = [signature for _, _, signature in module.command.host_imports]
        self._memory = _RemoteMemory(self)
        self._scratch = 0
        """Where the serving loop keeps its frame headers (from ``wp_alloc`` at start)."""
        self._inflated: dict[int, int] = {}
        """Buffers given to the host by an allocator that also handed out the scratch buffer:
        allocated larger, with the scratch buffer moved to their tail (pointer -> size)."""
        self._reported: dict[int, int] = {}
        """Last values of the globals the guest reports when it sets them (known after a trap)."""
        environment = dict(wasi.environment) if wasi is not None else {}
        arguments = list(wasi.arguments) if wasi is not None else []
        self._cancelled: threading.Event | None = None
        try:
            channel = _RUNTIME.run(self._spawn(environment, arguments), SPAWN_TIMEOUT)
        except TimeoutError:
            raise InstanceError(
                state="instantiating",
                message=f"The {ENGINE_NAME} process did not start within {SPAWN_TIMEOUT} s",
            ) from None
        except wasmer_sdk.WasmerError as exc:
            raise InstanceError(
                state="instantiating",
                message=f"The {ENGINE_NAME} process could not start: {truncate(str(exc), 300)}",
            ) from None
        self._channel = channel
        # The budget starts once the process exists: the start function has all of it.
        self.arm()
        _RUNTIME.admit(self)
        with self._lock:
            self._busy += 1
            try:
                payload = self._until(_OP.HELLO, operation="instantiate")
            except PluginError as error:
                raise _instantiation_error(error) from None
            finally:
                self._busy -= 1
        if len(payload) != 8:
            self._dispose("broken frames")
            raise _instantiation_error(_communication("the hello frame has the wrong size"))
        self._memory.pages, self._scratch = struct.unpack("<II", payload)
        self._ready = True

    async def _spawn(self, environment: dict[str, str], arguments: list[str]) -> _Channel:
        package = await self._module.package()
        client = await _RUNTIME.client()
        sandbox = await client.sandboxes.create(packages=[package], env=environment)
        try:
            process = await sandbox.command(package, arguments).spawn(
                stdin="pipe", stdout="pipe", stderr="discard", output_bytes=_CAPTURE_BYTES
            )
        except BaseException:
            await sandbox.close()
            raise
        return _Channel(sandbox, process)

    # -- the engine protocol -------------------------------------------------------------------

    @property
    def memory(self) -> GuestMemory:
        return self._memory

    @property
    def linked(self) -> None:
        return None

    def export_function(self, name: str) -> ExportFunction:
        found = self._module.slots.get(name)
        if found is None:
            raise ModuleError(
                missing_export=name,
                message=f"Invalid module: no exported function {name!r}",
                suggestion="call one of the plugin's functions",
            )
        return found

    def _with_meter(
        self, module: SdkModule, imports: Sequence[HostImport], budget: CallBudget
    ) -> Sequence[HostImport]:
        """The host imports and the meter the guest calls when its counter runs out: armed
        with the fuel alone (the deadline is the process kill's), handed over a
        :data:`SLICE` at a time, fuel or not, so that a guest whose process was killed (a
        timeout, a cancellation) stops computing at its next visit."""
        self._meter = Meter(
            CallBudget(fuel=budget.fuel), chunk=SLICE, bounded=True, pause=_no_pause
        )
        return (
            *imports,
            HostImport(METER_MODULE, METER_FUNCTION, METER_SIGNATURE, self._meter.refill),
        )

    def arm(self) -> None:
        timeout = self._budget.timeout
        self._started = time.monotonic()
        self._deadline = None if timeout is None else self._started + timeout
        # Before hello the counter is 0: the first charge asks the meter (a host call).
        counter = self._meter.arm(handing=self._ready)
        if self._ready and FUEL_EXPORT in self._module.global_slots:
            # Sent with the call's own frame: no round trip of its own.
            self.write_global(FUEL_EXPORT, counter)

    def watch(self, cancelled: threading.Event | None) -> bool:
        """Stop this instance's calls when ``cancelled`` is set: the wait for the guest's
        answer checks it, and the process is killed (``CallCancelled``)."""
        self._cancelled = cancelled
        return True

    def _export(self, function: ExportFunction) -> _Export:
        if isinstance(function, _Export):
            return function
        found = self._module.slots.get(function.name)
        if found is None:
            raise ModuleError(
                missing_export=function.name,
                message=f"Invalid module: no exported function {function.name!r}",
            )
        return found

    def call(self, function: ExportFunction, *args: int) -> Any:
        export = self._export(function)
        if export.name == _ALLOC and len(args) == 1:
            return self._alloc(export, args[0] & _MASK32)
        if export.name == _FREE and len(args) == 2 and args[0] & _MASK32 in self._inflated:
            args = (args[0], self._inflated.pop(args[0] & _MASK32))
        result = self._call(export, args, prefetch=0)
        results = export.signature.results
        return _signed(result, results[0]) if results else None

    def _alloc(self, export: _Export, size: int) -> int:
        """``wp_alloc`` for the host. An allocator that hands out the serving loop's scratch
        buffer again (one that returns a fixed buffer) is asked for more, and the scratch
        buffer moves to the tail of what it returns."""
        pointer = self._call(export, (size,), prefetch=0) & _MASK32
        scratch = self._scratch
        if pointer and pointer < scratch + _SCRATCH_BYTES and scratch < pointer + size:
            pointer = self._call(export, (size + _SCRATCH_BYTES,), prefetch=0) & _MASK32
            if pointer:
                self._inflated[pointer] = size + _SCRATCH_BYTES
                self._scratch = pointer + size
                self.queue(_OP.SET_SCRATCH, _U32.pack(self._scratch))
        return _signed(pointer, "i32")

    def call_abi(self, function: ExportFunction, ptr: int, length: int) -> int:
        export = self._export(function)
        return _signed(self._call(export, (ptr, length), prefetch=PREFETCH), "i64")

    def call_unit(self, function: ExportFunction) -> int:
        return _signed(self._call(self._export(function), (), prefetch=0), "i32")

    def read_global(self, name: str) -> int | None:
        slot = self._module.global_slots.get(name)
        if slot is None:
            return None
        index, kind, _ = slot
        if index in self._reported:
            return _signed(self._reported[index], kind)
        if self._channel is None or self._failure is not None:
            return None  # the process is gone, and the guest never reported this global
        with self._lock:
            self._busy += 1
            try:
                self.queue(_OP.GLOBAL_GET, _U32.pack(index))
                payload = self._until(_OP.VALUE, operation="read_global")
            finally:
                self._busy -= 1
        return _signed(_I64.unpack_from(payload)[0], kind)

    def write_global(self, name: str, value: int) -> None:
        slot = self._module.global_slots.get(name)
        if slot is None or not slot[2]:
            raise ModuleError(message=f"Invalid module: no exported mutable global {name!r}")
        if slot[0] in self._reported:
            self._reported[slot[0]] = value
        if self._channel is not None and self._failure is None:
            self.queue(_OP.GLOBAL_SET, _U32.pack(slot[0]) + _I64.pack(_signed(value, "i64")))

    def fuel_consumed(self) -> int | None:
        """Fuel used since the budget was armed (reads the guest's counter: one round trip)."""
        meter = self._meter
        if meter.fuel is None:
            return None
        if meter.exhausted:
            return meter.consumed(None)
        return meter.consumed(self.read_global(FUEL_EXPORT))

    # -- frames --------------------------------------------------------------------------------

    def queue(self, op: int, payload: bytes) -> None:
        """A frame sent with the next exchange (frames that need no answer)."""
        self._pending.append(_HEADER.pack(op, len(payload)) + payload)

    def _call(self, export: _Export, args: Sequence[int], prefetch: int) -> int:
        payload = _U32.pack(export.slot) + _U32.pack(prefetch)
        payload += b"".join(_I64.pack(_signed(a, "i64")) for a in args)
        with self._lock:
            self._busy += 1
            try:
                self._memory.prefetched = None
                self.queue(_OP.CALL, payload)
                answer = self._until(_OP.RESULT, operation="call")
            finally:
                self._busy -= 1
        if len(answer) < _RESULT.size:
            self._fail_garbage("a result frame is too short")
        result: int
        pages: int
        result, pages = _RESULT.unpack_from(answer)
        self._memory.pages = pages
        if len(answer) > _RESULT.size:
            out_ptr = (result >> 32) & _MASK32
            self._memory.prefetched = (out_ptr, answer[_RESULT.size :])
        return result

    def read_memory(self, ptr: int, length: int) -> bytes:
        with self._lock:
            self._busy += 1
            try:
                self.queue(_OP.READ, _U32.pack(ptr) + _U32.pack(length))
                data = self._until(_OP.DATA, operation="read")
            finally:
                self._busy -= 1
        if len(data) != length:
            self._fail_garbage("a memory read came back with the wrong length")
        return data

    def _until(self, expected: int, *, operation: str) -> bytes:
        """Send what is queued and read frames until one of kind ``expected`` (serving log
        frames and host calls meanwhile)."""
        while True:
            op, payload = self._exchange(operation, answer=True)
            if op == expected:
                return payload
            if op == _OP.LOG:
                self._log(payload)
            elif op == _OP.HOSTCALL:
                self._host_call(payload)
            elif op == _OP.REPORT and len(payload) == 16:
                slot, pages, value = struct.unpack_from("<IIq", payload)
                self._reported[slot] = value
                self._memory.pages = pages
            else:
                self._fail_garbage(f"unexpected frame kind {op} (expected {expected})")

    def _exchange(self, operation: str, *, answer: bool) -> tuple[int, bytes]:
        channel = self._channel
        if channel is None or self._failure is not None:
            raise InstanceError(
                state=self._failure or "closed",
                message=f"The {ENGINE_NAME} process of this instance is gone "
                f"({self._failure or 'closed'}); a fresh instance is needed",
            )
        _RUNTIME.touch(self)
        outgoing = b"".join(self._pending)
        self._pending.clear()
        deadline = self._deadline
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            if self._cancelled is None:
                return _RUNTIME.run(channel.exchange(outgoing, answer), remaining)
            return self._watched(channel.exchange(outgoing, answer), deadline, operation)
        except TimeoutError:
            self._dispose("timed out")
            raise DeadlineExceeded(
                operation=operation,
                duration=time.monotonic() - self._started,
                limit=self._budget.timeout,
            ) from None
        except _Garbage as garbage:
            self._dispose("broken frames")
            raise _communication(str(garbage)) from None
        except _Eof:
            raise self._ended(channel) from None

    def _watched(
        self, coroutine: Coroutine[Any, Any, tuple[int, bytes]], deadline: float | None, op: str
    ) -> tuple[int, bytes]:
        """The exchange, waited for in slices so that a cancellation is seen."""
        cancelled = self._cancelled
        assert cancelled is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, _RUNTIME.loop())
        while True:
            if cancelled.is_set():
                future.cancel()
                self._dispose("cancelled")
                raise CallCancelled(operation=op)
            step = _CANCEL_POLL
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            try:
                return future.result(step)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    future.cancel()
                    raise TimeoutError from None

    def _ended(self, channel: _Channel) -> PluginError:
        """The error for a process whose stdout ended, from how it ended."""
        try:
            outcome = _RUNTIME.run(channel.outcome(), DIAGNOSE_TIMEOUT + 1)
        except TimeoutError:
            outcome = TimeoutError()
        self._dispose("ended")
        if isinstance(outcome, wasmer_sdk.WasmerError):
            trap = _trap_from_message(str(outcome))
            if trap is not None:
                return trap
            return InstanceError(
                state="crashed",
                message=f"The guest process failed: {truncate(str(outcome), 300)}",
            )
        if isinstance(outcome, wasmer_sdk.Output):
            if outcome.reason is wasmer_sdk.ExitReason.TIMEOUT:
                return DeadlineExceeded(operation="call", limit=self._budget.timeout)
            return InstanceError(
                state="exited",
                exit_code=outcome.exit_code,
                message=(
                    f"The guest process exited (status {outcome.exit_code}, "
                    f"{outcome.reason.value}) in the middle of a call, or closed its pipes"
                ),
                suggestion="a plugin must not exit or close its standard streams; its "
                "process was replaced",
            )
        return InstanceError(state="exited", message="The guest process ended during a call")

    def _fail_garbage(self, message: str) -> None:
        self._dispose("broken frames")
        raise _communication(message)

    def _log(self, payload: bytes) -> None:
        if len(payload) < 4:
            self._fail_garbage("a log frame is too short")
        fd = _U32.unpack_from(payload)[0]
        if self._output is not None:
            self._output("stderr" if fd == 2 else "stdout", payload[4:])

    def _host_call(self, payload: bytes) -> None:
        if len(payload) < 8:
            self._fail_garbage("a host-call frame is too short")
        slot, pages = struct.unpack_from("<II", payload)
        if slot >= len(self._host):
            self._fail_garbage(f"a host call of unknown slot {slot}")
        signature = self._host_types[slot]
        count = len(signature.params)
        if len(payload) != 8 + 8 * count:
            self._fail_garbage("a host-call frame has the wrong size")
        args = [
            _signed(_I64.unpack_from(payload, 8 + 8 * i)[0], kind)
            for i, kind in enumerate(signature.params)
        ]
        self._memory.pages = pages
        self._memory.prefetched = None
        host = self._host[slot]
        if host is None:
            self._dispose("unlinked import")
            raise ModuleError(message="Invalid module: a host import was not linked")
        try:
            result = host.function(self._memory, *args)
        except BaseException:
            # The guest is waiting halfway through its code: its state cannot be trusted.
            self._dispose("host function failed")
            raise
        value = 0 if result is None else int(result)
        self.queue(_OP.RETURN, _I64.pack(_signed(value, "i64")))

    # -- ending --------------------------------------------------------------------------------

    def _dispose(self, why: str) -> None:
        self._failure = self._failure or why
        channel, self._channel = self._channel, None
        _RUNTIME.forget(self)
        if channel is not None and not channel.closed:
            with contextlib.suppress(TimeoutError):
                _RUNTIME.run(channel.close(), CLOSE_TIMEOUT * 3)

    async def close_process(self) -> None:
        channel, self._channel = self._channel, None
        self._failure = self._failure or "closed"
        if channel is not None:
            await channel.close()

    def evict(self) -> bool:
        """Close the process if it is idle, to bound live processes (the next use of this
        instance asks for a new one). Returns whether it was closed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._busy or self._channel is None:
                return False
            self._failure = self._failure or "evicted"
            self._dispose("evicted")
            return True
        finally:
            self._lock.release()

    def close(self) -> None:
        self._dispose("closed")

    def __del__(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None and not channel.closed:
            _RUNTIME.forget(self)
            loop = _RUNTIME.running_loop()
            if loop is not None:
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(channel.close(), loop)


class _LinkedSdkInstance(SdkInstance):
    """An instance with a linked module (the Extism kernel): the linked module runs in this
    process on the linking engine (wasmtime), instantiated before the process starts; the
    plugin's imports from its namespace are host calls that call its exports, one round trip
    each. Calls on the linked module's functions (through :meth:`call`) go to it directly."""

    def __init__(
        self,
        module: SdkModule,
        imports: Sequence[HostImport],
        budget: CallBudget,
        wasi: WasiSettings | None,
        linked: LinkedModule,
    ) -> None:
        linking = module.engine.linking_engine
        # By name: a worker process or a cache may hold another instance of the same engine.
        owner = getattr(getattr(linked.module, "engine", None), "name", None)
        if owner != linking.name:
            raise _foreign_kernel(owner or type(linked.module).__name__)
        wanted = {(item.module, item.name) for item in linked.module.imports}
        kernel = linked.module.instantiate(
            [item for item in imports if (item.module, item.name) in wanted], budget
        )
        self._kernel = kernel
        self._kernel_exports: set[int] = set()
        served = list(imports)
        for item in module.imports:
            if item.module == linked.namespace and item.kind == "func":
                served.append(_kernel_import(kernel, item.module, item.name))
        super().__init__(module, served, budget, wasi)

    @property
    def linked(self) -> Any:
        return self._kernel

    def arm(self) -> None:
        super().arm()
        self._kernel.arm()

    def call(self, function: ExportFunction, *args: int) -> Any:
        if isinstance(function, _Export):
            return super().call(function, *args)
        return self._kernel.call(function, *args)

    def fuel_consumed(self) -> int | None:
        own, kernel = super().fuel_consumed(), self._kernel.fuel_consumed()
        if own is None and kernel is None:
            return None
        return (own or 0) + (kernel or 0)

    def close(self) -> None:
        super().close()
        close = getattr(self._kernel, "close", None)
        if callable(close):
            close()


def _kernel_import(kernel: EngineInstance, module: str, name: str) -> HostImport:
    """A plugin import served by the linked instance's export of the same name."""
    export = kernel.export_function(name)

    def forward(memory: GuestMemory, *args: int) -> Any:
        del memory
        return kernel.call(export, *args)

    return HostImport(module=module, name=name, signature=export.signature, function=forward)


def _instantiation_error(error: PluginError) -> PluginError:
    if isinstance(error, ExecutionError | InstanceError):
        return InstanceError(
            state="instantiating",
            message=f"Instantiation failed: {error.message}",
            suggestion=error.suggestion,
        )
    return error


class SdkModule:
    """A module made a command, with its package (created once, on the loop)."""

    def __init__(
        self,
        engine: WasmerSdkEngine,
        command: WasiCommand,
        types: ModuleTypes,
    ) -> None:
        self.engine = engine
        self._types = types
        self.exports, self.imports = _visible(types)
        self.command = command
        self.slots = {
            name: _Export(name, signature, slot)
            for slot, (name, signature) in enumerate(self.command.functions)
        }
        self.global_slots = {
            name: (slot, kind, mutable)
            for slot, (name, kind, mutable) in enumerate(self.command.globals)
        }
        self._package: wasmer_sdk.Package | None = None

    async def package(self) -> wasmer_sdk.Package:
        if self._package is None:
            client = await _RUNTIME.client()
            self._package = await client.packages.create(
                wasmer_sdk.PackageDefinition(
                    modules={"plugin": self.command.wasm},
                    commands={"plugin": wasmer_sdk.PackageCommandDefinition(module="plugin")},
                )
            )
        return self._package

    def serialize(self) -> bytes:
        return pack(self._types, _pack_command(self.command))

    def instantiate(
        self,
        imports: Sequence[HostImport],
        budget: CallBudget,
        memory_import: MemoryImport | None = None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
    ) -> SdkInstance:
        # An imported memory is defined by the command itself, with the same (clamped) limits.
        del memory_import
        if linked is not None:
            return _LinkedSdkInstance(self, imports, budget, wasi, linked)
        return SdkInstance(self, imports, budget, wasi)


class WasmerSdkEngine:
    """Wasmer through the Wasmer SDK: modules run as commands, one process per instance."""

    name = ENGINE_NAME
    isolation = ISOLATION
    features = EngineFeatures(
        timeout=True,
        fuel=True,
        store_memory_limit=False,
        wasi=True,
        wasi_confined_directories=False,
        wasi_read_only_preopens=False,
        wasi_captured_output=True,
        thread_bound=False,
        call_depth_by_instrumentation=True,
        metering_by_instrumentation=True,
        metering_timeouts=False,
        always_metered=True,
        max_call_depth=MAX_CALL_DEPTH,
    )

    def __init__(self) -> None:
        self.version = importlib.metadata.version("wasmer-sdk")

    @property
    def linking_engine(self) -> Engine:
        """The engine that compiles and runs a module linked beside a plugin (the Extism
        kernel): wasmtime, in this process. The plugin's imports from the linked module's
        namespace become host calls answered by the linked instance's exports. The engine's
        own wasmtime (the one that compiles its WAT), not the registry's: the engine layer's
        package imports this module."""
        return _wasmtime()

    def wat_to_wasm(self, text: str) -> bytes:
        # WAT and validation are wasmtime's (a required dependency): the SDK has neither.
        return _wasmtime().wat_to_wasm(text)

    def validate(self, wasm: bytes) -> None:
        _wasmtime().validate(wasm)

    def compile(self, wasm: bytes, *, fuel: bool = False) -> SdkModule:
        """Compile a module, metered: with ``fuel``, one the sandbox's metering pass rewrote;
        without, the pass runs here. Every module is metered on this engine, fuel or not,
        because killing its process does not stop a guest that computes (it runs on a thread
        of the SDK's runtime in this process): a metered guest asks the host for fuel at least
        every :data:`SLICE` units, and one whose process is gone stops there."""
        self.validate(wasm)
        if not fuel:
            wasm = metered_module(wasm)
        types = read_module_types(wasm)
        if not _is_metered(types):
            raise _unenforceable("fuel")
        return SdkModule(self, wrap_as_command(bytes(wasm)), types)

    def deserialize(self, data: bytes, *, fuel: bool = False) -> SdkModule:
        types, packed = unpack(data)
        if not _is_metered(types):
            raise ModuleError(
                message=f"Invalid module: the {ENGINE_NAME} engine runs metered modules only",
                suggestion="compile the module again from its source",
            )
        return SdkModule(self, _unpack_command(bytes(packed)), types)

    def deserialize_file(self, path: str, size: int, *, fuel: bool = False) -> SdkModule:
        try:
            with open(path, "rb") as handle:
                data = handle.read(size)
        except OSError as exc:
            raise ModuleError(
                message=f"Invalid module: cannot load compiled code: {exc.strerror}",
                suggestion="compile the module again from its source",
            ) from None
        return self.deserialize(data, fuel=fuel)


def _visible(types: ModuleTypes) -> tuple[tuple[ExternInfo, ...], tuple[ExternInfo, ...]]:
    """A metered module's exports and imports without its fuel counter and meter (served by
    the engine, never linked by the sandbox)."""
    exports = tuple(item for item in types.exports if item.name != FUEL_EXPORT)
    imports = tuple(item for item in types.imports if item.module != METER_MODULE)
    return exports, imports


def _is_metered(types: ModuleTypes) -> bool:
    return any(
        item.module == METER_MODULE and item.name == METER_FUNCTION for item in types.imports
    ) and any(item.name == FUEL_EXPORT and item.kind == "global" for item in types.exports)


@functools.cache
def _wasmtime() -> Engine:
    # Imported when first used: most hosts of this engine never compile WAT here.
    from wasm_plugins.engine._wasmtime import WasmtimeEngine  # noqa: PLC0415

    # Freed at exit while wasmtime's module can still free it (not in the final collection).
    atexit.register(_release_wasmtime)
    return WasmtimeEngine()


def _release_wasmtime() -> None:
    _wasmtime.cache_clear()
    gc.collect()


def _pack_command(command: WasiCommand) -> bytes:
    """The wrapped module followed by its slot tables (JSON) and their length."""
    tables = json.dumps(
        [
            [[name, list(sig.params), list(sig.results)] for name, sig in command.functions],
            [list(item) for item in command.globals],
            [[m, n, list(sig.params), list(sig.results)] for m, n, sig in command.host_imports],
        ],
        separators=(",", ":"),
    ).encode()
    return command.wasm + tables + _U32.pack(len(tables))


def _unpack_command(data: bytes) -> WasiCommand:
    try:
        (length,) = _U32.unpack_from(data, len(data) - 4)
        end = len(data) - 4 - length
        functions, globals_, hosts = json.loads(data[end : len(data) - 4])
        return WasiCommand(
            wasm=data[:end],
            functions=tuple((name, FuncSignature(tuple(p), tuple(r))) for name, p, r in functions),
            globals=tuple((name, kind, bool(mutable)) for name, kind, mutable in globals_),
            host_imports=tuple((m, n, FuncSignature(tuple(p), tuple(r))) for m, n, p, r in hosts),
        )
    except (ValueError, TypeError, struct.error) as exc:
        raise ModuleError(
            message=f"Invalid module: cannot load compiled code: {exc}",
            suggestion="compile the module again from its source",
        ) from None


def live_processes() -> int:
    """SDK processes alive in this host process."""
    return _RUNTIME.live()


Callback = Callable[[str, bytes], None]
