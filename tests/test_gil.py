"""When a wasmtime guest call keeps the GIL (``wasm_plugins.engine._gil``): short calls while other
threads call guests too; a kept call that runs long still lets other threads in, and the next
call releases the GIL again."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from wasm_plugins.engine import Engine, _wasmtime
from wasm_plugins.engine._epoch import TICK
from wasm_plugins.engine._gil import FORGET, KEPT, KEPT_TICKS, LOOK_EVERY, RECENT, Callers
from wasm_plugins.errors import DeadlineExceeded
from wasm_plugins.sandbox import Limits, Sandbox

WAIT = 60.0
"""Seconds a test waits for what must happen (only a broken implementation waits that long)."""

ECHO_AND_WORK = (EXAMPLES / "echo.wat").read_text().rstrip().removesuffix(")") + (
    '  (func (export "work") (param $count i32) (param i32) (result i64)\n'
    "    (loop $again\n"
    "      (local.set $count (i32.sub (local.get $count) (i32.const 1)))\n"
    "      (br_if $again (i32.gt_s (local.get $count) (i32.const 0))))\n"
    "    (i64.const 0))\n"
    '  (func (export "spin") (param i32 i32) (result i64)\n'
    "    (loop $forever (br $forever))\n"
    "    (i64.const 0))\n)\n"
)
"""The echo plugin with a function that counts its first argument down, and one that never
returns."""


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _in_thread(action: Any) -> Any:
    """``action()`` on a thread of its own, which then ends; its result."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(action()))
    thread.start()
    thread.join(WAIT)
    return results[0]


def _instance(sandbox: Sandbox) -> Any:
    """This thread's instance of the sandbox."""
    return sandbox._state().session.instance


class TestCallers:
    def test_another_thread_counts_while_its_look_is_recent(self) -> None:
        callers = Callers()
        assert not _in_thread(lambda: callers.others(100.0))  # alone
        assert callers.others(100.0 + RECENT / 2)
        assert not callers.others(100.0 + RECENT * 2)

    def test_a_thread_that_stopped_looking_is_forgotten(self) -> None:
        callers = Callers()
        _in_thread(lambda: callers.others(100.0))
        callers.others(100.0 + FORGET * 2)
        assert len(callers._seen) == 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, wasmtime_engine: Engine) -> _Clock:
    """A clock that stands still (every look finds its call short and the others recent), and
    an engine whose threads of earlier tests are forgotten."""
    clock = _Clock(100.0)
    monkeypatch.setattr("wasm_plugins.engine._wasmtime.time.monotonic", clock)
    monkeypatch.setattr(wasmtime_engine.ticker(False), "callers", Callers())  # type: ignore[attr-defined]
    return clock


class TestKeepingTheGil:
    def test_short_calls_keep_it_while_another_thread_calls(
        self, wasmtime_engine: Engine, clock: _Clock
    ) -> None:
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)

        def calls() -> bool:
            for n in range(LOOK_EVERY):
                assert sandbox.call("echo", {"n": n}) == {"n": n}
            return bool(_instance(sandbox)._keeps_gil)

        assert not _in_thread(calls)  # alone so far
        assert calls()
        instance = _instance(sandbox)
        assert instance._guest_call is _wasmtime._call_keeping
        # Its calls still answer, and a look when no other thread called lately releases it.
        clock.now += RECENT * 2
        assert not calls()
        assert instance._guest_call is _wasmtime._call_unchecked

    def test_one_thread_alone_never_keeps_it(self, wasmtime_engine: Engine, clock: _Clock) -> None:
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)
        for n in range(3 * LOOK_EVERY):
            sandbox.call("echo", {"n": n})
        assert not _instance(sandbox)._keeps_gil

    def test_a_plugin_with_wasi_never_keeps_it(
        self, wasmtime_engine: Engine, clock: _Clock
    ) -> None:
        """WASI's functions are the engine's own: one may block (a sleep in ``poll_oneoff``)
        with no deadline callback to run while it does, and the GIL would stay taken."""
        wat = ECHO_AND_WORK.replace(
            "(module",
            '(module\n  (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))',
            1,
        )
        sandbox = Sandbox(wat, engine=wasmtime_engine, capabilities={"wasi"})

        def calls() -> bool:
            for n in range(2 * LOOK_EVERY):
                assert sandbox.call("echo", {"n": n}) == {"n": n}
            return bool(_instance(sandbox)._keeps_gil)

        assert not _in_thread(calls)
        assert not calls()

    def test_a_watched_instance_releases_it(self, wasmtime_engine: Engine) -> None:
        """A caller's cancellation replaces the never-set event a kept instance watches."""
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)
        sandbox.call("echo", {"n": 0})
        instance = _instance(sandbox)
        instance._keep_gil(True)
        assert instance._cancelled is KEPT
        instance.watch(threading.Event())
        assert not instance._keeps_gil
        assert instance._guest_call is _wasmtime._call_unchecked


class TestTheDeadlineOfAnInstanceThatKeepsIt:
    def test_is_set_once_a_tick_not_left_to_the_callback(
        self, wasmtime_engine: Engine, clock: _Clock, epoch_deadlines: list[int]
    ) -> None:
        """A deadline that passed between calls would run the callback (Python) as the next
        call enters: it is set afresh for the calls of the next tick (a C call)."""
        set_ticks = epoch_deadlines
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)
        sandbox.call("echo", {"n": 0})
        _instance(sandbox)._keep_gil(True)
        set_ticks.clear()
        for n in range(50):
            assert sandbox.call("echo", {"n": n}) == {"n": n}
        assert set_ticks == [KEPT_TICKS]
        clock.now += TICK
        sandbox.call("echo", {"n": 50})
        assert set_ticks == [KEPT_TICKS, KEPT_TICKS]


class TestALongCallThatKeptIt:
    def test_other_threads_run_during_it_and_the_next_call_releases_it(
        self, wasmtime_engine: Engine
    ) -> None:
        """The deadline callback runs every tick on the calling thread: a thread that waits for
        the GIL gets it there, as it would from a thread running Python."""
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)
        sandbox.call("echo", {"n": 0})
        instance = _instance(sandbox)
        work = instance.export_function("work")
        # Enough work for 0.3 s or more, whatever the machine.
        started = time.monotonic()
        instance.call_abi(work, 10_000_000, 0)
        count = min(2**31 - 1, int(10_000_000 * 0.3 / max(time.monotonic() - started, 1e-6)))
        instance._keep_gil(True)
        assert instance._guest_call is _wasmtime._call_keeping
        ran: list[float] = []
        stop = threading.Event()

        def other() -> None:
            while not stop.is_set():
                ran.append(time.monotonic())

        thread = threading.Thread(target=other)
        thread.start()
        try:
            while not ran:  # the other thread wants the GIL from now on
                time.sleep(0.001)
            started = time.monotonic()
            instance.call_abi(work, count, 0)
            ended = time.monotonic()
        finally:
            stop.set()
            thread.join(WAIT)
        # In the middle of the call: not a switch just before the guest started or after it
        # returned (a switch interval is 5 ms).
        third = (ended - started) / 3
        assert any(started + third < when < ended - third for when in ran)
        assert instance._long_call
        assert instance.call_abi(work, 1, 0) == 0
        assert not instance._keeps_gil
        assert instance._guest_call is _wasmtime._call_unchecked

    def test_ctrl_c_in_the_callback_is_raised_as_it_came(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The callback runs Python on the calling thread: on the main thread, the signal
        handler of a Ctrl-C runs there. The guest stops, and the call raises the
        KeyboardInterrupt, not a cancellation the caller would take for the plugin's."""
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine)
        sandbox.call("echo", {"n": 0})
        _instance(sandbox)._keep_gil(True)

        def interrupted(instance: Any) -> str | None:
            raise KeyboardInterrupt

        monkeypatch.setattr(_wasmtime.WasmtimeInstance, "_deadline_reached", interrupted)
        with pytest.raises(KeyboardInterrupt):
            sandbox.call("spin")
        monkeypatch.undo()
        assert sandbox.call("echo", {"n": 1}) == {"n": 1}

    def test_its_timeout_still_ends_it(self, wasmtime_engine: Engine) -> None:
        sandbox = Sandbox(ECHO_AND_WORK, engine=wasmtime_engine, limits=Limits(timeout=0.05))
        sandbox.call("echo", {"n": 0})
        _instance(sandbox)._keep_gil(True)
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        assert sandbox.call("echo", {"n": 1}) == {"n": 1}
