"""The circuit breaker of one (plugin, function): closed, open, half-open.

- Closed: calls pass. It opens after ``failure_threshold`` consecutive failures, or when the share
  of failures among the calls of the last ``window`` seconds reaches ``failure_ratio`` (once at
  least ``min_calls`` calls were seen).
- Open: calls fail fast until ``recovery_time`` has passed, then the breaker is half-open.
- Half-open: at most ``half_open_probes`` calls run at a time; ``success_threshold`` successes in
  a row close it, any failure opens it again.

Counters reset on every transition, and a call that started under an earlier state does not count
under the new one. The lock is never held while a call runs: a call takes a :class:`Permit`
and reports its result with it. Transitions are announced after the lock is released.

The window of a failure ratio keeps counts, not calls: :data:`WINDOW_BUCKETS` buckets, each the
calls and failures of its share of the window, with their running totals. A breaker in front of
a busy function holds a few kilobytes whatever its call rate, and a failure checks the ratio in
constant time, however many calls the window holds. A call counts for the whole window, and
leaves it at most one bucket (1/64 of the window) late. Successes, the common case, are noted
without the lock (a time appended to a deque) and folded into the buckets by one of them every
:data:`FOLD_AT`, by a failure, or by a reader, each of which also drops the buckets the window
has left.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

import attrs

from wasm_plugins._units import format_duration
from wasm_plugins.errors import InstanceError, circuit_open_error
from wasm_plugins.policy._clock import Clock, SystemClock

__all__ = [
    "FOLD_AT",
    "WINDOW_BUCKETS",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "Verdict",
]

WINDOW_BUCKETS = 64
"""The buckets a failure ratio's window is counted in."""
FOLD_AT = 512
"""Successes noted (lock-free) before one of them folds them into the window's buckets."""


class BreakerState(str, Enum):
    """Where a breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Verdict(str, Enum):
    """How a call's result counts for the breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"
    """Neither: an error the caller caused (bad input, configuration) says nothing of health."""


@attrs.frozen
class BreakerConfig:
    """Thresholds of a breaker (the manifest's ``[policy.breaker]``)."""

    failure_threshold: int = 5
    failure_ratio: float | None = None
    window: float = 60.0
    min_calls: int = 10
    recovery_time: float = 30.0
    half_open_probes: int = 1
    success_threshold: int = 1


@attrs.frozen
class Permit:
    """Leave to run one call, to be handed back with its verdict."""

    generation: int
    probe: bool


Transition = Callable[[BreakerState, BreakerState, str], None]

_FULL = "half-open and every probe slot is taken"
_REFUSAL_SUGGESTION = "the plugin failed repeatedly; calls resume once a probe succeeds"


class CircuitBreaker:
    """A thread-safe circuit breaker on an injected monotonic clock."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock,
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._monotonic: Callable[[], float] = (
            time.monotonic if type(clock) is SystemClock else clock.monotonic
        )
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._probes_in_flight = 0
        self._track_window = config.failure_ratio is not None and config.window > 0
        """Whether the window of recent calls is kept: only the failure ratio reads it."""
        self._width = config.window / WINDOW_BUCKETS
        """The share of the window one bucket counts, in seconds."""
        self._buckets: deque[list[int]] = deque()
        """``[slot, calls, failures]``, oldest first; a bucket counts the calls made from
        ``slot * width`` to ``(slot + 1) * width``."""
        self._noted: deque[float] = deque()
        """When the successes not yet folded into the buckets ended (appended without the lock:
        a deque's appends and pops are atomic)."""
        self._window_calls = 0
        self._window_failures = 0
        """The totals of the buckets."""
        self._permit = Permit(0, probe=False)
        """The permit of every call while closed (permits are values: one per generation)."""
        self.quiet: Permit | None = None if self._track_window else self._permit
        """The permit of every call while a success has nothing to count: the breaker is
        closed, keeps no window (no failure ratio) and no failure streak; None otherwise. A
        caller may take it without :meth:`try_acquire`, and skip :meth:`record_success` when it
        is still the same permit after the call (the policy does both for every call)."""
        self._last_refusal: tuple[int, str] = (-1, "")
        """The last open refusal's time left (whole milliseconds, rounded up) and its text."""

    # -- reading --------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose recovery time passed reads as half-open)."""
        with self._lock:
            changes = self._advance()
            state = self._state
        self._announce(changes)
        return state

    @property
    def at_rest(self) -> bool:
        """Closed, with nothing counted that a decision reads (no failure streak, no failure
        in the window): a fresh breaker would decide every call as this one does."""
        with self._lock:
            if self._state is not BreakerState.CLOSED or self._consecutive_failures:
                return False
            self._window_now(self._monotonic())
            return self._window_failures == 0

    def counters(self) -> dict[str, int]:
        """The counters of the current state (they reset on every transition)."""
        with self._lock:
            return {
                "consecutive_failures": self._consecutive_failures,
                "consecutive_successes": self._consecutive_successes,
                "probes_in_flight": self._probes_in_flight,
                # Kept only when the breaker opens by a failure ratio (0 otherwise).
                "window_calls": self._window_now(self._monotonic()),
            }

    # -- calls ----------------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Leave to make one call.

        :raises InstanceError: (state ``circuit_open``) when the breaker is open, or half-open
            with every probe slot taken.
        """
        permit = self.try_acquire()
        if isinstance(permit, InstanceError):
            raise permit
        return permit

    def try_acquire(self) -> Permit | InstanceError:
        """:meth:`acquire`, with the refusal returned instead of raised (raising costs more than
        the rest of a refusal)."""
        # Closed: the permit of the current generation, read without the lock. The state, the
        # generation and the permit are each written under the lock in _move; a permit read
        # here is handed out only if the breaker was closed in that same generation, which is
        # what taking the lock an instant earlier would have given.
        permit = self._permit
        state = self._state
        if state is BreakerState.CLOSED and permit.generation == self._generation:
            return permit
        if state is BreakerState.OPEN:
            # Open and not yet due for a probe: refused without the lock, as the locked path
            # below would have refused an instant earlier.
            reopens = self._opened_at + self.config.recovery_time
            now = self._monotonic()
            if now < reopens and self._state is BreakerState.OPEN:
                return self._rejection(state, reopens - now)
        granted: Permit | None
        with self._lock:
            changes = self._advance()
            state = self._state
            if state is BreakerState.CLOSED:
                granted = self._permit
            elif (
                state is BreakerState.HALF_OPEN
                and self._probes_in_flight < self.config.half_open_probes
            ):
                self._probes_in_flight += 1
                granted = Permit(self._generation, probe=True)
            else:
                reopens = self._opened_at + self.config.recovery_time
                retry_in = max(0.0, reopens - self._clock.monotonic())
                granted = None
        if changes:
            self._announce(changes)
        if granted is None:
            return self._rejection(state, retry_in)
        return granted

    def record_success(self, permit: Permit) -> None:
        """``record(permit, Verdict.SUCCESS)``.

        A success while closed, the common case, takes no lock (threads calling the same
        function would queue on it): its time is appended to a deque, whose appends and pops are
        atomic, and the failure streak is reset under the lock only when there is one. A success
        that races a transition may be counted in the new state's window: a success, never a
        failure, so it can only delay an opening by the failure ratio, by one call.
        """
        if self._state is BreakerState.CLOSED and permit.generation == self._generation:
            if self._track_window:
                noted = self._noted
                noted.append(self._monotonic())
                if len(noted) >= FOLD_AT and self._lock.acquire(blocking=False):
                    # One success in FOLD_AT folds them (and drops the buckets the window
                    # left); none waits for another doing it.
                    try:
                        self._window_now(noted[-1])
                    finally:
                        self._lock.release()
            if self._consecutive_failures:
                with self._lock:
                    if permit.generation == self._generation:
                        self._streak_ended()
            return
        self.record(permit, Verdict.SUCCESS)

    def record(self, permit: Permit, verdict: Verdict) -> None:
        """Count a call's result; results from before the last transition are not counted."""
        lock = self._lock
        lock.acquire()
        try:
            if (
                verdict is Verdict.SUCCESS
                and self._state is BreakerState.CLOSED
                and permit.generation == self._generation
            ):
                # What _count does for a success while closed, the common case.
                if self._track_window:
                    now = self._monotonic()
                    self._noted.append(now)
                    if len(self._noted) >= FOLD_AT:
                        self._window_now(now)
                self._streak_ended()
                return
            changes = self._advance() if self._state is BreakerState.OPEN else []
            if permit.generation == self._generation:
                if permit.probe:
                    self._probes_in_flight -= 1
                if verdict is not Verdict.IGNORED:
                    changes += self._count(verdict)
        finally:
            lock.release()
        if changes:
            self._announce(changes)

    # -- manual control -------------------------------------------------------------------------

    def force_open(self, reason: str = "opened by hand") -> None:
        """Open now (for instance while a plugin is being replaced)."""
        with self._lock:
            changes = self._move(BreakerState.OPEN, reason)
        self._announce(changes)

    def force_close(self, reason: str = "closed by hand") -> None:
        """Close now, forgetting every counter."""
        with self._lock:
            changes = self._move(BreakerState.CLOSED, reason)
        self._announce(changes)

    # -- the state machine (called with the lock held) -----------------------------------------

    def _advance(self) -> list[tuple[BreakerState, BreakerState, str]]:
        if (
            self._state is BreakerState.OPEN
            and self._clock.monotonic() >= self._opened_at + self.config.recovery_time
        ):
            return self._move(
                BreakerState.HALF_OPEN,
                f"{format_duration(self.config.recovery_time)} passed since it opened",
            )
        return []

    def _count(self, verdict: Verdict) -> list[tuple[BreakerState, BreakerState, str]]:
        if verdict is Verdict.IGNORED:
            return []
        failed = verdict is Verdict.FAILURE
        config = self.config
        if self._state is BreakerState.HALF_OPEN:
            if failed:
                return self._move(BreakerState.OPEN, "a probe failed")
            self._consecutive_successes += 1
            if self._consecutive_successes >= config.success_threshold:
                return self._move(
                    BreakerState.CLOSED, f"{self._consecutive_successes} probe(s) succeeded"
                )
            return []
        if self._state is not BreakerState.CLOSED:
            return []
        if self._track_window:
            # Folded and trimmed first: the successes noted before this call go in before it.
            now = self._monotonic()
            self._window_now(now)
            self._add(int(now // self._width), 1, int(failed))
        if not failed:
            self._streak_ended()
            return []
        self._consecutive_failures += 1
        self.quiet = None
        if self._consecutive_failures >= config.failure_threshold:
            return self._move(
                BreakerState.OPEN, f"{self._consecutive_failures} consecutive failures"
            )
        if config.failure_ratio is not None:
            calls, failures = self._window_calls, self._window_failures
            if calls and calls >= config.min_calls and failures / calls >= config.failure_ratio:
                return self._move(BreakerState.OPEN, f"{failures} of the last {calls} calls failed")
        return []

    def _move(
        self, target: BreakerState, reason: str
    ) -> list[tuple[BreakerState, BreakerState, str]]:
        before = self._state
        self._state = target
        self._generation += 1
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._probes_in_flight = 0
        self._noted.clear()
        self._buckets.clear()
        self._window_calls = self._window_failures = 0
        self._permit = Permit(self._generation, probe=False)
        quiet = target is BreakerState.CLOSED and not self._track_window
        self.quiet = self._permit if quiet else None
        if target is BreakerState.OPEN:
            self._opened_at = self._clock.monotonic()
        if before is target:
            return []
        return [(before, target, reason)]

    def _streak_ended(self) -> None:
        """A success while closed, with the lock held: no failure streak any more."""
        self._consecutive_failures = 0
        if not self._track_window:
            self.quiet = self._permit

    # -- the window of a failure ratio (called with the lock held) --------------------------------

    def _fold(self) -> None:
        """Count the successes noted so far into their buckets (those noted meanwhile wait for
        the next fold)."""
        noted = self._noted
        width = self._width
        slot, run = -1, 0
        for _ in range(len(noted)):
            at = int(noted.popleft() // width)
            if at != slot:
                if run:
                    self._add(slot, run, 0)
                slot, run = at, 0
            run += 1
        if run:
            self._add(slot, run, 0)

    def _add(self, slot: int, calls: int, failures: int) -> None:
        buckets = self._buckets
        if buckets and buckets[-1][0] >= slot:
            # This bucket's, or an earlier one's noted late (another thread's success): counted
            # with the newest bucket, it leaves the window a little later, never earlier.
            bucket = buckets[-1]
            bucket[1] += calls
            bucket[2] += failures
        else:
            buckets.append([slot, calls, failures])
        self._window_calls += calls
        self._window_failures += failures

    def _window_now(self, now: float) -> int:
        """The calls of the window that ends ``now``, after folding the successes noted and
        dropping the buckets that ended before it began."""
        if not self._track_window:
            return 0
        self._fold()
        buckets = self._buckets
        first = (now - self.config.window) / self._width
        while buckets and buckets[0][0] + 1 <= first:
            _, calls, failures = buckets.popleft()
            self._window_calls -= calls
            self._window_failures -= failures
        return self._window_calls

    def _announce(self, changes: list[tuple[BreakerState, BreakerState, str]]) -> None:
        if self._on_transition is not None:
            for before, after, reason in changes:
                self._on_transition(before, after, reason)

    def _rejection(self, state: BreakerState, retry_in: float) -> InstanceError:
        if state is BreakerState.HALF_OPEN:
            message = f"Instance unavailable: the circuit of {self.name} is {_FULL}"
        elif retry_in >= 1e-3:
            # The time left, rounded up to the millisecond: the text of the last refusal serves
            # every refusal of the same millisecond (an open breaker refuses in bursts).
            millisecond = math.ceil(retry_in * 1000)
            last = self._last_refusal
            if last[0] == millisecond:
                message = last[1]
            else:
                message = self._refusal_text(format_duration(millisecond / 1000))
                self._last_refusal = (millisecond, message)
        else:
            message = self._refusal_text(format_duration(max(retry_in, 1e-6)))
        return circuit_open_error(message, _REFUSAL_SUGGESTION)

    def _refusal_text(self, retry_in: str) -> str:
        return (
            f"Instance unavailable: the circuit of {self.name} is open; the next probe is "
            f"allowed in {retry_in}"
        )
