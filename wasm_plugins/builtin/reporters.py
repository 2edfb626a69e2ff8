"""Built-in reporters: structured logs, metrics and alerts.

Each is an ordinary ``wasm_plugins_report`` hookimpl (``trylast``) that reads the light record of
each event (no event object is made for them); a reporter that raises is logged and changes
nothing, and the others still see the event.

- logs: one loguru record per event, its fields bound (``event``, ``plugin``, ``function``,
  ``kind``...), so a JSON sink (``logger.add(sink, serialize=True)``) writes structured logs;
- metrics: counters, latency histograms and error-rate windows in memory
  (``host.metrics.snapshot()``, ``host.stats()``), which the process-wide Prometheus collector
  reads when ``prometheus_client`` is installed;
- alerts: every security violation, the error rate of each plugin over a sliding window above a
  threshold, repeated resource-limit breaches (``host.alerts.raised``), sent to the
  ``wasm_plugins_alert`` hook, whose built-in implementation is the log.

Spans, the process-wide Prometheus collector and Sentry are in :mod:`wasm_plugins.integrations`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from wasm_plugins._correlation import attempt_id, caller_fields
from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins._suggest import did_you_mean
from wasm_plugins.builtin.stats import (
    LATENCY_BOUNDS,
    LATENCY_BUCKETS,
    PENDING_MAX,
    WINDOW_SPAN,
    CallTally,
    Cell,
)
from wasm_plugins.errors import (
    ConfigurationError,
    PluginError,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    error_log_fields,
)
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import (
    Alert,
    AttemptFailed,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    Report,
    RetryScheduled,
)

__all__ = [
    "LATENCY_BUCKETS",
    "Alert",
    "AlertChannel",
    "AlertReporter",
    "LogReporter",
    "MetricsReporter",
    "log_alert",
]

_LOGURU_CORE: Any = None
"""loguru's state behind the logger (one per process, never replaced), read when the first
event is reported: reading it imports loguru (and asyncio), which a host made and not yet
called does without."""


def _loguru_core() -> Any:
    global _LOGURU_CORE  # noqa: PLW0603 - set once, read on every report
    _LOGURU_CORE = getattr(logger, "_core", None)
    return _LOGURU_CORE


def _error_fields(error: PluginError | None) -> dict[str, Any]:
    return {} if error is None else error_log_fields(error)


class LogReporter:
    """One structured log record per event, plain successes aside."""

    hook_topics = frozenset(
        {
            "attempt_failed",
            "retry_scheduled",
            "limits_changed",
            "breaker_state_changed",
            "fallback_used",
            "hook_failed",
            "call_finished.error",
            "call_finished.fallback",
        }
    )
    """Every event but plain successes (a log line per call would cost more than the call)."""

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Log the event with its fields bound."""
        # Whether loguru would drop a record of the highest level used here before formatting
        # it (logging disabled for this module, the library's default, asked first; no sink; a
        # level below every sink's), read from loguru's own state, which it updates on add, remove,
        # enable and disable. Anything unexpected there counts as "not dropped".
        try:
            core = _LOGURU_CORE or _loguru_core()
            if (
                core.enabled.get(__name__) is False
                or not core.handlers
                or core.levels_lookup["ERROR"][2] < core.min_level
            ):
                return
        except Exception:
            pass
        event = record.event
        fields: dict[str, Any] = {
            "event": event.name,
            "plugin": event.plugin,
            "function": event.function,
            "call_id": event.call_id,
            **caller_fields(),
        }
        level = "DEBUG"
        message = event.name.replace("_", " ")
        if isinstance(event, AttemptFailed):
            fields.update(
                _error_fields(event.error),
                attempt=event.attempt,
                attempt_id=attempt_id(event.call_id, event.attempt),
            )
            level = "ERROR" if event.error.severity is Severity.CRITICAL else "WARNING"
            message = f"attempt {event.attempt} failed: {escape(event.error.message)}"
        elif isinstance(event, RetryScheduled):
            fields.update(attempt=event.attempt, delay=event.delay, reason=event.reason)
            level = "INFO"
            message = f"retry {event.attempt} in {event.delay:.3f} s: {escape(event.reason)}"
        elif isinstance(event, LimitsChanged):
            fields.update(reason=event.reason)
            level, message = "INFO", f"limits changed: {escape(event.reason)}"
        elif isinstance(event, BreakerStateChanged):
            fields.update(before=event.before, after=event.after, reason=event.reason)
            level = "WARNING"
            message = f"circuit {event.before} -> {event.after}: {escape(event.reason)}"
        elif isinstance(event, FallbackUsed):
            fields.update(strategy=event.strategy, quality=event.quality)
            fields.update(_error_fields(event.error))
            level, message = "WARNING", f"fallback {event.strategy} answered"
        elif isinstance(event, HookFailed):
            fields.update(hook=event.hook, source=event.source, reason=event.reason)
            level = "ERROR"
            message = f"{event.hook} of {event.source} failed: {escape(event.reason)}"
        elif isinstance(event, CallFinished):
            fields.update(outcome=event.outcome, attempts=event.attempts, duration=event.duration)
            fields.update(_error_fields(event.error))
            level = "ERROR" if event.outcome == "error" else "DEBUG"
            message = f"call finished: {event.outcome} after {event.attempts} attempt(s)"
        logger.bind(**fields).log(level, message)

    @hookimpl(trylast=True)
    def wasm_plugins_alert(self, alert: Alert) -> None:
        """The built-in alert channel: the log."""
        log_alert(alert)


class MetricsReporter:
    """Counters and latency histograms of one host, kept in a :class:`CallTally` (per-thread
    shards: a call counts without taking a lock that other threads take)."""

    hook_topics = frozenset(
        {
            "attempt_failed",
            "retry_scheduled",
            "limits_changed",
            "breaker_state_changed",
            "fallback_used",
            "hook_failed",
            "call_finished",
        }
    )
    """Every event but ``attempt_succeeded``: a successful attempt is the last of a call that
    ends with its value, and is counted with that call's end."""

    def __init__(self, tally: CallTally | None = None) -> None:
        self.tally = tally or CallTally()
        """The counts themselves (what :meth:`PluginHost.stats` reads too)."""
        self._local = self.tally.local

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Count the event."""
        if record.name == "call_finished":
            # The common cases, written out: the calling thread's own cell, no lock; the
            # duration waits there until the second ends (Cell.turn).
            outcome = record.outcome
            if outcome in {"value", "error"}:
                try:
                    cell = self._local.routes[record.plugin][record.function]
                except (AttributeError, KeyError):
                    cell = self.tally.cell(record.plugin, record.function)
                pending = cell.pending if outcome == "value" else cell.pending_errors
                if record.time >= cell.until or len(pending) >= PENDING_MAX:
                    cell.turn(record.time)
                pending.append(record.duration)
                return
        name, plugin, function = record.name, record.plugin, record.function
        try:
            cell = self._local.routes[plugin][function]
        except (AttributeError, KeyError):
            cell = self.tally.cell(plugin, function)
        if name == "call_finished":
            cell.count_ended(record.outcome or "error", (record.duration,), int(record.time))
        elif name == "attempt_failed" and record.error is not None:
            kind = record.error.kind
            cell.attempt_errors[kind] = cell.attempt_errors.get(kind, 0) + 1
        elif name == "retry_scheduled":
            cell.retries += 1
        elif name == "breaker_state_changed":
            event = record.event
            assert isinstance(event, BreakerStateChanged)
            cell.transitions[event.after] = cell.transitions.get(event.after, 0) + 1
        elif name == "fallback_used" and record.strategy is not None:
            cell.fallbacks[record.strategy] = cell.fallbacks.get(record.strategy, 0) + 1

    def _counters(self) -> dict[tuple[str, str, str, str, str], int]:
        """Every counter above zero, by (name, plugin, function, label, value)."""
        counters: dict[tuple[str, str, str, str, str], int] = {}

        def add(key: tuple[str, str, str, str, str], count: int) -> None:
            if count:
                counters[key] = counters.get(key, 0) + count

        for (plugin, function), cells in self.tally.cells().items():
            for cell in cells:
                add(("attempts", plugin, function, "result", "value"), cell.values)
                add(("calls", plugin, function, "outcome", "value"), cell.values)
                add(("retries", plugin, function, "", ""), cell.retries)
                for table, name, label in (
                    (cell.outcomes, "calls", "outcome"),
                    (cell.attempt_errors, "attempts", "result"),
                    (cell.fallbacks, "fallbacks", "strategy"),
                    (cell.transitions, "breaker_transitions", "to"),
                ):
                    for value, count in list(table.items()):
                        add((name, plugin, function, label, value), count)
        return counters

    def snapshot(self) -> dict[str, Any]:
        """Every counter (``{name: {"label=value,...": count}}``) and histogram, as plain data."""
        counters: dict[str, dict[str, int]] = {}
        for (name, plugin, function, label, value), count in sorted(self._counters().items()):
            labels = {"function": function, "plugin": plugin, label: value}
            label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k)
            counters.setdefault(name, {})[label_text] = count
        histograms = {}
        for (plugin, function), cells in sorted(self.tally.cells().items()):
            buckets = _published(cells)
            if any(buckets):
                histograms[f"{plugin}.{function}"] = {
                    "buckets": dict(zip([str(b) for b in LATENCY_BUCKETS], buckets, strict=True)),
                    "count": sum(buckets),
                    "sum": sum(cell.latency_sum for cell in cells),
                }
        return {"counters": counters, "latency_seconds": histograms}

    COUNTER_LABELS: ClassVar[Mapping[str, str]] = {
        "attempts": "result",
        "breaker_transitions": "to",
        "calls": "outcome",
        "fallbacks": "strategy",
        "retries": "",
    }
    """Each counter's name and its one label (``retries`` has none)."""

    def count(self, name: str, plugin: str, function: str, **label: str) -> int:
        """One counter's value (0 when never counted): ``count("calls", "p", "f",
        outcome="value")``; ``retries`` takes no label.

        :raises ConfigurationError: for a counter or a label that does not exist."""
        expected = self.COUNTER_LABELS.get(name)
        if expected is None:
            raise ConfigurationError(
                field="metrics",
                message=f"Invalid configuration: metrics - no counter named {name!r}",
                suggestion=did_you_mean(name, self.COUNTER_LABELS)
                + "counters: "
                + ", ".join(sorted(self.COUNTER_LABELS)),
            )
        if set(label) != ({expected} if expected else set()):
            wanted = f"its label {expected}=..." if expected else "no label"
            raise ConfigurationError(
                field="metrics",
                message=f"Invalid configuration: metrics - {name} takes {wanted}, "
                f"not {', '.join(label) or 'none'}",
                suggestion=(did_you_mean(next(iter(label)), [expected]) if label else "")
                + f"count({name!r}, plugin, function"
                + (f", {expected}=...)" if expected else ")"),
            )
        ((key, value),) = label.items() if label else (("", ""),)
        return self._counters().get((name, plugin, function, key, value), 0)

    def prometheus_text(self) -> str | None:
        """These metrics alone in Prometheus' exposition format, or None without
        prometheus_client (the process's collector serves every host's together)."""
        try:
            from wasm_plugins.integrations import prometheus  # noqa: PLC0415 optional dependency
        except ImportError:
            return None
        return prometheus.text(self)


_PUBLISHED_INDEXES = tuple(LATENCY_BOUNDS.index(bound) for bound in LATENCY_BUCKETS)


def _published(cells: list[Cell]) -> list[int]:
    """The published buckets' counts (not cumulative), summed from the fine ones."""
    counts = []
    previous = -1
    for index in _PUBLISHED_INDEXES:
        counts.append(sum(sum(cell.latency[previous + 1 : index + 1]) for cell in cells))
        previous = index
    return counts


AlertChannel = Callable[[Alert], None]
"""Where an alert goes once raised (the host: every ``wasm_plugins_alert`` implementation)."""


class AlertReporter:
    """The built-in alert rules:

    - ``security_violation`` (critical): every failed attempt with a security violation;
    - ``error_rate`` (high): a plugin's share of calls that did not end with its own value,
      over the last ``window`` seconds (at least ``min_calls`` calls), reaches ``threshold``;
      it fires once, and again only after a failed call finds the rate below the threshold
      (while it fires, the rate is read at most once a second of the clock; while it does not,
      a failure reads it again within the same second only when the failures since the last
      reading could have brought it to the threshold: reading it sums the counts of every
      function and thread of the plugin);
    - ``resource_limit`` (high for memory, medium for the others): ``breaches`` attempts of a
      plugin stopped by the same limit within ``breach_window`` seconds (the input's size, the
      caller's doing, aside); it fires once, and again only after a breach finds fewer.

    Each alert is kept in :attr:`raised` and sent to ``channel`` (the host sends it to every
    ``wasm_plugins_alert`` implementation; without a channel it is logged).

    :param clock: the policy clock's ``monotonic``.
    :param window: seconds of the error-rate window, at most
        :data:`~wasm_plugins.builtin.stats.WINDOW_SPAN` (the history the counts keep).
    :param tally: the call counts the error rate is read from (the metrics reporter's); it is
        evaluated once the call is counted, so this reporter is registered after that one.
    """

    hook_topics = frozenset(("attempt_failed", "call_finished.error", "call_finished.fallback"))
    """The events this reporter reads: failures only (a success cannot raise an alert)."""

    def __init__(
        self,
        clock: Callable[[], float],
        window: float = 60.0,
        threshold: float = 0.5,
        min_calls: int = 10,
        keep: int = 1000,
        *,
        tally: CallTally | None = None,
        channel: AlertChannel | None = None,
        breaches: int = 3,
        breach_window: float = 60.0,
    ) -> None:
        if not 0 < window <= WINDOW_SPAN:
            raise ValueError(f"the error-rate window is in (0, {WINDOW_SPAN}] seconds")
        self._clock = clock
        self.window = window
        self.threshold = threshold
        self.min_calls = min_calls
        self.tally = tally or CallTally()
        self.breaches = max(1, breaches)
        self.breach_window = breach_window
        self.raised: deque[Alert] = deque(maxlen=keep)
        self._channel = channel
        self._firing: set[tuple[str, ...]] = set()
        self._breaches: dict[tuple[str, str], deque[float]] = {}
        self._checked: dict[str, int] = {}
        """By plugin whose error-rate alert fires: the second its rate was last read."""
        self._below: dict[str, list[int]] = {}
        """By plugin whose error-rate alert does not fire: ``[second, calls, failures]`` of the
        window as last read, each failure since that second counted in both (the successes,
        not seen here, would only lower the rate: the counts bound it from above)."""
        self._lock = threading.Lock()

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Watch failed attempts and calls that did not end with their value."""
        error = record.error
        if record.name == "call_finished":
            # While a plugin's alert fires, its rate is read again once a second (the windows'
            # resolution), not on every failure: a plugin refused by its open breaker fails fast.
            plugin = record.plugin
            second = int(self._clock())
            if self._checked.get(plugin) == second:
                return
            below = self._below.get(plugin)
            if below is not None and below[0] == second:
                with self._lock:
                    below[1] += 1
                    below[2] += 1
                    still_below = below[2] < self.threshold * below[1]
                if still_below:
                    return
            self._error_rate(plugin, record.function)
        elif record.name == "attempt_failed" and isinstance(error, SecurityViolation):
            self._raise(
                Alert(
                    record.time,
                    record.plugin,
                    record.function,
                    "security_violation",
                    f"security violation in {record.plugin}.{record.function}: {error.message}",
                    Severity.CRITICAL,
                    {"kind": error.kind, "violation": error.violation_type},
                )
            )
        elif (
            record.name == "attempt_failed"
            and isinstance(error, ResourceLimitExceeded)
            and error.resource != "input"
        ):
            self._breach(record.plugin, record.function, error, record.time)

    def _error_rate(self, plugin: str, function: str) -> None:
        now = self._clock()
        calls, failures = self.tally.window(plugin, now, int(self.window))
        rate = failures / calls if calls else 0.0
        key = ("error_rate", plugin)
        with self._lock:
            if rate < self.threshold:
                self._firing.discard(key)
                self._checked.pop(plugin, None)
                self._below[plugin] = [int(now), calls, failures]
                return
            if key in self._firing:
                self._checked[plugin] = int(now)
                return
            if calls < self.min_calls:
                self._below[plugin] = [int(now), calls, failures]
                return
            self._firing.add(key)
            self._checked[plugin] = int(now)
            self._below.pop(plugin, None)
        self._raise(
            Alert(
                now,
                plugin,
                function,
                "error_rate",
                f"{plugin}: {failures} of the last {calls} calls failed "
                f"({rate:.0%}, threshold {self.threshold:.0%})",
                Severity.HIGH,
                {"rate": rate, "calls": calls, "failures": failures, "window": self.window},
            )
        )

    def _breach(
        self, plugin: str, function: str, error: ResourceLimitExceeded, time: float
    ) -> None:
        key = (plugin, error.resource)
        with self._lock:
            times = self._breaches.get(key)
            if times is None:
                times = self._breaches[key] = deque(maxlen=self.breaches)
            times.append(time)
            repeated = len(times) == self.breaches and time - times[0] <= self.breach_window
            firing = ("resource_limit", *key)
            if not repeated:
                self._firing.discard(firing)
                return
            if firing in self._firing:
                return
            self._firing.add(firing)
        self._raise(
            Alert(
                time,
                plugin,
                function,
                "resource_limit",
                f"{plugin}: the {error.resource} limit stopped {self.breaches} attempts within "
                f"{self.breach_window:g} s: {error.message}",
                Severity.HIGH if error.resource == "memory" else Severity.MEDIUM,
                {"resource": error.resource, "used": error.used, "limit": error.limit},
            )
        )

    def _raise(self, alert: Alert) -> None:
        self.raised.append(alert)
        if self._channel is None:
            log_alert(alert)
        else:
            self._channel(alert)


_ALERT_LEVELS = {
    Severity.CRITICAL: "CRITICAL",
    Severity.HIGH: "ERROR",
    Severity.MEDIUM: "WARNING",
    Severity.LOW: "INFO",
}


def log_alert(alert: Alert) -> None:
    """Write an alert to the log, at the level of its severity."""
    logger.bind(
        alert=alert.reason,
        severity=alert.severity.value,
        plugin=alert.plugin,
        function=alert.function,
    ).log(_ALERT_LEVELS[alert.severity], escape(alert.message))
