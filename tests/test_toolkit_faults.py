"""The fault injector: scenarios, rate, seed, switch, targeting, latency on an injected clock, wrong
values, records; and an injected fault handled by the real policy exactly like a real one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wasm_plugins import (
    ContextualError,
    DeadlineExceeded,
    ExecutionError,
    HostFunction,
    NetworkError,
    PluginError,
    PluginHost,
    hookimpl,
)
from wasm_plugins.engine import FuncSignature
from wasm_plugins.policy import AttemptSucceeded, PolicyEvent
from wasm_plugins.testing.clock import FakeClock, FixedRandom
from wasm_plugins.testing.faults import (
    ERROR_KINDS,
    INJECTED,
    Fault,
    FaultInjector,
    InjectedException,
    RunawayCall,
    injector_from_options,
    make_error,
)

ECHO = "hostapi/examples/echo.wat"

# `fetch` asks the host function test.fetch, which the test makes fail, then echoes its input.
FETCHER = """(module
  (import "test" "fetch" (func $fetch))
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "fetch") (param $ptr i32) (param $len i32) (result i64)
    (call $fetch)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))"""


class Recorder:
    """A reporter that keeps every event."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        """The calls' events (a plugin's loading is no call's)."""
        return [event.name for event in self.events if event.function]


class Upstream:
    """The host function the plugin calls: fails while ``failures`` lasts."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self, call: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise NetworkError(operation="fetch", host="api.example.org")

    @hookimpl
    def wasm_plugins_register_host_functions(
        self, register: Callable[[HostFunction], None]
    ) -> None:
        register(HostFunction("test", "fetch", FuncSignature((), ()), self, capability=None))


def world(**policy: Any) -> tuple[PluginHost, FakeClock, Recorder]:
    clock, recorder = FakeClock(), Recorder()
    host = PluginHost(clock=clock, random=FixedRandom(), blocked=())
    host.register_policy(recorder)
    host.load(
        {
            "name": "echo",
            "module": {"path": ECHO},
            "functions": {"echo": {"idempotent": policy.pop("idempotent", False)}},
            "policy": policy,
        }
    )
    return host, clock, recorder


@pytest.fixture
def make_world() -> Iterator[Callable[..., tuple[PluginHost, FakeClock, Recorder]]]:
    hosts: list[PluginHost] = []

    def make(**policy: Any) -> tuple[PluginHost, FakeClock, Recorder]:
        made = world(**policy)
        hosts.append(made[0])
        return made

    yield make
    for host in hosts:
        host.close()


def attempts_faulted(injector: FaultInjector, host: PluginHost, calls: int) -> list[bool]:
    """For each of ``calls`` single-attempt calls, whether a fault was injected."""
    faulted = []
    for value in range(calls):
        before = len(injector.injected)
        with contextlib.suppress(ContextualError):
            host.call("echo", "echo", value)
        faulted.append(len(injector.injected) > before)
    return faulted


class TestFaultInjectorThroughThePolicy:
    def test_injected_network_error_is_handled_like_a_real_one(self) -> None:
        """A network error injected into the attempt and one raised by the plugin's own host
        function give the same events, outcome, waits and metrics."""

        def run(inject: bool) -> tuple[list[str], Any, list[float], int]:
            clock, recorder, upstream = FakeClock(), Recorder(), Upstream()
            with PluginHost(clock=clock, random=FixedRandom(), blocked=()) as host:
                host.register_policy(upstream)
                host.register_policy(recorder)
                host.load({"name": "fetcher", "module": {"wat": FETCHER}})
                if inject:
                    injector = FaultInjector(rate=0.0)
                    injector.plan([Fault.error("network"), Fault.error("network")])
                    host.register_policy(injector)
                else:
                    upstream.failures = 2
                outcome = host.invoke("fetcher", "fetch", {"q": 1})
                retries = host.metrics.count("retries", "fetcher", "fetch")
            return recorder.names(), outcome, clock.sleeps, retries

        real, injected = run(inject=False), run(inject=True)
        assert (
            injected[0]
            == real[0]
            == [
                "attempt_failed",
                "retry_scheduled",
                "attempt_failed",
                "retry_scheduled",
                "attempt_succeeded",
                "call_finished",
            ]
        )
        assert (injected[1].value, injected[1].attempts) == (real[1].value, real[1].attempts)
        assert [e.kind for e in injected[1].errors] == [e.kind for e in real[1].errors]
        assert injected[2] == real[2] and injected[3] == real[3] == 2

    def test_injected_timeout_follows_the_idempotence_rule(self) -> None:
        """An injected timeout is retried under a longer timeout for an idempotent function, and
        never for one that is not, as a real timeout would be."""
        made = {}
        for idempotent in (True, False):
            with PluginHost(clock=FakeClock(), blocked=()) as host:
                host.load(
                    {
                        "name": "timed",
                        "engine": "wasmtime",
                        "module": {"path": ECHO},
                        "functions": {"echo": {"idempotent": idempotent}},
                        "limits": {"timeout": "100 ms"},
                        "policy": {"max_timeout": "1 s"},
                    }
                )
                injector = FaultInjector(rate=0.0)
                injector.plan([Fault.error("timeout")])
                host.register_policy(injector)
                try:
                    outcome = host.invoke("timed", "echo", "x")
                except ContextualError as failure:
                    assert isinstance(failure.error, DeadlineExceeded)
                    assert failure.context is not None
                    made[idempotent] = failure.context.environment.attempt
                else:
                    assert outcome.value == "x"
                    made[idempotent] = outcome.attempts
        assert made == {True: 2, False: 1}

    def test_latency_counts_against_the_deadline(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """Injected latency moves the policy's clock: after a slow failure, no retry is made
        that would end past the call's deadline."""
        host, clock, recorder = make_world(deadline="1 s", max_attempts=5, backoff_base="100 ms")
        injector = FaultInjector([Fault.error("network", latency=0.95)])
        host.register_policy(injector)
        with pytest.raises(ContextualError) as caught:
            host.call("echo", "echo", "x")
        assert isinstance(caught.value.error, NetworkError)
        assert caught.value.context is not None and caught.value.context.environment.attempt == 1
        assert clock.monotonic() == pytest.approx(1000.95)
        assert clock.sleeps == [], "latency moved the clock without a sleep"
        assert "retry_scheduled" not in recorder.names()


class TestFault:
    def test_every_error_kind(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """A fault of each kind reaches the caller (or the policy's last error) with that kind,
        and is marked as injected."""
        for kind in ERROR_KINDS:
            host, _, _ = make_world(max_attempts=1)
            host.register_policy(FaultInjector([Fault.error(kind)]))
            with pytest.raises(ContextualError) as caught:
                host.call("echo", "echo", kind)
            assert caught.value.error.kind == kind
            assert caught.value.error.suggestion == INJECTED

    def test_make_error_covers_every_kind(self) -> None:
        """make_error gives a PluginError of the kind asked for, for every kind."""
        for kind in ERROR_KINDS:
            error = make_error(kind)
            assert isinstance(error, PluginError) and error.kind == kind

    def test_errors_are_fresh_objects(self) -> None:
        """Each injection makes a new error (the policy annotates errors in place)."""
        fault = Fault.error("resource_limit_exceeded", resource="fuel")
        first, second = fault.make_error(), fault.make_error()
        assert first is not second and first.to_dict() == second.to_dict()
        assert getattr(first, "resource", None) == "fuel"
        with pytest.raises(ValueError, match="known kinds"):
            make_error("contextual")

    def test_latency_then_the_attempt_runs(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """A latency fault advances the injected clock, then the plugin answers."""
        host, clock, recorder = make_world()
        host.register_policy(FaultInjector([Fault.delay(2.5)]))
        assert host.call("echo", "echo", "x") == "x"
        (succeeded,) = [e for e in recorder.events if isinstance(e, AttemptSucceeded)]
        assert succeeded.duration == pytest.approx(2.5)
        assert clock.sleeps == []

    def test_wrong_value(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """A wrong-value fault replaces the plugin's answer; the policy sees a success."""
        host, _, recorder = make_world()
        host.register_policy(FaultInjector([Fault.wrong_value({"words": -1})]))
        outcome = host.invoke("echo", "echo", "x")
        assert outcome.value == {"words": -1} and outcome.fallback is None
        assert recorder.names() == ["attempt_succeeded", "call_finished"]

    def test_untyped_exception_becomes_a_host_error(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """An exception fault is turned into a typed ExecutionError (host_error) by the policy."""
        host, _, _ = make_world(max_attempts=1)
        host.register_policy(FaultInjector([Fault.exception("boom")]))
        with pytest.raises(ContextualError) as caught:
            host.call("echo", "echo", "x")
        error = caught.value.error
        assert isinstance(error, ExecutionError) and error.trap == "host_error"
        assert isinstance(error.__cause__, InjectedException)

    def test_repr_reads_as_python(self) -> None:
        """A fault's repr is the call that makes it."""
        fault = Fault.error("runtime", latency=0.5, trap="unreachable")
        assert repr(fault) == "Fault.error('runtime', latency=0.5, trap='unreachable')"
        assert eval(repr(fault), {"Fault": Fault}) == fault
        assert repr(Fault.delay(1.0)) == "Fault.delay(1.0)"
        with pytest.raises(ValueError, match="unknown"):
            Fault.of("netwrok")


class TestFaultInjector:
    def test_rate_and_seed(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """The same seed injects into the same attempts; about ``rate`` of them get a fault."""
        runs = []
        for seed in (7, 7, 8):
            host, _, _ = make_world(max_attempts=1, breaker={"failure_threshold": 1000})
            injector = FaultInjector(["network"], rate=0.5, seed=seed)
            host.register_policy(injector)
            runs.append(attempts_faulted(injector, host, 200))
        assert runs[0] == runs[1]
        assert runs[0] != runs[2]
        assert 70 <= sum(runs[0]) <= 130

    def test_switch(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """Disabled, or paused, the injector only counts attempts."""
        host, _, _ = make_world(max_attempts=1)
        injector = FaultInjector(["network"], enabled=False)
        host.register_policy(injector)
        assert host.call("echo", "echo", 1) == 1
        injector.enable()
        with injector.paused():
            assert host.call("echo", "echo", 2) == 2
        assert injector.enabled and injector.attempts == 2 and injector.injected == []
        with pytest.raises(ContextualError):
            host.call("echo", "echo", 3)
        assert injector.counts() == {"network": 1}

    def test_targeting(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """Only the plugins and functions targeted get faults."""
        host, _, _ = make_world(max_attempts=1)
        host.load({"name": "other", "module": {"path": ECHO}, "policy": {"max_attempts": 1}})
        injector = FaultInjector(["io"], functions=[("other", "echo")])
        host.register_policy(injector)
        assert host.call("echo", "echo", 1) == 1
        with pytest.raises(ContextualError):
            host.call("other", "echo", 1)
        assert [(i.plugin, i.function) for i in injector.injected] == [("other", "echo")]
        assert not FaultInjector(plugins=["x"]).targets("echo", "echo")
        assert FaultInjector(functions=["echo"]).targets("any", "echo")

    def test_records(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """Each injection is recorded with the plugin, function, attempt number, fault, time."""
        host, _, _ = make_world(max_attempts=3, backoff_base="1 s")
        injector = FaultInjector(rate=0.0)
        injector.plan([Fault.error("network"), None, Fault.error("io")])
        host.register_policy(injector)
        assert host.call("echo", "echo", 1) == 1
        (injection,) = injector.injected
        assert (injection.plugin, injection.function, injection.attempt) == ("echo", "echo", 1)
        assert injection.fault == Fault.error("network") and injection.time == 1000.0
        assert injector.planned == (Fault.error("io"),)
        injector.clear()
        assert injector.injected == [] and injector.attempts == 0

    def test_outage_until_healed(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """An outage fails every attempt until heal()."""
        host, _, _ = make_world(max_attempts=2, backoff_base="1 ms")
        injector = FaultInjector(rate=0.0)
        host.register_policy(injector)
        injector.outage("network")
        with pytest.raises(ContextualError):
            host.call("echo", "echo", 1)
        injector.heal()
        assert host.call("echo", "echo", 2) == 2
        assert injector.counts() == {"network": 2}

    def test_runaway_guard(
        self, make_world: Callable[..., tuple[PluginHost, FakeClock, Recorder]]
    ) -> None:
        """Past max_attempts_per_call, the call is stopped with RunawayCall, a BaseException
        the policy does not swallow."""
        host, _, _ = make_world(
            max_attempts=50,
            backoff_base="1 ms",
            retry_budget_maximum=100,
            breaker={"failure_threshold": 100},
        )
        host.register_policy(FaultInjector(["network"], max_attempts_per_call=5))
        with pytest.raises(RunawayCall, match="attempt 6"):
            host.call("echo", "echo", 1)

    def test_options_of_a_marker(self) -> None:
        """Marker options build an injector; an unknown option is refused by name."""
        injector = injector_from_options(
            {"rate": 0.25, "kinds": ["network", "latency"], "seed": 3, "latency": 2.0}
        )
        assert injector.rate == 0.25 and injector.seed == 3
        assert [fault.label for fault in injector.scenarios] == ["network", "latency"]
        assert injector.scenarios[1] == Fault.delay(2.0)
        with pytest.raises(TypeError, match="rates"):
            injector_from_options({"rates": 1})
        with pytest.raises(ValueError, match="rate"):
            FaultInjector(rate=2.0)

    def test_is_a_policy_plugin(self) -> None:
        """The injector registers as a wrapper of the attempt hook, so it sees every attempt
        even when another implementation answers."""
        with PluginHost(clock=FakeClock(), blocked=()) as host:
            injector = FaultInjector(enabled=False)
            host.register_policy(injector, name="injector")
            (impl,) = [
                i
                for i in host.manager.hook.wasm_plugins_attempt.get_hookimpls()
                if i.plugin_name == "injector"
            ]
            assert impl.wrapper

            class Answer:
                @hookimpl(tryfirst=True)
                def wasm_plugins_attempt(self) -> str:
                    return "answered"

            host.register_policy(Answer())
            host.load({"name": "echo", "module": {"path": ECHO}})
            assert host.call("echo", "echo", 1) == "answered"
            assert injector.attempts == 1
