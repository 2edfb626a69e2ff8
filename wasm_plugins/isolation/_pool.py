"""The worker pool: processes that run plugin modules, started with ``python -m``, never forked.

Workers are started eagerly (the import takes a fifth of a second, so it overlaps with the host's
own work) from one long-lived thread of the host, because ``PR_SET_PDEATHSIG`` fires when the
*thread* that started a process ends, not the process. A worker that died, was killed at a deadline
or broke the protocol is reaped and replaced at once. ``close()`` kills every worker and waits for
it; an ``atexit`` hook and a finalizer close pools that were not closed, and the workers themselves
exit at end-of-file on their socket or by the parent-death signal, so none outlives the host.

Limits of a worker (see the package docstring for the measurements): ``RLIMIT_DATA``
(``memory_limit``, default :data:`DEFAULT_MEMORY_LIMIT`), and optionally ``RLIMIT_AS``
(``address_space_limit``, off by default because the engines reserve 4 to 6 GiB of address space
per linear memory).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from wasm_plugins._units import GiB
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    InstanceError,
    PluginError,
    ResourceLimitExceeded,
)
from wasm_plugins.isolation import _protocol as wire

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_SPIN",
    "WorkerGone",
    "WorkerPool",
    "WorkerProcess",
    "close_all_pools",
]

DEFAULT_POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
"""Workers in a pool unless told otherwise: one per core, at most four."""
DEFAULT_MEMORY_LIMIT = 2 * GiB
"""``RLIMIT_DATA`` of a worker: its private writable memory (Python heap, thread stacks, and the
committed part of every linear memory it holds), not the engines' reservations."""
DEFAULT_SPIN = 100e-6
"""Seconds both ends spin on a non-blocking read before sleeping (waking costs ~25 µs here)."""
DEFAULT_START_TIMEOUT = 60.0
"""Seconds a new worker may take to start, or to load a module."""
WORKER_MODULE = "wasm_plugins.isolation._worker"
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_SpawnRequest = tuple[
    list[str], int, dict[str, str], concurrent.futures.Future[subprocess.Popen[bytes]]
]


class _Spawner:
    """Starts every worker from one thread that lives as long as the host process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the thread (in a forked child, where it does not exist)."""
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[_SpawnRequest] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def spawn(self, argv: list[str], fd: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="wasm-plugins-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._requests.put((argv, fd, env, future))
        return future.result()

    def _run(self) -> None:
        while True:
            argv, fd, env, future = self._requests.get()
            try:
                process = subprocess.Popen(
                    argv,
                    pass_fds=(fd,),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    close_fds=True,
                )
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(process)
            del future


_SPAWNER = _Spawner()


class RemoteSession:
    """What a host function sees as ``HostCall.session`` in process mode.

    Kept in the host, one per worker-side instance (a fresh one whenever the worker makes a new
    instance), so host functions can keep per-instance state as they do in-process.
    """

    def __init__(self) -> None:
        self.guest_error: bytes | None = None


class WorkerGone(Exception):
    """A worker just checked out had ended while idle (see ``WorkerProcess.replace_if_gone``)."""


class WorkerProcess:
    """The host's side of one worker: its process, its channel, and what it holds.

    Used by one host thread at a time (the one that checked it out of the pool).
    """

    def __init__(self, process: subprocess.Popen[bytes], channel: wire.Channel) -> None:
        self.process = process
        self.pid = process.pid
        self.channel = channel
        self.ready = False
        self.broken = False
        self.modules: set[str] = set()
        """Keys of the modules loaded in the worker."""
        self.sessions: dict[str, RemoteSession] = {}
        """Keys of the modules with a live instance in the worker, and their host-side session."""
        self.unloads: list[str] = []
        """Modules to unload before the next use (written under the pool's lock)."""
        self.replace_if_gone = False
        """Set by a caller that just checked the worker out: a channel found closed before its
        first request went through means the worker ended while idle, which raises
        :class:`WorkerGone` (the caller replaces it) instead of the typed error of a worker that
        died during a request."""

    # -- the channel, with failures turned into typed errors -----------------------------------

    def send(
        self, kind: int, header: bytes = b"", payload: bytes = b"", deadline: float | None = None
    ) -> None:
        """Send a frame.

        :raises wire.ChannelTimeout: when the worker stopped reading until the deadline.
        :raises PluginError: InstanceError or CommunicationError when the worker is gone.
        :raises WorkerGone: when it was gone before the first request (see ``replace_if_gone``).
        """
        try:
            self.channel.send(kind, header, payload, deadline)
        except wire.ChannelClosed:
            raise self._gone() from None
        # The worker's end took the frame: it was alive when the request went out.
        self.replace_if_gone = False

    def receive(self, deadline: float | None, max_payload: int) -> wire.Frame:
        """Receive a frame; same errors as :meth:`send`, plus a violation of the protocol."""
        try:
            return self.channel.receive(deadline, max_payload)
        except wire.ChannelClosed:
            raise self._gone() from None
        except wire.ProtocolViolation as exc:
            raise self.violation(str(exc)) from None

    def _gone(self) -> Exception:
        if self.replace_if_gone:
            # A Unix socket refuses a send at once when the other end is closed, and a process'
            # sockets are closed by the time it ends: nothing had reached this worker yet.
            self.replace_if_gone = False
            self.broken = True
            return WorkerGone(self.pid)
        return self.lost()

    def ensure_ready(self, timeout: float) -> None:
        """Wait for a new worker's ``READY``."""
        if self.ready:
            return
        try:
            kind, header, _ = self.receive(time.monotonic() + timeout, 0)
        except InstanceError as error:
            error.state = "starting"
            error.suggestion = "check that this Python can import wasm_plugins; see its stderr"
            raise
        except wire.ChannelTimeout:
            self.kill()
            raise InstanceError(
                state="starting",
                message=f"Instance failed: the worker process did not start within {timeout} s",
                suggestion="the machine is overloaded, or Python cannot import wasm_plugins",
            ) from None
        if kind != wire.READY:
            raise self.violation(f"a new worker sent frame {kind} instead of READY")
        try:
            pid = wire.loads(header).get("pid")
        except wire.ProtocolViolation as exc:
            raise self.violation(str(exc)) from None
        if pid != self.pid:
            raise self.violation(f"the worker says its pid is {pid!r}, not {self.pid}")
        self.ready = True

    # -- failures ------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the worker and reap it; it will be replaced."""
        self.broken = True
        with contextlib.suppress(OSError):
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        # A process in uninterruptible sleep may outlast this; the finalizer reaps it later.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)

    def lost(self) -> PluginError:
        """The typed error for a worker whose channel closed: how it ended, once reaped."""
        self.broken = True
        try:
            code = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return CommunicationError(
                message="Communication failed: the worker closed its channel but kept running",
                channel="worker-pipe",
                direction="worker-to-host",
                suggestion="the worker was compromised or is broken; it has been replaced",
            )
        if code < 0:
            name = _signal_name(-code)
            return InstanceError(
                state="running",
                exit_signal=name,
                message=f"Instance failed: the worker process was killed by {name}",
                suggestion=(
                    "the plugin crashed its worker, or the system killed it (memory?); the next "
                    "call runs on a fresh worker"
                ),
            )
        if code == wire.EXIT_OUT_OF_MEMORY:
            return InstanceError(
                state="out_of_memory",
                exit_code=code,
                message="Instance failed: the worker process ran out of memory (its data limit)",
                suggestion="raise the pool's memory_limit, or lower the plugins' memory limits",
            )
        return InstanceError(
            state="running",
            exit_code=code,
            message=f"Instance failed: the worker process exited with status {code}",
            suggestion="the next call runs on a fresh worker",
        )

    def violation(self, what: str) -> CommunicationError:
        """Kill a worker that broke the protocol; the typed error to raise."""
        self.kill()
        return CommunicationError(
            message=f"Communication failed: the worker broke the protocol: {what}",
            channel="worker-pipe",
            direction="worker-to-host",
            suggestion="the worker was compromised or is broken; it has been replaced",
        )

    def dispose(self) -> None:
        """Kill (if needed), reap and close."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.kill()
        self._reap()
        self.channel.close()

    def __repr__(self) -> str:
        state = "broken" if self.broken else "ready" if self.ready else "starting"
        return f"<WorkerProcess pid={self.pid} {state} modules={len(self.modules)}>"


class _Processes:
    """The pool's live processes, shared with its finalizer (which must not reference the pool)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def kill_all(self) -> None:
        with self.lock:
            processes = list(self.processes.values())
            self.processes.clear()
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    process.kill()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5.0)


_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_NAMES = itertools.count(1)


class WorkerPool:
    """Worker processes that run plugin modules for one or many :class:`ProcessSandbox` objects.

    :param size: how many workers (default :data:`DEFAULT_POOL_SIZE`).
    :param memory_limit: ``RLIMIT_DATA`` of each worker in bytes (``None``: unlimited); it bounds
        the worker's private writable memory, linear memories included.
    :param address_space_limit: ``RLIMIT_AS`` of each worker in bytes (``None``, the default:
        unlimited). Each linear memory reserves 4 GiB (wasmtime) to 6 GiB (wasmer) of address space,
        so a value here must allow for every module a worker may hold.
    :param start_timeout: seconds a worker may take to start or to load a module.
    :param spin: seconds each end spins on non-blocking reads before sleeping in ``poll``.
    :param command: the command that starts a worker (default: this Python with ``-m
        wasm_plugins.isolation._worker``); options ``--fd``, ``--parent`` and the limits follow.
        The worker must be the process started (a wrapper must ``exec`` it): the host checks
        the pid it announces.
    :param name: shown in errors and ``repr``.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        address_space_limit: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        spin: float = DEFAULT_SPIN,
        command: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        size = DEFAULT_POOL_SIZE if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(
                field="pool.size",
                message=f"Invalid configuration: pool.size - {size!r} is not a positive integer",
                suggestion="give the number of worker processes, at least 1",
            )
        for field, value in (
            ("memory_limit", memory_limit),
            ("address_space_limit", address_space_limit),
        ):
            if value is not None and value < 64 * 1024 * 1024:
                raise ConfigurationError(
                    field=f"pool.{field}",
                    message=f"Invalid configuration: pool.{field} - {value} bytes is too small "
                    "for a Python process",
                    suggestion="give at least 64 MiB, or None for no limit",
                )
        if command is None and not sys.executable:
            raise ConfigurationError(
                field="pool.command",
                message="Invalid configuration: pool.command - sys.executable is not known",
                suggestion="pass command=[path to python, '-m', '" + WORKER_MODULE + "']",
            )
        self.size = size
        self.name = name or f"pool-{next(_NAMES)}"
        self.memory_limit = memory_limit
        self.address_space_limit = address_space_limit
        self.start_timeout = start_timeout
        self.spin = spin
        default = [sys.executable, "-m", WORKER_MODULE]
        self._command = list(command) if command is not None else default
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._waiters = 0
        """Callers waiting in checkout (notified only when there are some)."""
        self._closed = False
        self._forked = False
        """Closed because this process was forked from the one that owns the workers."""
        self._workers: list[WorkerProcess] = []
        self._idle: list[WorkerProcess] = []
        self._missing = 0
        self._processes = _Processes()
        self._finalizer = weakref.finalize(self, self._processes.kill_all)
        _POOLS.add(self)
        try:
            for _ in range(size):
                worker = self._spawn()
                self._workers.append(worker)
                self._idle.append(worker)
        except BaseException:
            self.close()
            raise

    # -- workers -------------------------------------------------------------------------------

    def _spawn(self) -> WorkerProcess:
        host_end, worker_end = socket.socketpair()
        try:
            argv = [
                *self._command,
                "--fd",
                str(worker_end.fileno()),
                "--parent",
                str(os.getpid()),
                "--spin",
                repr(self.spin),
            ]
            if self.memory_limit is not None:
                argv += ["--memory-limit", str(self.memory_limit)]
            if self.address_space_limit is not None:
                argv += ["--address-space-limit", str(self.address_space_limit)]
            env = dict(os.environ)
            path = env.get("PYTHONPATH")
            env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
            try:
                process = _SPAWNER.spawn(argv, worker_end.fileno(), env)
            except (OSError, subprocess.SubprocessError) as exc:
                host_end.close()
                raise InstanceError(
                    state="starting",
                    message=f"Instance failed: cannot start a worker process: {exc}",
                    suggestion="check pool.command and the system's process limits",
                ) from None
        finally:
            worker_end.close()
        with self._processes.lock:
            self._processes.processes[process.pid] = process
        return WorkerProcess(process, wire.Channel(host_end, spin=self.spin))

    def checkout(self, key: str, deadline: float | None) -> WorkerProcess:
        """An idle worker, preferably one that holds ``key`` already; waits until ``deadline``.

        :raises ResourceLimitExceeded: (``concurrency``) when none became idle in time.
        :raises InstanceError: when the pool is closed.
        """
        if self._missing:
            self._refill()
        with self._lock:
            while True:
                if self._closed:
                    raise _closed_error(self._forked)
                idle = self._idle
                if idle:
                    worker = idle.pop() if len(idle) == 1 else self._best(key)
                    if worker in idle:
                        idle.remove(worker)
                    unloads: Sequence[str] = worker.unloads
                    if unloads:
                        worker.unloads = []
                    else:
                        unloads = ()  # not the list itself: forget() may add to it meanwhile
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResourceLimitExceeded(
                        resource="concurrency",
                        used=len(self._workers),
                        limit=self.size,
                        unit="calls",
                        message=(
                            f"Resource limit exceeded: concurrency - all {self.size} workers of "
                            f"{self.name} stayed busy while the call waited"
                        ),
                        suggestion="use a larger pool, or lower the concurrency of other plugins",
                    )
                self._waiters += 1
                try:
                    self._condition.wait(remaining)
                finally:
                    self._waiters -= 1
        for key_to_drop in unloads:
            self._unload(worker, key_to_drop)
        return worker

    def _refill(self) -> None:
        """Start the workers whose replacement could not be started earlier."""
        with self._condition:
            missing, self._missing = self._missing, 0
        started = 0
        try:
            for _ in range(missing):
                worker = self._spawn()
                started += 1
                with self._condition:
                    if self._closed:
                        closing = True
                    else:
                        closing = False
                        self._workers.append(worker)
                        self._idle.append(worker)
                        self._condition.notify()
                if closing:
                    worker.dispose()
        except PluginError:
            with self._condition:
                self._missing += missing - started

    def _best(self, key: str) -> WorkerProcess:
        if len(self._idle) == 1:
            return self._idle[0]

        def score(worker: WorkerProcess) -> int:
            return (key in worker.sessions) * 4 + (key in worker.modules) * 2 + worker.ready

        return max(self._idle, key=score)

    def checkin(self, worker: WorkerProcess) -> None:
        """Give a worker back; a broken one is reaped and replaced by a new process."""
        replacement = None
        if worker.broken:
            worker.dispose()
            with self._processes.lock:
                self._processes.processes.pop(worker.pid, None)
            if not self._closed:
                try:
                    replacement = self._spawn()
                except PluginError:
                    # Out of processes or memory for now: the next checkout tries again.
                    replacement = None
        with self._lock:
            if self._closed:
                closing = [w for w in (worker, replacement) if w is not None]
            else:
                closing = []
                if worker.broken:
                    self._workers.remove(worker)
                    if replacement is not None:
                        self._workers.append(replacement)
                        self._idle.append(replacement)
                    else:
                        self._missing += 1
                else:
                    self._idle.append(worker)
                if self._waiters:
                    self._condition.notify()
        if closing:
            for item in closing:
                item.dispose()

    def forget(self, key: str) -> None:
        """Unload a module from every worker: idle ones now, busy ones before their next use."""
        with self._condition:
            if self._closed:
                return
            idle = [w for w in self._idle if key in w.modules]
            for worker in self._workers:
                if key in worker.modules and worker not in idle:
                    worker.unloads.append(key)
            for worker in idle:
                self._idle.remove(worker)
        for worker in idle:
            self._unload(worker, key)
            self.checkin(worker)

    def _unload(self, worker: WorkerProcess, key: str) -> None:
        worker.modules.discard(key)
        worker.sessions.pop(key, None)
        if not worker.ready or worker.broken:
            return
        try:
            worker.send(wire.UNLOAD, wire.dumps({"key": key}), deadline=time.monotonic() + 5.0)
        except (PluginError, wire.ChannelTimeout):
            worker.broken = True

    # -- inspection and closing ----------------------------------------------------------------

    def pids(self) -> list[int]:
        """The process ids of the current workers."""
        with self._condition:
            return [worker.pid for worker in self._workers]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Kill every worker and wait for it; calls in flight fail with an InstanceError."""
        with self._condition:
            if self._closed:
                return
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._condition.notify_all()
        self._processes.kill_all()
        for worker in idle:
            worker.channel.close()
        _POOLS.discard(self)

    def _disown(self) -> None:
        """In a forked child: give up this pool without touching its processes."""
        self._closed = True
        self._forked = True
        # Fresh locks: a thread of the parent may have held the old ones at the fork.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._waiters = 0
        self._finalizer.detach()
        self._processes = _Processes()
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.channel.close()
        self._idle.clear()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._idle)}/{self.size} idle"
        return f"<WorkerPool {self.name} {state}>"


def _closed_error(forked: bool) -> InstanceError:
    if forked:
        return InstanceError(
            state="forked",
            message=(
                "Instance failed: the worker pool belongs to the process this one was forked "
                "from; its workers cannot be used after the fork"
            ),
            suggestion="create the host (or the WorkerPool and its sandboxes) after the fork",
        )
    return InstanceError(
        state="closed",
        message="Instance failed: the worker pool is closed",
        suggestion="create a new WorkerPool (or sandbox)",
    )


def close_all_pools() -> None:
    """Close every pool of this process (run at exit)."""
    for pool in list(_POOLS):
        pool.close()


def _after_fork_in_child() -> None:
    """A process forked from the host does not own the host's workers: it must neither use nor
    kill them, nor keep their sockets open (the workers would miss the host's end-of-file)."""
    _SPAWNER.reset()
    for pool in list(_POOLS):
        pool._disown()
    _POOLS.clear()


atexit.register(close_all_pools)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
