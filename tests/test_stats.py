"""Call statistics (``host.stats()``), the per-thread tally under them, the alert rules and their
channel (``wasm_plugins_alert``), and ``wasm-plugins stats``; a fake clock, no sleeps."""

from __future__ import annotations

import bisect
import gc
import math
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from tests.conftest import ROOT
from tests.test_policy import Subject
from wasm_plugins import (
    Alert,
    ContextualError,
    NetworkError,
    PluginHost,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    hookimpl,
)
from wasm_plugins.builtin.reporters import AlertReporter, MetricsReporter
from wasm_plugins.builtin.stats import (
    LATENCY_BOUNDS,
    MAX_FUNCTIONS,
    OTHER_FUNCTIONS,
    PENDING_MAX,
    WINDOW_SPAN,
    WINDOWS,
    CallTally,
    combined,
)
from wasm_plugins.cli import main
from wasm_plugins.engine import Engine
from wasm_plugins.policy import CallPipeline, Report


@pytest.fixture
def subject(wasmtime_engine: Engine) -> Iterator[Callable[..., Subject]]:
    made: list[Subject] = []

    def make(**policy: Any) -> Subject:
        made.append(Subject(wasmtime_engine, **policy))
        return made[-1]

    yield make
    for item in made:
        item.host.close()


def finished(
    outcome: str, seconds: float, time: float, plugin: str = "p", function: str = "f"
) -> Report:
    return Report("call_finished", plugin, function, 1, time, 1, seconds, outcome)


class Alerts:
    """A third party's alert channel."""

    def __init__(self) -> None:
        self.seen: list[Alert] = []

    @hookimpl
    def wasm_plugins_alert(self, alert: Alert) -> None:
        self.seen.append(alert)


class TestHostStats:
    def test_counts_errors_fallbacks_breaker(self, subject: Callable[..., Subject]) -> None:
        """Calls by outcome, failed attempts by kind, retries, fallbacks by strategy, and the
        breaker's state and transitions, per function."""
        world = subject(
            max_attempts=2,
            backoff_base="1 ms",
            fallbacks=["default"],
            breaker={"failure_threshold": 2, "recovery_time": "30 s"},
        )
        world.call("work", 1)
        world.mood.plan = [NetworkError(operation="fetch")] * 2
        assert world.call("work", 2).fallback == "default"
        world.call("work", 3)  # refused by the open breaker, answered by the default
        entry = world.host.stats().of("subject", "work")
        assert entry is not None
        assert entry.calls == 3
        assert entry.outcomes == {"value": 1, "fallback": 2}
        assert entry.errors == {"network": 2}
        assert entry.retries == 1
        assert entry.fallbacks == {"default": 2}
        assert entry.breaker == "open"
        assert entry.transitions == {"open": 1}

    def test_error_rate_windows_follow_the_clock(self, subject: Callable[..., Subject]) -> None:
        """The error rate over the last minute and five minutes, on the policy clock."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 100})
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", 1)
        world.call("work", 2)
        world.clock.advance(120)
        for value in range(2):
            world.call("work", value)
        entry = world.host.stats().of("subject", "work")
        assert entry is not None
        assert entry.window_calls == {"1m": 2, "5m": 4}
        assert entry.error_rate == {"1m": 0.0, "5m": 0.25}
        world.clock.advance(WINDOW_SPAN)
        entry = world.host.stats().of("subject", "work")
        assert entry is not None
        assert entry.error_rate == {"1m": None, "5m": None}
        assert entry.calls == 4

    def test_a_breaker_without_calls_is_listed(self, subject: Callable[..., Subject]) -> None:
        """A function whose breaker exists but that was never called has an entry."""
        world = subject()
        world.host.breaker("subject", "rough")
        entry = world.host.stats().of("subject", "rough")
        assert entry is not None
        assert (entry.calls, entry.breaker, entry.latency["p50"]) == (0, "closed", None)

    def test_to_dict_and_rows(self, subject: Callable[..., Subject]) -> None:
        """Plain data for JSON, and table rows with a header."""
        world = subject()
        world.call("work", 1)
        stats = world.host.stats()
        (entry,) = stats.to_dict()["functions"]
        assert (entry["plugin"], entry["function"], entry["calls"]) == ("subject", "work", 1)
        header, row = stats.rows()
        assert header[:3] == ["plugin", "function", "calls"]
        assert row[:3] == ["subject", "work", "1"]


class TestTally:
    def test_percentiles_within_the_bucket_precision(self) -> None:
        """p50, p95 and p99 of known latencies, within the histogram's 5 %."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        for millisecond in range(1, 1001):
            metrics.wasm_plugins_report(finished("value", millisecond / 1000, 10.0))
        entry = tally.stats(10.0).of("p", "f")
        assert entry is not None
        for name, expected in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            found = entry.latency[name]
            assert found is not None
            assert expected <= found <= expected * 1.05

    def test_memory_is_bounded(self) -> None:
        """However many calls, the cells keep the same size; function names past the bound are
        counted together."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        for number in range(MAX_FUNCTIONS + 200):
            metrics.wasm_plugins_report(
                finished("error", 0.001, float(number), function=f"f{number}")
            )
        cells = tally.cells()
        assert len(cells) == MAX_FUNCTIONS + 1
        (other,) = cells[("p", OTHER_FUNCTIONS)]
        assert other.outcomes == {"error": 200}
        for _ in range(10_000):
            metrics.wasm_plugins_report(finished("value", 0.002, 5000.0, function="f1"))
        (cell,) = tally.cells()[("p", "f1")]
        assert len(cell.latency) == len(LATENCY_BOUNDS)
        assert len(cell.calls) == len(cell.seconds) == WINDOW_SPAN

    def test_threads_that_ended_keep_their_counts(self) -> None:
        """Each thread counts in its own shard; the shards of threads that ended are folded
        into one, so their number does not grow with the threads that ever called."""
        tally = CallTally()
        metrics = MetricsReporter(tally)

        def work() -> None:
            for _ in range(100):
                metrics.wasm_plugins_report(finished("value", 0.001, 1.0))

        for _ in range(20):
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
        gc.collect()
        entry = tally.stats(1.0).of("p", "f")
        assert entry is not None
        assert entry.calls == 2000
        assert len(tally.cells()[("p", "f")]) <= 2

    def test_threads_at_once_lose_no_count(self) -> None:
        """Threads counting at the same time, each in its own cells, lose nothing."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        start = threading.Barrier(4)

        def work() -> None:
            start.wait()
            for index in range(1000):
                metrics.wasm_plugins_report(finished("value" if index % 4 else "error", 0.001, 1.0))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert metrics.count("calls", "p", "f", outcome="value") == 3000
        assert metrics.count("calls", "p", "f", outcome="error") == 1000
        entry = tally.stats(1.0).of("p", "f")
        assert entry is not None
        assert entry.error_rate["1m"] == 0.25

    def test_combined_hosts(self) -> None:
        """Several tallies (a fuzz run's hosts) as one: counts summed, each window on its own
        clock."""
        first, second = CallTally(), CallTally()
        MetricsReporter(first).wasm_plugins_report(finished("error", 0.001, 100.0))
        MetricsReporter(second).wasm_plugins_report(finished("value", 0.001, 5.0))
        stats = combined([(first, 100.0, {("p", "f"): "closed"}), (second, 5.0, {})])
        entry = stats.of("p", "f")
        assert entry is not None
        assert (entry.calls, entry.error_rate["1m"], entry.breaker) == (2, 0.5, "closed")

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([0.0, 0.0, 0.25, 0.75, 1.0, 7.0, 299.0, 300.0, 301.0]),
                st.sampled_from(["value", "value", "value", "error", "fallback"]),
                st.floats(min_value=1e-7, max_value=2e5),
            ),
            max_size=60,
        ),
        st.sampled_from([0.0, 0.5, 59.0, 300.0]),
    )
    def test_counts_as_if_each_call_were_counted_as_it_ends(
        self, calls: list[tuple[float, str, float]], later: float
    ) -> None:
        """Calls ending with their value wait in their cell until their second ends; whatever
        the clock does meanwhile, what is read is what counting each at once gives."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        now = 1000.0
        ends: list[tuple[float, str, float]] = []
        for step, outcome, seconds in calls:
            now += step
            metrics.wasm_plugins_report(finished(outcome, seconds, now))
            ends.append((now, outcome, seconds))
        now += later
        entry = tally.stats(now).of("p", "f")
        if not ends:
            assert entry is None
            return
        assert entry is not None
        outcomes: dict[str, int] = {}
        for _, outcome, _ in ends:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert entry.outcomes == dict(sorted(outcomes.items()))
        histogram = [0] * len(LATENCY_BOUNDS)
        for _, _, seconds in ends:
            histogram[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        (cell,) = tally.cells()[("p", "f")]
        assert cell.latency == histogram
        assert cell.latency_sum == pytest.approx(math.fsum(s for _, _, s in ends))
        for name, span in WINDOWS.items():
            oldest = int(now) - span + 1
            recent = [outcome for end, outcome, _ in ends if int(end) >= oldest]
            assert entry.window_calls[name] == len(recent)
            failed = sum(outcome != "value" for outcome in recent)
            assert entry.error_rate[name] == (failed / len(recent) if recent else None)

    def test_calls_wait_in_bounded_numbers(self) -> None:
        """A clock that stands still (a fake one) never lets more than a bound of calls wait:
        the counts stay exact, and the memory bounded."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        for _ in range(3 * PENDING_MAX + 5):
            metrics.wasm_plugins_report(finished("value", 0.002, 7.0))
        live = tally.local.routes["p"]["f"]
        assert 0 < len(live.pending) <= PENDING_MAX
        entry = tally.stats(7.0).of("p", "f")
        assert entry is not None
        assert (entry.calls, entry.window_calls["1m"]) == (3 * PENDING_MAX + 5,) * 2

    def test_a_reader_never_sees_a_fold_half_made(self) -> None:
        """Another thread reading while the calling thread folds its waiting calls into the
        counts reads them before or after, never in between (the thread switches as often as
        it can)."""
        tally = CallTally()
        metrics = MetricsReporter(tally)
        done = threading.Event()
        torn: list[tuple[int, ...]] = []

        def calls() -> None:
            for second in range(WINDOW_SPAN):
                for index in range(20):
                    outcome = "error" if index % 4 == 0 else "value"
                    metrics.wasm_plugins_report(finished(outcome, 0.002, float(second)))
            done.set()

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            caller = threading.Thread(target=calls)
            caller.start()
            reads = 0
            while not done.is_set() or reads == 0:
                for cell in tally.cells().get(("p", "f"), []):
                    reads += 1
                    errors = cell.outcomes.get("error", 0)
                    ended = (cell.values + errors, sum(cell.latency), sum(cell.calls))
                    if len(set(ended)) != 1 or sum(cell.failures) != errors:
                        torn.append((*ended, errors))
            caller.join()
        finally:
            sys.setswitchinterval(interval)
        assert torn == []


def _finished(number: int, function: str, time: float, failed: bool) -> Report:
    """The end of call ``number`` of plugin ``p``: its value, or a network error."""
    return Report(
        "call_finished",
        "p",
        function,
        number,
        time,
        duration=1e-3,
        outcome="error" if failed else "value",
        error=NetworkError(operation="fetch") if failed else None,
    )


class TestAlerts:
    def test_security_violation_is_critical(self, subject: Callable[..., Subject]) -> None:
        """Every security violation raises a critical alert, sent to the alert hook."""
        world = subject(max_attempts=1)
        channel = Alerts()
        world.host.register_policy(channel, name="pager")
        world.mood.plan = [SecurityViolation(violation_type="capability_denied")]
        with pytest.raises(ContextualError):
            world.call("work", 1)
        (alert,) = channel.seen
        assert (alert.reason, alert.severity) == ("security_violation", Severity.CRITICAL)
        assert list(world.host.alerts.raised) == [alert]

    def test_error_rate_fires_once_and_again_after_recovering(
        self, subject: Callable[..., Subject]
    ) -> None:
        """The error-rate alert (high) fires when the rate reaches the threshold over enough
        calls, once; a failure that finds the rate below the threshold re-arms it."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 1000})
        world.mood.plan = [NetworkError(operation="fetch")] * 12
        for value in range(12):
            if value == 9:
                assert list(world.host.alerts.raised) == []
            with pytest.raises(ContextualError):
                world.call("work", value)
        rates = [alert for alert in world.host.alerts.raised if alert.reason == "error_rate"]
        assert len(rates) == 1
        assert rates[0].severity is Severity.HIGH
        assert rates[0].details["calls"] == 10  # fired by the tenth failure
        for value in range(40):
            world.call("work", value)
        world.clock.advance(1)
        world.mood.plan = [NetworkError(operation="fetch")]
        with pytest.raises(ContextualError):
            world.call("work", 0)  # 13 failures in 53 calls: below the threshold, re-armed
        world.clock.advance(120)
        world.mood.plan = [NetworkError(operation="fetch")] * 10
        for value in range(10):
            with pytest.raises(ContextualError):
                world.call("work", value)
        rates = [alert for alert in world.host.alerts.raised if alert.reason == "error_rate"]
        assert len(rates) == 2

    def test_repeated_memory_breaches(self, subject: Callable[..., Subject]) -> None:
        """Three attempts stopped by the memory limit within a minute raise one high alert; the
        input's size (the caller's doing) raises none."""
        world = subject(max_attempts=1, breaker={"failure_threshold": 1000})
        breach = ResourceLimitExceeded(resource="memory", used=2, limit=1)
        world.mood.plan = [breach] * 4 + [ResourceLimitExceeded(resource="input")] * 3
        for value in range(7):
            with pytest.raises(ContextualError):
                world.call("work", value)
        limits = [alert for alert in world.host.alerts.raised if alert.reason == "resource_limit"]
        assert len(limits) == 1
        assert limits[0].severity is Severity.HIGH
        assert limits[0].details["resource"] == "memory"

    def test_a_rate_below_the_threshold_is_not_read_again_each_failure(self) -> None:
        """Within a second, a failure reads the plugin's window again only when the failures
        since the last reading could have brought the rate to the threshold (reading it sums
        every function's counts of every thread: 50 functions, 350 µs a failure): the alert
        still fires at the very failure that brings the rate to the threshold."""
        now = [100.0]
        tally = CallTally()
        metrics = MetricsReporter(tally)
        alerts = AlertReporter(lambda: now[0], tally=tally, threshold=0.5, min_calls=10)
        reads: list[str] = []
        window = tally.window

        def counted(plugin: str, at: float, seconds: int) -> tuple[int, int]:
            reads.append(plugin)
            return window(plugin, at, seconds)

        tally.window = counted  # type: ignore[method-assign]

        def finish(number: int, failed: bool) -> None:
            record = _finished(number, f"f{number % 50}", now[0], failed)
            metrics.wasm_plugins_report(record)
            if failed:
                alerts.wasm_plugins_report(record)

        for number in range(100):
            finish(number, failed=False)
        for number in range(99):
            finish(100 + number, failed=True)
        assert list(alerts.raised) == []  # 99 of 199: below one half
        assert len(reads) == 1  # the first failure's reading bounds the next 98
        finish(199, failed=True)
        (alert,) = alerts.raised
        assert (alert.reason, alert.details["calls"], alert.details["failures"]) == (
            "error_rate",
            200,
            100,
        )
        assert len(reads) == 2
        now[0] += 1  # a new second: the window moved, the next failure reads it
        finish(200, failed=True)
        assert len(reads) == 3

    @given(
        steps=st.lists(
            st.tuples(
                st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.0, 30.0]),
                st.booleans(),
                st.integers(0, 3),
            ),
            max_size=120,
        )
    )
    def test_the_alert_fires_as_if_it_read_the_window_every_failure(
        self, steps: list[tuple[float, bool, int]]
    ) -> None:
        """Against an alert rule that reads the window on every failure: the same alerts, at
        the same calls, with the same counts."""

        class Reading(AlertReporter):
            def wasm_plugins_report(self, record: Report) -> None:
                self._below.clear()
                super().wasm_plugins_report(record)

        now = [1000.0]
        pairs = []
        for kind in (AlertReporter, Reading):
            tally = CallTally()
            pairs.append((MetricsReporter(tally), kind(lambda: now[0], tally=tally, min_calls=4)))
        for number, (wait, failed, function) in enumerate(steps):
            now[0] += wait
            record = _finished(number, f"f{function}", now[0], failed)
            for metrics, alerts in pairs:
                metrics.wasm_plugins_report(record)
                if failed:
                    alerts.wasm_plugins_report(record)
            raised = [
                [
                    (a.time, a.reason, a.details["calls"], a.details["failures"])
                    for a in alerts.raised
                ]
                for _, alerts in pairs
            ]
            assert raised[0] == raised[1]

    def test_breaches_far_apart_raise_nothing(self) -> None:
        """Breaches spread wider than the window are not repeated breaches."""
        now = [0.0]
        alerts = AlertReporter(lambda: now[0], breaches=3, breach_window=60.0)
        for time in (0.0, 50.0, 100.0, 150.0):
            error = ResourceLimitExceeded(resource="fuel")
            alerts.wasm_plugins_report(Report("attempt_failed", "p", "f", 1, time, error=error))
        assert list(alerts.raised) == []

    def test_a_channel_that_raises_spoils_only_itself(
        self, subject: Callable[..., Subject]
    ) -> None:
        """An alert hook that raises is logged; the other channels still get the alert."""

        class Broken:
            @hookimpl
            def wasm_plugins_alert(self, alert: Alert) -> None:
                raise RuntimeError("pager down")

        world = subject(max_attempts=1)
        channel = Alerts()
        world.host.register_policy(channel, name="pager")
        world.host.register_policy(Broken(), name="broken")
        world.mood.plan = [SecurityViolation(violation_type="capability_denied")]
        with pytest.raises(ContextualError):
            world.call("work", 1)
        assert len(channel.seen) == 1

    def test_the_log_is_the_built_in_channel(self, subject: Callable[..., Subject]) -> None:
        """The built-in channel writes the alert at the level of its severity."""
        seen: list[tuple[str, dict[str, Any]]] = []
        logger.enable("wasm_plugins")
        sink = logger.add(
            lambda message: seen.append((message.record["level"].name, message.record["extra"])),
            level="DEBUG",
        )
        try:
            world = subject(max_attempts=1)
            world.mood.plan = [SecurityViolation(violation_type="capability_denied")]
            with pytest.raises(ContextualError):
                world.call("work", 1)
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        alerts = [(level, extra) for level, extra in seen if "alert" in extra]
        assert [(level, extra["severity"]) for level, extra in alerts] == [("CRITICAL", "critical")]


class TestCallPath:
    def test_a_successful_call_takes_no_lock(self, wasmtime_engine: Engine) -> None:
        """Threads calling at once do not queue on the host: once its route, its sandbox and
        the thread's counters are made, a successful call takes no lock."""
        lock_types = (type(threading.Lock()), type(threading.RLock()))
        taken: list[str] = []

        def watch(frame: Any, event: str, argument: Any) -> None:
            if event == "c_call" and isinstance(getattr(argument, "__self__", None), lock_types):
                taken.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")

        echo = ROOT / "hostapi" / "examples" / "echo.wat"
        with PluginHost(engine=wasmtime_engine.name, blocked=(), module_cache=False) as host:
            host.load({"name": "echo", "module": {"path": str(echo)}})
            assert host.call("echo", "echo", {"n": 1}) == {"n": 1}
            sys.setprofile(watch)
            try:
                value = host.call("echo", "echo", {"n": 2})
            finally:
                sys.setprofile(None)
        assert value == {"n": 2}
        assert taken == []

    def test_no_attempt_object_for_the_built_in_attempt(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The built-in attempt takes the call: no Attempt is made for it; a wrapper that takes
        one gets one."""
        made: list[int] = []
        original = CallPipeline._make_attempt

        def counting(self: CallPipeline, call: Any) -> Any:
            made.append(call.attempt)
            return original(self, call)

        monkeypatch.setattr(CallPipeline, "_make_attempt", counting)
        world = Subject(wasmtime_engine)
        try:
            world.call("work", 1)
            assert made == []
            seen: list[Any] = []

            class Watch:
                @hookimpl(wrapper=True)
                def wasm_plugins_attempt(self, attempt: Any) -> Any:
                    seen.append(attempt.number)
                    return (yield)

            world.host.register_policy(Watch(), name="watch")
            assert world.call("work", 2).value == 2
            assert (made, seen) == ([1], [1])
        finally:
            world.host.close()


def test_stats_command_prints_the_demo_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``wasm-plugins stats demo`` runs the demo quietly and prints a row per function."""
    status = main(["stats", "demo"])
    output = capsys.readouterr().out
    assert status == 0
    assert "forecast" in output and "today" in output
    assert output.splitlines()[2].split()[:3] == ["plugin", "function", "calls"]
