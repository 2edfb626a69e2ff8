"""The command wrapper: a plugin module made a WASI command that serves calls over stdin/stdout.

An engine that can only run WASI commands in a process of their own (``wasmer-sdk``) runs a
plugin through this rewrite. :func:`wrap_command` is a pure function of the module's bytes: it
appends a ``_start`` that allocates a small scratch buffer with ``wp_alloc`` (or, in a module
without one, such as an Extism plugin, grows a page for it), says hello, then serves framed
requests read from stdin and answers them on stdout, until stdin closes.

Frames, both ways: a header of two little-endian u32 (operation, payload length), then the
payload. Host to guest:

- ``CALL``: u32 slot, u32 prefetch, then one i64 per parameter. The guest calls the export of that
  slot; it answers ``RESULT``: i64 result, u32 memory pages, and, when ``prefetch`` is not 0 and the
  result packs ``(out_ptr << 32) | out_len`` with ``out_len <= prefetch`` inside memory, the output
  bytes themselves (one round trip for a plugin call).
- ``WRITE``: u32 pointer, then bytes the guest copies there (no answer).
- ``READ``: u32 pointer, u32 length; the guest answers ``DATA`` with those bytes of its memory.
- ``GLOBAL_GET`` (u32 slot; answered by ``VALUE``, an i64) and ``GLOBAL_SET`` (u32 slot, i64).
- ``RETURN``: the i64 result of a host function the guest is waiting for.

Guest to host, besides the answers: ``HELLO`` (u32 memory pages, once the scratch buffer exists),
``HOSTCALL`` (u32 import slot, u32 memory pages, one i64 per argument: the guest then serves
``READ`` and ``WRITE`` frames until ``RETURN``, so a host function reads and writes guest memory
as on any engine) and ``LOG`` (u32 file descriptor, bytes): the guest's own ``fd_write`` on
descriptors 1 and 2 becomes a log frame, so a printing plugin never corrupts the framing. The
guest's ``fd_read`` on descriptor 0 sees an empty stream (stdin carries the frames).

Every function import outside WASI becomes a host call (the host binds its slots when it
instantiates); WASI imports pass through to the runtime. Function indices move (three WASI
imports are added and host imports become defined functions), so calls, ``ref.func``, element
segments, exports and the start function are renumbered; the ``name`` section is dropped.
``_initialize`` (called first by the new ``_start``, as a reactor expects) and any ``_start`` of
type ``() -> ()`` are removed from the exports: a module that still exported ``_initialize``
would be run as a reactor, and never serve.

A module the wrapper cannot wrap is refused with a :class:`~wasm_plugins.errors.ModuleError`
whose first validation issue starts with the reason: ``no-memory-export``, ``start-export-type``,
``unsupported-import``, ``no-scratch-allocator`` or ``malformed``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

import attrs

from wasm_plugins.engine import (
    METER_FUNCTION,
    METER_MODULE,
    METER_SIGNATURE,
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
    FuncSignature,
    WasiCommand,
    register_command_wrapper,
)
from wasm_plugins.errors import ModuleError, ValidationIssue
from wasm_plugins.sandbox import _binary

# The binary helpers this wrapper builds on (the rewriter's own).
_K_BLOCK = _binary._K_BLOCK
_K_BYTES4 = _binary._K_BYTES4
_K_BYTES8 = _binary._K_BYTES8
_K_FC = _binary._K_FC
_K_GROW = _binary._K_GROW
_K_LEB = _binary._K_LEB
_K_LEB2 = _binary._K_LEB2
_K_MEMARG = _binary._K_MEMARG
_K_NONE = _binary._K_NONE
_K_UNKNOWN = _binary._K_UNKNOWN
_OPCODE_KINDS = _binary._OPCODE_KINDS
_SEC_CODE = _binary._SEC_CODE
_SEC_CUSTOM = _binary._SEC_CUSTOM
_SEC_EXPORT = _binary._SEC_EXPORT
_SEC_FUNCTION = _binary._SEC_FUNCTION
_SEC_GLOBAL = _binary._SEC_GLOBAL
_SEC_IMPORT = _binary._SEC_IMPORT
_SEC_MEMORY = _binary._SEC_MEMORY
_SEC_TYPE = _binary._SEC_TYPE
DEPTH_EXPORT = _binary.DEPTH_EXPORT
GROW_PROBE_EXPORT = _binary.GROW_PROBE_EXPORT
WasmBinaryError = _binary.WasmBinaryError
_assemble = _binary._assemble
_code_uleb = _binary._code_uleb
_encode_name = _binary._encode_name
_encode_uleb = _binary._encode_uleb
_find = _binary._find
_Reader = _binary._Reader
_Section = _binary._Section
_skip_blocktype = _binary._skip_blocktype
_skip_heaptype = _binary._skip_heaptype
_skip_leb = _binary._skip_leb
_skip_locals = _binary._skip_locals
_skip_memarg = _binary._skip_memarg
_skip_prefixed = _binary._skip_prefixed
_skip_structured = _binary._skip_structured
_skip_valtype = _binary._skip_valtype
_sleb32 = _binary._sleb32
_split_sections = _binary._split_sections
_Unsupported = _binary._Unsupported

__all__ = [
    "MAX_PARAMS",
    "SCRATCH_BYTES",
    "WASI_MODULE",
    "CommandModule",
    "wrap_command",
]

WASI_MODULE = "wasi_snapshot_preview1"
MAX_PARAMS = 16
"""Parameters a served export or a host import may have (they travel in the scratch buffer)."""
SCRATCH_BYTES = 336
SCRATCH_ALLOCATOR = "wp_alloc"


# Exit codes of the serving loop (the guest's own proc_exit may use any code).
EXIT_NO_SCRATCH = 70
EXIT_BAD_FRAME = 71
EXIT_READ_FAILED = 75
EXIT_WRITE_FAILED = 76

_I32 = 0x7F
_I64 = 0x7E
_INTEGER = {_I32: "i32", _I64: "i64"}
_SEC_START = 8
_SEC_ELEMENT = 9
_EXTERN_FUNC = 0
_EXTERN_MEMORY = 2
_EXTERN_GLOBAL = 3

# Scratch layout (offsets from the scratch pointer).
_IOV = 0
_COUNT = 8
_OUT_HEADER = 16
_IN_HEADER = 24
_IN_PAYLOAD = 32
_IN_ARGS = 40
_OUT_PAYLOAD = 176
_REPORT = 320
_MAX_CALL_PAYLOAD = 8 + 8 * MAX_PARAMS


CommandModule = WasiCommand


class _Refused(Exception):
    def __init__(self, reason: str, text: str, offset: int | None = None) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.offset = offset


def _refusal(reason: str, text: str, offset: int | None) -> ModuleError:
    suggestions = {
        "no-memory-export": "export the module's linear memory as 'memory' (an imported "
        "memory cannot be given to a WASI command)",
        "start-export-type": "remove the export '_start', or give it the type () -> ()",
        "unsupported-import": "run the plugin on engine='wasmtime', or remove the import",
        "no-scratch-allocator": "export wp_alloc with the type (i32) -> i32, as ABI 1 requires, "
        "or not at all",
    }
    missing = (
        "memory"
        if reason == "no-memory-export"
        else SCRATCH_ALLOCATOR
        if reason == "no-scratch-allocator"
        else None
    )
    return ModuleError(
        message=f"Invalid module: the wasmer-sdk command wrapper cannot wrap it ({reason}): {text}",
        validation_errors=(ValidationIssue(message=f"{reason}: {text}", offset=offset),),
        missing_export=missing,
        suggestion=suggestions.get(reason, "run the plugin on engine='wasmtime'"),
    )


# --------------------------------------------------------------------------
# Reading the module


@attrs.frozen
class _FuncType:
    params: bytes
    results: bytes

    def signature(self) -> FuncSignature:
        return FuncSignature(
            tuple(_INTEGER.get(b, "?") for b in self.params),
            tuple(_INTEGER.get(b, "?") for b in self.results),
        )

    def integer_only(self) -> bool:
        return all(b in _INTEGER for b in self.params + self.results)


@attrs.frozen
class _Import:
    module: str
    name: str
    kind: int
    type_index: int
    offset: int


@attrs.frozen
class _Export:
    name: str
    kind: int
    index: int


def _types(data: bytes, section: _Section | None) -> list[_FuncType]:
    if section is None:
        return []
    reader = _Reader(data, section.body, section.end)
    types = []
    for _ in range(reader.u32()):
        offset = reader.pos
        if reader.byte() != 0x60:
            raise _Refused("malformed", "the module defines types other than functions", offset)
        vectors = []
        for _ in range(2):
            start = reader.pos
            count = reader.u32()
            values = bytearray()
            for _ in range(count):
                at = reader.pos
                reader.pos = _skip_valtype(data, reader.pos, reader.end)
                values.append(data[at] if reader.pos == at + 1 else 0)
            del start
            vectors.append(bytes(values))
        types.append(_FuncType(vectors[0], vectors[1]))
    return types


def _imports(data: bytes, section: _Section | None) -> tuple[list[_Import], bytes | None]:
    """The function imports, and the encoded limits of an imported ``env.memory``."""
    if section is None:
        return [], None
    reader = _Reader(data, section.body, section.end)
    found = []
    memory: bytes | None = None
    for _ in range(reader.u32()):
        offset = reader.pos
        module = reader.name().decode("utf-8", "replace")
        name = reader.name().decode("utf-8", "replace")
        kind = reader.byte()
        if kind == _EXTERN_MEMORY and (module, name) == ("env", "memory") and memory is None:
            # The host would make this memory for the module alone: the command defines it.
            start = reader.pos
            flags = reader.byte()
            reader.u32()
            if flags & 0x01:
                reader.u32()
            if flags & ~0x01:
                raise _Refused("unsupported-import", "the imported memory is shared or 64-bit")
            memory = data[start : reader.pos]
            continue
        if kind != _EXTERN_FUNC:
            what = {1: "a table", 2: "a memory", 3: "a global", 4: "a tag"}.get(kind, "an item")
            reason = "no-memory-export" if kind == _EXTERN_MEMORY else "unsupported-import"
            raise _Refused(reason, f"the module imports {what} ({module}.{name})", offset)
        found.append(_Import(module, name, kind, reader.u32(), offset))
    return found, memory


def _u32_vector(data: bytes, section: _Section | None) -> list[int]:
    if section is None:
        return []
    reader = _Reader(data, section.body, section.end)
    return [reader.u32() for _ in range(reader.u32())]


def _exports(data: bytes, section: _Section | None) -> list[_Export]:
    if section is None:
        return []
    reader = _Reader(data, section.body, section.end)
    found = []
    for _ in range(reader.u32()):
        name = reader.name().decode("utf-8", "replace")
        kind = reader.byte()
        found.append(_Export(name, kind, reader.u32()))
    return found


def _global_types(data: bytes, section: _Section | None) -> list[tuple[int, bool, int, int]]:
    """(value type byte, mutable, init start, init end) of each defined global."""
    if section is None:
        return []
    reader = _Reader(data, section.body, section.end)
    found = []
    for _ in range(reader.u32()):
        at = reader.pos
        reader.pos = _skip_valtype(data, reader.pos, reader.end)
        valtype = data[at] if reader.pos == at + 1 else 0
        mutable = reader.byte() == 1
        start = reader.pos
        reader.pos = _const_end(data, reader.pos, reader.end)
        found.append((valtype, mutable, start, reader.pos))
    return found


# --------------------------------------------------------------------------
# Renumbering function indices


def _const_end(data: bytes, pos: int, end: int) -> int:
    """The offset just past a constant expression's ``end``."""
    return _remap_const(data, pos, end, None)[0]


def _remap_const(data: bytes, pos: int, end: int, mapping: list[int] | None) -> tuple[int, bytes]:
    out = bytearray()
    while True:
        if pos >= end:
            raise _Refused("malformed", "constant expression runs past its section", pos)
        start = pos
        op = data[pos]
        pos += 1
        if op == 0x0B:
            out.append(op)
            return pos, bytes(out)
        if op == 0xD2:
            index, pos = _code_uleb(data, pos, end)
            out.append(op)
            out += _encode_uleb(mapping[index] if mapping is not None else index)
            continue
        if op in (0x41, 0x42, 0x23):
            pos = _skip_leb(data, pos)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op == 0xD0:
            pos = _skip_heaptype(data, pos, end)
        elif op == 0xFD:
            pos = _skip_leb(data, pos) + 16
        else:
            raise _Refused("malformed", f"unsupported constant instruction 0x{op:02x}", start)
        out += data[start:pos]


def _remap_body(
    data: bytes, code: int, end: int, mapping: list[int], setters: dict[int, int]
) -> bytes:
    """The instructions in [code, end) with every function index renumbered, and each
    ``global.set`` of a reported global made a call of its setter."""
    kinds = _OPCODE_KINDS
    parts: list[bytes] = []
    copied = code
    pos = code
    while pos < end:
        op = data[pos]
        pos += 1
        kind = kinds[op]
        if kind == _K_NONE:
            continue
        if kind == _K_LEB:
            if op in (0x10, 0x12, 0xD2):
                index, after = _code_uleb(data, pos, end)
                if index >= len(mapping):
                    raise _Refused("malformed", f"call of function {index}, out of range", pos)
                parts.append(data[copied:pos])
                parts.append(_encode_uleb(mapping[index]))
                copied = pos = after
            elif op == 0x24 and setters:
                index, after = _code_uleb(data, pos, end)
                setter = setters.get(index)
                if setter is not None:
                    parts.append(data[copied : pos - 1])
                    parts.append(_call(setter))
                    copied = after
                pos = after
            else:
                pos = _skip_leb(data, pos)
        elif kind == _K_MEMARG:
            pos = _skip_memarg(data, pos, end)
        elif kind == _K_BLOCK:
            pos = _skip_blocktype(data, pos, end)
        elif kind == _K_LEB2:
            pos = _skip_leb(data, _skip_leb(data, pos))
        elif kind == _K_GROW:
            _, pos = _code_uleb(data, pos, end)
        elif kind == _K_BYTES4:
            pos += 4
        elif kind == _K_BYTES8:
            pos += 8
        elif kind == _K_UNKNOWN:
            raise _Refused("malformed", f"unknown opcode 0x{op:02x}", pos - 1)
        elif kind >= _K_FC:
            pos = _skip_prefixed(kind, data, pos, end)
        else:
            pos = _skip_structured(kind, data, pos, end)
    if pos != end:
        raise _Refused("malformed", "instruction runs past the end of the function body", end)
    parts.append(data[copied:end])
    return b"".join(parts)


def _remap_code(
    data: bytes,
    section: _Section,
    mapping: list[int],
    setters: dict[int, int],
    depth_check: tuple[bytes, bytes] | None,
) -> list[bytes]:
    """Each body (locals and instructions, without its size) renumbered; the call-depth check
    at the start of a body (``depth_check``: as the rewriter made it, as it should be) replaced."""
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    bodies = []
    pos = reader.pos
    end = section.end
    for _ in range(count):
        size, pos = _code_uleb(data, pos, end)
        body_end = pos + size
        if body_end > end:
            raise _Refused("malformed", "function body runs past its section", pos)
        code = _skip_locals(data, pos, body_end)
        span = data[code:body_end]
        if b"\x10" in span or b"\xd2" in span or (setters and b"\x24" in span):
            body = data[pos:code] + _remap_body(data, code, body_end, mapping, setters)
        else:
            body = data[pos:body_end]
        if depth_check is not None:
            locals_size = code - pos
            if body[locals_size : locals_size + len(depth_check[0])] == depth_check[0]:
                body = (
                    body[:locals_size] + depth_check[1] + body[locals_size + len(depth_check[0]) :]
                )
        bodies.append(body)
        pos = body_end
    return bodies


def _remap_elements(data: bytes, section: _Section, mapping: list[int]) -> bytes:
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    out = [_encode_uleb(count)]
    pos = reader.pos
    end = section.end
    for _ in range(count):
        flags, pos = _code_uleb(data, pos, end)
        out.append(_encode_uleb(flags))
        start = pos
        if flags & 0x02 and not flags & 0x01:  # explicit table index (2, 6)
            pos = _skip_leb(data, pos)
        if not flags & 0x01:  # active: offset expression (0, 2, 4, 6)
            pos = _const_end(data, pos, end)
        if flags & 0x03:  # element kind or reference type (1, 2, 3, 5, 6, 7)
            pos = pos + 1 if not flags & 0x04 else _skip_valtype(data, pos, end)
        out.append(data[start:pos])
        items, pos = _code_uleb(data, pos, end)
        out.append(_encode_uleb(items))
        for _ in range(items):
            if flags & 0x04:
                pos, expression = _remap_const(data, pos, end, mapping)
                out.append(expression)
            else:
                index, pos = _code_uleb(data, pos, end)
                out.append(_encode_uleb(mapping[index]))
    if pos != end:
        raise _Refused("malformed", "element section has bytes after its last segment", pos)
    return b"".join(out)


def _remap_globals(data: bytes, section: _Section, mapping: list[int], extra: bytes) -> bytes:
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    out = [_encode_uleb(count + 1)]
    pos = reader.pos
    for _ in range(count):
        start = pos
        pos = _skip_valtype(data, pos, section.end) + 1
        out.append(data[start:pos])
        pos, expression = _remap_const(data, pos, section.end, mapping)
        out.append(expression)
    out.append(extra)
    return b"".join(out)


# --------------------------------------------------------------------------
# Writing code


def _op(*codes: int) -> bytes:
    return bytes(codes)


def _i32(value: int) -> bytes:
    return b"\x41" + _sleb32(value)


def _call(index: int) -> bytes:
    return b"\x10" + _encode_uleb(index)


def _local_get(index: int) -> bytes:
    return b"\x20" + _encode_uleb(index)


def _local_set(index: int) -> bytes:
    return b"\x21" + _encode_uleb(index)


def _load32(offset: int) -> bytes:
    return b"\x28\x02" + _encode_uleb(offset)


def _load64(offset: int) -> bytes:
    return b"\x29\x03" + _encode_uleb(offset)


def _store32(offset: int) -> bytes:
    return b"\x36\x02" + _encode_uleb(offset)


def _store64(offset: int) -> bytes:
    return b"\x37\x03" + _encode_uleb(offset)


_IF = b"\x04\x40"
_BLOCK = b"\x02\x40"
_LOOP = b"\x03\x40"
_END = b"\x0b"
_MEMORY_SIZE = b"\x3f\x00"


def _br(depth: int) -> bytes:
    return b"\x0c" + _encode_uleb(depth)


def _body(locals_: Sequence[tuple[int, int]], code: bytes) -> bytes:
    declared = _encode_uleb(len(locals_)) + b"".join(
        _encode_uleb(n) + bytes([t]) for n, t in locals_
    )
    content = declared + code + _END
    return _encode_uleb(len(content)) + content


def _dispatch(selector: bytes, arms: Sequence[bytes], default: bytes) -> bytes:
    """``br_table`` over ``arms`` (void code each), ``default`` when out of range."""
    n = len(arms)
    code = [_BLOCK, _BLOCK * (n + 1), selector]
    code.append(b"\x0e" + _encode_uleb(n) + b"".join(_encode_uleb(i) for i in range(n)))
    code.append(_encode_uleb(n))
    for i, arm in enumerate(arms):
        code.append(_END)
        code.append(arm)
        code.append(_br(n - i))
    code.append(_END)
    code.append(default)
    code.append(_END)
    return b"".join(code)


@attrs.frozen
class _Indices:
    scratch: int  # global
    fd_read: int
    fd_write: int
    proc_exit: int
    read_exact: int
    write_all: int
    header: int
    serve: int
    report: int


def _scratch(offset: int) -> bytes:
    """The address scratch + offset."""
    code = b"\x23" + _encode_uleb(_SCRATCH_GLOBAL[0])
    return code + (_i32(offset) + _op(0x6A) if offset else b"")


# The scratch global's index, set while a module is being wrapped (code builders read it), under
# the lock: one module is wrapped at a time.
_SCRATCH_GLOBAL = [0]
_WRAP_LOCK = threading.Lock()


def _exit(ix: _Indices, code: int) -> bytes:
    return _i32(code) + _call(ix.proc_exit)


def _stream_function(ix: _Indices, *, reading: bool) -> bytes:
    """read_exact(ptr, len) from fd 0, or write_all(ptr, len) to fd 1: (i32 i32) -> ()."""
    ptr, length, err, n = 0, 1, 2, 3
    call = _call(ix.fd_read if reading else ix.fd_write)
    fd = _i32(0 if reading else 1)
    on_error = _exit(ix, EXIT_READ_FAILED if reading else EXIT_WRITE_FAILED)
    # EOF on stdin: the host closed it, the process ends. A write of nothing: the pipe is gone.
    on_empty = _exit(ix, 0 if reading else EXIT_WRITE_FAILED)
    code = b"".join(
        (
            _BLOCK,
            _LOOP,
            _local_get(length),
            _op(0x45),
            b"\x0d\x01",
            _scratch(0),
            _local_get(ptr),
            _store32(_IOV),
            _scratch(0),
            _local_get(length),
            _store32(_IOV + 4),
            fd,
            _scratch(_IOV),
            _i32(1),
            _scratch(_COUNT),
            call,
            b"\x22" + _encode_uleb(err),
            _IF,
            on_error,
            _END,
            _scratch(0),
            _load32(_COUNT),
            b"\x22" + _encode_uleb(n),
            _op(0x45),
            _IF,
            on_empty,
            _END,
            _local_get(ptr),
            _local_get(n),
            _op(0x6A),
            _local_set(ptr),
            _local_get(length),
            _local_get(n),
            _op(0x6B),
            _local_set(length),
            _br(0),
            _END,
            _END,
        )
    )
    return _body([(2, _I32)], code)


def _header_function(ix: _Indices) -> bytes:
    """send_header(op, len): (i32 i32) -> ()."""
    code = b"".join(
        (
            _scratch(0),
            _local_get(0),
            _store32(_OUT_HEADER),
            _scratch(0),
            _local_get(1),
            _store32(_OUT_HEADER + 4),
            _scratch(_OUT_HEADER),
            _i32(8),
            _call(ix.write_all),
        )
    )
    return _body([], code)


def _load_arg(param: int, offset: int) -> bytes:
    return _scratch(0) + (_load32(offset) if param == _I32 else _load64(offset))


def _to_i64(results: bytes) -> bytes:
    if not results:
        return b"\x42\x00"
    return _op(0xAD) if results[0] == _I32 else b""


def _serve_function(
    ix: _Indices,
    served: Sequence[tuple[int, _FuncType]],
    globals_: Sequence[tuple[int, int, bool]],
) -> bytes:
    """serve(until_return: i32) -> i64: answer frames until RETURN (or stdin closes)."""
    op, length, slot, result, prefetch, out_ptr, out_len = 1, 2, 3, 4, 5, 6, 7
    call_arms = []
    for index, ftype in served:
        args = b"".join(_load_arg(p, _IN_ARGS + 8 * i) for i, p in enumerate(ftype.params))
        call_arms.append(args + _call(index) + _to_i64(ftype.results) + _local_set(result))
    get_arms = []
    set_arms = []
    for index, valtype, mutable in globals_:
        get = b"\x23" + _encode_uleb(index) + (_op(0xAD) if valtype == _I32 else b"")
        get_arms.append(get + _local_set(result))
        if mutable:
            value = _scratch(0) + (_load32(36) if valtype == _I32 else _load64(36))
            set_arms.append(value + b"\x24" + _encode_uleb(index))
        else:
            set_arms.append(b"")
    bad = _exit(ix, EXIT_BAD_FRAME)

    def is_op(code: int) -> bytes:
        return _local_get(op) + _i32(code) + _op(0x46) + _IF

    def read(offset: int, size: bytes) -> bytes:
        return _scratch(offset) + size + _call(ix.read_exact)

    call_case = b"".join(
        (
            is_op(OP_CALL),
            _local_get(length),
            _i32(_MAX_CALL_PAYLOAD),
            _op(0x4B),
            _IF,
            bad,
            _END,
            read(_IN_PAYLOAD, _local_get(length)),
            _scratch(0),
            _load32(_IN_PAYLOAD),
            _local_set(slot),
            _scratch(0),
            _load32(_IN_PAYLOAD + 4),
            _local_set(prefetch),
            b"\x42\x00",
            _local_set(result),
            _dispatch(_local_get(slot), call_arms, bad),
            _scratch(0),
            _local_get(result),
            _store64(_OUT_PAYLOAD),
            _scratch(0),
            _MEMORY_SIZE,
            _store32(_OUT_PAYLOAD + 8),
            _i32(0),
            _local_set(out_len),
            _local_get(prefetch),
            _IF,
            _local_get(result),
            b"\x42\x20",
            _op(0x88, 0xA7),
            _local_set(out_ptr),
            # out_len <= prefetch and out_ptr + out_len <= pages * 65536 (in i64)
            _local_get(result),
            _op(0xA7),
            _local_get(prefetch),
            _op(0x4D),
            _local_get(out_ptr),
            _op(0xAD),
            _local_get(result),
            _op(0xA7, 0xAD, 0x7C),
            _MEMORY_SIZE,
            _op(0xAD),
            b"\x42\x10",
            _op(0x86, 0x58, 0x71),
            _IF,
            _local_get(result),
            _op(0xA7),
            _local_set(out_len),
            _END,
            _END,
            _i32(OP_RESULT),
            _i32(12),
            _local_get(out_len),
            _op(0x6A),
            _call(ix.header),
            _scratch(_OUT_PAYLOAD),
            _i32(12),
            _call(ix.write_all),
            _local_get(out_ptr),
            _local_get(out_len),
            _call(ix.write_all),
            _br(1),
            _END,
        )
    )
    return_case = b"".join(
        (
            is_op(OP_RETURN),
            read(_IN_PAYLOAD, _i32(8)),
            _scratch(0),
            _load64(_IN_PAYLOAD),
            b"\x0f",
            _END,
        )
    )
    write_case = b"".join(
        (
            is_op(OP_WRITE),
            read(_IN_PAYLOAD, _i32(4)),
            _scratch(0),
            _load32(_IN_PAYLOAD),
            _local_get(length),
            _i32(4),
            _op(0x6B),
            _call(ix.read_exact),
            _br(1),
            _END,
        )
    )
    read_case = b"".join(
        (
            is_op(OP_READ),
            read(_IN_PAYLOAD, _i32(8)),
            _i32(OP_DATA),
            _scratch(0),
            _load32(_IN_PAYLOAD + 4),
            _call(ix.header),
            _scratch(0),
            _load32(_IN_PAYLOAD),
            _scratch(0),
            _load32(_IN_PAYLOAD + 4),
            _call(ix.write_all),
            _br(1),
            _END,
        )
    )
    get_case = b"".join(
        (
            is_op(OP_GLOBAL_GET),
            read(_IN_PAYLOAD, _i32(4)),
            b"\x42\x00",
            _local_set(result),
            _dispatch(_scratch(0) + _load32(_IN_PAYLOAD), get_arms, bad),
            _scratch(0),
            _local_get(result),
            _store64(_OUT_PAYLOAD),
            _i32(OP_VALUE),
            _i32(8),
            _call(ix.header),
            _scratch(_OUT_PAYLOAD),
            _i32(8),
            _call(ix.write_all),
            _br(1),
            _END,
        )
    )
    scratch_case = b"".join(
        (
            is_op(OP_SET_SCRATCH),
            read(_IN_PAYLOAD, _i32(4)),
            _scratch(0),
            _load32(_IN_PAYLOAD),
            b"\x24" + _encode_uleb(ix.scratch),
            _br(1),
            _END,
        )
    )
    set_case = b"".join(
        (
            is_op(OP_GLOBAL_SET),
            read(_IN_PAYLOAD, _i32(12)),
            _dispatch(_scratch(0) + _load32(_IN_PAYLOAD), set_arms, bad),
            _br(1),
            _END,
        )
    )
    code = b"".join(
        (
            _LOOP,
            read(_IN_HEADER, _i32(8)),
            _scratch(0),
            _load32(_IN_HEADER),
            _local_set(op),
            _scratch(0),
            _load32(_IN_HEADER + 4),
            _local_set(length),
            call_case,
            return_case,
            write_case,
            read_case,
            get_case,
            set_case,
            scratch_case,
            bad,
            _br(0),
            _END,
            _op(0x00),
        )
    )
    return _body([(3, _I32), (1, _I64), (3, _I32)], code)


def _report_function(ix: _Indices) -> bytes:
    """report(slot, value): a REPORT frame with a reported global's new value (i32 -> ())."""
    code = b"".join(
        (
            _scratch(0),
            _IF,
            _scratch(0),
            _local_get(0),
            _store32(_REPORT),
            _scratch(0),
            _MEMORY_SIZE,
            _store32(_REPORT + 4),
            _scratch(0),
            _local_get(1),
            _op(0xAC),
            _store64(_REPORT + 8),
            _i32(OP_REPORT),
            _i32(16),
            _call(ix.header),
            _scratch(_REPORT),
            _i32(16),
            _call(ix.write_all),
            _END,
        )
    )
    return _body([], code)


def _setter_function(ix: _Indices, global_index: int, slot: int) -> bytes:
    """The reported global's ``global.set``, then its report: (i32) -> ()."""
    code = _local_get(0) + b"\x24" + _encode_uleb(global_index)
    code += _i32(slot) + _local_get(0) + _call(ix.report)
    return _body([], code)


def _start_function(
    ix: _Indices, alloc: int, initialize: int | None, start: int | None = None
) -> bytes:
    """The command's ``_start``: the module's start function when it was moved here, then
    ``_initialize``, the scratch buffer, hello, and serving until stdin closes."""
    code = b"".join(
        (
            b"" if start is None else _call(start),
            b"" if initialize is None else _call(initialize),
            _i32(SCRATCH_BYTES),
            _call(alloc),
            b"\x24" + _encode_uleb(ix.scratch),
            _scratch(0),
            _op(0x45),
            _IF,
            _exit(ix, EXIT_NO_SCRATCH),
            _END,
            _hello_and_serve(ix),
        )
    )
    return _body([], code)


def _hello_and_serve(ix: _Indices) -> bytes:
    """The end of every ``_start``, once the scratch buffer is set: hello (the memory's size in
    pages, the scratch buffer's address), then serving until stdin closes."""
    return b"".join(
        (
            _scratch(0),
            _MEMORY_SIZE,
            _store32(_OUT_PAYLOAD),
            _scratch(0),
            _scratch(0),
            _store32(_OUT_PAYLOAD + 4),
            _i32(OP_HELLO),
            _i32(8),
            _call(ix.header),
            _scratch(_OUT_PAYLOAD),
            _i32(8),
            _call(ix.write_all),
            _i32(0),
            _call(ix.serve),
            _op(0x1A),
        )
    )


def _grown_start_function(ix: _Indices, initialize: int | None, start: int | None = None) -> bytes:
    """The ``_start`` of a module without ``wp_alloc`` (an Extism plugin): the scratch buffer is
    a page the serving loop grows for itself, before the module's moved start function and
    ``_initialize`` run (which may already call the host). A refused grow exits with
    ``EXIT_NO_SCRATCH``."""
    scratch = b"\x23" + _encode_uleb(ix.scratch)
    code = b"".join(
        (
            _i32(1),
            b"\x40\x00",  # memory.grow: the old size in pages, or -1
            b"\x24" + _encode_uleb(ix.scratch),
            scratch,
            _i32(-1),
            _op(0x46),  # i32.eq
            _IF,
            _exit(ix, EXIT_NO_SCRATCH),
            _END,
            scratch,
            _i32(16),
            _op(0x74),  # i32.shl
            _i32(16),  # 16 bytes into the page: never at address 0, which the loop treats as none
            _op(0x6A),  # i32.add
            b"\x24" + _encode_uleb(ix.scratch),
            b"" if start is None else _call(start),
            b"" if initialize is None else _call(initialize),
            _hello_and_serve(ix),
        )
    )
    return _body([], code)


_BORROWED = 8
"""Where the meter's host call borrows memory for its frames before the scratch buffer exists."""
_BORROWED_WORDS = (_OUT_PAYLOAD + 16 + 7) // 8
"""The words it borrows (saved in locals, restored after): frame headers and one argument."""


def _host_call_shim(ix: _Indices, slot: int, ftype: _FuncType, *, meter: bool = False) -> bytes:
    """A host import made a HOSTCALL frame, then serving until RETURN.

    Before the serving loop has its scratch buffer (a start function, ``_initialize``, the
    ``wp_alloc`` that makes it) a host call traps, except the meter's (``meter``: a metered
    module calls it from anywhere, its first charge included): it borrows
    ``_BORROWED_WORDS`` words of memory at ``_BORROWED`` for its frames, keeping them in locals
    and restoring them before it returns (the host answers the meter with ``RETURN`` alone)."""
    count = len(ftype.params)
    args = b"".join(
        _scratch(0)
        + _local_get(i)
        + (_op(0xAC) if param == _I32 else b"")
        + _store64(_OUT_PAYLOAD + 8 + 8 * i)
        for i, param in enumerate(ftype.params)
    )
    if not ftype.results:
        finish = _op(0x1A)
    elif ftype.results[0] == _I32:
        finish = _op(0xA7)
    else:
        finish = b""
    core = b"".join(
        (
            _scratch(0),
            _i32(slot),
            _store32(_OUT_PAYLOAD),
            _scratch(0),
            _MEMORY_SIZE,
            _store32(_OUT_PAYLOAD + 4),
            args,
            _i32(OP_HOSTCALL),
            _i32(8 + 8 * count),
            _call(ix.header),
            _scratch(_OUT_PAYLOAD),
            _i32(8 + 8 * count),
            _call(ix.write_all),
            _i32(1),
            _call(ix.serve),
            finish,
        )
    )
    if not meter:
        return _body([], _scratch(0) + _op(0x45) + _IF + _op(0x00) + _END + core)
    result = count
    saved = range(count + 1, count + 1 + _BORROWED_WORDS)
    set_scratch = b"\x24" + _encode_uleb(ix.scratch)
    borrowing = b"".join(
        (
            _scratch(0),
            _op(0x45),
            _IF,
            _MEMORY_SIZE,
            _op(0x45),
            _IF,
            _op(0x00),
            _END,
            *(
                _i32(0) + _load64(_BORROWED + 8 * k) + _local_set(local)
                for k, local in enumerate(saved)
            ),
            _i32(_BORROWED),
            set_scratch,
            core,
            _local_set(result),
            *(
                _i32(0) + _local_get(local) + _store64(_BORROWED + 8 * k)
                for k, local in enumerate(saved)
            ),
            _i32(0),
            set_scratch,
            _local_get(result),
            b"\x0f",
            _END,
        )
    )
    return _body([(1 + _BORROWED_WORDS, _I64)], borrowing + core)


def _fd_write_shim(ix: _Indices) -> bytes:
    """The guest's fd_write: descriptors 1 and 2 become LOG frames."""
    fd, iovs, count, written = 0, 1, 2, 3
    total, i = 4, 5

    def iov_field(offset: int) -> bytes:
        return _local_get(iovs) + _local_get(i) + _i32(8) + _op(0x6C, 0x6A) + _load32(offset)

    def each(work: bytes) -> bytes:
        return b"".join(
            (
                _i32(0),
                _local_set(i),
                _BLOCK,
                _LOOP,
                _local_get(i),
                _local_get(count),
                _op(0x4F),  # i32.ge_u
                b"\x0d\x01",
                work,
                _local_get(i),
                _i32(1),
                _op(0x6A),
                _local_set(i),
                _br(0),
                _END,
                _END,
            )
        )

    code = b"".join(
        (
            _local_get(fd),
            _i32(1),
            _op(0x47),
            _local_get(fd),
            _i32(2),
            _op(0x47),
            _op(0x71),
            _IF,
            _local_get(fd),
            _local_get(iovs),
            _local_get(count),
            _local_get(written),
            _call(ix.fd_write),
            b"\x0f",
            _END,
            _i32(0),
            _local_set(total),
            each(_local_get(total) + iov_field(4) + _op(0x6A) + _local_set(total)),
            # Before the serving loop has its scratch buffer (a start function printing), the
            # output is dropped.
            _scratch(0),
            _IF,
            _i32(OP_LOG),
            _local_get(total),
            _i32(4),
            _op(0x6A),
            _call(ix.header),
            _scratch(0),
            _local_get(fd),
            _store32(_OUT_PAYLOAD),
            _scratch(_OUT_PAYLOAD),
            _i32(4),
            _call(ix.write_all),
            each(iov_field(0) + iov_field(4) + _call(ix.write_all)),
            _END,
            _local_get(written),
            _local_get(total),
            _store32(0),
            _i32(0),
        )
    )
    return _body([(2, _I32)], code)


def _fd_read_shim(ix: _Indices) -> bytes:
    """The guest's fd_read: descriptor 0 (the frames) reads as empty."""
    code = b"".join(
        (
            _local_get(0),
            _op(0x45),
            _IF,
            _local_get(3),
            _i32(0),
            _store32(0),
            _i32(0),
            b"\x0f",
            _END,
            _local_get(0),
            _local_get(1),
            _local_get(2),
            _local_get(3),
            _call(ix.fd_read),
        )
    )
    return _body([], code)


# --------------------------------------------------------------------------
# The wrapper


def wrap_command(wasm: bytes, exports: Sequence[str] | None = None) -> CommandModule:
    """The module as a WASI command serving calls of its exports over stdin/stdout.

    :param exports: the exported functions to serve (default: every exported function whose
        parameters and result are integers, at most :data:`MAX_PARAMS` parameters).
    :raises ModuleError: naming the reason when the module cannot be wrapped.
    """
    try:
        with _WRAP_LOCK:
            return _wrap(bytes(wasm), None if exports is None else frozenset(exports))
    except _Unsupported:
        raise _refusal(
            "malformed", "the module uses a type the wrapper does not read", None
        ) from None
    except _Refused as refused:
        raise _refusal(refused.reason, refused.text, refused.offset) from None
    except WasmBinaryError as exc:
        raise _refusal("malformed", exc.message, exc.offset) from None
    except IndexError:
        raise _refusal("malformed", "the module ends in the middle of an item", None) from None


def _wrap(data: bytes, wanted: frozenset[str] | None) -> CommandModule:  # noqa: PLR0915
    sections = _split_sections(data)
    type_section = _find(sections, _SEC_TYPE)
    types = _types(data, type_section)
    imports, imported_memory = _imports(data, _find(sections, _SEC_IMPORT))
    function_types = _u32_vector(data, _find(sections, _SEC_FUNCTION))
    export_section = _find(sections, _SEC_EXPORT)
    exports = _exports(data, export_section)
    global_section = _find(sections, _SEC_GLOBAL)
    defined_globals = _global_types(data, global_section)

    by_name = {e.name: e for e in exports}
    alloc_export = by_name.get(SCRATCH_ALLOCATOR)
    memory = by_name.get("memory")
    memory_section = _find(sections, _SEC_MEMORY)
    if imported_memory is not None:
        if memory_section is not None:
            raise _Refused("unsupported-import", "the module imports a memory and defines others")
        if memory is not None and (memory.kind != _EXTERN_MEMORY or memory.index != 0):
            raise _Refused("no-memory-export", "the export 'memory' is not the module's memory")
    elif memory is None and memory_section is None and alloc_export is None:
        # No memory at all (a tiny Extism plugin): the command defines one for the serving
        # loop, with room for its scratch page only (the plugin has no memory instructions).
        imported_memory = b"\x01\x00\x01"
    elif memory is None or memory.kind != _EXTERN_MEMORY or memory.index != 0:
        raise _Refused("no-memory-export", "the module does not export its memory as 'memory'")

    def type_of(function: int) -> _FuncType:
        index = imports[function].type_index if function < len(imports) else None
        if index is None:
            index = function_types[function - len(imports)]
        if index >= len(types):
            raise _Refused("malformed", f"function {function} has an unknown type")
        return types[index]

    start = by_name.get("_start")
    if start is not None and (
        start.kind != _EXTERN_FUNC or type_of(start.index) != _FuncType(b"", b"")
    ):
        raise _Refused(
            "start-export-type", "the module exports '_start' with a type other than () -> ()"
        )
    alloc = by_name.get(SCRATCH_ALLOCATOR)
    if alloc is not None and (
        alloc.kind != _EXTERN_FUNC
        or type_of(alloc.index) != _FuncType(bytes([_I32]), bytes([_I32]))
    ):
        raise _Refused(
            "no-scratch-allocator",
            f"the module exports {SCRATCH_ALLOCATOR} with a type other than (i32) -> i32, the "
            "serving loop's scratch allocator",
        )

    # Imports: WASI ones pass through (fd_read and fd_write through shims), others are host calls.
    passed: list[_Import] = []
    shimmed: list[tuple[_Import, str]] = []  # (import, "host" | "fd_write" | "fd_read")
    host_imports: list[tuple[str, str, FuncSignature]] = []
    for item in imports:
        if item.type_index >= len(types):
            raise _Refused("malformed", "an import has an unknown type", item.offset)
        ftype = types[item.type_index]
        if item.module == WASI_MODULE:
            if item.name in ("fd_write", "fd_read"):
                if ftype != _FuncType(bytes([_I32] * 4), bytes([_I32])):
                    raise _Refused(
                        "unsupported-import",
                        f"{WASI_MODULE}.{item.name} is imported with the wrong type",
                        item.offset,
                    )
                shimmed.append((item, item.name))
            else:
                passed.append(item)
            continue
        if not ftype.integer_only() or len(ftype.params) > MAX_PARAMS or len(ftype.results) > 1:
            raise _Refused(
                "unsupported-import",
                f"the import {item.module}.{item.name} has the type "
                f"{ftype.signature()}: a host call carries at most {MAX_PARAMS} integer "
                "parameters and one integer result",
                item.offset,
            )
        shimmed.append((item, "host"))
        host_imports.append((item.module, item.name, ftype.signature()))
    # A module rewritten by the metering pass: its meter may be called before the scratch
    # buffer exists (see _host_call_shim).
    metered = any(
        module == METER_MODULE and name == METER_FUNCTION and signature == METER_SIGNATURE
        for module, name, signature in host_imports
    )

    rw_type = len(types)
    exit_type = rw_type + 1
    pair_type = rw_type + 2
    serve_type = rw_type + 3
    void_type = rw_type + 4
    new_types = [
        _FuncType(bytes([_I32] * 4), bytes([_I32])),
        _FuncType(bytes([_I32]), b""),
        _FuncType(bytes([_I32, _I32]), b""),
        _FuncType(bytes([_I32]), bytes([_I64])),
        _FuncType(b"", b""),
    ]
    n_imports = len(passed) + 3
    n_defined = len(function_types)
    mapping = [0] * (len(imports) + n_defined)
    passed_index = {id(item): i for i, item in enumerate(passed)}
    shim_base = n_imports + n_defined
    shim_of: dict[int, int] = {}
    for position, (item, _) in enumerate(shimmed):
        shim_of[id(item)] = shim_base + position
    for old, item in enumerate(imports):
        mapping[old] = passed_index[id(item)] if id(item) in passed_index else shim_of[id(item)]
    for j in range(n_defined):
        mapping[len(imports) + j] = n_imports + j
    helpers = shim_base + len(shimmed)
    _SCRATCH_GLOBAL[0] = len(defined_globals)
    ix = _Indices(
        scratch=len(defined_globals),
        fd_read=len(passed),
        fd_write=len(passed) + 1,
        proc_exit=len(passed) + 2,
        read_exact=helpers,
        write_all=helpers + 1,
        header=helpers + 2,
        serve=helpers + 3,
        report=helpers + 5,
    )
    start_index = helpers + 4

    # What the serving loop offers.
    served: list[tuple[str, int, _FuncType]] = []
    global_slots: list[tuple[str, str, bool]] = []
    global_arms: list[tuple[int, int, bool]] = []
    for export in exports:
        if export.kind == _EXTERN_FUNC and export.name not in ("_start", "_initialize"):
            if wanted is not None and export.name not in wanted:
                continue
            ftype = type_of(export.index)
            if ftype.integer_only() and len(ftype.params) <= MAX_PARAMS and len(ftype.results) <= 1:
                served.append((export.name, mapping[export.index], ftype))
        elif export.kind == _EXTERN_GLOBAL and export.index < len(defined_globals):
            valtype, mutable, _, _ = defined_globals[export.index]
            if valtype in _INTEGER:
                global_slots.append((export.name, _INTEGER[valtype], mutable))
                global_arms.append((export.index, valtype, mutable))
    # Globals whose last value the host must know after a trap: the grow probe (reported at
    # each set) and the call depth (reported when its bound is passed).
    slot_of = {name: slot for slot, (name, _, _) in enumerate(global_slots)}
    setters: dict[int, int] = {}
    setter_bodies: list[bytes] = []
    probe = by_name.get(GROW_PROBE_EXPORT)
    if (
        probe is not None
        and probe.name in slot_of
        and global_slots[slot_of[probe.name]][1:]
        == (
            "i32",
            True,
        )
    ):
        setters[probe.index] = helpers + 6
        setter_bodies.append(_setter_function(ix, probe.index, slot_of[probe.name]))
    depth_check = None
    code_section = _find(sections, _SEC_CODE)
    depth = by_name.get(DEPTH_EXPORT)
    if depth is not None and depth.name in slot_of:
        get = b"\x23" + _encode_uleb(depth.index)
        put = b"\x24" + _encode_uleb(depth.index)
        bound = _depth_bound(data, function_types, len(imports), code_section, get, put)
        if bound is not None:
            head = get + _i32(1) + _op(0x6A) + put + get + _i32(bound) + _op(0x4B) + _IF
            report = _i32(slot_of[depth.name]) + get + _call(ix.report)
            depth_check = (head + b"\x00\x0b", head + report + b"\x00\x0b")
    initialize = by_name.get("_initialize")
    initialize_index = (
        mapping[initialize.index]
        if initialize is not None
        and initialize.kind == _EXTERN_FUNC
        and type_of(initialize.index) == _FuncType(b"", b"")
        else None
    )

    # Sections.
    payloads: dict[int, bytes] = {}
    payloads[_SEC_TYPE] = _encode_uleb(len(types) + len(new_types)) + b"".join(
        b"\x60" + _encode_uleb(len(t.params)) + t.params + _encode_uleb(len(t.results)) + t.results
        for t in (*types, *new_types)
    )
    import_entries = [
        _encode_name(item.module)
        + _encode_name(item.name)
        + b"\x00"
        + _encode_uleb(item.type_index)
        for item in passed
    ]
    for name, type_index in (("fd_read", rw_type), ("fd_write", rw_type), ("proc_exit", exit_type)):
        import_entries.append(
            _encode_name(WASI_MODULE) + _encode_name(name) + b"\x00" + _encode_uleb(type_index)
        )
    payloads[_SEC_IMPORT] = _encode_uleb(len(import_entries)) + b"".join(import_entries)
    new_function_types = [
        *function_types,
        *(item.type_index for item, _ in shimmed),
        pair_type,
        pair_type,
        pair_type,
        serve_type,
        void_type,
        pair_type,
        *(exit_type for _ in setter_bodies),
    ]
    payloads[_SEC_FUNCTION] = _encode_uleb(len(new_function_types)) + b"".join(
        _encode_uleb(t) for t in new_function_types
    )
    scratch_global = bytes([_I32, 1]) + _i32(0) + _END
    if global_section is None:
        payloads[_SEC_GLOBAL] = b"\x01" + scratch_global
    else:
        payloads[_SEC_GLOBAL] = _remap_globals(data, global_section, mapping, scratch_global)
    export_entries = []
    for export in exports:
        if export.name in ("_start", "_initialize"):
            continue
        index = mapping[export.index] if export.kind == _EXTERN_FUNC else export.index
        export_entries.append(
            _encode_name(export.name) + bytes([export.kind]) + _encode_uleb(index)
        )
    export_entries.append(_encode_name("_start") + b"\x00" + _encode_uleb(start_index))
    if imported_memory is not None:
        payloads[_SEC_MEMORY] = b"\x01" + imported_memory
        if memory is None:
            export_entries.append(_encode_name("memory") + bytes([_EXTERN_MEMORY, 0]))
    payloads[_SEC_EXPORT] = _encode_uleb(len(export_entries)) + b"".join(export_entries)
    start_section = _find(sections, _SEC_START)
    moved_start: int | None = None
    if start_section is not None:
        reader = _Reader(data, start_section.body, start_section.end)
        if metered:
            # The meter's first host call would come from the start function, which runs
            # before WASI is set up (the SDK panics on a write there): _start calls it first.
            moved_start = mapping[reader.u32()]
        else:
            payloads[_SEC_START] = _encode_uleb(mapping[reader.u32()])
    element_section = _find(sections, _SEC_ELEMENT)
    if element_section is not None:
        payloads[_SEC_ELEMENT] = _remap_elements(data, element_section, mapping)
    code_section = _find(sections, _SEC_CODE)
    bodies = (
        []
        if code_section is None
        else _remap_code(data, code_section, mapping, setters, depth_check)
    )
    if len(bodies) != n_defined:
        raise _Refused("malformed", "function and code section counts differ")
    sized = [_encode_uleb(len(body)) + body for body in bodies]
    host_slot = 0
    for item, role in shimmed:
        if role == "fd_write":
            sized.append(_fd_write_shim(ix))
        elif role == "fd_read":
            sized.append(_fd_read_shim(ix))
        else:
            ftype = types[item.type_index]
            meter = metered and (item.module, item.name) == (METER_MODULE, METER_FUNCTION)
            sized.append(_host_call_shim(ix, host_slot, ftype, meter=meter))
            host_slot += 1
    sized.append(_stream_function(ix, reading=True))
    sized.append(_stream_function(ix, reading=False))
    sized.append(_header_function(ix))
    sized.append(_serve_function(ix, [(index, ftype) for _, index, ftype in served], global_arms))
    if alloc is None:
        sized.append(_grown_start_function(ix, initialize_index, moved_start))
    else:
        sized.append(_start_function(ix, mapping[alloc.index], initialize_index, moved_start))
    sized.append(_report_function(ix))
    sized.extend(setter_bodies)
    payloads[_SEC_CODE] = _encode_uleb(len(sized)) + b"".join(sized)

    names = [s for s in sections if s.id == _SEC_CUSTOM and _custom_name(data, s) == b"name"]
    kept = [
        s
        for s in sections
        if s not in names and not (moved_start is not None and s.id == _SEC_START)
    ]
    wrapped = _assemble(data, kept, payloads)
    if names:
        wrapped += _renamed(data, names[0], mapping)
    return WasiCommand(
        wasm=wrapped,
        functions=tuple((name, ftype.signature()) for name, _, ftype in served),
        globals=tuple(global_slots),
        host_imports=tuple(host_imports),
    )


def _depth_bound(
    data: bytes,
    function_types: list[int],
    imported: int,
    section: _Section | None,
    get: bytes,
    put: bytes,
) -> int | None:
    """The bound of the call-depth check the rewriter put at the start of the first body."""
    if section is None or not function_types:
        return None
    reader = _Reader(data, section.body, section.end)
    reader.u32()
    size = reader.u32()
    code = _skip_locals(data, reader.pos, reader.pos + size)
    head = get + _i32(1) + _op(0x6A) + put + get + b"\x41"
    if data[code : code + len(head)] != head:
        return None
    value = 0
    shift = 0
    pos = code + len(head)
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if byte & 0x40:
        value -= 1 << shift
    return value


_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else ord("?") for b in range(256))


def _renamed(data: bytes, section: _Section, mapping: list[int]) -> bytes:
    """The ``name`` section with its function names renumbered (other subsections dropped: they
    are keyed by function index too); empty when it cannot be read."""
    try:
        reader = _Reader(data, section.body, section.end)
        reader.name()
        kept = []
        while reader.pos < reader.end:
            kind = reader.byte()
            size = reader.u32()
            end = reader.pos + size
            if kind == 1:
                names = []
                for _ in range(reader.u32()):
                    index = reader.u32()
                    name = reader.name()
                    if index < len(mapping):
                        # The SDK prints a trap's frames to the host's stderr: printable
                        # ASCII only, so that no name carries terminal escapes there.
                        names.append((mapping[index], name.translate(_PRINTABLE)))
                names.sort()
                content = _encode_uleb(len(names)) + b"".join(
                    _encode_uleb(i) + _encode_uleb(len(n)) + n for i, n in names
                )
                kept.append(b"\x01" + _encode_uleb(len(content)) + content)
            reader.pos = end
    except (WasmBinaryError, IndexError):
        return b""
    payload = _encode_name("name") + b"".join(kept)
    return b"\x00" + _encode_uleb(len(payload)) + payload


def _custom_name(data: bytes, section: _Section) -> bytes:
    reader = _Reader(data, section.body, section.end)
    return reader.name()


_LE64 = struct.Struct("<q")


register_command_wrapper(wrap_command)
