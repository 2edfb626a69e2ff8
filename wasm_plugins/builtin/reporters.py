"""Built-in reporters: structured logs, metrics, alerts, and Sentry when it is set up.

Each is an ordinary ``wasm_plugins_report`` hookimpl (``trylast``); a reporter that raises is
logged and changes nothing, and the others still see the event.

- logs: one loguru record per event, its fields bound (``event``, ``plugin``, ``function``,
  ``kind``...), so a JSON sink (``logger.add(sink, serialize=True)``) writes structured logs;
- metrics: counters and latency histograms, in memory always (``host.metrics.snapshot()``), in
  Prometheus' text format when ``prometheus_client`` is installed;
- alerts: the error rate of each plugin over a sliding window above a threshold, and every security
  violation (``host.alerts.raised``);
- Sentry: failed attempts of high or critical severity, when ``sentry-sdk`` is installed and
  ``SENTRY_DSN`` is set.
"""

from __future__ import annotations

import bisect
import importlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from loguru import logger

from wasm_plugins.errors import PluginError, SecurityViolation, Severity
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import (
    AttemptFailed,
    AttemptSucceeded,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PolicyEvent,
    RetryScheduled,
)

if TYPE_CHECKING:
    from wasm_plugins.manifest import Manifest
    from wasm_plugins.policy._pipeline import RefusalHandler, ValueHandler

__all__ = [
    "LATENCY_BUCKETS",
    "Alert",
    "AlertReporter",
    "LogReporter",
    "MetricsReporter",
    "SentryReporter",
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


def _direct(clock: Callable[[], float]) -> Callable[[], float]:
    """``time.monotonic`` itself for the system clock's reading (one call less)."""
    from wasm_plugins.policy import SystemClock

    owner = getattr(clock, "__self__", None)
    if type(owner) is SystemClock and getattr(clock, "__name__", None) == "monotonic":
        return time.monotonic
    return clock


def _error_fields(error: PluginError | None) -> dict[str, Any]:
    if error is None:
        return {}
    return {
        "kind": error.kind,
        "error": error.message,
        "severity": error.severity.value,
        "recovery_potential": error.recovery_potential.value,
    }


class LogReporter:
    """One structured log record per event."""

    def fast_handlers(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[ValueHandler | None, RefusalHandler | None]:
        """What this reporter does with the policy's common cases, told directly (see
        ``CallPipeline``): nothing for a success, the ``call_finished`` record for a refusal."""

        def refused(number: int, at: float, duration: float, error: PluginError) -> None:
            if _dropped("ERROR"):
                return
            call_id = f"{plugin}#{number}"
            self.wasm_plugins_report(
                CallFinished(plugin, function, call_id, at, "error", 0, duration, error)
            )

        return None, refused

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Log the event with its fields bound; plain successes are counted by the metrics,
        not logged (a log line per call would cost more than the call)."""
        if isinstance(event, AttemptSucceeded) or (
            isinstance(event, CallFinished) and event.outcome == "value"
        ):
            return
        fields: dict[str, Any] = {
            "event": event.name,
            "plugin": event.plugin,
            "function": event.function,
            "call_id": event.call_id,
        }
        level = "DEBUG"
        message = event.name.replace("_", " ")
        if isinstance(event, AttemptFailed):
            fields.update(_error_fields(event.error), attempt=event.attempt)
            level = "ERROR" if event.error.severity is Severity.CRITICAL else "WARNING"
            message = f"attempt {event.attempt} failed: {event.error.message}"
        elif isinstance(event, RetryScheduled):
            fields.update(attempt=event.attempt, delay=event.delay, reason=event.reason)
            level, message = "INFO", f"retry {event.attempt} in {event.delay:.3f} s: {event.reason}"
        elif isinstance(event, LimitsChanged):
            fields.update(reason=event.reason)
            level, message = "INFO", f"limits changed: {event.reason}"
        elif isinstance(event, BreakerStateChanged):
            fields.update(before=event.before, after=event.after, reason=event.reason)
            level = "WARNING"
            message = f"circuit {event.before} -> {event.after}: {event.reason}"
        elif isinstance(event, FallbackUsed):
            fields.update(strategy=event.strategy, quality=event.quality)
            fields.update(_error_fields(event.error))
            level, message = "WARNING", f"fallback {event.strategy} answered"
        elif isinstance(event, HookFailed):
            fields.update(hook=event.hook, source=event.source, reason=event.reason)
            level, message = "ERROR", f"{event.hook} of {event.source} failed: {event.reason}"
        elif isinstance(event, CallFinished):
            fields.update(outcome=event.outcome, attempts=event.attempts, duration=event.duration)
            fields.update(_error_fields(event.error))
            level = "ERROR" if event.outcome == "error" else "DEBUG"
            message = f"call finished: {event.outcome} after {event.attempts} attempt(s)"
        logger.bind(**fields).log(level, message)


class MetricsReporter:
    """Counters and latency histograms of one host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Each counter and each latency sum is a one-item list, so that the policy's direct
        # handlers can keep it and add to it without looking it up (see fast_handlers); a
        # counter still at zero, or a histogram with no observation, was never counted and is
        # not shown.
        self._counters: dict[tuple[str, str, str, str, str], list[int]] = {}
        self._latency: dict[tuple[str, str], list[int]] = {}
        self._latency_sum: dict[tuple[str, str], list[float]] = {}
        self._prometheus = _PrometheusMetrics.create()

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
        if self._prometheus is not None:
            self._prometheus.count(name, {"plugin": plugin, "function": function, label: value})

    def _observe(self, plugin: str, function: str, seconds: float) -> None:
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            buckets, total = self._histogram((plugin, function))
            buckets[index] += 1
            total[0] += seconds
        if self._prometheus is not None:
            self._prometheus.observe(plugin, function, seconds)

    def fast_handlers(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[ValueHandler | None, RefusalHandler | None]:
        """The counts of the policy's common cases, told directly (see ``CallPipeline``): a
        first attempt's value (an attempt and a call counted, the latency observed), a refusal
        (a call counted as an error, the latency observed)."""
        if self._prometheus is not None:

            def counted(duration: float, input: Any, value: Any) -> None:
                self._count("attempts", plugin, function, "result", "value")
                self._count("calls", plugin, function, "outcome", "value")
                self._observe(plugin, function, duration)

            def refused_counted(
                number: int, at: float, duration: float, error: PluginError
            ) -> None:
                self._count("calls", plugin, function, "outcome", "error")
                self._observe(plugin, function, duration)

            return counted, refused_counted

        lock = self._lock
        with lock:
            attempts = self._counter(("attempts", plugin, function, "result", "value"))
            values = self._counter(("calls", plugin, function, "outcome", "value"))
            errors = self._counter(("calls", plugin, function, "outcome", "error"))
            buckets, total = self._histogram((plugin, function))
        where = bisect.bisect_left
        bounds = LATENCY_BUCKETS

        def succeeded(duration: float, input: Any, value: Any) -> None:
            index = where(bounds, duration)
            lock.acquire()
            try:
                attempts[0] += 1
                values[0] += 1
                buckets[index] += 1
                total[0] += duration
            finally:
                lock.release()

        def refused(number: int, at: float, duration: float, error: PluginError) -> None:
            index = where(bounds, duration)
            lock.acquire()
            try:
                errors[0] += 1
                buckets[index] += 1
                total[0] += duration
            finally:
                lock.release()

        return succeeded, refused

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Count the event."""
        plugin, function = event.plugin, event.function
        if isinstance(event, AttemptSucceeded):
            self._count("attempts", plugin, function, "result", "value")
        elif isinstance(event, CallFinished):
            self._count("calls", plugin, function, "outcome", event.outcome)
            self._observe(plugin, function, event.duration)
        elif isinstance(event, AttemptFailed):
            self._count("attempts", plugin, function, "result", event.error.kind)
        elif isinstance(event, RetryScheduled):
            self._count("retries", plugin, function, "", "")
        elif isinstance(event, BreakerStateChanged):
            self._count("breaker_transitions", plugin, function, "to", event.after)
        elif isinstance(event, FallbackUsed):
            self._count("fallbacks", plugin, function, "strategy", event.strategy)

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

    def count(self, name: str, plugin: str, function: str, **label: str) -> int:
        """One counter's value (0 when never counted): ``count("calls", "p", "f",
        outcome="value")``; ``retries`` takes no label."""
        ((key, value),) = label.items() if label else (("", ""),)
        with self._lock:
            cell = self._counters.get((name, plugin, function, key, value))
            return 0 if cell is None else cell[0]

    def prometheus_text(self) -> str | None:
        """The metrics in Prometheus' exposition format, or None without prometheus_client."""
        return None if self._prometheus is None else self._prometheus.text()


class _PrometheusMetrics:
    """The same counters in a private prometheus_client registry (one per host)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.registry = client.CollectorRegistry()
        self._counters: dict[str, Any] = {}
        self._histogram = client.Histogram(
            "wasm_plugins_call_seconds",
            "Duration of plugin calls, retries and fallbacks included",
            ["plugin", "function"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

    @classmethod
    def create(cls) -> _PrometheusMetrics | None:
        try:
            client = importlib.import_module("prometheus_client")
        except ImportError:
            return None
        return cls(client)

    def count(self, name: str, labels: dict[str, str]) -> None:
        labels = {key: value for key, value in labels.items() if key}
        counter = self._counters.get(name)
        if counter is None:
            counter = self._client.Counter(
                f"wasm_plugins_{name}",
                f"wasm-plugins {name.replace('_', ' ')}",
                sorted(labels),
                registry=self.registry,
            )
            self._counters[name] = counter
        counter.labels(**labels).inc()

    def observe(self, plugin: str, function: str, seconds: float) -> None:
        self._histogram.labels(plugin=plugin, function=function).observe(seconds)

    def text(self) -> str:
        generated: bytes = self._client.generate_latest(self.registry)
        return generated.decode()


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

    def _raise(self, alert: Alert) -> None:
        self.raised.append(alert)
        logger.bind(alert=alert.reason, plugin=alert.plugin, function=alert.function).critical(
            alert.message
        )

    def fast_handlers(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[ValueHandler | None, RefusalHandler | None]:
        """The policy's common cases told directly (see ``CallPipeline``): a call that
        succeeded, a call refused (a failure for the error rate)."""

        with self._lock:
            state = self._state(plugin)
        buckets, totals = state
        tally = self._tally
        clock = _direct(self._clock)
        lock = self._lock
        firing = self._firing

        def succeeded(duration: float, input: Any, value: Any) -> None:
            # The common case: a success in this second while no call failed in the window and
            # no old bucket is due to leave it. The rate is then 0 and stays below any positive
            # threshold: count it. Anything else goes through _tally.
            now = clock()
            lock.acquire()
            try:
                if (
                    not totals[1]
                    and buckets
                    and (last := buckets[-1])[0] == int(now)
                    and buckets[0][0] > now - self.window
                    and self.threshold > 0
                    and plugin not in firing
                ):
                    last[1] += 1
                    totals[0] += 1
                    return
            finally:
                lock.release()
            tally(plugin, function, state, 0, now)

        def refused(number: int, at: float, duration: float, error: PluginError) -> None:
            tally(plugin, function, state, 1, clock())

        return succeeded, refused

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Watch failed attempts and finished calls."""
        if isinstance(event, AttemptFailed) and isinstance(event.error, SecurityViolation):
            self._raise(
                Alert(
                    event.time,
                    event.plugin,
                    event.function,
                    "security_violation",
                    f"security violation in {event.plugin}.{event.function}: {event.error.message}",
                )
            )
        if isinstance(event, CallFinished):
            with self._lock:
                state = self._state(event.plugin)
            self._tally(event.plugin, event.function, state, int(event.outcome != "value"))

    def _state(self, plugin: str) -> tuple[deque[list[int]], list[int]]:
        # Called with the lock held; a plugin's state, once made, is kept for good.
        buckets = self._outcomes.get(plugin)
        if buckets is None:
            buckets = self._outcomes[plugin] = deque()
            self._totals[plugin] = [0, 0]
        return buckets, self._totals[plugin]

    def _tally(
        self,
        plugin: str,
        function: str,
        state: tuple[deque[list[int]], list[int]],
        failure: int,
        now: float | None = None,
    ) -> None:
        # Outcomes are counted in one-second buckets: the work per call does not grow with
        # the traffic, and neither does the memory.
        if now is None:
            now = self._clock()
        second = int(now)
        buckets, totals = state
        lock = self._lock
        lock.acquire()
        try:
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


class SentryReporter:
    """Failed attempts of high or critical severity, sent to Sentry when it is set up."""

    def __init__(self, sentry: Any) -> None:
        self._sentry = sentry

    @classmethod
    def create(cls) -> SentryReporter | None:
        """A reporter when sentry-sdk is installed and SENTRY_DSN is set, else None."""
        dsn = os.environ.get("SENTRY_DSN")
        if not dsn:
            return None
        try:
            sentry = importlib.import_module("sentry_sdk")
        except ImportError:
            return None
        if not sentry.get_client().is_active():
            sentry.init(dsn=dsn)
        return cls(sentry)

    def fast_handlers(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[ValueHandler | None, RefusalHandler | None]:
        """Successes and refusals are no failed attempts: nothing to send."""
        return None, None

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Send serious failures."""
        if not isinstance(event, AttemptFailed):
            return
        if event.error.severity not in (Severity.HIGH, Severity.CRITICAL):
            return
        with self._sentry.new_scope() as scope:
            scope.set_tag("plugin", event.plugin)
            scope.set_tag("function", event.function)
            scope.set_tag("kind", event.error.kind)
            scope.set_context("error", event.error.to_dict())
            self._sentry.capture_message(event.error.message, level="error")
