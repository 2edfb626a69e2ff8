"""Containment at run time: a plugin cannot crash the host through its stack, cross results through
reentrant calls, keep a poisoned instance, hang a forked child, starve its own timeout, or get
blamed for the caller's bad input.

Every finding that could kill or hang the process runs its child in a subprocess with a timeout,
so a crash or a hang is a failed test, never a dead test run.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.conftest import ALL_ENGINE_NAMES, ROOT, SDK_ENGINE, engine_named
from wasm_plugins import PluginHost
from wasm_plugins._units import MAX_DURATION
from wasm_plugins.engine import Engine, FuncSignature, _wasmtime
from wasm_plugins.engine._epoch import TICK
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    DeadlineExceeded,
    HostIOError,
    PluginError,
    ResourceLimitExceeded,
)
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from wasm_plugins.manifest import Manifest
from wasm_plugins.sandbox import HostCall, HostFunction, Limits, Sandbox

_PRELUDE = """
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))
  (func $packed (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
"""

REENTRANT = f"""
(module
  (import "test" "reenter" (func $reenter))
  {_PRELUDE}
  ;; Calls the host, then returns its own input: the input must still be what the host wrote.
  (func (export "outer") (param $ptr i32) (param $len i32) (result i64)
    (call $reenter)
    (call $packed (local.get $ptr) (local.get $len)))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $packed (local.get $ptr) (local.get $len)))
)
"""

HALF_UPDATED = f"""
(module
  (import "test" "fail" (func $fail))
  {_PRELUDE}
  (global $steps (mut i32) (i32.const 0))
  ;; Two steps that must go together; the host fails between them.
  (func (export "step") (param $ptr i32) (param $len i32) (result i64)
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (call $fail)
    (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
    (call $packed (i32.const 0) (i32.const 0)))
  ;; Writes the step count as one ASCII digit.
  (func (export "steps") (param $ptr i32) (param $len i32) (result i64)
    (i32.store8 (i32.const 16) (i32.add (i32.const 48) (global.get $steps)))
    (call $packed (i32.const 16) (i32.const 1)))
)
"""

NO_ARGS = FuncSignature((), ())


def _reentrant_functions(target: list[Any]) -> tuple[HostFunction, ...]:
    def reenter(call: HostCall) -> None:
        target.append(target[0].call_bytes("echo", b"inner call's input, longer"))

    return (HostFunction("test", "reenter", NO_ARGS, reenter),)


class TestReentrancy:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    def test_reentrant_call_does_not_cross_results(self, engine: Engine) -> None:
        """A host function that calls the same plugin again on the same thread: the outer call
        still returns its own input, and the inner call its own."""
        box: list[Any] = []
        sandbox = Sandbox(
            REENTRANT, engine=engine, host_functions=_reentrant_functions(box), codec="raw"
        )
        box.append(sandbox)
        assert sandbox.call_bytes("outer", b"outer input") == b"outer input"
        assert box[1] == b"inner call's input, longer"
        assert sandbox.call_bytes("outer", b"again") == b"again"

    def test_reentrant_call_in_a_worker(self, engine: Engine) -> None:
        """Through worker isolation: the host function runs in the host and calls the plugin
        again while the worker waits for it."""
        box: list[Any] = []
        with WorkerPool(size=2) as pool:
            sandbox = ProcessSandbox(
                REENTRANT,
                engine=engine,
                host_functions=_reentrant_functions(box),
                codec="raw",
                pool=pool,
            )
            box.append(sandbox)
            try:
                outcome: bytes | PluginError = sandbox.call_bytes("outer", b"outer input")
            except PluginError as error:
                outcome = error
            if isinstance(outcome, PluginError):
                assert outcome.kind in ("instance", "resource_limit_exceeded")
            else:
                assert outcome == b"outer input"
            assert sandbox.call_bytes("echo", b"after") == b"after"


def _failing(error: Exception) -> tuple[HostFunction, ...]:
    def fail(call: HostCall) -> None:
        raise error

    return (HostFunction("test", "fail", NO_ARGS, fail),)


UNWINDING_ERRORS = [
    pytest.param(HostIOError(operation="read", message="disk gone"), id="typed-io"),
    pytest.param(CommunicationError(message="bad", channel="input"), id="typed-communication"),
    pytest.param(ValueError("bug"), id="untyped"),
]


class TestUnwoundInstanceIsDiscarded:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    @pytest.mark.parametrize("error", UNWINDING_ERRORS)
    def test_host_failure_discards_the_instance(self, engine: Engine, error: Exception) -> None:
        """A host function failing halfway through the guest: the next call sees a fresh
        instance, never the half-updated one."""
        sandbox = Sandbox(HALF_UPDATED, engine=engine, host_functions=_failing(error), codec="raw")
        with pytest.raises(PluginError):
            sandbox.call_bytes("step", b"")
        assert sandbox.call_bytes("steps", b"") == b"0"

    @pytest.mark.parametrize("error", UNWINDING_ERRORS)
    def test_host_failure_discards_the_worker_instance(
        self, engine: Engine, error: Exception
    ) -> None:
        """The same in a worker process."""
        with WorkerPool(size=1) as pool:
            sandbox = ProcessSandbox(
                HALF_UPDATED, engine=engine, host_functions=_failing(error), codec="raw", pool=pool
            )
            with pytest.raises(PluginError):
                sandbox.call_bytes("step", b"")
            assert sandbox.call_bytes("steps", b"") == b"0"


ECHO = (ROOT / "hostapi" / "examples" / "echo.wat").read_text()
LONE_SURROGATES = ["\ud800", "text \udfff end", {"key": "\udc80"}, ["\ud83d"]]


class TestInputBlame:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    @pytest.mark.parametrize("value", LONE_SURROGATES)
    def test_lone_surrogate_is_a_caller_error(self, engine: Engine, value: Any) -> None:
        """A string the JSON codec cannot write as UTF-8 is refused before the guest runs, as
        the caller's error (channel ``input``)."""
        sandbox = Sandbox(ECHO, engine=engine)
        with pytest.raises(CommunicationError) as caught:
            sandbox.call("echo", value)
        assert caught.value.channel == "input"
        assert "surrogate" in caught.value.message

    def test_lone_surrogates_never_open_the_breaker(self, engine: Engine) -> None:
        """Five calls with unencodable input, then a good one: the breaker stays closed."""
        host = PluginHost(blocked=())
        host.load(
            {
                "name": "echo",
                "engine": engine.name,
                "module": {"wat": ECHO},
                "functions": {"echo": {}},
                "policy": {"fallbacks": []},
            }
        )
        for _ in range(6):
            with pytest.raises(PluginError) as caught:
                host.call("echo", "echo", "\ud800")
            assert getattr(caught.value, "error", caught.value).kind == "communication"
        assert host.breaker("echo", "echo").state.value == "closed"
        assert host.call("echo", "echo", "fine") == "fine"


OUT_OF_RANGE = [
    pytest.param({"timeout": 2**31 / 1000 + 1}, id="timeout-over-2^31-ms"),
    pytest.param({"timeout": "600 h"}, id="timeout-600-hours"),
    pytest.param({"timeout": "99999999999999 s"}, id="timeout-huge-text"),
    pytest.param({"memory": 2**64}, id="memory-2^64"),
    pytest.param({"max_input": 2**64}, id="max_input-2^64"),
    pytest.param({"max_output": 2**70}, id="max_output-2^70"),
    pytest.param({"fuel": 2**64}, id="fuel-2^64"),
]


class TestRangeChecks:
    @pytest.mark.parametrize("limits", OUT_OF_RANGE)
    def test_api_limits_out_of_range(self, limits: dict[str, Any]) -> None:
        """Limits made in code: a configuration error naming the field."""
        (name,) = limits
        with pytest.raises(ConfigurationError) as caught:
            Limits(**limits)
        assert caught.value.field == f"limits.{name}"

    @pytest.mark.parametrize("limits", OUT_OF_RANGE)
    def test_manifest_limits_out_of_range(self, limits: dict[str, Any]) -> None:
        """Limits in a manifest: a configuration error naming the field."""
        (name,) = limits
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict({"name": "p", "module": {"wat": ECHO}, "limits": limits})
        assert caught.value.field == f"limits.{name}"

    @pytest.mark.parametrize(
        "policy",
        [{"max_fuel": 2**64}, {"max_timeout": "600 h"}, {"max_memory": 2**64}],
        ids=["max_fuel", "max_timeout", "max_memory"],
    )
    def test_manifest_ceilings_out_of_range(self, policy: dict[str, Any]) -> None:
        """Recovery ceilings are range-checked like the limits they raise."""
        (name,) = policy
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict({"name": "p", "module": {"wat": ECHO}, "policy": policy})
        assert caught.value.field == f"policy.{name}"

    @pytest.mark.parametrize(
        "option", [["--timeout", "600 h"], ["--memory", "20000000 GiB"], ["--fuel", str(2**64)]]
    )
    def test_cli_limits_out_of_range(self, option: list[str], tmp_path: Any) -> None:
        """Limits on the command line: a usage error (exit status 2), no traceback."""
        module = tmp_path / "echo.wat"
        module.write_text(ECHO)
        result = subprocess.run(
            [sys.executable, "-m", "wasm_plugins.cli", "call", str(module), "echo", *option],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            input="{}",
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr

    def test_worker_timeout_at_the_largest_allowed_value(self, engine: Engine) -> None:
        """The largest timeout Limits accepts works through a worker process."""
        with WorkerPool(size=1) as pool:
            sandbox = ProcessSandbox(
                ECHO, engine=engine, limits=Limits(timeout=MAX_DURATION), pool=pool
            )
            assert sandbox.call("echo", {"a": 1}) == {"a": 1}


SPIN = f"""
(module
  {_PRELUDE}
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $packed (local.get $ptr) (local.get $len)))
  (func (export "spin") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0))
)
"""

_FORK_CHILD = """
import multiprocessing, sys
from wasm_plugins.errors import DeadlineExceeded, PluginError
from wasm_plugins.sandbox import Limits, Sandbox
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from wasm_plugins.manifest import Manifest

engine, isolation, spin, echo = sys.argv[1:5]
timed = engine == "wasmtime" or isolation == "process"
limits = Limits(timeout=0.2) if timed else Limits()
pool = WorkerPool(size=1) if isolation == "process" else None

def make(source):
    if pool is None:
        return Sandbox(source, engine=engine, limits=limits)
    return ProcessSandbox(source, engine=engine, limits=limits, pool=pool)

def run(sandbox):
    seen = [sandbox.call("echo", 1)]
    if timed:
        try:
            sandbox.call("spin")
        except DeadlineExceeded:
            seen.append("deadline")
    return seen

parent = make(spin)
print("parent", run(parent), flush=True)

def child(queue):
    seen = []
    try:
        seen += run(parent)
        seen += run(make(echo + ";; compiled after the fork"))
        queue.put(seen)
    except PluginError as error:
        queue.put(f"{error.kind}: {error.message} (after {seen})")

context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
print("child", queue.get(timeout=60), flush=True)
process.join(10)
print("exit", process.exitcode, flush=True)
"""


def _run_child(script: str, *args: str, timeout: float = 120, **env: str) -> str:
    """Run ``script`` in a fresh interpreter: a crash or a hang fails the test, never the run."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env={**os.environ, **env},
        )
    except subprocess.TimeoutExpired as expired:
        hung = f"the child hung for {timeout} s; its output: {expired.stdout!r}"
    else:
        hung = ""
    if hung:
        pytest.fail(hung)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    return result.stdout


class TestFork:
    @pytest.mark.parametrize("isolation", ["in-process", "process"])
    def test_forked_child_runs_plugins(self, engine: Engine, isolation: str) -> None:
        """A host that ran plugins, forked with multiprocessing: in the child, its plugins run,
        timeouts fire, and a module compiled after the fork loads (or a typed error says to
        create the host after the fork); nothing hangs."""
        output = _run_child(_FORK_CHILD, engine.name, isolation, SPIN, SPIN)
        lines = dict(line.split(" ", 1) for line in output.strip().splitlines())
        timed = engine.name == "wasmtime" or isolation == "process"
        expected = [1, "deadline"] if timed else [1]
        assert lines["parent"] == repr(expected)
        child = lines["child"]
        if engine.name == "wasmer" and isolation == "in-process":
            # Wasmer's compiler threads stayed in the parent: the plugin loaded before the fork
            # runs, the new one is refused with a typed error.
            assert child.startswith("configuration: ") and "fork" in child
            assert child.endswith(f"(after {expected})")
        elif isolation == "process":
            # The parent's workers are not the child's to use.
            assert child.startswith("instance: ") and "fork" in child
        else:
            assert child == repr(expected * 2)
        assert lines["exit"] == "0"


_GIL_HELD_CHILD = """
import ctypes, os, sys, threading, time
from wasm_plugins.engine import FuncSignature
from wasm_plugins.errors import DeadlineExceeded
from wasm_plugins.sandbox import HostFunction, Limits, Sandbox

source, give_up_after = sys.argv[1], float(sys.argv[2])
started = threading.Event()
sandbox = Sandbox(
    source,
    engine="wasmtime",
    limits=Limits(timeout=0.2),
    host_functions=[
        HostFunction("test", "started", FuncSignature((), ()), lambda call: started.set())
    ],
)
# Called through PyDLL, pread keeps the GIL (a plain file read would let it go during the read).
pread = ctypes.PyDLL(None).pread
pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
caller = os.open(f"/proc/self/task/{threading.get_native_id()}/stat", os.O_RDONLY)
status = ctypes.create_string_buffer(4096)
verdict = []

def caller_state():
    length = pread(caller, status, len(status), 0)
    return status.raw[:length].rsplit(b")", 1)[1].split()[0]

def hold_the_gil():
    # The guest tells (through a host function) that it has started its endless loop; from the
    # moment this thread gets the GIL back, it runs Python code only, under a switch interval
    # longer than the test, and never lets go of the GIL until the caller's thread blocks, which
    # it does only once the guest has stopped and the call wants the GIL back. Every other
    # Python thread (a Python epoch ticker included) waits all that time.
    started.wait()
    give_up = time.monotonic() + give_up_after
    while caller_state() != b"S":
        if time.monotonic() > give_up:
            verdict.append("still running when the GIL holder gave up")
            return
    verdict.append("stopped while the GIL was held")

holder = threading.Thread(target=hold_the_gil)
holder.start()
sys.setswitchinterval(1000.0)
try:
    sandbox.call("count")
    outcome = "returned"
except DeadlineExceeded:
    outcome = "deadline"
holder.join()
print(verdict[0], outcome)
"""

STARTS_THEN_COUNTS = f"""
(module
  (import "test" "started" (func $started))
  {_PRELUDE}
  ;; Tells the host it has started, then counts at address 64 for ever.
  (func (export "count") (param i32 i32) (result i64)
    (call $started)
    (loop $forever
      (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 1)))
      (br $forever))
    (i64.const 0))
)
"""

COUNT = f"""
(module
  {_PRELUDE}
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $packed (local.get $ptr) (local.get $len)))
  ;; Counts at address 64 for ever.
  (func (export "count") (param i32 i32) (result i64)
    (loop $forever
      (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 1)))
      (br $forever))
    (i64.const 0))
)
"""


class TestTimeoutWithoutTheGil:
    def test_deadline_fires_while_a_python_thread_holds_the_gil(
        self, wasmtime_engine: Engine
    ) -> None:
        """A Python thread that never lets go of the GIL does not hold back a wasmtime timeout:
        the epoch advances outside the interpreter."""
        # The give-up window only bounds a failing run; a passing one ends as soon as the guest
        # is stopped.
        output = _run_child(_GIL_HELD_CHILD, STARTS_THEN_COUNTS, "60")
        assert output.strip() == "stopped while the GIL was held deadline"

    def test_deadline_fires_while_four_threads_spin(self, wasmtime_engine: Engine) -> None:
        """The everyday case: four busy Python threads, a 200 ms timeout still ends the call
        with a DeadlineExceeded (how soon is measured in benchmarks/bench_containment.py)."""
        sandbox = Sandbox(COUNT, engine=wasmtime_engine, limits=Limits(timeout=0.2))
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                pass

        threads = [threading.Thread(target=spin) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            with pytest.raises(DeadlineExceeded):
                sandbox.call("count")
        finally:
            stop.set()
            for thread in threads:
                thread.join()


RECURSE = f"""
(module
  {_PRELUDE}
  (func $down (param $n i32) (result i32)
    (i32.add (call $down (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "recurse") (param i32 i32) (result i64)
    (drop (call $down (i32.const 0)))
    (i64.const 0))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $packed (local.get $ptr) (local.get $len)))
)
"""

_SMALL_STACK_CHILD = """
import sys, threading
from wasm_plugins.errors import ExecutionError
from wasm_plugins.sandbox import Sandbox
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from wasm_plugins.manifest import Manifest

engine, isolation, where, source = sys.argv[1:5]

def make():
    if isolation == "process":
        return ProcessSandbox(source, engine=engine, pool=WorkerPool(size=1))
    return Sandbox(source, engine=engine)

def attempt(sandbox):
    try:
        sandbox.call("recurse")
    except ExecutionError as error:
        print(error.kind, error.trap, len(error.message) < 10_000, flush=True)
    print("echo", sandbox.call("echo", "still here"), flush=True)

if where == "thread":
    # Made and called from a thread of 512 KiB, as threading.stack_size() allows.
    threading.stack_size(512 * 1024)
    thread = threading.Thread(target=lambda: attempt(make()))
    thread.start()
    thread.join()
else:
    attempt(make())
"""


def _small_main_stack() -> None:
    resource.setrlimit(
        resource.RLIMIT_STACK, (512 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1])
    )


class TestStackSafety:
    @pytest.fixture(params=ALL_ENGINE_NAMES)
    def engine(self, request: pytest.FixtureRequest) -> Engine:
        """Every engine, wasmer-sdk (out of process) included."""
        return engine_named(request.param)

    @pytest.mark.parametrize(
        ("where", "isolation"),
        # A worker's stack is its own main thread's: the host's ulimit -s, not a host thread's.
        [("thread", "in-process"), ("main", "in-process"), ("main", "process")],
    )
    def test_guest_recursion_on_a_small_stack(
        self, engine: Engine, isolation: str, where: str
    ) -> None:
        """Endless guest recursion, called from a thread of 512 KiB or under ``ulimit -s 512``:
        a typed stack overflow with a short message, and the host goes on."""
        result = subprocess.run(
            [sys.executable, "-c", _SMALL_STACK_CHILD, engine.name, isolation, where, RECURSE],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            preexec_fn=_small_main_stack if where == "main" else None,
        )
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert result.stdout.splitlines() == ["runtime stack_overflow True", "echo still here"]

    def test_stack_overflow_has_bounded_host_memory(self, engine: Engine) -> None:
        """One endless recursion on the main thread's usual stack: a typed stack overflow, and
        the host's peak memory grows by far less than a description of every native frame would
        take (measured in a child process, whose peak is its own)."""
        result = subprocess.run(
            [sys.executable, "-c", _PEAK_CHILD, engine.name, RECURSE],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        kind, trap, grown = result.stdout.split()
        assert (kind, trap) == ("runtime", "stack_overflow")
        assert int(grown) < 60 * 1024 * 1024


_PEAK_CHILD = """
import resource, sys
from wasm_plugins.errors import ExecutionError
from wasm_plugins.sandbox import Sandbox

engine, source = sys.argv[1:3]
sandbox = Sandbox(source, engine=engine)
sandbox.call("echo", "warm")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    sandbox.call("recurse")
except ExecutionError as error:
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(error.kind, error.trap, grown * 1024)
"""


def _budget_module(work: str) -> str:
    """A module whose start function and ``work`` export each do ``work`` once; ``trap`` traps,
    so that the next call makes a fresh instance and runs the start function inside it."""
    return f"""
(module
  (import "test" "now_ms" (func $now_ms (result i64)))
  {_PRELUDE}
  (func $work {work})
  (start $work)
  (func (export "work") (param i32 i32) (result i64) (call $work) (i64.const 0))
  (func (export "trap") (param i32 i32) (result i64) unreachable)
)
"""


# About 6 units of fuel an iteration: 60 000 units each.
BURNS_FUEL = _budget_module(
    """(local $left i32) (local.set $left (i32.const 10000))
    (loop $again (br_if $again (local.tee $left (i32.sub (local.get $left) (i32.const 1)))))"""
)
# Wall-clock work that the guest measures itself: 1.2 s each.
TAKES_TIME = _budget_module(
    """(local $until i64) (local.set $until (i64.add (call $now_ms) (i64.const 1200)))
    (loop $again (br_if $again (i64.lt_s (call $now_ms) (local.get $until))))"""
)
_NOW_MS = (
    HostFunction(
        "test", "now_ms", FuncSignature((), ("i64",)), lambda call: time.monotonic_ns() // 10**6
    ),
)
# Epoch ticks that the guest makes itself, through the host: 3 000 each (6 s of a wasmtime
# timeout), so that the deadline depends on the work done, never on how busy the machine is.
TAKES_TICKS = _budget_module(
    """(local $left i32) (local.set $left (i32.const 3000))
    (loop $again
      (drop (call $now_ms))
      (br_if $again (local.tee $left (i32.sub (local.get $left) (i32.const 1)))))"""
)


class _TickClock:
    """The monotonic clock the wasmtime adapter reads, moved on by one epoch tick (2 ms) every
    time the guest makes one: its deadline callback sees the time the ticks stand for."""

    def __init__(self) -> None:
        self.ticked = 0

    def monotonic(self) -> float:
        return time.monotonic() + self.ticked * TICK


def _ticking(engine: Engine, clock: _TickClock) -> tuple[HostFunction, ...]:
    raw = engine.wasmtime_engine(False)  # type: ignore[attr-defined]

    def tick(call: HostCall) -> int:
        clock.ticked += 1
        raw.increment_epoch()
        return 0

    return (HostFunction("test", "now_ms", FuncSignature((), ("i64",)), tick),)


def _budget_sandbox(
    source: str,
    engine: Engine,
    isolation: str,
    limits: Limits,
    host_functions: tuple[HostFunction, ...] = _NOW_MS,
) -> Any:
    if isolation == "process":
        return ProcessSandbox(
            source,
            engine=engine,
            limits=limits,
            host_functions=host_functions,
            pool=WorkerPool(size=1),
        )
    return Sandbox(source, engine=engine, limits=limits, host_functions=host_functions)


class TestBudgetSharedByTheCall:
    """One budget covers every guest entry of a call: the start function of an instance made for
    the call as well as the function."""

    def _start_and_function_exceed(self, sandbox: Any, failure: type[PluginError]) -> PluginError:
        # Made with the sandbox, outside any call: the start function fits on its own.
        with sandbox:
            assert sandbox.call_bytes("work", b"") == b"", "the function fits on its own"
            with pytest.raises(PluginError) as trapped:
                sandbox.call_bytes("trap", b"")
            assert trapped.value.kind == "runtime"
            with pytest.raises(failure) as raised:
                sandbox.call_bytes("work", b"")
            return raised.value

    @pytest.mark.parametrize("isolation", ["in-process", "process"])
    def test_fuel(self, engine: Engine, isolation: str) -> None:
        """Start function and function at 60 000 units each, under 100 000 for the call (native
        fuel on wasmtime, a metered module on wasmer)."""
        sandbox = _budget_sandbox(BURNS_FUEL, engine, isolation, Limits(fuel=100_000))
        error = self._start_and_function_exceed(sandbox, ResourceLimitExceeded)
        assert error.resource == "fuel"  # type: ignore[attr-defined]

    def test_fuel_on_wasmer_sdk(self) -> None:
        """The same on wasmer-sdk, whose metered module asks the host's meter (a frame) when
        its counter runs out: the start function's first charge comes before hello."""
        sandbox = _budget_sandbox(
            BURNS_FUEL, engine_named(SDK_ENGINE), "in-process", Limits(fuel=100_000)
        )
        error = self._start_and_function_exceed(sandbox, ResourceLimitExceeded)
        assert error.resource == "fuel"  # type: ignore[attr-defined]

    def test_timeout_in_process(
        self, wasmtime_engine: Engine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Start function and function at 3 000 epoch ticks each (made by the guest, with the
        adapter's clock moved on to match), under a 10 s timeout (5 001 ticks) for the call."""
        clock = _TickClock()
        monkeypatch.setattr(_wasmtime, "time", clock)
        sandbox = _budget_sandbox(
            TAKES_TICKS,
            wasmtime_engine,
            "in-process",
            Limits(timeout=10.0),
            _ticking(wasmtime_engine, clock),
        )
        self._start_and_function_exceed(sandbox, DeadlineExceeded)

    @pytest.mark.slow
    def test_timeout_in_a_worker(self, engine: Engine) -> None:
        """Start function and function at 1.2 s each, under 2 s for the call: the engine's
        deadline in the worker covers both, as does the host's own deadline for the worker."""
        sandbox = _budget_sandbox(TAKES_TIME, engine, "process", Limits(timeout=2.0))
        self._start_and_function_exceed(sandbox, DeadlineExceeded)


ERROR_THEN_HOST = f"""
(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (import "test" "answer" (func $answer (result i64)))
  {_PRELUDE}
  (func (export "ask") (param i32 i32) (result i64)
    (i64.store (i32.const 0) (call $answer))
    (call $packed (i32.const 0) (i32.const 8)))
)
"""


class TestWorkerImports:
    def test_host_function_after_one_the_worker_serves(self, engine: Engine) -> None:
        """A module importing the ABI's ``error`` (served in the worker) before a host function
        (served by the host): the worker asks the host for the right one."""
        answer = HostFunction("test", "answer", FuncSignature((), ("i64",)), lambda call: 42)
        with ProcessSandbox(
            ERROR_THEN_HOST,
            engine=engine,
            codec="raw",
            host_functions=[answer],
            pool=WorkerPool(size=1),
        ) as sandbox:
            assert sandbox.call_bytes("ask", b"") == (42).to_bytes(8, "little")
