"""The epoch ticker behind wasmtime timeouts: absolute deadlines counted from the timer's phase,
and a timer that is not started and stopped around every call.

The clock is injected (``time.monotonic`` of the ticker's module), so no test waits for a tick.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import EXAMPLES
from wasm_plugins.engine import Engine
from wasm_plugins.engine._epoch import IDLE, TICK, EpochTicker
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
    ticker._running = True
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
        ticker._entered, ticker._active = 3, 1
        periods: list[float] = []

        def sleep(seconds: float) -> None:
            periods.append(seconds)
            if len(periods) == 2:  # the call in flight returned, another came and went
                ticker._active = 0
                ticker._entered += 1

        monkeypatch.setattr("wasm_plugins.engine._epoch.time.sleep", sleep)
        ticker._stop_when_idle()
        assert periods == [IDLE] * 3
        assert not ticker._running


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
