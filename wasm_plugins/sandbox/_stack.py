"""Native stack for guest calls: a thread whose stack is too small hands its calls to one that has
enough.

Guest code runs on the calling thread's native stack. wasmtime stops a guest that recursed past
its own stack limit (512 KiB by default) with a trap, but only if the thread's stack has that much
left: on a smaller stack (``threading.stack_size(512 * 1024)``, ``ulimit -s 512``) the guest runs
into the guard page first and the whole process dies of SIGSEGV. The engine's limit is fixed per
engine, not per call, so it cannot follow each thread's stack; instead, a thread whose stack is
smaller than :data:`NEEDED` runs its guest calls on a long-lived thread of :data:`RUNNER_STACK`
bytes. Threads with the usual 8 MiB stack never pay for it: the size is read once per thread,
and only when that thread makes its first instance.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from wasm_plugins._units import KiB, MiB

__all__ = [
    "MAX_DEPTH",
    "NEEDED",
    "RUNNER_STACK",
    "on_roomy_stack",
    "roomy",
    "thread_stack_size",
]

WASM_STACK = 512 * KiB
"""The guest stack limit of wasmtime's engine (its default)."""
NEEDED = WASM_STACK + 1 * MiB
"""Native stack a thread needs for guest calls: the guest's own limit, then room for the host
functions it calls and the Python frames around the call."""
SMALLEST_FRAME = 16
"""Bytes of native stack the smallest guest frame takes on wasmtime (a one-argument recursion
stops after 32 761 frames under its 512 KiB limit)."""
MAX_DEPTH = WASM_STACK // SMALLEST_FRAME
"""Guest frames a call may stack where the sandbox bounds the call depth in the module (engines
whose own guard is costly): as deep as the smallest frames go under wasmtime's stack limit, so a
recursion that runs on one engine runs on the other."""
RUNNER_STACK = 4 * MiB
"""Stack of the threads that run the calls of threads with less than :data:`NEEDED`. Not more:
wasmer 1.1 lets a guest recurse until the native stack ends and then describes every frame, so
a deeper stack only makes that description longer."""

_Result = TypeVar("_Result")
_local = threading.local()


def thread_stack_size() -> int | None:
    """The calling thread's native stack in bytes, or ``None`` where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        get_attributes = libc.pthread_getattr_np
        get_stack = libc.pthread_attr_getstack
        destroy = libc.pthread_attr_destroy
        self_id = libc.pthread_self
    except (OSError, AttributeError):
        return None
    self_id.restype = ctypes.c_void_p
    attributes = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on glibc
    if get_attributes(ctypes.c_void_p(self_id()), attributes) != 0:
        return None
    try:
        address, size = ctypes.c_void_p(), ctypes.c_size_t()
        if get_stack(attributes, ctypes.byref(address), ctypes.byref(size)) != 0:
            return None
        return size.value
    finally:
        destroy(attributes)


def roomy() -> bool:
    """Whether the calling thread's stack is large enough for guest calls (read once)."""
    answer: bool | None = getattr(_local, "roomy", None)
    if answer is None:
        size = thread_stack_size()
        answer = _local.roomy = size is None or size >= NEEDED
    return answer


class _Runners:
    """Threads of :data:`RUNNER_STACK` bytes, made as needed (a call that a runner runs may call
    back into a plugin from another small thread) and kept for the life of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def run(self, function: Callable[..., _Result], *args: object) -> _Result:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="wasm-plugins-stack"
                )
            # The executor starts its threads inside submit(), with the stack size set now.
            previous = threading.stack_size(RUNNER_STACK)
            try:
                future = self._executor.submit(function, *args)
            finally:
                threading.stack_size(previous)
        return future.result()

    def after_fork_in_child(self) -> None:
        """The runners stayed in the parent."""
        self._lock = threading.Lock()
        self._executor = None


_RUNNERS = _Runners()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNNERS.after_fork_in_child)


def on_roomy_stack(function: Callable[..., _Result], *args: object) -> _Result:
    """``function(*args)``, on this thread when its stack is large enough, else on a runner."""
    if roomy():
        return function(*args)
    return _RUNNERS.run(function, *args)
