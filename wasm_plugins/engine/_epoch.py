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
while timed calls run and for up to :data:`IDLE` seconds after the last one, and is deleted at
exit before the engine could be freed. Where no such timer exists (not glibc), a Python thread
ticks instead, sleeping to absolute instants so that late wake-ups do not add up.

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

from wasm_plugins.engine._gil import Callers

__all__ = ["IDLE", "TICK", "EpochTicker", "native_ticks"]

TICK = 0.002
"""Seconds between epoch ticks."""
IDLE = 0.1
"""Seconds without a timed call after which the ticker stops."""
_MAY_BE_PENDING = 0.0005
"""How long after it is due a tick may still be on its way (the timer's thread starting)."""

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
    """Advances one engine's epoch every :data:`TICK` while timed calls run, and a little after.

    Deadlines are absolute (a ``time.monotonic()`` instant): :meth:`ticks_until` turns one into
    the epoch ticks a store waits, from the phase of the running timer, so a deadline is neither
    shortened by a tick that comes at once nor lengthened by one added for safety. One ticker
    serves every store of the engine.

    The timer is not stopped when the last timed call returns: starting and stopping it costs a
    system call each, more than a small call itself. It stops once no timed call has run for
    :data:`IDLE` seconds (a thread looks that often while the timer runs). Entering and leaving a
    timed call take no lock (a lock each way costs a good part of a small call): only the first
    call after a stop takes one, to start the timer.

    :param engine: the ``wasmtime.Engine`` (kept alive for as long as the ticker).
    :param increment: the address of ``wasmtime_engine_increment_epoch``, or ``None`` for the
        Python-thread ticker.
    """

    in_forked_child = False
    """Set in a forked child: its tickers (new ones too) tick from a Python thread."""

    def __init__(self, engine: Any, increment: int | None) -> None:
        self._engine = engine
        native = _TIMERS is not None and not EpochTicker.in_forked_child
        self._increment = increment if native else None
        self.callers = Callers()
        """The threads calling guests of the engine lately (see ``engine._gil``)."""
        self.generation = 0
        """Changes whenever the timer starts or stops: ticks counted while it had one value are
        the same run of the timer, with the same phase, while it has it still."""
        self._reset()
        _TICKERS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self.in_flight: list[None] = []
        """One item per timed call in flight (``list.append`` and ``list.pop`` are atomic)."""
        self.called = False
        """Whether a timed call entered since the watcher last looked."""
        self.running = False
        """Whether the timer runs (ticks come at ``origin + k * TICK``)."""
        self._origin = 0.0
        """When the running timer started: tick ``k`` is due at ``origin + k * TICK``."""
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._timer: ctypes.c_void_p | None = None

    @property
    def native(self) -> bool:
        """Whether this ticker runs outside the interpreter."""
        return self._increment is not None

    def ticks_until(self, deadline: float, *, early: bool = False) -> int:
        """The epoch ticks from now that end at or after ``deadline`` (``time.monotonic()``).

        :param early: the caller's store has a deadline callback that gives the guest the rest
            of its time when the deadline comes before it: a native timer's tick just due is
            then counted as delivered.
        """
        now = time.monotonic()
        if not self.running:
            # The timer starts when the call enters, after now: its first tick is TICK later.
            return max(1, _whole_ticks(deadline - now))
        origin = self._origin
        elapsed = now - origin
        delivered = math.floor(elapsed / TICK)
        if self._increment is None or (not early and elapsed - delivered * TICK < _MAY_BE_PENDING):
            # A tick just due (any tick, from a thread that waits for the GIL) may not have
            # advanced the epoch yet: counting it as delivered would end the deadline a tick
            # early, counting it as pending at worst a tick late. Early costs a callback
            # where one corrects it; late costs a tick every time, for a call armed just
            # after a tick (each call after a timeout is: the timeout came with a tick).
            delivered -= 1
        return max(1, _whole_ticks(deadline - origin) - delivered)

    def nudge(self) -> None:
        """Advance the engine's epoch once, from any thread (a cancellation does, for the
        stores that watch it without a timeout: their deadline is the next epoch)."""
        self._engine.increment_epoch()

    def ticks_for(self, timeout: float, *, early: bool = False) -> int:
        """The epoch ticks from now that end at or after ``timeout`` seconds from now (see
        :meth:`ticks_until` for ``early``)."""
        return self.ticks_until(time.monotonic() + timeout, early=early)

    def __enter__(self) -> None:
        # In flight, then called, then the look at the timer: the watcher stops it in the
        # reverse order (marked stopped, then a look at the calls), so either this call sees
        # it stopped and starts it, or the watcher sees this call and keeps it. A hot path may
        # do the same itself (a frame each way costs a fair part of a small call).
        self.in_flight.append(None)
        self.called = True
        if not self.running:
            self.start_if_stopped()

    def __exit__(self, *exc_info: object) -> None:
        self.in_flight.pop()

    def start_if_stopped(self) -> None:
        with self._lock:
            if not self.running:
                self._start()

    def _start(self) -> None:
        self.generation += 1
        self.running = True
        if self._increment is None or not self._arm(TICK):
            self._origin = time.monotonic()
            self._thread = threading.Thread(
                target=self._tick, args=(self.generation,), name="wasm-plugins-epoch", daemon=True
            )
            self._thread.start()
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._stop_when_idle, name="wasm-plugins-epoch-idle", daemon=True
            )
            self._watcher.start()

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
        self._origin = time.monotonic()
        settime(self._timer, 0, ctypes.byref(spec), None)
        return True

    def _tick(self, generation: int) -> None:
        """The Python-thread ticker: a tick at every ``origin + k * TICK``, slept to as an
        absolute instant, so late wake-ups do not add up, until the timer stops."""
        origin = self._origin
        due = 0
        while self.generation == generation:
            due += 1
            delay = origin + due * TICK - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._engine.increment_epoch()

    def _stop_when_idle(self) -> None:
        while True:
            time.sleep(IDLE)
            with self._lock:
                if self.called or self.in_flight:
                    self.called = False
                    continue
                self.running = False
                if self.called or self.in_flight:
                    # A call entered as the timer was marked stopped: it may have seen it
                    # running, and not started it.
                    self.running = True
                    continue
                self._stop()
                return

    def _stop(self) -> None:
        """Stop the timer (with the lock held, or from a test)."""
        self.generation += 1
        self.running = False
        self._watcher = None
        if self._timer is not None:
            self._arm(0.0)

    def close(self) -> None:
        """Delete the native timer (before the engine may be freed)."""
        self.generation += 1
        self.running = False
        timer, self._timer = self._timer, None
        if timer is not None and _TIMERS is not None:
            _TIMERS[2](timer)

    def after_fork_in_child(self) -> None:
        """Timers and threads are not inherited: start afresh (calls in flight were the
        parent's), with a Python thread for the ticks."""
        self._reset()
        self._increment = None


def _whole_ticks(seconds: float) -> int:
    # Less than a nanosecond over a whole number of ticks is the float's rounding, not time.
    return math.ceil(seconds / TICK - 1e-6)


_TICKERS: weakref.WeakSet[EpochTicker] = weakref.WeakSet()


def _close_all() -> None:
    for ticker in list(_TICKERS):
        ticker.close()


def _after_fork_in_child() -> None:
    # A forked child ticks from a Python thread: the parent's timer threads may have held
    # glibc's timer lock at the fork, and a timer made in the child would then wait for it
    # forever (seen when a host forks while a timed call's ticks are still coming).
    EpochTicker.in_forked_child = True
    for ticker in list(_TICKERS):
        ticker.after_fork_in_child()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
