"""Engines: the protocol, the built-in adapters (wasmer, wasmtime, wasmer-sdk) and the registry
that picks one.

``engine="auto"`` picks an in-process engine that enforces every limit: wasmer (the 1.1 binding)
when it imports (CPython 3.10 and older), else wasmtime; wasmer-sdk, which runs guests out of
process, only when neither loads. ``engine="wasmer"`` is the fastest Wasmer that runs here: the
1.1 binding where it imports, else wasmer-sdk. The ``WASM_PLUGINS_ENGINE`` environment variable
replaces ``auto``; a name given explicitly wins.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

from wasm_plugins.engine._commands import (
    OP_CALL,
    OP_DATA,
    OP_GLOBAL_GET,
    OP_GLOBAL_SET,
    OP_HELLO,
    OP_HOSTCALL,
    OP_LOG,
    OP_READ,
    OP_REPORT,
    OP_RESULT,
    OP_RETURN,
    OP_SET_SCRATCH,
    OP_VALUE,
    OP_WRITE,
    WasiCommand,
    metered_module,
    register_command_wrapper,
    register_metering_pass,
    wrap_as_command,
)
from wasm_plugins.engine._meter import (
    CHUNK,
    FUEL_EXPORT,
    METER_FUNCTION,
    METER_MODULE,
    METER_SIGNATURE,
    Meter,
)
from wasm_plugins.engine._protocol import (
    CallBudget,
    Engine,
    EngineFeatures,
    EngineInstance,
    EngineModule,
    ExportFunction,
    ExternInfo,
    FuncSignature,
    GuestMemory,
    HostImport,
    LinkedInstance,
    LinkedModule,
    MemoryImport,
    WasiDirectory,
    WasiSettings,
)
from wasm_plugins.errors import ConfigurationError

__all__ = [
    "AUTO_ORDER",
    "CHUNK",
    "ENGINE_ENVIRONMENT_VARIABLE",
    "FUEL_EXPORT",
    "METER_FUNCTION",
    "METER_MODULE",
    "METER_SIGNATURE",
    "OP_CALL",
    "OP_DATA",
    "OP_GLOBAL_GET",
    "OP_GLOBAL_SET",
    "OP_HELLO",
    "OP_HOSTCALL",
    "OP_LOG",
    "OP_READ",
    "OP_REPORT",
    "OP_RESULT",
    "OP_RETURN",
    "OP_SET_SCRATCH",
    "OP_VALUE",
    "OP_WRITE",
    "WASMER_ORDER",
    "CallBudget",
    "Engine",
    "EngineFeatures",
    "EngineInstance",
    "EngineModule",
    "EngineRegistry",
    "ExportFunction",
    "ExternInfo",
    "FuncSignature",
    "GuestMemory",
    "HostImport",
    "LinkedInstance",
    "LinkedModule",
    "MemoryImport",
    "Meter",
    "WasiCommand",
    "WasiDirectory",
    "WasiSettings",
    "builtin_factories",
    "default_registry",
    "get_engine",
    "metered_module",
    "register_command_wrapper",
    "register_metering_pass",
    "wrap_as_command",
]

ENGINE_ENVIRONMENT_VARIABLE = "WASM_PLUGINS_ENGINE"
AUTO_ORDER = ("wasmer", "wasmtime")
WASMER_ORDER = ("wasmer", "wasmer-sdk")
"""What ``engine="wasmer"`` stands for, in order: the in-process 1.1 binding where it imports,
else the Wasmer SDK (a process per instance, every CPython 3)."""


# The built-in engines are shared by every registry (and so every host) of the process: an engine
# is thread-safe, and each wasmtime engine owns a compiled-code cache and an epoch thread.
@functools.cache
def _make_wasmer() -> Engine:
    from wasm_plugins.engine._wasmer import WasmerEngine  # noqa: PLC0415 optional: wasmer installs on 3.10 only

    return WasmerEngine()


@functools.cache
def _make_wasmtime() -> Engine:
    from wasm_plugins.engine._wasmtime import WasmtimeEngine  # noqa: PLC0415 lazy: start-up without wasmtime

    return WasmtimeEngine()


@functools.cache
def _make_wasmer_sdk() -> Engine:
    from wasm_plugins.engine._wasmer_sdk import WasmerSdkEngine  # noqa: PLC0415 optional: wheels for Linux and macOS

    return WasmerSdkEngine()


class EngineRegistry:
    """Engine factories by name, each engine made once and shared (engines are thread-safe)."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], Engine]] = {}
        self._engines: dict[str, Engine] = {}
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, name: str, factory: Callable[[], Engine]) -> None:
        """Offer an engine under ``name``; ``factory`` raises ImportError when it cannot load."""
        with self._lock:
            self._factories[name] = factory
            self._engines.pop(name, None)
            self._failures.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered engine name, available or not."""
        return tuple(self._factories)

    def availability(self) -> dict[str, str | None]:
        """For every engine: ``None`` when it loads, else why it does not."""
        result: dict[str, str | None] = {}
        for name in self._factories:
            # Each engine by its own name: not get(), where "wasmer" may stand for wasmer-sdk.
            try:
                loaded = self._load(name)
            except ConfigurationError as exc:
                result[name] = exc.message
            else:
                result[name] = None if loaded is not None else self._failures[name]
        return result

    def resolve_name(self, name: str | None = "auto") -> str:
        """The engine ``name`` stands for, ``auto`` and the environment variable resolved."""
        if name in (None, "auto"):
            name = os.environ.get(ENGINE_ENVIRONMENT_VARIABLE) or "auto"
        if name == "wasmer":
            return self._first_loading(WASMER_ORDER) or name
        if name != "auto":
            return name
        choice = self._first_loading((*AUTO_ORDER, *self._factories))
        if choice is not None:
            return choice
        raise ConfigurationError(
            field="engine",
            message="Invalid configuration: engine - no WebAssembly engine can be loaded",
            suggestion="install wasmtime (pip install wasmtime)",
        )

    def _first_loading(self, names: tuple[str, ...]) -> str | None:
        """The first of ``names`` registered here that loads."""
        for candidate in names:
            if candidate in self._factories and self._load(candidate) is not None:
                return candidate
        return None

    def get(self, name: str | None = "auto") -> Engine:
        """The engine called ``name`` (or the ``auto`` choice).

        :raises ConfigurationError: when it is unknown or cannot be loaded here.
        """
        resolved = self.resolve_name(name)
        if resolved not in self._factories:
            known = ", ".join(sorted(self._factories))
            raise ConfigurationError(
                field="engine",
                message=f"Invalid configuration: engine - unknown engine {resolved!r}",
                suggestion=f"use one of: auto, {known}",
            )
        engine = self._load(resolved)
        if engine is None:
            raise ConfigurationError(
                field="engine",
                message=(
                    f"Invalid configuration: engine - {resolved!r} cannot be loaded: "
                    f"{self._failures[resolved]}"
                ),
                suggestion=_install_hint(resolved),
            )
        return engine

    def _load(self, name: str) -> Engine | None:
        with self._lock:
            if name in self._engines:
                return self._engines[name]
            if name in self._failures:
                return None
            try:
                engine = self._factories[name]()
            except ImportError as exc:
                self._failures[name] = str(exc) or type(exc).__name__
                return None
            self._engines[name] = engine
            return engine


def _install_hint(name: str) -> str:
    if name == "wasmer":
        return (
            "engine='wasmer' runs the wasmer 1.1 binding where it installs (CPython 3.10 and "
            "older: 'pip install wasmer wasmer-compiler-cranelift'), else wasmer-sdk "
            "(Linux and macOS: pip install 'wasmer-sdk>=0.5,<0.6'); or use engine='wasmtime'"
        )
    if name == "wasmtime":
        return "pip install wasmtime"
    if name == "wasmer-sdk":
        return (
            "pip install 'wasmer-sdk>=0.5,<0.6' (wheels for Linux and macOS, x86_64 and arm64), "
            "or engine='wasmtime'"
        )
    return f"install the package that provides the {name!r} engine"


def builtin_factories() -> dict[str, Callable[[], Engine]]:
    return {"wasmer": _make_wasmer, "wasmtime": _make_wasmtime, "wasmer-sdk": _make_wasmer_sdk}


def default_registry() -> EngineRegistry:
    """A registry with the built-in engines."""
    registry = EngineRegistry()
    for name, factory in builtin_factories().items():
        registry.register(name, factory)
    return registry


_DEFAULT = default_registry()


def get_engine(name: str | None = "auto") -> Engine:
    """The shared built-in engine called ``name``; see :meth:`EngineRegistry.get`."""
    return _DEFAULT.get(name)
