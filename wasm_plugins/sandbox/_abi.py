"""Guest ABI version 1 (``hostapi/ABI.md`` is normative): exports, the call, the error import.

A plugin function is an export ``(ptr: i32, len: i32) -> i64``. The host writes the input into a
buffer it obtained from ``wp_alloc`` and keeps per instance (replaced only when an input is larger),
calls the function once, and reads the result at ``(out_ptr << 32) | out_len``; the output stays
owned by the guest. A guest reports a handled error by calling ``wasm_plugins.error(ptr, len)``
with a JSON object ``{"message": ..., "details": ...}`` before returning.

A second ABI (for instance Extism's) is another module with the same three parts: the exports it
checks, the host functions it offers, and a session that performs one call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from wasm_plugins._units import KiB
from wasm_plugins.engine import EngineInstance, ExportFunction, ExternInfo, FuncSignature
from wasm_plugins.errors import (
    CommunicationError,
    ExecutionError,
    ModuleError,
    ResourceLimitExceeded,
)
from wasm_plugins.sandbox._host_functions import HostCall, HostFunction, u32

__all__ = [
    "ABI_VERSION",
    "ALLOC_EXPORT",
    "FREE_EXPORT",
    "FUNCTION_SIGNATURE",
    "IMPORT_MODULE",
    "Session",
    "abi_host_functions",
    "check_module",
    "plugin_functions",
]

ABI_VERSION = 1
IMPORT_MODULE = "wasm_plugins"
ALLOC_EXPORT = "wp_alloc"
FREE_EXPORT = "wp_free"
MEMORY_EXPORT = "memory"
FUNCTION_SIGNATURE = FuncSignature(("i32", "i32"), ("i64",))
ALLOC_SIGNATURE = FuncSignature(("i32",), ("i32",))
FREE_SIGNATURE = FuncSignature(("i32", "i32"), ())
ERROR_SIGNATURE = FuncSignature(("i32", "i32"), ())

MAX_GUEST_ERROR = 64 * KiB
"""Bytes of a guest-reported error payload that are read; the rest is cut off."""

MIN_INPUT_BUFFER = 256
"""The smallest input buffer asked of ``wp_alloc``, so tiny inputs do not each grow it."""

_FUNCTION_TYPE = (FUNCTION_SIGNATURE.params, FUNCTION_SIGNATURE.results)
_RESERVED = frozenset({ALLOC_EXPORT, FREE_EXPORT})
_MASK = 0xFFFFFFFF


def _guest_error(call: HostCall, ptr: int, length: int) -> None:
    call.session.guest_error = call.memory.read(u32(ptr), min(u32(length), MAX_GUEST_ERROR))


def abi_host_functions() -> tuple[HostFunction, ...]:
    """The host functions every ABI-1 module may import without a capability."""
    return (
        HostFunction(
            module=IMPORT_MODULE,
            name="error",
            signature=ERROR_SIGNATURE,
            implementation=_guest_error,
            description=(
                "Report a handled error: a UTF-8 JSON object {message, details} at (ptr, len). "
                "The call then fails with a runtime error carrying that message."
            ),
        ),
    )


def plugin_functions(exports: Sequence[ExternInfo]) -> tuple[str, ...]:
    """The exports that have the plugin-function type, ABI exports excepted."""
    return tuple(
        e.name
        for e in exports
        if e.kind == "func" and e.signature == FUNCTION_SIGNATURE and e.name not in _RESERVED
    )


def check_module(
    exports: Sequence[ExternInfo],
    imports: Sequence[ExternInfo],
    functions: Sequence[str] | None,
    *,
    plugin: str,
) -> None:
    """Check the exports ABI 1 needs, and that every declared function exists with its type.

    :raises ModuleError: naming the first missing or mistyped export.
    """
    by_name = {e.name: e for e in exports}
    imports_memory = any(i.kind == "memory" for i in imports)
    memory = by_name.get(MEMORY_EXPORT)
    if (memory is None or memory.kind != "memory") and not imports_memory:
        raise _missing(MEMORY_EXPORT, "export the module's linear memory as 'memory'", plugin)
    for name, signature in ((ALLOC_EXPORT, ALLOC_SIGNATURE), (FREE_EXPORT, FREE_SIGNATURE)):
        _check_function(by_name.get(name), name, signature, plugin)
    for name in functions or ():
        _check_function(by_name.get(name), name, FUNCTION_SIGNATURE, plugin)


def _check_function(
    export: ExternInfo | None, name: str, signature: FuncSignature, plugin: str
) -> None:
    if export is None or export.kind != "func":
        raise _missing(name, f"export a function {name} with type {signature}", plugin)
    if export.signature != signature:
        raise ModuleError(
            missing_export=name,
            message=(
                f"Invalid module: export {name!r} has type {export.signature}, "
                f"ABI 1 needs {signature}"
            ),
            suggestion=f"give {name} the type {signature} (see hostapi/ABI.md)",
            plugin=plugin,
        )


def _missing(name: str, suggestion: str, plugin: str) -> ModuleError:
    return ModuleError(
        missing_export=name,
        message=f"Invalid module: missing export {name!r} required by ABI 1",
        suggestion=suggestion,
        plugin=plugin,
    )


class Session:
    """The ABI state of one instance: its input buffer, its function handles, a reported error.

    The guest's memory can only grow (and, on some engines, move) while guest code runs, so the
    session reads its size once after every call, checks the output's range against it, and
    copies through the memory's unchecked accessors when the memory offers them (the built-in
    engines do). The input buffer was checked to lie inside the memory when ``wp_alloc`` gave
    it, and memory never shrinks, so writing the input needs no check, only a size read since
    the guest last ran (it keeps the engine's view of the memory current).
    """

    def __init__(self) -> None:
        self.guest_error: bytes | None = None
        self._instance: EngineInstance | None = None
        self._functions: dict[str, ExportFunction] = {}
        self._buffer = 0
        self._capacity = 0
        self._current = False
        """Whether the memory's size was read since the guest last ran."""
        self._budget_open = False
        """Whether the budget armed at instantiation is still unclaimed by a call."""
        self.in_call = False
        """Whether a call started and has not returned: the guest is running (a host function
        called back into the host) or an exception unwound it halfway, so its state is torn."""

    def attach(self, instance: EngineInstance) -> None:
        """Bind the session to its instance (after instantiation, which needs the host imports)."""
        self._instance = instance
        self._alloc = instance.export_function(ALLOC_EXPORT)
        self._free: ExportFunction | None = None
        """Looked up when the input buffer is first replaced (most instances never free)."""
        memory = instance.memory
        self._memory = memory
        self._call_abi = instance.call_abi
        self._size = memory.size
        self._read = getattr(memory, "read_unchecked", None) or memory.read
        self._write_unchecked = getattr(memory, "write_unchecked", None)
        self._current = False
        self._arm = instance.arm
        self._budget_open = True

    def end_budget(self) -> None:
        """Close the budget armed at instantiation: the instance was made outside a call (at
        load), so the next call arms its own rather than sharing the start function's."""
        self._budget_open = False

    @property
    def instance(self) -> EngineInstance:
        """The instance this session calls."""
        assert self._instance is not None, "session used before attach()"
        return self._instance

    def function(self, name: str) -> ExportFunction:
        """The export handle of a plugin function, looked up once per instance."""
        handle = self._functions.get(name)
        if handle is None:
            if name in _RESERVED:
                raise ModuleError(
                    missing_export=name,
                    message=f"Invalid module: {name!r} is part of the ABI, not a plugin function",
                )
            handle = self.instance.export_function(name)
            signature = handle.signature
            # (compared as tuples: attrs' __eq__ is two Python calls, on every new instance)
            if (signature.params, signature.results) != _FUNCTION_TYPE:
                raise ModuleError(
                    missing_export=name,
                    message=(
                        f"Invalid module: export {name!r} has type {handle.signature}, "
                        f"a plugin function has type {FUNCTION_SIGNATURE}"
                    ),
                    suggestion=f"export {name} with the type {FUNCTION_SIGNATURE}",
                )
            self._functions[name] = handle
        return handle

    def _input_buffer(self, size: int) -> int:
        if size <= self._capacity:
            return self._buffer
        instance = self.instance
        self._current = False
        if self._capacity:
            if self._free is None:
                self._free = instance.export_function(FREE_EXPORT)
            instance.call(self._free, self._buffer, self._capacity)
            self._buffer = self._capacity = 0
        capacity = max(MIN_INPUT_BUFFER, 1 << (size - 1).bit_length())
        pointer = u32(int(instance.call(self._alloc, capacity)))
        memory_size = instance.memory.size()
        if pointer == 0 or pointer + capacity > memory_size:
            raise CommunicationError(
                message=(
                    f"wp_alloc({capacity}) returned {pointer}, which is not a buffer inside "
                    f"guest memory of {instance.memory.size()} bytes"
                ),
                channel="guest-memory",
                direction="host-to-guest",
                suggestion="wp_alloc must return a non-zero pointer to `size` free bytes",
            )
        self._buffer, self._capacity = pointer, capacity
        self._current = True
        return pointer

    def invoke(self, function: ExportFunction, data: bytes, max_output: int) -> bytes:
        """One call: write the input, call once, check the result's place, copy it out.

        One budget (fuel, deadline) covers the whole call: ``wp_free`` and ``wp_alloc`` when the
        input buffer grows, the function, and the start function when the instance was made for
        this call.
        """
        if self._budget_open:
            self._budget_open = False
        else:
            self._arm()
        self.in_call = True
        length = len(data)
        pointer = self._buffer if length <= self._capacity else self._input_buffer(length)
        if length:
            if self._current and self._write_unchecked is not None:
                self._write_unchecked(pointer, data)
            else:
                self._memory.write(pointer, data)
        self.guest_error = None
        self._current = False
        packed = self._call_abi(function, pointer, length)
        self.in_call = False
        if self.guest_error is not None:
            raise guest_reported_error(self.guest_error)
        out_ptr = (packed >> 32) & _MASK
        out_len = packed & _MASK
        if out_len > max_output:
            raise ResourceLimitExceeded(
                resource="output",
                used=out_len,
                limit=max_output,
                suggestion="raise limits.max_output, or make the plugin return less",
            )
        size = self._size()
        self._current = True
        if out_ptr + out_len > size:
            raise CommunicationError(
                message=(
                    f"Guest returned output at [{out_ptr}, {out_ptr + out_len}), outside its "
                    f"memory of {size} bytes"
                ),
                channel="guest-output",
                direction="guest-to-host",
                suggestion="return (out_ptr << 32) | out_len of a buffer inside linear memory",
            )
        return self._read(out_ptr, out_len)


def guest_reported_error(payload: bytes) -> ExecutionError:
    """The ExecutionError for a payload the guest passed to ``error``."""
    message: str
    details: Any = None
    try:
        parsed = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        message = parsed["message"]
        details = parsed.get("details")
    else:
        message = payload.decode("utf-8", "replace")
        details = {"payload_is_json_object": False}
    return ExecutionError(
        message=f"Guest reported an error: {message}" if message else "Guest reported an error",
        trap="guest_error",
        details={"message": message, "details": details},
        suggestion="the plugin refused this input; see the message",
    )
