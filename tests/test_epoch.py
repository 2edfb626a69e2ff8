"""The epoch ticker behind wasmtime timeouts: absolute deadlines counted from the timer's phase,
and a timer that is not started and stopped around every call.

The clock is injected (``time.monotonic`` of the ticker's module), so no test waits for a tick.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from wasm_plugins.engine import Engine, _wasmtime
from wasm_plugins.engine._epoch import IDLE, TICK, EpochTicker
from wasm_plugins.errors import DeadlineExceeded
from wasm_plugins.sandbox import Limits, Sandbox


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Engine:
    """Stands in for a wasmtime engine: counts the epoch's increments."""

    def __init__(self) -> None:
        self.epoch = 0

    def increment_epoch(self) -> None:
        self.epoch += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock(100.0)
    monkeypatch.setattr("wasm_plugins.engine._epoch.time.monotonic", clock)
    return clock


def _running(ticker: EpochTicker, origin: float, native: bool = True) -> None:
    """The ticker as if its native timer had started at ``origin``."""
    ticker.running = True
    ticker._origin = origin
    ticker._increment = 1 if native else None


class TestTicksUntil:
    def test_a_stopped_timer_counts_whole_ticks_from_its_start(self, clock: _Clock) -> None:
        """The timer starts when the call enters, so its first tick is a full TICK away: a
        10 ms deadline is 5 ticks of 2 ms, with no tick added on top."""
        ticker = EpochTicker(_Engine(), None)
        assert ticker.ticks_until(clock.now + 5 * TICK) == 5
        assert ticker.ticks_until(clock.now + 5.5 * TICK) == 6

    def test_a_running_timer_counts_from_its_phase(self, clock: _Clock) -> None:
        """With the timer running since ``origin``, the deadline ends at the first tick due at
        or after it: neither earlier (a tick that comes at once) nor a tick later."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0)
        clock.now = 100.0 + 1.55 * TICK  # tick 1 delivered, tick 2 due at 2 * TICK
        deadline = clock.now + 5 * TICK  # 6.55 ticks after origin: tick 7 is the first after
        assert ticker.ticks_until(deadline) == 7 - 1

    def test_a_tick_just_due_counts_as_not_yet_delivered(self, clock: _Clock) -> None:
        """Just after a tick is due its increment may still be on its way: the deadline is then
        counted as if it were not, ending at worst one tick late, never one early."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0)
        clock.now = 100.0 + 2 * TICK + 0.0001
        deadline = 100.0 + 7 * TICK
        assert ticker.ticks_until(deadline) == 7 - 1

    def test_where_a_callback_corrects_an_early_deadline_a_tick_due_counts_as_delivered(
        self, clock: _Clock
    ) -> None:
        """A store whose deadline callback gives the guest the rest of its time when its
        deadline comes early takes a tick just due as delivered: it costs a callback when the
        tick was still on its way, where counting it pending ends every deadline armed just
        after a tick a whole tick late (each call after a timeout is armed so: the timeout
        came with a tick)."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0)
        clock.now = 100.0 + 2 * TICK + 0.0001
        deadline = 100.0 + 7 * TICK
        assert ticker.ticks_until(deadline, early=True) == 7 - 2
        assert ticker.ticks_until(deadline) == 7 - 1

    def test_a_python_thread_ticker_always_allows_for_a_late_tick(self, clock: _Clock) -> None:
        """A Python thread may wait for the GIL: its last tick is never taken as delivered."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0, native=False)
        clock.now = 100.0 + 1.55 * TICK
        assert ticker.ticks_until(100.0 + 7 * TICK) == 7


class TestIdleStop:
    def test_stops_once_no_timed_call_ran_for_a_while(
        self, clock: _Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The watcher stops the timer after a whole IDLE period without a timed call, not while
        a call is in flight nor right after one."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0, native=False)
        ticker.in_flight, ticker.called = [None], True
        periods: list[float] = []

        def sleep(seconds: float) -> None:
            periods.append(seconds)
            if len(periods) == 2:  # the call in flight returned, another came and went
                ticker.in_flight.pop()
                ticker.called = True

        monkeypatch.setattr("wasm_plugins.engine._epoch.time.sleep", sleep)
        ticker._stop_when_idle()
        assert periods == [IDLE] * 3
        assert not ticker.running


class TestTimedCalls:
    def test_the_timer_is_started_once_for_many_calls(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Successful calls with a timeout do not start and stop the timer each: a system call
        each way costs more than a small call."""
        sandbox = Sandbox(EXAMPLES / "echo.wat", engine=wasmtime_engine, limits=Limits(timeout=5))
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        starts: list[Any] = []
        start = ticker._start
        monkeypatch.setattr(ticker, "_start", lambda: starts.append(1) or start())
        for _ in range(50):
            assert sandbox.call("echo", {"n": 1}) == {"n": 1}
        assert len(starts) <= 1


class TestEnteringTakesNoLock:
    def test_a_call_entering_as_the_timer_stops_keeps_it_running(
        self, clock: _Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Entering a timed call takes no lock: a call that enters between the watcher's look and
        its stop may have seen the timer running, so the watcher looks again and keeps it."""
        ticker = EpochTicker(_Engine(), None)
        _running(ticker, origin=100.0, native=False)

        class _EntersOnSecondLook(list[None]):
            looks = 0

            def __len__(self) -> int:
                self.looks += 1
                return 0 if self.looks == 1 else 1

        entering = _EntersOnSecondLook()
        ticker.in_flight = entering
        ticker.called = False
        generation = ticker.generation
        running_while_asleep: list[bool] = []

        def sleep(seconds: float) -> None:
            running_while_asleep.append(ticker.running)
            if len(running_while_asleep) == 2:
                ticker.in_flight = []  # the call returned; none came since
                ticker.called = False

        monkeypatch.setattr("wasm_plugins.engine._epoch.time.sleep", sleep)
        ticker._stop_when_idle()
        assert entering.looks == 2
        assert running_while_asleep == [True, True]
        assert not ticker.running
        assert ticker.generation == generation + 1

    def test_the_first_call_after_a_stop_starts_the_timer_again(self, clock: _Clock) -> None:
        """A stop and a start each change the ticker's generation: a deadline counted in the
        ticks of one run of the timer is not taken for one of the next."""
        ticker = EpochTicker(_Engine(), None)
        starts: list[int] = []
        ticker._start = lambda: starts.append(ticker.generation)  # type: ignore[method-assign]
        with ticker:
            pass
        assert starts == [ticker.generation]
        with ticker:
            pass
        assert len(starts) == 2  # the fake start left it stopped


ECHO_AND_SPIN = (EXAMPLES / "echo.wat").read_text().rstrip().removesuffix(")") + (
    '  (func (export "spin") (param i32 i32) (result i64)\n'
    "    (loop $forever (br $forever))\n"
    "    (i64.const 0))\n)\n"
)
"""The echo plugin with a function that never returns."""


class TestKeptDeadline:
    """A deadline set a moment ago still holds for the next call: the store's deadline is not
    set again (a C call) for each of many small calls."""

    @pytest.fixture
    def deadlines(self, epoch_deadlines: list[int]) -> list[int]:
        return epoch_deadlines

    def _warm(self, wasmtime_engine: Engine, timeout: float = 5.0) -> Sandbox:
        sandbox = Sandbox(ECHO_AND_SPIN, engine=wasmtime_engine, limits=Limits(timeout=timeout))
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        with ticker._lock:  # started by an earlier test, its phase would be the real clock's
            ticker._stop()
        assert sandbox.call("echo", {"n": 0}) == {"n": 0}  # the timer runs from here on
        return sandbox

    def test_calls_within_a_tick_keep_the_deadline(
        self, wasmtime_engine: Engine, clock: _Clock, deadlines: list[int]
    ) -> None:
        sandbox = self._warm(wasmtime_engine)
        sandbox.call("echo", {"n": 1})  # armed by a running timer
        armed = len(deadlines)
        for n in range(50):
            clock.now += TICK / 100
            assert sandbox.call("echo", {"n": n}) == {"n": n}
        # At most once more, should the timer have stopped and started in between.
        assert len(deadlines) - armed <= 1

    def test_a_tick_later_the_deadline_is_set_again(
        self, wasmtime_engine: Engine, clock: _Clock, deadlines: list[int]
    ) -> None:
        """A kept deadline loses at most the tick it was kept for: never later than this call's
        start plus its timeout (and the tick the timer's phase may add)."""
        sandbox = self._warm(wasmtime_engine)
        sandbox.call("echo", {"n": 1})
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        clock.now += TICK
        deadlines.clear()
        sandbox.call("echo", {"n": 2})
        assert deadlines == [ticker.ticks_until(clock.now + 5.0)]

    def test_a_call_armed_just_after_a_tick_counts_it_delivered(
        self, wasmtime_engine: Engine, clock: _Clock, deadlines: list[int]
    ) -> None:
        """The store has a deadline callback, which corrects a deadline that comes early."""
        sandbox = self._warm(wasmtime_engine, timeout=0.01)
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        clock.now = ticker._origin + 1000 * TICK + 0.0001
        deadlines.clear()
        sandbox.call("echo", {"n": 1})
        assert deadlines == [ticker.ticks_until(clock.now + 0.01, early=True)]
        assert deadlines != [ticker.ticks_until(clock.now + 0.01)]

    def test_a_deadline_that_comes_early_gives_the_guest_the_rest(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Should a tick counted delivered still be on its way, the store's deadline comes a
        tick early: the callback finds the time not up, and the guest runs to its timeout."""
        ticker = wasmtime_engine.ticker(False)  # type: ignore[attr-defined]
        counted = ticker.ticks_until
        looks: list[tuple[str | None, float]] = []

        def one_tick_until_a_look(deadline: float, *, early: bool = False) -> int:
            return counted(deadline, early=early) if looks else 1

        monkeypatch.setattr(ticker, "ticks_until", one_tick_until_a_look)
        reached = _wasmtime.WasmtimeInstance._deadline_reached

        def noted(instance: Any) -> str | None:
            why = reached(instance)
            looks.append((why, time.monotonic() - instance._armed_at))
            return why

        monkeypatch.setattr(_wasmtime.WasmtimeInstance, "_deadline_reached", noted)
        sandbox = Sandbox(ECHO_AND_SPIN, engine=wasmtime_engine, limits=Limits(timeout=0.05))
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        assert looks[0][0] is None
        assert looks[-1][0] == "timeout"
        assert looks[-1][1] >= 0.05

    def test_the_rest_after_an_early_deadline_is_read_on_the_adapters_clock(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The callback asks for the rest of the timeout as a duration on the adapter's clock,
        the one the call's start was read on, not as an instant on the ticker's: with the two
        apart (a test's clock, here a second ahead), the guest would run a second more."""

        class _Ahead:
            @staticmethod
            def monotonic() -> float:
                return time.monotonic() + 1.0

        monkeypatch.setattr(_wasmtime, "time", _Ahead)
        ticker = wasmtime_engine.ticker(False)  # type: ignore[attr-defined]
        counted = ticker.ticks_until
        looked = []
        asked_after: list[int] = []

        def one_tick_until_a_look(deadline: float, *, early: bool = False) -> int:
            if not looked:
                return 1
            asked_after.append(counted(deadline, early=early))
            return asked_after[-1]

        reached = _wasmtime.WasmtimeInstance._deadline_reached

        def noted(instance: Any) -> str | None:
            looked.append(instance)
            return reached(instance)

        monkeypatch.setattr(ticker, "ticks_until", one_tick_until_a_look)
        monkeypatch.setattr(_wasmtime.WasmtimeInstance, "_deadline_reached", noted)
        sandbox = Sandbox(ECHO_AND_SPIN, engine=wasmtime_engine, limits=Limits(timeout=0.05))
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        assert asked_after
        assert max(asked_after) <= counted(time.monotonic() + 0.05) + 1

    def test_a_timer_started_again_sets_the_deadline_again(
        self, wasmtime_engine: Engine, clock: _Clock, deadlines: list[int]
    ) -> None:
        sandbox = self._warm(wasmtime_engine)
        sandbox.call("echo", {"n": 1})
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        ticker.generation += 2  # as if the timer stopped and started since
        deadlines.clear()
        sandbox.call("echo", {"n": 2})
        assert len(deadlines) == 1

    def test_short_timeouts_are_set_for_every_call(
        self, wasmtime_engine: Engine, clock: _Clock, deadlines: list[int]
    ) -> None:
        """A deadline of a tick or two kept for a later call would already be due as it enters
        (a callback into Python then): it is set each time."""
        sandbox = self._warm(wasmtime_engine, timeout=TICK)
        deadlines.clear()
        for n in range(5):
            sandbox.call("echo", {"n": n})
        assert len(deadlines) == 5

    def test_an_endless_loop_after_many_calls_still_times_out(
        self, wasmtime_engine: Engine
    ) -> None:
        sandbox = self._warm(wasmtime_engine, timeout=0.05)
        for n in range(200):
            sandbox.call("echo", {"n": n})
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")

    def test_an_endless_loop_after_the_timer_stopped_still_times_out(
        self, wasmtime_engine: Engine
    ) -> None:
        """After a long idle gap the watcher has stopped the timer: the next call starts it,
        and its deadline counts the new run's ticks."""
        sandbox = self._warm(wasmtime_engine, timeout=0.05)
        ticker = sandbox.loaded.engine.ticker(False)  # type: ignore[attr-defined]
        with ticker._lock:
            ticker._stop()
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        assert sandbox.call("echo", {"n": 1}) == {"n": 1}
