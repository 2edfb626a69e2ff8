"""Policy events: what reporters receive, one record per thing that happened.

Every attempt produces exactly one :class:`AttemptSucceeded` or :class:`AttemptFailed`; every call
ends with exactly one :class:`CallFinished`; every breaker transition is one
:class:`BreakerStateChanged`.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from wasm_plugins.errors import PluginError
from wasm_plugins.sandbox import Limits

__all__ = [
    "AttemptFailed",
    "AttemptSucceeded",
    "BreakerStateChanged",
    "CallFinished",
    "FallbackUsed",
    "HookFailed",
    "LimitsChanged",
    "PolicyEvent",
    "RetryScheduled",
]


@attrs.frozen
class PolicyEvent:
    """Base of every event: which call, and when (the policy clock)."""

    plugin: str
    function: str
    call_id: str
    time: float

    @property
    def name(self) -> str:
        """The event's name in snake case (``attempt_failed``), as logs and metrics use it."""
        return _snake(type(self).__name__)


@functools.cache
def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


@attrs.frozen
class AttemptSucceeded(PolicyEvent):
    """An attempt returned a value."""

    attempt: int
    duration: float
    input: Any = attrs.field(default=None, repr=False, eq=False)
    """The call's input (the same object the caller passed: do not change it)."""
    value: Any = attrs.field(default=None, repr=False, eq=False)
    """The value the attempt returned (the caller gets this very object: do not change it)."""


@attrs.frozen
class AttemptFailed(PolicyEvent):
    """An attempt raised a typed error (after classification)."""

    attempt: int
    duration: float
    error: PluginError


@attrs.frozen
class RetryScheduled(PolicyEvent):
    """Another attempt will be made after ``delay`` seconds."""

    attempt: int
    """The number of the attempt that will be made."""
    delay: float
    reason: str
    """Which recovery answered, and why."""


@attrs.frozen
class LimitsChanged(PolicyEvent):
    """The next attempt runs under other limits (raised by a recovery)."""

    attempt: int
    before: Limits
    after: Limits
    reason: str


@attrs.frozen
class BreakerStateChanged(PolicyEvent):
    """The circuit breaker of (plugin, function) changed state."""

    before: str
    after: str
    reason: str


@attrs.frozen
class FallbackUsed(PolicyEvent):
    """A fallback answered in the plugin's place."""

    strategy: str
    quality: float
    error: PluginError
    """The error that made the fallback necessary."""


@attrs.frozen
class HookFailed(PolicyEvent):
    """A policy hook raised, or took longer than allowed; its answer was not used."""

    hook: str
    source: str
    """The pluggy plugin that implements it."""
    reason: str


@attrs.frozen
class CallFinished(PolicyEvent):
    """The call ended: with the plugin's value, a fallback's value, or an error."""

    outcome: str
    """``value``, ``fallback`` or ``error``."""
    attempts: int
    duration: float
    error: PluginError | None = None
    strategy: str | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)
