"""Built-in reporters: structured logs, metrics, alerts, and Sentry when it is set up.

Each is an ordinary ``wasm_plugins_report`` hookimpl (``trylast``) that reads the light record of
each event (no event object is made for them); a reporter that raises is logged and changes
nothing, and the others still see the event.

- logs: one loguru record per event, its fields bound (``event``, ``plugin``, ``function``,
  ``kind``...), so a JSON sink (``logger.add(sink, serialize=True)``) writes structured logs;
- metrics: counters and latency histograms in memory (``host.metrics.snapshot()``), which the
  process-wide Prometheus collector reads when ``prometheus_client`` is installed;
- alerts: the error rate of each plugin over a sliding window above a threshold, and every security
  violation (``host.alerts.raised``).

Spans, the process-wide Prometheus collector and Sentry are in :mod:`wasm_plugins.integrations`.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, final

import attrs

from wasm_plugins._correlation import attempt_id, caller_fields
from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins._suggest import did_you_mean
from wasm_plugins.errors import (
    ConfigurationError,
    PluginError,
    SecurityViolation,
    Severity,
    error_log_fields,
)
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import (
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
    "AlertReporter",
    "LogReporter",
    "MetricsReporter",
]

LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, float("inf"))
"""Upper bounds, in seconds, of the latency histogram's buckets."""


_LOGURU_CORE: Any = getattr(logger, "_core", None)
"""loguru's state behind the logger (one per process, never replaced)."""


def _dropped(level: str) -> bool:
    """Whether loguru would drop a record of this module at ``level`` before formatting it: no
    sink, a level below every sink's, or logging disabled for this module (the library's default).

    Read from loguru's own state, which it updates on ``add``, ``remove``, ``enable`` and
    ``disable``; anything unexpected there counts as "not dropped", and the record is made.
    """
    try:
        core = _LOGURU_CORE
        if not core.handlers:
            return True
        if core.levels_lookup[level][2] < core.min_level:
            return True
        return core.enabled.get(__name__) is False
    except Exception:
        return False


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
        if _dropped("ERROR"):  # the highest level used here: nothing would be written
            return
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


@final
class _RouteCounts:
    """The cells a plain success of one (plugin, function) adds to, looked up once."""

    __slots__ = ("attempts", "buckets", "calls", "total")

    def __init__(
        self, attempts: list[int], calls: list[int], buckets: list[int], total: list[float]
    ) -> None:
        self.attempts = attempts
        self.calls = calls
        self.buckets = buckets
        self.total = total


class MetricsReporter:
    """Counters and latency histograms of one host."""

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

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Each counter and each latency sum is a one-item list, added to in place; a counter
        # still at zero, or a histogram with no observation, was never counted and is not shown.
        self._counters: dict[tuple[str, str, str, str, str], list[int]] = {}
        self._latency: dict[tuple[str, str], list[int]] = {}
        self._latency_sum: dict[tuple[str, str], list[float]] = {}
        self._successes: dict[str, dict[str, _RouteCounts]] = {}
        """By plugin, then function: the cells of a plain success (only functions that answered
        are here: the plugin's exports, a bounded set)."""

    def _counter(self, key: tuple[str, str, str, str, str]) -> list[int]:
        # Called with the lock held.
        cell = self._counters.get(key)
        if cell is None:
            cell = self._counters[key] = [0]
        return cell

    def _histogram(self, key: tuple[str, str]) -> tuple[list[int], list[float]]:
        # Called with the lock held.
        buckets = self._latency.get(key)
        if buckets is None:
            buckets = self._latency[key] = [0] * len(LATENCY_BUCKETS)
            self._latency_sum[key] = [0.0]
        return buckets, self._latency_sum[key]

    def _count(self, name: str, plugin: str, function: str, label: str, value: str) -> None:
        key = (name, plugin, function, label, value)
        with self._lock:
            self._counter(key)[0] += 1

    def _finished(self, plugin: str, function: str, outcome: str, seconds: float) -> None:
        """A call counted by outcome, its latency observed (under one taking of the lock)."""
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._counter(("calls", plugin, function, "outcome", outcome))[0] += 1
            buckets, total = self._histogram((plugin, function))
            buckets[index] += 1
            total[0] += seconds

    def _route_counts(self, plugin: str, function: str) -> _RouteCounts:
        with self._lock:
            counts = self._successes.get(plugin, {}).get(function)
            if counts is None:
                buckets, total = self._histogram((plugin, function))
                counts = _RouteCounts(
                    self._counter(("attempts", plugin, function, "result", "value")),
                    self._counter(("calls", plugin, function, "outcome", "value")),
                    buckets,
                    total,
                )
                self._successes.setdefault(plugin, {})[function] = counts
        return counts

    def _succeeded(self, plugin: str, function: str, seconds: float) -> None:
        """A call that ended with its last attempt's value: that attempt and the call counted,
        its latency observed."""
        by_function = self._successes.get(plugin)
        counts = by_function.get(function) if by_function is not None else None
        if counts is None:
            counts = self._route_counts(plugin, function)
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        lock = self._lock
        lock.acquire()
        try:
            counts.attempts[0] += 1
            counts.calls[0] += 1
            counts.buckets[index] += 1
            counts.total[0] += seconds
        finally:
            lock.release()

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Count the event."""
        name, plugin, function = record.name, record.plugin, record.function
        if name == "call_finished":
            if record.outcome == "value":
                self._succeeded(plugin, function, record.duration)
            else:
                self._finished(plugin, function, record.outcome or "error", record.duration)
        elif name == "attempt_failed" and record.error is not None:
            self._count("attempts", plugin, function, "result", record.error.kind)
        elif name == "retry_scheduled":
            self._count("retries", plugin, function, "", "")
        elif name == "breaker_state_changed":
            event = record.event
            assert isinstance(event, BreakerStateChanged)
            self._count("breaker_transitions", plugin, function, "to", event.after)
        elif name == "fallback_used" and record.strategy is not None:
            self._count("fallbacks", plugin, function, "strategy", record.strategy)

    def snapshot(self) -> dict[str, Any]:
        """Every counter (``{name: {"label=value,...": count}}``) and histogram, as plain data."""
        with self._lock:
            counters: dict[str, dict[str, int]] = {}
            for (name, plugin, function, label, value), (count,) in sorted(self._counters.items()):
                if not count:
                    continue
                labels = {"function": function, "plugin": plugin, label: value}
                label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k)
                counters.setdefault(name, {})[label_text] = count
            histograms = {
                f"{plugin}.{function}": {
                    "buckets": dict(zip([str(b) for b in LATENCY_BUCKETS], counts, strict=True)),
                    "count": sum(counts),
                    "sum": self._latency_sum[(plugin, function)][0],
                }
                for (plugin, function), counts in sorted(self._latency.items())
                if any(counts)
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
        with self._lock:
            cell = self._counters.get((name, plugin, function, key, value))
            return 0 if cell is None else cell[0]

    def prometheus_text(self) -> str | None:
        """These metrics alone in Prometheus' exposition format, or None without
        prometheus_client (the process's collector serves every host's together)."""
        try:
            from wasm_plugins.integrations import prometheus  # noqa: PLC0415 optional dependency
        except ImportError:
            return None
        return prometheus.text(self)


@attrs.frozen
class Alert:
    """Something an operator should look at."""

    time: float
    plugin: str
    function: str
    reason: str
    """``security_violation`` or ``error_rate``."""
    message: str


class AlertReporter:
    """Alerts on every security violation, and when a plugin's error rate over the last
    ``window`` seconds (at least ``min_calls`` calls) reaches ``threshold``. An error-rate alert
    fires once, and again only after the rate has fallen below the threshold."""

    def __init__(
        self,
        clock: Callable[[], float],
        window: float = 60.0,
        threshold: float = 0.5,
        min_calls: int = 10,
        keep: int = 1000,
    ) -> None:
        self._clock = clock
        self.window = window
        self.threshold = threshold
        self.min_calls = min_calls
        self.raised: deque[Alert] = deque(maxlen=keep)
        self._outcomes: dict[str, deque[list[int]]] = {}
        self._totals: dict[str, list[int]] = {}
        self._firing: set[str] = set()
        self._lock = threading.Lock()

    hook_topics = frozenset(("attempt_failed", "call_finished"))
    """The events this reporter reads (it is not told of the others)."""

    def _raise(self, alert: Alert) -> None:
        self.raised.append(alert)
        logger.bind(alert=alert.reason, plugin=alert.plugin, function=alert.function).critical(
            escape(alert.message)
        )

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Watch failed attempts and finished calls."""
        name = record.name
        if name == "call_finished":
            self._tally(record.plugin, record.function, int(record.outcome != "value"))
        elif name == "attempt_failed" and isinstance(record.error, SecurityViolation):
            plugin, function = record.plugin, record.function
            self._raise(
                Alert(
                    record.time,
                    plugin,
                    function,
                    "security_violation",
                    f"security violation in {plugin}.{function}: {record.error.message}",
                )
            )

    def _state(self, plugin: str) -> tuple[deque[list[int]], list[int]]:
        # Called with the lock held; a plugin's state, once made, is kept for good.
        buckets = self._outcomes.get(plugin)
        if buckets is None:
            buckets = self._outcomes[plugin] = deque()
            self._totals[plugin] = [0, 0]
        return buckets, self._totals[plugin]

    def _tally(self, plugin: str, function: str, failure: int) -> None:
        # Outcomes are counted in one-second buckets: the work per call does not grow with
        # the traffic, and neither does the memory.
        now = self._clock()
        second = int(now)
        lock = self._lock
        lock.acquire()
        try:
            state = self._outcomes.get(plugin)
            buckets, totals = (
                self._state(plugin) if state is None else (state, self._totals[plugin])
            )
            if (
                not failure
                and not totals[1]
                and buckets
                and (last := buckets[-1])[0] == second
                and buckets[0][0] > now - self.window
                and self.threshold > 0
                and plugin not in self._firing
            ):
                # The common case: a success in the current second, no failure in the window
                # and no bucket due to leave it. The rate stays 0, below the threshold, and no
                # alert can be firing.
                last[1] += 1
                totals[0] += 1
                return
            if buckets and (last := buckets[-1])[0] == second:
                last[1] += 1
                last[2] += failure
            else:
                buckets.append([second, 1, failure])
            totals[0] += 1
            totals[1] += failure
            horizon = now - self.window
            while buckets and buckets[0][0] <= horizon:
                _, old_calls, old_failures = buckets.popleft()
                totals[0] -= old_calls
                totals[1] -= old_failures
            calls, failures = totals
            rate = failures / calls
            threshold = self.threshold
            if rate < threshold:
                fire = False
                if plugin in self._firing:
                    self._firing.discard(plugin)
            else:
                fire = calls >= self.min_calls and plugin not in self._firing
                if fire:
                    self._firing.add(plugin)
        finally:
            lock.release()
        if fire:
            self._raise(
                Alert(
                    now,
                    plugin,
                    function,
                    "error_rate",
                    f"{plugin}: {failures} of the last {calls} calls failed "
                    f"({rate:.0%}, threshold {threshold:.0%})",
                )
            )
