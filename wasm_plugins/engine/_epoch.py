"""Epoch tickers for wasmtime deadlines: a POSIX timer that never takes the GIL, else a thread.

wasmtime interrupts a guest when the engine's epoch passes the store's deadline; something has to
advance the epoch every tick. A Python thread needs the GIL for every tick, and with a few busy
Python threads in the host each tick waits out their switch intervals: a 200 ms timeout fired
after seconds. The native ticker has no Python in it at all: a POSIX interval timer
(``timer_create`` with ``SIGEV_THREAD``) whose notification function *is*
``wasmtime_engine_increment_epoch``, with the engine's pointer as its argument. The C library
runs it on a thread of its own, so ticks arrive on time whatever the interpreter is doing.

A timer's notification function receives a ``union sigval``, which every supported ABI (x86-64
System V, AArch64) passes exactly like one pointer argument, in the first argument register; and
``wasmtime_engine_increment_epoch`` is documented to be callable from any thread. The timer runs
only while a timed call is in flight, and is deleted at exit before the engine could be freed.
Where no such timer exists (not glibc), a Python thread ticks as before.

Both kinds survive ``fork``: timers and threads do not, so a forked child re-arms on first use.
"""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import sys
import threading
import time
import weakref
from typing import Any

__all__ = ["TICK", "EpochTicker", "native_ticks"]

TICK = 0.002
"""Seconds between epoch ticks."""

_CLOCK_MONOTONIC = 1
_SIGEV_THREAD = 2


class _SigEvent(ctypes.Structure):
    # glibc's struct sigevent (64 bytes): the value, the signal, how to notify, then a union whose
    # SIGEV_THREAD member is the function and its thread attributes.
    _fields_ = [
        ("value", ctypes.c_void_p),
        ("signo", ctypes.c_int),
        ("notify", ctypes.c_int),
        ("function", ctypes.c_void_p),
        ("attributes", ctypes.c_void_p),
        ("_padding", ctypes.c_byte * 32),
    ]


class _TimeSpec(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long)]


class _IntervalTimerSpec(ctypes.Structure):
    _fields_ = [("interval", _TimeSpec), ("value", _TimeSpec)]


def _timer_functions() -> tuple[Any, Any, Any] | None:
    if not sys.platform.startswith("linux") or ctypes.sizeof(_SigEvent) != 64:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create, settime, delete = libc.timer_create, libc.timer_settime, libc.timer_delete
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.POINTER(_SigEvent), ctypes.POINTER(ctypes.c_void_p)]
    settime.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(_IntervalTimerSpec),
        ctypes.c_void_p,
    ]
    delete.argtypes = [ctypes.c_void_p]
    return create, settime, delete


_TIMERS = _timer_functions() if os.environ.get("WASM_PLUGINS_EPOCH_TICKER") != "thread" else None


def native_ticks() -> bool:
    """Whether epoch ticks come from a native timer (independent of the GIL) on this system."""
    return _TIMERS is not None


class EpochTicker:
    """Advances one engine's epoch every :data:`TICK` while at least one timed call runs.

    Deadlines are counted in ticks from the moment they are set, so one ticker serves every
    store of the engine.

    :param engine: the ``wasmtime.Engine`` (kept alive for as long as the ticker).
    :param increment: the address of ``wasmtime_engine_increment_epoch``, or ``None`` for the
        Python-thread ticker.
    """

    def __init__(self, engine: Any, increment: int | None) -> None:
        self._engine = engine
        self._increment = increment if _TIMERS is not None else None
        self._reset()
        _TICKERS.add(self)

    def _reset(self) -> None:
        self._active = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._timer: ctypes.c_void_p | None = None

    @property
    def native(self) -> bool:
        """Whether this ticker runs outside the interpreter."""
        return self._increment is not None

    def ticks_for(self, timeout: float) -> int:
        # +1: the first tick may come at once, and a deadline must never be shorter than asked.
        return max(1, math.ceil(timeout / TICK)) + 1

    def __enter__(self) -> None:
        with self._condition:
            self._active += 1
            if self._active > 1 or (self._increment is not None and self._arm(TICK)):
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="wasm-plugins-epoch", daemon=True
                )
                self._thread.start()
            self._condition.notify()

    def __exit__(self, *exc_info: object) -> None:
        with self._condition:
            self._active -= 1
            if self._active == 0 and self._timer is not None:
                self._arm(0.0)

    def _arm(self, period: float) -> bool:
        """Start (or with 0, stop) the native timer; ``False`` when no timer can be had, and
        from then on a Python thread ticks."""
        assert _TIMERS is not None
        create, settime, _ = _TIMERS
        if self._timer is None:
            event = _SigEvent(
                value=ctypes.cast(self._engine.ptr(), ctypes.c_void_p).value,
                notify=_SIGEV_THREAD,
                function=self._increment,
            )
            timer = ctypes.c_void_p()
            if create(_CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(timer)) != 0:
                self._increment = None
                return False
            self._timer = timer
        nanoseconds = int(period * 1e9)
        spec = _IntervalTimerSpec(
            interval=_TimeSpec(0, nanoseconds), value=_TimeSpec(0, nanoseconds)
        )
        settime(self._timer, 0, ctypes.byref(spec), None)
        return True

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._active == 0:
                    self._condition.wait()
            time.sleep(TICK)
            self._engine.increment_epoch()

    def close(self) -> None:
        """Delete the native timer (before the engine may be freed)."""
        timer, self._timer = self._timer, None
        if timer is not None and _TIMERS is not None:
            _TIMERS[2](timer)

    def after_fork_in_child(self) -> None:
        """Timers and threads are not inherited: start afresh (calls in flight were the
        parent's)."""
        self._reset()


_TICKERS: weakref.WeakSet[EpochTicker] = weakref.WeakSet()


def _close_all() -> None:
    for ticker in list(_TICKERS):
        ticker.close()


def _after_fork_in_child() -> None:
    for ticker in list(_TICKERS):
        ticker.after_fork_in_child()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
