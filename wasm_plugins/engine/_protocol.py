"""The engine contract: what the sandbox needs from a WebAssembly engine, and the records it uses.

An engine adapter turns everything its engine raises into a typed error from
:mod:`wasm_plugins.errors`; no layer above it looks at an engine's messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

__all__ = [
    "CallBudget",
    "Engine",
    "EngineFeatures",
    "EngineInstance",
    "EngineModule",
    "ExportFunction",
    "ExternInfo",
    "FuncSignature",
    "GuestMemory",
    "HostImport",
    "LinkedModule",
    "MemoryImport",
    "WasiDirectory",
    "WasiSettings",
]


@attrs.frozen
class FuncSignature:
    """A function type, with value types spelt as in WAT: ``i32``, ``i64``, ``f32``, ``f64``."""

    params: tuple[str, ...] = ()
    results: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@attrs.frozen
class ExternInfo:
    """One import or export of a module."""

    name: str
    kind: str
    """``func``, ``memory``, ``global``, ``table`` or ``tag``."""
    module: str | None = None
    """The import module (imports only)."""
    signature: FuncSignature | None = None
    """The type of a function."""
    minimum: int | None = None
    """Initial pages of a memory."""
    maximum: int | None = None
    """Maximum pages of a memory, if declared."""


@attrs.frozen
class EngineFeatures:
    """What an engine can enforce inside this process."""

    timeout: bool
    fuel: bool
    store_memory_limit: bool
    wasi: bool
    wasi_confined_directories: bool
    """Preopened directories cannot be escaped (``..``, absolute paths, symlinks)."""
    wasi_read_only_preopens: bool
    wasi_captured_output: bool
    thread_bound: bool
    """Objects may only be used by the thread that made them."""
    multi_memory: bool = False
    """Modules with more than one linear memory run."""
    call_depth_by_instrumentation: bool = False
    """The engine's own stack guard is costly (it lets a guest fill the native stack, then
    describes every frame): the sandbox bounds the call depth in the module instead."""
    metering_by_instrumentation: bool = False
    """Fuel and timeouts are enforced by metering instrumentation rather than by the engine:
    the sandbox's metering pass rewrites the module, which is then compiled with ``fuel=True``
    (whether the budget has fuel, a timeout or both, unless ``metering_timeouts`` is False); the
    engine links the meter itself."""
    metering_timeouts: bool = True
    """With ``metering_by_instrumentation``: timeouts are enforced by the metered module too (the
    guest visits the meter about every millisecond). False for an engine that stops a guest at
    its deadline itself (``wasmer-sdk`` kills its process): only fuel needs a metered module
    there, and the meter is armed with the fuel alone."""
    max_call_depth: int | None = None
    """With ``call_depth_by_instrumentation``: the bound to use when the engine's native stack
    holds fewer frames than the sandbox's default bound (``None``: the default)."""


@attrs.frozen
class CallBudget:
    """Limits an engine applies to every call into one instance (and to its instantiation)."""

    fuel: int | None = None
    timeout: float | None = None
    memory_bytes: int | None = None


class GuestMemory(Protocol):
    """Bounds-checked access to an instance's linear memory."""

    def size(self) -> int:
        """The current size in bytes."""

    def read(self, ptr: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``ptr``.

        :raises CommunicationError: when the range is not inside the memory.
        """

    def write(self, ptr: int, data: bytes) -> None:
        """Copy ``data`` to ``ptr``.

        :raises CommunicationError: when the range is not inside the memory.
        """


HostCallable = Callable[..., Any]


@attrs.frozen
class HostImport:
    """A host function offered to the guest under ``module.name``.

    ``function`` receives the instance's :class:`GuestMemory` first, then the guest's arguments,
    and returns ``None`` (no result) or one number. An exception it raises stops the guest and
    is raised from the call that entered the guest.
    """

    module: str
    name: str
    signature: FuncSignature
    function: HostCallable


@attrs.frozen
class WasiDirectory:
    """A host directory the guest sees at ``guest_path``."""

    host_path: str
    guest_path: str
    read_only: bool = True


@attrs.frozen
class WasiSettings:
    """WASI preview1 for one instance: directories, environment, arguments, output."""

    directories: tuple[WasiDirectory, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    output: Callable[[str, bytes], None] | None = None
    """Receives ``("stdout" | "stderr", data)``; ``None`` discards the guest's output."""


@attrs.frozen
class MemoryImport:
    """A linear memory the host creates for a module that imports one."""

    module: str
    name: str
    minimum: int
    maximum: int | None


@attrs.frozen
class LinkedModule:
    """A module instantiated just before the main one, in the same store and under the same
    budget, whose exports satisfy the main module's imports from ``namespace``.

    Guest-to-guest calls between the two stay inside the engine (no trip through Python): an
    ABI kernel written in WebAssembly is linked this way. Its own imports are among the host
    imports given to :meth:`EngineModule.instantiate`.
    """

    module: EngineModule
    namespace: str


class LinkedInstance(Protocol):
    """The instance of a :class:`LinkedModule`; its functions are called through the main
    instance (they share its store and budget)."""

    @property
    def memory(self) -> GuestMemory:
        """The linked instance's own linear memory."""

    def export_function(self, name: str) -> ExportFunction:
        """Look up an exported function of the linked instance.

        :raises ModuleError: when there is no exported function of that name.
        """


class ExportFunction(Protocol):
    """A handle on an exported function of one instance, looked up once."""

    @property
    def name(self) -> str:
        """The export's name."""

    @property
    def signature(self) -> FuncSignature:
        """The function's type."""


class EngineInstance(Protocol):
    """One instantiated module, used by the thread that made it."""

    @property
    def memory(self) -> GuestMemory:
        """The instance's linear memory (exported, or imported from the host)."""

    def export_function(self, name: str) -> ExportFunction:
        """Look up an exported function.

        :raises ModuleError: when there is no exported function of that name.
        """

    def arm(self) -> None:
        """Start a new budget: the fuel and the deadline of :class:`CallBudget`, shared by every
        guest entry (:meth:`call`, :meth:`call_abi`) until the next ``arm``.

        Instantiation arms the first budget, which the start function uses.
        """

    def watch(self, cancelled: threading.Event | None) -> bool:
        """Stop this instance's calls when ``cancelled`` is set by another thread, from the next
        :meth:`arm` on (None: stop watching). The stopped call raises ``CallCancelled``.

        :returns: False when the engine cannot stop a running guest (the call then runs until
            its own limits stop it).
        """

    def call(self, function: ExportFunction, *args: int) -> Any:
        """Call an export with integer arguments under the current budget (see :meth:`arm`).

        :raises ExecutionError: on a trap.
        :raises DeadlineExceeded: when the budget's timeout passed.
        :raises ResourceLimitExceeded: when the budget's fuel ran out.
        """

    def call_abi(self, function: ExportFunction, ptr: int, length: int) -> int:
        """The guest ABI's fast path: call an ``(i32, i32) -> i64`` export.

        Same errors as :meth:`call`.
        """

    def call_unit(self, function: ExportFunction) -> int:
        """The fast path for a ``() -> i32`` export (the entry points of Extism's ABI).

        Same errors as :meth:`call`.
        """

    @property
    def linked(self) -> LinkedInstance | None:
        """The instance of the :class:`LinkedModule` given at instantiation, if any."""

    def read_global(self, name: str) -> int | None:
        """The value of an exported integer global, or ``None`` when there is none."""

    def write_global(self, name: str, value: int) -> None:
        """Set an exported mutable integer global."""

    def fuel_consumed(self) -> int | None:
        """Fuel used since the budget was last armed, where the engine meters fuel."""


class EngineModule(Protocol):
    """A compiled module, usable from any thread."""

    @property
    def engine(self) -> Engine:
        """The engine that compiled it."""

    @property
    def exports(self) -> tuple[ExternInfo, ...]:
        """What the module exports."""

    @property
    def imports(self) -> tuple[ExternInfo, ...]:
        """What the module imports."""

    def serialize(self) -> bytes:
        """The compiled code, to be loaded again with :meth:`Engine.deserialize`."""

    def instantiate(
        self,
        imports: Sequence[HostImport],
        budget: CallBudget,
        memory_import: MemoryImport | None = None,
        wasi: WasiSettings | None = None,
        linked: LinkedModule | None = None,
    ) -> EngineInstance:
        """Make an instance for the calling thread; the start function runs under ``budget``.

        ``wasi`` links WASI preview1 (only when the module imports it and the capability is
        granted; the sandbox checks what the engine can confine before it gets here).
        ``linked`` is instantiated first, from the same engine, and serves the imports of its
        namespace.

        :raises InstanceError: when the start function traps or linking fails.
        :raises DeadlineExceeded: when the start function runs past the timeout.
        :raises ResourceLimitExceeded: when it runs out of fuel or memory.
        """


class Engine(Protocol):
    """A WebAssembly engine adapter."""

    name: str
    version: str
    features: EngineFeatures

    def wat_to_wasm(self, text: str) -> bytes:
        """Compile WAT text to a binary module.

        :raises CompilationError: with diagnostics carrying line and column.
        """

    def validate(self, wasm: bytes) -> None:
        """Check that bytes are a valid module.

        :raises ModuleError: with the offset of the first problem.
        """

    def compile(self, wasm: bytes, *, fuel: bool = False) -> EngineModule:
        """Compile a validated binary module; ``fuel`` asks for fuel metering.

        :raises ModuleError: when the engine refuses the module.
        """

    def deserialize(self, data: bytes, *, fuel: bool = False) -> EngineModule:
        """Load a module from :meth:`EngineModule.serialize` output made by this engine version.

        :raises ModuleError: when the data is not usable.
        """

    def deserialize_file(self, path: str, size: int, *, fuel: bool = False) -> EngineModule:
        """Load a module from a file whose first ``size`` bytes are :meth:`EngineModule.serialize`
        output (what follows is ignored).

        :raises ModuleError: when the data is not usable.
        """
