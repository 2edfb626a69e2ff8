"""The error policy: backoff, deadlines, budgets, recovery with raised limits, the circuit breaker,
fallbacks, reporters and hook ordering, on real plugins with a fake clock (no test sleeps)."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from loguru import logger

from tests.conftest import ROOT
from wasm_plugins import (
    Attempt,
    ContextualError,
    DeadlineExceeded,
    ExecutionError,
    HostFunction,
    InstanceError,
    Limits,
    NetworkError,
    PluginError,
    PluginHost,
    RecoveryPotential,
    Report,
    ResourceLimitExceeded,
    SecurityViolation,
    hookimpl,
)
from wasm_plugins.engine import Engine, FuncSignature
from wasm_plugins.policy import (
    Abort,
    AttemptFailed,
    AttemptSucceeded,
    Backoff,
    BreakerConfig,
    BreakerState,
    BreakerStateChanged,
    CallFinished,
    CircuitBreaker,
    Classification,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PolicyEvent,
    Retry,
    RetryBudget,
    RetryScheduled,
    UseValue,
    Verdict,
    _pipeline,
)
from wasm_plugins.policy import _events as policy_events
from wasm_plugins.testing.clock import FakeClock, FixedRandom

MiB = 2**20
ALLOCATOR = """
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func $number (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
        (i32.sub (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $n))
"""

# `work` asks the host for its mood (a host function the test controls) and echoes its input;
# `rough` is its cheaper stand-in; `grow` needs as many pages as its input says; `spin` loops
# input * 1000 times.
PLUGIN = f"""(module
  (import "wasm_plugins" "mood" (func $mood (result i32)))
  {ALLOCATOR}
  (data (i32.const 512) "\\"rough\\"")
  (func (export "work") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $mood))
    (call $pack (local.get $ptr) (local.get $len)))
  (func (export "trap") (param i32 i32) (result i64)
    unreachable)
  (func (export "rough") (param i32 i32) (result i64)
    (call $pack (i32.const 512) (i32.const 7)))
  (func (export "grow") (param $ptr i32) (param $len i32) (result i64)
    (if (i32.eq (memory.grow (call $number (local.get $ptr) (local.get $len))) (i32.const -1))
      (then unreachable))
    (call $pack (local.get $ptr) (local.get $len)))
  (func (export "spin") (param $ptr i32) (param $len i32) (result i64)
    (local $left i32)
    (local.set $left (i32.mul (call $number (local.get $ptr) (local.get $len)) (i32.const 1000)))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $left)))
      (local.set $left (i32.sub (local.get $left) (i32.const 1)))
      (br $next)))
    (call $pack (local.get $ptr) (local.get $len))))"""


class Mood:
    """The host function the plugin calls: each call takes the next planned outcome."""

    def __init__(self) -> None:
        self.plan: list[PluginError | None] = []
        self.calls = 0

    def __call__(self, call: Any) -> int:
        self.calls += 1
        outcome = self.plan.pop(0) if self.plan else None
        if outcome is not None:
            raise outcome
        return 0

    def function(self) -> HostFunction:
        return HostFunction(
            module="wasm_plugins",
            name="mood",
            signature=FuncSignature((), ("i32",)),
            implementation=self,
            capability="mood",
        )


class MoodProvider:
    @hookimpl
    def wasm_plugins_register_host_functions(
        self, register: Callable[[HostFunction], None]
    ) -> None:
        register(self.mood.function())

    def __init__(self, mood: Mood) -> None:
        self.mood = mood


class Recorder:
    """A reporter that keeps every event."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[PolicyEvent]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def manifest(engine: Engine, **policy: Any) -> dict[str, Any]:
    functions = {
        "work": {"idempotent": True, "simplified": "rough", "default": {"fallback": True}},
        "grow": {"idempotent": True},
        "spin": {"idempotent": policy.pop("spin_idempotent", True)},
        "rough": {},
    }
    limits = policy.pop("limits", {})
    policy.setdefault("fallbacks", [])  # only the tests about fallbacks want them
    return {
        "name": "subject",
        "engine": engine.name,
        "module": {"wat": PLUGIN},
        "capabilities": ["mood"],
        "functions": functions,
        "limits": limits,
        "policy": policy,
    }


class Subject:
    """A host with the subject plugin, a fake clock, a recording reporter and a mood."""

    def __init__(
        self, engine: Engine, where: float = 1.0, external: Any = None, **policy: Any
    ) -> None:
        self.clock = FakeClock()
        self.mood = Mood()
        self.recorder = Recorder()
        self.host = PluginHost(
            clock=self.clock,
            random=FixedRandom(where),
            blocked=(),
            external_fallbacks={"subject": external} if external else None,
        )
        self.host.register_policy(MoodProvider(self.mood), name="mood")
        self.host.register_policy(self.recorder, name="recorder")
        self.host.load(manifest(engine, **policy))

    def call(self, function: str, value: Any = None) -> Any:
        return self.host.invoke("subject", function, value)


@pytest.fixture
def subject(engine: Engine) -> Iterator[Callable[..., Subject]]:
    made: list[Subject] = []

    def make(**policy: Any) -> Subject:
        made.append(Subject(engine, **policy))
        return made[-1]

    yield make
    for item in made:
        item.host.close()


class TestBackoff:
    def test_ceilings_double_up_to_the_cap(self) -> None:
        """The longest wait doubles with each retry and stops at the cap."""
        backoff = Backoff(base=0.1, cap=1.0)
        assert [backoff.ceiling(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]

    @given(retry=st.integers(1, 40), seed=st.integers(0, 2**32))
    def test_full_jitter_bounds(self, retry: int, seed: int) -> None:
        """A jittered delay is never negative and never above the retry's ceiling."""
        backoff = Backoff(base=0.05, cap=2.0)
        delay = backoff.delay(retry, FixedRandom(None, seed=seed))
        assert 0.0 <= delay <= backoff.ceiling(retry)

    def test_retries_wait_the_backoff(self, subject: Callable[..., Subject]) -> None:
        """A recoverable failure is retried after the backoff: the fake clock records the waits,
        and the events say the same."""
        world = subject(max_attempts=4, backoff_base="100 ms", backoff_cap="1 s")
        world.mood.plan = [NetworkError(operation="fetch"), NetworkError(operation="fetch")]
        outcome = world.call("work", "x")
        assert (outcome.value, outcome.attempts) == ("x", 3)
        assert [e.kind for e in outcome.errors] == ["network", "network"]
        assert world.clock.sleeps == [0.1, 0.2]
        assert [e.delay for e in world.recorder.of(RetryScheduled)] == [0.1, 0.2]

    def test_deadline_stops_retries(self, subject: Callable[..., Subject]) -> None:
        """No retry starts that would end past the call's deadline."""
        world = subject(max_attempts=10, deadline="1 s", backoff_base="400 ms", backoff_cap="10 s")
        world.mood.plan = [NetworkError(operation="fetch")] * 10
        with pytest.raises(ContextualError) as caught:
            world.call("work", "x")
        assert world.clock.sleeps == [0.4]
        assert caught.value.context is not None
        assert caught.value.context.environment.attempt == 2
        assert [e.kind for e in caught.value.context.previous_errors] == ["network"]

    def test_attempt_limit(self, subject: Callable[..., Subject]) -> None:
        """A call makes at most max_attempts attempts."""
        world = subject(max_attempts=3, backoff_base="1 ms")
        world.mood.plan = [NetworkError(operation="fetch")] * 10
        with pytest.raises(ContextualError):
            world.call("work", "x")
        assert world.mood.calls == 3

    def test_retry_budget(self, subject: Callable[..., Subject]) -> None:
        """Once the plugin's retry budget is spent, failures are no longer retried."""
        world = subject(
            max_attempts=5, backoff_base="1 ms", retry_budget_ratio=0.01, retry_budget_maximum=2
        )
        world.mood.plan = [NetworkError(operation="fetch")] * 20
        with pytest.raises(ContextualError):
            world.call("work", "x")
        assert world.mood.calls == 3  # the first attempt and two retries: the budget held two
        with pytest.raises(ContextualError):
            world.call("work", "x")
        assert world.mood.calls == 4  # no token left for a retry

    def test_budget_refills(self) -> None:
        """Each call earns a share of a retry, up to the maximum."""
        budget = RetryBudget(ratio=0.5, maximum=2)
        assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
        budget.deposit()
        assert not budget.withdraw()
        budget.deposit()
        assert budget.withdraw()


class TestRecovery:
    def test_memory_is_raised_until_the_call_succeeds(
        self, subject: Callable[..., Subject]
    ) -> None:
        """A plugin that needs 6 MiB under a 4 MiB limit succeeds on the retry at 8 MiB."""
        world = subject(limits={"memory": "4 MiB"}, max_memory="16 MiB")
        outcome = world.call("grow", 96)
        assert (outcome.value, outcome.attempts) == (96, 2)
        assert isinstance(outcome.errors[0], ResourceLimitExceeded)
        (change,) = world.recorder.of(LimitsChanged)
        assert (change.before.memory, change.after.memory) == (4 * MiB, 8 * MiB)

    def test_memory_stops_at_the_ceiling(self, subject: Callable[..., Subject]) -> None:
        """Raised limits never pass the manifest's ceiling, and recovery stops there."""
        world = subject(limits={"memory": "4 MiB"}, max_memory="5 MiB", max_attempts=5)
        with pytest.raises(ContextualError) as caught:
            world.call("grow", 96)
        assert isinstance(caught.value.error, ResourceLimitExceeded)
        assert caught.value.error.limit == 5 * MiB
        assert [c.after.memory for c in world.recorder.of(LimitsChanged)] == [5 * MiB]

    def test_no_ceiling_no_raise(self, subject: Callable[..., Subject]) -> None:
        """Without a ceiling in the manifest, a memory limit is never raised."""
        world = subject(limits={"memory": "4 MiB"})
        with pytest.raises(ContextualError):
            world.call("grow", 96)
        assert world.recorder.of(LimitsChanged) == []
        assert len(world.recorder.of(AttemptFailed)) == 1

    def test_security_violation_never_retried(self, engine: Engine) -> None:
        """A capability violation is never retried, and raises a critical alert."""
        clock = FakeClock()
        with PluginHost.discover(clock=clock, random=FixedRandom()) as host:
            outcome_error = None
            with pytest.raises(ContextualError) as caught:
                host.call("capability-thief", "steal")
            outcome_error = caught.value.error
        assert isinstance(outcome_error, SecurityViolation)
        assert caught.value.context is not None
        assert caught.value.context.environment.attempt == 1
        assert clock.sleeps == []
        assert [alert.reason for alert in host.alerts.raised] == ["security_violation"]

    def test_timeout_extended_for_idempotent_functions(self, wasmtime_engine: Engine) -> None:
        """A timed-out idempotent call is retried under a longer timeout and succeeds; a
        non-idempotent one is never retried after a timeout."""
        spin = calibrated_spin(wasmtime_engine)
        quick = Subject(
            wasmtime_engine,
            limits={"timeout": spin.duration / 50},
            max_timeout=spin.duration * 100,
            growth=2000,
        )
        outcome = quick.call("spin", spin.count)
        assert (outcome.value, outcome.attempts) == (spin.count, 2)
        assert isinstance(outcome.errors[0], DeadlineExceeded)
        quick.host.close()
        once = Subject(
            wasmtime_engine,
            limits={"timeout": spin.duration / 50},
            max_timeout=spin.duration * 100,
            growth=2000,
            spin_idempotent=False,
        )
        with pytest.raises(ContextualError) as caught:
            once.call("spin", spin.count)
        assert isinstance(caught.value.error, DeadlineExceeded)
        assert caught.value.context is not None
        assert caught.value.context.environment.attempt == 1
        once.host.close()


class Spin:
    def __init__(self, count: int, duration: float) -> None:
        self.count = count
        self.duration = duration


def calibrated_spin(engine: Engine) -> Spin:
    """An input for `spin` that takes 50 ms or more here, measured on a warm instance, not
    assumed; the tests give timeouts far from it on both sides (machines slow down 3x)."""
    host = PluginHost(blocked=())
    host.register_policy(MoodProvider(Mood()))
    host.load(manifest(engine))
    host.call("subject", "spin", 1)  # compile and instantiate before anything is timed
    count = 1000
    while True:
        started = time.perf_counter()
        host.call("subject", "spin", count)
        duration = time.perf_counter() - started
        if duration >= 0.05:
            host.close()
            return Spin(count, duration)
        count *= 4


class TestBreaker:
    def test_opens_fails_fast_and_closes_again(self, subject: Callable[..., Subject]) -> None:
        """After the threshold the breaker opens and calls fail fast (a fallback may answer);
        after the recovery time a probe closes it again."""
        world = subject(
            max_attempts=1,
            fallbacks=["default"],
            breaker={"failure_threshold": 3, "recovery_time": "30 s"},
        )
        world.mood.plan = [NetworkError(operation="fetch")] * 3
        for _ in range(3):
            assert world.call("work", "x").fallback == "default"
        breaker = world.host.breaker("subject", "work")
        assert breaker.state is BreakerState.OPEN
        calls = world.mood.calls
        outcome = world.call("work", "x")
        assert outcome.fallback == "default"
        assert outcome.error is not None and outcome.error.kind == "instance"
        assert world.mood.calls == calls, "an open breaker does not call the plugin"
        world.clock.advance(30)
        assert world.call("work", "y").value == "y"
        assert breaker.state is BreakerState.CLOSED
        transitions = [(e.before, e.after) for e in world.recorder.of(BreakerStateChanged)]
        assert transitions == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]

    def test_caller_errors_do_not_trip(self, subject: Callable[..., Subject]) -> None:
        """Errors the caller causes (unencodable input) never open the breaker."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 2})
        for _ in range(5):
            with pytest.raises(ContextualError):
                world.call("work", {1, 2})
        assert world.host.breaker("subject", "work").state is BreakerState.CLOSED

    def test_runtime_errors_trip(self, subject: Callable[..., Subject]) -> None:
        """Ordinary runtime errors (traps) do open the breaker."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 2})
        for _ in range(2):
            with pytest.raises(ContextualError):
                world.call("trap")
        assert world.host.breaker("subject", "trap").state is BreakerState.OPEN

    def test_half_open_probe_cap_under_threads(self) -> None:
        """Half-open, the breaker admits exactly its probe count, however many threads ask."""
        clock = FakeClock()
        breaker = CircuitBreaker(
            "p.f", BreakerConfig(failure_threshold=1, half_open_probes=2, recovery_time=5), clock
        )
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        clock.advance(5)
        barrier = threading.Barrier(8)
        admitted: list[bool] = []
        lock = threading.Lock()

        def ask() -> None:
            barrier.wait()
            try:
                breaker.acquire()
            except PluginError:
                result = False
            else:
                result = True
            with lock:
                admitted.append(result)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(admitted) == [False] * 6 + [True] * 2

    def test_failure_ratio(self) -> None:
        """With a ratio set, the breaker opens on the share of failures in the window."""
        clock = FakeClock()
        breaker = CircuitBreaker(
            "p.f",
            BreakerConfig(failure_threshold=100, failure_ratio=0.5, min_calls=4, window=10),
            clock,
        )
        for verdict in (Verdict.SUCCESS, Verdict.FAILURE, Verdict.SUCCESS):
            breaker.record(breaker.acquire(), verdict)
            clock.advance(1)
        assert breaker.state is BreakerState.CLOSED
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        assert breaker.state is BreakerState.OPEN

    def test_the_quiet_permit_is_offered_only_when_a_success_has_nothing_to_count(
        self,
    ) -> None:
        """``quiet`` is the closed breaker's permit while a success would count nothing (no
        failure streak, no failure ratio); None after a failure, while open or half-open, and
        always with a failure ratio. A success that ends a streak offers it again."""
        clock = FakeClock()
        breaker = CircuitBreaker("p.f", BreakerConfig(failure_threshold=2), clock)
        quiet = breaker.quiet
        assert quiet is not None and quiet == breaker.acquire()
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        assert breaker.quiet is None
        breaker.record_success(breaker.acquire())
        assert breaker.quiet is quiet and breaker.counters()["consecutive_failures"] == 0
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        assert breaker.state is BreakerState.OPEN and breaker.quiet is None
        clock.advance(30)
        probe = breaker.acquire()
        assert breaker.state is BreakerState.HALF_OPEN and breaker.quiet is None
        breaker.record(probe, Verdict.SUCCESS)
        assert breaker.state is BreakerState.CLOSED
        again = breaker.quiet
        assert again is not None and again.generation > quiet.generation
        # A call that took the old quiet permit counts nothing in the new generation.
        breaker.record(quiet, Verdict.FAILURE)
        assert breaker.counters()["consecutive_failures"] == 0
        ratio = CircuitBreaker("p.f", BreakerConfig(failure_ratio=0.5), clock)
        assert ratio.quiet is None
        ratio.record_success(ratio.acquire())
        assert ratio.quiet is None

    def test_failure_ratio_counts_the_window_only(self) -> None:
        """A call counts toward the ratio for the whole window, and no longer once the window
        (and at most one of its buckets, 1/64 of it) has passed."""
        # The first three calls at 0.1 s, within the first bucket (0 to 0.156 s), then 9.95 s
        # later (still in the window), or at 0 s and a window and a bucket later (out of it).
        for start, wait, opens, counted in ((0.1, 9.95, True, 7), (0.0, 10 + 10 / 64, False, 4)):
            clock = FakeClock()
            clock.advance(start)
            breaker = CircuitBreaker(
                "p.f",
                BreakerConfig(failure_threshold=100, failure_ratio=0.5, min_calls=4, window=10),
                clock,
            )
            for _ in range(3):
                breaker.record(breaker.acquire(), Verdict.FAILURE)
            clock.advance(wait)
            for _ in range(3):
                breaker.record_success(breaker.acquire())
            assert breaker.counters()["window_calls"] == counted - 1
            breaker.record(breaker.acquire(), Verdict.FAILURE)
            # 4 failures of 7 calls, or 1 of 4 once the first three left the window.
            assert (breaker.state is BreakerState.OPEN) is opens

    @given(
        steps=st.lists(
            st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()), min_size=1, max_size=80
        )
    )
    def test_failure_ratio_window_against_every_call_kept(
        self, steps: list[tuple[float, bool]]
    ) -> None:
        """Against a model that keeps every call: the window counts every call of its last
        ``window`` seconds and none older than one bucket more, and the breaker opens on the
        ratio exactly when the model, counting from some moment between those two, says so."""
        window, ratio, least = 10.0, 0.5, 4
        clock = FakeClock()
        breaker = CircuitBreaker(
            "p.f",
            BreakerConfig(failure_threshold=1000, failure_ratio=ratio, min_calls=least, window=10),
            clock,
        )
        calls: list[tuple[float, bool]] = []
        for wait, failed in steps:
            clock.advance(wait)
            now = clock.monotonic()
            calls.append((now, failed))
            if failed:
                breaker.record(breaker.acquire(), Verdict.FAILURE)
            else:
                breaker.record_success(breaker.acquire())

            # The calls a window may count: those since some moment between ``window`` and
            # one bucket more ago (calls leave oldest first).
            edge = [now - window - window / 64, now - window]
            edge += [at for at, _ in calls if edge[0] <= at <= edge[1]]
            counts = [
                (len(kept), sum(kept))
                for kept in ([failure for at, failure in calls if at > cut] for cut in edge)
            ]
            exact, loose = counts[1], counts[0]
            could_open = {
                total >= least and failures / total >= ratio for total, failures in counts
            }
            if breaker.state is BreakerState.OPEN:
                assert failed and True in could_open
                return
            if failed:
                assert False in could_open
            assert exact[0] <= breaker.counters()["window_calls"] <= loose[0]

    @staticmethod
    def _memory_of_successes(calls: int, spacing: float) -> tuple[CircuitBreaker, int]:
        """A breaker with a failure ratio (60 s window) after ``calls`` successes ``spacing``
        seconds apart, and the memory it allocated for them (``tracemalloc``)."""
        import tracemalloc

        clock = FakeClock()
        breaker = CircuitBreaker(
            "p.f", BreakerConfig(failure_threshold=100, failure_ratio=0.5, window=60), clock
        )
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                clock.advance(spacing)
                breaker.record_success(breaker.acquire())
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return breaker, held

    def test_failure_ratio_holds_no_call_of_its_own(self) -> None:
        """The window of a failure ratio keeps counts, not calls: at 200,000 calls in the
        window (half a minute at 6,700 calls a second), it holds a few kilobytes."""
        breaker, held = self._memory_of_successes(200_000, 60 / 200_000 / 2)
        assert breaker.counters()["window_calls"] == 200_000
        assert held < 64 * 1024

    def test_a_window_of_successes_alone_stays_small(self) -> None:
        """Buckets that left the window are dropped as successes come, with no failure and no
        reader to drop them: 100,000 successes over a hundred windows hold a few kilobytes."""
        breaker, held = self._memory_of_successes(100_000, 0.06)
        assert held < 64 * 1024
        assert 1000 <= breaker.counters()["window_calls"] <= 1000 + 1000 // 64 + 1

    def test_a_failure_costs_the_same_whatever_the_window_holds(self) -> None:
        """Counting a failure (and the ratio it checks) does work independent of the calls in
        the window: counted in traced lines, not time, so that a busy machine does not matter."""
        import sys

        def lines_of_one_failure(calls: int) -> int:
            clock = FakeClock()
            breaker = CircuitBreaker(
                "p.f", BreakerConfig(failure_threshold=100, failure_ratio=0.9, window=60), clock
            )
            for _ in range(calls):
                clock.advance(1e-4)
                breaker.record_success(breaker.acquire())
            breaker.counters()  # what a reader does: any folding of the calls happens here
            permit = breaker.acquire()
            count = 0

            def tracer(frame: Any, event: str, arg: Any) -> Any:
                nonlocal count
                count += 1
                return tracer

            previous = sys.gettrace()
            sys.settrace(tracer)
            try:
                breaker.record(permit, Verdict.FAILURE)
            finally:
                sys.settrace(previous)
            assert breaker.state is BreakerState.CLOSED
            return count

        small, large = lines_of_one_failure(1_000), lines_of_one_failure(100_000)
        assert large <= small + 10, (small, large)

    def test_a_refusal_says_when_the_next_probe_is_allowed(self) -> None:
        """An open breaker's refusal names the time left before its next probe, to the
        millisecond, as the clock moves; refusals within the same millisecond read alike."""
        clock = FakeClock()
        breaker = CircuitBreaker("p.f", BreakerConfig(recovery_time=30.0), clock)
        breaker.force_open()
        messages = []
        for advance in (0.0, 0.0002, 2.5, 27.4, 0.0996):
            clock.advance(advance)
            refusal = breaker.try_acquire()
            assert isinstance(refusal, InstanceError)
            assert refusal.state == "circuit_open"
            messages.append(refusal.message)
        assert [message.rsplit(" in ", 1)[1] for message in messages] == [
            "30 s",
            "30 s",
            "27.5 s",
            "100 ms",
            "200 µs",
        ]
        assert messages[0] == messages[1]
        opening = "Instance unavailable: the circuit of p.f is open"
        assert all(message.startswith(opening) for message in messages)
        refusals = [breaker.try_acquire() for _ in range(2)]
        assert refusals[0] is not refusals[1]

    def test_a_plugins_breakers_are_bounded_and_those_at_rest_go_first(
        self, subject: Callable[..., Subject], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Function names come from callers, and each makes a breaker: past the bound, the
        breakers at rest (closed, nothing counted: a fresh one decides as they do) are dropped,
        with their routes; one that counted failures stays, and keeps failing fast."""
        monkeypatch.setattr(_pipeline, "_MAX_BREAKERS", 8)
        world = subject(max_attempts=1, breaker={"failure_threshold": 2, "recovery_time": "1 h"})
        pipeline = world.host.pipeline
        for _ in range(2):
            with pytest.raises(ContextualError):
                world.host.call("subject", "missing")
        opened = pipeline.breaker("subject", "missing")
        assert opened.state is BreakerState.OPEN
        assert world.call("work", "x").value == "x"  # a route, and its breaker at rest
        for n in range(40):
            pipeline.breaker("subject", f"name-{n}")
        kept = [function for plugin, function in pipeline.breakers() if plugin == "subject"]
        assert len(kept) <= 8
        assert "missing" in kept
        assert pipeline.breaker("subject", "missing") is opened
        routes = pipeline._routes.get("subject", {})
        assert set(routes) <= set(kept)
        with pytest.raises(ContextualError) as caught:
            world.host.call("subject", "missing")
        assert caught.value.error_kind == "instance"  # refused: the breaker is still open

    def test_when_none_is_at_rest_the_oldest_go(
        self, subject: Callable[..., Subject], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_pipeline, "_MAX_BREAKERS", 8)
        world = subject(max_attempts=1, breaker={"failure_threshold": 5})
        for n in range(40):
            with pytest.raises(ContextualError):
                world.host.call("subject", f"missing-{n}")
        kept = [
            function for plugin, function in world.host.pipeline.breakers() if plugin == "subject"
        ]
        assert 0 < len(kept) <= 8
        assert "missing-39" in kept
        assert "missing-0" not in kept

    def test_manual_control(self) -> None:
        """A breaker opens and closes by hand, with an event each time."""
        seen: list[tuple[str, str]] = []
        breaker = CircuitBreaker(
            "p.f", BreakerConfig(), FakeClock(), lambda b, a, r: seen.append((b.value, a.value))
        )
        breaker.force_open()
        with pytest.raises(PluginError):
            breaker.acquire()
        breaker.force_close()
        breaker.acquire()
        assert seen == [("closed", "open"), ("open", "closed")]


class BreakerModel(RuleBasedStateMachine):
    """The breaker against a reference model, over random calls, results and clock moves."""

    config = BreakerConfig(
        failure_threshold=3, recovery_time=10.0, half_open_probes=2, success_threshold=2
    )

    @initialize()
    def start(self) -> None:
        self.clock = FakeClock()
        self.transitions: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            "p.f", self.config, self.clock, lambda b, a, _: self.transitions.append((b, a))
        )
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self.opened_at = 0.0
        self.held: list[tuple[Any, Verdict, int]] = []

    def _move(self, state: BreakerState) -> None:
        if state is BreakerState.OPEN:
            self.opened_at = self.clock.monotonic()
        self.state, self.failures, self.successes, self.probes = state, 0, 0, 0
        self.generation += 1

    def _tick(self) -> None:
        if (
            self.state is BreakerState.OPEN
            and self.clock.monotonic() >= self.opened_at + self.config.recovery_time
        ):
            self._move(BreakerState.HALF_OPEN)

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(verdict=st.sampled_from(list(Verdict)), hold=st.booleans())
    def call(self, verdict: Verdict, hold: bool) -> None:
        self._tick()
        admitted = self.state is BreakerState.CLOSED or (
            self.state is BreakerState.HALF_OPEN and self.probes < self.config.half_open_probes
        )
        try:
            permit = self.breaker.acquire()
        except PluginError:
            assert not admitted
            return
        assert admitted
        if self.state is BreakerState.HALF_OPEN:
            self.probes += 1
        if hold:
            self.held.append((permit, verdict, self.generation))
        else:
            self._record(permit, verdict, self.generation)

    @rule()
    def release_held(self) -> None:
        if self.held:
            self._record(*self.held.pop(0))

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self._tick()
        self._move(BreakerState.OPEN)

    def _record(self, permit: Any, verdict: Verdict, generation: int) -> None:
        self._tick()
        self.breaker.record(permit, verdict)
        if generation != self.generation:
            return  # a call from before a transition does not count
        if self.state is BreakerState.HALF_OPEN:
            self.probes -= 1
        if verdict is Verdict.IGNORED:
            return
        if self.state is BreakerState.HALF_OPEN:
            if verdict is Verdict.FAILURE:
                self._move(BreakerState.OPEN)
            else:
                self.successes += 1
                if self.successes >= self.config.success_threshold:
                    self._move(BreakerState.CLOSED)
        elif self.state is BreakerState.CLOSED:
            if verdict is Verdict.FAILURE:
                self.failures += 1
                if self.failures >= self.config.failure_threshold:
                    self._move(BreakerState.OPEN)
            else:
                self.failures = 0

    @invariant()
    def same_state(self) -> None:
        self._tick()
        assert self.breaker.state is self.state

    @invariant()
    def legal_transitions(self) -> None:
        legal = {
            (BreakerState.CLOSED, BreakerState.OPEN),
            (BreakerState.OPEN, BreakerState.HALF_OPEN),
            (BreakerState.HALF_OPEN, BreakerState.OPEN),
            (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        }
        assert set(self.transitions) <= legal

    @invariant()
    def counters_match(self) -> None:
        counters = self.breaker.counters()
        assert counters["consecutive_failures"] == self.failures
        assert counters["consecutive_successes"] == self.successes
        assert counters["probes_in_flight"] == self.probes


TestBreakerModel = BreakerModel.TestCase


class TestFallbacks:
    def test_cache(self, subject: Callable[..., Subject]) -> None:
        """A failed call of an idempotent function is answered from its last result."""
        world = subject(max_attempts=1, fallbacks=["cache"], cache_ttl="60 s")
        assert world.call("work", {"q": 1}).value == {"q": 1}
        world.mood.plan = [NetworkError(operation="fetch")]
        world.clock.advance(30)
        outcome = world.call("work", {"q": 1})
        assert (outcome.value, outcome.fallback) == ({"q": 1}, "cache")
        assert outcome.quality == pytest.approx(0.45)
        assert isinstance(outcome.error, NetworkError)
        world.mood.plan = [NetworkError(operation="fetch")]
        world.clock.advance(31)
        with pytest.raises(ContextualError):
            world.call("work", {"q": 1})

    def test_simplified(self, subject: Callable[..., Subject]) -> None:
        """The cheaper export named in the manifest answers."""
        world = subject(max_attempts=1, fallbacks=["simplified"])
        world.mood.plan = [NetworkError(operation="fetch")]
        outcome = world.call("work", "x")
        assert (outcome.value, outcome.fallback, outcome.quality) == ("rough", "simplified", 0.6)

    def test_external(self, engine: Engine) -> None:
        """A callable the host application supplies answers."""
        world = Subject(
            engine,
            external=lambda function, value: {"external": function, "input": value},
            max_attempts=1,
            fallbacks=["external"],
        )
        world.mood.plan = [NetworkError(operation="fetch")]
        outcome = world.call("work", 7)
        assert outcome.value == {"external": "work", "input": 7}
        assert (outcome.fallback, outcome.quality) == ("external", 0.7)
        world.host.close()

    def test_default(self, subject: Callable[..., Subject]) -> None:
        """The manifest's default value answers, and the event names the strategy."""
        world = subject(max_attempts=1, fallbacks=["default"])
        world.mood.plan = [NetworkError(operation="fetch")]
        outcome = world.call("work", "x")
        assert (outcome.value, outcome.fallback, outcome.quality) == (
            {"fallback": True},
            "default",
            0.3,
        )
        (used,) = world.recorder.of(FallbackUsed)
        assert (used.strategy, used.error.kind) == ("default", "network")

    def test_order_follows_the_manifest(self, subject: Callable[..., Subject]) -> None:
        """Strategies are tried in the manifest's order."""
        world = subject(max_attempts=1, fallbacks=["default", "simplified"])
        world.mood.plan = [NetworkError(operation="fetch")]
        assert world.call("work", "x").fallback == "default"


class TestReporters:
    def test_one_event_per_attempt_and_transition(self, subject: Callable[..., Subject]) -> None:
        """Every attempt gives exactly one attempt event, every call one CallFinished, every
        breaker transition one event."""
        world = subject(max_attempts=2, backoff_base="1 ms", breaker={"failure_threshold": 3})
        world.mood.plan = [NetworkError(operation="fetch")] * 3
        outcomes = []
        for value in range(4):
            try:
                outcomes.append(world.call("work", value).attempts)
            except ContextualError as failure:
                assert failure.context is not None
                outcomes.append(failure.context.environment.attempt)
        attempts = world.recorder.of(AttemptSucceeded) + world.recorder.of(AttemptFailed)
        assert len(attempts) == world.mood.calls
        assert len(world.recorder.of(CallFinished)) == 4
        assert len({(e.call_id, e.attempt) for e in attempts}) == len(attempts)
        transitions = world.recorder.of(BreakerStateChanged)
        assert [(e.before, e.after) for e in transitions] == [("closed", "open")]

    def test_raising_reporter_changes_nothing(self, subject: Callable[..., Subject]) -> None:
        """A reporter that raises changes no outcome, and the others still see every event."""
        world = subject(max_attempts=2, backoff_base="1 ms")

        class Broken:
            @hookimpl(tryfirst=True)
            def wasm_plugins_report(self, event: PolicyEvent) -> None:
                raise RuntimeError("reporter bug")

        world.host.register_policy(Broken())
        world.mood.plan = [NetworkError(operation="fetch")]
        assert world.call("work", "x").value == "x"
        names = [event.name for event in world.recorder.events if event.function]
        assert names == ["attempt_failed", "retry_scheduled", "attempt_succeeded", "call_finished"]

    def test_topics_refine_the_end_of_a_call(self, subject: Callable[..., Subject]) -> None:
        """A reporter naming ``call_finished`` sees every end of a call; one naming a refinement
        (``call_finished.error``) only those, so a plain success does not call it."""
        world = subject(max_attempts=1)
        seen: dict[str, list[str | None]] = {"every end": [], "failures": []}

        class Reporter:
            def __init__(self, key: str, topics: frozenset[str]) -> None:
                self.key = key
                self.hook_topics = topics

            @hookimpl
            def wasm_plugins_report(self, record: Report) -> None:
                seen[self.key].append(record.outcome)

        world.host.register_policy(Reporter("every end", frozenset({"call_finished"})))
        world.host.register_policy(Reporter("failures", frozenset({"call_finished.error"})))
        world.call("work", "x")
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", "y")
        assert seen == {"every end": ["value", "error"], "failures": ["error"]}

    def test_metrics(self, subject: Callable[..., Subject]) -> None:
        """The metrics reporter counts attempts, retries and calls, and times calls."""
        world = subject(max_attempts=2, backoff_base="1 ms")
        world.mood.plan = [NetworkError(operation="fetch")]
        world.call("work", "x")
        metrics = world.host.metrics
        assert metrics.count("attempts", plugin="subject", function="work", result="network") == 1
        assert metrics.count("attempts", plugin="subject", function="work", result="value") == 1
        assert metrics.count("retries", plugin="subject", function="work") == 1
        assert metrics.count("calls", plugin="subject", function="work", outcome="value") == 1
        assert metrics.snapshot()["latency_seconds"]["subject.work"]["count"] == 1


class TestCorrelation:
    def test_one_call_id_through_outcome_events_logs_and_error(
        self, subject: Callable[..., Subject], records: list[Any]
    ) -> None:
        """A call's id is on its Outcome, its events, its log records and, when it fails, in
        the ContextualError's dict form."""
        world = subject(max_attempts=2, backoff_base="1 ms")
        world.mood.plan = [NetworkError(operation="fetch")]
        outcome = world.call("work", "x")
        assert outcome.call_id.startswith("subject#")
        # The plugin's loading is reported too, with no call (nor call id).
        calls = [event for event in world.recorder.events if event.function]
        assert {event.call_id for event in calls} == {outcome.call_id}
        logged = {extra.get("call_id") for _, _, extra in records if "event" in extra}
        assert logged == {outcome.call_id}

        world.recorder.events.clear()
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        with pytest.raises(ContextualError) as failure:
            world.call("work", "y")
        (call_id,) = {event.call_id for event in world.recorder.events}
        assert call_id != outcome.call_id
        assert failure.value.to_dict()["context"]["call_id"] == call_id
        assert any(extra.get("call_id") == call_id for _, _, extra in records)


class TestOrdering:
    def test_third_party_recovery_wins(self, subject: Callable[..., Subject]) -> None:
        """A third party's recovery answer wins over the built-in one."""
        world = subject(max_attempts=3)

        class NeverRetry:
            @hookimpl
            def wasm_plugins_recovery_action(self, error: PluginError) -> Abort:
                return Abort(reason="this host never retries")

        world.host.register_policy(NeverRetry())
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", "x")
        assert world.mood.calls == 1

    def test_tryfirst_and_trylast(self, subject: Callable[..., Subject]) -> None:
        """tryfirst answers before plain implementations, trylast after them."""
        world = subject(max_attempts=3)

        class Last:
            @hookimpl(trylast=True)
            def wasm_plugins_recovery_action(self) -> Abort:
                return Abort(reason="last")

        class Plain:
            @hookimpl
            def wasm_plugins_recovery_action(self) -> Retry:
                return Retry(delay=0.0, reason="plain")

        class First:
            @hookimpl(tryfirst=True)
            def wasm_plugins_recovery_action(self, call: Any) -> UseValue | None:
                return UseValue(value="first", quality=0.9) if call.attempt >= 2 else None

        for policy in (First(), Last(), Plain()):
            world.host.register_policy(policy)
        world.mood.plan = [NetworkError(operation="fetch")] * 5
        outcome = world.call("work", "x")
        assert (outcome.value, outcome.attempts, outcome.fallback) == ("first", 2, "recovery")
        assert [e.reason for e in world.recorder.of(RetryScheduled)] == ["plain"]

    def test_builtin_blocked_by_name(self, engine: Engine) -> None:
        """With builtin-recovery blocked, nothing is retried."""
        world = Subject(engine, max_attempts=3)
        world.host.close()
        clock = FakeClock()
        host = PluginHost(clock=clock, random=FixedRandom(), blocked={"builtin-recovery"})
        mood = Mood()
        host.register_policy(MoodProvider(mood))
        host.load(manifest(engine, max_attempts=3))
        mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            host.call("subject", "work", "x")
        assert mood.calls == 1
        host.close()

    def test_third_party_recovery_from_entry_point(
        self, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A recovery hook installed through an entry point wins over the built-in one."""
        import importlib

        from tests.test_host import make_distribution

        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)
        make_distribution(
            tmp_path,
            "thirdparty-patient",
            """
from wasm_plugins import hookimpl
from wasm_plugins.policy import UseValue

@hookimpl
def wasm_plugins_recovery_action(error, call):
    if call.plugin == "memory-bomb":
        return UseValue(value="defused", quality=0.5, strategy="thirdparty")
""",
        )
        importlib.invalidate_caches()
        with PluginHost.discover(clock=FakeClock()) as host:
            outcome = host.invoke("memory-bomb", "explode")
        assert (outcome.value, outcome.fallback) == ("defused", "thirdparty")

    def test_classification_changes_the_policy(self, subject: Callable[..., Subject]) -> None:
        """A classifier that calls a trap recoverable makes the built-in recovery retry it."""
        world = subject(max_attempts=2, backoff_base="1 ms")

        class Lenient:
            @hookimpl
            def wasm_plugins_classify_error(self, error: PluginError) -> Classification | None:
                if isinstance(error, ExecutionError):
                    return Classification(recovery_potential=RecoveryPotential.RECOVERABLE)
                return None

        world.host.register_policy(Lenient())
        with pytest.raises(ContextualError) as caught:
            world.call("trap")
        assert caught.value.error.recovery_potential is RecoveryPotential.RECOVERABLE
        assert len(world.recorder.of(AttemptFailed)) == 2

    def test_failing_and_slow_hooks_are_skipped(self, subject: Callable[..., Subject]) -> None:
        """A recovery hook that raises, or takes longer than the recovery timeout, counts as no
        answer and is reported; the built-in answer is used."""
        world = subject(max_attempts=2, backoff_base="1 ms")
        clock = world.clock

        class Raising:
            @hookimpl
            def wasm_plugins_recovery_action(self) -> None:
                raise ValueError("recovery bug")

        class Slow:
            @hookimpl
            def wasm_plugins_recovery_action(self) -> Abort:
                clock.advance(5.0)
                return Abort(reason="too late to count")

        world.host.register_policy(Raising())
        world.host.register_policy(Slow())
        world.mood.plan = [NetworkError(operation="fetch")]
        assert world.call("work", "x").attempts == 2
        reasons = [e.reason for e in world.recorder.of(HookFailed)]
        assert len(reasons) == 2
        assert any("recovery bug" in reason for reason in reasons)
        assert any("recovery timeout" in reason for reason in reasons)


def test_conformance_module_still_loads() -> None:
    """The policy changes nothing for the conformance module (sanity)."""
    assert (ROOT / "hostapi" / "conformance" / "abi.wat").exists()


class TestPipelineEdges:
    def test_invalid_use_value_is_a_failed_hook(self, subject: Callable[..., Subject]) -> None:
        """A recovery hook that builds an invalid answer is skipped and reported."""
        world = subject(max_attempts=2, backoff_base="1 ms")

        class Sloppy:
            @hookimpl
            def wasm_plugins_recovery_action(self) -> UseValue:
                return UseValue(value=1, quality=0.0)

        world.host.register_policy(Sloppy())
        world.mood.plan = [NetworkError(operation="fetch")]
        assert world.call("work", "x").value == "x"
        (failed,) = world.recorder.of(HookFailed)
        assert "quality" in failed.reason

    def test_wrong_answer_type_passes_to_the_next(self, subject: Callable[..., Subject]) -> None:
        """A fallback hook answering something else than a FallbackResult is reported, and the
        next implementation (the manifest's default) still answers."""
        world = subject(max_attempts=1, fallbacks=["default"])

        class Confused:
            @hookimpl
            def wasm_plugins_fallback(self) -> int:
                return 42

        world.host.register_policy(Confused())
        world.mood.plan = [NetworkError(operation="fetch")]
        assert world.call("work", "x").fallback == "default"
        (failed,) = world.recorder.of(HookFailed)
        assert "int" in failed.reason

    def test_each_error_knows_its_attempt(self, subject: Callable[..., Subject]) -> None:
        """The context of each attempt's error names that attempt."""
        world = subject(max_attempts=3, backoff_base="1 ms")
        world.mood.plan = [NetworkError(operation="fetch")] * 3
        with pytest.raises(ContextualError) as caught:
            world.call("work", "x")
        previous = caught.value.context.previous_errors  # type: ignore[union-attr]
        assert [e.context.environment.attempt for e in previous] == [1, 2]  # type: ignore[union-attr]
        assert caught.value.error.context.environment.attempt == 3  # type: ignore[union-attr]

    def test_no_retry_once_the_breaker_opened(self, subject: Callable[..., Subject]) -> None:
        """When a failure opens the breaker, no retry is scheduled, waited for or paid for."""
        world = subject(max_attempts=5, backoff_base="50 ms", breaker={"failure_threshold": 2})
        world.mood.plan = [NetworkError(operation="fetch")] * 5
        budget = world.host.pipeline.budget("subject")
        before = budget.tokens
        with pytest.raises(ContextualError):
            world.call("work", "x")
        assert world.clock.sleeps == [0.05]
        assert len(world.recorder.of(RetryScheduled)) == 1
        assert budget.tokens == pytest.approx(min(budget.maximum, before + 0.2) - 1)

    def test_interrupted_probe_releases_its_slot(self, subject: Callable[..., Subject]) -> None:
        """A half-open probe ended by KeyboardInterrupt does not keep the breaker stuck."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 1, "recovery_time": "5 s"})
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", "x")
        world.clock.advance(5)

        class Interrupting:
            @hookimpl(tryfirst=True)
            def wasm_plugins_attempt(self) -> None:
                raise KeyboardInterrupt

        interrupting = Interrupting()
        world.host.register_policy(interrupting)
        with pytest.raises(KeyboardInterrupt):
            world.call("work", "x")
        world.host.manager.unregister(interrupting)
        assert world.call("work", "y").value == "y"

    def test_a_recovery_cannot_remove_a_limit(self, subject: Callable[..., Subject]) -> None:
        """A retry asking for no memory limit keeps the manifest's limit."""
        world = subject(limits={"memory": "4 MiB"}, max_memory="4 MiB", max_attempts=2)

        class Unlimited:
            @hookimpl
            def wasm_plugins_recovery_action(self, call: Any) -> Retry:
                return Retry(delay=0.0, limits=call.limits.replace(memory=None))

        world.host.register_policy(Unlimited())
        with pytest.raises(ContextualError) as caught:
            world.call("grow", 96)
        assert isinstance(caught.value.error, ResourceLimitExceeded)
        assert caught.value.error.limit == 4 * MiB


# -- reporters: light records, events only for those who take them ------------------------------

ABI = ROOT / "hostapi" / "conformance" / "abi.wat"


class EventReporter:
    """A reporter that takes full events: its presence makes the policy build them."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        self.events.append(event)


def abi_host(
    engine: Engine, with_events: bool, failure_ratio: float | None = None
) -> tuple[PluginHost, FakeClock]:
    clock = FakeClock()
    breaker: dict[str, Any] = {"failure_threshold": 3, "recovery_time": "10 s"}
    if failure_ratio is not None:
        breaker["failure_ratio"] = failure_ratio
    host = PluginHost(engine=engine.name, clock=clock, blocked=(), module_cache=False)
    if with_events:
        host.register_policy(EventReporter(), name="events")
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
                "breaker": breaker,
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


class TestLightRecords:
    def test_an_event_reporter_changes_nothing_else(self, engine: Engine) -> None:
        """Whether full events are made (a reporter takes ``event``) or not, the calls give the
        same results and errors, and the built-in reporters, the breakers, the result cache and
        the retry budget end up the same."""
        light, light_clock = abi_host(engine, with_events=False)
        full, full_clock = abi_host(engine, with_events=True)
        assert scenario(light, light_clock) == scenario(full, full_clock)
        assert observed(light) == observed(full)
        assert light.alerts.raised  # the refusals raised the error-rate alert

    def test_log_records_do_not_depend_on_events(self, engine: Engine, records: list[Any]) -> None:
        """The built-in log reporter writes the same records with or without full events."""
        light, light_clock = abi_host(engine, with_events=False)
        scenario(light, light_clock)
        from_light = list(records)
        records.clear()
        full, full_clock = abi_host(engine, with_events=True)
        scenario(full, full_clock)

        def comparable(seen: list[Any]) -> list[Any]:
            # An error's execution id is drawn afresh for each error.
            return [
                (level, message, {k: v for k, v in extra.items() if k != "execution_id"})
                for level, message, extra in seen
            ]

        assert comparable(from_light) == comparable(records)
        assert any(
            message == "call finished: error after 0 attempt(s)" for _, message, _ in records
        )

    def test_no_event_object_without_a_reporter_taking_one(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A call that succeeds makes no event object while only the built-in reporters (which
        read the light record) are registered; one that takes ``event`` gets them."""
        made: list[str] = []

        @attrs.frozen
        class Counted(policy_events.AttemptSucceeded):
            def __attrs_post_init__(self) -> None:
                made.append(self.name)

        monkeypatch.setattr(policy_events, "AttemptSucceeded", Counted)
        host, _ = abi_host(engine, with_events=False)
        assert host.call("subject", "echo", 1) == 1
        assert made == []
        host.register_policy(EventReporter(), name="late")
        assert host.call("subject", "echo", 2) == 2
        assert made == ["counted"]

    def test_outcome_of_a_first_attempt(self, engine: Engine) -> None:
        """``invoke`` of a call whose first attempt answers: the value, one attempt, no error."""
        host, _ = abi_host(engine, with_events=False)
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
            "call_id": "subject#1",
        }

    def test_a_record_reporter_that_raises(self, engine: Engine, records: list[Any]) -> None:
        """A reporter reading records that raises is logged; the call succeeds and the metrics
        still count it."""

        class Broken:
            @hookimpl(tryfirst=True)
            def wasm_plugins_report(self, record: Report) -> None:
                raise RuntimeError("broken reporter")

        host, _ = abi_host(engine, with_events=False)
        host.register_policy(Broken(), name="broken")
        assert host.call("subject", "echo", 2) == 2
        assert any("reporter failed: RuntimeError" in message for _, message, _ in records)
        assert host.metrics.count("calls", "subject", "echo", outcome="value") == 1

    def test_new_reporter_gets_the_next_events(self, engine: Engine) -> None:
        """A reporter registered after calls were made gets the events of the next calls."""
        host, _ = abi_host(engine, with_events=False)
        host.call("subject", "echo", 1)
        late = EventReporter()
        host.register_policy(late, name="late")
        host.call("subject", "echo", 2)
        assert [event.name for event in late.events] == ["attempt_succeeded", "call_finished"]

    def test_counts_from_many_threads(self, engine: Engine) -> None:
        """Threads calling at once lose no count (the breaker's window of recent calls, kept
        for a failure ratio, included)."""
        host, _ = abi_host(engine, with_events=False, failure_ratio=0.9)
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


class TestAttemptLimits:
    def test_the_attempt_carries_the_limits_in_force(self, subject: Callable[..., Subject]) -> None:
        """An attempt carries the manifest's limits themselves (never a stand-in for them), and
        the host keeps its sandbox under those limits."""
        world = subject()
        seen: list[Limits] = []

        class Watch:
            @hookimpl(wrapper=True)
            def wasm_plugins_attempt(self, attempt: Attempt) -> Any:
                seen.append(attempt.limits)
                return (yield)

        world.host.register_policy(Watch(), name="watch")
        base = world.host.plugins["subject"].manifest.limits
        world.call("work", 1)
        assert len(seen) == 1 and seen[0] is base
        assert set(world.host.sandboxes()) == {("subject", base)}


class TestLayers:
    LOWER = ("policy", "sandbox", "isolation", "engine", "builtin")

    def test_no_lower_layer_imports_the_host(self) -> None:
        """No module of the policy, the sandbox, isolation, the engines or the built-in hookimpls
        imports ``wasm_plugins.host``, at module level, in a function or for type checking."""
        package = ROOT / "wasm_plugins"
        offenders = []
        for folder in self.LOWER:
            for path in sorted((package / folder).rglob("*.py")):
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                    names: list[str] = []
                    if isinstance(node, ast.Import):
                        names = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module:
                        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    if any(name == "wasm_plugins.host" for name in names):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        assert offenders == []
