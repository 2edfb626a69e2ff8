"""Stateful fault fuzzing: the harness's invariants, and the Hypothesis state machine catching
deliberately broken policy plugins and shrinking each failure to a short sequence of steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from wasm_plugins import DeadlineExceeded, HostIOError, Manifest, NetworkError, PluginHost, hookimpl
from wasm_plugins.policy import BreakerStateChanged, CallFinished, FallbackResult, Retry
from wasm_plugins.testing.clock import FakeClock, FixedRandom
from wasm_plugins.testing.faults import Fault
from wasm_plugins.testing.harness import (
    Advance,
    Call,
    Heal,
    HostHarness,
    InvariantViolation,
    Outage,
    minimize,
    replay,
)
from wasm_plugins.testing.stateful import CallSpec, HostStateMachine, host_state_machine

ECHO = "hostapi/examples/echo.wat"
SEARCH = settings(
    max_examples=300,
    stateful_step_count=20,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate, Phase.shrink],
)
"""For the tests that must find a failure: stop at the first, shrink it, no explanation phase."""


def echo_host(*policies: Callable[[PluginHost], object], **policy: Any) -> Callable[..., Any]:
    """A factory of hosts with the echo plugin (a default value to fall back on), and policies."""

    manifest = Manifest.from_dict(
        {
            "name": "echo",
            "module": {"path": ECHO},
            "functions": {"echo": {"idempotent": True, "default": "fallback"}},
            "policy": policy,
        }
    )

    def make(clock: FakeClock) -> PluginHost:
        host = PluginHost(clock=clock, random=FixedRandom(), blocked=())
        host.load(manifest)
        for make_policy in policies:
            host.register_policy(make_policy(host))
        return host

    return make


# -- deliberately broken policy plugins ---------------------------------------------------------


class Relentless:
    """A recovery hook that retries every failure at once, forever (with a huge max_attempts)."""

    def __init__(self, host: PluginHost) -> None:
        pass

    @hookimpl(tryfirst=True)
    def wasm_plugins_recovery_action(self) -> Retry:
        return Retry(delay=0.0, reason="never give up")


RELENTLESS_POLICY = {
    "max_attempts": 10**6,
    "retry_budget_maximum": 10**6,
    "breaker": {"failure_threshold": 10**6},
}


class Crash(BaseException):
    """Not an Exception: what a careless plugin raises to 'stop everything'."""


class Panicky:
    """An attempt wrapper that panics with a BaseException on timeouts."""

    def __init__(self, host: PluginHost) -> None:
        pass

    @hookimpl(wrapper=True)
    def wasm_plugins_attempt(self) -> Any:
        try:
            return (yield)
        except DeadlineExceeded:
            raise Crash("timeout!") from None


class Announcer:
    """A fallback that also reports the call as finished, itself: two CallFinished events."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    @hookimpl(tryfirst=True)
    def wasm_plugins_fallback(self, error: Any, call: Any) -> FallbackResult:
        now = self.host.clock.monotonic()
        self.host.pipeline.report(
            CallFinished(
                call.plugin, call.function, call.call_id, now, "fallback", call.attempt, 0.0
            )
        )
        return FallbackResult("stand-in", "announcer", 0.5)


class Relabel:
    """An outer attempt wrapper that turns network errors into I/O errors."""

    def __init__(self, host: PluginHost) -> None:
        pass

    @hookimpl(wrapper=True, tryfirst=True)
    def wasm_plugins_attempt(self) -> Any:
        try:
            return (yield)
        except NetworkError:
            raise HostIOError(operation="read") from None


class Forger:
    """Reports a breaker transition that cannot happen."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    @hookimpl
    def wasm_plugins_fallback(self, call: Any) -> None:
        self.host.pipeline.report(
            BreakerStateChanged(call.plugin, call.function, "", 0.0, "closed", "half_open", "?")
        )


def violation_of(make_host: Callable[..., Any], steps: list[Any]) -> InvariantViolation:
    with pytest.raises(InvariantViolation) as caught:
        replay(make_host, steps)
    return caught.value


def found_host(machine: type[HostStateMachine]) -> Callable[..., Any]:
    factory = machine.host_factory
    assert factory is not None
    return factory


def search(machine: type[HostStateMachine]) -> InvariantViolation:
    """Run the machine until it fails; the shrunk violation."""
    with pytest.raises(InvariantViolation) as caught:
        run_state_machine_as_test(machine, settings=SEARCH)
    return caught.value


# -- the harness ----------------------------------------------------------------------------------


class TestHostHarness:
    def test_a_healthy_host_keeps_every_invariant(self) -> None:
        """Calls with faults of every sort, outages and clock moves: every invariant holds,
        and the results say what each call ended in."""
        steps = [
            Call("echo", "echo", 1),
            Call("echo", "echo", 2, faults=[Fault.error("network"), Fault.delay(0.5)]),
            Outage(Fault.error("io")),
            *[Call("echo", "echo", n) for n in (10, 11, 12)],
            Advance(31.0),
            Heal(),
            Call("echo", "echo", 4),
            Call("echo", "echo", 5, faults=[Fault.exception(), Fault.wrong_value("w")]),
            Call("echo", "echo", 6, faults=[Fault.error("compilation")] * 3),
        ]
        results = replay(echo_host(), steps)
        assert [result.label for result in results] == [
            "value",
            "value",
            "fallback (default)",
            "fallback (default)",
            "fallback (default)",
            "value",
            "fallback (default)",
            "fallback (default)",
        ]

    def test_counts_and_closes(self) -> None:
        """The harness counts outcomes and injected faults, and closes the host."""
        harness = HostHarness(echo_host())
        harness.run(Call("echo", "echo", 1, faults=[Fault.error("network")]))
        harness.close()
        assert harness.outcomes() == {"value": 1}
        assert harness.injector.counts() == {"network": 1}
        assert harness.ledger.names()[-1] == "call_finished"
        assert harness.closed and harness.host._closed

    def test_runaway_retries(self) -> None:
        """A recovery hook that retries forever makes a call that does not end."""
        make = echo_host(Relentless, **RELENTLESS_POLICY)
        found = violation_of(make, [Outage(Fault.error("network")), Call("echo", "echo", 1)])
        assert found.invariant == "every call ends"
        assert "attempt 101" in found.detail

    def test_untyped_escape(self) -> None:
        """A BaseException from a policy plugin reaching the caller is caught."""
        found = violation_of(
            echo_host(Panicky), [Call("echo", "echo", 1, faults=[Fault.error("timeout")])]
        )
        assert found.invariant == "nothing untyped escapes" and "Crash" in found.detail

    def test_duplicate_events(self) -> None:
        """A second CallFinished for one call is caught."""
        found = violation_of(
            echo_host(Announcer, max_attempts=1),
            [Call("echo", "echo", 1, faults=[Fault.error("network")])],
        )
        assert found.invariant == "every event is reported once"
        assert "2 CallFinished" in found.detail

    def test_relabelled_faults(self) -> None:
        """An injected fault that reaches the policy as another kind is caught."""
        found = violation_of(
            echo_host(Relabel), [Call("echo", "echo", 1, faults=[Fault.error("network")])]
        )
        assert found.invariant == "injected faults go through the policy"

    def test_illegal_transitions(self) -> None:
        """A breaker transition that skips a state is caught."""
        found = violation_of(
            echo_host(Forger, max_attempts=1),
            [Call("echo", "echo", 1, faults=[Fault.error("network")])],
        )
        assert found.invariant == "breaker transitions are legal"
        assert "closed to half_open" in found.detail

    def test_leaks(self) -> None:
        """A host that keeps its sandboxes after close() is caught."""

        class Leaky(PluginHost):
            def close(self) -> None:
                self._closed = True  # forgets to drop its sandboxes

        def make(clock: FakeClock) -> PluginHost:
            host = Leaky(clock=clock, blocked=())
            host.load({"name": "echo", "module": {"path": ECHO}})
            return host

        found = violation_of(make, [Call("echo", "echo", 1)])
        assert found.invariant == "no worker or instance leaks"

    def test_reproducer_replays_the_failure(self) -> None:
        """The reproducer is a Python program that raises the same violation again."""
        make = echo_host(Announcer, max_attempts=1)
        found = violation_of(make, [Call("echo", "echo", {"a": [1]}, faults=[Fault.error("io")])])
        program = found.reproducer("make_host")
        assert "Call('echo', 'echo', {'a': [1]}, faults=[Fault.error('io')])" in program
        with pytest.raises(InvariantViolation) as again:
            exec(program, {"make_host": make})
        assert str(again.value) == str(found)


# -- the state machine ----------------------------------------------------------------------------


class TestHostStateMachine:
    def test_a_healthy_host_passes(self) -> None:
        """Random calls, faults, outages and clock moves on a sound host break nothing (the
        examples come from the Hypothesis profile)."""
        seen: list[str] = []

        def count(harness: HostHarness, result: Any) -> None:
            if result is not None:
                seen.append(result.label)

        machine = host_state_machine(
            echo_host(),
            [CallSpec("echo", "echo", st.integers() | st.text(max_size=5))],
            fault_kinds=["network", "timeout", "instance", "latency", "value", "exception"],
            on_result=count,
        )
        run_state_machine_as_test(machine, settings=settings(stateful_step_count=15))
        assert "value" in seen and any(label.startswith("fallback") for label in seen)

    def test_retrying_forever_is_found_and_shrunk(self) -> None:
        """A recovery hook that retries forever (huge max_attempts) is found; the reproducer is
        an outage and one call."""
        machine = host_state_machine(
            echo_host(Relentless, **RELENTLESS_POLICY),
            [CallSpec("echo", "echo", st.integers())],
            max_attempts_per_call=20,
        )
        found = search(machine)
        assert found.invariant == "every call ends"
        assert len(found.steps) <= 3, "Hypothesis shrank the runs of up to 20 steps"
        smallest = minimize(found_host(machine), found, max_attempts_per_call=20)
        assert smallest is not None
        assert smallest.steps == (Outage(Fault.error("network")), Call("echo", "echo", 0))

    def test_untyped_escape_is_found_and_shrunk(self) -> None:
        """A BaseException escaping on timeouts is found; the reproducer is one call whose only
        fault is a timeout."""
        machine = host_state_machine(
            echo_host(Panicky),
            [CallSpec("echo", "echo", st.integers())],
            fault_kinds=["network", "timeout"],
        )
        found = search(machine)
        assert found.invariant == "nothing untyped escapes"
        assert len(found.steps) <= 3
        smallest = minimize(found_host(machine), found)
        assert smallest is not None and len(smallest.steps) in (1, 2)
        *before, last = smallest.steps
        assert isinstance(last, Call)
        # The timeout is planned for the call, or comes from an outage just before it.
        planned = [fault for fault in last.faults if fault is not None]
        assert planned == [Fault.error("timeout")] or before == [Outage(Fault.error("timeout"))]

    def test_duplicate_events_are_found_and_shrunk(self) -> None:
        """A fallback that reports the call finished itself is found; the reproducer is one
        failing call."""
        machine = host_state_machine(
            echo_host(Announcer, max_attempts=1),
            [CallSpec("echo", "echo", st.integers())],
        )
        found = search(machine)
        assert found.invariant == "every event is reported once"
        assert len(found.steps) <= 3
        smallest = minimize(found_host(machine), found)
        assert smallest is not None and len(smallest.steps) in (1, 2)
        assert isinstance(smallest.steps[-1], Call)

    def test_subclassing(self) -> None:
        """A subclass with make_host and calls works like host_state_machine."""

        class Mine(HostStateMachine):
            calls = (CallSpec("echo", "echo", st.just("x")),)
            fault_kinds = ()

            def make_host(self, clock: FakeClock) -> PluginHost:
                host = PluginHost(clock=clock, blocked=())
                host.load({"name": "echo", "module": {"path": ECHO}})
                return host

        run_state_machine_as_test(Mine, settings=settings(max_examples=5))
        with pytest.raises(TypeError, match="calls"):
            HostStateMachine()
        with pytest.raises(ValueError, match="unknown faults"):
            host_state_machine(echo_host(), [], fault_kinds=["nope"])
