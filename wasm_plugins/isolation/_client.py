"""The worker client: one plugin's requests to the workers of a pool, served until answered.

A request takes a slot of the plugin's bulkhead and an idle worker of the pool, loads the module
into that worker the first time it serves the plugin, sends the function name and the input, and
waits for the result with the plugin's wall-clock timeout. At the deadline the client kills the
worker (SIGKILL), the pool starts a replacement, and the request raises ``DeadlineExceeded``; on
wasmtime the worker also enforces the timeout itself (epochs), which spares the worker, and the
kill is the backstop. Host functions run in the host, in the calling thread, with a
:class:`RemoteMemory` whose reads and writes are requests to the worker.

The client trusts nothing a worker says: every frame is checked, and a worker that breaks the
protocol is killed and reported as a CommunicationError.
"""

from __future__ import annotations

import operator
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeGuard

from wasm_plugins._log import logger
from wasm_plugins.errors import CommunicationError, DeadlineExceeded, InstanceError, PluginError
from wasm_plugins.isolation import _protocol as wire
from wasm_plugins.isolation._bulkhead import Bulkhead
from wasm_plugins.isolation._pool import RemoteSession, WorkerGone, WorkerPool, WorkerProcess
from wasm_plugins.isolation._transfer import RemoteModule, describe
from wasm_plugins.sandbox import (
    LOG_LEVELS,
    HostCall,
    LoadedModule,
    closed_sandbox,
    error_from_report,
    grow_may_explain,
    guest_log_record,
    host_failure,
    refused_grow,
)

__all__ = ["TIMEOUT_GRACE", "RemoteMemory", "WorkerClient"]

TIMEOUT_GRACE = 0.25
"""Seconds the host waits past the timeout before killing a worker whose engine enforces the
timeout itself (wasmtime): the worker's own DeadlineExceeded normally comes first."""

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
    """The wall-clock budget of one request: a call, and the instantiation (start function
    included) of an instance made for it, share it as they share fuel.

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
    """A worker's error report as a typed error; anything else is a protocol violation."""
    try:
        return error_from_report(data)
    except ValueError as exc:
        violated(str(exc))


class WorkerClient:
    """Runs one loaded module in the workers of ``pool``, one request at a time per worker.

    :param loaded: the module, as the host loaded it (its compiled code is what workers get).
    :param pool: the workers.
    :param bulkhead: the plugin's concurrency gate.
    :param queue_timeout: seconds a request may wait for a slot and a worker (``None``: no limit).
    :param services: handed to the host functions the worker forwards.
    """

    def __init__(
        self,
        loaded: LoadedModule,
        pool: WorkerPool,
        bulkhead: Bulkhead,
        queue_timeout: float | None,
        services: Any = None,
    ) -> None:
        self._key = uuid.uuid4().hex
        self._loaded = loaded
        self.limits = loaded.limits
        self.name = loaded.plugin
        self.services = services
        self.pool = pool
        self._bulkhead = bulkhead
        self._queue_timeout = queue_timeout
        self._grace = TIMEOUT_GRACE if loaded.engine.features.timeout else 0.0
        lookup = getattr(services, "config", None)
        config = lookup(loaded.plugin) if loaded.abi == "extism" and callable(lookup) else None
        self._remote: RemoteModule = describe(loaded, self._key, config)
        self._call_headers: dict[str, bytes] = {}
        self._serving: dict[int, WorkerProcess] = {}
        """By thread, the worker running its request (what :meth:`interrupt` kills)."""

    def instantiate(self) -> None:
        """Instantiate the module in one worker, under the timeout (its start function runs)."""
        self._run(None, b"")

    def request(self, function: str, data: bytes) -> bytes:
        """Call a plugin function in a worker; return the output bytes.

        :raises PluginError: a typed error for every failure, the worker's death included.
        """
        return self._run(function, data)

    def forget(self) -> None:
        """Unload the module from the pool's workers."""
        self.pool.forget(self._key)

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

    def interrupt(self, thread: int) -> None:
        """Stop the request that thread waits for, by killing the worker running it."""
        worker = self._serving.get(thread)
        if worker is not None:
            worker.kill()

    def _on(self, worker: WorkerProcess, function: str | None, data: bytes) -> bytes:
        """One request on a worker checked out for it, checked in after."""
        thread = threading.get_ident()
        self._serving[thread] = worker
        try:
            return self._exchange(worker, function, data)
        except WorkerGone:
            raise
        except PluginError:
            if self.pool.closed and worker.broken:
                raise closed_sandbox("the worker pool was closed during the call") from None
            raise
        except BaseException:
            # Stopped halfway (KeyboardInterrupt in the wait, a bug): the channel may hold
            # an answer that is not for the next call.
            worker.kill()
            raise
        finally:
            self._serving.pop(thread, None)
            self.pool.checkin(worker)

    def _call_header(self, function: str) -> bytes:
        header = self._call_headers.get(function)
        if header is None:
            header = wire.dumps({"key": self._key, "f": function})
            if len(self._call_headers) < 1024:
                self._call_headers[function] = header
        return header

    def _load_into(self, worker: WorkerProcess, remote: RemoteModule) -> None:
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
        return _Deadline(
            self.limits.timeout, self._grace, self.pool.start_timeout, operation, started
        )

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
                        clock.operation = "call"
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
        forwarded = self._remote.forwarded
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
            failure = host_failure(exc)
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
                failure = host_failure(problem)
        if failure is None:
            worker.send(wire.HOST_RESULT, wire.dumps({"v": result}), b"", clock.io())
            return None
        worker.send(
            wire.HOST_ERROR,
            wire.dumps({"m": grow_may_explain(failure)}),
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
        return refused_grow(used, self.limits.memory, failure)

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
            request = wire.loads(header)
        except wire.ProtocolViolation as exc:
            raise worker.violation(str(exc)) from None
        stream = request.get("s")
        if stream == "log" and self._loaded.abi == "extism" and len(payload) <= wire.CHUNK:
            level = request.get("l")
            if level not in LOG_LEVELS:
                raise worker.violation(f"a log line at level {level!r}")
            guest_log_record(self.name, level, payload.decode("utf-8", "replace"))
            return
        if stream not in ("stdout", "stderr") or len(payload) > wire.CHUNK:
            raise worker.violation(f"output frame for {stream!r} of {len(payload)} bytes")
        wasi = self._loaded.wasi
        output = wasi.output if wasi is not None else None
        if output is None:
            return
        try:
            output(stream, payload)
        except Exception:
            logger.bind(plugin=self.name).exception("the WASI output callback failed")
