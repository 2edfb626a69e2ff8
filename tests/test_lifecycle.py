"""Plugin versions in a running host: replace, reload and unload, with rollback, draining of the
calls running, events for reporters, and preloading at discovery."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_host import make_distribution
from wasm_plugins import ConfigurationError, ContextualError, PluginHost, hookimpl
from wasm_plugins._async_calls import AsyncCalls
from wasm_plugins.cli import main
from wasm_plugins.errors import CallCancelled, DeadlineExceeded
from wasm_plugins.policy import PolicyEvent
from wasm_plugins.sandbox import Limits, Sandbox


def answering(text: str, export: str = "answer") -> str:
    """A module whose ``export`` answers the JSON string ``text`` to any input."""
    body = f'"{text}"'.replace('"', '\\"')
    return f"""(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "{body}")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "wp_free") (param i32 i32))
  (func (export "{export}") (param i32 i32) (result i64)
    (i64.or (i64.const 0x40000000000) (i64.const {len(text) + 2}))))"""


def manifest(text: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "name": "answers",
        "version": version,
        "module": {"wat": answering(text)},
        "functions": {"answer": {}},
        **extra,
    }


class Events:
    """A reporter that keeps every plugin lifecycle event."""

    def __init__(self) -> None:
        self.seen: list[PolicyEvent] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        if event.name.startswith("plugin_"):
            self.seen.append(event)

    def names(self) -> list[str]:
        return [event.name for event in self.seen]


@pytest.fixture
def host() -> Any:
    with PluginHost(engine="wasmtime", module_cache=False) as host:
        host.register_policy(Events(), name="events")
        yield host


def events(host: PluginHost) -> Events:
    plugin = host.manager.get_plugin("events")
    assert isinstance(plugin, Events)
    return plugin


def test_replace_serves_the_new_version_and_reports_it(host: PluginHost) -> None:
    host.load(manifest("one"))
    assert host.call("answers", "answer") == "one"
    info = host.replace("answers", manifest("two", version="2.0.0"))
    assert info.manifest.version == "2.0.0"
    assert host.call("answers", "answer") == "two"
    assert host.plugins["answers"].manifest.version == "2.0.0"
    assert events(host).names() == ["plugin_loaded", "plugin_replaced"]
    replaced = events(host).seen[-1]
    assert (replaced.old_version, replaced.new_version, replaced.module_changed) == (  # type: ignore[attr-defined]
        "1.0.0",
        "2.0.0",
        True,
    )


def test_replace_while_eight_threads_call_loses_no_call(host: PluginHost) -> None:
    host.load(manifest("one"))
    answers: list[list[Any]] = []
    lock = threading.Lock()
    started = threading.Barrier(9)
    stop = threading.Event()

    def caller() -> None:
        started.wait()
        mine = []
        while not stop.is_set() or len(mine) < 50:
            mine.append(host.call("answers", "answer"))
        with lock:
            answers.append(mine)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    host.replace("answers", manifest("two", version="2.0.0"))
    after = host.call("answers", "answer")
    stop.set()
    for thread in threads:
        thread.join()
    counts = Counter(answer for mine in answers for answer in mine)
    assert set(counts) <= {"one", "two"}
    assert sum(counts.values()) >= 8 * 50
    for mine in answers:
        # In each thread, once a call got the new version no later call got the old one.
        if "two" in mine:
            assert "one" not in mine[mine.index("two") :]
    assert after == "two"
    assert host.call("answers", "answer") == "two"


@pytest.mark.parametrize(
    ("new", "step"),
    [
        ({"module": {"wat": "(module (func"}}, "compile"),
        ({"module": {"wat": answering("two", export="other")}}, "compile"),
        ({"health_check": {"function": "missing", "input": None}}, "health_check"),
        ({"name": "someone-else"}, "manifest"),
        ({"limits": {"memory": "lots"}}, "manifest"),
    ],
    ids=["does-not-compile", "lacks-an-export", "fails-health-check", "renamed", "bad-manifest"],
)
def test_a_failing_step_leaves_the_old_version_serving(
    host: PluginHost, new: dict[str, Any], step: str
) -> None:
    host.load(manifest("one"))
    with pytest.raises(ConfigurationError) as raised:
        host.replace("answers", {**manifest("two", version="2.0.0"), **new})
    assert raised.value.field == f"replace.{step}"
    assert "1.0.0 keeps serving" in raised.value.message
    assert host.call("answers", "answer") == "one"
    assert host.plugins["answers"].manifest.version == "1.0.0"
    failed = events(host).seen[-1]
    assert failed.name == "plugin_replace_failed"
    assert failed.step == step  # type: ignore[attr-defined]


def test_a_passing_health_check_lets_the_new_version_in(host: PluginHost) -> None:
    host.load(manifest("one"))
    host.replace("answers", manifest("two", health_check={"function": "answer", "input": {}}))
    assert host.call("answers", "answer") == "two"


def test_reload_reads_the_files_again(host: PluginHost, tmp_path: Path) -> None:
    module = tmp_path / "answers.wat"
    module.write_text(answering("one"))
    toml = tmp_path / "plugin.toml"
    toml.write_text('name = "answers"\nversion = "1.0.0"\n[module]\npath = "answers.wat"\n')
    host.load(toml)
    assert host.call("answers", "answer") == "one"
    module.write_text(answering("two"))
    toml.write_text(toml.read_text().replace("1.0.0", "1.1.0"))
    assert host.reload("answers").manifest.version == "1.1.0"
    assert host.call("answers", "answer") == "two"
    module.write_text("(module (func")
    with pytest.raises(ConfigurationError, match=r"replace\.compile"):
        host.reload("answers")
    assert host.call("answers", "answer") == "two"


def test_a_new_module_starts_with_a_closed_breaker(host: PluginHost) -> None:
    host.load(manifest("one"))
    host.breaker("answers", "answer").force_open()
    with pytest.raises(ContextualError):
        host.call("answers", "answer")
    host.replace("answers", manifest("two"))
    assert host.call("answers", "answer") == "two"


def test_unload_refuses_new_calls_and_reports_it(host: PluginHost) -> None:
    host.load(manifest("one"))
    host.call("answers", "answer")
    host.unload("answers")
    assert "answers" not in host.plugins
    assert not host.sandboxes()
    with pytest.raises(ContextualError) as raised:
        host.call("answers", "answer")
    assert raised.value.error_kind == "configuration"
    assert events(host).names()[-1] == "plugin_unloaded"
    host.load(manifest("again"))
    assert host.call("answers", "answer") == "again"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unload_releases_the_workers(host: PluginHost) -> None:
    host.load(manifest("one", isolation="process"))
    assert host.call("answers", "answer") == "one"
    pids = host.worker_pids()
    assert pids and all(_alive(pid) for pid in pids)
    host.unload("answers")
    assert host.worker_pids() == []
    assert not any(_alive(pid) for pid in pids)


def test_unload_during_a_call_releases_the_workers_when_it_returns(host: PluginHost) -> None:
    host.load(spinner("10 min", isolation="process"))
    assert host.call("spinner", "answer") == "ok"
    pids = host.worker_pids()
    ended: list[str] = []

    def spin() -> None:
        with pytest.raises(ContextualError) as raised:
            host.call("spinner", "spin")
        ended.append(raised.value.error_kind)

    caller = threading.Thread(target=spin)
    before = _children_cpu(pids)
    caller.start()
    while _children_cpu(pids) - before < 0.05:  # handshake: the guest spins in its worker
        threading.Event().wait(0.01)
    host.unload("spinner")
    # The call runs on: its workers live until it ends (here: when its worker is killed).
    assert all(_alive(pid) for pid in pids)
    assert caller.is_alive()
    for pid in pids:
        os.kill(pid, 9)
    caller.join(60)
    assert ended == ["instance"]  # its worker was killed
    assert host.worker_pids() == []
    assert not any(_alive(pid) for pid in pids)


def test_replace_releases_the_old_workers_and_keeps_serving(host: PluginHost) -> None:
    host.load(manifest("one", isolation="process"))
    assert host.call("answers", "answer") == "one"
    host.replace("answers", manifest("two", isolation="process"))
    assert host.call("answers", "answer") == "two"
    assert len(host.sandboxes()) == 1


BROKEN_PLUGINS = '''
"""A distribution with a plugin that loads, one that does not compile and one that imports a
capability it was not granted."""
from wasm_plugins import hookimpl

GOOD = {good!r}
STEALS_KV = """(module
  (import "wasm_plugins" "kv_get" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "wp_free") (param i32 i32)))"""


@hookimpl
def wasm_plugins_register_plugins(register):
    register({{"name": "fine", "module": {{"wat": GOOD}}}})
    register({{"name": "garbled", "module": {{"wat": "(module (func"}}}})
    register({{"name": "thief", "module": {{"wat": STEALS_KV}}}})
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests install fake distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("thirdparty_"):
            del sys.modules[name]


class TestPreload:
    def test_broken_plugins_are_problems_and_the_others_load(self, site: Path) -> None:
        make_distribution(site, "thirdparty-mixed", BROKEN_PLUGINS.format(good=answering("ok")))
        with PluginHost.discover(preload=True, engine="wasmtime") as host:
            assert "fine" in host.plugins
            assert not {"garbled", "thief"} & set(host.plugins)
            problems = {p.source: p for p in host.problems if p.stage == "preload"}
            assert {"garbled", "thief"} <= set(problems)
            assert problems["thief"].distribution == "thirdparty-mixed 1.0"
            assert "kv" in problems["thief"].reason
            assert host.call("fine", "answer") == "ok"

    def test_without_preload_a_broken_plugin_fails_on_its_first_call(self, site: Path) -> None:
        make_distribution(site, "thirdparty-mixed", BROKEN_PLUGINS.format(good=answering("ok")))
        with PluginHost.discover(engine="wasmtime") as host:
            assert "garbled" in host.plugins
            assert not [p for p in host.problems if p.stage == "preload"]
            with pytest.raises(ContextualError):
                host.call("garbled", "answer")

    def test_list_check_reports_them_and_fails(
        self, site: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        make_distribution(site, "thirdparty-mixed", BROKEN_PLUGINS.format(good=answering("ok")))
        assert main(["list", "--check"]) == 1
        out = capsys.readouterr().out
        assert "garbled (thirdparty-mixed 1.0): preload failed" in out
        assert "thief (thirdparty-mixed 1.0): preload failed" in out
        assert main(["list"]) == 0


SPIN_WAT = """(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "\\"ok\\"")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "wp_free") (param i32 i32))
  (func (export "spin") (param i32 i32) (result i64) (loop $again (br $again)) (i64.const 0))
  (func (export "answer") (param i32 i32) (result i64) (i64.const 0x40000000004)))"""


def spinner(timeout: str, isolation: str | None = None, one_attempt: bool = True) -> dict[str, Any]:
    """The manifest of the spin plugin under this timeout: one attempt and no fallback, or
    the default policy."""
    manifest: dict[str, Any] = {
        "name": "spinner",
        "module": {"wat": SPIN_WAT},
        "limits": {"timeout": timeout},
    }
    if isolation is not None:
        manifest["isolation"] = isolation
    if one_attempt:
        manifest["policy"] = {"max_attempts": 1, "fallbacks": []}
    return manifest


class Finished:
    """A reporter that keeps the calls' ends."""

    def __init__(self) -> None:
        self.errors: list[str | None] = []
        self.cancelled = threading.Event()

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        if event.name == "call_finished":
            error = event.error  # type: ignore[attr-defined]
            self.errors.append(None if error is None else error.kind)
            if error is not None and error.kind == "cancelled":
                self.cancelled.set()


class Threads:
    """A reporter that keeps the thread each call finished on."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        if event.name == "call_finished":
            self.seen.append(threading.get_ident())


class TestAsync:
    def test_ainvoke_returns_the_outcome(self, host: PluginHost) -> None:
        host.load(manifest("one"))
        outcome = asyncio.run(host.ainvoke("answers", "answer", {}))
        assert outcome.value == "one"
        assert outcome.attempts == 1

    @pytest.mark.parametrize("isolation", ["in-process", "process"])
    def test_cancelling_an_endless_loop_stops_burning_cpu(self, isolation: str) -> None:
        finished = Finished()
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.register_policy(finished, name="finished")
            host.load(spinner("10 min", isolation=isolation, one_attempt=False))
            assert host.call("spinner", "answer") == "ok"
            workers = host.worker_pids()
            assert bool(workers) == (isolation == "process")
            # The CPU the guest burns: this process's, or its workers' while they live.
            cpu = time.process_time if not workers else lambda: _children_cpu(workers)
            spinning = threading.Event()

            async def spin_then_cancel() -> None:
                call = asyncio.ensure_future(host.ainvoke("spinner", "spin"))
                # Handshake: the guest is running once the CPU clock moves a whole tenth of a
                # second past where it stood (nothing else in this test burns that much).
                before = cpu()

                async def burnt() -> None:
                    while cpu() - before < 0.1:
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(burnt(), 60)
                spinning.set()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(call, 0)

            asyncio.run(spin_then_cancel())
            assert spinning.is_set()
            # The call's own thread reports the cancellation once the guest has stopped.
            assert finished.cancelled.wait(60)
            assert finished.errors == [None, "cancelled"]
            if workers:
                assert sum(not _alive(pid) for pid in workers) == 1
            else:
                assert _cpu_rate(time.process_time) < 0.2
            assert host.call("spinner", "answer") == "ok"

    def test_a_thread_stops_each_cancelled_call_it_runs(self) -> None:
        """A thread of awaited calls keeps its instance watching its cancellation between calls;
        once a call was cancelled, the instance watches the thread's new one: the next call
        cancelled on the same thread stops too."""
        finished = Finished()
        threads = Threads()
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.register_policy(finished, name="finished")
            host.register_policy(threads, name="threads")
            host.load(spinner("10 min"))

            async def spin_then_cancel() -> None:
                assert await host.acall("spinner", "answer") == "ok"
                call = asyncio.ensure_future(host.acall("spinner", "spin"))
                before = time.process_time()
                while time.process_time() - before < 0.1:  # the guest is running
                    await asyncio.sleep(0.01)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call

            for _ in range(2):
                finished.cancelled.clear()
                asyncio.run(spin_then_cancel())
                assert finished.cancelled.wait(60)
            assert finished.errors == [None, "cancelled", None, "cancelled"]
            assert len(set(threads.seen)) == 1

    def test_the_call_after_one_cancelled_before_it_started_is_not_cancelled(self) -> None:
        """A call cancelled while it waits for its thread ends before its guest runs: the
        thread's instance still watches the cancellation that was set, and must watch the
        thread's new one for the next call (which here ends by its own timeout, not cancelled)."""
        calls = AsyncCalls("test")
        release = threading.Event()
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.load(spinner("300 ms"))

            async def main() -> str:
                assert await calls.run(lambda: host.call("spinner", "answer")) == "ok"
                blocking = asyncio.ensure_future(calls.run(lambda: release.wait(60)))
                waiting = asyncio.ensure_future(calls.run(lambda: host.call("spinner", "answer")))
                await asyncio.sleep(0)  # both are queued
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                release.set()
                assert await blocking
                with pytest.raises(ContextualError) as raised:
                    await calls.run(lambda: host.call("spinner", "spin"))
                return str(raised.value.error_kind)

            try:
                assert asyncio.run(main()) == "timeout"
            finally:
                calls.close(60)
        assert calls.threads() == 0

    def test_a_threads_later_call_in_a_worker_process_is_still_killed(self) -> None:
        """A thread of awaited calls skips the bookkeeping of a sandbox it calls again, but not
        for one whose calls are stopped by killing their worker: the cancellation must know
        that the thread's call runs there."""
        finished = Finished()
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.register_policy(finished, name="finished")
            host.load(spinner("10 min", isolation="process"))

            async def spin_then_cancel() -> None:
                for _ in range(2):
                    assert await host.acall("spinner", "answer") == "ok"
                workers = host.worker_pids()
                call = asyncio.ensure_future(host.acall("spinner", "spin"))
                before = _children_cpu(workers)
                while _children_cpu(workers) - before < 0.1:  # the guest is running
                    await asyncio.sleep(0.01)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call

            asyncio.run(spin_then_cancel())
            assert finished.cancelled.wait(60)
            assert finished.errors == [None, None, "cancelled"]

    def test_a_call_bounded_to_a_short_time_runs_on_the_loop(self) -> None:
        # The bound is what the host calls short (here 1 s, so that a loaded machine never
        # turns the test's call into a timeout): 0.5 s runs on the loop, 2 s on a thread.
        with PluginHost(engine="wasmtime", module_cache=False, inline_async_calls=1.0) as host:
            self._bounded_on_the_loop(host)

    def _bounded_on_the_loop(self, host: PluginHost) -> None:
        threads = Threads()
        host.register_policy(threads, name="threads")
        host.load(manifest("one", limits={"timeout": "250 ms"}, policy={"deadline": "250 ms"}))
        # It never suspends: the first step of the coroutine finishes it.
        with pytest.raises(StopIteration) as done:
            host.ainvoke("answers", "answer").send(None)
        assert done.value.value.value == "one"
        assert threads.seen == [threading.get_ident()]
        host.replace("answers", manifest("two", limits={"timeout": "2 s"}))
        assert asyncio.run(host.acall("answers", "answer")) == "two"
        assert threads.seen[-1] != threading.get_ident()

    def test_a_long_call_leaves_the_loop_running(self) -> None:
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.load(spinner("100 ms"))
            ticks_during_call = 0

            async def run() -> None:
                nonlocal ticks_during_call
                call = asyncio.ensure_future(host.acall("spinner", "spin"))
                while not call.done():
                    ticks_during_call += 1
                    await asyncio.sleep(0)
                with pytest.raises(ContextualError) as raised:
                    call.result()
                assert raised.value.error_kind == "timeout"

            asyncio.run(run())
            # A loop blocked for the whole call would have ticked once or twice.
            assert ticks_during_call > 10

    def test_a_long_call_does_not_hold_up_short_ones(self) -> None:
        """Short calls awaited after a long one are answered while it runs (on another of the
        host's threads), and the long one is still cancelled when its task is."""
        finished = Finished()
        with PluginHost(engine="wasmtime", module_cache=False) as host:
            host.register_policy(finished, name="finished")
            host.load(spinner("10 min"))

            async def run() -> list[Any]:
                long = asyncio.ensure_future(host.acall("spinner", "spin"))
                await asyncio.sleep(0)  # queued first
                answers = await asyncio.gather(
                    *(host.acall("spinner", "answer") for _ in range(20))
                )
                assert not long.done()
                long.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await long
                return list(answers)

            assert asyncio.run(run()) == ["ok"] * 20
            assert finished.cancelled.wait(60)
            assert host.call("spinner", "answer") == "ok"

    def test_a_watched_store_keeps_its_timeout(self) -> None:
        sandbox = Sandbox(SPIN_WAT, engine="wasmtime", limits=Limits(timeout=0.05))
        cancelled = threading.Event()
        assert sandbox.watch(cancelled)
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        # A store that was watched once keeps its deadline callback: unwatched, its timeout
        # still ends a call as a timeout.
        assert sandbox.watch(cancelled)
        assert sandbox.call("answer") == "ok"
        sandbox.watch(None)
        with pytest.raises(DeadlineExceeded):
            sandbox.call("spin")
        assert sandbox.watch(cancelled)
        cancelled.set()
        with pytest.raises(CallCancelled):
            sandbox.call("spin")

    def test_a_watched_store_is_given_no_deadline_per_call(self) -> None:
        """While a store is watched its deadline is never more than a tick away (set so by
        ``watch``, and by the deadline callback at each tick): a call starts without setting
        it again (a C call, a good part of a tiny one), and a cancellation still stops the
        guest."""
        sandbox = Sandbox(SPIN_WAT, engine="wasmtime", limits=Limits(timeout=60))
        cancelled = threading.Event()
        assert sandbox.call("answer") == "ok"
        assert sandbox.watch(cancelled)
        instance = sandbox._local.state.session.instance
        set_deadline = instance._set_deadline
        deadlines: list[int] = []

        def counted(ticks: int) -> None:
            deadlines.append(ticks)
            set_deadline(ticks)

        instance._set_deadline = counted
        for _ in range(3):
            assert sandbox.watch(cancelled)
            assert sandbox.call("answer") == "ok"
        assert deadlines == []
        cancelled.set()
        with pytest.raises(CallCancelled):
            sandbox.call("spin")

    def test_a_cancellation_stops_a_watched_guest_without_the_ticker(self) -> None:
        """A store that watches a ``Cancellation`` and has no timeout does not run the epoch
        ticker (a timer ticking every 2 ms while calls run, a good part of a tiny call's cost
        on a busy thread): cancelling advances the engine's epoch itself, and the guest stops
        at its next look."""
        from wasm_plugins.provider import Cancellation

        sandbox = Sandbox(SPIN_WAT, engine="wasmtime")
        cancellation = Cancellation(lasting=True)
        entered: list[None] = []
        raised: list[BaseException] = []
        spinning = threading.Event()

        class Counted(list):  # type: ignore[type-arg]
            def append(self, item: None) -> None:
                entered.append(item)
                super().append(item)

        def calls() -> None:
            # One thread: the instance that watches is this thread's.
            assert sandbox.call("answer") == "ok"
            assert sandbox.watch(cancellation.cancelled)
            ticker = sandbox._local.state.session.instance._ticker
            ticker.in_flight = Counted(ticker.in_flight)
            for _ in range(3):
                assert sandbox.call("answer") == "ok"
            spinning.set()
            try:
                sandbox.call("spin")
            except BaseException as error:  # the test looks at it
                raised.append(error)

        thread = threading.Thread(target=calls)
        before = time.process_time()
        thread.start()
        assert spinning.wait(60)
        while time.process_time() - before < 0.1 and thread.is_alive():  # the guest runs
            time.sleep(0.01)
        cancellation.cancel()
        thread.join(60)
        assert not thread.is_alive()
        assert entered == []
        assert [type(error) for error in raised] == [CallCancelled]


def _children_cpu(pids: list[int]) -> float:
    """The CPU seconds of those processes (a process gone counts as none)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_rate(clock: Any, window: float = 0.3) -> float:
    """CPU seconds burnt per wall-clock second over ``window`` (a spinning guest: about 1)."""
    wall, used = time.perf_counter(), clock()
    threading.Event().wait(window)
    return (clock() - used) / (time.perf_counter() - wall)


def batch_of_inputs() -> list[Any]:
    """10,000 inputs: words to count, inputs the guest refuses, inputs JSON cannot encode."""
    return [
        {"text": "w " * (i % 7)} if i % 3 else ("not an object" if i % 2 else {1j})
        for i in range(10_000)
    ]


def check_batch_results(results: list[Any]) -> None:
    """One result per input of :func:`batch_of_inputs`, in order, each a value or typed."""
    assert [result.index for result in results] == list(range(10_000))
    for i, result in enumerate(results):
        if i % 3:
            assert result.error is None
            assert result.value["words"] == i % 7
            assert result.outcome is not None and result.outcome.attempts == 1
        else:
            assert isinstance(result.error, ContextualError)
            assert result.value is None
            assert result.error.error_kind == ("runtime" if i % 2 else "communication")


class TestMap:
    def test_ten_thousand_inputs_with_failures_in_order(self) -> None:
        with PluginHost.discover() as host:
            results = host.map("text-tools", "word_count", batch_of_inputs(), concurrency=4)
        check_batch_results(results)

    def test_unordered_results_cover_every_input(self) -> None:
        with PluginHost.discover() as host:
            results = host.map("text-tools", "word_count", batch_of_inputs()[:300], ordered=False)
        assert sorted(result.index for result in results) == list(range(300))

    def test_cli_map_writes_one_line_per_input(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        source = tmp_path / "in.jsonl"
        source.write_text('{"text": "a b"}\n"oops"\nnot json\n{"text": "c"}\n')
        target = tmp_path / "out.jsonl"
        status = main(
            [
                "map",
                "text-tools",
                "word_count",
                "--input-file",
                str(source),
                "--output-file",
                str(target),
            ]
        )
        assert status == 1
        lines = [json.loads(line) for line in target.read_text().splitlines()]
        assert lines[0] == {"value": {"words": 2, "lines": 1, "characters": 3, "bytes": 3}}
        assert lines[1]["error"]["kind"] == "contextual"
        assert lines[2]["error"]["kind"] == "communication"
        assert lines[3]["value"]["words"] == 1
        assert "4 inputs, 2 values, 2 errors" in capsys.readouterr().out
