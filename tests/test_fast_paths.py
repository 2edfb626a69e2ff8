"""The fast paths give what the general paths give.

- The policy's straight-through paths (a first attempt that succeeds, a refusal no fallback
  answers) tell the built-in reporters directly instead of sending events: a host whose only
  reporters are the built-in ones must end up with the same results, errors, metrics, alerts,
  breaker counters, cached results and log records as a host with one more (passive) reporter,
  which sends every event.
- The refusal's errors are built without the generated ``__init__``: field for field the same.
- The JSON codec's cached encoder and direct scanner: the same bytes, values and errors as the
  standard encoder and decoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from tests.conftest import CONFORMANCE
from wasm_plugins import ContextualError, PluginError, PluginHost, hookimpl
from wasm_plugins.engine import Engine
from wasm_plugins.errors import (
    ContextualError as ContextualErrorClass,
)
from wasm_plugins.errors import (
    ErrorContext,
    ExecutionEnvironment,
    InstanceError,
    circuit_open_error,
    contextual_error,
)
from wasm_plugins.policy import PolicyEvent
from wasm_plugins.sandbox import Sandbox, get_codec
from wasm_plugins.testing.clock import FakeClock

ABI = CONFORMANCE / "abi.wat"


class Passive:
    """A reporter that only listens: its presence makes the policy send every event."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        self.events.append(event)


def make_host(engine: Engine, passive: bool) -> tuple[PluginHost, FakeClock]:
    clock = FakeClock()
    host = PluginHost(engine=engine.name, clock=clock, blocked=(), module_cache=False)
    if passive:
        host.register_policy(Passive(), name="passive")
    host.load(
        {
            "name": "subject",
            "module": {"path": str(ABI)},
            "functions": {
                "echo": {"idempotent": True},
                "upper": {"default": "DEFAULT"},
                "trap_unreachable": {},
                "guest_error": {},
            },
            "policy": {
                "fallbacks": ["cache", "default"],
                "max_attempts": 2,
                "breaker": {"failure_threshold": 3, "recovery_time": "10 s"},
            },
        }
    )
    return host, clock


def normalized(value: Any) -> Any:
    """Error dicts without what differs between any two errors or sandboxes (ids, times)."""
    if isinstance(value, dict):
        return {
            key: normalized(item)
            for key, item in value.items()
            if key not in ("execution_id", "timestamp", "sandbox_id")
        }
    if isinstance(value, list | tuple):
        return [normalized(item) for item in value]
    return value


def scenario(host: PluginHost, clock: FakeClock) -> list[Any]:
    """Successes, failures, a caller's error, the breaker opening, refusals (answered by a
    fallback and not), a probe, and the breaker closing again; what each call gave."""
    seen: list[Any] = []

    def call(function: str, value: Any) -> None:
        try:
            outcome = host.invoke("subject", function, value)
        except ContextualError as error:
            seen.append(("error", type(error.error).__name__, normalized(error.to_dict())))
        else:
            seen.append(
                ("value", outcome.value, outcome.attempts, outcome.fallback, outcome.quality)
            )
        clock.advance(0.25)

    for number in range(3):
        call("echo", {"n": number})
        assert host.call("subject", "echo", [number]) == [number]
    call("upper", "abc")
    call("guest_error", None)
    for _ in range(3):
        call("trap_unreachable", None)
    host.breaker("subject", "echo").force_open("test")
    host.breaker("subject", "upper").force_open("test")
    for number in range(12):
        call("echo", {"n": number % 4})  # refused; answered from the cache when it can
        call("upper", "x")  # refused; answered by the default
        call("guest_error", None)
    for _ in range(12):
        with pytest.raises(ContextualError) as refused:
            host.call("subject", "trap_unreachable", None)
        seen.append(normalized(refused.value.to_dict()))
    clock.advance(11)
    call("echo", {"probe": True})  # half-open: a probe, which closes the breaker
    for number in range(3):
        call("echo", {"n": number})
    return seen


def observed(host: PluginHost) -> dict[str, Any]:
    fallbacks: Any = host.manager.get_plugin("builtin-fallbacks")
    return {
        "metrics": host.metrics.snapshot(),
        "alerts": [attrs.asdict(alert) for alert in host.alerts.raised],
        "breakers": {
            key: (breaker.state, breaker.counters())
            for key, breaker in host.pipeline.breakers().items()
        },
        "cache": sorted(fallbacks.cache("subject")._entries.items()),
        "budget": host.pipeline.budget("subject").tokens,
    }


@pytest.fixture
def records() -> Iterator[list[tuple[str, str, dict[str, Any]]]]:
    seen: list[tuple[str, str, dict[str, Any]]] = []
    logger.enable("wasm_plugins")
    sink = logger.add(
        lambda message: seen.append(
            (message.record["level"].name, message.record["message"], message.record["extra"])
        ),
        level="DEBUG",
    )
    yield seen
    logger.remove(sink)
    logger.disable("wasm_plugins")


class TestPolicy:
    def test_fast_and_general_paths_agree(self, engine: Engine) -> None:
        fast, fast_clock = make_host(engine, passive=False)
        general, general_clock = make_host(engine, passive=True)
        fast_results = scenario(fast, fast_clock)
        general_results = scenario(general, general_clock)
        # The hosts really took different paths.
        route = fast.pipeline._route("subject", "echo")
        assert route.on_value is not None
        assert fast.pipeline._route("subject", "trap_unreachable").on_refusal is not None
        assert general.pipeline._route("subject", "echo").on_value is None
        assert fast_results == general_results
        assert observed(fast) == observed(general)
        assert fast.alerts.raised  # the refusals raised the error-rate alert

    def test_log_records_agree(self, engine: Engine, records: list[Any]) -> None:
        fast, fast_clock = make_host(engine, passive=False)
        scenario(fast, fast_clock)
        from_fast = list(records)
        records.clear()
        general, general_clock = make_host(engine, passive=True)
        scenario(general, general_clock)
        assert from_fast == records
        assert any(
            message == "call finished: error after 0 attempt(s)" for _, message, _ in records
        )

    def test_outcome_of_the_fast_path(self, engine: Engine) -> None:
        host, _ = make_host(engine, passive=False)
        outcome = host.invoke("subject", "echo", {"a": 1})
        assert attrs.asdict(outcome, recurse=False) == {
            "value": {"a": 1},
            "plugin": "subject",
            "function": "echo",
            "attempts": 1,
            "errors": (),
            "duration": 0.0,
            "fallback": None,
            "quality": 1.0,
            "error": None,
        }

    def test_a_reporter_that_fails(self, engine: Engine, records: list[Any]) -> None:
        """A built-in reporter that raises on the fast path is logged; the call succeeds."""
        host, _ = make_host(engine, passive=False)
        host.call("subject", "echo", 1)
        route = host.pipeline._route("subject", "echo")
        assert route.on_value is not None

        def broken(duration: float, input: Any, value: Any) -> None:
            raise RuntimeError("broken reporter")

        route.on_value = route.fast_value = (("builtin-metrics", broken),)
        assert host.call("subject", "echo", 2) == 2
        assert any("reporter failed: RuntimeError" in message for _, message, _ in records)

    def test_new_reporter_switches_to_events(self, engine: Engine) -> None:
        """A reporter registered after calls were made gets the events of the next calls."""
        host, _ = make_host(engine, passive=False)
        host.call("subject", "echo", 1)
        passive = Passive()
        host.register_policy(passive, name="late")
        host.call("subject", "echo", 2)
        assert [event.name for event in passive.events] == ["attempt_succeeded", "call_finished"]


class TestRefusalErrors:
    def test_circuit_open_error_is_an_instance_error(self) -> None:
        fast = circuit_open_error("the message", "the suggestion")
        slow = InstanceError(
            state="circuit_open", message="the message", suggestion="the suggestion"
        )
        assert type(fast) is InstanceError
        assert fast.args == slow.args
        assert attrs.asdict(fast) == attrs.asdict(slow)
        assert repr(fast) == repr(slow) and str(fast) == str(slow)
        assert fast.to_dict() == slow.to_dict()
        assert (fast.__cause__, fast.__context__, fast.__traceback__) == (None, None, None)

    @pytest.mark.parametrize("plugin", [None, "p"])
    def test_contextual_error(self, plugin: str | None) -> None:
        inner = InstanceError(state="circuit_open", message="m", suggestion="s", plugin=plugin)
        inner.function = "f"
        context = ErrorContext(plugin="p", function="f", environment=ExecutionEnvironment())
        fast = contextual_error(inner, context)
        slow = ContextualErrorClass(error=inner, context=context)
        assert type(fast) is ContextualErrorClass
        assert fast.args == slow.args
        assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False)
        assert repr(fast) == repr(slow) and str(fast) == str(slow)
        assert fast.to_dict() == slow.to_dict()
        assert PluginError.from_dict(fast.to_dict()).to_dict() == slow.to_dict()


# -- the JSON codec ------------------------------------------------------------------------------

REFERENCE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


REFERENCE_DECODER = json.JSONDecoder(parse_constant=_refuse)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec=None)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def reference_encode(value: Any) -> tuple[str, Any]:
    try:
        return "ok", REFERENCE_ENCODER.encode(value).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError) as exc:
        return "error", f"Input is not JSON-serialisable: {exc}"


def codec_encode(value: Any) -> tuple[str, Any]:
    try:
        return "ok", get_codec("json").encode(value)
    except PluginError as error:
        return "error", error.message


def reference_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", REFERENCE_DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return "error", str(exc)


def codec_decode(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", get_codec("json").decode(data)
    except PluginError as error:
        return "error", error.message


class TestJsonCodec:
    @given(json_values)
    def test_encode_like_the_standard_encoder(self, value: Any) -> None:
        assert codec_encode(value) == reference_encode(value)

    def test_encode_failures(self) -> None:
        circular: list[Any] = []
        circular.append(circular)
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        for value in (float("nan"), float("inf"), {1: object()}, object(), circular, deep):
            assert codec_encode(value) == reference_encode(value)
        assert "Circular reference detected" in codec_encode(circular)[1]

    @given(json_values)
    def test_decode_like_the_standard_decoder(self, value: Any) -> None:
        status, encoded = reference_encode(value)
        if status != "ok":
            return
        for data in (encoded, b" " + encoded, encoded + b"\n", encoded + b"x", encoded[:-1]):
            kind, decoded = codec_decode(data)
            reference_kind, reference = reference_decode(data)
            assert kind == reference_kind
            if kind == "ok":
                assert decoded == reference
            else:
                assert str(reference) in decoded

    @given(st.binary(max_size=40))
    def test_decode_any_bytes(self, data: bytes) -> None:
        kind, decoded = codec_decode(data)
        reference_kind, reference = reference_decode(data)
        assert kind == reference_kind
        if kind == "ok":
            assert decoded == reference
        else:
            assert str(reference) in decoded

    @pytest.mark.parametrize(
        "text", ["NaN", "[Infinity]", '{"a": -Infinity}', "", " ", "1 2", '"\\ud800"', "[1,]"]
    )
    def test_decode_edge_cases(self, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        kind, decoded = codec_decode(data)
        reference_kind, reference = reference_decode(data)
        assert kind == reference_kind
        if kind == "ok":
            assert decoded == reference
        else:
            assert str(reference) in decoded


class TestThreads:
    def test_counts_from_many_threads(self, engine: Engine) -> None:
        """Threads calling at once through the straight path lose no count."""
        import threading

        host, _ = make_host(engine, passive=False)
        threads, calls = 6, 300
        start = threading.Barrier(threads)
        failures: list[BaseException] = []

        def work(number: int) -> None:
            try:
                start.wait()
                for index in range(calls):
                    assert host.call("subject", "echo", [number, index]) == [number, index]
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures
        total = threads * calls
        assert host.metrics.count("calls", "subject", "echo", outcome="value") == total
        assert host.metrics.count("attempts", "subject", "echo", result="value") == total
        histogram = host.metrics.snapshot()["latency_seconds"]["subject.echo"]
        assert histogram["count"] == total
        assert host.breaker("subject", "echo").counters()["window_calls"] == total
        host.close()


class TestEngineFastPath:
    def test_wasmtime_calls_go_through_the_fast_path(self, wasmtime_engine: Engine) -> None:
        """The installed wasmtime has the symbols the fast path needs, so the conformance tests
        exercise it (a release without them would silently fall back to the public API)."""
        from wasm_plugins.engine import _wasmtime

        assert _wasmtime.FAST_PATH
        sandbox = Sandbox(ABI, engine=wasmtime_engine)
        instance: Any = sandbox._state().session.instance
        assert instance._unguarded
        assert sandbox.call("upper", "abc" * 50_000) == "ABC" * 50_000  # memory grows
        assert sandbox.call("echo", {"after": "growth"}) == {"after": "growth"}
