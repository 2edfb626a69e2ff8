"""Tests of the threads that run a host's awaited calls (``wasm_plugins._async_calls``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wasm_plugins._async_calls import BLOCKED, STALL, AsyncCalls, AwaitedCall, _Worker
from wasm_plugins.provider import Cancellation, _calling

WAIT = 60.0
"""Seconds a test waits for what must happen (only a broken implementation waits that long)."""

_request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


@pytest.fixture
def calls() -> Iterator[AsyncCalls]:
    made = AsyncCalls("test")
    yield made
    made.close(WAIT)


def _counting_wake_ups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Count the loop's wake-ups from other threads (``call_soon_threadsafe``)."""
    count = [0]
    original = loop.call_soon_threadsafe

    def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    return count


def _waiting_for_cancel(running: threading.Event, tokens: list[Cancellation]) -> Callable[[], bool]:
    """A call that notes its Cancellation, says it runs, and waits until it is cancelled."""

    def wait_for_cancel() -> bool:
        tokens.append(_calling.token)
        running.set()
        return bool(_calling.token.cancelled.wait(WAIT))

    return wait_for_cancel


class TestAsyncCalls:
    def test_a_batch_of_answers_wakes_the_loop_once(self, calls: AsyncCalls) -> None:
        """Calls that finish while the loop is busy are answered by one wake-up, not one each."""
        queued = threading.Event()
        finished = threading.Event()

        def first() -> int:
            queued.wait(WAIT)
            return 0

        def last() -> int:
            finished.set()
            return 49

        async def main() -> tuple[list[int], int]:
            wake_ups = _counting_wake_ups(asyncio.get_running_loop())
            thunks = [first] + [lambda i=i: i for i in range(1, 49)] + [last]
            gathered = asyncio.gather(*(calls.run(thunk) for thunk in thunks))
            await asyncio.sleep(0)  # every call is queued once each task has taken a step
            queued.set()
            # The loop stays busy (blocked here) until the last call has finished.
            assert finished.wait(WAIT)
            return await gathered, wake_ups[0]

        answers, wake_ups = asyncio.run(main())
        assert answers == list(range(50))
        assert wake_ups == 1

    def test_short_calls_share_one_thread(self, calls: AsyncCalls) -> None:
        """Many short calls at once run on one thread: more threads would only contend for
        the GIL."""
        seen: set[int] = set()

        def note() -> None:
            seen.add(threading.get_ident())

        async def main() -> None:
            await asyncio.gather(*(calls.run(note) for _ in range(500)))

        asyncio.run(main())
        assert len(seen) == 1
        assert calls.threads() == 1

    def test_a_long_call_does_not_hold_up_the_others(self, calls: AsyncCalls) -> None:
        """A call that holds its thread while others wait makes another thread start: the
        first call here only ends once a later one has run."""
        later_ran = threading.Event()

        async def main() -> list[bool]:
            first = asyncio.ensure_future(calls.run(lambda: later_ran.wait(WAIT)))
            await asyncio.sleep(0)
            second = calls.run(later_ran.set)
            return list(await asyncio.gather(first, second))

        assert asyncio.run(main()) == [True, None]
        assert calls.threads() == 2

    def test_the_callers_context_goes_with_the_call(self, calls: AsyncCalls) -> None:
        async def main() -> list[str]:
            async def one(name: str) -> str:
                _request.set(name)
                return await calls.run(_request.get)

            return list(await asyncio.gather(one("a"), one("b")))

        assert asyncio.run(main()) == ["a", "b"]

    def test_errors_arrive_as_raised(self, calls: AsyncCalls) -> None:
        error = KeyError("missing")

        def fail() -> None:
            raise error

        async def main() -> None:
            with pytest.raises(KeyError) as raised:
                await calls.run(fail)
            assert raised.value is error
            with pytest.raises(RuntimeError, match="StopIteration"):
                await calls.run(lambda: next(iter(())))

        asyncio.run(main())

    def test_cancelling_the_task_cancels_the_running_call(self, calls: AsyncCalls) -> None:
        """The call runs under a Cancellation that the awaiting task's cancellation sets."""
        running = threading.Event()
        tokens: list[Cancellation] = []
        wait_for_cancel = _waiting_for_cancel(running, tokens)

        async def main() -> None:
            task = asyncio.ensure_future(calls.run(wait_for_cancel))
            while not running.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert tokens[0].cancelled.wait(WAIT)
        # The thread is free again: the next call runs.
        assert asyncio.run(calls.run(lambda: "next")) == "next"

    def test_an_answer_for_a_closed_loop_is_dropped(self, calls: AsyncCalls) -> None:
        release = threading.Event()
        answered = threading.Event()

        def slow() -> str:
            release.wait(WAIT)
            return "late"

        pending: list[asyncio.Future[Any]] = []

        async def start() -> None:
            pending.append(asyncio.ensure_future(calls.run(slow)))
            await asyncio.sleep(0)

        loop = asyncio.new_event_loop()
        # The task is left pending with its loop: the loop says so when it is collected.
        loop.set_exception_handler(lambda loop, context: None)
        loop.run_until_complete(start())
        loop.close()
        release.set()
        # The thread survives the closed loop and serves the next call.
        assert asyncio.run(calls.run(lambda: answered.set() or "next")) == "next"
        assert answered.is_set()

    def test_closing_ends_the_threads_and_a_later_call_starts_one(self, calls: AsyncCalls) -> None:
        asyncio.run(calls.run(lambda: None))
        assert calls.threads() == 1
        calls.close(WAIT)
        assert calls.threads() == 0
        assert asyncio.run(calls.run(lambda: "again")) == "again"

    def test_calls_build_no_cancellation_of_their_own(self, calls: AsyncCalls) -> None:
        """A thread's Cancellation serves its calls one after another (building one costs more
        than a tiny call's own overhead); a call cancelled leaves a fresh one to the next."""
        tokens: list[Cancellation | None] = []

        def note() -> None:
            tokens.append(_calling.token)

        async def main() -> None:
            await asyncio.gather(*(calls.run(note) for _ in range(50)))

        asyncio.run(main())
        assert len({id(token) for token in tokens}) == 1
        assert tokens[0] is not None
        assert not tokens[0].cancelled.is_set()

    def test_cancelling_a_finished_call_leaves_the_next_one_alone(self, calls: AsyncCalls) -> None:
        """The awaiting task of a call that has finished but whose answer the loop has not yet
        taken is cancelled while the thread runs the next call: the next call is not stopped."""
        first_done = threading.Event()
        second_running = threading.Event()
        release_second = threading.Event()
        seen: list[bool] = []

        def first() -> str:
            first_done.set()
            return "first"

        def second() -> str:
            second_running.set()
            release_second.wait(WAIT)
            seen.append(_calling.token.cancelled.is_set())
            return "second"

        async def main() -> str:
            first_task = asyncio.ensure_future(calls.run(first))
            second_task = asyncio.ensure_future(calls.run(second))
            await asyncio.sleep(0)  # both calls are queued
            # The loop stays busy (blocked here) while the thread finishes the first call and
            # starts the second: the first answer is not taken yet.
            assert first_done.wait(WAIT)
            assert second_running.wait(WAIT)
            first_task.cancel()
            release_second.set()
            with pytest.raises(asyncio.CancelledError):
                await first_task
            return await second_task

        assert asyncio.run(main()) == "second"
        assert seen == [False]

    def test_a_call_cancelled_before_it_starts_runs_cancelled(self, calls: AsyncCalls) -> None:
        """A call whose task is cancelled while it waits for a thread runs under a set
        Cancellation (its attempts end at once, and the hooks see it cancelled); the call after
        it runs under a clear one."""
        release = threading.Event()
        seen: list[tuple[str, bool]] = []

        def blocker() -> None:
            release.wait(WAIT)

        def note(name: str) -> None:
            seen.append((name, _calling.token.cancelled.is_set()))

        async def main() -> None:
            blocking = asyncio.ensure_future(calls.run(blocker))
            waiting = asyncio.ensure_future(calls.run(lambda: note("cancelled")))
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            release.set()
            await blocking
            await calls.run(lambda: note("next"))

        asyncio.run(main())
        assert seen == [("cancelled", True), ("next", False)]


class TestAwaitedCall:
    """What ``AsyncCalls.start`` returns: the call's future, and a coroutine."""

    def test_cancelling_the_future_itself_stops_the_running_call(self, calls: AsyncCalls) -> None:
        running = threading.Event()
        tokens: list[Cancellation] = []
        wait_for_cancel = _waiting_for_cancel(running, tokens)

        async def main() -> None:
            call = calls.start(wait_for_cancel, ())
            assert isinstance(call, AwaitedCall)
            while not running.is_set():
                await asyncio.sleep(0.001)
            assert call.cancel()
            assert not call.cancel()  # once
            with pytest.raises(asyncio.CancelledError):
                await call

        asyncio.run(main())
        assert tokens[0].cancelled.wait(WAIT)

    @pytest.mark.parametrize("end", ["close", "throw"])
    def test_ending_it_as_a_coroutine_stops_the_call(self, calls: AsyncCalls, end: str) -> None:
        """A coroutine closed or thrown into is over: its call is stopped (a task group closes
        the coroutines it is given while it aborts)."""
        running = threading.Event()
        stopped = threading.Event()

        def wait_for_cancel() -> None:
            running.set()
            if _calling.token.cancelled.wait(WAIT):
                stopped.set()

        async def main() -> None:
            call = calls.start(wait_for_cancel, ())
            while not running.is_set():
                await asyncio.sleep(0.001)
            if end == "close":
                call.close()
            else:
                with pytest.raises(KeyError):
                    call.throw(KeyError("thrown"))
            assert call.cancelled()

        asyncio.run(main())
        assert stopped.wait(WAIT)

    def test_a_task_steps_through_it(self, calls: AsyncCalls) -> None:
        """As a task's coroutine: the first step hands the task the future to wait for, the
        next one the answer; an error arrives as raised."""

        async def main() -> tuple[Any, BaseException | None]:
            answered = await asyncio.create_task(calls.start(lambda: "answer", ()))
            failed = asyncio.create_task(calls.start(lambda: {}["missing"], ()))
            await asyncio.wait([failed])
            return answered, failed.exception()

        answer, error = asyncio.run(main())
        assert answer == "answer"
        assert isinstance(error, KeyError)

    def test_made_outside_a_loop_it_starts_when_awaited(self, calls: AsyncCalls) -> None:
        ran: list[str] = []
        call = calls.start(ran.append, ("ran",))
        assert not isinstance(call, AwaitedCall)
        assert ran == []
        asyncio.run(call)
        assert ran == ["ran"]


class TestHeld:
    """When a thread counts as held by one call (calls waiting then start another thread)."""

    def test_a_call_that_computes_through_the_interval_holds_its_thread(self) -> None:
        worker = _Worker()
        assert worker.held((2, 1.0), (2, 1.0 + STALL), STALL)
        assert not worker.held((2, 1.0), (3, 1.0 + STALL), STALL)  # it took another call
        assert not worker.held((2, 1.0), (2, 1.0 + STALL / 4), STALL)  # it waited for a core

    def test_a_threads_first_call_holds_it_only_once_it_has_lasted_blocked(self) -> None:
        """A thread's first call makes its instance (tens of ms for a large module): a second
        thread started for that would then serve tiny calls beside it, taking turns with the
        GIL and making an instance of its own."""
        worker = _Worker()
        assert not worker.held((1, 1.0), (1, 1.0 + STALL), STALL)
        assert worker.held((1, 1.0), (1, 1.0 + STALL), BLOCKED)


class _Unwatchable:
    """A sandbox whose engine cannot stop a running guest (as on wasmer)."""

    name = "unwatchable"

    def __init__(self) -> None:
        self.watched: list[threading.Event | None] = []

    def watch(self, cancelled: threading.Event | None) -> bool:
        self.watched.append(cancelled)
        return False


class _Watchable(_Unwatchable):
    """A sandbox whose engine stops a running guest when told to (as on wasmtime)."""

    def watch(self, cancelled: threading.Event | None) -> bool:
        self.watched.append(cancelled)
        return True


class TestCancellation:
    def test_a_sandbox_stops_watching_after_each_call(self) -> None:
        cancellation = Cancellation()
        sandbox = _Watchable()
        for _ in range(2):
            cancellation._enter(sandbox)
            cancellation._leave(sandbox)
        assert sandbox.watched == [cancellation.cancelled, None] * 2

    def test_a_sandbox_keeps_watching_a_lasting_cancellation(self) -> None:
        """A thread's lasting cancellation serves its calls one after another: a sandbox asked
        to watch it is not told to stop between calls, nor asked again after a call that
        returned (its instance is the same); after a call that failed (the instance may have
        been dropped for a new one) it is asked again."""
        cancellation = Cancellation(lasting=True)
        sandbox = _Watchable()
        for failed in (False, False, True, False, False):
            cancellation._enter(sandbox)
            cancellation._leave(sandbox, failed)
        assert sandbox.watched == [cancellation.cancelled] * 2
        other = _Watchable()
        cancellation._enter(other)
        cancellation._leave(other)
        assert other.watched == [cancellation.cancelled]

    def test_a_sandbox_that_cannot_watch_a_lasting_cancellation_is_asked_once(self) -> None:
        """Whether a sandbox can watch at all holds for its instance: asked again only after a
        call that failed."""
        cancellation = Cancellation(lasting=True)
        sandbox = _Unwatchable()
        for failed in (False, False, True, False):
            cancellation._enter(sandbox)
            cancellation._leave(sandbox, failed)
        assert sandbox.watched == [cancellation.cancelled] * 2

    def test_a_cancellation_tells_who_asked_once_it_is_set(self) -> None:
        """An engine that stops a guest at its next look at the epoch asks to be told (to
        advance the epoch itself); asking twice is asking once, and asking after is told at
        once. ``on`` says what ``is_set`` says."""
        cancellation = Cancellation(lasting=True)
        told: list[str] = []

        def hook() -> None:
            told.append("first")

        signal = cancellation.cancelled
        signal.when_set(hook)
        signal.when_set(hook)
        assert told == []
        assert not signal.on
        cancellation.cancel()
        assert told == ["first"]
        assert signal.on
        assert signal.is_set()
        signal.when_set(lambda: told.append("late"))
        assert told == ["first", "late"]
        signal.clear()
        assert not signal.on
