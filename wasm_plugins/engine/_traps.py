"""Engine messages to typed errors: WAT diagnostics, validation offsets, trap names and frames.

Both engines print WAT and validation errors in the same shapes (they share the Rust ``wat`` and
``wasmparser`` crates), so one parser serves both; traps are mapped per engine onto one vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from wasm_plugins.errors import (
    CommunicationError,
    CompilationError,
    Diagnostic,
    ExecutionError,
    GuestFrame,
    ModuleError,
    ValidationIssue,
)

MAX_FRAMES = 32
"""Frames kept from a guest stack; a stack overflow has thousands, all alike."""

MAX_MESSAGE = 2000
"""Characters kept from an engine message (a wasmer stack overflow message is megabytes)."""

TRAP_SUGGESTIONS = {
    "unreachable": "the guest executed `unreachable`: a panic or an assertion in the plugin",
    "integer_divide_by_zero": "the plugin divided by zero for this input",
    "integer_overflow": "the plugin overflowed an integer division for this input",
    "memory_out_of_bounds": "the plugin read or wrote outside its memory: a bug in the plugin",
    "stack_overflow": "the plugin recursed too deeply for this input",
    "indirect_call_to_null": "the plugin called through an empty table slot",
    "bad_signature": "the plugin called a function through a table with the wrong type",
    "table_out_of_bounds": "the plugin indexed past the end of a table",
    "bad_conversion_to_integer": "the plugin converted NaN or an out-of-range float to an integer",
}

_WAT_LOCATION = re.compile(r"-->\s*[^\n]*?:(?P<line>\d+):(?P<column>\d+)")
_OFFSET_HEX = re.compile(r"\(at offset 0x(?P<offset>[0-9a-fA-F]+)\)")
_OFFSET_DEC = re.compile(r"(?:at offset|\(at offset) (?P<offset>\d+)")


def truncate(message: str, limit: int = MAX_MESSAGE) -> str:
    """Keep the start of a long engine message."""
    if len(message) <= limit:
        return message
    return message[:limit] + f"... [{len(message) - limit} more characters]"


def wat_error(message: str) -> CompilationError:
    """A WAT parse error (``expected `)` --> <anon>:3:11``) as a CompilationError."""
    first_line = message.strip().splitlines()[0] if message.strip() else "invalid WAT text"
    match = _WAT_LOCATION.search(message)
    line = int(match["line"]) if match else None
    column = int(match["column"]) if match else None
    return CompilationError(
        diagnostics=(Diagnostic(message=first_line, line=line, column=column),),
        suggestion="fix the WAT text at the position shown",
    )


def no_exported_function(name: str) -> ModuleError:
    """The error of a call of a function the module does not export."""
    return ModuleError(
        missing_export=name,
        message=f"Invalid module: no exported function {name!r}",
        suggestion=f"export a function named {name!r} from the module",
    )


def validation_error(message: str, *, default_offset: int | None = None) -> ModuleError:
    """A binary parse or validation failure as a ModuleError with the byte offset."""
    text = truncate(message)
    offset = default_offset
    match = _OFFSET_HEX.search(text)
    if match:
        offset = int(match["offset"], 16)
    else:
        match_dec = _OFFSET_DEC.search(text)
        if match_dec:
            offset = int(match_dec["offset"])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The innermost cause is the last line in the engines' "Caused by:" chains.
    detail = lines[-1] if lines else text
    detail = re.sub(r"^\d+:\s*", "", detail)
    detail = _OFFSET_HEX.sub("", detail).strip()
    detail = re.sub(r"^Invalid input WebAssembly code at offset \d+:\s*", "", detail)
    detail = re.sub(r"^Validation error:\s*", "", detail)
    detail = re.sub(r"\s*\(at offset \d+\)$", "", detail)
    return ModuleError(
        validation_errors=(ValidationIssue(message=detail, offset=offset),),
        suggestion="rebuild the module with a toolchain that targets WebAssembly 1.0 (MVP)",
    )


def trap_error(
    trap: str, frames: tuple[GuestFrame, ...], omitted: int, engine_message: str
) -> ExecutionError:
    """An ExecutionError for a trap with a canonical name and the innermost guest frames."""
    return _trap_error(_Trap.read(trap, frames, omitted, engine_message))


class _Trap:
    """What an error for one trap says: all of it but the error object itself."""

    __slots__ = ("engine_message", "frames", "message", "suggestion", "trap")

    def __init__(
        self, trap: str, frames: tuple[GuestFrame, ...], message: str, engine_message: str
    ) -> None:
        self.trap = trap
        self.frames = frames
        self.message = message
        self.engine_message = engine_message
        self.suggestion = TRAP_SUGGESTIONS.get(trap)

    @classmethod
    def read(
        cls, trap: str, frames: tuple[GuestFrame, ...], omitted: int, engine_message: str
    ) -> _Trap:
        where = f" in {frames[0]}" if frames else ""
        more = f" (+{omitted} more frames)" if omitted else ""
        return cls(
            trap,
            frames,
            f"Guest trapped: {trap.replace('_', ' ')}{where}{more}",
            truncate(engine_message, 500),
        )


def _trap_error(known: _Trap) -> ExecutionError:
    # A new error, and new details, every time: the error is annotated and handed out.
    return ExecutionError(
        message=known.message,
        trap=known.trap,
        guest_stack=known.frames,
        details={"engine_message": known.engine_message},
        suggestion=known.suggestion,
    )


def check_range(
    bound: bool, size: Callable[[], int], ptr: int, length: int, direction: str
) -> None:
    """Refuse a guest-memory access outside the memory (or before there is one).

    :raises CommunicationError: on channel ``guest-memory``.
    """
    if not bound:
        raise CommunicationError(
            message="Guest memory is not available while the module is being instantiated",
            channel="guest-memory",
            direction=direction,
        )
    total = size()
    if ptr < 0 or length < 0 or ptr + length > total:
        raise CommunicationError(
            message=(
                f"Guest memory range [{ptr}, {ptr + length}) is outside memory of {total} bytes"
            ),
            channel="guest-memory",
            direction=direction,
        )


_WASMER_TRAPS = (
    ("unreachable", "unreachable"),
    ("integer divide by zero", "integer_divide_by_zero"),
    ("integer overflow", "integer_overflow"),
    ("out of bounds memory access", "memory_out_of_bounds"),
    ("misaligned heap", "memory_out_of_bounds"),
    ("call stack exhausted", "stack_overflow"),
    ("uninitialized element", "indirect_call_to_null"),
    ("indirect call type mismatch", "bad_signature"),
    ("undefined element", "table_out_of_bounds"),
    ("invalid conversion to integer", "bad_conversion_to_integer"),
    ("unaligned atomic", "memory_out_of_bounds"),
)
_WASMER_FRAME = re.compile(
    r"^\s*at (?P<name>.*?) \(<module>\[(?P<index>\d+)\]:0x(?P<offset>[0-9a-fA-F]+)\)"
)


_PARSED: dict[str, _Trap] = {}
_PARSED_KEPT = 256
"""Trap texts whose reading is kept: a plugin that traps, traps the same way again and again
(the same code, the same frames), and a host that retries pays for the reading once."""
_PARSED_TEXT = 4096
"""Texts longer than this (a deep stack) are read every time rather than kept."""


def wasmer_trap(text: str) -> ExecutionError:
    """The trap a Wasmer runtime error describes (its text after ``RuntimeError: ``), with its
    frames: the wasmer 1.1 binding and the Wasmer SDK print the same text."""
    known = _PARSED.get(text)
    if known is None:
        known = _read_wasmer_trap(text)
        if len(text) <= _PARSED_TEXT:
            if len(_PARSED) >= _PARSED_KEPT:
                _PARSED.clear()
            _PARSED[text] = known
    return _trap_error(known)


def _read_wasmer_trap(text: str) -> _Trap:
    # A stack overflow message lists every frame (megabytes); only the head is parsed.
    head = text.split("\n", MAX_FRAMES + 1)
    first = head[0].strip()
    trap = next((name for needle, name in _WASMER_TRAPS if first.startswith(needle)), "unknown")
    frames = []
    for line in head[1 : MAX_FRAMES + 1]:
        match = _WASMER_FRAME.match(line)
        if match:
            name = match["name"]
            frames.append(
                GuestFrame(
                    function=None if name == "<unnamed>" else name,
                    function_index=int(match["index"]),
                    module_offset=int(match["offset"], 16),
                )
            )
    omitted = max(0, text.count("\n    at ") - len(frames))
    return _Trap.read(trap, tuple(frames), omitted, first)
