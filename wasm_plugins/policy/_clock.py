"""Time and randomness for the policy, injected so that tests control them and never sleep."""

from __future__ import annotations

import random
import time
from typing import Protocol

__all__ = ["Clock", "RandomSource", "SystemClock"]


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

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def system_random() -> RandomSource:
    """A random source seeded by the system."""
    return random.Random()
