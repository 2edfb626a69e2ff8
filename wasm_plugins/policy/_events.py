"""Policy events: what reporters receive, one record per thing that happened.

Every attempt produces exactly one :class:`AttemptSucceeded` or :class:`AttemptFailed`; every call
ends with exactly one :class:`CallFinished`; every breaker transition is one
:class:`BreakerStateChanged`.

Each is reported as a :class:`Report`, a light record that the built-in reporters read; the event
object itself is made only for a reporter that asks for ``event``, so a host whose reporters are
the built-in ones makes none on a call that succeeds.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from wasm_plugins.errors import PluginError, Severity
from wasm_plugins.sandbox import Limits

__all__ = [
    "Alert",
    "AttemptFailed",
    "AttemptSucceeded",
    "BreakerStateChanged",
    "CallFinished",
    "FallbackUsed",
    "HookFailed",
    "LimitsChanged",
    "PluginLoaded",
    "PluginReplaceFailed",
    "PluginReplaced",
    "PluginUnloaded",
    "PolicyEvent",
    "Report",
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

    @property
    def attempt_id(self) -> str | None:
        """The id of the attempt the event is about (``call_id/attempt``), or None for an event
        about the whole call."""
        attempt = getattr(self, "attempt", None)
        return None if attempt is None or not self.call_id else f"{self.call_id}/{attempt}"


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


@attrs.frozen
class PluginLoaded(PolicyEvent):
    """A plugin was registered with the host (``function`` and ``call_id`` are empty)."""

    version: str
    digest: str | None = None
    """The module's SHA-256, when it is known without reading the module."""


@attrs.frozen
class PluginReplaced(PolicyEvent):
    """A new version of a plugin serves new calls; calls running on the old one finish there."""

    old_version: str
    new_version: str
    digest: str
    module_changed: bool
    """Whether the module differs: breaker, retry budget and cached results were reset."""


@attrs.frozen
class PluginReplaceFailed(PolicyEvent):
    """A new version of a plugin was refused at ``step``; the old one keeps serving."""

    step: str
    """``manifest``, ``grant`` (the trust policy), ``compile`` (compiling, checking and
    linking), or ``health_check``."""
    error: PluginError


@attrs.frozen
class PluginUnloaded(PolicyEvent):
    """A plugin was removed; its sandboxes close when the calls running in them return."""

    version: str


@attrs.frozen
class Alert:
    """Something an operator should look at: raised by the built-in alert rules, sent to every
    ``wasm_plugins_alert`` implementation (the built-in one writes it to the log)."""

    time: float
    """When (the policy clock)."""
    plugin: str
    function: str
    reason: str
    """The rule that raised it: ``security_violation``, ``error_rate`` or ``resource_limit``."""
    message: str
    severity: Severity = Severity.HIGH
    """How urgent: ``critical`` for a security violation, ``high`` for an error rate over its
    threshold or repeated memory-limit breaches, ``medium`` for other repeated breaches."""
    details: dict[str, Any] = attrs.field(factory=dict, eq=False)
    """The figures behind it (``rate``, ``calls``, ``resource``, ``kind``...)."""


_HOT_FIELDS = ("attempt", "duration", "outcome", "error", "input", "value", "strategy")


class Report:
    """One thing that happened in a call, as a light record: its name, the call, and the fields
    the common events carry. :attr:`event` makes the full :class:`PolicyEvent` on first use.

    The policy reports a call's own events (its successful attempt, its end) through the call's
    state, which is a record too: read a record during the report, and keep :attr:`event`, not
    the record, when something must outlive it.
    """

    # Defaults of the class: a record sets only the fields its event has (a call's state sets
    # a handful per call, the rest stays at these).
    attempt: int = 0
    """The attempt's number (attempt events), or how many were made (``call_finished``)."""
    duration: float = 0.0
    outcome: str | None = None
    """``value``, ``fallback`` or ``error`` (``call_finished``)."""
    error: PluginError | None = None
    input: Any = None
    value: Any = None
    strategy: str | None = None
    _event: PolicyEvent | None = None

    def __init__(
        self,
        name: str,
        plugin: str,
        function: str,
        number: int,
        time: float,
        attempt: int = 0,
        duration: float = 0.0,
        outcome: str | None = None,
        error: PluginError | None = None,
        input: Any = None,
        value: Any = None,
        strategy: str | None = None,
    ) -> None:
        self.name = name
        """The event's name: ``attempt_succeeded``, ``call_finished``..."""
        self.plugin = plugin
        self.function = function
        self.number = number
        """The call's number in its host (``call_id`` is made from it)."""
        self.time = time
        self.attempt = attempt
        self.duration = duration
        self.outcome = outcome
        self.error = error
        self.input = input
        self.value = value
        self.strategy = strategy

    @classmethod
    def of(cls, event: PolicyEvent) -> Report:
        """The record of an event already made."""
        report = cls(event.name, event.plugin, event.function, 0, event.time)
        for name in _HOT_FIELDS:
            if hasattr(event, name):
                setattr(report, name, getattr(event, name))
        if isinstance(event, CallFinished):
            report.attempt = event.attempts
        report._event = event
        return report

    @property
    def call_id(self) -> str:
        """The call's id, as events have it."""
        if self._event is not None:
            return self._event.call_id
        return f"{self.plugin}#{self.number}"

    @property
    def event(self) -> PolicyEvent:
        """The full event (made once per report, on first use)."""
        event = self._event
        if event is None:
            if self.name == "attempt_succeeded":
                event = AttemptSucceeded(
                    self.plugin,
                    self.function,
                    self.call_id,
                    self.time,
                    self.attempt,
                    self.duration,
                    self.input,
                    self.value,
                )
            else:
                event = CallFinished(
                    self.plugin,
                    self.function,
                    self.call_id,
                    self.time,
                    self.outcome or "value",
                    self.attempt,
                    self.duration,
                    self.error,
                    self.strategy,
                )
            self._event = event
        return event
