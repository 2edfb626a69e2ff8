"""The Wasmer engine (cranelift): fast calls, metered fuel and deadlines, objects bound to their
thread.

Wasmer-python's objects panic when touched from a thread other than the one that made them, so a
compiled module is kept in serialized form and loaded once per thread. Each module loaded in a
thread has a store of its own, which every object of its instances (and every module linked to
them) comes from: wasmer keeps a module's compiled code for as long as its store's engine lives,
so a store shared by a thread's modules would keep the code of every module the thread ever
loaded.
A wasmer call holds the GIL and cannot be interrupted from outside: fuel and timeouts come from
the module itself, rewritten by the sandbox's metering pass, which calls the meter linked here
(:mod:`wasm_plugins.engine._meter`) every time its fuel counter runs out.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast, final

import attrs
import wasmer
import wasmer_compiler_cranelift

from wasm_plugins.engine._meter import (
    FUEL_EXPORT,
    METER_FUNCTION,
    METER_MODULE,
    METER_SIGNATURE,
    Meter,
)
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
    ExternInfo,
    FuncSignature,
    HostImport,
    LinkedModule,
    MemoryImport,
    WasiSettings,
)
from wasm_plugins.engine._traps import (
    check_range,
    no_exported_function,
    truncate,
    validation_error,
    wasmer_trap,
    wat_error,
)
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    ExecutionError,
    InstanceError,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
)

__all__ = ["WasmerEngine"]

_TYPES = {
    wasmer.Type.I32: "i32",
    wasmer.Type.I64: "i64",
    wasmer.Type.F32: "f32",
    wasmer.Type.F64: "f64",
}
_TYPES_BACK = {name: value for value, name in _TYPES.items()}

_I32_SIGN = 1 << 31


def _to_i32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def _trap_from_message(message: str) -> ExecutionError:
    return wasmer_trap(message.removeprefix("RuntimeError: "))


class _ThreadAffinity:
    """Drops wasmer objects only in the thread that made them.

    PyO3 panics when an ``unsendable`` object (every wasmer object) is used or released by another
    thread, and a sandbox may well be closed or collected by a thread other than the one that
    called it. Objects released elsewhere are handed to their thread, which drops them the next
    time it enters the engine or when it ends; objects of a thread that has already ended are kept
    for the life of the process (releasing them anywhere would panic).

    Threads are told apart by a number given on first entry, never by ``threading.get_ident()``:
    the system reuses the identity of an ended thread for a new one, and PyO3 is not fooled.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graveyards: dict[int, list[object]] = {}
        self._alive: set[int] = set()
        self._kept: list[object] = []
        self._local = threading.local()
        self._numbers = itertools.count(1)

    def _current(self) -> int | None:
        number: int | None = getattr(self._local, "number", None)
        return number

    def enter(self) -> int:
        """Mark the calling thread as owning wasmer objects; drop what was handed back to it.

        :returns: the thread's number, to pass to :meth:`release` and :meth:`forget`.
        """
        number = self._current()
        if number is None:
            number = next(self._numbers)
            self._local.number = number
            self._local.modules = {}
            self._local.sentinel = _ThreadEnd(self, number)
            with self._lock:
                self._alive.add(number)
        if self._graveyards.get(number):
            with self._lock:
                released = self._graveyards.pop(number, None) or []
            modules = self._local.modules
            for item in released:
                if isinstance(item, _Forget):
                    modules.pop(item.token, None)
            del released
        return number

    def new_token(self) -> int:
        """A key for :meth:`thread_module` (never reused, unlike ``id()``)."""
        return next(self._numbers)

    def thread_module(self, token: int) -> Any:
        """This thread's module for ``token``, or None."""
        self.enter()
        return self._local.modules.get(token)

    def keep_thread_module(self, token: int, module: Any) -> None:
        """Keep a module for this thread; it is dropped with the thread or on :meth:`forget`."""
        self.enter()
        self._local.modules[token] = module

    def forget(self, owner: int, token: int) -> None:
        """Drop thread ``owner``'s module for ``token``, in that thread."""
        if owner == self._current():
            self._local.modules.pop(token, None)
            return
        with self._lock:
            if owner in self._alive:
                self._graveyards.setdefault(owner, []).append(_Forget(token))

    def release(self, owner: int, payload: object) -> None:
        """Release ``payload`` (made by thread ``owner``) safely from whatever thread runs this."""
        if owner == self._current():
            return
        with self._lock:
            if owner in self._alive:
                self._graveyards.setdefault(owner, []).append(payload)
            else:
                # One extra reference that is never given back: the objects must outlive even
                # interpreter shutdown, which would otherwise release them in the wrong thread.
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(payload))
                self._kept.append(payload)

    def after_fork_in_child(self) -> None:
        """A thread of the parent may have held the lock at the fork."""
        self._lock = threading.Lock()

    def thread_ended(self, number: int) -> None:
        with self._lock:
            self._alive.discard(number)
            released = self._graveyards.pop(number, None)
        del released

    @property
    def kept(self) -> int:
        """Objects held for good because their thread ended before they were released."""
        return len(self._kept)


@attrs.frozen
class _Forget:
    token: int


class _ThreadEnd:
    """Lives in a thread-local slot: CPython drops it in the thread itself when the thread ends."""

    def __init__(self, affinity: _ThreadAffinity, number: int) -> None:
        self._affinity = affinity
        self._number = number

    def __del__(self) -> None:
        self._affinity.thread_ended(self._number)


AFFINITY = _ThreadAffinity()

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _no_wasmer_objects_in_tracebacks(method: _Method) -> _Method:
    """Clear the locals of the frames an exception leaves behind.

    A traceback keeps every frame's locals alive, and an error may well be handled (and
    released) by another thread: a wasmer object among those locals would then panic.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise

    return cast(_Method, wrapper)


class _Memory:
    """Bounds-checked access through a memoryview of the wasmer memory's buffer.

    The view is rebuilt when the memory's size changed, because growing may move the memory.
    """

    def __init__(self) -> None:
        self._memory: wasmer.Memory | None = None
        self._view = memoryview(b"")
        self._size = -1

    def bind(self, memory: wasmer.Memory) -> None:
        self._memory = memory

    def detach(self) -> tuple[Any, memoryview]:
        """Give up the wasmer objects (for release in their own thread)."""
        held = (self._memory, self._view)
        self._memory = None
        self._view = memoryview(b"")
        self._size = -1
        return held

    def size(self) -> int:
        if self._memory is None:
            return 0
        size = int(self._memory.data_size)
        if size != self._size:
            self._view = memoryview(self._memory.buffer).cast("B")
            self._size = size
        return size

    def _check(self, ptr: int, length: int, direction: str) -> None:
        check_range(self._memory is not None, self.size, ptr, length, direction)

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length, "guest-to-host")
        return bytes(self._view[ptr : ptr + length])

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data), "host-to-guest")
        self._view[ptr : ptr + len(data)] = data

    def read_unchecked(self, ptr: int, length: int) -> bytes:
        """Copy a range already checked against :meth:`size` since the guest last ran (so the
        view is current)."""
        return self._view[ptr : ptr + length].tobytes()

    def write_unchecked(self, ptr: int, data: bytes) -> None:
        """Copy into a range already checked against :meth:`size` since the guest last ran."""
        self._view[ptr : ptr + len(data)] = data


@attrs.define
class _Export:
    name: str
    signature: FuncSignature
    index: int
    """Position in the instance's function list: the handle itself holds no wasmer object."""


class _Linked:
    """The instance of a linked module; its functions join the main instance's function list."""

    def __init__(self, instance: wasmer.Instance, functions: list[Any], types: ModuleTypes) -> None:
        self._instance = instance
        self._types = types
        self._exports = instance.exports
        self._functions = functions
        self.memory = _Memory()
        try:
            exported = self._exports.memory
        except LookupError:
            exported = None
        if isinstance(exported, wasmer.Memory):
            self.memory.bind(exported)

    def exported_functions(self, names: Sequence[str]) -> dict[str, Any]:
        return {name: getattr(self._exports, name) for name in names}

    def export_function(self, name: str) -> _Export:
        try:
            func = getattr(self._exports, name)
        except LookupError:
            func = None
        signature = self._types.signature(name)
        if not isinstance(func, wasmer.Function) or signature is None:
            raise no_exported_function(name)
        self._functions.append(func)
        return _Export(name, signature, len(self._functions) - 1)

    def detach(self) -> tuple[Any, ...]:
        held = (self._instance, self._exports, self.memory.detach())
        self._instance = self._exports = None
        return held


class _HostState:
    """What host trampolines share with their instance; holds no wasmer object (no cycles)."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None


class _Shape:
    """What every instance of a module needs to know about its exports, read once per module:
    the signature of each exported function, and whether it exports its memory."""

    __slots__ = ("exports_memory", "signatures")

    def __init__(self, types: ModuleTypes) -> None:
        self.signatures: dict[str, FuncSignature] = {}
        for item in types.exports:
            if item.kind == "func" and item.signature is not None:
                self.signatures.setdefault(item.name, item.signature)
        self.exports_memory = any(
            item.name == "memory" and item.kind == "memory" for item in types.exports
        )


class WasmerInstance:
    """One wasmer instance, bound to the thread that made it.

    Made by :meth:`WasmerModule.instantiate`, whose wrapper clears the frames of a failure
    (this constructor's among them).
    """

    def __init__(
        self,
        copy: _Copy,
        types: ModuleTypes,
        imports: Sequence[HostImport],
        memory_import: MemoryImport | None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
        meter: Meter | None = None,
        shape: _Shape | None = None,
    ) -> None:
        self._owner = AFFINITY.enter()
        self._types = types
        self._shape = shape = shape or _Shape(types)
        self.linked: _Linked | None = None
        self._state = _HostState()
        self._funcs: list[Any] = []
        self.memory = _Memory()
        self._meter = meter
        self._fuel: Any = None
        linking = (memory_import, wasi, linked, meter)
        if imports or any(part is not None for part in linking):
            imported_memory = self._instantiate_linked(
                copy, imports, memory_import, wasi, linked, meter
            )
        else:
            # Nothing to link: the common plugin (no host functions, no WASI, not metered).
            imported_memory = None
            try:
                self._instance = wasmer.Instance(copy.module)
            except RuntimeError as exc:
                raise _instantiation_error(str(exc)) from None
        self._exports = self._instance.exports
        if shape.exports_memory:
            self.memory.bind(self._exports.memory)
        elif imported_memory is not None:
            self.memory.bind(imported_memory)
        if meter is not None:
            self._fuel = getattr(self._exports, FUEL_EXPORT)
            meter.operation = "call"

    def _instantiate_linked(
        self,
        copy: _Copy,
        imports: Sequence[HostImport],
        memory_import: MemoryImport | None,
        wasi: WasiSettings | None,
        linked: LinkedModule | None,
        meter: Meter | None,
    ) -> wasmer.Memory | None:
        """Make the instance with its imports, all from the copy's store: host functions, the
        meter, a host-made memory (returned), WASI, a linked module's exports."""
        store, module = copy.store, copy.module
        imports = _with_meter(imports, meter)
        namespaces: dict[str, dict[str, Any]] = {}
        for host_import in imports:
            function_type = wasmer.FunctionType(
                [_TYPES_BACK[t] for t in host_import.signature.params],
                [_TYPES_BACK[t] for t in host_import.signature.results],
            )
            namespaces.setdefault(host_import.module, {})[host_import.name] = wasmer.Function(
                store, self._host_trampoline(host_import.function), function_type
            )
        imported_memory = None
        if memory_import is not None:
            imported_memory = wasmer.Memory(
                store,
                wasmer.MemoryType(
                    minimum=memory_import.minimum, maximum=memory_import.maximum, shared=False
                ),
            )
            namespaces.setdefault(memory_import.module, {})[memory_import.name] = imported_memory
        if wasi is not None:
            import_object = _wasi_environment(wasi).generate_import_object(
                store, wasmer.wasi.get_version(module, strict=False)
            )
        else:
            import_object = wasmer.ImportObject()
        for namespace, members in namespaces.items():
            import_object.register(namespace, members)
        try:
            if linked is not None:
                kept = cast(WasmerModule, linked.module)
                self.linked = _Linked(
                    wasmer.Instance(copy.linked_module(kept), import_object),
                    self._funcs,
                    kept._types,
                )
                names = [e.name for e in kept.exports if e.kind == "func"]
                members = {**namespaces.get(linked.namespace, {})}
                members.update(self.linked.exported_functions(names))
                import_object.register(linked.namespace, members)
                del members
            self._instance = wasmer.Instance(module, import_object)
        except RuntimeError as exc:
            self._reraise_host_exception()
            raise _instantiation_error(str(exc)) from None
        finally:
            del import_object, namespaces
        return imported_memory

    def _host_trampoline(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # The instance holds the trampoline (inside wasmer, where the garbage collector cannot
        # see): a strong reference back would make a cycle that is never collected.
        memory_ref = weakref.ref(self.memory)
        state = self._state

        def trampoline(*args: Any) -> Any:
            memory = memory_ref()
            try:
                if memory is None:
                    raise CommunicationError(
                        message="Host function called after its instance was released",
                        channel="guest-memory",
                        direction="guest-to-host",
                    )
                return function(memory, *args)
            except BaseException as exc:
                state.exception = exc
                raise

        return trampoline

    def _reraise_host_exception(self) -> None:
        exception = self._state.exception
        if exception is not None:
            self._state.exception = None
            try:
                raise exception
            finally:
                del exception

    def __del__(self) -> None:
        payload = (
            getattr(self, "_instance", None),
            getattr(self, "_exports", None),
            self._funcs,
            getattr(self, "_fuel", None),
            self.memory.detach(),
            self.linked.detach() if self.linked is not None else None,
        )
        self._funcs = []
        self._instance = self._exports = self._fuel = None
        AFFINITY.release(self._owner, payload)

    def export_function(self, name: str) -> _Export:
        # The module's own types say which exports are functions: no wasmer object is looked
        # up (nor left in this frame) for a name that is not one.
        signature = self._shape.signatures.get(name)
        if signature is None:
            raise no_exported_function(name)
        funcs = self._funcs
        funcs.append(getattr(self._exports, name))
        return _Export(name, signature, len(funcs) - 1)

    def call(self, function: ExportFunction, *args: int) -> Any:
        function = cast(_Export, function)
        self._state.exception = None
        try:
            converted = [
                _to_i32(a) if t == "i32" else a
                for a, t in zip(args, function.signature.params, strict=False)
            ]
            return self._funcs[function.index](*converted)
        except RuntimeError as exc:
            self._reraise_host_exception()
            raise _trap_from_message(str(exc)) from None
        except (OverflowError, TypeError) as exc:
            raise ExecutionError(message=f"Guest call failed: {exc}", trap="engine_error") from None

    def call_abi(self, function: ExportFunction, ptr: int, length: int) -> int:
        self._state.exception = None
        try:
            # (no typing.cast here: it is a call, and this is the hot path)
            result: int = self._funcs[function.index](  # type: ignore[attr-defined]
                ptr if 0 <= ptr < _I32_SIGN else _to_i32(ptr),
                length if 0 <= length < _I32_SIGN else _to_i32(length),
            )
            return result
        except RuntimeError as exc:
            self._reraise_host_exception()
            raise _trap_from_message(str(exc)) from None

    def call_unit(self, function: ExportFunction) -> int:
        self._state.exception = None
        try:
            result: int = self._funcs[function.index]()  # type: ignore[attr-defined]
            return result
        except RuntimeError as exc:
            self._reraise_host_exception()
            raise _trap_from_message(str(exc)) from None

    def read_global(self, name: str) -> int | None:
        try:
            value = getattr(self._exports, name)
        except LookupError:
            return None
        if not isinstance(value, wasmer.Global):
            return None
        result = value.value
        return result if isinstance(result, int) else None

    def write_global(self, name: str, value: int) -> None:
        try:
            target = getattr(self._exports, name)
        except LookupError:
            return
        if isinstance(target, wasmer.Global):
            target.value = value

    def arm(self) -> None:
        """A new budget for a metered module: the meter's reserve and deadline start again, and
        the guest's counter gets its first share (nothing to arm for a module not metered)."""
        meter = self._meter
        if meter is None:
            return
        if meter.fuel is None:
            # A deadline alone: the meter's clock starts again, and the counter keeps what is
            # left of its last share (at most one share, as a fresh one would be) until the
            # guest comes back to the meter, which then reads the clock. Writing the global
            # costs a fifth of a small call.
            meter.arm(handing=False)
            return
        self._fuel.value = meter.arm()

    def watch(self, cancelled: threading.Event | None) -> bool:
        """Stop this instance's calls when ``cancelled`` is set: only a metered module can be
        (wasmer 1.1 has no way to interrupt a guest from another thread), at the guest's next
        visit to its meter, which comes about every millisecond while watched."""
        meter = self._meter
        if meter is None:
            return False
        fuel = self._fuel
        counter = meter.watch(cancelled, None if fuel is None else int(fuel.value))
        if counter is not None and fuel is not None:
            fuel.value = counter
        return True

    def fuel_consumed(self) -> int | None:
        meter = self._meter
        if meter is None or meter.fuel is None:
            return None
        return meter.consumed(None if self._fuel is None else int(self._fuel.value))


def _with_meter(imports: Sequence[HostImport], meter: Meter | None) -> Sequence[HostImport]:
    """The host imports, and the meter a metered module calls (armed for its start function: the
    counter starts at 0, so the first charge asks the meter for the budget's fuel)."""
    if meter is None:
        return imports
    meter.arm(handing=False)
    return (*imports, HostImport(METER_MODULE, METER_FUNCTION, METER_SIGNATURE, meter.refill))


def _wasi_environment(settings: WasiSettings) -> Any:
    # The sandbox refuses read-only directories and captured output on wasmer before this point:
    # wasmer 1.1 offers neither.
    builder = wasmer.wasi.StateBuilder(settings.arguments[0] if settings.arguments else "plugin")
    for argument in settings.arguments[1:]:
        builder.argument(argument)
    for name, value in settings.environment:
        builder.environment(name, value)
    for directory in settings.directories:
        builder.map_directory(directory.guest_path, directory.host_path)
    return builder.finalize()


def _instantiation_error(message: str) -> PluginError:
    if message.startswith("RuntimeError: "):
        trap = _trap_from_message(message)
        return InstanceError(
            state="instantiating",
            message=f"Instance failed while instantiating: {trap.message}",
            suggestion="the module's start function trapped; see the cause",
        )
    if "memory" in message.lower() and ("maximum" in message or "minimum" in message):
        return ResourceLimitExceeded(
            resource="memory",
            message=f"Resource limit exceeded: memory - {truncate(message, 200)}",
        )
    return InstanceError(
        state="linking",
        message=f"Instance failed while linking: {truncate(message, 300)}",
        suggestion="the module imports something the host does not provide",
    )


@final
class _Copy:
    """A module loaded in one thread, in a store of its own, with the modules linked to its
    instances loaded in that same store (wasmer numbers function signatures per engine, and an
    instance's objects must all share one)."""

    __slots__ = ("linked", "module", "store")

    def __init__(self, module: wasmer.Module, store: wasmer.Store) -> None:
        self.module = module
        self.store = store
        self.linked: dict[int, wasmer.Module] = {}

    def linked_module(self, linked: WasmerModule) -> wasmer.Module:
        """``linked``, loaded in this copy's store (once)."""
        module = self.linked.get(linked._token)
        if module is None:
            module = self.linked[linked._token] = wasmer.Module.deserialize(
                self.store, linked._serialized
            )
        return module


class WasmerModule:
    """A module compiled by wasmer, kept serialized and loaded once per thread."""

    def __init__(
        self,
        engine: WasmerEngine,
        module: wasmer.Module,
        types: ModuleTypes,
        serialized: bytes | None = None,
        *,
        store: wasmer.Store,
        metered: bool = False,
    ) -> None:
        self.engine = engine
        self._types = types
        self._serialized = serialized if serialized is not None else bytes(module.serialize())
        self._token = AFFINITY.new_token()
        self._owners = {AFFINITY.enter()}
        AFFINITY.keep_thread_module(self._token, _Copy(module, store))
        self.metered = metered
        self.exports, self.imports = _visible(types) if metered else (types.exports, types.imports)

    _shape: _Shape | None = None
    """What its instances need to know about its exports (made by the first instance)."""

    def _thread_copy(self) -> _Copy:
        copy: _Copy | None = AFFINITY.thread_module(self._token)
        if copy is None:
            store = self.engine.new_store()
            copy = _Copy(wasmer.Module.deserialize(store, self._serialized), store)
            AFFINITY.keep_thread_module(self._token, copy)
            self._owners.add(AFFINITY.enter())
        return copy

    def __del__(self) -> None:
        for owner in getattr(self, "_owners", ()):
            AFFINITY.forget(owner, self._token)

    def serialize(self) -> bytes:
        return pack(self._types, self._serialized)

    @_no_wasmer_objects_in_tracebacks
    def instantiate(
        self,
        imports: Sequence[HostImport],
        budget: CallBudget,
        memory_import: MemoryImport | None = None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
    ) -> WasmerInstance:
        limited = budget.timeout is not None or budget.fuel is not None
        if limited and not self.metered:
            raise _unenforceable("timeout" if budget.timeout is not None else "fuel")
        shape = self._shape
        if shape is None:
            shape = self._shape = _Shape(self._types)
        return WasmerInstance(
            self._thread_copy(),
            self._types,
            imports,
            memory_import,
            wasi,
            linked,
            Meter(budget) if self.metered else None,
            shape,
        )


class _CompilerThreads:
    """Whether cranelift's compiler threads ran in this process, and whether a fork lost them.

    Wasmer compiles on a process-wide thread pool that starts with the first compilation. A
    forked child inherits the pool's bookkeeping but not its threads, so a compilation there
    waits for ever; loading compiled code (from the module cache, or a module compiled before
    the fork) needs no compiler and still works.
    """

    def __init__(self) -> None:
        self.used = False
        self.lost = False

    def after_fork_in_child(self) -> None:
        self.lost = self.used
        AFFINITY.after_fork_in_child()


_COMPILER = _CompilerThreads()
_READ_BINARY = os.O_RDONLY | getattr(os, "O_BINARY", 0)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_COMPILER.after_fork_in_child)


def _forked_compiler() -> ConfigurationError:
    return ConfigurationError(
        field="engine",
        message=(
            "Invalid configuration: engine - wasmer cannot compile in a process forked after it "
            "compiled (its compiler threads stayed in the parent): modules compiled before the "
            "fork, or loaded from the module cache, still run here"
        ),
        suggestion=(
            "create the host after the fork in a process that has not compiled (multiprocessing "
            "'spawn' or 'forkserver'), load every plugin before forking, or use "
            "engine='wasmtime'"
        ),
    )


def _unenforceable(limit: str) -> ConfigurationError:
    return ConfigurationError(
        field=f"limits.{limit}",
        message=(
            f"Invalid configuration: limits.{limit} - the wasmer engine enforces a {limit} "
            "only in a module rewritten by the metering pass, and this one was not"
        ),
        suggestion=(
            "load the module through a Sandbox (which meters it when a fuel or timeout limit "
            "is set), or compile wasm_plugins.sandbox.meter_module(wasm) with fuel=True"
        ),
    )


_VISIBLE: dict[int, tuple[ModuleTypes, tuple[ExternInfo, ...], tuple[ExternInfo, ...]]] = {}


def _visible(types: ModuleTypes) -> tuple[tuple[ExternInfo, ...], tuple[ExternInfo, ...]]:
    """A metered module's exports and imports without its fuel counter and meter (linked by
    the engine, never by the sandbox); the same tuples for the same types, as the sandbox keys
    the links it keeps on them."""
    known = _VISIBLE.get(id(types))
    if known is not None and known[0] is types:
        return known[1], known[2]
    exports = tuple(item for item in types.exports if item.name != FUEL_EXPORT)
    imports = tuple(item for item in types.imports if item.module != METER_MODULE)
    if len(_VISIBLE) >= 64:
        _VISIBLE.clear()
    _VISIBLE[id(types)] = (types, exports, imports)
    return exports, imports


def _check_metered(types: ModuleTypes) -> None:
    metered = any(
        item.module == METER_MODULE and item.name == METER_FUNCTION for item in types.imports
    ) and any(item.name == FUEL_EXPORT and item.kind == "global" for item in types.exports)
    if not metered:
        raise _unenforceable("fuel")


class WasmerEngine:
    """Adapter for wasmer 1.1 with the cranelift compiler."""

    name = "wasmer"
    features = EngineFeatures(
        timeout=True,
        fuel=True,
        store_memory_limit=False,
        wasi=True,
        wasi_confined_directories=False,
        wasi_read_only_preopens=False,
        wasi_captured_output=False,
        thread_bound=True,
        call_depth_by_instrumentation=True,
        metering_by_instrumentation=True,
    )

    def __init__(self) -> None:
        self.version = str(wasmer.__version__)
        self._per_thread = threading.local()

    def store(self) -> wasmer.Store:
        """This thread's store, for what keeps no compiled code (validation)."""
        store: wasmer.Store | None = getattr(self._per_thread, "store", None)
        if store is None:
            store = self._per_thread.store = self.new_store()
        return store

    @staticmethod
    def new_store() -> wasmer.Store:
        """A store of its own for one module in one thread (see the module's docstring)."""
        return wasmer.Store(wasmer.engine.Universal(wasmer_compiler_cranelift.Compiler))

    def wat_to_wasm(self, text: str) -> bytes:
        try:
            return bytes(wasmer.wat2wasm(text))
        except RuntimeError as exc:
            raise wat_error(str(exc)) from None

    @_no_wasmer_objects_in_tracebacks
    def validate(self, wasm: bytes) -> None:
        if not wasm.startswith(b"\0asm"):
            # wasmer would read these bytes as WAT text.
            raise validation_error("magic header not detected: bad magic number", default_offset=0)
        if wasmer.Module.validate(self.store(), wasm):
            return
        try:
            wasmer.Module(self.new_store(), wasm)
        except RuntimeError as exc:
            raise validation_error(str(exc)) from None
        raise validation_error("the module does not validate")

    @_no_wasmer_objects_in_tracebacks
    def compile(self, wasm: bytes, *, fuel: bool = False) -> WasmerModule:
        """Compile a module; with ``fuel``, one the sandbox's metering pass rewrote (fuel and
        timeouts are then enforced; see :class:`EngineFeatures`)."""
        if _COMPILER.lost:
            raise _forked_compiler()
        if not wasm.startswith(b"\0asm"):
            self.validate(wasm)  # wasmer would read these bytes as WAT text
        _COMPILER.used = True
        types = read_module_types(wasm)
        if fuel:
            _check_metered(types)
        store = self.new_store()
        try:
            module = wasmer.Module(store, wasm)
        except RuntimeError as exc:
            raise validation_error(str(exc)) from None
        return WasmerModule(self, module, types, store=store, metered=fuel)

    @_no_wasmer_objects_in_tracebacks
    def deserialize(self, data: bytes, *, fuel: bool = False) -> WasmerModule:
        types, compiled = unpack(data)
        return self._loaded(bytes(compiled), types, fuel)

    def deserialize_file(self, path: str, size: int, *, fuel: bool = False) -> WasmerModule:
        # wasmer 1.1's Python API loads compiled code from bytes only: the code is read in one
        # read of its exact size (the types that follow it are read on their own).
        try:
            descriptor = os.open(path, _READ_BINARY)
        except OSError as exc:
            raise _compiled_code_error(str(exc)) from None
        try:
            types, code_size = read_packed_types(descriptor, size)
            compiled = os.pread(descriptor, code_size, 0)
        except OSError as exc:
            raise _compiled_code_error(str(exc)) from None
        finally:
            os.close(descriptor)
        if len(compiled) != code_size:
            raise _compiled_code_error("the file is shorter than its compiled code")
        return self._loaded(compiled, types, fuel)

    @_no_wasmer_objects_in_tracebacks
    def _loaded(self, compiled: bytes, types: ModuleTypes, fuel: bool) -> WasmerModule:
        if fuel:
            _check_metered(types)
        store = self.new_store()
        try:
            module = wasmer.Module.deserialize(store, compiled)
        except RuntimeError as exc:
            raise _compiled_code_error(str(exc)) from None
        return WasmerModule(self, module, types, serialized=compiled, store=store, metered=fuel)


def _compiled_code_error(message: str) -> ModuleError:
    return ModuleError(
        message=f"Invalid module: cannot load compiled code: {truncate(message, 300)}",
        suggestion="compile the module again from its source",
    )
