"""The host side of metering by instrumentation: the meter a metered module calls when its fuel
counter runs out.

The sandbox's metering pass (``wasm_plugins.sandbox._metering``) gives a module a mutable i64
global, the fuel it was handed and has not spent yet (exported as :data:`FUEL_EXPORT`), charges
it at every function entry and loop header, and calls the import :data:`METER_MODULE` ``.``
:data:`METER_FUNCTION` ``(counter: i64) -> i64`` when it falls below zero. The meter answers with
the counter's new value, or raises: a :class:`ResourceLimitExceeded` for fuel, a
:class:`DeadlineExceeded` once the deadline passed, exactly as wasmtime's native fuel and epoch
deadlines do. An engine that runs metered modules links one :class:`Meter` per instance and
re-arms it for every budget: wasmer 1.1 as a host function, for fuel and deadlines; wasmer-sdk as
a host call of the guest's process, for fuel alone (its deadlines are the process kill).

Fuel is handed to the guest in chunks only when a deadline is set: the guest then comes back to
the meter after about :data:`CHUNK` units (under a millisecond of guest work), which looks at the
clock and lets other Python threads run (the guest holds the GIL between two visits). With fuel
alone the whole budget is handed over at once, and the meter is only called when it runs out.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from wasm_plugins.engine._protocol import CallBudget, FuncSignature
from wasm_plugins.errors import CallCancelled, DeadlineExceeded, ResourceLimitExceeded

__all__ = ["CHUNK", "FUEL_EXPORT", "METER_FUNCTION", "METER_MODULE", "METER_SIGNATURE", "Meter"]

METER_MODULE = "__wasm_plugins_meter"
"""The import module of the meter a metered module calls."""
METER_FUNCTION = "refill"
"""The meter's import name."""
METER_SIGNATURE = FuncSignature(("i64",), ("i64",))
FUEL_EXPORT = "__wasm_plugins_fuel"
"""The exported mutable i64 global holding the fuel handed to the guest and not spent yet."""
CHUNK = 10_000_000
"""Units handed to the guest at a time while a deadline is set: 0.4 to 0.8 ms of guest work on
loops of simple instructions (``benchmarks/bench_metering.py`` measures it), so the clock is read
about once a millisecond or more often, for one host call (a few microseconds) per chunk."""


_HAND_OVER = 2 * sys.getswitchinterval()
"""How long the guest may keep the interpreter lock before the meter hands it over (when another
thread wants it). Not at every visit: a thread waiting for the lock asks for it only once the
switch interval passed without the lock changing hands, and a release at every visit (about
every millisecond) would change hands every time, back to this thread, so the waiting thread
would never ask, and never run."""


class Meter:
    """One instance's fuel reserve and deadline, shared by every guest entry of a budget.

    ``handed`` is what the guest's counter was last given; the fuel used so far is the budget
    minus the reserve minus what is left of the counter (read from the instance's global).
    """

    __slots__ = (
        "_armed_at",
        "_clock",
        "_pause",
        "_paused_at",
        "_reserve",
        "cancelled",
        "exhausted",
        "fuel",
        "operation",
        "timeout",
    )

    def __init__(
        self,
        budget: CallBudget,
        *,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.fuel = budget.fuel
        self.timeout = budget.timeout
        self._clock = clock
        self._pause = pause
        self._armed_at = self._paused_at = 0.0
        self._reserve = 0
        self.exhausted = False
        self.operation = "instantiation"
        self.cancelled: threading.Event | None = None
        """Set by another thread to stop the guest at its next visit (see :meth:`watch`)."""

    @property
    def _chunked(self) -> bool:
        """Whether the guest must come back regularly: for the deadline, or a cancellation."""
        return self.timeout is not None or self.cancelled is not None

    def watch(self, cancelled: threading.Event | None, counter: int | None) -> int | None:
        """Stop the guest at its next visit once ``cancelled`` is set (None: stop watching).
        Given the counter of an armed budget, returns its new value: no more than a chunk, the
        rest back in the reserve, so that the guest visits soon."""
        self.cancelled = cancelled
        if cancelled is None or counter is None or counter <= CHUNK:
            return counter
        if self.fuel is not None:
            self._reserve += counter - CHUNK
        return CHUNK

    def arm(self, *, handing: bool = True) -> int:
        """Start a new budget; returns the value to give the guest's counter, or 0 when not
        ``handing`` (no instance yet: its counter starts at 0 and the first charge comes here)."""
        self.exhausted = False
        if self._chunked:
            self._armed_at = self._paused_at = self._clock()
        if self.fuel is None:
            return CHUNK if handing else 0
        first = 0 if not handing else self.fuel if not self._chunked else min(self.fuel, CHUNK)
        self._reserve = self.fuel - first
        return first

    def refill(self, _memory: object, counter: int) -> int:
        """The import a metered guest calls with its counter below zero (the memory argument is
        the engine's, unused): the counter's new value, or a typed error that stops the guest."""
        if self.fuel is not None:
            available = self._reserve + min(counter, 0)
            if available < 0:
                self.exhausted = True
                raise ResourceLimitExceeded(
                    resource="fuel", used=self.fuel, limit=self.fuel, unit="units"
                )
        else:
            available = CHUNK
        cancelled = self.cancelled
        if cancelled is None:
            if self.timeout is None:
                self._reserve = 0
                return available
        elif cancelled.is_set():
            raise CallCancelled(operation=self.operation)
        now = self._clock()
        elapsed = now - self._armed_at
        if self.timeout is not None and elapsed >= self.timeout:
            raise DeadlineExceeded(operation=self.operation, duration=elapsed, limit=self.timeout)
        if now - self._paused_at >= _HAND_OVER:
            # The guest held the interpreter lock all along: a thread that asked for it gets it
            # now (a release forces the switch once asked), then gives it back in its turn.
            self._paused_at = now
            self._pause(0)
        handed = min(available, CHUNK)
        if self.fuel is not None:
            self._reserve = available - handed
        return handed

    def consumed(self, counter: int | None) -> int | None:
        """Fuel used since :meth:`arm`, given the guest's counter now."""
        if self.fuel is None:
            return None
        if self.exhausted or counter is None:
            return self.fuel if self.exhausted else None
        return max(0, min(self.fuel, self.fuel - self._reserve - counter))
