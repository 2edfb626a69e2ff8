"""Retry timing: exponential backoff with full jitter, and a retry budget per plugin."""

from __future__ import annotations

import threading

import attrs

from wasm_plugins.policy._clock import RandomSource

__all__ = ["Backoff", "RetryBudget"]


@attrs.frozen
class Backoff:
    """Exponential backoff with full jitter: before retry ``n`` (1 for the first retry), wait a
    uniformly random time in ``[0, min(cap, base * 2 ** (n - 1))]``.

    Full jitter spreads the retries of many callers that failed together, so that they do not
    come back in step.
    """

    base: float = 0.05
    cap: float = 2.0

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry``."""
        return float(min(self.cap, self.base * 2.0 ** max(0, retry - 1)))

    def delay(self, retry: int, random: RandomSource) -> float:
        """A wait before retry number ``retry``, drawn from ``random``."""
        return float(random.uniform(0.0, self.ceiling(retry)))


class RetryBudget:
    """Retries allowed per plugin, as a token bucket: each call adds ``ratio`` tokens (up to
    ``maximum``), each retry spends one. When plugins fail everywhere at once, retries stay a
    bounded share of the traffic instead of multiplying it.
    """

    def __init__(self, ratio: float = 0.2, maximum: float = 10.0) -> None:
        self.ratio = ratio
        self.maximum = maximum
        self._tokens = maximum
        self._lock = threading.Lock()
        self.full = True
        """Whether no retry was spent since the bucket last filled up: a deposit would change
        nothing, and a caller may skip it (read without the lock: a concurrent withdrawal then
        simply counts as made after the call)."""

    @property
    def tokens(self) -> float:
        """Retries that could be made now."""
        with self._lock:
            return self._tokens

    def deposit(self) -> None:
        """A call was made."""
        if self.full:
            return
        with self._lock:
            self._tokens = min(self.maximum, self._tokens + self.ratio)
            self.full = self._tokens >= self.maximum

    def withdraw(self) -> bool:
        """Spend one retry; whether there was one to spend."""
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            self.full = False
            return True
