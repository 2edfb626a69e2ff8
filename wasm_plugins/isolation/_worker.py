"""The worker process: runs compiled plugin modules for the host, one request at a time.

Started by :class:`~wasm_plugins.isolation.WorkerPool` as ``python -m wasm_plugins.isolation._worker
--fd N --parent PID [...]``, never forked from the host. At start it arranges to die with the host
(``PR_SET_PDEATHSIG`` on Linux, and end-of-file on its socket everywhere), applies its resource
limits, ignores SIGINT (the host decides when workers end), and answers ``READY``.

Then it serves frames (see :mod:`wasm_plugins.isolation._protocol`): ``LOAD`` a serialized module
with its limits and imports, ``INSTANTIATE`` it, ``CALL`` a plugin function, ``UNLOAD``. Each loaded
module has at most one instance here (a worker serves one call at a time), made on first use and
dropped after a failure that leaves it suspect, exactly as the in-process sandbox does (both use
the same :class:`~wasm_plugins.sandbox.LoadedModule`). Host
functions are stubs that forward the call to the host and serve its reads and writes of guest memory
until the host answers; the ABI's own ``error`` import is handled here.

The worker trusts the host (its only peer); the host trusts nothing the worker says.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from wasm_plugins.errors import InstanceError, PluginError
from wasm_plugins.isolation import _protocol as wire
from wasm_plugins.isolation._transfer import rebuild
from wasm_plugins.sandbox import (
    ExtismSession,
    HostCall,
    LoadedModule,
    Session,
    error_report,
    host_failure,
    instance_is_suspect,
    on_roomy_stack,
)

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1
EXIT_OUT_OF_MEMORY = wire.EXIT_OUT_OF_MEMORY
"""Exit status of a worker whose Python heap ran out (its data limit was reached)."""


class _HostAbort(Exception):
    """The host function failed in the host: unwind the guest, then report what is left to know."""

    def __init__(self, check_memory: bool) -> None:
        super().__init__("host function failed")
        self.check_memory = check_memory


class _Hosted:
    """A module loaded in this worker and its instance (if any): at most one, since a worker
    serves one call at a time."""

    def __init__(self, loaded: LoadedModule) -> None:
        self.loaded = loaded
        self.max_output = loaded.limits.max_output
        self.session: Session | ExtismSession | None = None


class _Stubs:
    """Makes the forwarding host functions of one worker."""

    def __init__(self, channel: wire.Channel) -> None:
        self._channel = channel

    def __call__(self, index: int) -> Callable[..., Any]:
        channel = self._channel

        def forward(call: HostCall, *args: Any) -> Any:
            channel.send(wire.HOST_CALL, wire.dumps({"i": index, "a": list(args)}))
            memory = call.memory
            while True:
                kind, header, payload = channel.receive()
                request = wire.loads(header)
                if kind == wire.HOST_RESULT:
                    return request.get("v")
                if kind == wire.HOST_ERROR:
                    raise _HostAbort(bool(request.get("m")))
                try:
                    if kind == wire.MEMORY_READ:
                        data = memory.read(request["p"], request["n"])
                        channel.send(wire.MEMORY_DATA, b"", data)
                    elif kind == wire.MEMORY_WRITE:
                        memory.write(request["p"], payload)
                        channel.send(wire.MEMORY_DONE)
                    elif kind == wire.MEMORY_SIZE:
                        channel.send(wire.MEMORY_DONE, wire.dumps({"size": memory.size()}))
                    else:
                        raise wire.ProtocolViolation(f"unexpected frame {kind} in a host call")
                except PluginError as error:
                    channel.send(wire.MEMORY_ERROR, wire.dumps({"error": error_report(error)}))

        return forward

    def log(self, level: str, text: str) -> None:
        """An Extism plugin's log line, handed to the host as output of the stream ``log``."""
        data = text.encode()[: wire.CHUNK]
        self._channel.send(wire.OUTPUT, wire.dumps({"s": "log", "l": level}), data)

    def output(self, stream: str, data: bytes) -> None:
        """WASI output, handed to the host in frames of at most one chunk."""
        for start in range(0, len(data), wire.CHUNK):
            self._channel.send(
                wire.OUTPUT, wire.dumps({"s": stream}), data[start : start + wire.CHUNK]
            )


_SHORT = 8 * 1024


def _shortened(data: dict[str, Any]) -> dict[str, Any]:
    """An error dict cut down to fit a frame header: long texts cut, details as cut text."""
    short: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, str):
            short[key] = value[:_SHORT]
        elif key == "details" and value is not None:
            short[key] = {"truncated": True, "text": repr(value)[:_SHORT]}
        elif isinstance(value, list):
            short[key] = value[:32]
        else:
            short[key] = value
    return short


class Worker:
    """Serves one host over one channel until end-of-file."""

    def __init__(self, channel: wire.Channel) -> None:
        self.channel = channel
        self.modules: dict[str, _Hosted] = {}
        self._stubs = _Stubs(channel)
        self._headers: dict[bytes, dict[str, Any]] = {}

    def serve(self) -> None:
        self.channel.send(wire.READY, wire.dumps({"pid": os.getpid()}))
        while True:
            try:
                kind, header, payload = self.channel.receive()
            except wire.ChannelClosed:
                return
            if kind == wire.CALL:
                request = self._headers.get(header)
                if request is None:
                    request = wire.loads(header)
                    if len(self._headers) < 4096:
                        self._headers[header] = request
                self._call(request, payload)
            elif kind == wire.INSTANTIATE:
                self._call(wire.loads(header), None)
            elif kind == wire.LOAD:
                self._load(wire.loads(header), payload)
            elif kind == wire.UNLOAD:
                self.modules.pop(wire.loads(header)["key"], None)
                gc.collect()
            else:
                raise wire.ProtocolViolation(f"unexpected frame {kind}")

    def _load(self, header: dict[str, Any], payload: bytes) -> None:
        try:
            loaded = rebuild(header, payload, self._stubs, self._stubs.output, self._stubs.log)
        except PluginError as error:
            self._send_error(error, None, discarded=False)
            return
        self.modules[header["key"]] = _Hosted(loaded)
        self.channel.send(wire.LOADED)

    def _session(self, hosted: _Hosted) -> Session | ExtismSession:
        session = hosted.session
        if session is not None:
            return session
        session = hosted.session = hosted.loaded.instantiate()
        self.channel.send(wire.INSTANTIATED)
        return session

    def _call(self, request: dict[str, Any], data: bytes | None) -> None:
        hosted = self.modules.get(request["key"])
        if hosted is None:
            error = InstanceError(
                state="loading", message="Instance failed: the module is not loaded in the worker"
            )
            self._send_error(error, None, discarded=False)
            return
        failure: PluginError | _HostAbort
        try:
            if data is None:
                if hosted.session is not None:
                    self.channel.send(wire.INSTANTIATED)
                else:
                    self._session(hosted).end_budget()
                return
            output = self._invoke(hosted, request["f"], data)
        except (_HostAbort, PluginError) as exc:
            failure = exc
        except MemoryError:
            self._out_of_memory()
        except Exception as exc:
            failure = host_failure(exc)
        else:
            self.channel.send(wire.RESULT, b"", output)
            return
        # Handled outside the except clause: while it runs, the exception's traceback keeps the
        # frames of the call alive, and with them the instance (and its memory) to be dropped.
        if isinstance(failure, _HostAbort):
            discarded = self._host_aborted(hosted, failure)
        else:
            discarded = self._failed(hosted, failure)
        if discarded:
            del failure
            gc.collect()

    def _invoke(self, hosted: _Hosted, function: str, data: bytes) -> bytes:
        session = hosted.session or self._session(hosted)
        return session.invoke(
            session._functions.get(function) or session.function(function),
            data,
            hosted.max_output,
        )

    def _failed(self, hosted: _Hosted, error: PluginError) -> bool:
        """As the in-process sandbox: explain by a refused grow, drop a suspect instance.

        :returns: whether the instance was dropped.
        """
        session = hosted.session
        explained = hosted.loaded.explain(error, session)
        cause = explained.__cause__
        discarded = session is not None and (session.in_call or instance_is_suspect(explained))
        if discarded:
            hosted.session = None
        self._send_error(
            explained, cause if isinstance(cause, PluginError) else None, discarded=discarded
        )
        return discarded

    def _host_aborted(self, hosted: _Hosted, abort: _HostAbort) -> bool:
        session = hosted.session
        used = None
        if abort.check_memory and session is not None:
            used = hosted.loaded.refused_grow(session)
        # The host function's failure unwound the guest halfway: its state is torn.
        discarded = session is not None
        if discarded:
            hosted.session = None
        self.channel.send(wire.HOST_ABORTED, wire.dumps({"used": used, "discarded": discarded}))
        return discarded

    def _send_error(
        self, error: PluginError, cause: PluginError | None, *, discarded: bool
    ) -> None:
        error_dict = error_report(error)
        cause_dict = None if cause is None else error_report(cause)
        header = wire.dumps({"error": error_dict, "cause": cause_dict, "discarded": discarded})
        if len(header) > wire.MAX_HEADER:
            error_dict = _shortened(error_dict)
            cause_dict = None if cause_dict is None else _shortened(cause_dict)
            header = wire.dumps({"error": error_dict, "cause": cause_dict, "discarded": discarded})
        self.channel.send(wire.ERROR, header)

    def _out_of_memory(self) -> NoReturn:
        """The Python heap is exhausted: say so if possible, and end (state may be broken)."""
        self.modules.clear()
        gc.collect()
        error = InstanceError(
            state="out_of_memory",
            message="Instance failed: the worker process ran out of memory (its data limit)",
            suggestion="raise the pool's memory_limit, or lower the plugins' memory limits",
        )
        try:
            self.channel.send(
                wire.ERROR,
                wire.dumps(
                    {"error": error_report(error), "cause": None, "discarded": True, "retire": True}
                ),
            )
        finally:
            os._exit(EXIT_OUT_OF_MEMORY)


def _die_with_parent(parent: int) -> None:
    """Be killed when the host ends, even while stuck in guest code that never reads the socket.

    The signal is tied to the host *thread* that started this process, which is why the pool
    starts workers from one long-lived thread.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        # The host ended before the signal was armed.
        os._exit(0)


def _limit(which: int, value: int | None) -> None:
    if value is None:
        return
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wasm_plugins.isolation._worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--memory-limit", type=int, default=None)
    parser.add_argument("--address-space-limit", type=int, default=None)
    parser.add_argument("--spin", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker; returns its exit status."""
    options = _arguments(argv)
    _die_with_parent(options.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit(resource.RLIMIT_DATA, options.memory_limit)
    _limit(resource.RLIMIT_AS, options.address_space_limit)
    channel = wire.Channel(socket.socket(fileno=options.fd), spin=options.spin)
    try:
        # Under a small ``ulimit -s`` the main thread's stack cannot hold guest code: the whole
        # serving loop moves, once, to a thread that has enough.
        on_roomy_stack(Worker(channel).serve)
    except wire.ChannelClosed:
        return 0
    except MemoryError:
        return EXIT_OUT_OF_MEMORY
    return 0


if __name__ == "__main__":
    sys.exit(main())
