"""The built-in host functions (ABI.md section 4): log, config, key-value store, clock, random.

Registered through ``wasm_plugins_register_host_functions`` like a third party's, each gated by its
capability. A pointer range outside guest memory is a CommunicationError raised by the memory
accessor: the host reads and writes nothing outside memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from wasm_plugins._correlation import correlation_fields
from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins._units import KiB
from wasm_plugins.engine import FuncSignature
from wasm_plugins.errors import CommunicationError
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.sandbox import IMPORT_MODULE, HostCall, HostFunction, u32
from wasm_plugins.services import HostServices, QuotaExceeded

__all__ = ["LOG_LEVELS", "builtin_host_functions"]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
MAX_LOG_MESSAGE = 16 * KiB
MAX_KEY = 1 * KiB
MAX_VALUE = 1024 * KiB
MAX_RANDOM = 64 * KiB

_I32 = "i32"
_I64 = "i64"


def _services(call: HostCall) -> HostServices:
    services = call.services
    if not isinstance(services, HostServices):
        raise CommunicationError(
            message="Host function called without host services",
            channel="host-function",
            direction="guest-to-host",
        )
    return services


def _read(call: HostCall, ptr: int, length: int, limit: int, what: str) -> bytes:
    length = u32(length)
    if length > limit:
        raise CommunicationError(
            message=f"{what} of {length} bytes is over the {limit}-byte limit of this host call",
            channel="host-function",
            direction="guest-to-host",
        )
    return call.memory.read(u32(ptr), length)


def _copy_out(call: HostCall, value: bytes | None, out_ptr: int, out_cap: int) -> int:
    if value is None:
        return -1
    if len(value) <= u32(out_cap):
        call.memory.write(u32(out_ptr), value)
    return len(value)


def log(call: HostCall, level: int, ptr: int, length: int) -> None:
    """log(level, ptr, len): a message into the host's log, with the plugin's name bound."""
    text = _read(call, ptr, length, MAX_LOG_MESSAGE, "log message").decode("utf-8", "replace")
    name = LOG_LEVELS[min(max(level, 0), len(LOG_LEVELS) - 1)]
    # Escaped: a guest must not forge log lines (newlines) or reach a terminal (escapes).
    logger.bind(**correlation_fields(), plugin=call.plugin, source="guest").log(name, escape(text))


def config_get(call: HostCall, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
    """config_get(key, out) -> length or -1: the plugin's configuration value for key."""
    key = _read(call, key_ptr, key_len, MAX_KEY, "config key").decode("utf-8", "replace")
    config = _services(call).config(call.plugin)
    if key not in config:
        return -1
    value = config[key]
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return _copy_out(call, text.encode("utf-8"), out_ptr, out_cap)


def kv_get(call: HostCall, key_ptr: int, key_len: int, out_ptr: int, out_cap: int) -> int:
    """kv_get(key, out) -> length or -1: a value from the plugin's own store."""
    key = _read(call, key_ptr, key_len, MAX_KEY, "key")
    return _copy_out(call, _services(call).store.get(call.plugin, key), out_ptr, out_cap)


def kv_set(call: HostCall, key_ptr: int, key_len: int, val_ptr: int, val_len: int) -> int:
    """kv_set(key, value) -> 0, or -1 when the plugin's quota would be exceeded."""
    key = _read(call, key_ptr, key_len, MAX_KEY, "key")
    value = _read(call, val_ptr, val_len, MAX_VALUE, "value")
    try:
        _services(call).store.set(call.plugin, key, value)
    except QuotaExceeded:
        return -1
    return 0


def kv_delete(call: HostCall, key_ptr: int, key_len: int) -> int:
    """kv_delete(key) -> 1 when a value was deleted, else 0."""
    key = _read(call, key_ptr, key_len, MAX_KEY, "key")
    return int(_services(call).store.delete(call.plugin, key))


def clock_now(call: HostCall) -> int:
    """clock_now() -> nanoseconds since the Unix epoch, from the host's injected wall clock."""
    return int(_services(call).wall_clock_ns())


def clock_monotonic(call: HostCall) -> int:
    """clock_monotonic() -> nanoseconds from an arbitrary origin, from the injected clock."""
    return int(_services(call).monotonic_ns())


def random_fill(call: HostCall, ptr: int, length: int) -> int:
    """random_fill(ptr, len) -> 0: random bytes from the host's injected source."""
    length = u32(length)
    if length > MAX_RANDOM:
        raise CommunicationError(
            message=f"random_fill of {length} bytes is over the {MAX_RANDOM}-byte limit",
            channel="host-function",
            direction="guest-to-host",
        )
    call.memory.write(u32(ptr), _services(call).random_bytes(length))
    return 0


_TABLE: tuple[tuple[str, Callable[..., object], FuncSignature, str, str], ...] = (
    ("log", log, FuncSignature((_I32, _I32, _I32), ()), "log", "write to the host's log"),
    (
        "config_get",
        config_get,
        FuncSignature((_I32, _I32, _I32, _I32), (_I32,)),
        "config",
        "read a configuration value",
    ),
    (
        "kv_get",
        kv_get,
        FuncSignature((_I32, _I32, _I32, _I32), (_I32,)),
        "kv",
        "read from the plugin's store",
    ),
    (
        "kv_set",
        kv_set,
        FuncSignature((_I32, _I32, _I32, _I32), (_I32,)),
        "kv",
        "write to the plugin's store",
    ),
    ("kv_delete", kv_delete, FuncSignature((_I32, _I32), (_I32,)), "kv", "delete from the store"),
    ("clock_now", clock_now, FuncSignature((), (_I64,)), "clock", "wall-clock time, ns"),
    ("clock_monotonic", clock_monotonic, FuncSignature((), (_I64,)), "clock", "monotonic ns"),
    ("random_fill", random_fill, FuncSignature((_I32, _I32), (_I32,)), "random", "random bytes"),
)


def builtin_host_functions() -> tuple[HostFunction, ...]:
    """The host functions of ABI.md section 4, each with its capability."""
    return tuple(
        HostFunction(
            module=IMPORT_MODULE,
            name=name,
            signature=signature,
            implementation=implementation,
            capability=capability,
            description=description,
        )
        for name, implementation, signature, capability, description in _TABLE
    )


@hookimpl(trylast=True)
def wasm_plugins_register_host_functions(register: Callable[[HostFunction], None]) -> None:
    """Offer the built-in host functions."""
    for function in builtin_host_functions():
        register(function)
