"""Awaited calls: a host's calls from asyncio, run on threads of the host's own and answered to
each event loop in batches.

``asyncio.to_thread`` pays, per call, a ``concurrent.futures`` future chained to an asyncio one,
a hand-over through the executor's queue, and a wake-up of the event loop for each answer. Here
a call goes into one queue and its answer into one outbox per event loop. A thread takes every
call waiting before it sleeps again, and wakes the loop only when no other call waits: a loop
woken in the middle of a batch would take the GIL each time the thread releases it for a guest,
and the thread would then wait for the loop's whole turn. While it has calls out, the loop looks
at its outbox every :data:`LOOK` seconds (less often while it finds nothing), so an answer never
waits for a long call queued after it.

One thread serves the calls while they are short (more would only take turns with the GIL).
When calls wait while every thread is held by one call (see :meth:`_Worker.held`), the loop
starts another, up to :data:`MAX_THREADS`: long calls still run side by side, as they did on
the default executor. Threads keep their instances between calls (each thread has its own, see
``Sandbox``), and end after :data:`IDLE` seconds without a call. Each thread runs its calls
under one lasting ``Cancellation`` of its own (its sandboxes keep watching it between calls),
replaced only after a call it ran was cancelled.

A tiny call's hand-over costs as much as a good part of the call: a queued call is a tuple (no
object of its own), ``PluginHost.acall`` awaits its future itself (no coroutine of its own),
and a thread runs it in its own loop (no frame of its own).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import enum
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, final

from wasm_plugins.provider import Cancellation

__all__ = ["BLOCKED", "IDLE", "LOOK", "MAX_THREADS", "STALL", "AsyncCalls", "AwaitedCall"]

STALL = 0.02
"""Seconds calls may wait while every thread is held by one call, before another thread starts
(several switch intervals of 5 ms)."""
BLOCKED = 0.2
"""Seconds after which a call that computes nothing (a guest waiting in a host function) holds
its thread, as one that computes does after :data:`STALL`."""
IDLE = 10.0
"""Seconds a thread waits for a call before it ends."""
MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)
"""The most threads one host's awaited calls run on (the default executor's number)."""
LOOK = 0.005
"""Seconds between a loop's looks at the answers of its calls while answers come in (a switch
interval: each look takes the GIL from the thread running calls; 1, 5 and 20 ms measured alike
within the noise, 1 ms the slowest)."""
JOIN_AT_EXIT = 1.0
"""Seconds the interpreter's exit waits for each thread (a guest call may never end)."""


class _End(enum.Enum):
    """Why a thread is asked to end."""

    STOP = "stop"
    """Queued by :meth:`AsyncCalls.close`."""
    IDLE = "idle"
    """No call came for :data:`IDLE` seconds."""


@final
class _Outbox:
    """The answers waiting for one event loop, and what that loop knows of its calls."""

    __slots__ = ("answers", "interval", "looked", "loop", "outstanding", "scheduled", "seen")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        """Weak: the host keeps an outbox per loop, and a loop that ended must go."""
        self.answers: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self.scheduled = False
        """Whether a wake-up of the loop is on its way."""
        self.outstanding = 0
        """Calls of this loop not yet answered to it; the loop looks at the answers every
        ``interval`` seconds while there are some (0: it does not look)."""
        self.interval = 0.0
        self.seen: list[tuple[int, float]] = []
        """The threads' progress at the last look for stalled calls, made at ``looked``."""
        self.looked = 0.0

    def wake(self) -> None:
        """Called on a worker thread, an answer queued (``answers.append``) and no wake-up on
        its way: send one (it takes every answer queued before the loop drains them: the flag
        is cleared before the answers are drained)."""
        self.scheduled = True
        loop = self.loop()
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:
            # The loop is closed: nobody awaits these answers any more.
            self.answers.clear()

    def deliver(self) -> int:
        """On the loop: resolve every future answered so far; how many there were."""
        self.scheduled = False
        answers = self.answers
        count = 0
        while answers:
            future, succeeded, value = answers.popleft()
            count += 1
            if future.done():  # the awaiting task was cancelled
                continue
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)
        self.outstanding -= count
        return count


_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], contextvars.Context, _Outbox]
"""A queued call: the future its task awaits, the function and its arguments, the caller's
context, the outbox of the caller's loop (a tuple: an object of its own, built per call, costs
a good part of a tiny call's hand-over)."""


@final
class _Worker:
    __slots__ = ("cancellation", "clock", "current", "finished")

    def __init__(self) -> None:
        self.cancellation = Cancellation(lasting=True)
        """What this thread's calls run under, one after another: building one per call (an
        event, a lock) costs more than the rest of a tiny call's hand-over. A call cancelled
        leaves it set, and the next call gets a new one."""
        self.finished = 0
        """Calls this thread took: a number that stops moving means a long call."""
        self.clock: int | None = None
        """The thread's CPU-time clock, where the system has one."""
        self.current: asyncio.Future[Any] | None = None
        """The future of the call this thread runs, while it runs (cleared under the host's
        ``running`` lock, under which the loop cancels: a cancellation from the loop stops
        this call, never the next)."""

    def progress(self) -> tuple[int, float]:
        """The calls taken, and the CPU seconds the thread used (-1: unknown)."""
        clock = self.clock
        if clock is None:
            return self.finished, -1.0
        try:
            return self.finished, time.clock_gettime(clock)
        except OSError:  # the thread ended
            return self.finished, -1.0

    def held(self, before: tuple[int, float], now: tuple[int, float], elapsed: float) -> bool:
        """Whether the thread spent the ``elapsed`` seconds between two looks in one call:
        it took no other, and either computed for half that time (a thread that waited for
        the GIL or for a core did not) or the call lasted :data:`BLOCKED` seconds (a guest
        waiting in a host function computes nothing). A thread's first call makes its
        instances, which may take longer than :data:`STALL` for a large module: it holds the
        thread after :data:`BLOCKED` seconds only."""
        if now[0] != before[0]:
            return False
        if elapsed >= BLOCKED or now[1] < 0 or before[1] < 0:
            return True
        if now[0] <= 1:
            return False
        return now[1] - before[1] >= elapsed / 2


class AwaitedCall(asyncio.Future[Any], Coroutine[Any, Any, Any]):
    """A call queued for one of a host's threads (what ``PluginHost.acall`` returns): the future
    its answer resolves, and a coroutine for what takes only a coroutine.

    ``asyncio.gather``, ``asyncio.wait_for`` and ``asyncio.ensure_future`` take a future as it
    is, where they wrap a coroutine in a task: a task and its steps cost about as much as a tiny
    call. ``asyncio.create_task`` and a task group take it as a coroutine whose first step
    waits for the future (:meth:`send`). Cancelling it, directly or through the task that awaits
    it, stops the call (:meth:`AsyncCalls.cancel`); so does ending it as a coroutine
    (:meth:`throw`, :meth:`close`). The call is queued when it is made, not when it is awaited.
    """

    __slots__ = ("calls",)

    calls: AsyncCalls

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self.calls.cancel(self)
        return True

    def send(self, value: Any) -> Any:
        """One step as a coroutine: the future itself while its answer is out (the task then
        waits for it), the answer once it is in (``StopIteration``)."""
        return self.__await__().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        """An exception thrown into the coroutine ends it: the call is stopped, the exception
        raised."""
        self.cancel()
        return super().throw(typ, val, tb)

    def close(self) -> None:
        """The coroutine closed before its end (a task group that aborts closes those it was
        given): the call is stopped."""
        self.cancel()


@final
class AsyncCalls:
    """The threads that run one host's awaited calls.

    :param name: names the threads.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._running = threading.Lock()
        """Guards which thread runs which call, against a cancellation from the loop."""
        self._inbox: queue.SimpleQueue[_Job | _End] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        """Every thread started and not yet seen ended (one that counted itself out may still
        be ending)."""
        self._alive = 0
        """Threads started and not ended (a thread counts itself out before it ends)."""
        self._idle = 0
        """Threads waiting for a call."""
        self._stops = 0
        """Requests to end queued and not yet taken."""
        self._outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = (
            weakref.WeakKeyDictionary()
        )
        self._last: _Outbox | None = None
        """The outbox of the loop that called last (most calls come from one loop)."""

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on one of the threads, in the caller's context, started when
        awaited; cancellable (see :class:`~wasm_plugins.provider.Cancellation`): cancelling the
        awaiting task stops it."""
        return await self.start(function, args)

    def start(
        self, function: Callable[..., Any], args: tuple[Any, ...]
    ) -> Coroutine[Any, Any, Any]:
        """Queue ``function(*args)`` for one of the threads, in the caller's context, and return
        the :class:`AwaitedCall` its answer resolves. Outside a running loop (``asyncio.run``
        is given the result before it starts one), the coroutine of :meth:`run` instead: the
        call is queued when it is first awaited."""
        loop = asyncio._get_running_loop()
        if loop is None:
            return self.run(function, *args)
        outbox = self._last
        if outbox is None or outbox.loop() is not loop:
            outbox = self._outbox(loop)
        call = AwaitedCall(loop=loop)
        call.calls = self
        self._inbox.put((call, function, args, contextvars.copy_context(), outbox))
        outbox.outstanding += 1
        # Counted out before a thread ends, and a thread looks at the queue after that: a call
        # queued while the last thread ends is either seen by it or seen here.
        if self._alive == 0:
            self._start()
        if not outbox.interval:
            outbox.interval = LOOK
            outbox.seen = self._progress()
            outbox.looked = loop.time()
            loop.call_later(LOOK, self._look, outbox)
        return call

    def cancel(self, future: asyncio.Future[Any]) -> None:
        """On the loop, once ``future`` (an :class:`AwaitedCall`) was cancelled: stop its call
        if a thread runs it. A call not yet started sees its future cancelled when a thread
        takes it; a call finished is left alone (its thread's cancellation already serves the
        next call)."""
        with self._running:
            for worker in self._workers:
                if worker.current is future:
                    worker.cancellation.cancel()

    def _outbox(self, loop: asyncio.AbstractEventLoop) -> _Outbox:
        with self._lock:
            outbox = self._outboxes.get(loop)
            if outbox is None:
                outbox = self._outboxes[loop] = _Outbox(loop)
            self._last = outbox
        return outbox

    def _look(self, outbox: _Outbox) -> None:
        """On the loop, while it has calls not yet answered: take the answers that no wake-up
        brought (a thread wakes the loop only when no call waits), and start another thread
        when calls wait while no thread finished one for :data:`STALL` seconds. Looks come
        every :data:`LOOK` seconds while they find answers, less often while they do not."""
        found = outbox.deliver()
        loop = asyncio.get_running_loop()
        now = loop.time()
        elapsed = now - outbox.looked
        if elapsed >= STALL:
            workers = list(self._workers)
            progress = [worker.progress() for worker in workers]
            same = len(progress) == len(outbox.seen) and all(
                before[0] == after[0] for before, after in zip(outbox.seen, progress, strict=False)
            )
            held = same and all(
                worker.held(before, after, elapsed)
                for worker, before, after in zip(workers, outbox.seen, progress, strict=False)
            )
            if held and self._idle == 0 and not self._inbox.empty():
                self._start()
            # Measured from the last call taken: a call that computes nothing is seen held
            # once it has lasted BLOCKED seconds.
            if held or not same:
                outbox.seen, outbox.looked = progress, now
        if outbox.outstanding <= 0:
            outbox.interval = 0.0
            return
        outbox.interval = LOOK if found else min(outbox.interval * 2, STALL)
        loop.call_later(outbox.interval, self._look, outbox)

    def _progress(self) -> list[tuple[int, float]]:
        return [worker.progress() for worker in list(self._workers)]

    def _start(self) -> None:
        with self._lock:
            if self._alive >= MAX_THREADS:
                return
            self._alive += 1
            worker = _Worker()
            self._workers.append(worker)
        thread = threading.Thread(
            target=self._serve,
            args=(worker,),
            name=f"{self._name}-async-{len(self._workers)}",
            daemon=True,
        )
        with self._lock:
            self._threads = [known for known in self._threads if known.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _serve(self, worker: _Worker) -> None:
        inbox = self._inbox
        get, empty, running = inbox.get_nowait, inbox.empty, self._running
        if hasattr(time, "pthread_getcpuclockid"):
            worker.clock = time.pthread_getcpuclockid(threading.get_ident())
        # The thread's calls run under its cancellation (see provider.Sandboxes.call).
        worker.cancellation.hold()
        while True:
            try:
                job = get()
            except queue.Empty:
                job = self._wait(inbox)
            if isinstance(job, _End):
                if self._leave(worker, queued=job is _End.STOP):
                    Cancellation.release()
                    return
                continue
            # A tiny call's hand-over is a good part of its cost: written out, no frame of its
            # own, no object of its own.
            future, function, args, context, outbox = job
            worker.finished += 1
            # No lock here: the loop cancels a task's future before it looks for the thread
            # running the call (AsyncCalls.cancel), so either it finds this thread running it
            # or this thread finds the future cancelled.
            worker.current = future
            if future.cancelled():  # the awaiting task was cancelled: the call runs so
                worker.cancellation.cancel()  # (its attempts end at once, hooks see it)
            try:
                value = context.run(function, *args)
                succeeded = True
            except StopIteration as stop:
                # A future cannot hold StopIteration (it would end the awaiting coroutine).
                value = RuntimeError("the call raised StopIteration")
                value.__cause__ = stop
                succeeded = False
            except BaseException as error:  # every failure belongs to the awaiting task
                value, succeeded = error, False
            with running:
                worker.current = None
                if worker.cancellation.cancelled.on:
                    worker.cancellation = Cancellation(lasting=True)
                    worker.cancellation.hold()
            # Outbox.post written out. The loop is woken only when no other call waits: the
            # answer goes with a later one, or the loop's next look.
            outbox.answers.append((future, succeeded, value))
            if not outbox.scheduled and empty():
                outbox.wake()

    def _wait(self, inbox: queue.SimpleQueue[_Job | _End]) -> _Job | _End:
        with self._lock:
            self._idle += 1
        try:
            return inbox.get(timeout=IDLE)
        except queue.Empty:
            return _End.IDLE
        finally:
            with self._lock:
                self._idle -= 1

    def _leave(self, worker: _Worker, queued: bool) -> bool:
        """Count this thread out; False (and counted in again) when a call came meanwhile."""
        with self._lock:
            if queued:
                self._stops -= 1
            self._alive -= 1
            calls_waiting = self._inbox.qsize() > self._stops
            if calls_waiting:
                self._alive += 1
            elif worker in self._workers:
                self._workers.remove(worker)
        return not calls_waiting

    def close(self, wait: float = 0.0) -> None:
        """End every thread once the calls queued before have run (a call queued later starts
        a thread again); with ``wait``, wait up to that long for each."""
        with self._lock:
            workers = len(self._workers)
            threads = list(self._threads)
            self._stops += workers
            for _ in range(workers):
                self._inbox.put(_End.STOP)
        if wait > 0:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(wait)

    def threads(self) -> int:
        """The threads running now."""
        return self._alive

    def after_fork_in_child(self) -> None:
        """The threads stayed in the parent; the calls they ran are the parent's."""
        self._reset()


_LIVE: weakref.WeakSet[AsyncCalls] = weakref.WeakSet()


@atexit.register
def _end_threads() -> None:
    # Daemon threads, so that the interpreter's exit never waits on a guest that does not end;
    # ended here before the interpreter finalizes, so that engine objects bound to a thread
    # are released in it.
    for calls in list(_LIVE):
        calls.close(JOIN_AT_EXIT)


def _after_fork_in_child() -> None:
    for calls in list(_LIVE):
        calls.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
