"""Worker-process isolation on every engine: deadlines by killing the worker, dead workers reported
and replaced, memory kept out of the host, host functions through the channel, the bulkhead,
asyncio, errors crossing the channel intact, a channel a compromised worker cannot abuse, and no
worker left behind."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CONFORMANCE, ROOT
from wasm_plugins.builtin.host_functions import builtin_host_functions
from wasm_plugins.engine import Engine, FuncSignature, WasiDirectory, WasiSettings
from wasm_plugins.errors import (
    CommunicationError,
    CompilationError,
    ConfigurationError,
    DeadlineExceeded,
    ExecutionError,
    HostIOError,
    InstanceError,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
    SecurityViolation,
)
from wasm_plugins.isolation import (
    Bulkhead,
    ProcessSandbox,
    WorkerPool,
    choose_isolation,
    close_all_pools,
    limits_needing_worker,
)
from wasm_plugins.sandbox import (
    HostCall,
    HostFunction,
    Limits,
    LoadedModule,
    PluginSandbox,
    Sandbox,
    u32,
)
from wasm_plugins.services import HostServices

ABI = CONFORMANCE / "abi.wat"
START_LOOP = CONFORMANCE / "start_loop.wat"
HOSTILE = ROOT / "plugins" / "hostile-pack" / "src" / "wasm_plugins_hostile_pack"
MiB = 1024 * 1024

ALLOCATOR = """
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (local.get $ptr) (local.get $len)))
"""

# Host functions of module "test": each test binds them to its own events.
GATED = f"""(module
  (import "test" "entered" (func $entered))
  (import "test" "gate" (func $gate))
  {ALLOCATOR}
  (func (export "spin") (param i32 i32) (result i64)
    (call $entered)
    (loop $forever (br $forever))
    (i64.const 0))
  (func (export "gated_echo") (param $ptr i32) (param $len i32) (result i64)
    (call $entered)
    (call $gate)
    (call $pack (local.get $ptr) (local.get $len))))"""

# reverse(ptr, len) -> pages: reads the input, writes it back reversed, returns memory.size().
# fail(ptr, len) -> i32: fails as the input says. read_far() -> i32: reads outside memory.
HOST_CALLS = f"""(module
  (import "test" "reverse" (func $reverse (param i32 i32) (result i32)))
  (import "test" "fail" (func $fail (param i32 i32) (result i32)))
  (import "test" "read_far" (func $read_far (result i32)))
  {ALLOCATOR}
  (func (export "reverse") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $reverse (local.get $ptr) (local.get $len)))
    (call $pack (local.get $ptr) (local.get $len)))
  (func (export "pages") (param $ptr i32) (param $len i32) (result i64)
    (i32.store (i32.const 4096) (call $reverse (local.get $ptr) (local.get $len)))
    (call $pack (i32.const 4096) (i32.const 4)))
  (func (export "fail") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $fail (local.get $ptr) (local.get $len)))
    (call $pack (local.get $ptr) (local.get $len)))
  (func (export "read_far") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $read_far))
    (call $pack (local.get $ptr) (local.get $len))))"""

# put: the first byte is the key's length, then the key, then the value; get: the key.
KV = f"""(module
  (import "wasm_plugins" "kv_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "wasm_plugins" "kv_set" (func $set (param i32 i32 i32 i32) (result i32)))
  {ALLOCATOR}
  (data (i32.const 4000) "<missing>")
  (func (export "put") (param $ptr i32) (param $len i32) (result i64)
    (local $k i32)
    (local.set $k (i32.load8_u (local.get $ptr)))
    (i32.store (i32.const 4096)
      (call $set (i32.add (local.get $ptr) (i32.const 1)) (local.get $k)
                 (i32.add (i32.add (local.get $ptr) (i32.const 1)) (local.get $k))
                 (i32.sub (i32.sub (local.get $len) (i32.const 1)) (local.get $k))))
    (call $pack (i32.const 4096) (i32.const 4)))
  (func (export "get") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32)
    (local.set $n (call $get (local.get $ptr) (local.get $len) (i32.const 4096) (i32.const 1024)))
    (if (result i64) (i32.lt_s (local.get $n) (i32.const 0))
      (then (call $pack (i32.const 4000) (i32.const 9)))
      (else (call $pack (i32.const 4096) (local.get $n))))))"""

# Grows 1 MiB at a time and writes every page it gets, so the pages are really in memory.
TOUCH_BOMB = f"""(module
  {ALLOCATOR}
  (func (export "touch_bomb") (param i32 i32) (result i64)
    (local $old i32) (local $addr i32) (local $end i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          (local.set $addr (i32.shl (local.get $old) (i32.const 16)))
          (local.set $end (i32.add (local.get $addr) (i32.const 1048576)))
          (loop $touch
            (i32.store (local.get $addr) (i32.const 1))
            (local.set $addr (i32.add (local.get $addr) (i32.const 4096)))
            (br_if $touch (i32.lt_u (local.get $addr) (local.get $end))))
          (br $more))))
    unreachable))"""

# Grows until refused, then returns its whole memory as output.
GROW_THEN_ALL = f"""(module
  {ALLOCATOR}
  (func (export "grow_then_all") (param i32 i32) (result i64)
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (i64.extend_i32_u (i32.shl (memory.size) (i32.const 16)))))"""

# Prints to stdout through WASI, and reads /data/inside.txt.
WASI = f"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  {ALLOCATOR}
  (data (i32.const 100) "printed by the guest\\n")
  (data (i32.const 160) "inside.txt")
  (func (export "print") (param i32 i32) (result i64)
    (i32.store (i32.const 200) (i32.const 100))
    (i32.store (i32.const 204) (i32.const 21))
    (drop (call $write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300)))
    (call $pack (i32.const 4000) (i32.const 0)))
  (func (export "read_inside") (param i32 i32) (result i64)
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 160) (i32.const 10) (i32.const 0)
                      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    (i32.store (i32.const 24) (i32.const 5000))
    (i32.store (i32.const 28) (i32.const 1000))
    (drop (call $read (i32.load (i32.const 16)) (i32.const 24) (i32.const 1) (i32.const 32)))
    (call $pack (i32.const 5000) (i32.load (i32.const 32)))))"""

# Reports an error of 64 KiB of control bytes (not JSON): six bytes each once escaped as JSON.
HUGE_GUEST_ERROR = """(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 3)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "shout") (param i32 i32) (result i64)
    (memory.fill (i32.const 65536) (i32.const 1) (i32.const 65536))
    (call $error (i32.const 65536) (i32.const 65536))
    (i64.const 0)))"""

NO_RESULT = FuncSignature((), ())


def child_pids() -> set[int]:
    """This process's children, read from /proc (zombies included: they are not reaped yet)."""
    me = os.getpid()
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            children.add(int(entry))
    return children


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``Vm*`` figure of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def wire_fields(error: PluginError) -> dict[str, Any]:
    """An error's dict form without its context (which says where it ran)."""
    data = error.to_dict()
    data.pop("context")
    return data


def wait_for_exit(pids: set[int], seconds: float = 10.0) -> set[int]:
    """Poll until the processes are gone (or the deadline passes); the ones still there."""
    deadline = time.monotonic() + seconds
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
        if alive:
            time.sleep(0.02)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


class Gate:
    """Host functions ``test.entered`` and ``test.gate``, bound to events of one test."""

    def __init__(self, wait: Callable[[], None] | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._wait = wait or (lambda: self.release.wait(20))

    def functions(self) -> tuple[HostFunction, ...]:
        def entered(call: HostCall) -> None:
            self.entered.set()

        def gate(call: HostCall) -> None:
            self._wait()

        return (
            HostFunction("test", "entered", NO_RESULT, entered),
            HostFunction("test", "gate", NO_RESULT, gate),
        )


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    """A pool of two workers shared by the tests that do not count or kill workers."""
    with WorkerPool(2, name="test-isolation") as shared:
        yield shared


class TestProcessSandboxTimeout:
    def test_endless_loop_is_stopped_and_the_host_goes_on(
        self, engine: Engine, pool: WorkerPool
    ) -> None:
        """An endless loop with a 200 ms timeout ends in a DeadlineExceeded,
        and afterwards another plugin and the same plugin answer correctly."""
        endless = ProcessSandbox(
            HOSTILE / "endless-loop.wat",
            engine=engine,
            pool=pool,
            limits=Limits(timeout="200 ms"),
            name="endless-loop",
        )
        other = ProcessSandbox(ABI, engine=engine, pool=pool, name="abi")
        with pytest.raises(DeadlineExceeded) as caught:
            endless.call("spin")
        assert caught.value.limit == pytest.approx(0.2)
        assert caught.value.duration is not None and caught.value.duration >= 0.2
        assert caught.value.context is not None
        assert caught.value.context.environment.isolation == "process"
        assert other.call("upper", "after the loop") == "AFTER THE LOOP"
        with pytest.raises(DeadlineExceeded):
            endless.call("spin")
        limited = ProcessSandbox(
            ABI, engine=engine, pool=pool, limits=Limits(timeout="200 ms"), name="abi-limited"
        )
        with pytest.raises(DeadlineExceeded):
            limited.call("loop_forever")
        assert limited.call("echo", {"same": "plugin"}) == {"same": "plugin"}
        for sandbox in (endless, other, limited):
            sandbox.close()

    def test_start_function_loop_is_stopped_at_load(self, engine: Engine, pool: WorkerPool) -> None:
        """A start function that never returns fails the load with a timeout of instantiation."""
        with pytest.raises(DeadlineExceeded) as caught:
            ProcessSandbox(START_LOOP, engine=engine, pool=pool, limits=Limits(timeout="200 ms"))
        assert caught.value.operation == "instantiation"
        assert caught.value.limit == pytest.approx(0.2)

    def test_timeout_on_wasmer_in_process_and_in_a_worker(self, wasmer_engine: Engine) -> None:
        """wasmer enforces a timeout in-process (a metered module), and in a worker too: the
        worker's metered module stops the guest, and the worker stays."""
        Sandbox(ABI, engine=wasmer_engine, limits=Limits(timeout=1)).close()
        with ProcessSandbox(
            ABI, engine=wasmer_engine, limits=Limits(timeout="200 ms"), concurrency=1
        ) as sandbox:
            assert sandbox.call("echo", [1]) == [1]
            with pytest.raises(DeadlineExceeded):
                sandbox.call("loop_forever")
            assert sandbox.call("echo", [2]) == [2]


class TestWorkerPoolReplacement:
    @pytest.mark.parametrize(
        "signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"]
    )
    def test_killed_worker_is_an_instance_error(
        self, engine: Engine, signal_number: signal.Signals
    ) -> None:
        """A worker killed in the middle of a call gives an InstanceError naming the signal, and
        the next call succeeds on a fresh worker."""
        gate = Gate()
        with ProcessSandbox(
            GATED, engine=engine, host_functions=gate.functions(), concurrency=1
        ) as sandbox:
            (victim,) = sandbox.pool.pids()
            errors: list[BaseException] = []

            def call() -> None:
                try:
                    sandbox.call("spin")
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=call)
            thread.start()
            assert gate.entered.wait(20)
            os.kill(victim, signal_number)
            thread.join(20)
            assert len(errors) == 1
            error = errors[0]
            assert isinstance(error, InstanceError)
            assert error.exit_signal == signal_number.name
            assert signal_number.name in error.message
            assert sandbox.call("echo", "fresh") == "fresh"
            assert sandbox.pool.pids() != [victim]
            assert not Path(f"/proc/{victim}").exists()

    def test_worker_that_died_idle_is_replaced_before_a_call(self, engine: Engine) -> None:
        """A worker killed between calls is replaced before the next call, which succeeds."""
        with ProcessSandbox(ABI, engine=engine, concurrency=1) as sandbox:
            (victim,) = sandbox.pool.pids()
            os.kill(victim, signal.SIGKILL)
            assert wait_for_exit({victim}) == set()
            assert sandbox.call("upper", "next") == "NEXT"
            assert sandbox.pool.pids() != [victim]

    def test_worker_that_cannot_start(self, engine: Engine) -> None:
        """A worker command that exits at once fails the load with an InstanceError saying the
        worker did not start, with its exit status."""
        command = [sys.executable, "-c", "import sys; sys.exit(3)"]
        with WorkerPool(1, command=command) as broken, pytest.raises(InstanceError) as caught:
            ProcessSandbox(ABI, engine=engine, pool=broken)
        assert (caught.value.state, caught.value.exit_code) == ("starting", 3)


class TestWorkerMemoryLimit:
    def test_memory_bomb_stays_in_the_worker(self, engine: Engine) -> None:
        """A bomb allowed 1 GiB by its plugin limit is stopped by the worker's data limit with a
        typed error (a refused grow, or the worker's own heap running out first, depending on
        which allocation meets the limit), and the host's RSS did not grow."""
        with WorkerPool(1, memory_limit=256 * MiB) as small:
            sandbox = ProcessSandbox(
                TOUCH_BOMB, engine=engine, pool=small, limits=Limits(memory="1 GiB")
            )
            (worker,) = small.pids()
            host_before = status_kib("VmRSS")
            with pytest.raises(PluginError) as caught:
                sandbox.call("touch_bomb")
            host_after = status_kib("VmRSS")
            error = caught.value
            if isinstance(error, ResourceLimitExceeded):
                assert error.resource == "memory"
                assert error.limit == 1024 * MiB
                assert error.used is not None and 100 * MiB < error.used <= 256 * MiB
                assert status_kib("VmHWM", worker) > 100 * 1024
            else:
                assert isinstance(error, InstanceError)
                assert error.state == "out_of_memory"
            assert host_after - host_before < 32 * 1024
            assert sandbox.call("echo", "still here") == "still here"

    def test_plugin_memory_limit_in_the_worker(self, engine: Engine, pool: WorkerPool) -> None:
        """The hostile memory bomb under its manifest's 8 MiB limit gets the same error as
        in-process."""
        limits = Limits(memory="8 MiB")
        remote = ProcessSandbox(
            HOSTILE / "memory-bomb.wat", engine=engine, pool=pool, limits=limits
        )
        local = Sandbox(HOSTILE / "memory-bomb.wat", engine=engine, limits=limits)
        with pytest.raises(ResourceLimitExceeded) as in_worker:
            remote.call("explode")
        with pytest.raises(ResourceLimitExceeded) as in_process:
            local.call("explode")
        assert wire_fields(in_worker.value) == wire_fields(in_process.value)
        assert isinstance(in_worker.value.__cause__, ExecutionError)
        remote.close()

    def test_worker_out_of_python_memory_is_replaced(self, engine: Engine) -> None:
        """A worker whose Python heap hits the data limit (copying out a huge output) reports an
        InstanceError, exits, and the next call runs on a fresh worker."""
        with WorkerPool(1, memory_limit=160 * MiB) as small:
            sandbox = ProcessSandbox(
                GROW_THEN_ALL,
                engine=engine,
                pool=small,
                codec="raw",
                limits=Limits(memory="1 GiB", max_output="1 GiB"),
            )
            (first,) = small.pids()
            with pytest.raises(InstanceError) as caught:
                sandbox.call_bytes("grow_then_all", b"")
            assert caught.value.state == "out_of_memory"
            assert small.pids() != [first]
            assert sandbox.call_bytes("echo", b"again") == b"again"
            assert wait_for_exit({first}) == set()


class TestProcessSandboxUnderLoad:
    def test_many_mixed_calls_from_many_threads(self, engine: Engine) -> None:
        """200 good and hostile calls from 8 threads each end in their own value or a typed
        error of the expected kind, and closing leaves no worker process behind."""
        before = child_pids()
        pool = WorkerPool(2, name="mixed")
        workers = set(pool.pids())
        assert workers and workers <= child_pids()
        fast = Limits(timeout="200 ms")
        # Calls meant to end in their own value or error get a deadline that a busy machine
        # cannot reach (a first trap on wasmer can take hundreds of milliseconds); the endless
        # ones get a short one.
        abi = ProcessSandbox(
            ABI, engine=engine, pool=pool, limits=Limits(timeout="30 s"), name="abi"
        )
        looping = ProcessSandbox(ABI, engine=engine, pool=pool, limits=fast, name="abi-looping")
        bad = ProcessSandbox(HOSTILE / "bad-output.wat", engine=engine, pool=pool, name="bad")
        endless = ProcessSandbox(
            HOSTILE / "endless-loop.wat", engine=engine, pool=pool, limits=fast, name="endless"
        )
        plan: list[tuple[ProcessSandbox, str, str | None]] = []
        hostile = [
            (abi, "trap_unreachable", "runtime"),
            (abi, "trap_divide_by_zero", "runtime"),
            (abi, "memory_bomb", "resource_limit_exceeded"),
            (abi, "bad_json", "communication"),
            (abi, "guest_error", "runtime"),
            (bad, "not_json", "communication"),
            (bad, "pointer_out_of_bounds", "communication"),
            (bad, "huge_length", "resource_limit_exceeded"),
        ]
        for i in range(200):
            if i % 80 == 7:
                plan.append((endless, "spin", "timeout"))
            elif i % 80 == 47:
                plan.append((looping, "loop_forever", "timeout"))
            elif i % 3 == 0:
                plan.append(hostile[i % len(hostile)])
            else:
                plan.append((abi, "echo" if i % 2 else "upper", None))

        def run(index: int) -> tuple[str, Any]:
            sandbox, function, _ = plan[index]
            text = f"call {index}"
            try:
                return "value", sandbox.call(function, text)
            except PluginError as error:
                return "error", error

        with ThreadPoolExecutor(max_workers=8) as threads:
            outcomes = list(threads.map(run, range(len(plan))))
        for index, ((_, function, expected_kind), (what, value)) in enumerate(
            zip(plan, outcomes, strict=True)
        ):
            if expected_kind is None:
                expected = f"call {index}" if function == "echo" else f"CALL {index}"
                assert (what, value) == ("value", expected), index
            else:
                assert what == "error", (index, value)
                assert value.kind == expected_kind, (index, value)
        for sandbox in (abi, looping, bad, endless):
            sandbox.close()
        pool.close()
        assert child_pids() - before == set()
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


class TestRemoteHostFunctions:
    @staticmethod
    def _functions(log: list[str]) -> tuple[HostFunction, ...]:
        def reverse(call: HostCall, ptr: int, length: int) -> int:
            data = call.memory.read(u32(ptr), u32(length))
            call.memory.write(u32(ptr), data[::-1])
            return call.memory.size() // 65536

        def fail(call: HostCall, ptr: int, length: int) -> int:
            how = call.memory.read(u32(ptr), u32(length)).decode()
            log.append(how)
            if how == "io":
                raise HostIOError(operation="read", path="/data/x", code="EIO")
            if how == "value":
                raise ValueError("the host function broke")
            if how == "swallow":
                try:
                    call.memory.read(0xFFFFFF00, 16)
                except CommunicationError:
                    return 0
            return 0

        def read_far(call: HostCall) -> int:
            call.memory.read(0xFFFFFF00, 16)
            return 0

        i32x2 = FuncSignature(("i32", "i32"), ("i32",))
        return (
            HostFunction("test", "reverse", i32x2, reverse),
            HostFunction("test", "fail", i32x2, fail),
            HostFunction("test", "read_far", FuncSignature((), ("i32",)), read_far),
        )

    def test_builtin_kv_functions(self, engine: Engine, pool: WorkerPool) -> None:
        """kv_set reads guest memory and kv_get writes it, through the channel, in the host's
        store."""
        services = HostServices()
        sandbox = ProcessSandbox(
            KV,
            engine=engine,
            pool=pool,
            codec="raw",
            capabilities={"kv"},
            host_functions=builtin_host_functions(),
            services=services,
            name="kv-plugin",
        )
        assert sandbox.call_bytes("get", b"colour") == b"<missing>"
        assert sandbox.call_bytes("put", b"\x06colourblue") == b"\0\0\0\0"
        assert services.store.get("kv-plugin", b"colour") == b"blue"
        assert sandbox.call_bytes("get", b"colour") == b"blue"
        services.store.set("kv-plugin", b"shape", b"round")
        assert sandbox.call_bytes("get", b"shape") == b"round"
        sandbox.close()

    def test_capability_denied_at_load(self, engine: Engine, pool: WorkerPool) -> None:
        """A module importing kv functions without the capability fails at load, in the host."""
        with pytest.raises(SecurityViolation) as caught:
            ProcessSandbox(KV, engine=engine, pool=pool, host_functions=builtin_host_functions())
        assert caught.value.capability == "kv"

    def test_custom_functions_read_and_write_memory(self, engine: Engine, pool: WorkerPool) -> None:
        """A host function reads the input, writes it back reversed and reads the memory size."""
        sandbox = ProcessSandbox(
            HOST_CALLS, engine=engine, pool=pool, codec="raw", host_functions=self._functions([])
        )
        assert sandbox.call_bytes("reverse", b"stressed") == b"desserts"
        assert sandbox.call_bytes("pages", b"ab") == (1).to_bytes(4, "little")
        sandbox.close()

    @pytest.mark.parametrize("how", ["io", "value", "far"])
    def test_failing_host_function_same_error_as_in_process(
        self, engine: Engine, pool: WorkerPool, how: str
    ) -> None:
        """A host function that raises (a typed error, a plain exception, or a read outside
        memory) gives the same typed error and cause as in-process."""
        function = "read_far" if how == "far" else "fail"
        errors = []
        for make in (Sandbox, ProcessSandbox):
            options = {"pool": pool} if make is ProcessSandbox else {}
            sandbox = make(  # type: ignore[operator]
                HOST_CALLS,
                engine=engine,
                codec="raw",
                host_functions=self._functions([]),
                name="host-calls",
                **options,
            )
            with pytest.raises(PluginError) as caught:
                sandbox.call_bytes(function, how.encode())
            errors.append(caught.value)
            assert sandbox.call_bytes("reverse", b"ok") == b"ko"
            sandbox.close()
        local, remote = errors
        assert wire_fields(remote) == wire_fields(local)
        assert type(remote.__cause__) is type(local.__cause__)
        assert remote.context is not None and remote.context.environment.isolation == "process"

    def test_swallowed_memory_error_does_not_break_the_channel(
        self, engine: Engine, pool: WorkerPool
    ) -> None:
        """A host function that catches the error of a bad read goes on; the call succeeds."""
        log: list[str] = []
        sandbox = ProcessSandbox(
            HOST_CALLS, engine=engine, pool=pool, codec="raw", host_functions=self._functions(log)
        )
        assert sandbox.call_bytes("fail", b"swallow") == b"swallow"
        assert log == ["swallow"]
        sandbox.close()


class TestBulkhead:
    def test_full_bulkhead_refuses_at_once(self, engine: Engine, pool: WorkerPool) -> None:
        """With concurrency 1 and no queue, a second call while one runs is refused at once."""
        gate = Gate()
        sandbox = ProcessSandbox(
            GATED,
            engine=engine,
            pool=pool,
            host_functions=gate.functions(),
            concurrency=1,
            queue_size=0,
        )
        results: list[Any] = []
        holder = threading.Thread(target=lambda: results.append(sandbox.call("gated_echo", 1)))
        holder.start()
        assert gate.entered.wait(20)
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("gated_echo", 2)
        gate.release.set()
        holder.join(20)
        assert results == [1]
        error = caught.value
        assert (error.resource, error.used, error.limit, error.unit) == (
            "concurrency",
            1,
            1,
            "calls",
        )
        assert error.context is not None and error.context.plugin == sandbox.name
        assert sandbox.call("gated_echo", 3) == 3
        sandbox.close()

    def test_queued_call_times_out(self, engine: Engine, pool: WorkerPool) -> None:
        """A call queued behind a slow one is refused when its queue wait times out."""
        gate = Gate()
        sandbox = ProcessSandbox(
            GATED,
            engine=engine,
            pool=pool,
            host_functions=gate.functions(),
            concurrency=1,
            queue_size=1,
            queue_timeout=0.1,
        )
        holder = threading.Thread(target=lambda: sandbox.call("gated_echo", 1))
        holder.start()
        assert gate.entered.wait(20)
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("gated_echo", 2)
        gate.release.set()
        holder.join(20)
        assert caught.value.resource == "concurrency"
        assert "queue" in caught.value.message
        assert sandbox.bulkhead.in_flight == 0 and sandbox.bulkhead.waiting == 0
        sandbox.close()


def _until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Return once ``condition()`` holds (it is looked at every millisecond); fail after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    idle = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        idle.wait(0.001)


class TestBulkheadQueue:
    """The queue of a full bulkhead, without a worker process: each waiter's turn."""

    @staticmethod
    def _lines_per_waiter(waiters: int) -> float:
        """Queue ``waiters`` threads behind a held slot, one after the other, release the slot,
        and count the lines the waiters ran in ``Bulkhead.acquire`` (a tracer's count, not a
        time): per waiter."""
        bulkhead = Bulkhead(1, waiters)
        bulkhead.acquire(None)
        order: list[int] = []
        lines = 0
        code = Bulkhead.acquire.__code__

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            nonlocal lines
            if frame.f_code is not code:
                return None
            if event == "line":
                lines += 1
            return tracer

        def wait(number: int) -> None:
            sys.settrace(tracer)
            bulkhead.acquire(None)
            sys.settrace(None)
            order.append(number)
            bulkhead.release()

        threads = [threading.Thread(target=wait, args=(n,)) for n in range(waiters)]
        for number, thread in enumerate(threads):
            thread.start()
            _until(lambda number=number: bulkhead.waiting == number + 1)
        bulkhead.release()
        for thread in threads:
            thread.join(20)
        assert order == list(range(waiters))  # first come, first served
        assert (bulkhead.in_flight, bulkhead.waiting) == (0, 0)
        return lines / waiters

    def test_a_freed_slot_wakes_one_waiter(self) -> None:
        """A slot freed goes to the first waiter alone: the others are not woken to look and
        wait again, so each waiter runs as many lines with 24 queued as with 3 (woken every
        time, a queue of n costs n times n wake-ups: a flood's queue takes the host's cores)."""
        few, many = self._lines_per_waiter(3), self._lines_per_waiter(24)
        assert many <= few + 2, (few, many)

    def test_a_waiter_that_times_out_leaves_the_queue(self) -> None:
        """A waiter whose wait times out is refused and leaves the queue; the waiter behind it
        gets the next slot, and the counts return to zero."""
        clock_start = time.monotonic()
        bulkhead = Bulkhead(1, 2)
        bulkhead.acquire(None)
        outcomes: dict[str, Any] = {}

        def first() -> None:
            try:
                bulkhead.acquire(clock_start)  # a deadline already passed: refused
            except ResourceLimitExceeded as error:
                outcomes["first"] = error

        def second() -> None:
            bulkhead.acquire(None)
            outcomes["second"] = "slot"
            bulkhead.release()

        early = threading.Thread(target=first)
        early.start()
        early.join(20)
        late = threading.Thread(target=second)
        late.start()
        _until(lambda: bulkhead.waiting == 1)
        bulkhead.release()
        late.join(20)
        assert isinstance(outcomes["first"], ResourceLimitExceeded)
        assert "queue" in outcomes["first"].message
        assert outcomes["second"] == "slot"
        assert (bulkhead.in_flight, bulkhead.waiting) == (0, 0)


class TestBulkheadInterrupted:
    """A waiter interrupted in the queue (KeyboardInterrupt in the main thread) leaves no turn
    behind and keeps no slot: a turn left in the queue would take the next freed slot to a
    caller that is gone, and the bulkhead would lose it for good."""

    @staticmethod
    def _interrupted_turns(
        monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] = lambda: None
    ) -> None:
        import wasm_plugins.isolation._bulkhead as module

        real = threading.Lock

        class Turn:
            def __init__(self) -> None:
                self.lock = real()
                self.taken = False

            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                if not self.taken:  # the turn is taken as it is queued
                    self.taken = True
                    return self.lock.acquire()
                before()
                raise KeyboardInterrupt

            def release(self) -> None:
                self.lock.release()

        monkeypatch.setattr(module, "_turn", Turn)

    def test_interrupted_while_waiting(self, monkeypatch: pytest.MonkeyPatch) -> None:
        bulkhead = Bulkhead(1, 4)
        bulkhead.acquire(None)
        self._interrupted_turns(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            bulkhead.acquire(None)
        assert (bulkhead.in_flight, bulkhead.waiting) == (1, 0)
        bulkhead.release()
        assert bulkhead.in_flight == 0

    def test_interrupted_as_the_slot_was_handed_over(self, monkeypatch: pytest.MonkeyPatch) -> None:
        bulkhead = Bulkhead(1, 4)
        bulkhead.acquire(None)
        self._interrupted_turns(monkeypatch, before=bulkhead.release)
        with pytest.raises(KeyboardInterrupt):
            bulkhead.acquire(None)
        assert (bulkhead.in_flight, bulkhead.waiting) == (0, 0)


class TestProcessSandboxAsyncio:
    def test_to_thread_calls_run_concurrently(self, engine: Engine, pool: WorkerPool) -> None:
        """Two calls through asyncio.to_thread are in flight together (each waits for the other
        in a host function) while a ticker coroutine keeps ticking."""
        ticked = threading.Event()
        both = threading.Barrier(2, timeout=20)

        def wait() -> None:
            both.wait()
            ticked.wait(20)

        gate = Gate(wait)
        sandbox = ProcessSandbox(
            GATED, engine=engine, pool=pool, host_functions=gate.functions(), concurrency=2
        )

        async def main() -> tuple[list[Any], int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.005)
                    ticks += 1
                    if ticks == 5:
                        ticked.set()

            task = asyncio.create_task(ticker())
            results = await asyncio.gather(
                asyncio.to_thread(sandbox.call, "gated_echo", "a"),
                asyncio.to_thread(sandbox.call, "gated_echo", "b"),
            )
            task.cancel()
            return list(results), ticks

        results, ticks = asyncio.run(main())
        assert results == ["a", "b"]
        assert ticks >= 5
        sandbox.close()


PARITY_FUNCTIONS = [
    "trap_unreachable",
    "trap_divide_by_zero",
    "trap_out_of_bounds",
    "trap_stack_overflow",
    "memory_bomb",
    "bad_pointer",
    "pointer_past_end",
    "bad_json",
    "guest_error",
    "error_out_of_bounds",
    "whole_memory",
    "no_such_function",
    "not_a_plugin_function",
]


class TestErrorsAcrossTheChannel:
    @pytest.mark.parametrize("function", PARITY_FUNCTIONS)
    def test_error_arrives_with_kind_and_fields(
        self, engine: Engine, pool: WorkerPool, function: str
    ) -> None:
        """The error from a worker has the kind and every field of the in-process error for the
        same failure (and the same kind of cause)."""
        limits = Limits(memory="2 MiB", max_output=4096)
        local = Sandbox(ABI, engine=engine, limits=limits, name="abi")
        remote = ProcessSandbox(ABI, engine=engine, pool=pool, limits=limits, name="abi")
        with pytest.raises(PluginError) as in_process:
            local.call(function, {"x": 1})
        with pytest.raises(PluginError) as in_worker:
            remote.call(function, {"x": 1})
        expected, got = wire_fields(in_process.value), wire_fields(in_worker.value)
        if function == "trap_stack_overflow":
            # The count of frames in the message depends on the native stack the call started on.
            assert got.pop("message").split("(+")[0] == expected.pop("message").split("(+")[0]
        assert got == expected
        assert type(in_worker.value.__cause__) is type(in_process.value.__cause__)
        assert in_worker.value.context is not None
        assert in_worker.value.context.environment.isolation == "process"
        assert remote.call("echo", "next") == "next"
        remote.close()

    def test_fuel_and_timeout_on_wasmtime(self, wasmtime_engine: Engine, pool: WorkerPool) -> None:
        """Fuel is metered in the worker, and a timeout reports the same fields, as in-process."""
        for limits, kind in (
            (Limits(fuel=20_000), ResourceLimitExceeded),
            (Limits(timeout=0.2), DeadlineExceeded),
        ):
            local = Sandbox(ABI, engine=wasmtime_engine, limits=limits, name="abi")
            remote = ProcessSandbox(
                ABI, engine=wasmtime_engine, pool=pool, limits=limits, name="abi"
            )
            with pytest.raises(kind) as in_process:
                local.call("loop_forever")
            with pytest.raises(kind) as in_worker:
                remote.call("loop_forever")
            expected, got = wire_fields(in_process.value), wire_fields(in_worker.value)
            for varying in ("duration", "message"):
                expected.pop(varying, None)
                got.pop(varying, None)
            if kind is DeadlineExceeded:
                # On a busy machine the host's kill at the deadline can come before the worker's
                # own engine deadline fires: the same error, with a suggestion that says so.
                suggestion = got.pop("suggestion")
                assert suggestion == expected.pop("suggestion") or "killed" in suggestion
            assert got == expected
            assert remote.call("echo", 1) == 1
            remote.close()

    @pytest.mark.parametrize(
        ("source", "error"),
        [
            ("(module (func", CompilationError),
            ('(module (memory (export "memory") 1))', ModuleError),
            (HOSTILE / "capability-thief.wat", SecurityViolation),
        ],
    )
    def test_load_errors_are_the_in_process_ones(
        self, engine: Engine, pool: WorkerPool, source: Any, error: type[PluginError]
    ) -> None:
        """A module that does not compile, misses ABI exports or steals capabilities fails at load
        in the host with the in-process error."""
        offered = builtin_host_functions()
        with pytest.raises(error) as in_process:
            Sandbox(source, engine=engine, host_functions=offered, name="bad")
        with pytest.raises(error) as in_worker:
            ProcessSandbox(source, engine=engine, pool=pool, host_functions=offered, name="bad")
        assert wire_fields(in_worker.value) == wire_fields(in_process.value)


class TestChooseIsolation:
    def test_fuel_on_wasmer_in_a_worker(self, wasmer_engine: Engine) -> None:
        """Fuel on wasmer is metered in a worker as in this process: the same typed error."""
        with ProcessSandbox(
            ABI, engine=wasmer_engine, limits=Limits(fuel=100_000), concurrency=1
        ) as sandbox:
            with pytest.raises(ResourceLimitExceeded) as caught:
                sandbox.call("loop_forever")
            assert (caught.value.resource, caught.value.limit) == ("fuel", 100_000)
            assert sandbox.call("echo", [1]) == [1]
        for requested in ("auto", "in-process"):
            assert choose_isolation(wasmer_engine, Limits(fuel=1000), requested) == "in-process"

    def test_decisions_on_wasmer(self, wasmer_engine: Engine) -> None:
        """wasmer meters fuel and time in-process (metering by instrumentation): auto stays
        in-process; a worker is for containment, when asked for."""
        timeout = Limits(timeout=1)
        assert choose_isolation(wasmer_engine, timeout, "auto") == "in-process"
        assert choose_isolation("wasmer", timeout) == "in-process"
        assert choose_isolation(wasmer_engine, Limits(), "auto") == "in-process"
        assert choose_isolation(wasmer_engine, None, "process") == "process"
        assert choose_isolation(wasmer_engine, timeout, "process") == "process"
        assert limits_needing_worker(wasmer_engine, timeout) == ()
        assert choose_isolation(wasmer_engine, timeout, "in-process") == "in-process"

    def test_decisions_on_wasmtime(self, wasmtime_engine: Engine) -> None:
        """wasmtime enforces every limit in-process, so auto stays in-process; an unknown
        isolation is a ConfigurationError."""
        assert choose_isolation(wasmtime_engine, Limits(timeout=1), "auto") == "in-process"
        assert choose_isolation(wasmtime_engine, Limits(fuel=10), "auto") == "in-process"
        assert choose_isolation("wasmtime", Limits(timeout=1), "process") == "process"
        assert choose_isolation(wasmtime_engine, None, "in-process") == "in-process"
        assert limits_needing_worker(wasmtime_engine, Limits(timeout=1, fuel=10)) == ()
        with pytest.raises(ConfigurationError) as unknown:
            choose_isolation(wasmtime_engine, None, "thread")
        assert unknown.value.field == "isolation"


class TestProcessSandbox:
    def test_same_public_api_as_sandbox(self, engine: Engine, pool: WorkerPool) -> None:
        """A ProcessSandbox offers the sandbox API (a PluginSandbox, not a Sandbox subclass) with
        the same name, engine, limits, functions and module exports as the in-process one, from
        a loaded module of its own; its errors say where it ran."""
        limits = Limits(timeout=5, memory="4 MiB")
        local = Sandbox(
            ABI,
            engine=engine,
            limits=limits.replace(timeout=None),
            name="abi",
            functions=("echo", "upper"),
        )
        remote = ProcessSandbox(
            ABI, engine=engine, pool=pool, limits=limits, name="abi", functions=("echo", "upper")
        )
        assert not isinstance(remote, Sandbox)
        assert isinstance(remote, PluginSandbox) and isinstance(local, PluginSandbox)
        assert (remote.isolation, local.isolation) == ("process", "in-process")
        assert isinstance(remote.loaded, LoadedModule) and remote.loaded is not local.loaded
        assert remote.instances == 0
        assert (remote.name, remote.engine, remote.limits) == ("abi", engine, limits)
        assert remote.functions == local.functions == ("echo", "upper")
        assert remote.module.exports == local.module.exports
        assert remote.module.imports == local.module.imports
        assert remote.call_bytes("echo", b"[1]") == b"[1]"
        with pytest.raises(ResourceLimitExceeded) as caught:
            remote.call_bytes("echo", b"x" * (limits.max_input + 1))
        assert caught.value.resource == "input"
        assert caught.value.context is not None
        assert caught.value.context.environment.isolation == "process"
        assert "abi" in repr(remote) and pool.name in repr(remote)
        remote.close()
        remote.close()

    def test_wasi_output_and_directories(
        self, wasmtime_engine: Engine, pool: WorkerPool, tmp_path: Path
    ) -> None:
        """WASI works in a worker: a preopened directory is readable and the guest's stdout
        reaches the host's output callback."""
        (tmp_path / "inside.txt").write_text("hello from the host\n")
        printed: list[tuple[str, bytes]] = []
        settings = WasiSettings(
            directories=(WasiDirectory(str(tmp_path), "/data", read_only=True),),
            output=lambda stream, data: printed.append((stream, data)),
        )
        sandbox = ProcessSandbox(
            WASI,
            engine=wasmtime_engine,
            pool=pool,
            codec="raw",
            capabilities={"wasi"},
            wasi=settings,
        )
        assert sandbox.call_bytes("print", b"") == b""
        assert printed == [("stdout", b"printed by the guest\n")]
        assert sandbox.call_bytes("read_inside", b"") == b"hello from the host\n"
        sandbox.close()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_forked_child_does_not_touch_the_parents_workers(
        self, engine: Engine, pool: WorkerPool
    ) -> None:
        """In a child forked from the host, the pool refuses calls and closing it at exit does
        not kill the parent's workers."""
        sandbox = ProcessSandbox(ABI, engine=engine, pool=pool)
        workers = pool.pids()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                sandbox.call("echo", 1)
            except InstanceError as error:
                status = 0 if error.state == "forked" else 2
            except BaseException:
                status = 3
            finally:
                close_all_pools()
                os._exit(status)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.pids() == workers
        assert sandbox.call("echo", "parent") == "parent"
        sandbox.close()


FAKE_WORKER = textwrap.dedent(
    """
    import json, os, socket, struct, sys
    behaviour = sys.argv[1]
    sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
    PREFIX = struct.Struct("<BII")

    def send(kind, header=b"", payload=b"", announce=None):
        size = len(payload) if announce is None else announce
        sock.sendall(PREFIX.pack(kind, len(header), size) + header + payload)

    def receive():
        data = b""
        while len(data) < 9 or len(data) < 9 + sum(PREFIX.unpack_from(data)[1:]):
            chunk = sock.recv(65536)
            if not chunk:
                sys.exit(0)
            data += chunk
        return PREFIX.unpack_from(data)[0]

    send(32, json.dumps({"pid": os.getpid()}).encode())
    while True:
        kind = receive()
        if kind == 1:
            send(33)
        elif kind == 4:
            send(34)
        elif kind == 3:
            if behaviour == "exit":
                os._exit(7)
            if behaviour == "huge":
                send(35, announce=2**32 - 1)
            if behaviour == "pickle":
                send(36, bytes.fromhex(sys.argv[2]))
            if behaviour == "unknown-kind":
                send(36, json.dumps({"error": {"kind": "evil", "message": "x"}}).encode())
            if behaviour == "stray":
                send(99)
            if behaviour == "bad-host-call":
                send(37, json.dumps({"i": 5, "a": []}).encode())
    """
)


class _Exploit:
    """Unpickling this would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class TestChannel:
    @pytest.mark.parametrize(
        "behaviour", ["huge", "pickle", "unknown-kind", "stray", "bad-host-call"]
    )
    def test_misbehaving_worker_is_a_communication_error(
        self, wasmtime_engine: Engine, tmp_path: Path, behaviour: str
    ) -> None:
        """A worker that announces a 4 GiB result, sends a pickle or an error of an unknown kind,
        a frame that does not exist or a host call of no function is killed and reported as a
        worker-pipe CommunicationError; nothing it sent is unpickled."""
        script = tmp_path / "fake_worker.py"
        script.write_text(FAKE_WORKER)
        marker = tmp_path / "unpickled"
        exploit = pickle.dumps(_Exploit(marker)).hex()
        command = [sys.executable, str(script), behaviour, exploit]
        with WorkerPool(1, command=command) as fake:
            sandbox = ProcessSandbox(ABI, engine=wasmtime_engine, pool=fake)
            (first,) = fake.pids()
            host_before = status_kib("VmRSS")
            with pytest.raises(CommunicationError) as caught:
                sandbox.call("echo", 1)
            assert status_kib("VmRSS") - host_before < 16 * 1024
            assert caught.value.channel == "worker-pipe"
            assert fake.pids() != [first]
            assert wait_for_exit({first}) == set()
        assert not marker.exists()

    def test_huge_guest_error_is_shortened_not_refused(
        self, engine: Engine, pool: WorkerPool
    ) -> None:
        """A guest error whose dict form would not fit a frame header arrives shortened, still
        the guest's runtime error."""
        sandbox = ProcessSandbox(HUGE_GUEST_ERROR, engine=engine, pool=pool)
        with pytest.raises(ExecutionError) as caught:
            sandbox.call("shout")
        assert caught.value.trap == "guest_error"
        assert caught.value.message.startswith("Guest reported an error: \x01")
        assert caught.value.details["truncated"] is True
        sandbox.close()

    def test_worker_that_exits_gives_its_status(
        self, wasmtime_engine: Engine, tmp_path: Path
    ) -> None:
        """A worker that exits during a call is an InstanceError with its exit status."""
        script = tmp_path / "fake_worker.py"
        script.write_text(FAKE_WORKER)
        with WorkerPool(1, command=[sys.executable, str(script), "exit"]) as fake:
            sandbox = ProcessSandbox(ABI, engine=wasmtime_engine, pool=fake)
            with pytest.raises(InstanceError) as caught:
                sandbox.call("echo", 1)
        assert caught.value.exit_code == 7
        assert caught.value.exit_signal is None


HOST_THAT_DIES = textwrap.dedent(
    """
    import os, sys, threading
    from wasm_plugins.engine import FuncSignature
    from wasm_plugins.isolation import ProcessSandbox
    from wasm_plugins.sandbox import HostFunction
    entered = threading.Event()
    functions = (
        HostFunction("test", "entered", FuncSignature(), lambda call: entered.set()),
        HostFunction("test", "gate", FuncSignature(), lambda call: None),
    )
    sandbox = ProcessSandbox(sys.argv[3], engine=sys.argv[1], host_functions=functions)
    threading.Thread(target=sandbox.call, args=("spin",), daemon=True).start()
    entered.wait(20)
    print(" ".join(map(str, sandbox.pool.pids())), flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)
    os.kill(os.getpid(), 9)
    """
)


class TestWorkerPoolShutdown:
    def test_close_leaves_no_worker(self, engine: Engine) -> None:
        """Closing a sandbox closes its private pool: every worker is gone and reaped."""
        before = child_pids()
        sandbox = ProcessSandbox(ABI, engine=engine, concurrency=2)
        workers = set(sandbox.pool.pids())
        assert len(workers) == 2 and workers <= child_pids()
        sandbox.close()
        assert child_pids() - before == set()
        with pytest.raises(InstanceError) as caught:
            sandbox.call("echo", 1)
        assert caught.value.state == "closed"

    def test_shared_pool_survives_a_sandbox(self, engine: Engine, pool: WorkerPool) -> None:
        """Closing a sandbox on a shared pool unloads its module and leaves the workers to
        others."""
        first = ProcessSandbox(ABI, engine=engine, pool=pool)
        second = ProcessSandbox(ABI, engine=engine, pool=pool)
        workers = pool.pids()
        first.close()
        assert second.call("upper", "on") == "ON"
        assert pool.pids() == workers
        second.close()

    @pytest.mark.parametrize("how", ["exit", "killed"])
    def test_workers_end_with_the_host(self, engine: Engine, tmp_path: Path, how: str) -> None:
        """Workers end when their host exits or is killed, even one stuck in guest code."""
        script = tmp_path / "host.py"
        script.write_text(HOST_THAT_DIES)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        host = subprocess.run(
            [sys.executable, str(script), engine.name, how, GATED],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        workers = {int(pid) for pid in host.stdout.split()}
        assert len(workers) == 2, host.stderr
        assert wait_for_exit(workers) == set()
