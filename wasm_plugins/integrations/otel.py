"""OpenTelemetry: a span per call, a child span per attempt, and optional call metrics.

Ordinary hookimpls (a ``wasm_plugins_attempt`` wrapper and a ``wasm_plugins_report`` reporter),
registered on a host only when ``opentelemetry-api`` is imported and the application has set a
tracer provider, so a host without OpenTelemetry, or with the API but no provider, pays nothing:
the attempt hook keeps its direct path. Metrics are recorded when a meter provider is set too.

Span attributes (names under ``wasm_plugins.``): ``plugin``, ``function``, ``call_id``,
``engine``, ``isolation``, ``attempt`` and ``attempt_id`` (attempt spans), ``outcome``,
``attempts``, ``fallback.strategy``, ``breaker.state`` (call spans), ``context.<field>`` for the
caller's :func:`~wasm_plugins.call_context` fields; a failure sets ``error.type`` to the error's
kind, records the exception and marks the span as an error.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from wasm_plugins._correlation import attempt_id, caller_fields, current_attempt
from wasm_plugins.errors import PluginError
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.integrations._names import OTEL_PLUGIN_NAME
from wasm_plugins.policy import Attempt, Report

__all__ = ["PLUGIN_NAME", "OpenTelemetryPlugin", "instrument", "provider_is_set"]

PLUGIN_NAME = OTEL_PLUGIN_NAME
"""The name the plugin is registered (and blocked) under."""


class InstrumentedHost(Protocol):
    """What :func:`instrument` needs of a host."""

    def register_policy(self, plugin: object, name: str | None = None) -> None:
        """Register a policy plugin."""

    def breaker(self, plugin: str, function: str) -> Any:
        """The circuit breaker of (plugin, function)."""


_SCOPE = "wasm_plugins"
_PREFIX = "wasm_plugins."
_MAX_OPEN_CALLS = 10_000
"""Call spans kept open at once; past that the oldest are ended (a call interrupted by
``KeyboardInterrupt`` never reports its end)."""

BreakerState = Callable[[str, str], Any]


def provider_is_set() -> bool:
    """Whether the application has set a tracer provider (the API's default is a proxy that
    makes non-recording spans)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _meter_provider_is_set() -> bool:
    proxy = getattr(metrics, "_ProxyMeterProvider", None)
    provider = metrics.get_meter_provider()
    return not (proxy is not None and isinstance(provider, proxy)) and not isinstance(
        provider, metrics.NoOpMeterProvider
    )


def _caller_attributes() -> dict[str, Any]:
    return {
        f"{_PREFIX}context.{name}": value
        for name, value in caller_fields().items()
        if isinstance(value, str | bool | int | float)
    }


def _version() -> str:
    package = sys.modules.get("wasm_plugins._version")
    return str(getattr(package, "__version__", ""))


class OpenTelemetryPlugin:
    """Spans (and metrics) of one host's calls.

    :param breaker_state: the state's name of the breaker of (plugin, function).
    :param tracer_provider: where spans go (default: the application's global provider).
    :param meter_provider: where metrics go (default: the global one, when it is set; without
        one, no metrics are recorded).
    """

    hook_topics = frozenset({"call_finished", "retry_scheduled", "fallback_used"})
    """The events the reporter reads."""

    def __init__(
        self,
        breaker_state: BreakerState,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._breaker_state = breaker_state
        self._tracer = trace.get_tracer(_SCOPE, _version(), tracer_provider)
        self._open: dict[str, Span] = {}
        """Call spans by call id, from the first attempt to the call's end."""
        self._lock = threading.Lock()
        self._calls: Any = None
        self._failures: Any = None
        self._duration: Any = None
        if meter_provider is not None or _meter_provider_is_set():
            meter = metrics.get_meter(_SCOPE, _version(), meter_provider)
            self._calls = meter.create_counter(
                "wasm_plugins.calls", unit="{call}", description="Plugin calls by outcome"
            )
            self._failures = meter.create_counter(
                "wasm_plugins.attempt.failures",
                unit="{attempt}",
                description="Failed attempts by error kind",
            )
            self._duration = meter.create_histogram(
                "wasm_plugins.call.duration",
                unit="s",
                description="Duration of plugin calls, retries and fallbacks included",
            )

    # -- spans ----------------------------------------------------------------------------------

    def _call_span(self, plugin: str, function: str, call_id: str, start: int | None) -> Span:
        """The call's span, opened now under the caller's current span if it is not open yet."""
        with self._lock:
            span = self._open.get(call_id)
            if span is not None:
                return span
        attributes = {
            f"{_PREFIX}plugin": plugin,
            f"{_PREFIX}function": function,
            f"{_PREFIX}call_id": call_id,
            **_caller_attributes(),
        }
        span = self._tracer.start_span(
            f"{plugin}.{function}", kind=SpanKind.INTERNAL, attributes=attributes, start_time=start
        )
        with self._lock:
            if len(self._open) >= _MAX_OPEN_CALLS:
                stale = next(iter(self._open))
                self._open.pop(stale).end()
            self._open[call_id] = span
        return span

    @hookimpl(wrapper=True)
    def wasm_plugins_attempt(self, attempt: Attempt) -> Generator[None, Any, Any]:
        """Run the attempt in its own span, a child of the call's."""
        running = current_attempt()
        call_id = running.call_id if running is not None else ""
        parent = self._call_span(attempt.plugin, attempt.function, call_id, None)
        with self._tracer.start_as_current_span(
            f"{attempt.plugin}.{attempt.function} attempt",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={
                f"{_PREFIX}plugin": attempt.plugin,
                f"{_PREFIX}function": attempt.function,
                f"{_PREFIX}call_id": call_id,
                f"{_PREFIX}attempt": attempt.number,
                f"{_PREFIX}attempt_id": attempt_id(call_id, attempt.number),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                value = yield
            except PluginError as error:
                self._failed(span, error, attempt)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            # A sandbox that served this attempt is in the provider's table: no new one is made.
            sandbox = attempt.sandbox()
            span.set_attribute(f"{_PREFIX}engine", sandbox.engine.name)
            span.set_attribute(f"{_PREFIX}isolation", sandbox.isolation)
            return value

    def _failed(self, span: Span, error: PluginError, attempt: Attempt) -> None:
        context = error.context
        if context is not None:
            environment = context.environment
            if environment.engine is not None:
                span.set_attribute(f"{_PREFIX}engine", environment.engine)
            if environment.isolation is not None:
                span.set_attribute(f"{_PREFIX}isolation", environment.isolation)
            span.set_attribute(f"{_PREFIX}execution_id", context.execution_id)
        span.set_attribute("error.type", error.kind)
        span.set_attribute(f"{_PREFIX}error.severity", error.severity.value)
        span.record_exception(error, attributes={"error.type": error.kind})
        span.set_status(Status(StatusCode.ERROR, f"{error.kind}: {error.message}"))
        if self._failures is not None:
            self._failures.add(
                1,
                {
                    f"{_PREFIX}plugin": attempt.plugin,
                    f"{_PREFIX}function": attempt.function,
                    "error.type": error.kind,
                },
            )

    # -- the call's end -------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Mark retries and fallbacks on the call's span; end it with the call's outcome."""
        name = record.name
        call_id = record.call_id
        if name != "call_finished":
            with self._lock:
                span = self._open.get(call_id)
            if span is not None:
                attributes: Mapping[str, Any] = (
                    {f"{_PREFIX}attempt": record.attempt}
                    if name == "retry_scheduled"
                    else {f"{_PREFIX}fallback.strategy": record.strategy or ""}
                )
                span.add_event(name, attributes)
            return
        with self._lock:
            span = self._open.pop(call_id, None)
        if span is None:
            # No attempt was made (an open breaker refused it): the span covers the refusal.
            start = time.time_ns() - int(record.duration * 1e9)
            span = self._call_span(record.plugin, record.function, call_id, start)
            with self._lock:
                self._open.pop(call_id, None)
        outcome = record.outcome or "value"
        span.set_attribute(f"{_PREFIX}outcome", outcome)
        span.set_attribute(f"{_PREFIX}attempts", record.attempt)
        span.set_attribute(
            f"{_PREFIX}breaker.state", str(self._breaker_state(record.plugin, record.function))
        )
        if record.strategy is not None:
            span.set_attribute(f"{_PREFIX}fallback.strategy", record.strategy)
        error = record.error
        if error is not None:
            span.set_attribute("error.type", error.kind)
        if outcome == "error" and error is not None:
            span.record_exception(error, attributes={"error.type": error.kind})
            span.set_status(Status(StatusCode.ERROR, f"{error.kind}: {error.message}"))
        span.end()
        if self._calls is not None:
            labels = {
                f"{_PREFIX}plugin": record.plugin,
                f"{_PREFIX}function": record.function,
                f"{_PREFIX}outcome": outcome,
            }
            self._calls.add(1, labels)
            self._duration.record(record.duration, labels)


def instrument(
    host: InstrumentedHost,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Trace ``host``'s calls: through other providers than the global ones, or on a host made
    before the application set its provider (a host made after that is traced from the start).
    A host already traced is left as it is."""
    manager = getattr(host, "manager", None)
    if manager is not None and manager.has_plugin(PLUGIN_NAME):
        return
    host.register_policy(
        OpenTelemetryPlugin(
            lambda plugin, function: host.breaker(plugin, function).state.value,
            tracer_provider,
            meter_provider,
        ),
        PLUGIN_NAME,
    )
