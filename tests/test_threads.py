"""Calls from several threads on one Sandbox: each thread gets its own instance on every engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import CONFORMANCE
from wasm_plugins.engine import Engine
from wasm_plugins.errors import ExecutionError, PluginError
from wasm_plugins.sandbox import LoadedModule, Sandbox

ABI = CONFORMANCE / "abi.wat"


class TestSandboxThreads:
    def test_many_threads_one_sandbox(self, engine: Engine) -> None:
        """Eight threads calling one sandbox all get their own inputs back."""
        sandbox = Sandbox(ABI, engine=engine)

        def work(worker: int) -> list[str]:
            return [sandbox.call("upper", f"worker {worker} call {i}") for i in range(50)]

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(work, range(8)))
        for worker, outputs in enumerate(results):
            assert outputs == [f"WORKER {worker} CALL {i}" for i in range(50)]

    def test_each_thread_keeps_its_own_instance_and_takes_no_lock(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Threads calling at once never share an instance (or its store) and never wait for
        one: each makes its own on its first call and keeps it; its later calls instantiate
        nothing and take no lock."""
        made: list[int] = []
        instantiate = LoadedModule.instantiate

        def counting(self: LoadedModule, services: object = None) -> Any:
            made.append(threading.get_ident())
            return instantiate(self, services)

        monkeypatch.setattr(LoadedModule, "instantiate", counting)
        sandbox = Sandbox(ABI, engine=engine)
        lock_types = (type(threading.Lock()), type(threading.RLock()))
        threads = 4
        together = threading.Barrier(threads)
        seen: dict[int, set[int]] = {}
        locks: list[str] = []

        def watch(frame: Any, event: str, argument: Any) -> None:
            if event == "c_call" and isinstance(getattr(argument, "__self__", None), lock_types):
                locks.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")

        def work(worker: int) -> None:
            instances = seen.setdefault(worker, set())
            sandbox.call("upper", "first")
            instances.add(id(sandbox._state().session.instance))
            together.wait()  # every thread's instance is alive at once
            sys.setprofile(watch)  # this thread only
            try:
                for i in range(20):
                    assert sandbox.call("upper", f"call {i}") == f"CALL {i}"
            finally:
                sys.setprofile(None)
            instances.add(id(sandbox._state().session.instance))
            together.wait()

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, range(threads)))
        assert all(len(instances) == 1 for instances in seen.values())
        assert len(set().union(*seen.values())) == threads
        assert len(made) == 1 + threads  # the loading thread's, then one per calling thread
        assert locks == []

    def test_failures_stay_in_their_thread(self, engine: Engine) -> None:
        """Traps in some threads do not disturb good calls running in others."""
        sandbox = Sandbox(ABI, engine=engine)
        barrier = threading.Barrier(6)

        def work(worker: int) -> list[str]:
            barrier.wait()
            outcomes = []
            for i in range(30):
                try:
                    if worker % 2:
                        sandbox.call("trap_unreachable")
                    outcomes.append(sandbox.call("echo", f"{worker}-{i}"))
                except ExecutionError as error:
                    outcomes.append(error.trap)
            return outcomes

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(work, range(6)))
        for worker, outcomes in enumerate(results):
            expected = ["unreachable" if worker % 2 else f"{worker}-{i}" for i in range(30)]
            assert outcomes == expected

    def test_thread_made_after_load(self, engine: Engine) -> None:
        """A thread that starts after the sandbox was loaded gets a working instance."""
        sandbox = Sandbox(ABI, engine=engine)
        box: list[object] = []
        thread = threading.Thread(target=lambda: box.append(sandbox.call("upper", "late")))
        thread.start()
        thread.join()
        assert box == ["LATE"]

    def test_closed_sandbox(self, engine: Engine) -> None:
        """A closed sandbox refuses calls with a typed error in every thread."""
        sandbox = Sandbox(ABI, engine=engine)
        sandbox.call("echo", 1)
        sandbox.close()
        with pytest.raises(PluginError) as caught:
            sandbox.call("echo", 1)
        assert caught.value.kind == "instance"
        box: list[str] = []

        def late() -> None:
            try:
                sandbox.call("echo", 1)
            except PluginError as error:
                box.append(error.kind)

        thread = threading.Thread(target=late)
        thread.start()
        thread.join()
        assert box == ["instance"]


class TestRelease:
    def test_instances_are_freed(self, engine: Engine) -> None:
        """A closed sandbox's instances are freed: host functions do not keep them alive."""
        import gc
        import weakref

        sandbox = Sandbox(ABI, engine=engine)
        sandbox.call("upper", "x")
        instance = weakref.ref(sandbox._state().session.instance)
        sandbox.close()
        del sandbox
        gc.collect()
        assert instance() is None

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
    def test_a_module_loaded_again_and_again_keeps_no_code(self, engine: Engine) -> None:
        """Loading the same compiled module 40 times, each dropped after, leaves the process
        no larger by the compiled code of each load (wasmer 1.1 kept every module's code for
        the life of the thread's store: 8 times the module's size after 40 loads). Measured in
        a child process, whose memory is its own."""
        child = textwrap.dedent(
            f"""
            import gc
            import wasm_plugins.sandbox
            from wasm_plugins.engine import default_registry

            def size():
                with open("/proc/self/statm") as statm:
                    return int(statm.read().split()[1]) * 4096

            body = "".join(
                f'(func (export "f{{i}}") (param i32) (result i32) '
                f"local.get 0 i32.const {{i}} i32.add i32.const 3 i32.mul)"
                for i in range(3000)
            )
            engine = default_registry().get({engine.name!r})
            data = engine.compile(engine.wat_to_wasm(f"(module {{body}})")).serialize()
            for _ in range(3):
                engine.deserialize(data)
            gc.collect()
            before = size()
            for _ in range(40):
                engine.deserialize(data)
            gc.collect()
            print(len(data), size() - before)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stderr
        module_size, grown = map(int, result.stdout.split())
        assert grown < 3 * module_size, (grown, module_size)

    def test_closed_from_another_thread(self, engine: Engine) -> None:
        """A sandbox used by a worker thread and closed by another releases without a panic,
        and the worker's instance is freed once the worker ends."""
        import gc
        import weakref

        sandbox = Sandbox(ABI, engine=engine)
        refs: list[weakref.ref[object]] = []

        def work(used: Sandbox) -> None:
            used.call("upper", "worker")
            refs.append(weakref.ref(used._state().session.instance))

        thread = threading.Thread(target=work, args=(sandbox,))
        thread.start()
        thread.join()
        sandbox.close()
        del sandbox
        gc.collect()
        assert refs[0]() is None


class TestMetricsFromThreads:
    """The metrics reporter loses no count when several threads call at once."""

    def _finished(self, plugin: str, outcome: str, duration: float) -> Any:
        from wasm_plugins.policy import Report

        return Report(
            "call_finished", plugin, "f", 0, 0.0, outcome=outcome, duration=duration, attempt=1
        )

    def test_counts_merge_on_read(self) -> None:
        """Counts from eight threads add up, in counters and in the latency histogram."""
        from wasm_plugins.builtin.reporters import MetricsReporter

        metrics = MetricsReporter()
        start = threading.Barrier(8)

        def work(index: int) -> None:
            start.wait()
            for _ in range(500):
                metrics.wasm_plugins_report(self._finished("p", "value", 0.001 * index))

        with ThreadPoolExecutor(max_workers=8) as threads:
            list(threads.map(work, range(8)))
        assert metrics.count("calls", "p", "f", outcome="value") == 4000
        histogram = metrics.snapshot()["latency_seconds"]["p.f"]
        assert histogram["count"] == 4000
        assert histogram["sum"] == pytest.approx(500 * 0.001 * sum(range(8)))
