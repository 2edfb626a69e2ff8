"""The Sandbox: one module on one engine, under limits and capabilities, callable from any thread.

Loading does all the checking once: the source is compiled (WAT) or read, validated by the engine,
rewritten so that its memory cannot grow past the limit, compiled, checked against the guest ABI,
and its imports linked against the granted capabilities. Each thread then gets its own instance
(wasmer objects are bound to the thread that made them); an instance that trapped, timed out or ran
out of fuel is dropped and the next call in that thread gets a fresh one.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from loguru import logger

from wasm_plugins.engine import CallBudget, Engine, EngineModule, WasiSettings, get_engine
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    InstanceError,
    ModuleError,
    PluginError,
    ResourceLimitExceeded,
    ValidationIssue,
)
from wasm_plugins.sandbox._abi import (
    Session,
    abi_host_functions,
    check_module,
    plugin_functions,
)
from wasm_plugins.sandbox._binary import (
    PAGE_SIZE,
    PreparedModule,
    WasmBinaryError,
    prepare_module,
    read_memories,
)
from wasm_plugins.sandbox._codec import Codec, get_codec
from wasm_plugins.sandbox._host_functions import HostFunction, LinkPlan, link_imports
from wasm_plugins.sandbox._limits import Limits

if TYPE_CHECKING:
    from wasm_plugins.cache import ModuleCache

__all__ = ["ModuleSource", "Sandbox", "load_module_bytes"]

ModuleSource = bytes | bytearray | memoryview | str | os.PathLike[str]
"""Binary module bytes, WAT text, or the path of a ``.wasm`` or ``.wat`` file."""

WASI_MODULE = "wasi_snapshot_preview1"
_MAGIC = b"\0asm"


def load_module_bytes(source: ModuleSource, engine: Engine) -> bytes:
    """Binary module bytes from any :data:`ModuleSource`; WAT is compiled.

    :raises CompilationError: for WAT that does not compile.
    :raises ModuleError: for bytes that are not a module.
    :raises ConfigurationError: for a path that cannot be read.
    """
    if isinstance(source, os.PathLike):
        path = Path(source)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                field="module",
                message=f"Invalid configuration: module - cannot read {path}: {exc.strerror}",
                suggestion="give the path of an existing .wasm or .wat file",
            ) from None
        if raw.startswith(_MAGIC):
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_a_module(
                0, "the file is neither a WebAssembly binary nor UTF-8 WAT text"
            ) from None
        return engine.wat_to_wasm(text)
    if isinstance(source, str):
        return engine.wat_to_wasm(source)
    data = bytes(source)
    if not data.startswith(_MAGIC):
        raise _not_a_module(0, "magic header not detected: the bytes do not start with \\0asm")
    return data


def _not_a_module(offset: int, message: str) -> ModuleError:
    return ModuleError(
        validation_errors=(ValidationIssue(message=message, offset=offset),),
        suggestion="pass a WebAssembly binary (.wasm) or WAT text",
    )


class _ThreadState:
    """One thread's instance and ABI session."""

    def __init__(self, session: Session) -> None:
        self.session = session


class Sandbox:
    """One module, its limits and capabilities, on one engine.

    >>> sandbox = Sandbox(Path("hostapi/examples/echo.wat"))  # doctest: +SKIP
    >>> sandbox.call("echo", {"hello": "world"})  # doctest: +SKIP
    {'hello': 'world'}

    :param source: module bytes, WAT text, or a path to a ``.wasm`` / ``.wat`` file.
    :param engine: an engine name (``auto``, ``wasmer``, ``wasmtime``) or an engine object.
    :param limits: memory, fuel, timeout, input and output sizes.
    :param capabilities: capabilities granted to the module (deny by default).
    :param host_functions: host functions offered besides the ABI's own.
    :param codec: ``json`` (default) or ``raw``.
    :param functions: plugin functions the module must export (checked at load).
    :param name: the plugin's name, used in errors and logs.
    :param services: handed to host functions (``HostCall.services``): the host's clock, stores...
    :param wasi: WASI preview1 settings, used when the ``wasi`` capability is granted.
    :param cache: a :class:`~wasm_plugins.cache.ModuleCache` to load the compiled module from
        and store it in (``None``: compile every time). A host passes its own.
    :param refresh_cache: compile even when the cache has the module, and replace its entry.
    :raises PluginError: a typed error when anything about the module or the settings is wrong.
    """

    _keeps_serialized = False
    """Whether to keep the compiled code in serialized form (to ship it to worker processes)."""

    def __init__(
        self,
        source: ModuleSource,
        *,
        engine: str | Engine | None = "auto",
        limits: Limits | None = None,
        capabilities: Iterable[str] = (),
        host_functions: Sequence[HostFunction] = (),
        codec: str = "json",
        functions: Sequence[str] | None = None,
        name: str | None = None,
        services: Any = None,
        wasi: WasiSettings | None = None,
        cache: ModuleCache | None = None,
        refresh_cache: bool = False,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self._cache = cache
        self._refresh_cache = refresh_cache
        self._serialized: bytes | None = None
        self.compiled_from_cache = False
        """Whether the compiled module was loaded from the cache rather than compiled."""
        self.name = name or "sandbox"
        self.limits = limits or Limits()
        self.capabilities = frozenset(capabilities)
        self.codec: Codec = get_codec(codec)
        self.services = services
        self._wasi_settings = wasi
        self._wasi: WasiSettings | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        # Weak: a thread's state lives in its thread-local slot, so that it is released with the
        # thread (engines such as wasmer must release objects in the thread that made them).
        self._states: weakref.WeakSet[_ThreadState] = weakref.WeakSet()
        self._closed = False
        try:
            self.engine: Engine = (
                engine if not isinstance(engine, str | None) else get_engine(engine)
            )
            self._check_enforceable()
            wasm = load_module_bytes(source, self.engine)
            self.engine.validate(wasm)
            self._prepared = self._prepare(wasm)
            self._module = self._compile(wasm)
            check_module(self._module.exports, self._module.imports, functions, plugin=self.name)
            self._link = link_imports(
                self._module.imports,
                (*abi_host_functions(), *host_functions),
                self.capabilities,
                plugin=self.name,
                memory_limit_pages=self._limit_pages(),
                gated_modules={WASI_MODULE: "wasi"},
            )
            self.functions = (
                tuple(functions) if functions else plugin_functions(self._module.exports)
            )
            self._wasi = self._wasi_for_module()
            self._state()
        except PluginError as error:
            raise self._annotate(error, None, None) from error.__cause__
        except Exception as exc:
            raise self._annotate(_host_failure(exc), None, None) from exc

    # -- loading ------------------------------------------------------------------------------

    def _check_enforceable(self) -> None:
        features = self.engine.features
        for limit, supported in (("timeout", features.timeout), ("fuel", features.fuel)):
            if getattr(self.limits, limit) is not None and not supported:
                raise ConfigurationError(
                    field=f"limits.{limit}",
                    message=(
                        f"Invalid configuration: limits.{limit} - the {self.engine.name} engine "
                        f"cannot enforce a {limit} inside this process"
                    ),
                    suggestion=(
                        f"use engine='wasmtime', which enforces {limit} in-process, or drop "
                        f"the {limit} limit (worker-process isolation enforces it on "
                        f"{self.engine.name})"
                    ),
                )

    def _wasi_for_module(self) -> WasiSettings | None:
        """The WASI settings to link, checked against what the engine can confine."""
        if not any(item.module == WASI_MODULE for item in self._module.imports):
            return None
        settings = self._wasi_settings or WasiSettings()
        features = self.engine.features
        if not features.wasi:
            raise self._wasi_unsupported("wasi", "WASI")
        if settings.directories and not features.wasi_confined_directories:
            # wasmer 1.1 lets a guest open absolute paths and follow symlinks out of a preopened
            # directory (checked in tests/test_host_functions.py): no directory is safe there.
            raise self._wasi_unsupported("wasi.preopens", "confined directories")
        if not features.wasi_read_only_preopens and any(
            directory.read_only for directory in settings.directories
        ):
            raise self._wasi_unsupported("wasi.preopens.read_only", "read-only directories")
        if not features.wasi_captured_output and settings.output is not None:
            raise self._wasi_unsupported("wasi.capture_output", "capturing the guest's output")
        directories = []
        for directory in settings.directories:
            host_path = Path(directory.host_path)
            if not host_path.is_dir():
                raise ConfigurationError(
                    field="wasi.preopens",
                    message=(
                        f"Invalid configuration: wasi.preopens - {host_path} is not a directory"
                    ),
                    suggestion="give the path of an existing directory",
                )
            directories.append(attrs.evolve(directory, host_path=str(host_path.resolve())))
        return attrs.evolve(settings, directories=tuple(directories))

    def _wasi_unsupported(self, field: str, what: str) -> ConfigurationError:
        return ConfigurationError(
            field=field,
            message=(
                f"Invalid configuration: {field} - the {self.engine.name} engine cannot enforce "
                f"{what}"
            ),
            suggestion="use engine='wasmtime', which confines WASI with read-only directories "
            "and captures output",
        )

    def _limit_pages(self) -> int | None:
        return None if self.limits.memory is None else self.limits.memory // PAGE_SIZE

    def _prepare(self, wasm: bytes) -> PreparedModule:
        try:
            memories = read_memories(wasm)
            limit = self.limits.memory
            for memory in memories:
                if limit is not None and memory.initial_bytes > limit:
                    raise ResourceLimitExceeded(
                        resource="memory",
                        used=memory.initial_bytes,
                        limit=limit,
                        suggestion=(
                            "the module's initial memory is larger than limits.memory: raise the "
                            "limit or link the module with a smaller initial memory"
                        ),
                    )
            return prepare_module(wasm, memory_limit_bytes=limit)
        except WasmBinaryError as exc:
            raise ModuleError(
                validation_errors=(ValidationIssue(message=exc.message, offset=exc.offset),),
                suggestion="rebuild the module; its binary layout could not be read",
            ) from None

    def _compile_prepared(self, fuel: bool) -> EngineModule:
        """Compile the prepared module, through the cache when there is one."""
        if self._cache is None:
            return self.engine.compile(self._prepared.wasm, fuel=fuel)
        compiled = self._cache.compile(
            self.engine, self._prepared.wasm, fuel=fuel, refresh=self._refresh_cache
        )
        if self._keeps_serialized:
            self._serialized = compiled.serialized
        self.compiled_from_cache = compiled.hit
        return compiled.module

    def _compile(self, original: bytes) -> EngineModule:
        fuel = self.limits.fuel is not None
        try:
            return self._compile_prepared(fuel)
        except ModuleError:
            if self._prepared.grow_probe is None:
                raise
        # The engine validated the original, so the grow instrumentation is at fault: the memory
        # limit still holds without it, only the report of a refused grow is less precise.
        logger.bind(plugin=self.name).warning(
            "memory.grow instrumentation refused by the engine; continuing without it"
        )
        self._prepared = prepare_module(
            original, memory_limit_bytes=self.limits.memory, instrument_grow=False
        )
        return self._compile_prepared(fuel)

    @property
    def module(self) -> EngineModule:
        """The compiled module (exports, imports, serialisation)."""
        return self._module

    @property
    def link_plan(self) -> LinkPlan:
        """How the module's imports are satisfied."""
        return self._link

    # -- instances ----------------------------------------------------------------------------

    def _budget(self) -> CallBudget:
        return CallBudget(
            fuel=self.limits.fuel, timeout=self.limits.timeout, memory_bytes=self.limits.memory
        )

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        if self._closed:
            raise InstanceError(
                state="closed",
                message="Instance failed: the sandbox is closed",
                suggestion="create a new Sandbox",
            )
        session = Session()
        instance = self._module.instantiate(
            self._link.host_imports(self.name, session, self.services),
            self._budget(),
            self._link.memory,
            self._wasi,
        )
        session.attach(instance)
        state = _ThreadState(session)
        self._local.state = state
        with self._lock:
            self._states.add(state)
        return state

    def _discard(self, state: _ThreadState) -> None:
        self._local.state = None
        with self._lock:
            self._states.discard(state)

    @property
    def instances(self) -> int:
        """Live instances (one per thread that called, until that thread ends or a trap)."""
        with self._lock:
            return len(self._states)

    def close(self) -> None:
        """Drop every instance; later calls fail with an InstanceError."""
        with self._lock:
            self._closed = True
            self._states.clear()
        self._local = threading.local()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------

    def call(self, function: str, input: Any = None) -> Any:
        """Call a plugin function with a value encoded by the codec; return the decoded result.

        :raises PluginError: a typed error for every failure; the sandbox stays usable.
        """
        codec = self.codec
        try:
            data = codec.encode(input)
        except PluginError as error:
            raise self._annotate(error, function, None) from None
        output = self.call_bytes(function, data)
        try:
            return codec.decode(output)
        except PluginError as error:
            raise self._annotate(error, function, len(data)) from None

    def call_bytes(self, function: str, data: bytes) -> bytes:
        """Call a plugin function with encoded input; return the guest's output bytes."""
        limits = self.limits
        if len(data) > limits.max_input:
            raise self._input_too_large(function, len(data))
        state = None
        try:
            state = getattr(self._local, "state", None) or self._state()
            session = state.session
            return session.invoke(
                session._functions.get(function) or session.function(function),
                data,
                limits.max_output,
            )
        except PluginError as error:
            failure = self._failed(error, state, function, len(data))
            cause: BaseException | None = failure.__cause__
        except Exception as exc:
            # Only host code (a host function) can raise anything else; the guest stopped halfway.
            failure = self._failed(_host_failure(exc), state, function, len(data))
            cause = exc
        # Raised outside the handler, with the locals gone: a traceback keeps its frames' locals,
        # and this frame's would keep the instance alive in a cycle (the error references the
        # traceback that references the error) until some thread happens to collect garbage.
        del state
        raise failure from cause

    def _input_too_large(self, function: str, size: int) -> PluginError:
        limit = self.limits.max_input
        return self._annotate(
            ResourceLimitExceeded(
                resource="input",
                used=size,
                limit=limit,
                suggestion="raise limits.max_input, or send a smaller input",
            ),
            function,
            size,
        )

    def _failed(
        self, error: PluginError, state: _ThreadState | None, function: str, size: int
    ) -> PluginError:
        if state is not None:
            error = self._memory_error(error, state) or error
            if _instance_is_suspect(error):
                self._discard(state)
        return self._annotate(error, function, size)

    def _memory_error(self, error: PluginError, state: _ThreadState | None) -> PluginError | None:
        """A refused memory.grow explains most failures that follow it: report that instead."""
        probe = self._prepared.grow_probe
        if (
            probe is None
            or state is None
            or isinstance(error, DeadlineExceeded)
            or (isinstance(error, ResourceLimitExceeded) and error.resource != "memory")
        ):
            return None
        instance = state.session.instance
        try:
            requested = instance.read_global(probe)
            if not requested:
                return None
            instance.write_global(probe, 0)
        except PluginError:
            return None
        used = instance.memory.size() + (requested & 0xFFFFFFFF) * PAGE_SIZE
        replacement = ResourceLimitExceeded(
            resource="memory",
            used=used,
            limit=self.limits.memory,
            suggestion="raise limits.memory, or give the plugin smaller inputs",
        )
        replacement.__cause__ = error
        return replacement

    def _annotate(self, error: PluginError, function: str | None, size: int | None) -> PluginError:
        error.plugin = error.plugin or self.name
        error.function = error.function or function
        if error.context is None:
            engine = getattr(self, "engine", None)
            error.context = ErrorContext(
                sandbox_id=self.id,
                plugin=self.name,
                function=function,
                environment=ExecutionEnvironment(
                    engine=engine.name if engine is not None else None,
                    isolation="in-process",
                    input_size=size,
                ),
                guest_stack=error.guest_stack if isinstance(error, ExecutionError) else (),
            )
        return error

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} on {self.engine.name} ({len(self.functions)} functions)>"


def _host_failure(exc: Exception) -> ExecutionError:
    return ExecutionError(
        message=f"A host function failed: {type(exc).__name__}: {exc}",
        trap="host_error",
        suggestion="a bug in a host function offered to the plugin; see the cause",
    )


def _instance_is_suspect(error: PluginError) -> bool:
    """Whether the guest stopped abnormally, so its instance state cannot be trusted."""
    if isinstance(error, ExecutionError):
        return error.trap != "guest_error"
    if isinstance(error, ResourceLimitExceeded):
        return error.resource in ("memory", "fuel")
    if isinstance(error, CommunicationError):
        return error.channel == "guest-memory"
    return isinstance(error, DeadlineExceeded | InstanceError)
