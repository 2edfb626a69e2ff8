"""Time and randomness for the policy, injected: the system's, and fakes that tests control (time
moves only when told to, and sleeping just moves it) so that they never sleep."""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "FixedRandom", "RandomSource", "SystemClock", "system_random"]


class Clock(Protocol):
    """A monotonic clock and the sleep that goes with it."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a fake clock just advances)."""


class RandomSource(Protocol):
    """Where jitter comes from."""

    def uniform(self, low: float, high: float) -> float:
        """A number in ``[low, high]``."""


class SystemClock:
    """The real clock: ``time.monotonic`` and ``time.sleep``."""

    monotonic = staticmethod(time.monotonic)
    """``time.monotonic`` itself: what reads it often (the policy, the reporters) pays for no
    call in between."""

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def system_random() -> RandomSource:
    """A random source seeded by the system."""
    return random.Random()


class FakeClock:
    """A monotonic clock that starts at ``start`` and advances on :meth:`sleep` and
    :meth:`advance`; every requested sleep is recorded in :attr:`sleeps`. Thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep."""
        with self._lock:
            self._now += seconds


class FixedRandom:
    """A random source for jitter that always returns the same point of the range: ``where`` 1.0
    gives the upper bound, 0.0 the lower; ``seed`` instead draws from a seeded generator."""

    def __init__(self, where: float | None = 1.0, seed: int | None = None) -> None:
        self._where = where
        self._random = random.Random(seed)

    def uniform(self, low: float, high: float) -> float:
        if self._where is None:
            return self._random.uniform(low, high)
        return low + (high - low) * self._where
