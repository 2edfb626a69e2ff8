"""Observability with the real libraries: correlation ids, OpenTelemetry spans and metrics, the
Prometheus collector scraped over HTTP, Sentry through the application's client, and the bridge
to the standard library's ``logging``."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from tests.conftest import ROOT
from tests.test_policy import Subject
from wasm_plugins import (
    ContextualError,
    NetworkError,
    PluginHost,
    ResourceLimitExceeded,
    call_context,
)
from wasm_plugins.engine import Engine
from wasm_plugins.errors import ErrorContext, ExecutionEnvironment

otel_sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from wasm_plugins.integrations import otel  # noqa: E402
from wasm_plugins.integrations.stdlib_logging import forward_to_logging  # noqa: E402

GUEST_LOG = """(module
  (import "wasm_plugins" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "working")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "work") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 2) (i32.const 256) (i32.const 7))
    unreachable))"""
"""Logs a line through the host, then traps."""


@pytest.fixture
def world(wasmtime_engine: Engine) -> Iterator[Subject]:
    subject = Subject(wasmtime_engine, max_attempts=2, backoff_base="1 ms", fallbacks=["default"])
    yield subject
    subject.host.close()


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record of the framework, as its bound fields and message."""
    seen: list[dict[str, Any]] = []
    logger.enable("wasm_plugins")
    handler = logger.add(
        lambda message: seen.append(
            {**message.record["extra"], "message": message.record["message"]}
        ),
        level="DEBUG",
    )
    yield seen
    logger.remove(handler)
    logger.disable("wasm_plugins")


class TestCorrelation:
    def test_one_call_id_everywhere(self, world: Subject, records: list[dict[str, Any]]) -> None:
        """The call's id is on the Outcome, on every event, in every log record of the call
        and in every attempt error's context; each attempt has its own id beneath it."""
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        with call_context(request_id="req-7"):
            outcome = world.call("work", "x")
        assert outcome.fallback == "default"
        call_id = outcome.call_id
        assert call_id
        # The plugin's loading is reported too, with no call (nor call id).
        calls = [event for event in world.recorder.events if event.function]
        assert {event.call_id for event in calls} == {call_id}
        logged = [record for record in records if record.get("event")]
        assert logged and {record["call_id"] for record in logged} == {call_id}
        assert {record["request_id"] for record in logged} == {"req-7"}
        failed = [record for record in logged if record["event"] == "attempt_failed"]
        assert [record["attempt_id"] for record in failed] == [f"{call_id}/1", f"{call_id}/2"]
        for error in outcome.errors:
            assert error.context is not None
            assert error.context.call_id == call_id
            assert error.context.environment.extra["request_id"] == "req-7"

    def test_contextual_error_carries_the_id_and_the_callers_fields(
        self, wasmtime_engine: Engine, records: list[dict[str, Any]]
    ) -> None:
        """The ContextualError's dict form holds the call id that the log records hold, and
        the caller's fields; outside the ``with`` block they are gone."""
        world = Subject(wasmtime_engine, max_attempts=1)
        world.mood.plan = [NetworkError(operation="fetch")]
        with (
            call_context(request_id="req-8"),
            call_context(tenant="acme"),
            pytest.raises(ContextualError) as caught,
        ):
            world.call("work", "x")
        data = caught.value.to_dict()
        call_id = data["context"]["call_id"]
        assert call_id == f"subject#{1}"
        assert data["context"]["environment"]["extra"] == {"request_id": "req-8", "tenant": "acme"}
        finished = [r for r in records if r.get("event") == "call_finished"]
        assert [r["call_id"] for r in finished] == [call_id]
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError) as again:
            world.call("work", "x")
        assert again.value.context is not None
        assert again.value.context.environment.extra == {}
        world.host.close()

    def test_the_callers_fields_follow_acall(self, wasmtime_engine: Engine) -> None:
        """``acall`` runs the call in a worker thread: the caller's fields go with it."""
        world = Subject(wasmtime_engine, max_attempts=1)
        world.mood.plan = [NetworkError(operation="fetch")]

        async def request() -> None:
            with call_context(request_id="req-async"):
                await world.host.acall("subject", "work", "x")

        with pytest.raises(ContextualError) as caught:
            asyncio.run(request())
        world.host.close()
        assert caught.value.context is not None
        assert caught.value.context.environment.extra == {"request_id": "req-async"}

    def test_log_records_carry_the_errors_own_fields(
        self, wasmtime_engine: Engine, records: list[dict[str, Any]]
    ) -> None:
        """A failed attempt's record holds the error's own fields (resource, used, limit),
        the execution id and the engine."""
        world = Subject(wasmtime_engine, max_attempts=1)
        failure = ResourceLimitExceeded(
            resource="memory",
            used=2048,
            limit=1024,
            context=ErrorContext(environment=ExecutionEnvironment(engine="wasmtime")),
        )
        world.mood.plan = [failure]
        with pytest.raises(ContextualError):
            world.call("work", "x")
        (record,) = [r for r in records if r.get("event") == "attempt_failed"]
        assert (record["resource"], record["used"], record["limit"]) == ("memory", 2048, 1024)
        assert record["engine"] == "wasmtime"
        assert record["execution_id"] == failure.context.execution_id  # type: ignore[union-attr]
        assert record["kind"] == "resource_limit_exceeded"
        world.host.close()


def test_one_correlation_id_through_a_worker_process(records: list[dict[str, Any]]) -> None:
    """A call that runs in a worker process: the guest's log line (served by the host for the
    worker), the attempt's error made in the worker, the ContextualError and the log records
    of the policy all carry the same call id and the caller's request id."""
    host = PluginHost(engine="wasmtime", isolation="process", blocked=())
    try:
        host.load(
            {
                "name": "far",
                "module": {"wat": GUEST_LOG},
                "capabilities": ["log"],
                "functions": {"work": {}},
                "policy": {"max_attempts": 1, "fallbacks": []},
            }
        )
        with call_context(request_id="req-worker"), pytest.raises(ContextualError) as caught:
            host.call("far", "work", "x")
    finally:
        host.close()
    context = caught.value.context
    assert context is not None
    assert context.environment.isolation == "process"
    call_id = context.call_id
    assert call_id
    assert context.environment.extra == {"request_id": "req-worker"}
    error_context = caught.value.error.context
    assert error_context is not None and error_context.call_id == call_id
    (guest,) = [r for r in records if r.get("source") == "guest"]
    assert guest["message"] == "working"
    assert (guest["call_id"], guest["attempt_id"]) == (call_id, f"{call_id}/1")
    assert guest["request_id"] == "req-worker"
    policy = [r for r in records if r.get("event")]
    assert policy and {r["call_id"] for r in policy} == {call_id}
    assert {r["request_id"] for r in policy} == {"req-worker"}


class TestOpenTelemetry:
    @pytest.fixture
    def spans(self, world: Subject) -> Iterator[InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        otel.instrument(world.host, tracer_provider=provider)
        yield exporter
        provider.shutdown()

    def test_span_tree_of_a_retried_call_that_ends_in_a_fallback(
        self, world: Subject, spans: InMemorySpanExporter
    ) -> None:
        """One call span under the caller's span, one child per attempt; the attempts record
        their error with its kind, the call span its outcome, fallback and breaker state."""
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        caller = TracerProvider().get_tracer("the-application")
        with call_context(request_id="req-9"), caller.start_as_current_span("request") as root:
            outcome = world.call("work", "x")
        assert outcome.fallback == "default"
        finished = spans.get_finished_spans()
        (call,) = [s for s in finished if s.name == "subject.work"]
        attempts = sorted(
            (s for s in finished if s.name == "subject.work attempt"),
            key=lambda s: s.attributes["wasm_plugins.attempt"],  # type: ignore[index]
        )
        assert len(attempts) == 2
        assert call.parent is not None
        assert call.parent.span_id == root.get_span_context().span_id
        assert call.context.trace_id == root.get_span_context().trace_id
        for number, attempt in enumerate(attempts, 1):
            assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
            attributes = attempt.attributes or {}
            assert attributes["wasm_plugins.plugin"] == "subject"
            assert attributes["wasm_plugins.function"] == "work"
            assert attributes["wasm_plugins.attempt"] == number
            assert attributes["wasm_plugins.attempt_id"] == f"{outcome.call_id}/{number}"
            assert attributes["error.type"] == "network"
            assert attempt.status.status_code is trace.StatusCode.ERROR
            (exception,) = [e for e in attempt.events if e.name == "exception"]
            assert (exception.attributes or {})["error.type"] == "network"
        attributes = call.attributes or {}
        assert attributes["wasm_plugins.call_id"] == outcome.call_id
        assert attributes["wasm_plugins.outcome"] == "fallback"
        assert attributes["wasm_plugins.fallback.strategy"] == "default"
        assert attributes["wasm_plugins.breaker.state"] == "closed"
        assert attributes["wasm_plugins.attempts"] == 2
        assert attributes["wasm_plugins.context.request_id"] == "req-9"
        assert [e.name for e in call.events] == ["retry_scheduled", "fallback_used"]

    def test_successful_attempt_names_engine_and_isolation(
        self, world: Subject, spans: InMemorySpanExporter
    ) -> None:
        """A successful attempt's span names the engine and the isolation it ran under."""
        assert world.call("work", "x").value == "x"
        (attempt,) = [s for s in spans.get_finished_spans() if s.name.endswith("attempt")]
        attributes = attempt.attributes or {}
        assert attributes["wasm_plugins.engine"] == "wasmtime"
        assert attributes["wasm_plugins.isolation"] == "in-process"
        assert attempt.status.status_code is trace.StatusCode.UNSET

    def test_a_refused_call_has_a_span_without_attempts(
        self, world: Subject, spans: InMemorySpanExporter
    ) -> None:
        """A call the open breaker refuses (a fallback answers it) is one span, with the
        breaker's state."""
        world.host.breaker("subject", "work").force_open()
        assert world.call("work", "x").fallback == "default"
        (call,) = spans.get_finished_spans()
        attributes = call.attributes or {}
        assert attributes["wasm_plugins.breaker.state"] == "open"
        assert attributes["wasm_plugins.outcome"] == "fallback"
        assert attributes["wasm_plugins.attempts"] == 0

    def test_metrics_through_the_meter_api(self, world: Subject) -> None:
        """Calls are counted by outcome and timed in a histogram, in seconds."""
        reader = InMemoryMetricReader()
        otel.instrument(
            world.host,
            tracer_provider=TracerProvider(),
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
        world.call("work", "x")
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        world.call("work", "y")
        data = reader.get_metrics_data()
        assert data is not None
        found = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        calls = {
            point.attributes["wasm_plugins.outcome"]: point.value  # type: ignore[index]
            for point in found["wasm_plugins.calls"].data.data_points
        }
        assert calls == {"value": 1, "fallback": 1}
        assert found["wasm_plugins.call.duration"].unit == "s"
        (failures,) = found["wasm_plugins.attempt.failures"].data.data_points
        assert (failures.value, failures.attributes["error.type"]) == (2, "network")  # type: ignore[index]

    def test_registered_only_with_a_provider(self) -> None:
        """A host imports neither OpenTelemetry nor Sentry; with the API imported and no
        provider set, a host has no OpenTelemetry plugin (its attempt hook keeps its direct
        path); once the application sets one, new hosts have it. Run in a child: the global
        provider can be set once per process."""
        code = textwrap.dedent(
            """
            import sys
            from wasm_plugins import PluginHost
            PluginHost(blocked=())
            untouched = not {"opentelemetry", "sentry_sdk"} & set(sys.modules)
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            before = PluginHost(blocked=()).manager.has_plugin("builtin-otel")
            trace.set_tracer_provider(TracerProvider())
            after = PluginHost(blocked=()).manager.has_plugin("builtin-otel")
            print(untouched, before, after)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
        )
        assert done.stdout.split() == ["True", "False", "True"]


class TestPrometheus:
    def test_default_registry_scraped_over_http(self, wasmtime_engine: Engine) -> None:
        """Two hosts in one process register nothing twice; start_http_server on the default
        registry serves their summed counters and latency histogram, labelled by plugin and
        function, named by Prometheus' conventions."""
        prometheus_client = pytest.importorskip("prometheus_client")
        from prometheus_client.parser import text_string_to_metric_families

        first = Subject(wasmtime_engine, max_attempts=1)
        second = Subject(wasmtime_engine, max_attempts=1)
        before = _scrape_value(prometheus_client, "wasm_plugins_calls_total", outcome="value")
        try:
            first.call("work", "x")
            second.call("work", "y")
            second.call("work", "z")
            server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1")
            try:
                port = server.server_address[1]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
                    text = response.read().decode()
            finally:
                server.shutdown()
                thread.join()
        finally:
            first.host.close()
            second.host.close()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        calls = families["wasm_plugins_calls"]
        assert calls.type == "counter"
        (sample,) = [
            s
            for s in calls.samples
            if s.name == "wasm_plugins_calls_total"
            and s.labels.get("plugin") == "subject"
            and s.labels.get("function") == "work"
            and s.labels.get("outcome") == "value"
        ]
        assert sample.value - before == 3
        duration = families["wasm_plugins_call_duration_seconds"]
        assert duration.type == "histogram"
        counts = [
            s
            for s in duration.samples
            if s.name == "wasm_plugins_call_duration_seconds_count"
            and s.labels == {"plugin": "subject", "function": "work"}
        ]
        assert counts and counts[0].value >= 3

    def test_given_registry_once(self) -> None:
        """Registering on a registry twice keeps one collector there."""
        prometheus_client = pytest.importorskip("prometheus_client")
        from wasm_plugins.integrations import prometheus

        registry = prometheus_client.CollectorRegistry()
        assert prometheus.register(registry) is prometheus.register(registry)


def _scrape_value(client: Any, name: str, **labels: str) -> float:
    """A sample's value in the default registry now (other tests' hosts count too)."""
    value = client.REGISTRY.get_sample_value(
        name, {"plugin": "subject", "function": "work", **labels}
    )
    return float(value or 0.0)


class TestSentry:
    @pytest.fixture
    def sent(self) -> Iterator[list[dict[str, Any]]]:
        sentry_sdk = pytest.importorskip("sentry_sdk")
        events: list[dict[str, Any]] = []

        class Transport(sentry_sdk.Transport):
            def capture_envelope(self, envelope: Any) -> None:
                for item in envelope.items:
                    if item.type == "event":
                        events.append(json.loads(item.payload.get_bytes()))

        sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=Transport())
        yield events
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)

    def test_one_exception_event_per_failed_call(
        self, wasmtime_engine: Engine, sent: list[dict[str, Any]]
    ) -> None:
        """A call that failed on both attempts is one exception event: fingerprint (kind,
        plugin, function), level from severity, the error's dict as context, tags and the
        call id; a call a fallback answered sends nothing."""
        world = Subject(wasmtime_engine, max_attempts=2, backoff_base="1 ms")
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        with call_context(request_id="req-s"), pytest.raises(ContextualError) as caught:
            world.call("work", "x")
        world.host.close()
        (event,) = sent
        (exception,) = event["exception"]["values"]
        assert exception["type"] == "NetworkError"
        assert event["fingerprint"] == ["wasm-plugins", "network", "subject", "work"]
        assert caught.value.error.severity.value == "low"
        assert event["level"] == "info"
        tags = event["tags"]
        assert tags["wasm_plugins.kind"] == "network"
        assert tags["wasm_plugins.plugin"] == "subject"
        call_id = caught.value.to_dict()["context"]["call_id"]
        assert tags["wasm_plugins.call_id"] == call_id
        contexts = event["contexts"]
        assert contexts["wasm_plugins_error"]["kind"] == "network"
        assert contexts["wasm_plugins_call"]["request_id"] == "req-s"
        assert contexts["wasm_plugins_call"]["attempts"] == 2

    def test_fallback_answers_send_nothing(
        self, world: Subject, sent: list[dict[str, Any]]
    ) -> None:
        """A call a fallback answered did not fail: no event."""
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        assert world.call("work", "x").fallback == "default"
        assert sent == []

    def test_nothing_without_an_active_client(self, wasmtime_engine: Engine) -> None:
        """Without an active client (the application did not initialise Sentry), the library
        sends nothing and initialises nothing."""
        sentry_sdk = pytest.importorskip("sentry_sdk")
        world = Subject(wasmtime_engine, max_attempts=1)
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", "x")
        world.host.close()
        assert not sentry_sdk.get_client().is_active()


class TestStdlibLogging:
    def test_records_reach_logging_handlers_with_their_fields(self, world: Subject) -> None:
        """With the bridge on, the framework's records reach ``logging`` handlers, each bound
        field an attribute of the record: the call id is the Outcome's."""
        received: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                received.append(record)

        target = logging.getLogger("wasm_plugins")
        handler = Keep(level=logging.DEBUG)
        target.addHandler(handler)
        target.setLevel(logging.DEBUG)
        bridge = forward_to_logging()
        try:
            world.mood.plan = [NetworkError(operation="fetch")] * 2
            with call_context(request_id="req-l"):
                outcome = world.call("work", "x")
        finally:
            logger.remove(bridge)
            logger.disable("wasm_plugins")
            target.removeHandler(handler)
        failed = [r for r in received if getattr(r, "event", None) == "attempt_failed"]
        assert len(failed) == 2
        record = failed[0]
        assert record.name == "wasm_plugins.builtin.reporters"
        assert record.levelno == logging.WARNING
        assert record.call_id == outcome.call_id  # type: ignore[attr-defined]
        assert record.request_id == "req-l"  # type: ignore[attr-defined]
        assert record.kind == "network"  # type: ignore[attr-defined]
        assert record.wasm_plugins["plugin"] == "subject"  # type: ignore[attr-defined]
        assert record.getMessage().startswith("attempt 1 failed")
