"""The wasmtime engine: store limits, fuel, epoch deadlines, and a fast call path.

``Func.__call__`` in wasmtime-py re-reads the function's type and boxes every value on each call
(tens of microseconds). The guest ABI only ever calls ``(i32, i32) -> i64`` exports whose type is
checked once at lookup, so :meth:`WasmtimeInstance.call_abi` calls ``wasmtime_func_call_unchecked``
of the library wasmtime-py loaded, through a private ctypes function pointer that converts no
argument (each is already a ctypes object of the right width), with a preallocated buffer of raw
values; guest memory is reached the same way, through its base pointer. When the installed
wasmtime lacks those symbols, the public API is used instead: slower, same behaviour.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import attrs
import wasmtime

from wasm_plugins.engine._epoch import TICK, EpochTicker
from wasm_plugins.engine._gil import KEPT, KEPT_TICKS, LOOK_EVERY, SHORT_CALL
from wasm_plugins.engine._module_types import (
    ModuleTypes,
    pack,
    read_module_types,
    read_packed_types,
    unpack,
)
from wasm_plugins.engine._protocol import (
    CallBudget,
    EngineFeatures,
    ExportFunction,
    FuncSignature,
    HostImport,
    LinkedModule,
    MemoryImport,
    WasiSettings,
)
from wasm_plugins.engine._traps import (
    MAX_FRAMES,
    check_range,
    no_exported_function,
    trap_error,
    truncate,
    validation_error,
    wat_error,
)
from wasm_plugins.errors import (
    CallCancelled,
    CommunicationError,
    DeadlineExceeded,
    ExecutionError,
    GuestFrame,
    InstanceError,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
)

try:
    from wasmtime import _bindings as _ffi
    from wasmtime import _ffi as _library
    from wasmtime import _func as _wasmtime_func

    _TrapPointer: Any = ctypes.POINTER(_ffi.wasm_trap_t)
    _ErrorPointer: Any = ctypes.POINTER(_ffi.wasmtime_error_t)
    if ctypes.sizeof(_ffi.wasmtime_val_raw_t) != 16 or sys.byteorder != "little":
        raise ImportError("wasmtime_val_raw_t is not the 16-byte little-endian union expected")
    # Private function pointers of the same C symbols, without argument types: ctypes then
    # converts nothing (every argument below is already a ctypes object of the right width),
    # which halves the cost of a call. wasmtime-py's own prototypes are left untouched.
    _call_unchecked: Any = _library.dll["wasmtime_func_call_unchecked"]
    _call_unchecked.restype = ctypes.c_void_p
    # The functions that only read or set a field keep the GIL (a PyDLL handle to the same
    # library): releasing it hands it to any thread waiting for it, such as an event loop
    # awaiting the call, and the call then waits for the GIL to come back. Only the guest
    # call releases it, so that guests run in parallel with other Python threads.
    _keeping_gil = ctypes.PyDLL(_library.dll._name, handle=_library.dll._handle)
    _memory_data: Any = _keeping_gil["wasmtime_memory_data"]
    _memory_data.restype = ctypes.c_void_p
    _memory_data_size: Any = _keeping_gil["wasmtime_memory_data_size"]
    _memory_data_size.restype = ctypes.c_size_t
    _set_epoch_deadline: Any = _keeping_gil["wasmtime_context_set_epoch_deadline"]
    _set_epoch_deadline.restype = None
    _call_keeping: Any = _keeping_gil["wasmtime_func_call_unchecked"]
    """The guest call keeping the GIL, for short calls (see ``engine._gil``)."""
    _call_keeping.restype = ctypes.c_void_p
    _memmove: Any = ctypes.PYFUNCTYPE(
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
    )(cast(int, ctypes.cast(ctypes.memmove, ctypes.c_void_p).value))
    """``ctypes.memmove`` (the C library's), keeping the GIL."""
    _TWO = ctypes.c_size_t(2)
    _INCREMENT_EPOCH: int | None = ctypes.cast(
        _library.dll["wasmtime_engine_increment_epoch"], ctypes.c_void_p
    ).value
    _DeadlineCallback: Any = _ffi._wasmtime_store_epoch_deadline_callback.argtypes[1]
    _NoFinalizer: Any = _ffi._wasmtime_store_epoch_deadline_callback.argtypes[3]
    FAST_PATH = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the wasmtime release
    _INCREMENT_EPOCH = None
    _call_unchecked = _call_keeping = None
    FAST_PATH = False

__all__ = ["FAST_PATH", "WasmtimeEngine"]

_PROPOSALS_OFF = (
    "wasm_tail_call",
    "wasm_threads",
    "wasm_memory64",
    "wasm_custom_page_sizes",
    "wasm_exceptions",
    "wasm_gc",
    "wasm_function_references",
    "wasm_relaxed_simd",
    "wasm_stack_switching",
    "wasm_wide_arithmetic",
)
_MASK32 = 0xFFFFFFFF
_UPDATE_DEADLINE_CONTINUE = 0
_NO_DEADLINE = 2**62
"""Epoch ticks that never pass: epoch interruption is on for every store, deadlines or not."""
_KEPT_DEADLINE_MIN_TICKS = 3
"""The fewest ticks of a deadline kept for the calls of the next tick: one of fewer could be due
as such a call enters, and the deadline callback (Python) would then run for every call."""

_TRAP_NAMES = {
    "UNREACHABLE": "unreachable",
    "INTEGER_DIVISION_BY_ZERO": "integer_divide_by_zero",
    "INTEGER_OVERFLOW": "integer_overflow",
    "MEMORY_OUT_OF_BOUNDS": "memory_out_of_bounds",
    "HEAP_MISALIGNED": "memory_out_of_bounds",
    "STACK_OVERFLOW": "stack_overflow",
    "INDIRECT_CALL_TO_NULL": "indirect_call_to_null",
    "BAD_SIGNATURE": "bad_signature",
    "TABLE_OUT_OF_BOUNDS": "table_out_of_bounds",
    "BAD_CONVERSION_TO_INTEGER": "bad_conversion_to_integer",
    "UNALIGNED_POINTER": "memory_out_of_bounds",
    "NULL_REFERENCE": "null_reference",
}


def _func_type(signature: FuncSignature) -> wasmtime.FuncType:
    types = {
        "i32": wasmtime.ValType.i32,
        "i64": wasmtime.ValType.i64,
        "f32": wasmtime.ValType.f32,
        "f64": wasmtime.ValType.f64,
    }
    return wasmtime.FuncType(
        [types[t]() for t in signature.params], [types[t]() for t in signature.results]
    )


class _Memory:
    """Bounds-checked reads and writes through the memory's base pointer.

    The base pointer can only move when the memory grows, and growing changes the size, so the
    size is read on every checked access and the pointer only when the size changed.
    ``read_unchecked`` and ``write_unchecked`` are for the ABI session, which checks ranges
    against a size read since the guest last ran (so the base pointer is current as well).
    """

    def __init__(self) -> None:
        self._context: Any = None
        self._memory_ref: Any = None
        self._memory: wasmtime.Memory | None = None
        self._store: wasmtime.Store | None = None
        self._base = 0
        self._size = -1

    def bind(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._memory = memory
        if FAST_PATH:
            self._context = ctypes.c_void_p(ctypes.cast(store._context(), ctypes.c_void_p).value)
            self._memory_ref = ctypes.byref(memory._memory)

    def size(self) -> int:
        if self._memory is None or self._store is None:
            return 0
        if not FAST_PATH:
            return int(self._memory.data_len(self._store))
        size: int = _memory_data_size(self._context, self._memory_ref)
        if size != self._size:
            self._base = _memory_data(self._context, self._memory_ref) or 0
            self._size = size
        return size

    def _check(self, ptr: int, length: int, direction: str) -> None:
        check_range(self._memory is not None, self.size, ptr, length, direction)

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length, "guest-to-host")
        if not FAST_PATH:
            assert self._memory is not None and self._store is not None
            return bytes(self._memory.read(self._store, ptr, ptr + length))
        return ctypes.string_at(self._base + ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data), "host-to-guest")
        if not FAST_PATH:
            assert self._memory is not None and self._store is not None
            self._memory.write(self._store, data, ptr)
            return
        _memmove(self._base + ptr, data, len(data))

    def read_unchecked(self, ptr: int, length: int) -> bytes:
        """Copy a range already checked against :meth:`size` since the guest last ran."""
        if not FAST_PATH:
            return self.read(ptr, length)
        return ctypes.string_at(self._base + ptr, length)

    def write_unchecked(self, ptr: int, data: bytes) -> None:
        """Copy into a range already checked against :meth:`size` since the guest last ran."""
        if not FAST_PATH:
            self.write(ptr, data)
            return
        _memmove(self._base + ptr, data, len(data))


@attrs.define
class _Export:
    name: str
    signature: FuncSignature
    func: wasmtime.Func
    reference: Any


def _export_function(exports: Any, types: ModuleTypes, name: str) -> _Export:
    func = exports.get(name)
    # The type comes from the module's bytes: asking wasmtime aborts on v128.
    signature = types.signature(name)
    if not isinstance(func, wasmtime.Func) or signature is None:
        raise no_exported_function(name)
    reference = ctypes.byref(func._func) if FAST_PATH else None
    return _Export(name, signature, func, reference)


class _Linked:
    """The instance of a linked module, in its main instance's store."""

    def __init__(
        self, store: wasmtime.Store, instance: wasmtime.Instance, types: ModuleTypes
    ) -> None:
        self._types = types
        self._exports = instance.exports(store)
        self.memory = _Memory()
        memory = self._exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            self.memory.bind(store, memory)

    def export_function(self, name: str) -> _Export:
        return _export_function(self._exports, self._types, name)


class WasmtimeInstance:
    """One wasmtime store and instance."""

    _cancelled: threading.Event | None = None
    """Set by another thread to stop this instance's calls (see :meth:`watch`)."""
    _stop_at: float | None = None
    """While watched, the monotonic time the call's timeout passes."""
    _stopped: str | None = None
    """Why the deadline callback stopped the guest: ``cancelled`` or ``timeout``."""
    _on_deadline: Any = None
    """The store's epoch-deadline callback, once a call was watched."""
    _context: Any = None
    """The store's context for the fast path (``None`` until the instance exists)."""
    _armed_at = 0.0
    """When the budget in force started: a deadline's time is counted from it."""
    _deadline_kept_until = 0.0
    """Until when the store's timeout deadline holds for a call that starts (see :meth:`arm`)."""
    _deadline_generation = -1
    """The ticker's generation the kept deadline was counted in."""
    _bare = False
    """Whether :meth:`arm` has nothing to do (see :meth:`_choose_path`)."""
    _timeout_only = False
    """Whether a timeout is the whole budget (see :meth:`_choose_path`)."""
    _timed = False
    """Whether a call needs the ticker and nothing else around it: a timeout, a watched
    cancellation that cannot advance the epoch itself, or both, without fuel or captured output
    (see :meth:`call_abi`)."""
    _nudged = False
    """Whether the watched event advances the engine's epoch when set (see :meth:`watch`)."""
    _deadline_never = False
    """Whether the store's deadline was set to never by :meth:`_set_deadline`."""
    _keeps_gil = False
    """Whether the guest call keeps the GIL (see ``engine._gil``): the instance then watches
    ``KEPT``."""
    _long_call = False
    """Set by the deadline callback when a call that keeps the GIL ran long: the next call
    releases it."""
    _countdown = LOOK_EVERY
    """Calls until the next look at whether to keep the GIL."""
    _guest_call: Any = _call_unchecked
    """The fast path's guest call: ``_call_keeping`` while the instance keeps the GIL."""

    def __init__(
        self,
        compiled: _Compiler,
        module: wasmtime.Module,
        types: ModuleTypes,
        fuel: bool,
        imports: Sequence[HostImport],
        budget: CallBudget,
        memory_import: MemoryImport | None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
    ) -> None:
        self._ticker = compiled.ticker
        self._types = types
        self.linked: _Linked | None = None
        self._budget = budget
        self._fuel = budget.fuel if fuel else None
        self._timeout = budget.timeout
        self._host_exception: BaseException | None = None
        self._last_fuel_used: int | None = None
        self.memory = _Memory()
        wasmtime_engine = compiled.engine
        store = wasmtime.Store(wasmtime_engine)
        if budget.memory_bytes is not None:
            store.set_limits(memory_size=budget.memory_bytes)
        self._store = store
        linker = wasmtime.Linker(wasmtime_engine)
        self._add_wasi(store, linker, wasi)
        for host_import in imports:
            linker.define_func(
                host_import.module,
                host_import.name,
                _func_type(host_import.signature),
                self._host_trampoline(host_import.function),
            )
        imported_memory = None
        if memory_import is not None:
            limits = wasmtime.Limits(memory_import.minimum, memory_import.maximum)
            imported_memory = wasmtime.Memory(store, wasmtime.MemoryType(limits))
            linker.define(store, memory_import.module, memory_import.name, imported_memory)
        # Epoch interruption is on for every store: without a timeout, a deadline never reached.
        store.set_epoch_deadline(_NO_DEADLINE)
        if FAST_PATH and self._timeout is not None:
            # A deadline counted in ticks comes early when ticks that were late as it was armed
            # (a loaded machine) arrive together: when it comes, the callback gives the guest
            # what is left of its time, so a call is never stopped before its timeout.
            self._install_deadline_callback()
        self.arm()
        try:
            if self._timeout is None:
                self._instance = self._instantiate(linker, module, linked)
            else:
                with self._ticker:
                    self._instance = self._instantiate(linker, module, linked)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._instantiation_error(exc, time.monotonic() - self._armed_at) from None
        finally:
            if self._captured is not None:
                self._captured.drain()
        self._exports = self._instance.exports(store)
        memory = self._exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            self.memory.bind(store, memory)
        elif imported_memory is not None:
            self.memory.bind(store, imported_memory)
        if FAST_PATH:
            self._context = ctypes.c_void_p(ctypes.cast(store._context(), ctypes.c_void_p).value)
            # Two wasmtime_val_raw_t (16 bytes each) as four 64-bit words: the arguments go in
            # words 0 and 2, the i64 result comes back in word 0 (raw values are little-endian).
            self._values = (ctypes.c_int64 * 4)()
            self._trap = ctypes.c_void_p()
            self._trap_ref = ctypes.byref(self._trap)
            self._choose_path()

    def _add_wasi(
        self, store: wasmtime.Store, linker: wasmtime.Linker, wasi: WasiSettings | None
    ) -> None:
        self._wasi = wasi is not None
        """WASI's functions are the engine's own (C): one may block (a sleep in
        ``poll_oneoff``) with no deadline callback to run meanwhile, so such an instance never
        keeps the GIL."""
        self._captured = _link_wasi(store, linker, wasi) if wasi is not None else None

    def _instantiate(
        self, linker: wasmtime.Linker, module: wasmtime.Module, linked: LinkedModule | None
    ) -> wasmtime.Instance:
        if linked is not None:
            companion_module = cast(WasmtimeModule, linked.module)
            companion = linker.instantiate(self._store, companion_module._module)
            linker.define_instance(self._store, linked.namespace, companion)
            self.linked = _Linked(self._store, companion, companion_module._types)
        return linker.instantiate(self._store, module)

    def _host_trampoline(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # wasmtime-py keeps host functions in a module-level table until their store is freed:
        # a strong reference back to this instance (which owns the store) would never be freed.
        instance_ref = weakref.ref(self)

        def trampoline(*args: Any) -> Any:
            instance = instance_ref()
            try:
                if instance is None:
                    raise CommunicationError(
                        message="Host function called after its instance was released",
                        channel="guest-memory",
                        direction="guest-to-host",
                    )
                return function(instance.memory, *args)
            except BaseException as exc:
                if instance is not None:
                    instance._host_exception = exc
                raise

        return trampoline

    def arm(self) -> None:
        if self._bare:
            return
        now = self._armed_at = time.monotonic()
        if not self._timeout_only:
            if self._fuel is not None:
                self._store.set_fuel(self._fuel)
            if self._cancelled is not None:
                # Watched: the deadline callback looks at the cancellation every tick, and keeps
                # the timeout itself (ticks are counted late when the callback waits for the GIL).
                # The store's deadline is never more than a tick away while watched (``watch``
                # set it so, the callback sets it a tick on): one passed already calls the
                # callback at the guest's first look, which sets the next.
                if self._timeout is not None:
                    self._stop_at = now + self._timeout
                elif self._keeps_gil and now >= self._deadline_kept_until:
                    # Kept for the calls of the next tick: a deadline that passed between
                    # calls would run the callback (Python) as the next call enters; setting
                    # it afresh once a tick is a C call.
                    self._set_deadline(KEPT_TICKS)
                    self._deadline_kept_until = now + TICK
                return
            if self._timeout is None:
                if self._on_deadline is not None:
                    self._set_deadline(_NO_DEADLINE)
                return
        if now >= self._deadline_kept_until or self._ticker.generation != self._deadline_generation:
            self._arm_timeout(now)

    def _arm_timeout(self, now: float) -> None:
        """Set the store's deadline to the timeout from ``now``, and keep it for the calls that
        start within the next tick of the same run of the timer.

        A kept deadline ends at the same tick as it did for the call that set it, which started
        earlier: never later than a later call's own (the start plus the timeout, and the tick
        the timer's phase may add), at most the tick it was kept for (and one pending) earlier.
        Should it come before the call's time is up, the deadline callback gives the call the
        rest. Setting it is a C call and a count of ticks, which cost a good part of a small
        call; once a tick is enough.
        """
        ticker = self._ticker
        generation = ticker.generation
        ticks = ticker.ticks_for(cast(float, self._timeout), early=self._on_deadline is not None)
        self._set_deadline(ticks)
        if ticks >= _KEPT_DEADLINE_MIN_TICKS and ticker.running:
            self._deadline_kept_until = now + TICK
            self._deadline_generation = generation

    def _set_deadline(self, ticks: int) -> None:
        self._deadline_kept_until = 0.0
        self._deadline_never = ticks >= _NO_DEADLINE
        if self._context is not None:
            _set_epoch_deadline(self._context, ctypes.c_uint64(ticks))
        else:
            self._store.set_epoch_deadline(ticks)

    def watch(self, cancelled: threading.Event | None) -> bool:
        """Stop this instance's calls when ``cancelled`` is set, from any thread (None: stop
        watching). The store's epoch deadline is then the next epoch, and a callback on the
        calling thread ends the call with a ``CallCancelled`` once the event is set: the guest
        stops within a tick or two, its instance to be discarded. An event that calls back
        when set (``when_set``, a ``Cancellation``'s) advances the epoch itself, so a call
        with no timeout runs no ticker; with another event, or a timeout, the ticker runs
        and the deadline comes every tick."""
        if not FAST_PATH:
            return False
        if cancelled is not None and cancelled is self._cancelled:
            # Watching it already (a thread's lasting cancellation): the deadline is a tick
            # away at most, and each call's arm sets the timeout's instant.
            return True
        if cancelled is not None and self._on_deadline is None:
            self._install_deadline_callback()
        self._cancelled = cancelled
        self._keeps_gil = cancelled is KEPT
        self._guest_call = _call_keeping if self._keeps_gil else _call_unchecked
        self._stop_at = None
        # An event that tells who asks when it is set (a Cancellation's) advances the epoch
        # itself: a call with no timeout then needs no ticker (see _choose_path).
        when_set = getattr(cancelled, "when_set", None)
        self._nudged = when_set is not None
        if when_set is not None:
            when_set(self._ticker.nudge)
        if cancelled is not None:
            # The budget may be armed already (at instantiation, for the first call).
            if self._timeout is not None:
                self._stop_at = time.monotonic() + self._timeout
            self._set_deadline(1)
        self._choose_path()
        return True

    def _choose_path(self) -> None:
        """Which fast path :meth:`call_abi` takes: no budget at all (or a cancellation that
        advances the epoch itself), or the ticker alone (a timeout, a cancellation), else the
        guarded one."""
        bare_budget = self._fuel is None and self._captured is None
        plain = bare_budget and self._cancelled is None
        # Watched, no timeout, and the cancellation advances the epoch itself (``nudge``): the
        # deadline stays a tick away with no ticker running, and nothing is armed per call.
        nudged = bare_budget and self._timeout is None and self._cancelled is not None
        nudged = nudged and self._nudged
        self._unguarded = (plain and self._timeout is None) or nudged
        self._timeout_only = plain and self._timeout is not None
        self._timed = (
            bare_budget
            and (self._timeout is not None or self._cancelled is not None)
            and not nudged
        )
        # Nothing to arm: no fuel, no time, and a store whose deadline is "never" (no deadline
        # callback was ever installed, or the deadline was set back to it after a watch); the
        # unguarded path reads no clock.
        never = self._on_deadline is None or self._deadline_never
        self._bare = (self._unguarded and never) or nudged

    def _install_deadline_callback(self) -> None:
        self._on_deadline = _DeadlineCallback(_deadline_callback(weakref.ref(self)))
        _ffi.wasmtime_store_epoch_deadline_callback(
            self._store.ptr(), self._on_deadline, None, _NoFinalizer()
        )

    def _ticks_to_go(self) -> int:
        """The ticks until the next look at the deadline: every tick while watched, else the
        ticks the rest of the timeout takes."""
        if self._cancelled is KEPT and self._timeout is None:
            return KEPT_TICKS
        if self._cancelled is not None or self._timeout is None:
            return 1
        # Asked by the deadline callback, which corrects a deadline that comes early. The rest
        # of the timeout is read on this module's clock, the one ``_armed_at`` was read on.
        remaining = self._armed_at + self._timeout - time.monotonic()
        return self._ticker.ticks_for(remaining, early=True)

    def _deadline_reached(self) -> str | None:
        """Why to stop the guest now that the store's deadline came (None: go on, for
        :meth:`_ticks_to_go` more ticks)."""
        cancelled = self._cancelled
        if cancelled is None:
            # An unwatched store's deadline is its timeout's, unless it came early.
            if self._timeout is None or time.monotonic() >= self._armed_at + self._timeout:
                return "timeout"
            return None
        if cancelled.is_set():
            return "cancelled"
        stop_at = self._stop_at
        if stop_at is None and cancelled is not KEPT:
            return None
        now = time.monotonic()
        if stop_at is not None and now >= stop_at:
            return "timeout"
        if cancelled is KEPT and now - self._armed_at >= SHORT_CALL:
            # A call that keeps the GIL ran long: it goes on (this callback, every few ticks,
            # lets waiting threads in), and the next call releases the GIL.
            self._long_call = True
            self._countdown = 1
        return None

    def export_function(self, name: str) -> _Export:
        return _export_function(self._exports, self._types, name)

    def call(self, function: ExportFunction, *args: int) -> Any:
        function = cast(_Export, function)
        return self._guarded(lambda: function.func(self._store, *args))

    def call_abi(self, function: ExportFunction, ptr: int, length: int) -> int:
        if not FAST_PATH:
            answer: int = self.call(function, ptr, length)
            return answer
        self._countdown -= 1
        if not self._countdown:
            return self._looked_at(function, ptr, length)
        in_flight: list[None] | None = None
        if not self._unguarded:
            if not self._timed:
                return int(
                    self._guarded(lambda: self._raw_call(cast(_Export, function), ptr, length))
                )
            # Under the armed deadline (a timeout, a watched cancellation; no fuel, no captured
            # output): the ticker's ``with`` written out (see EpochTicker.__enter__), without
            # the guarded path's closure, nor a frame of its own.
            ticker = self._ticker
            in_flight = ticker.in_flight
            in_flight.append(None)
            try:
                ticker.called = True
                if not ticker.running:
                    ticker.start_if_stopped()
            except BaseException:
                in_flight.pop()
                raise
        self._host_exception = None
        values = self._values
        values[0] = ptr & _MASK32
        values[2] = length & _MASK32
        try:
            try:
                error = self._guest_call(
                    self._context,
                    function.reference,  # type: ignore[attr-defined]
                    values,
                    _TWO,
                    self._trap_ref,
                )
            finally:
                if in_flight is not None:
                    in_flight.pop()
            if error or self._trap.value:
                self._raise_from_raw(error)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            elapsed = 0.0 if in_flight is None else time.monotonic() - self._armed_at
            raise self._call_error(exc, elapsed, "call") from None
        result: int = values[0]
        return result

    def _looked_at(self, function: ExportFunction, ptr: int, length: int) -> int:
        """Every :data:`LOOK_EVERY`-th call: the call, and whether the calls after it keep the
        GIL (see ``engine._gil``): when this one was short and another thread calls guests of
        the engine too. A plugin that is fuelled or has WASI, or an instance watched for a
        caller's cancellation, always releases it."""
        self._countdown = LOOK_EVERY
        if self._long_call:
            self._long_call = False
            self._keep_gil(False)
            return self.call_abi(function, ptr, length)
        started = time.monotonic()
        result = self.call_abi(function, ptr, length)
        took = time.monotonic() - started
        cancelled = self._cancelled
        if self._fuel is None and not self._wasi and (cancelled is None or cancelled is KEPT):
            self._keep_gil(took < SHORT_CALL and self._ticker.callers.others(started))
        return result

    def _keep_gil(self, keep: bool) -> None:
        if keep == self._keeps_gil:
            return
        if keep:
            # A deadline a few ticks away at most, whose callback runs on this thread (see
            # watch, arm and _ticks_to_go).
            self.watch(KEPT)
        else:
            self._set_deadline(_NO_DEADLINE)
            self.watch(None)

    def call_unit(self, function: ExportFunction) -> int:
        if not FAST_PATH:
            answer: int = self.call(function)
            return answer
        # The raw-value buffer holds two arguments; a function taking none ignores them, and
        # its i32 result lands in the low half of word 0 (cleared with the arguments).
        result = self.call_abi(function, 0, 0) & _MASK32
        return result - ((result >> 31) << 32)

    def _raw_call(self, function: _Export, ptr: int, length: int) -> int:
        values = self._values
        values[0] = ptr & _MASK32
        values[2] = length & _MASK32
        error = _call_unchecked(self._context, function.reference, values, _TWO, self._trap_ref)
        if error or self._trap.value:
            self._raise_from_raw(error)
        result: int = values[0]
        return result

    def _raise_from_raw(self, error: int | None) -> None:
        failure: Exception
        if self._trap.value:
            failure = wasmtime.Trap._from_ptr(ctypes.cast(self._trap.value, _TrapPointer))
            self._trap.value = None
        else:
            failure = wasmtime.WasmtimeError._from_ptr(ctypes.cast(error or 0, _ErrorPointer))
        self._reraise_host_exception()
        try:
            raise failure
        finally:
            del failure

    def _reraise_host_exception(self) -> None:
        exception: BaseException | None = self._host_exception
        if exception is not None:
            self._host_exception = None
            if _wasmtime_func.LAST_EXCEPTION is exception:
                _wasmtime_func.LAST_EXCEPTION = None
            try:
                raise exception
            finally:
                del exception

    def _guarded(self, thunk: Callable[[], Any]) -> Any:
        self._host_exception = None
        try:
            if self._timeout is None and self._cancelled is None:
                return thunk()
            with self._ticker:
                return thunk()
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise self._call_error(exc, time.monotonic() - self._armed_at, "call") from None
        finally:
            if self._fuel is not None:
                self._last_fuel_used = self._fuel - self._store.get_fuel()
            if self._captured is not None:
                self._captured.drain()

    def _call_error(self, exc: Exception, elapsed: float, operation: str) -> PluginError:
        stopped, self._stopped = self._stopped, None
        if stopped == "cancelled":
            return CallCancelled(operation=operation)
        if stopped == "timeout":
            return DeadlineExceeded(
                operation=operation, duration=elapsed, limit=self._budget.timeout
            )
        if not isinstance(exc, wasmtime.Trap):
            return ExecutionError(
                message=f"Guest call failed: {truncate(str(exc), 300)}",
                trap="engine_error",
                details={"engine_message": truncate(str(exc), 500)},
            )
        code = exc.trap_code
        if code is wasmtime.TrapCode.INTERRUPT:
            return DeadlineExceeded(
                operation=operation, duration=elapsed, limit=self._budget.timeout
            )
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            return ResourceLimitExceeded(
                resource="fuel", used=self._fuel, limit=self._fuel, unit="units"
            )
        frames = exc.frames
        kept = tuple(
            GuestFrame(
                function=frame.func_name,
                function_index=frame.func_index,
                module_offset=frame.module_offset if frame.module_offset < 2**63 else None,
            )
            for frame in frames[:MAX_FRAMES]
        )
        trap = _TRAP_NAMES.get(code.name, code.name.lower()) if code is not None else "unknown"
        return trap_error(trap, kept, max(0, len(frames) - MAX_FRAMES), exc.message)

    def _instantiation_error(self, exc: Exception, elapsed: float) -> PluginError:
        error = self._call_error(exc, elapsed, "instantiation")
        if isinstance(error, DeadlineExceeded | ResourceLimitExceeded):
            return error
        message = str(exc) if not isinstance(exc, wasmtime.Trap) else error.message
        if "memory" in message and "exceeds memory limits" in message:
            return ResourceLimitExceeded(
                resource="memory",
                limit=self._budget.memory_bytes,
                message=(f"Resource limit exceeded: memory - {truncate(message, 200)}"),
            )
        return InstanceError(
            state="instantiating",
            message=f"Instance failed while instantiating: {truncate(message, 300)}",
            suggestion="the module's start function or its imports failed; see the cause",
        )

    def read_global(self, name: str) -> int | None:
        value = self._exports.get(name)
        if not isinstance(value, wasmtime.Global):
            return None
        result = value.value(self._store)
        return result if isinstance(result, int) else None

    def write_global(self, name: str, value: int) -> None:
        target = self._exports.get(name)
        if isinstance(target, wasmtime.Global):
            target.set_value(self._store, value)

    def fuel_consumed(self) -> int | None:
        return self._last_fuel_used


def _deadline_callback(instance_ref: weakref.ref[WasmtimeInstance]) -> Callable[..., int]:
    """The store's epoch-deadline callback: an error (the call stops) or one more tick.

    It refers to its instance weakly: the store (owned by the instance) holds it.
    """

    def on_deadline(_context: Any, _data: Any, delta: Any, kind: Any) -> int:
        instance = instance_ref()
        ticks = 1
        try:
            if instance is not None:
                instance._deadline_kept_until = 0.0  # the store's deadline moves here
            stop = "cancelled" if instance is None else instance._deadline_reached()
            if stop is None and instance is not None:
                ticks = instance._ticks_to_go()
        except BaseException as exc:  # a callback must answer: an exception here would go unseen
            stop = "cancelled"
            if instance is not None and not isinstance(exc, Exception):
                # A signal handler ran here (KeyboardInterrupt: the callback runs Python on the
                # calling thread, the main thread's too), or SystemExit: the guest stops, and
                # the call raises it as it came, not as a cancellation.
                instance._host_exception = exc
        if stop is None:
            delta[0] = ticks
            kind[0] = _UPDATE_DEADLINE_CONTINUE
            return 0
        if instance is not None:
            instance._stopped = stop
        error = _ffi.wasmtime_error_new(ctypes.create_string_buffer(f"call {stop}".encode()))
        address: int = ctypes.cast(error, ctypes.c_void_p).value or 0
        return address

    return on_deadline


class _CapturedOutput:
    """A guest's stdout and stderr, written by wasmtime to unlinked temporary files and handed to
    the output callback after every call.

    Files rather than wasmtime's custom-output callbacks: those run on wasmtime's own worker
    threads, which then call into Python, even while the interpreter shuts down.
    """

    def __init__(self, output: Callable[[str, bytes], None]) -> None:
        self._output = output
        self._streams = [
            # Open for the instance's whole life, closed when it is collected.
            (name, tempfile.NamedTemporaryFile(prefix=f"wasm-plugins-{name}-", delete=False))  # noqa: SIM115
            for name in ("stdout", "stderr")
        ]

    def configure(self, config: wasmtime.WasiConfig) -> None:
        config.stdout_file = self._streams[0][1].name
        config.stderr_file = self._streams[1][1].name

    def opened(self) -> None:
        """wasmtime holds the files open now: their names are no longer needed."""
        for _, handle in self._streams:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)

    def drain(self) -> None:
        for name, handle in self._streams:
            data = handle.read()
            if data:
                self._output(name, data)


def _link_wasi(
    store: wasmtime.Store, linker: wasmtime.Linker, settings: WasiSettings
) -> _CapturedOutput | None:
    captured = _CapturedOutput(settings.output) if settings.output is not None else None
    store.set_wasi(_wasi_config(settings, captured))
    linker.define_wasi()
    if captured is not None:
        captured.opened()
    return captured


def _wasi_config(settings: WasiSettings, captured: _CapturedOutput | None) -> wasmtime.WasiConfig:
    config = wasmtime.WasiConfig()
    config.argv = list(settings.arguments)
    config.env = [list(pair) for pair in settings.environment]
    for directory in settings.directories:
        config.preopen_dir(
            directory.host_path, directory.guest_path, fs_mutable=not directory.read_only
        )
    if captured is not None:
        captured.configure(config)
    return config


class WasmtimeModule:
    """A module compiled by wasmtime; usable from any thread."""

    def __init__(
        self,
        engine: WasmtimeEngine,
        module: wasmtime.Module,
        types: ModuleTypes,
        fuel: bool,
        compiler: _Compiler,
    ) -> None:
        self.engine = engine
        self._module = module
        self._types = types
        self._fuel = fuel
        self._compiler = compiler
        self.exports = types.exports
        self.imports = types.imports

    def serialize(self) -> bytes:
        return pack(self._types, bytes(self._module.serialize()))

    def instantiate(
        self,
        imports: Sequence[HostImport],
        budget: CallBudget,
        memory_import: MemoryImport | None = None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
    ) -> WasmtimeInstance:
        return WasmtimeInstance(
            self._compiler,
            self._module,
            self._types,
            self._fuel,
            imports,
            budget,
            memory_import,
            wasi,
            linked,
        )


class WasmtimeEngine:
    """Adapter for wasmtime: every limit enforced in-process."""

    name = "wasmtime"
    features = EngineFeatures(
        timeout=True,
        fuel=True,
        store_memory_limit=True,
        wasi=True,
        wasi_confined_directories=True,
        wasi_read_only_preopens=True,
        wasi_captured_output=True,
        thread_bound=False,
        multi_memory=True,
    )

    def __init__(self) -> None:
        self.version = _wasmtime_version()
        self._compilers: dict[bool, _Compiler] = {}
        self._lock = threading.Lock()
        self._parallel = True
        _ENGINES.add(self)

    def compiler(self, fuel: bool) -> _Compiler:
        """The shared wasmtime engine (and its epoch ticker) for modules with or without fuel."""
        with self._lock:
            compiler = self._compilers.get(fuel)
            if compiler is None:
                config = wasmtime.Config()
                config.epoch_interruption = True
                config.consume_fuel = fuel
                # Only the proposals every engine runs: a module loads on all engines or none.
                for proposal in _PROPOSALS_OFF:
                    setattr(config, proposal, False)
                config.parallel_compilation = self._parallel
                engine = wasmtime.Engine(config)
                compiler = _Compiler(engine, EpochTicker(engine, _INCREMENT_EPOCH))
                self._compilers[fuel] = compiler
            return compiler

    def wasmtime_engine(self, fuel: bool) -> wasmtime.Engine:
        """The shared wasmtime engine for modules with or without fuel metering."""
        return self.compiler(fuel).engine

    def ticker(self, fuel: bool) -> EpochTicker:
        """The epoch ticker of :meth:`wasmtime_engine`."""
        return self.compiler(fuel).ticker

    def after_fork_in_child(self) -> None:
        """The compiler threads of the parent's engines are gone (compiling on them would wait
        for ever): modules from now on go to new engines that compile on the calling thread.
        Modules compiled before the fork keep their engine, and run as before."""
        self._lock = threading.Lock()
        self._compilers = {}
        self._parallel = False

    def wat_to_wasm(self, text: str) -> bytes:
        try:
            return bytes(wasmtime.wat2wasm(text))
        except wasmtime.WasmtimeError as exc:
            raise wat_error(str(exc)) from None

    def validate(self, wasm: bytes) -> None:
        try:
            wasmtime.Module.validate(self.wasmtime_engine(False), wasm)
        except wasmtime.WasmtimeError as exc:
            raise validation_error(str(exc)) from None

    def compile(self, wasm: bytes, *, fuel: bool = False) -> WasmtimeModule:
        try:
            compiler = self.compiler(fuel)
            module = wasmtime.Module(compiler.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise validation_error(str(exc)) from None
        return WasmtimeModule(self, module, read_module_types(wasm), fuel, compiler)

    def deserialize(self, data: bytes, *, fuel: bool = False) -> WasmtimeModule:
        types, compiled = unpack(data)
        compiler = self.compiler(fuel)
        return self._loaded(
            lambda: wasmtime.Module.deserialize(compiler.engine, compiled), types, fuel, compiler
        )

    def deserialize_file(self, path: str, size: int, *, fuel: bool = False) -> WasmtimeModule:
        # The compiled code starts the file and the types follow it (see pack): wasmtime maps
        # the file as it is, without Python reading the code, and ignores what follows its image.
        try:
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise _compiled_code_error(str(exc)) from None
        try:
            types, _ = read_packed_types(descriptor, size)
        finally:
            os.close(descriptor)
        compiler = self.compiler(fuel)
        return self._loaded(
            lambda: wasmtime.Module.deserialize_file(compiler.engine, path), types, fuel, compiler
        )

    def _loaded(
        self,
        load: Callable[[], wasmtime.Module],
        types: ModuleTypes,
        fuel: bool,
        compiler: _Compiler,
    ) -> WasmtimeModule:
        try:
            module = load()
        except wasmtime.WasmtimeError as exc:
            raise _compiled_code_error(str(exc)) from None
        return WasmtimeModule(self, module, types, fuel, compiler)


def _compiled_code_error(message: str) -> ModuleError:
    return ModuleError(
        message=f"Invalid module: cannot load compiled code: {truncate(message, 300)}",
        suggestion="compile the module again from its source",
    )


@attrs.frozen
class _Compiler:
    """A wasmtime engine and the ticker that advances its epoch."""

    engine: wasmtime.Engine
    ticker: EpochTicker


_ENGINES: weakref.WeakSet[WasmtimeEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_ENGINES):
        engine.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _wasmtime_version() -> str:
    try:
        return version("wasmtime")
    except PackageNotFoundError:  # pragma: no cover - a vendored copy
        return "unknown"
