"""What an engine that runs modules only as WASI commands needs: the command record, the frame
protocol's operation codes, and the wrapper that makes a plugin module a command.

The wrapper lives in the sandbox layer (``wasm_plugins/sandbox/_command.py``, it rewrites module
bytes with the sandbox's binary helpers) and registers itself here when the sandbox is imported;
engines call it through :func:`wrap_as_command` without importing a higher layer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import attrs

from wasm_plugins.engine._protocol import FuncSignature
from wasm_plugins.errors import ConfigurationError

__all__ = [
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
    "WasiCommand",
    "metered_module",
    "register_command_wrapper",
    "register_metering_pass",
    "wrap_as_command",
]

OP_CALL = 1
OP_RESULT = 2
OP_WRITE = 4
OP_READ = 5
OP_DATA = 6
OP_GLOBAL_GET = 7
OP_VALUE = 8
OP_GLOBAL_SET = 9
OP_RETURN = 10
OP_HELLO = 11
OP_HOSTCALL = 12
OP_LOG = 13
OP_REPORT = 14
OP_SET_SCRATCH = 15


@attrs.frozen
class WasiCommand:
    """A plugin module made a WASI command serving calls over stdin/stdout, with the slot tables
    its frames use."""

    wasm: bytes
    functions: tuple[tuple[str, FuncSignature], ...]
    """Served exports (name, type), by ``CALL`` slot."""
    globals: tuple[tuple[str, str, bool], ...]
    """Exported integer globals (name, ``i32``/``i64``, mutable), by ``GLOBAL_*`` slot."""
    host_imports: tuple[tuple[str, str, FuncSignature], ...]
    """Imports turned into host calls (module, name, type), by ``HOSTCALL`` slot."""


CommandWrapper = Callable[[bytes], WasiCommand]
_Pass = TypeVar("_Pass")
_WRAPPERS: list[CommandWrapper] = []
_LOCK = threading.Lock()


def register_command_wrapper(wrapper: CommandWrapper) -> None:
    """Install the wrapper (the sandbox does, when it is imported)."""
    with _LOCK:
        _WRAPPERS[:] = [wrapper]


def wrap_as_command(wasm: bytes) -> WasiCommand:
    """The module made a command by the registered wrapper.

    :raises ModuleError: when the module cannot be wrapped (the reason is named).
    :raises ConfigurationError: when no wrapper is registered (``wasm_plugins.sandbox`` was
        never imported).
    """
    return _registered(_WRAPPERS, "command wrapper", "runs WASI commands")(wasm)


MeteringPass = Callable[[bytes], bytes]
_METERING: list[MeteringPass] = []


def register_metering_pass(metering: MeteringPass) -> None:
    """Install the metering pass (the sandbox does, when it is imported): an engine that runs
    every module metered (wasmer-sdk) meters a module compiled without it."""
    with _LOCK:
        _METERING[:] = [metering]


def metered_module(wasm: bytes) -> bytes:
    """The module with its fuel metered by the registered pass.

    :raises ModuleError: when the pass cannot meter it (the reason is named).
    :raises ConfigurationError: when no pass is registered.
    """
    return _registered(_METERING, "metering pass", "meters every module")(wasm)


def _registered(slot: list[_Pass], what: str, engine_that: str) -> _Pass:
    """The pass the sandbox registered in ``slot`` (it does when it is imported).

    :raises ConfigurationError: when none is.
    """
    with _LOCK:
        found = slot[0] if slot else None
    if found is None:
        raise ConfigurationError(
            field="engine",
            message=f"Invalid configuration: engine - no {what} is registered",
            suggestion=f"import wasm_plugins.sandbox before compiling for an engine that "
            f"{engine_that}",
        )
    return found
