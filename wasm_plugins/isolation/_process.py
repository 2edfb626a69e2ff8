"""ProcessSandbox: the Sandbox API, with the plugin running in worker processes.

The host loads and checks the module exactly as :class:`~wasm_plugins.sandbox.Sandbox` does (it *is*
a Sandbox: the same loading code, the same typed load errors), compiles it once, and ships the
compiled code (``EngineModule.serialize``) with the limits and the link plan to a worker the first
time that worker serves the plugin. At load, one worker instantiates the plugin under the timeout,
so a start function that traps or never returns fails the load as it does in-process.

A call takes a slot of the plugin's bulkhead, an idle worker of the pool, sends the function name
and the input, and waits for the result with the plugin's wall-clock timeout. At the deadline the
host kills the worker (SIGKILL), the pool starts a replacement, and the call raises
``DeadlineExceeded``; on wasmtime the worker also enforces the timeout itself (epochs), which spares
the worker, and the host's kill is the backstop. Host functions run in the host, in the calling
thread, with a :class:`RemoteMemory` whose reads and writes are requests to the worker.
"""

from __future__ import annotations

import operator
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeGuard

from loguru import logger

from wasm_plugins.engine import Engine, WasiSettings
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    InstanceError,
    PluginError,
    ResourceLimitExceeded,
)
from wasm_plugins.isolation import _protocol as wire
from wasm_plugins.isolation._bulkhead import Bulkhead
from wasm_plugins.isolation._pool import (
    DEFAULT_POOL_SIZE,
    RemoteSession,
    WorkerGone,
    WorkerPool,
    WorkerProcess,
)
from wasm_plugins.sandbox import HostCall, HostFunction, Limits, ModuleSource, Sandbox
from wasm_plugins.sandbox._abi import Session, _guest_error
from wasm_plugins.sandbox._sandbox import _host_failure, _instance_is_suspect, _ThreadState

if TYPE_CHECKING:
    from wasm_plugins.cache import ModuleCache

__all__ = ["DEFAULT_QUEUE_TIMEOUT", "TIMEOUT_GRACE", "ProcessSandbox", "RemoteMemory"]

DEFAULT_QUEUE_TIMEOUT = 30.0
"""Seconds a call may wait for a slot of its plugin's bulkhead and for an idle worker."""
TIMEOUT_GRACE = 0.25
"""Seconds the host waits past the timeout before killing a worker whose engine enforces the
timeout itself (wasmtime): the worker's own DeadlineExceeded normally comes first."""

_BUILTIN_ADAPTERS = ("wasm_plugins.engine._wasmer", "wasm_plugins.engine._wasmtime")
_INT_RANGE = (-(1 << 63), 1 << 64)


class _ChannelBroken(BaseException):
    """Unwinds a host function whose worker is gone (a BaseException, so that a host function's
    ``except Exception`` cannot swallow it); the typed error is in ``RemoteMemory.lost``."""


class RemoteMemory:
    """A guest's memory as a host function sees it in process mode: each access is a request to
    the worker, which checks bounds exactly as in-process (a CommunicationError when outside).

    Valid only during the host call it was made for.
    """

    def __init__(self, worker: WorkerProcess, clock: _Deadline) -> None:
        self._worker = worker
        self._clock = clock
        self._open = True
        self.lost: PluginError | None = None
        self.timed_out = False

    def close(self) -> None:
        self._open = False

    def size(self) -> int:
        kind, header, _ = self._request(wire.MEMORY_SIZE, b"", b"", 0)
        size = self._header(header).get("size") if kind == wire.MEMORY_DONE else None
        if not _is_int(size) or size < 0:
            self._violated(f"a memory size request was answered by frame {kind} {size!r}")
        return int(size)

    def read(self, ptr: int, length: int) -> bytes:
        ptr, length = operator.index(ptr), operator.index(length)
        kind, _, payload = self._request(
            wire.MEMORY_READ, wire.dumps({"p": ptr, "n": length}), b"", max(0, length)
        )
        if kind != wire.MEMORY_DATA or len(payload) != length:
            self._violated(f"a read of {length} bytes was answered by frame {kind}")
        return payload

    def write(self, ptr: int, data: bytes) -> None:
        ptr = operator.index(ptr)
        kind, _, _ = self._request(wire.MEMORY_WRITE, wire.dumps({"p": ptr}), bytes(data), 0)
        if kind != wire.MEMORY_DONE:
            self._violated(f"a write was answered by frame {kind}")

    def _request(self, kind: int, header: bytes, payload: bytes, max_payload: int) -> wire.Frame:
        if not self._open:
            raise CommunicationError(
                message="Guest memory used after the host call it was given for returned",
                channel="guest-memory",
                direction="host-to-guest",
            )
        worker = self._worker
        try:
            worker.send(kind, header, payload, self._clock.io())
            frame = worker.receive(self._clock.at, max_payload)
        except wire.ChannelTimeout:
            worker.kill()
            self.timed_out = True
            raise _ChannelBroken from None
        except PluginError as error:
            self.lost = error
            raise _ChannelBroken from None
        if frame[0] == wire.MEMORY_ERROR:
            raise _error_from_wire(self._header(frame[1]).get("error"), self._violated)
        return frame

    def _header(self, header: bytes) -> dict[str, Any]:
        try:
            return wire.loads(header)
        except wire.ProtocolViolation as exc:
            self._violated(str(exc))

    def _violated(self, what: str) -> NoReturn:
        self.lost = self._worker.violation(what)
        raise _ChannelBroken


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _Deadline:
    """The wall-clock budget of one phase of a request: instantiation, then the call.

    ``at`` is when the host gives up (``None``: never); ``io()`` bounds a send even without a
    timeout, so a worker that stops reading cannot block the host for ever.
    """

    def __init__(
        self,
        limit: float | None,
        grace: float,
        io_timeout: float,
        operation: str,
        started: float | None = None,
    ) -> None:
        self.limit = limit
        self._wait = None if limit is None else limit + grace
        self._io_timeout = io_timeout
        self.operation = operation
        self.started = started = time.monotonic() if started is None else started
        self.at: float | None = None if self._wait is None else started + self._wait

    def restart(self, operation: str) -> None:
        self.operation = operation
        self.started = time.monotonic()
        self.at = None if self._wait is None else self.started + self._wait

    def io(self) -> float:
        return self.at if self.at is not None else time.monotonic() + self._io_timeout

    def expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            operation=self.operation,
            duration=time.monotonic() - self.started,
            limit=self.limit,
            suggestion=(
                "the worker process running it was killed and replaced; raise limits.timeout, "
                "or give the plugin less work per call"
            ),
        )


def _error_from_wire(data: object, violated: Callable[[str], NoReturn]) -> PluginError:
    """A worker's error dict as a typed error; anything else is a protocol violation."""
    if not isinstance(data, dict) or data.get("kind") == "contextual":
        violated(f"an error is not an error dict: {str(data)[:200]!r}")
    fields = {key: value for key, value in data.items() if key != "context"}
    try:
        error = PluginError.from_dict(fields)
    except (ValueError, TypeError, RecursionError) as exc:
        violated(f"an error dict does not fit: {str(exc)[:300]}")
    # Where and how bad are the host's to say, not the worker's.
    error.plugin = None
    error.function = None
    error.severity = type(error).default_severity
    error.recovery_potential = type(error).default_recovery
    return error


class _Remote:
    """What a worker needs to load the plugin: the load header and the compiled code."""

    def __init__(self, header: dict[str, Any], serialized: bytes, forwarded: list[HostFunction]):
        self.load_header = wire.dumps(header)
        self.instantiate_header = wire.dumps({"key": header["key"]})
        self.serialized = serialized
        self.forwarded = forwarded


class ProcessSandbox(Sandbox):
    """A :class:`~wasm_plugins.sandbox.Sandbox` whose plugin runs in worker processes.

    Same parameters, attributes and methods as Sandbox, plus:

    :param pool: the :class:`WorkerPool` to run in; ``None`` makes a private pool of
        ``concurrency`` (or :data:`~wasm_plugins.isolation.DEFAULT_POOL_SIZE`) workers, closed with
        this sandbox.
    :param concurrency: calls of this plugin in flight at once (default: the pool's size).
    :param queue_size: callers that may wait for a slot (default: four times ``concurrency``);
        more are refused at once with ``ResourceLimitExceeded(resource="concurrency")``.
    :param queue_timeout: seconds a call may wait for a slot and a worker (``None``: no limit).

    Differences from in-process: a timeout is enforced on every engine (the worker is killed);
    fuel on an engine that cannot meter it is still a ConfigurationError; only the built-in engines
    can run in workers; an exception raised by a WASI output callback is logged, not raised.
    """

    isolation = "process"
    _keeps_serialized = True

    def __init__(
        self,
        source: ModuleSource,
        *,
        engine: str | Engine | None = "auto",
        limits: Limits | None = None,
        capabilities: Iterable[str] = (),
        host_functions: Sequence[HostFunction] = (),
        codec: str = "json",
        functions: Sequence[str] | None = None,
        name: str | None = None,
        services: Any = None,
        wasi: WasiSettings | None = None,
        cache: ModuleCache | None = None,
        refresh_cache: bool = False,
        pool: WorkerPool | None = None,
        concurrency: int | None = None,
        queue_size: int | None = None,
        queue_timeout: float | None = DEFAULT_QUEUE_TIMEOUT,
    ) -> None:
        self._key = uuid.uuid4().hex
        self._remote: _Remote | None = None
        self._call_headers: dict[str, bytes] = {}
        self._queue_timeout = queue_timeout
        limit = concurrency
        if limit is None:
            limit = pool.size if pool is not None else DEFAULT_POOL_SIZE
        self._bulkhead = Bulkhead(
            limit, 4 * limit if queue_size is None else queue_size, plugin=name
        )
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else WorkerPool(limit, name=f"{name or 'sandbox'}")
        try:
            super().__init__(
                source,
                engine=engine,
                limits=limits,
                capabilities=capabilities,
                host_functions=host_functions,
                codec=codec,
                functions=functions,
                name=name,
                services=services,
                wasi=wasi,
                cache=cache,
                refresh_cache=refresh_cache,
            )
        except BaseException:
            if self._owns_pool:
                self.pool.close()
            raise

    # -- loading (hooks of Sandbox.__init__) ---------------------------------------------------

    def _check_enforceable(self) -> None:
        """A worker enforces a timeout on every engine; fuel only where the engine meters it."""
        if type(self.engine).__module__ not in _BUILTIN_ADAPTERS:
            raise ConfigurationError(
                field="engine",
                message=(
                    f"Invalid configuration: engine - the {self.engine.name!r} engine cannot run "
                    "in a worker process (only the built-in engines can)"
                ),
                suggestion="use engine='wasmer' or 'wasmtime', or isolation='in-process'",
            )
        if self.limits.fuel is not None and not self.engine.features.fuel:
            raise ConfigurationError(
                field="limits.fuel",
                message=(
                    f"Invalid configuration: limits.fuel - the {self.engine.name} engine cannot "
                    "meter fuel, in this process or in a worker process"
                ),
                suggestion=(
                    "use engine='wasmtime', which meters fuel, or drop the fuel limit and bound "
                    "calls with limits.timeout"
                ),
            )

    def _state(self) -> _ThreadState:
        """At load: describe the plugin for workers and instantiate it once in a worker, under
        the timeout (the start function runs there). The host itself holds no instance."""
        if self._closed:
            raise _closed_sandbox()
        if self._remote is None:
            self._remote = self._describe()
        self._run(None, b"")
        return _ThreadState(Session())

    def _describe(self) -> _Remote:
        budget = self._budget()
        forwarded: list[HostFunction] = []
        imports = []
        for function in self._link.functions:
            local = function.implementation is _guest_error
            if not local:
                forwarded.append(function)
            imports.append(
                [
                    function.module,
                    function.name,
                    list(function.signature.params),
                    list(function.signature.results),
                    local,
                ]
            )
        memory = self._link.memory
        wasi = self._wasi
        header = {
            "key": self._key,
            "plugin": self.name,
            "engine": self.engine.name,
            "version": self.engine.version,
            "fuel": self.limits.fuel is not None,
            "budget": {
                "fuel": budget.fuel,
                "timeout": budget.timeout if self.engine.features.timeout else None,
                "memory": budget.memory_bytes,
            },
            "memory_limit": self.limits.memory,
            "max_output": self.limits.max_output,
            "probe": self._prepared.grow_probe,
            "memory_import": (
                None
                if memory is None
                else [memory.module, memory.name, memory.minimum, memory.maximum]
            ),
            "imports": imports,
            "wasi": None
            if wasi is None
            else {
                "directories": [[d.host_path, d.guest_path, d.read_only] for d in wasi.directories],
                "environment": [list(pair) for pair in wasi.environment],
                "arguments": list(wasi.arguments),
                "capture": wasi.output is not None,
            },
        }
        # The compiled code as the cache read or wrote it, else as the engine gives it.
        serialized = self._serialized if self._serialized is not None else self._module.serialize()
        return _Remote(header, serialized, forwarded)

    # -- calls ---------------------------------------------------------------------------------

    def call_bytes(self, function: str, data: bytes) -> bytes:
        """Call a plugin function with encoded input in a worker; return the output bytes.

        :raises PluginError: a typed error for every failure, the worker's death included.
        """
        limit = self.limits.max_input
        if len(data) > limit:
            raise self._annotate(
                ResourceLimitExceeded(
                    resource="input",
                    used=len(data),
                    limit=limit,
                    suggestion="raise limits.max_input, or send a smaller input",
                ),
                function,
                len(data),
            )
        try:
            if self._closed:
                raise _closed_sandbox()
            return self._run(function, data if type(data) is bytes else bytes(data))
        except PluginError as error:
            failure = self._annotate(error, function, len(data))
            cause = error.__cause__
        raise failure from cause

    def _run(self, function: str | None, data: bytes) -> bytes:
        deadline = None if self._queue_timeout is None else time.monotonic() + self._queue_timeout
        self._bulkhead.acquire(deadline)
        try:
            worker = self.pool.checkout(self._key, deadline)
            worker.replace_if_gone = True
            try:
                return self._on(worker, function, data)
            except WorkerGone:
                # It died while idle (the system killed it?): replace it rather than fail a
                # call; the replacement's failures are the call's.
                pass
            return self._on(self.pool.checkout(self._key, deadline), function, data)
        finally:
            self._bulkhead.release()

    def _on(self, worker: WorkerProcess, function: str | None, data: bytes) -> bytes:
        """One request on a worker checked out for it, checked in after."""
        try:
            return self._exchange(worker, function, data)
        except WorkerGone:
            raise
        except PluginError:
            if self.pool.closed and worker.broken:
                raise _closed_sandbox("the worker pool was closed during the call") from None
            raise
        except BaseException:
            # Stopped halfway (KeyboardInterrupt in the wait, a bug): the channel may hold
            # an answer that is not for the next call.
            worker.kill()
            raise
        finally:
            self.pool.checkin(worker)

    def _call_header(self, function: str) -> bytes:
        header = self._call_headers.get(function)
        if header is None:
            header = wire.dumps({"key": self._key, "f": function})
            if len(self._call_headers) < 1024:
                self._call_headers[function] = header
        return header

    def _load_into(self, worker: WorkerProcess, remote: _Remote) -> None:
        timeout = self.pool.start_timeout
        try:
            worker.send(
                wire.LOAD, remote.load_header, remote.serialized, time.monotonic() + timeout
            )
            kind, header, _ = worker.receive(time.monotonic() + timeout, 0)
        except wire.ChannelTimeout:
            worker.kill()
            raise InstanceError(
                state="loading",
                message=f"Instance failed: the worker did not load the module within {timeout} s",
                suggestion="the machine is overloaded; the next call uses a fresh worker",
            ) from None
        if kind == wire.ERROR:
            raise self._remote_error(worker, header)
        if kind != wire.LOADED:
            raise worker.violation(f"frame {kind} in answer to LOAD")
        worker.modules.add(self._key)

    def _exchange(self, worker: WorkerProcess, function: str | None, data: bytes) -> bytes:
        """One request to a checked-out worker, served until its answer."""
        remote = self._remote
        assert remote is not None
        if not worker.ready:
            worker.ensure_ready(self.pool.start_timeout)
        if self._key not in worker.modules:
            self._load_into(worker, remote)
        session = worker.sessions.get(self._key)
        io_timeout = self.pool.start_timeout
        max_payload = max(self.limits.max_output, wire.CHUNK)
        if session is not None and function is not None and self.limits.timeout is None:
            # A call on a live instance without a timeout: most get their answer in the first
            # frame, and need no deadline at all.
            started = time.monotonic()
            try:
                worker.send(wire.CALL, self._call_header(function), data, started + io_timeout)
                frame = worker.receive(None, max_payload)
            except wire.ChannelTimeout:
                worker.kill()
                raise self._deadline("call", started).expired() from None
            if frame[0] == wire.RESULT:
                return self._result(worker, frame[2])
            return self._serve(worker, function, session, self._deadline("call", started), frame)
        instantiating = session is None
        clock = self._deadline("instantiation" if instantiating else "call", None)
        try:
            if function is None:
                worker.send(wire.INSTANTIATE, remote.instantiate_header, b"", clock.io())
            else:
                worker.send(wire.CALL, self._call_header(function), data, clock.io())
        except wire.ChannelTimeout:
            worker.kill()
            raise clock.expired() from None
        return self._serve(worker, function, session, clock, None)

    def _deadline(self, operation: str, started: float | None) -> _Deadline:
        grace = TIMEOUT_GRACE if self.engine.features.timeout else 0.0
        return _Deadline(self.limits.timeout, grace, self.pool.start_timeout, operation, started)

    def _result(self, worker: WorkerProcess, payload: bytes) -> bytes:
        if len(payload) > self.limits.max_output:
            raise worker.violation(f"a result of {len(payload)} bytes, over the limit")
        return payload

    def _serve(
        self,
        worker: WorkerProcess,
        function: str | None,
        live: RemoteSession | None,
        clock: _Deadline,
        frame: wire.Frame | None,
    ) -> bytes:
        """Serve a worker's frames until the answer to the request it was sent (``frame``: the
        first one, already received)."""
        instantiating = live is None
        session = RemoteSession() if live is None else live
        max_payload = max(self.limits.max_output, wire.CHUNK)
        pending: PluginError | None = None
        try:
            while True:
                if frame is None:
                    frame = worker.receive(clock.at, max_payload)
                kind, header, payload = frame
                frame = None
                if kind == wire.RESULT and not instantiating and function is not None:
                    return self._result(worker, payload)
                if kind == wire.INSTANTIATED and (instantiating or function is None):
                    if instantiating:
                        worker.sessions[self._key] = session
                        instantiating = False
                        clock.restart("call")
                    if function is None:
                        return b""
                elif kind == wire.HOST_CALL:
                    pending = self._host_call(worker, session, header, clock)
                elif kind == wire.HOST_ABORTED and pending is not None:
                    raise self._aborted(worker, header, pending, instantiating)
                elif kind == wire.ERROR:
                    raise self._remote_error(worker, header)
                elif kind == wire.OUTPUT:
                    self._output(worker, header, payload)
                else:
                    name = wire.KIND_NAMES.get(kind, str(kind))
                    raise worker.violation(f"unexpected frame {name} during a call")
        except wire.ChannelTimeout:
            worker.kill()
            raise clock.expired() from None

    def _host_call(
        self, worker: WorkerProcess, session: RemoteSession, header: bytes, clock: _Deadline
    ) -> PluginError | None:
        """Run a host function for the worker; the failure to raise once the guest unwound."""
        try:
            request = wire.loads(header)
        except wire.ProtocolViolation as exc:
            raise worker.violation(str(exc)) from None
        index = request.get("i")
        args = request.get("a")
        forwarded = self._remote.forwarded if self._remote is not None else []
        if not _is_int(index) or not 0 <= index < len(forwarded):
            raise worker.violation(f"a host call of function {index!r}")
        function = forwarded[index]
        params = function.signature.params
        if not isinstance(args, list) or len(args) != len(params):
            raise worker.violation(f"a host call of {function.qualified_name} with {args!r}")
        for value, kind in zip(args, params, strict=True):
            number = _is_int(value) or (kind in ("f32", "f64") and isinstance(value, float))
            if not number or (_is_int(value) and not _INT_RANGE[0] <= value < _INT_RANGE[1]):
                raise worker.violation(f"a host call of {function.qualified_name} with {args!r}")
        memory = RemoteMemory(worker, clock)
        failure: PluginError | None = None
        result: Any = None
        try:
            result = function.implementation(
                HostCall(memory, self.name, session, self.services), *args
            )
        except _ChannelBroken:
            pass
        except PluginError as error:
            failure = error
        except Exception as exc:
            failure = _host_failure(exc)
            failure.__cause__ = exc
        finally:
            memory.close()
        if memory.timed_out:
            raise wire.ChannelTimeout("a guest memory request ran past the deadline")
        if memory.lost is not None:
            raise memory.lost
        if failure is None:
            if not function.signature.results:
                result = None
            elif isinstance(result, bool) or not isinstance(result, int | float):
                problem = TypeError(
                    f"host function {function.qualified_name} returned "
                    f"{type(result).__name__}, not a number"
                )
                failure = _host_failure(problem)
                failure.__cause__ = problem
        if failure is None:
            worker.send(wire.HOST_RESULT, wire.dumps({"v": result}), b"", clock.io())
            return None
        check_memory = not (
            isinstance(failure, DeadlineExceeded)
            or (isinstance(failure, ResourceLimitExceeded) and failure.resource != "memory")
        )
        worker.send(
            wire.HOST_ERROR,
            wire.dumps({"m": check_memory, "d": _instance_is_suspect(failure)}),
            b"",
            clock.io(),
        )
        return failure

    def _aborted(
        self, worker: WorkerProcess, header: bytes, failure: PluginError, instantiating: bool
    ) -> PluginError:
        """The host function's failure, or the refused grow that explains it (as in-process)."""
        try:
            report = wire.loads(header)
        except wire.ProtocolViolation as exc:
            return worker.violation(str(exc))
        used = report.get("used")
        discarded = report.get("discarded")
        if not isinstance(discarded, bool) or not (used is None or (_is_int(used) and used >= 0)):
            return worker.violation(f"a host-call abort report {report!r}")
        if discarded or instantiating:
            worker.sessions.pop(self._key, None)
        if used is None or instantiating:
            return failure
        replacement = ResourceLimitExceeded(
            resource="memory",
            used=used,
            limit=self.limits.memory,
            suggestion="raise limits.memory, or give the plugin smaller inputs",
        )
        replacement.__cause__ = failure
        return replacement

    def _remote_error(self, worker: WorkerProcess, header: bytes) -> PluginError:
        """A typed error the worker reported, checked field by field."""
        try:
            report = wire.loads(header)
        except wire.ProtocolViolation as exc:
            return worker.violation(str(exc))

        def violated(what: str) -> NoReturn:
            raise worker.violation(what)

        error = _error_from_wire(report.get("error"), violated)
        if report.get("cause") is not None:
            error.__cause__ = _error_from_wire(report["cause"], violated)
        if report.get("discarded") is True:
            worker.sessions.pop(self._key, None)
        if report.get("retire") is True:
            worker.broken = True
        return error

    def _output(self, worker: WorkerProcess, header: bytes, payload: bytes) -> None:
        try:
            stream = wire.loads(header).get("s")
        except wire.ProtocolViolation as exc:
            raise worker.violation(str(exc)) from None
        if stream not in ("stdout", "stderr") or len(payload) > wire.CHUNK:
            raise worker.violation(f"output frame for {stream!r} of {len(payload)} bytes")
        output = self._wasi.output if self._wasi is not None else None
        if output is None:
            return
        try:
            output(stream, payload)
        except Exception:
            logger.bind(plugin=self.name).exception("the WASI output callback failed")

    # -- errors, closing -----------------------------------------------------------------------

    def _annotate(self, error: PluginError, function: str | None, size: int | None) -> PluginError:
        error.plugin = error.plugin or self.name
        error.function = error.function or function
        if error.context is None:
            engine = getattr(self, "engine", None)
            error.context = ErrorContext(
                sandbox_id=getattr(self, "id", None),
                plugin=self.name,
                function=function,
                environment=ExecutionEnvironment(
                    engine=engine.name if engine is not None else None,
                    isolation="process",
                    input_size=size,
                ),
                guest_stack=error.guest_stack if isinstance(error, ExecutionError) else (),
            )
        return error

    def close(self) -> None:
        """Release the plugin's workers: its private pool is closed, or its module unloaded from
        a shared pool's workers. Later calls fail with an InstanceError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_pool:
            self.pool.close()
        else:
            self.pool.forget(self._key)

    def __enter__(self) -> ProcessSandbox:
        return self

    @property
    def bulkhead(self) -> Bulkhead:
        """The plugin's concurrency gate (``in_flight``, ``waiting``)."""
        return self._bulkhead

    def __repr__(self) -> str:
        return (
            f"<ProcessSandbox {self.name!r} on {self.engine.name} in {self.pool.name} "
            f"({len(self.functions)} functions)>"
        )


def _closed_sandbox(why: str = "the sandbox is closed") -> InstanceError:
    return InstanceError(
        state="closed",
        message=f"Instance failed: {why}",
        suggestion="create a new sandbox",
    )
