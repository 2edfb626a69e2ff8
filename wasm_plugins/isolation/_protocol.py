"""The host-worker channel: length-prefixed frames with a JSON header and a raw byte payload.

A frame is a 9-byte prefix ``<BII`` (kind, header length, payload length), the header (a UTF-8
JSON object; empty means ``{}``) and the payload (raw bytes: call input and output, guest memory,
serialized modules). Nothing on the channel is ever unpickled or evaluated: the host reads a
worker's frames as numbers, JSON and bytes only, so a compromised worker can send wrong data but
cannot run code in the host.

The host reads with a limit per frame, checked on the prefix before a byte of the body is read: a
header is at most :data:`MAX_HEADER` bytes, and a payload at most what the host expects at that
point of the exchange (the output limit while a call runs, the length it asked for when a host
function reads guest memory, nothing otherwise). A worker therefore cannot make the host allocate
more than the output limit plus :data:`MAX_HEADER` and one read chunk.

Waiting never holds the GIL for long: the channel spins briefly on non-blocking reads (yielding
the processor after the first microseconds, in case both ends share a core), because a reply
usually comes within microseconds while waking a sleeping process costs tens of them; then it
blocks in ``poll``, without the GIL.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import socket
import struct
import time
from typing import Any

from wasm_plugins._units import KiB

__all__ = [
    "CHUNK",
    "MAX_HEADER",
    "Channel",
    "ChannelClosed",
    "ChannelTimeout",
    "Frame",
    "ProtocolViolation",
    "dumps",
    "loads",
]

PREFIX = struct.Struct("<BII")
MAX_HEADER = 256 * KiB
"""Bytes of JSON header a worker may send in one frame. An error whose dict form is larger (a
pathological 64 KiB guest error message full of escapes) is cut down by the worker to fit."""
CHUNK = 64 * KiB
"""Bytes read from the socket at a time, and the size of WASI output frames."""
UNLIMITED = 1 << 40
POLITE_AFTER = 20e-6
"""Seconds of plain spinning, after which the spin yields the processor between reads."""

# Host to worker.
LOAD = 1
UNLOAD = 2
CALL = 3
INSTANTIATE = 4
HOST_RESULT = 5
HOST_ERROR = 6
MEMORY_READ = 7
MEMORY_WRITE = 8
MEMORY_SIZE = 9

# Worker to host.
READY = 32
LOADED = 33
INSTANTIATED = 34
RESULT = 35
ERROR = 36
HOST_CALL = 37
MEMORY_DATA = 38
MEMORY_DONE = 39
MEMORY_ERROR = 40
OUTPUT = 41
HOST_ABORTED = 42

KIND_NAMES = {
    LOAD: "LOAD",
    UNLOAD: "UNLOAD",
    CALL: "CALL",
    INSTANTIATE: "INSTANTIATE",
    HOST_RESULT: "HOST_RESULT",
    HOST_ERROR: "HOST_ERROR",
    MEMORY_READ: "MEMORY_READ",
    MEMORY_WRITE: "MEMORY_WRITE",
    MEMORY_SIZE: "MEMORY_SIZE",
    READY: "READY",
    LOADED: "LOADED",
    INSTANTIATED: "INSTANTIATED",
    RESULT: "RESULT",
    ERROR: "ERROR",
    HOST_CALL: "HOST_CALL",
    MEMORY_DATA: "MEMORY_DATA",
    MEMORY_DONE: "MEMORY_DONE",
    MEMORY_ERROR: "MEMORY_ERROR",
    OUTPUT: "OUTPUT",
    HOST_ABORTED: "HOST_ABORTED",
}
"""Frame kinds by number, for messages."""

Frame = tuple[int, bytes, bytes]
"""kind, header (JSON bytes, possibly empty), payload."""


class ChannelClosed(Exception):
    """The other end closed the channel (the process exited or died)."""


class ChannelTimeout(Exception):
    """The deadline passed before a frame arrived or could be sent."""


class ProtocolViolation(Exception):
    """The other end sent something the protocol does not allow."""


_SEND_FLAGS = int(socket.MSG_DONTWAIT) | int(getattr(socket, "MSG_NOSIGNAL", 0))
_RECEIVE_FLAGS = int(socket.MSG_DONTWAIT)
_yield_processor = getattr(os, "sched_yield", lambda: None)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)


def dumps(value: dict[str, Any]) -> bytes:
    """A header as compact UTF-8 JSON."""
    return _ENCODER.encode(value).encode("utf-8", "surrogatepass")


def loads(header: bytes) -> dict[str, Any]:
    """A header back into a dict.

    :raises ProtocolViolation: when it is not a UTF-8 JSON object.
    """
    if not header:
        return {}
    try:
        value = json.loads(header)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolViolation(f"a frame header is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolViolation(f"a frame header is a JSON {type(value).__name__}, not an object")
    return value


class Channel:
    """One end of a stream socket, framed; used by one thread at a time."""

    def __init__(self, sock: socket.socket, *, spin: float = 0.0) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._buffer = bytearray()
        self._chunk = bytearray(CHUNK)
        self._view = memoryview(self._chunk)
        self.spin = spin
        """Seconds to spin on non-blocking reads before blocking in ``poll``."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close this end: the other end reads end-of-file."""
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(self._sock.fileno())
        self._sock.close()

    # -- sending ------------------------------------------------------------------------------

    def send(
        self, kind: int, header: bytes = b"", payload: bytes = b"", deadline: float | None = None
    ) -> None:
        """Send one frame.

        :raises ChannelClosed: when the other end is gone.
        :raises ChannelTimeout: when the other end stopped reading until ``deadline``.
        """
        if len(payload) <= CHUNK:
            frame = PREFIX.pack(kind, len(header), len(payload)) + header + payload
            # Most frames fit the socket's buffer: one write, no view.
            try:
                sent = self._sock.send(frame, _SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ChannelClosed(f"send failed: {exc}") from None
            if sent != len(frame):
                self._send_all(memoryview(frame)[sent:], deadline)
        else:
            self._send_all(
                memoryview(PREFIX.pack(kind, len(header), len(payload)) + header), deadline
            )
            self._send_all(memoryview(payload), deadline)

    def _send_all(self, view: memoryview, deadline: float | None) -> None:
        sock = self._sock
        while view:
            try:
                sent = sock.send(view, _SEND_FLAGS)
            except BlockingIOError:
                self._wait_writable(deadline)
                continue
            except OSError as exc:
                raise ChannelClosed(f"send failed: {exc}") from None
            view = view[sent:]

    def _wait_writable(self, deadline: float | None) -> None:
        poll = select.poll()
        poll.register(self._sock.fileno(), select.POLLOUT)
        while True:
            timeout = _poll_timeout(deadline)
            if poll.poll(timeout):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout("the other end stopped reading")

    # -- receiving ----------------------------------------------------------------------------

    def receive(self, deadline: float | None = None, max_payload: int = UNLIMITED) -> Frame:
        """The next frame, waiting until ``deadline`` (``time.monotonic()``; ``None``: forever).

        :param max_payload: the largest payload acceptable here; larger is a violation, found on
            the frame's prefix, before its body is read.
        :raises ChannelTimeout: when the deadline passed first.
        :raises ChannelClosed: at end-of-file.
        :raises ProtocolViolation: for a frame over the limits.
        """
        if not self._buffer:
            # Nothing buffered: wait and read, and take the frame straight from what was read
            # when it is exactly one whole frame (the usual case: one request, one answer).
            received = self._read(deadline)
            if received >= PREFIX.size:
                kind, header_size, payload_size = PREFIX.unpack_from(self._chunk)
                _check_prefix(kind, header_size, payload_size, max_payload)
                start = PREFIX.size + header_size
                if start + payload_size == received:
                    view = self._view
                    header = view[PREFIX.size : start].tobytes() if header_size else b""
                    payload = view[start:received].tobytes() if payload_size else b""
                    return kind, header, payload
            self._buffer += self._view[:received]
        while True:
            frame = self._take(max_payload)
            if frame is not None:
                return frame
            self._fill(deadline)

    def _take(self, max_payload: int) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < PREFIX.size:
            return None
        kind, header_size, payload_size = PREFIX.unpack_from(buffer)
        _check_prefix(kind, header_size, payload_size, max_payload)
        start = PREFIX.size + header_size
        end = start + payload_size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            header = view[PREFIX.size : start].tobytes() if header_size else b""
            payload = view[start:end].tobytes() if payload_size else b""
        del buffer[:end]
        return kind, header, payload

    def _fill(self, deadline: float | None) -> None:
        self._buffer += self._view[: self._read(deadline)]

    def _read(self, deadline: float | None) -> int:
        """Wait for something to read, and read it into the chunk: how many bytes (0 when the
        socket had nothing after all).

        :raises ChannelClosed: at end-of-file.
        """
        ready = False
        if self.spin > 0:
            # Spin on a zero-timeout poll (cheaper than failing reads, and as quick to notice
            # data or end-of-file), yielding the processor after the first microseconds.
            poll = self._poll.poll
            now = time.monotonic()
            until = now + self.spin
            if deadline is not None:
                until = min(until, deadline)
            polite = now + min(self.spin, POLITE_AFTER)
            while True:
                if poll(0):
                    ready = True
                    break
                now = time.monotonic()
                if now >= until:
                    break
                if now >= polite:
                    # When both ends share a core, a plain spin would starve the other end.
                    _yield_processor()
        while not ready:
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout("no frame before the deadline")
            if self._poll.poll(_poll_timeout(deadline)):
                break
        try:
            received = self._sock.recv_into(self._chunk, CHUNK, _RECEIVE_FLAGS)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ChannelClosed(f"receive failed: {exc}") from None
        if received == 0:
            raise ChannelClosed("end of file")
        return received


def _check_prefix(kind: int, header_size: int, payload_size: int, max_payload: int) -> None:
    if header_size > MAX_HEADER:
        raise ProtocolViolation(
            f"a frame of kind {kind} announces a header of {header_size} bytes "
            f"(at most {MAX_HEADER})"
        )
    if payload_size > max_payload:
        raise ProtocolViolation(
            f"a frame of kind {KIND_NAMES.get(kind, kind)} announces a payload of "
            f"{payload_size} bytes where at most {max_payload} are expected"
        )


def _poll_timeout(deadline: float | None) -> int | None:
    """Milliseconds for ``poll`` until ``deadline`` (rounded up, so it never wakes early), at most
    what ``poll`` takes (a signed 32-bit count): a farther deadline is waited for in turns."""
    if deadline is None:
        return None
    return min(_MAX_POLL_MS, max(0, math.ceil((deadline - time.monotonic()) * 1000)))


_MAX_POLL_MS = 2**31 - 1


EXIT_OUT_OF_MEMORY = 3
"""The status a worker exits with when the Python heap hit its data limit."""
