"""The bulkhead: at most N calls of one plugin in flight, a bounded queue, a queue wait timeout.

A plugin that hangs or floods holds at most its own slots; callers beyond its queue are refused at
once with ``ResourceLimitExceeded(resource="concurrency")`` rather than piling up threads in the
host. Waiters are served first come, first served.

A freed slot is handed to the first waiter: its own lock is released, and no other waiter wakes
(a queue of n woken on every freed slot costs n times n wake-ups, each taking the GIL: a flood's
queue would take the host's cores and cut the bulkhead's throughput several times over).
"""

from __future__ import annotations

import collections
import threading
import time

from wasm_plugins.errors import ConfigurationError, ResourceLimitExceeded

__all__ = ["Bulkhead"]

_turn = threading.Lock
"""Makes a waiter's turn: a lock held from the moment the waiter queues, released to hand it
a slot."""


class Bulkhead:
    """A counting gate with a bounded FIFO queue.

    :param limit: calls allowed in flight at once.
    :param queue: callers allowed to wait for a slot; more are refused at once.
    :param plugin: named in errors.
    """

    def __init__(self, limit: int, queue: int, *, plugin: str | None = None) -> None:
        for field, value, minimum in (("concurrency", limit, 1), ("queue_size", queue, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigurationError(
                    field=field,
                    plugin=plugin,
                    message=(
                        f"Invalid configuration: {field} - {value!r} is not a whole number of at "
                        f"least {minimum}"
                    ),
                    suggestion=f"give {field} as a whole number >= {minimum}",
                )
        self.limit = limit
        self.queue = queue
        self.plugin = plugin
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiting: collections.deque[threading.Lock] = collections.deque()
        """One held lock per waiter, first come first; a freed slot releases the first."""

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiting)

    def acquire(self, deadline: float | None) -> None:
        """Take a slot, waiting in the queue until ``deadline`` (``time.monotonic()``) at most.

        :raises ResourceLimitExceeded: at once when the queue is full, or when the wait timed out.
        """
        with self._lock:
            if self._in_flight < self.limit and not self._waiting:
                self._in_flight += 1
                return
            if len(self._waiting) >= self.queue:
                raise self._refused(
                    f"{self._in_flight} calls in flight and the queue of {self.queue} is full"
                )
            turn = _turn()
            turn.acquire()
            self._waiting.append(turn)
        try:
            if deadline is None:
                served = turn.acquire()
            else:
                served = turn.acquire(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            # Interrupted (KeyboardInterrupt in the main thread): out of the queue, and a slot
            # handed over meanwhile goes on to the next waiter.
            with self._lock:
                queued = turn in self._waiting
                if queued:
                    self._waiting.remove(turn)
            if not queued:
                self.release()
            raise
        if served:
            return  # the slot was handed over, counted in flight by whoever freed it
        with self._lock:
            try:
                self._waiting.remove(turn)
            except ValueError:
                # A slot was handed over as the wait timed out: the slot is this caller's.
                return
            raise self._refused(
                f"waited in the queue until the queue timeout, with {self._in_flight} calls "
                "in flight"
            )

    def release(self) -> None:
        """Give a slot back: to the first waiter if any (it stays in flight), else free it."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._in_flight -= 1

    def _refused(self, why: str) -> ResourceLimitExceeded:
        return ResourceLimitExceeded(
            resource="concurrency",
            used=self._in_flight,
            limit=self.limit,
            unit="calls",
            plugin=self.plugin,
            message=(
                f"Resource limit exceeded: concurrency - at most {self.limit} calls of this plugin "
                f"run at once; {why}"
            ),
            suggestion=(
                "retry later, or raise the plugin's concurrency or queue size; a plugin that is "
                "slow or hanging holds its slots until its timeout"
            ),
        )
