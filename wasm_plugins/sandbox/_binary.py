"""WebAssembly binary rewriting: clamp memory and table maxima, instrument ``memory.grow``, and
bound the call depth (:func:`bound_call_depth`, for engines whose own stack guard is costly).

The sandbox runs this over a module (already validated) before compiling it,
so that the memory and table limits are part of the module itself and hold on
every engine, and so that a refused ``memory.grow`` on memory 0 leaves the
requested page delta in an exported global the host can read afterwards.
A limit covers all of a module's memories (or tables) together: the maxima
are clamped so that their sum stays within it.

Only the standard library and ``attrs`` are used.  Every malformation this
module notices is reported as :class:`WasmBinaryError`; it never lets an
``IndexError`` or similar escape, whatever the input bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import NoReturn

import attrs

__all__ = [
    "DEPTH_EXPORT",
    "GROW_PROBE_EXPORT",
    "PAGE_SIZE",
    "REWRITER_VERSION",
    "MemoryInfo",
    "PreparedModule",
    "TableInfo",
    "WasmBinaryError",
    "bound_call_depth",
    "prepare_module",
    "read_memories",
    "read_tables",
]

PAGE_SIZE = 65536
GROW_PROBE_EXPORT = "__wasm_plugins_grow_failed"
REWRITER_VERSION = 3
"""Changes whenever the rewrite's output for the same input could change: the compiled-module
cache keys on it (it hashes the module before the rewrite, so an entry must not outlive a
rewriter that would now refuse or rewrite differently what it was made from)."""

_MAGIC = b"\x00asm"
_VERSION = b"\x01\x00\x00\x00"
_DEFAULT_PAGE_LOG2 = 16

_SEC_CUSTOM = 0
_SEC_TYPE = 1
_SEC_IMPORT = 2
_SEC_FUNCTION = 3
_SEC_TABLE = 4
_SEC_MEMORY = 5
_SEC_GLOBAL = 6
_SEC_EXPORT = 7
_SEC_CODE = 10

# Position of each known section id in the mandated order.  The tag section
# (13) and data-count section (12) were added later, hence the non-monotonic ids.
_SECTION_RANK: dict[int, int] = {
    1: 1,
    2: 2,
    3: 3,
    4: 4,
    5: 5,
    13: 6,
    6: 7,
    7: 8,
    8: 9,
    9: 10,
    12: 11,
    10: 12,
    11: 13,
}

_LIMITS_HAS_MAX = 0x01
_LIMITS_SHARED = 0x02
_LIMITS_64 = 0x04
_LIMITS_PAGE_SIZE = 0x08

# Abstract heap types (MVP, exceptions, GC, stack switching).  The same bytes
# on their own are the nullable reference-type shorthands, e.g. 0x70 funcref.
_ABSTRACT_HEAPTYPES = frozenset(
    {0x70, 0x6F, 0x6E, 0x6D, 0x6C, 0x6B, 0x6A, 0x69, 0x71, 0x72, 0x73, 0x74, 0x68, 0x75}
)
# Value types that fit in one byte: i32, i64, f32, f64, v128 and the shorthands.
_SHORT_VALTYPES = _ABSTRACT_HEAPTYPES | {0x7F, 0x7E, 0x7D, 0x7C, 0x7B}
_REF_PREFIXES = (0x63, 0x64)

_OP_CALL = 0x10
_OP_END = 0x0B
_OP_IF = 0x04
_OP_LOCAL_GET = 0x20
_OP_LOCAL_TEE = 0x22
_OP_GLOBAL_SET = 0x24
_OP_MEMORY_GROW = 0x40
_OP_I32_CONST = 0x41
_OP_I32_EQ = 0x46
_BLOCK_EMPTY = 0x40
_I32 = 0x7F
_FUNC_FORM = 0x60
_EXPORT_GLOBAL = 0x03
_MUTABLE = 0x01


class WasmBinaryError(Exception):
    """The bytes are not a well-formed module (message, offset)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.message = message
        self.offset = offset

    def __reduce__(self) -> tuple[type[WasmBinaryError], tuple[str, int]]:
        # The default reduction would call __init__ with the formatted text only.
        return (type(self), (self.message, self.offset))


class _Unsupported(Exception):
    """Internal: an encoding this module does not understand well enough to rewrite."""


@attrs.frozen
class MemoryInfo:
    """One linear memory as declared by the original module."""

    index: int
    imported: bool
    initial_bytes: int
    maximum_bytes: int | None
    memory64: bool
    shared: bool


@attrs.frozen
class TableInfo:
    """One table defined by the original module (imported tables are not counted)."""

    index: int
    initial_elements: int
    maximum_elements: int | None


@attrs.frozen
class PreparedModule:
    """The rewritten module and what the rewrite found and did."""

    wasm: bytes
    memories: tuple[MemoryInfo, ...]
    grow_probe: str | None
    grow_sites: int
    tables: tuple[TableInfo, ...] = ()


# --------------------------------------------------------------------------
# Low-level decoding


class _Reader:
    """Bounded cursor for the structural parts of a module (not code bodies)."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def fail(self, message: str, offset: int | None = None) -> NoReturn:
        raise WasmBinaryError(message, self.pos if offset is None else offset)

    def byte(self) -> int:
        if self.pos >= self.end:
            self.fail("unexpected end of data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def skip(self, count: int) -> None:
        if count > self.end - self.pos:
            self.fail("length runs past the end of its section")
        self.pos += count

    def uleb(self, bits: int) -> int:
        start = self.pos
        value, self.pos = _read_uleb(self.data, self.pos, self.end, bits)
        if value < 0:
            self.fail(_LEB_ERRORS[value], start)
        return value

    def u32(self) -> int:
        return self.uleb(32)

    def u64(self) -> int:
        return self.uleb(64)

    def name(self) -> bytes:
        length = self.u32()
        start = self.pos
        self.skip(length)
        return self.data[start : self.pos]


_LEB_TRUNCATED = -1
_LEB_TOO_LONG = -2
_LEB_TOO_LARGE = -3
_LEB_ERRORS = {
    _LEB_TRUNCATED: "unexpected end of data in integer",
    _LEB_TOO_LONG: "integer representation too long",
    _LEB_TOO_LARGE: "integer too large",
}


def _read_uleb(data: bytes, pos: int, end: int, bits: int) -> tuple[int, int]:
    """Decode an unsigned LEB128; a negative value is one of the _LEB_* errors."""
    result = 0
    shift = 0
    # Bounding the length keeps a run of continuation bytes from building a huge int.
    for _ in range((bits + 6) // 7):
        if pos >= end:
            return _LEB_TRUNCATED, pos
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >> bits:
                return _LEB_TOO_LARGE, pos
            return result, pos
        shift += 7
    return _LEB_TOO_LONG, pos


def _read_s33(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a signed 33-bit LEB128; the returned position is -1 when malformed."""
    result = 0
    shift = 0
    for _ in range(5):
        if pos >= end:
            return 0, -1
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte & 0x40:
                result -= 1 << shift
            if not -(1 << 32) <= result < (1 << 32):
                return 0, -1
            return result, pos
    return 0, -1


def _encode_uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_name(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _encode_uleb(len(raw)) + raw


# --------------------------------------------------------------------------
# Module structure


@attrs.frozen
class _Section:
    id: int
    start: int  # offset of the section id byte
    body: int  # offset of the payload
    end: int  # offset just past the payload


@attrs.frozen
class _Limits:
    start: int  # byte range of the whole encoded limits (flags .. page size)
    end: int
    flags: int
    minimum: int
    maximum: int | None
    page_log2: int


@attrs.frozen
class _Imports:
    functions: int
    globals: int
    memories: tuple[_Limits, ...]
    tables: int = 0


def _split_sections(data: bytes) -> list[_Section]:
    if data[:4] != _MAGIC:
        raise WasmBinaryError("not a WebAssembly module (bad magic number)", 0)
    if data[4:8] != _VERSION:
        raise WasmBinaryError("unsupported WebAssembly binary version", 4)
    reader = _Reader(data, 8, len(data))
    sections: list[_Section] = []
    last_rank = 0
    while reader.pos < reader.end:
        start = reader.pos
        section_id = reader.byte()
        size = reader.u32()
        body = reader.pos
        if size > reader.end - body:
            raise WasmBinaryError("section size runs past the end of the module", body)
        if section_id == _SEC_CUSTOM:
            # A custom section must at least hold its own name.
            _Reader(data, body, body + size).name()
        else:
            rank = _SECTION_RANK.get(section_id)
            if rank is None:
                raise WasmBinaryError(f"unknown section id {section_id}", start)
            if rank <= last_rank:
                raise WasmBinaryError(
                    f"section id {section_id} is duplicated or out of order", start
                )
            last_rank = rank
        sections.append(_Section(section_id, start, body, body + size))
        reader.pos = body + size
    return sections


def _find(sections: list[_Section], section_id: int) -> _Section | None:
    for section in sections:
        if section.id == section_id:
            return section
    return None


def _read_limits(reader: _Reader, *, memory: bool) -> _Limits:
    start = reader.pos
    flags = reader.byte()
    allowed = 0x0F if memory else 0x07
    if flags & ~allowed:
        reader.fail(f"invalid limits flags 0x{flags:02x}", start)
    read = reader.u64 if flags & _LIMITS_64 else reader.u32
    minimum = read()
    maximum = read() if flags & _LIMITS_HAS_MAX else None
    page_log2 = _DEFAULT_PAGE_LOG2
    if flags & _LIMITS_PAGE_SIZE:
        offset = reader.pos
        page_log2 = reader.u32()
        # Anything larger is meaningless and would make 1 << page_log2 enormous.
        if page_log2 > 64:
            reader.fail("invalid custom page size", offset)
    return _Limits(start, reader.pos, flags, minimum, maximum, page_log2)


def _reader_valtype(reader: _Reader) -> None:
    try:
        reader.pos = _skip_valtype(reader.data, reader.pos, reader.end)
    except _Unsupported:
        reader.fail("unsupported value type")
    except IndexError:
        reader.fail("unexpected end of data in value type")
    if reader.pos > reader.end:
        reader.fail("value type runs past the end of its section", reader.end)


def _parse_imports(data: bytes, section: _Section | None) -> _Imports:
    if section is None:
        return _Imports(0, 0, ())
    reader = _Reader(data, section.body, section.end)
    functions = 0
    globals_ = 0
    tables = 0
    memories: list[_Limits] = []
    for _ in range(reader.u32()):
        reader.name()
        reader.name()
        kind_offset = reader.pos
        kind = reader.byte()
        if kind == 0:
            reader.u32()
            functions += 1
        elif kind == 1:
            _reader_valtype(reader)
            _read_limits(reader, memory=False)
            tables += 1
        elif kind == 2:
            memories.append(_read_limits(reader, memory=True))
        elif kind == 3:
            _reader_valtype(reader)
            reader.byte()
            globals_ += 1
        elif kind == 4:
            reader.byte()
            reader.u32()
        else:
            reader.fail(f"unknown import kind {kind}", kind_offset)
    _expect_end(reader)
    return _Imports(functions, globals_, tuple(memories), tables)


def _parse_memory_section(data: bytes, section: _Section | None) -> tuple[_Limits, ...]:
    if section is None:
        return ()
    reader = _Reader(data, section.body, section.end)
    memories = tuple(_read_limits(reader, memory=True) for _ in range(reader.u32()))
    _expect_end(reader)
    return memories


def _expect_end(reader: _Reader) -> None:
    if reader.pos != reader.end:
        reader.fail("section has trailing bytes")


def _memory_info(index: int, limits: _Limits, *, imported: bool) -> MemoryInfo:
    page = 1 << limits.page_log2
    return MemoryInfo(
        index=index,
        imported=imported,
        initial_bytes=limits.minimum * page,
        maximum_bytes=None if limits.maximum is None else limits.maximum * page,
        memory64=bool(limits.flags & _LIMITS_64),
        shared=bool(limits.flags & _LIMITS_SHARED),
    )


def _memory_infos(
    imported: tuple[_Limits, ...], defined: tuple[_Limits, ...]
) -> tuple[MemoryInfo, ...]:
    infos = [_memory_info(i, lim, imported=True) for i, lim in enumerate(imported)]
    base = len(imported)
    infos += [_memory_info(base + i, lim, imported=False) for i, lim in enumerate(defined)]
    return tuple(infos)


def _parse_table_section(data: bytes, section: _Section | None) -> tuple[_Limits, ...]:
    if section is None:
        return ()
    reader = _Reader(data, section.body, section.end)
    tables = []
    for _ in range(reader.u32()):
        _reader_valtype(reader)
        tables.append(_read_limits(reader, memory=False))
    _expect_end(reader)
    return tuple(tables)


def _table_infos(imports: _Imports, defined: tuple[_Limits, ...]) -> tuple[TableInfo, ...]:
    base = imports.tables
    return tuple(
        TableInfo(index=base + i, initial_elements=lim.minimum, maximum_elements=lim.maximum)
        for i, lim in enumerate(defined)
    )


def read_tables(wasm: bytes) -> tuple[TableInfo, ...]:
    """Return the tables the module defines, as declared."""
    data = bytes(wasm)
    sections = _split_sections(data)
    imports = _parse_imports(data, _find(sections, _SEC_IMPORT))
    return _table_infos(imports, _parse_table_section(data, _find(sections, _SEC_TABLE)))


def read_memories(wasm: bytes) -> tuple[MemoryInfo, ...]:
    """Return the module's linear memories (imported first) as declared."""
    data = bytes(wasm)
    sections = _split_sections(data)
    imports = _parse_imports(data, _find(sections, _SEC_IMPORT))
    defined = _parse_memory_section(data, _find(sections, _SEC_MEMORY))
    return _memory_infos(imports.memories, defined)


# --------------------------------------------------------------------------
# Memory clamping


def _clamped_limits(limits: _Limits, limit_bytes: int) -> bytes | None:
    """Re-encoded limits with the maximum clamped, or None to leave them as they are."""
    limit_pages = limit_bytes >> limits.page_log2
    memory64 = bool(limits.flags & _LIMITS_64)
    address_space = 1 << (64 if memory64 else 32)
    # The clamp must not push the maximum past what the index type can address,
    # or the rewritten module would no longer validate.
    limit_pages = min(limit_pages, address_space >> limits.page_log2, address_space - 1)
    if limits.minimum > limit_pages:
        # The caller reports this from MemoryInfo.initial_bytes with its own error.
        return None
    new_max = limit_pages if limits.maximum is None else min(limits.maximum, limit_pages)
    if limits.maximum == new_max:
        return None
    out = bytearray([limits.flags | _LIMITS_HAS_MAX])
    out += _encode_uleb(limits.minimum)
    out += _encode_uleb(new_max)
    if limits.flags & _LIMITS_PAGE_SIZE:
        out += _encode_uleb(limits.page_log2)
    return bytes(out)


def _splice(data: bytes, section: _Section, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Section payload with byte ranges replaced; edits are sorted and disjoint."""
    chunks: list[bytes] = []
    pos = section.body
    for start, end, replacement in edits:
        chunks.append(data[pos:start])
        chunks.append(replacement)
        pos = end
    chunks.append(data[pos : section.end])
    return b"".join(chunks)


def _clamp_section(
    data: bytes,
    section: _Section | None,
    memories: tuple[_Limits, ...],
    limit_bytes: int | tuple[int, ...],
    clamp: Callable[[_Limits, int], bytes | None] = _clamped_limits,
) -> bytes | None:
    if section is None:
        return None
    shares = (limit_bytes,) * len(memories) if isinstance(limit_bytes, int) else limit_bytes
    edits: list[tuple[int, int, bytes]] = []
    for limits, share in zip(memories, shares, strict=True):
        replacement = clamp(limits, share)
        if replacement is not None:
            edits.append((limits.start, limits.end, replacement))
    if not edits:
        return None
    return _splice(data, section, edits)


def _shares(sizes: list[tuple[int, int | None]], limit: int) -> tuple[int, ...]:
    """Each entry's share of a limit that covers them all, given (initial, maximum) sizes.

    Every entry keeps its initial size; what the limit leaves beyond the initial sizes goes to
    the entries in order (memory 0, the one a plugin grows, comes first), each taking up to its
    own maximum. When the initial sizes alone exceed the limit, every share is the limit and the
    caller reports the excess from the initial sizes.
    """
    spare = limit - sum(initial for initial, _ in sizes)
    if spare < 0:
        return (limit,) * len(sizes)
    shares = []
    for initial, maximum in sizes:
        growth = spare if maximum is None else min(spare, max(0, maximum - initial))
        shares.append(initial + growth)
        spare -= growth
    return tuple(shares)


def _clamped_table(limits: _Limits, limit_elements: int) -> bytes | None:
    """Re-encoded table limits with the maximum clamped, or None to leave them as they are."""
    if limits.minimum > limit_elements or limits.flags & ~_LIMITS_HAS_MAX:
        # The first is reported by the caller; the second (64-bit tables) is refused earlier.
        return None
    new_max = limit_elements if limits.maximum is None else min(limits.maximum, limit_elements)
    if limits.maximum == new_max:
        return None
    return bytes([_LIMITS_HAS_MAX]) + _encode_uleb(limits.minimum) + _encode_uleb(new_max)


# --------------------------------------------------------------------------
# Instruction decoding
#
# The code decoder works on raw positions for speed.  Reading past the end of
# the module raises IndexError, which the caller turns into WasmBinaryError;
# running past the end of a body is caught by comparing positions afterwards.

_K_NONE = 0
_K_LEB = 1
_K_LEB2 = 2
_K_BLOCK = 3
_K_BR_TABLE = 4
_K_SELECT_T = 5
_K_TRY_TABLE = 6
_K_MEMARG = 7
_K_GROW = 8
_K_BYTES4 = 9
_K_BYTES8 = 10
_K_HEAPTYPE = 11
_K_FC = 12
_K_FD = 13
_K_FE = 14
_K_UNKNOWN = 15


def _opcode_kinds() -> bytes:
    kinds = bytearray([_K_UNKNOWN]) * 256
    for op in (0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B, 0xD1, 0xD3, 0xD4):
        kinds[op] = _K_NONE
    for op in range(0x45, 0xC5):
        kinds[op] = _K_NONE
    # Labels, function/tag/type/local/global/table/memory indices, and the
    # i32/i64 constants: all a single LEB128 whose value does not matter here.
    leb_ops = [0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18, 0x3F, 0x41, 0x42]
    leb_ops += [0xD2, 0xD5, 0xD6, *range(0x20, 0x27)]
    for op in leb_ops:
        kinds[op] = _K_LEB
    kinds[0x11] = kinds[0x13] = _K_LEB2
    for op in (0x02, 0x03, 0x04, 0x06):
        kinds[op] = _K_BLOCK
    kinds[0x0E] = _K_BR_TABLE
    kinds[0x1C] = _K_SELECT_T
    kinds[0x1F] = _K_TRY_TABLE
    for op in range(0x28, 0x3F):
        kinds[op] = _K_MEMARG
    kinds[_OP_MEMORY_GROW] = _K_GROW
    kinds[0x43] = _K_BYTES4
    kinds[0x44] = _K_BYTES8
    kinds[0xD0] = _K_HEAPTYPE
    kinds[0xFC] = _K_FC
    kinds[0xFD] = _K_FD
    kinds[0xFE] = _K_FE
    return bytes(kinds)


_OPCODE_KINDS = _opcode_kinds()


def _byte_class(ops: Iterable[int]) -> bytes:
    return b"[" + b"".join(re.escape(bytes([op])) for op in sorted(ops)) + b"]"


def _plain_run(
    excluded: frozenset[int], *, blocks: bool = False
) -> Callable[[bytes, int, int], re.Match[bytes] | None]:
    """The ``match`` of a pattern of any number of instructions whose immediates need no
    decision (each alternative reads an opcode and its immediates exactly as the decoder's
    loop would), none of them in ``excluded``: a run of such instructions is skipped in one
    call. Anything else (prefixed opcodes, a memarg whose alignment is not one byte below
    0x40, a multi-byte memory index, and blocks unless ``blocks``, then those whose type is
    neither one byte nor a one-byte type index) stops the run, for the loop to decode."""
    kinds = _OPCODE_KINDS
    leb = rb"[\x80-\xff]*[\x00-\x7f]"

    def of(kind: int) -> set[int]:
        return {op for op in range(256) if kinds[op] == kind and op not in excluded}

    alternatives = [_byte_class(of(_K_NONE)), _byte_class(of(_K_LEB)) + leb]
    if of(_K_LEB2):
        alternatives.append(_byte_class(of(_K_LEB2)) + leb + leb)
    alternatives.append(_byte_class(of(_K_MEMARG)) + rb"[\x00-\x3f]" + leb)
    if of(_K_GROW):
        alternatives.append(_byte_class(of(_K_GROW)) + rb"[\x00-\x7f]")
    alternatives.append(_byte_class(of(_K_BYTES4)) + rb"[\x00-\xff]{4}")
    alternatives.append(_byte_class(of(_K_BYTES8)) + rb"[\x00-\xff]{8}")
    if blocks and of(_K_BLOCK):
        block_types = _byte_class({0x40, *_SHORT_VALTYPES, *range(0x40)})
        alternatives.append(_byte_class(of(_K_BLOCK)) + block_types)
    return re.compile(b"(?:" + b"|".join(alternatives) + b")*").match


# 0xFC sub-opcode -> number of LEB immediates (None: unknown).
_FC_IMMEDIATES: dict[int, int] = {
    **dict.fromkeys(range(8), 0),
    8: 2,
    9: 1,
    10: 2,
    11: 1,
    12: 2,
    13: 1,
    14: 2,
    15: 1,
    16: 1,
    17: 1,
}
_FD_LAST = 0x113
_FE_LAST = 0x4E


def _skip_leb(data: bytes, pos: int) -> int:
    while data[pos] & 0x80:
        pos += 1
    return pos + 1


def _code_uleb(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value, new_pos = _read_uleb(data, pos, end, 32)
    if value < 0:
        raise WasmBinaryError(_LEB_ERRORS[value], pos)
    return value, new_pos


def _skip_heaptype(data: bytes, pos: int, end: int) -> int:
    if data[pos] in _ABSTRACT_HEAPTYPES:
        return pos + 1
    value, new_pos = _read_s33(data, pos, end)
    if new_pos < 0:
        raise WasmBinaryError("malformed heap type", pos)
    if value < 0:
        raise _Unsupported
    return new_pos


def _skip_valtype(data: bytes, pos: int, end: int) -> int:
    byte = data[pos]
    if byte in _SHORT_VALTYPES:
        return pos + 1
    if byte in _REF_PREFIXES:
        return _skip_heaptype(data, pos + 1, end)
    raise _Unsupported


def _skip_blocktype(data: bytes, pos: int, end: int) -> int:
    byte = data[pos]
    if byte == 0x40 or byte in _SHORT_VALTYPES:
        return pos + 1
    if byte in _REF_PREFIXES:
        return _skip_heaptype(data, pos + 1, end)
    value, new_pos = _read_s33(data, pos, end)
    if new_pos < 0:
        raise WasmBinaryError("malformed block type", pos)
    if value < 0:
        raise _Unsupported
    return new_pos


def _skip_memarg(data: bytes, pos: int, end: int) -> int:
    align, pos = _code_uleb(data, pos, end)
    if align & 0x40:
        pos = _skip_leb(data, pos)
    return _skip_leb(data, pos)


_PLAIN_BUT_GROW = _plain_run(frozenset({_OP_MEMORY_GROW}), blocks=True)
"""Runs of instructions without a ``memory.grow``."""


def _scan_expression(data: bytes, pos: int, end: int) -> list[tuple[int, int]]:
    """Byte ranges of every ``memory.grow 0`` in the instructions in [pos, end).

    Raises _Unsupported for opcodes this decoder does not know.
    """
    kinds = _OPCODE_KINDS
    plain = _PLAIN_BUT_GROW
    sites: list[tuple[int, int]] = []
    while pos < end:
        run = plain(data, pos, end)
        if run is not None:  # always, as the pattern matches the empty string
            pos = run.end()
            if pos >= end:
                break
        start = pos
        op = data[pos]
        pos += 1
        kind = kinds[op]
        if kind == _K_NONE:
            continue
        if kind == _K_LEB:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        elif kind == _K_MEMARG:
            pos = _skip_memarg(data, pos, end)
        elif kind == _K_BLOCK:
            pos = _skip_blocktype(data, pos, end)
        elif kind == _K_LEB2:
            pos = _skip_leb(data, _skip_leb(data, pos))
        elif kind == _K_GROW:
            memory, pos = _code_uleb(data, pos, end)
            if memory == 0:
                sites.append((start, pos))
        elif kind == _K_BYTES4:
            pos += 4
        elif kind == _K_BYTES8:
            pos += 8
        elif kind == _K_UNKNOWN:
            raise _Unsupported
        elif kind >= _K_FC:
            pos = _skip_prefixed(kind, data, pos, end)
        else:
            pos = _skip_structured(kind, data, pos, end)
    if pos != end:
        raise WasmBinaryError("instruction runs past the end of the function body", end)
    return sites


def _skip_structured(kind: int, data: bytes, pos: int, end: int) -> int:
    """Immediates of the rarer single-byte opcodes with variable-length operands."""
    if kind == _K_HEAPTYPE:
        return _skip_heaptype(data, pos, end)
    if kind == _K_TRY_TABLE:
        pos = _skip_blocktype(data, pos, end)
    count, pos = _code_uleb(data, pos, end)
    # Each element takes at least one byte; refusing early bounds the loop.
    if count > end - pos:
        raise WasmBinaryError("vector runs past the end of the function body", pos)
    if kind == _K_BR_TABLE:
        for _ in range(count + 1):
            pos = _skip_leb(data, pos)
    elif kind == _K_SELECT_T:
        for _ in range(count):
            pos = _skip_valtype(data, pos, end)
    else:
        for _ in range(count):
            clause = data[pos]
            pos += 1
            if clause in (0, 1):  # catch / catch_ref: tag and label
                pos = _skip_leb(data, _skip_leb(data, pos))
            elif clause in (2, 3):  # catch_all / catch_all_ref: label
                pos = _skip_leb(data, pos)
            else:
                raise _Unsupported
    return pos


def _skip_prefixed(kind: int, data: bytes, pos: int, end: int) -> int:
    """Sub-opcode and immediates after a 0xFC, 0xFD or 0xFE prefix byte."""
    sub, pos = _code_uleb(data, pos, end)
    if kind == _K_FC:
        immediates = _FC_IMMEDIATES.get(sub)
        if immediates is None:
            raise _Unsupported
        for _ in range(immediates):
            pos = _skip_leb(data, pos)
    elif kind == _K_FD:
        if sub <= 11 or 92 <= sub <= 93:
            pos = _skip_memarg(data, pos, end)
        elif sub in (12, 13):  # v128.const, i8x16.shuffle
            pos += 16
        elif 21 <= sub <= 34:  # extract/replace lane
            pos += 1
        elif 84 <= sub <= 91:  # load/store lane
            pos = _skip_memarg(data, pos, end) + 1
        elif sub > _FD_LAST:
            raise _Unsupported
    elif sub == 3:  # atomic.fence
        pos += 1
    elif sub <= 2 or 0x10 <= sub <= _FE_LAST:
        pos = _skip_memarg(data, pos, end)
    else:
        raise _Unsupported
    return pos


@attrs.frozen
class _Body:
    start: int  # offset of the body size
    code: int  # offset of the first instruction (after the locals)
    end: int
    sites: tuple[tuple[int, int], ...]


# memory.grow on memory 0: the opcode, then the index 0 as a LEB128 (0x00, or padded 0x80...).
_GROW_CANDIDATES = (bytes([_OP_MEMORY_GROW, 0x00]), bytes([_OP_MEMORY_GROW, 0x80]))


def _grow_candidates(data: bytes, start: int, end: int) -> list[int]:
    """Sorted offsets in [start, end) where a ``memory.grow 0`` may begin.

    Found by a byte search, without decoding: a body with none of them cannot grow memory 0,
    so only the few bodies that have one are decoded.
    """
    found: list[int] = []
    for pattern in _GROW_CANDIDATES:
        pos = data.find(pattern, start, end)
        while pos >= 0:
            found.append(pos)
            pos = data.find(pattern, pos + 1, end)
    found.sort()
    return found


def _scan_code_section(data: bytes, section: _Section) -> tuple[int, list[_Body]]:
    """The number of bodies, and the bodies that hold a ``memory.grow 0`` with its sites."""
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    candidates = _grow_candidates(data, reader.pos, section.end)
    bodies: list[_Body] = []
    if not candidates:
        return count, bodies
    next_candidate = candidates[0]
    index = 0
    end = section.end
    pos = reader.pos
    for _ in range(count):
        start = pos
        size, pos = _read_uleb(data, pos, end, 32)
        if size < 0:
            raise WasmBinaryError(_LEB_ERRORS[size], start)
        body_start = pos
        pos += size
        if pos > end:
            raise WasmBinaryError("function body runs past the end of its section", body_start)
        if next_candidate >= pos:
            continue
        try:
            code = _skip_locals(data, body_start, pos)
            sites = _scan_expression(data, code, pos)
        except IndexError:
            raise WasmBinaryError(
                "function body runs past the end of the module", body_start
            ) from None
        if sites:
            bodies.append(_Body(start, code, pos, tuple(sites)))
        while index < len(candidates) and candidates[index] < pos:
            index += 1
        next_candidate = candidates[index] if index < len(candidates) else end
    reader.pos = pos
    _expect_end(reader)
    return count, bodies


def _skip_locals(data: bytes, pos: int, end: int) -> int:
    groups, pos = _code_uleb(data, pos, end)
    if groups > end - pos:
        raise WasmBinaryError("local declarations run past the end of the body", pos)
    for _ in range(groups):
        _, pos = _code_uleb(data, pos, end)
        pos = _skip_valtype(data, pos, end)
    if pos > end:
        raise WasmBinaryError("local declarations run past the end of the body", end)
    return pos


# --------------------------------------------------------------------------
# Grow instrumentation


def _vec_count(data: bytes, section: _Section | None) -> tuple[int, int]:
    """(element count, offset of the first element) of a vector section."""
    if section is None:
        return 0, -1
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    return count, reader.pos


def _appended(data: bytes, section: _Section | None, new_entry: bytes) -> bytes:
    """Payload of a vector section with one entry added at the end."""
    count, first = _vec_count(data, section)
    if section is None:
        return b"\x01" + new_entry
    return b"".join((_encode_uleb(count + 1), data[first : section.end], new_entry))


def _count_types(data: bytes, section: _Section | None) -> int:
    """Number of function types; raises _Unsupported on GC type definitions."""
    if section is None:
        return 0
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    for _ in range(count):
        form_offset = reader.pos
        form = reader.byte()
        if form != _FUNC_FORM:
            # rec groups, sub types, structs, arrays: index arithmetic is no
            # longer one entry per type, so do not guess.
            raise _Unsupported
        for _ in range(2):
            arity = reader.u32()
            if arity > reader.end - reader.pos:
                reader.fail("function type runs past the end of its section", form_offset)
            for _ in range(arity):
                try:
                    reader.pos = _skip_valtype(data, reader.pos, reader.end)
                except IndexError:
                    reader.fail("unexpected end of data in value type")
                if reader.pos > reader.end:
                    reader.fail("value type runs past the end of its section", reader.end)
    _expect_end(reader)
    return count


def _export_offset(data: bytes, section: _Section | None, name: bytes) -> int | None:
    """Offset of the export entry with this name, if there is one."""
    if section is None:
        return None
    reader = _Reader(data, section.body, section.end)
    found = None
    for _ in range(reader.u32()):
        entry = reader.pos
        if reader.name() == name and found is None:
            found = entry
        reader.byte()
        reader.u32()
    _expect_end(reader)
    return found


def _wrapper_body(global_index: int) -> bytes:
    """Body of ``(func (param i32) (result i32))`` that records refused grows."""
    code = b"".join(
        (
            bytes([_OP_LOCAL_GET, 0, _OP_MEMORY_GROW, 0, _OP_LOCAL_TEE, 1]),
            bytes([_OP_I32_CONST, 0x7F, _OP_I32_EQ, _OP_IF, _BLOCK_EMPTY]),
            bytes([_OP_LOCAL_GET, 0, _OP_GLOBAL_SET]),
            _encode_uleb(global_index),
            bytes([_OP_END, _OP_LOCAL_GET, 1, _OP_END]),
        )
    )
    # Local 1 keeps grow's result, which is both compared and returned.
    locals_ = bytes([1, 1, _I32])
    return _encode_uleb(len(locals_) + len(code)) + locals_ + code


def _rewrite_code(
    data: bytes,
    section: _Section,
    *,
    count: int,
    bodies: list[_Body],
    wrapper: int,
    global_index: int,
) -> bytes:
    """The code section's payload with each grow site calling the wrapper and the wrapper's
    body added; the bodies without a site are copied in long runs, not one by one."""
    call = bytes([_OP_CALL]) + _encode_uleb(wrapper)
    _, first = _vec_count(data, section)
    chunks: list[bytes] = [_encode_uleb(count + 1)]
    pos = first
    for body in bodies:
        chunks.append(data[pos : body.start])
        size_end = _skip_leb(data, body.start)
        parts: list[bytes] = []
        at = size_end
        for site_start, site_end in body.sites:
            parts.append(data[at:site_start])
            parts.append(call)
            at = site_end
        parts.append(data[at : body.end])
        content = b"".join(parts)
        chunks.append(_encode_uleb(len(content)))
        chunks.append(content)
        pos = body.end
    chunks.append(data[pos : section.end])
    chunks.append(_wrapper_body(global_index))
    return b"".join(chunks)


def _instrument(
    data: bytes, sections: list[_Section], imports: _Imports
) -> tuple[dict[int, bytes], int]:
    """New payloads by section id for the grow instrumentation, and the site count.

    Returns ({}, 0) when there is nothing to instrument or the module uses
    encodings the decoder does not understand.
    """
    code_section = _find(sections, _SEC_CODE)
    if code_section is None:
        return {}, 0
    type_section = _find(sections, _SEC_TYPE)
    try:
        type_count = _count_types(data, type_section)
        code_count, bodies = _scan_code_section(data, code_section)
    except _Unsupported:
        return {}, 0
    sites = sum(len(body.sites) for body in bodies)
    if not sites:
        return {}, 0
    function_section = _find(sections, _SEC_FUNCTION)
    function_count, _ = _vec_count(data, function_section)
    if function_count != code_count:
        raise WasmBinaryError("function and code section counts differ", code_section.start)
    global_section = _find(sections, _SEC_GLOBAL)
    defined_globals, _ = _vec_count(data, global_section)
    wrapper = imports.functions + function_count
    probe = imports.globals + defined_globals
    export_entry = _encode_name(GROW_PROBE_EXPORT) + bytes([_EXPORT_GLOBAL]) + _encode_uleb(probe)
    payloads = {
        _SEC_TYPE: _appended(data, type_section, bytes([_FUNC_FORM, 1, _I32, 1, _I32])),
        _SEC_FUNCTION: _appended(data, function_section, _encode_uleb(type_count)),
        _SEC_GLOBAL: _appended(
            data, global_section, bytes([_I32, _MUTABLE, _OP_I32_CONST, 0, _OP_END])
        ),
        _SEC_EXPORT: _appended(data, _find(sections, _SEC_EXPORT), export_entry),
        _SEC_CODE: _rewrite_code(
            data, code_section, count=code_count, bodies=bodies, wrapper=wrapper, global_index=probe
        ),
    }
    return payloads, sites


# --------------------------------------------------------------------------
# Assembly


def _assemble(data: bytes, sections: list[_Section], payloads: dict[int, bytes]) -> bytes:
    """Module with the given section payloads replaced or, if absent, inserted in order."""
    # (section id, payload) or an original section kept byte for byte.
    layout: list[tuple[int, bytes | _Section]] = [(s.id, s) for s in sections]
    present = {s.id for s in sections}
    for section_id in sorted(
        (sid for sid in payloads if sid not in present), key=_SECTION_RANK.__getitem__
    ):
        rank = _SECTION_RANK[section_id]
        # Right after the last known section ranked before it, so trailing
        # custom sections (e.g. "name") stay at the end.
        insert_at = 0
        for i, (other_id, _) in enumerate(layout):
            if other_id != _SEC_CUSTOM and _SECTION_RANK[other_id] < rank:
                insert_at = i + 1
        layout.insert(insert_at, (section_id, payloads[section_id]))
    chunks: list[bytes] = [data[:8]]
    for section_id, item in layout:
        if isinstance(item, _Section):
            payload = payloads.get(item.id) if item.id != _SEC_CUSTOM else None
            if payload is None:
                chunks.append(data[item.start : item.end])
                continue
        else:
            payload = item
        chunks.append(bytes([section_id]))
        chunks.append(_encode_uleb(len(payload)))
        chunks.append(payload)
    return b"".join(chunks)


def prepare_module(
    wasm: bytes,
    *,
    memory_limit_bytes: int | None,
    instrument_grow: bool = True,
    table_limit_elements: int | None = None,
) -> PreparedModule:
    """Clamp memory and table maxima to the limits and instrument ``memory.grow`` on memory 0.

    Each limit covers the sum of the maxima of all memories (or all defined tables).
    When the initial sizes already exceed a limit, the module is clamped per entry only;
    compare :attr:`MemoryInfo.initial_bytes` (:attr:`TableInfo.initial_elements`) summed
    with the limit to report it.
    With ``instrument_grow``, an existing export named :data:`GROW_PROBE_EXPORT`
    is an error even when there is no ``memory.grow`` to instrument, since the
    name is reserved for the probe.
    """
    if memory_limit_bytes is not None and memory_limit_bytes < 0:
        raise ValueError("memory_limit_bytes must not be negative")
    if table_limit_elements is not None and table_limit_elements < 0:
        raise ValueError("table_limit_elements must not be negative")
    data = bytes(wasm)
    sections = _split_sections(data)
    import_section = _find(sections, _SEC_IMPORT)
    memory_section = _find(sections, _SEC_MEMORY)
    table_section = _find(sections, _SEC_TABLE)
    imports = _parse_imports(data, import_section)
    defined = _parse_memory_section(data, memory_section)
    memories = _memory_infos(imports.memories, defined)
    defined_tables = _parse_table_section(data, table_section)
    tables = _table_infos(imports, defined_tables)

    payloads: dict[int, bytes] = {}
    if memory_limit_bytes is not None:
        shares = _shares([(m.initial_bytes, m.maximum_bytes) for m in memories], memory_limit_bytes)
        imported = len(imports.memories)
        for section, limits, section_shares in (
            (import_section, imports.memories, shares[:imported]),
            (memory_section, defined, shares[imported:]),
        ):
            payload = _clamp_section(data, section, limits, section_shares)
            if payload is not None and section is not None:
                payloads[section.id] = payload
    if table_limit_elements is not None and table_section is not None:
        table_shares = _shares(
            [(t.initial_elements, t.maximum_elements) for t in tables], table_limit_elements
        )
        payload = _clamp_section(data, table_section, defined_tables, table_shares, _clamped_table)
        if payload is not None:
            payloads[_SEC_TABLE] = payload

    sites = 0
    if instrument_grow:
        clash = _export_offset(data, _find(sections, _SEC_EXPORT), GROW_PROBE_EXPORT.encode())
        if clash is not None:
            raise WasmBinaryError(f"module already exports {GROW_PROBE_EXPORT!r}", clash)
        if memories and not memories[0].memory64:
            grow_payloads, sites = _instrument(data, sections, imports)
            payloads.update(grow_payloads)

    wasm_out = _assemble(data, sections, payloads) if payloads else data
    return PreparedModule(
        wasm=wasm_out,
        memories=memories,
        grow_probe=GROW_PROBE_EXPORT if sites else None,
        grow_sites=sites,
        tables=tables,
    )


# --------------------------------------------------------------------------
# Call-depth bound
#
# For engines whose own stack guard is costly. wasmer 1.1 lets a guest recurse until the thread's
# native stack ends, then describes every frame in its trap: one endless recursion on an 8 MiB
# stack costs the host about 120 MiB of peak memory and most of a second with the GIL held. This
# pass gives the module a mutable i32 global (the depth, exported as DEPTH_EXPORT) and wraps every
# function body as
#
#     depth += 1; if depth > max_depth: unreachable
#     block (result ...) <the body, with `depth -= 1` before each return> end
#     depth -= 1
#
# so a recursion stops after max_depth frames, and its trap describes no more than that. Branches
# to the function's own label now reach the wrapping block, whose end is followed by the
# decrement; each `return` is preceded by the same decrement (it takes nothing from the stack and
# leaves nothing on it, so the return's results are untouched, and finding the returns needs no
# count of the blocks around them). A trap leaves the depth above the bound
# only when the bound was what trapped, which is how the sandbox tells a stack overflow from the
# guest's own `unreachable`; a trap of any kind discards the instance, so the depth it leaves
# behind is never seen by a later call. Bodies that could leave the function another way (tail
# calls, exceptions) are not rewritten: such a module is returned unchanged and keeps the
# engine's own guard.

DEPTH_EXPORT = "__wasm_plugins_call_depth"
_OP_UNREACHABLE = 0x00
_OP_BLOCK = 0x02
_OP_RETURN = 0x0F
_OP_GLOBAL_GET = 0x23
_OP_I32_GT_U = 0x4B
_OP_I32_ADD = 0x6A
_OP_I32_SUB = 0x6B
_LEAVES_OTHERWISE = frozenset({0x06, 0x07, 0x08, 0x09, 0x0A, 0x12, 0x13, 0x15, 0x18, 0x19, 0x1F})
"""try, catch, throw, rethrow, throw_ref, return_call*, delegate, catch_all, try_table."""
# A body with none of these bytes has neither a return nor a way out that the pass refuses, so
# it is wrapped without being decoded.
_NEEDS_DECODING = re.compile(
    b"["
    + b"".join(re.escape(bytes([op])) for op in sorted({_OP_RETURN, *_LEAVES_OTHERWISE}))
    + b"]"
)


def _sleb32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _function_results(data: bytes, section: _Section | None) -> list[tuple[int, bytes]]:
    """Each function type's result count and encoded result vector (raises _Unsupported for GC
    type definitions)."""
    results: list[tuple[int, bytes]] = []
    if section is None:
        return results
    reader = _Reader(data, section.body, section.end)
    for _ in range(reader.u32()):
        if reader.byte() != _FUNC_FORM:
            raise _Unsupported
        for is_results in (False, True):
            start = reader.pos
            arity = reader.u32()
            for _ in range(arity):
                reader.pos = _skip_valtype(data, reader.pos, reader.end)
            if is_results:
                results.append((arity, data[start : reader.pos]))
    _expect_end(reader)
    return results


def _returns_leaving(data: bytes, code: int, end: int, leave: bytes) -> bytes | None:
    """The instructions in [code, end) with ``leave`` (the depth's decrement, which takes
    nothing from the stack and leaves nothing on it) before each ``return``, or ``None`` when
    there is no ``return``. Raises _Unsupported for a way out of the function the pass does not
    rewrite."""
    kinds = _OPCODE_KINDS
    plain = _PLAIN_EXCEPT_EXITS_BUT_BLOCKS
    parts: list[bytes] = []
    copied = code
    pos = code
    while pos < end:
        run = plain(data, pos, end)
        if run is not None:  # always, as the pattern matches the empty string
            pos = run.end()
            if pos >= end:
                break
        start = pos
        op = data[pos]
        pos += 1
        kind = kinds[op]
        if op in _LEAVES_OTHERWISE or kind == _K_UNKNOWN:
            raise _Unsupported
        if kind == _K_NONE:
            if op == _OP_RETURN:
                parts.append(data[copied:start])
                parts.append(leave)
                copied = start
            continue
        if kind == _K_LEB:
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
        elif kind >= _K_FC:
            pos = _skip_prefixed(kind, data, pos, end)
        else:
            pos = _skip_structured(kind, data, pos, end)
    if pos != end:
        raise WasmBinaryError("instruction runs past the end of the function body", end)
    if not parts:
        return None
    parts.append(data[copied:end])
    return b"".join(parts)


_PLAIN_EXCEPT_EXITS_BUT_BLOCKS = _plain_run(
    frozenset({_OP_RETURN, *_LEAVES_OTHERWISE}), blocks=True
)
"""Runs of instructions that neither return nor leave the function another way."""


def _no_way_out(data: bytes, code: int, end: int) -> bool:
    """Whether the instructions in [code, end) are, every one of them, plain instructions and
    blocks: neither a return nor another way out of the function (nothing to rewrite)."""
    whole = _PLAIN_EXCEPT_EXITS_BUT_BLOCKS(data, code, end)
    return whole is not None and whole.end() == end


def bound_call_depth(wasm: bytes, max_depth: int) -> bytes:
    """The module with its call depth bounded by ``max_depth`` frames (see above);
    unchanged when it uses a way out of a function the pass does not rewrite, or defines no
    function.

    :raises WasmBinaryError: for a malformed module, or one that already exports
        :data:`DEPTH_EXPORT`.
    """
    sections = _split_sections(wasm)
    code_section = _find(sections, _SEC_CODE)
    if code_section is None:
        return wasm
    export_section = _find(sections, _SEC_EXPORT)
    clash = _export_offset(wasm, export_section, DEPTH_EXPORT.encode())
    if clash is not None:
        raise WasmBinaryError(f"module already exports {DEPTH_EXPORT!r}", clash)
    imports = _parse_imports(wasm, _find(sections, _SEC_IMPORT))
    type_section = _find(sections, _SEC_TYPE)
    function_section = _find(sections, _SEC_FUNCTION)
    global_section = _find(sections, _SEC_GLOBAL)
    try:
        results = _function_results(wasm, type_section)
        function_types = _function_type_indices(wasm, function_section)
        depth = imports.globals + _vec_count(wasm, global_section)[0]
        code, extra_types = _wrapped_code(
            wasm, code_section, results, function_types, depth, max_depth
        )
    except _Unsupported:
        return wasm
    except IndexError:
        raise WasmBinaryError("function body runs past the end of the module", 0) from None
    payloads = {
        _SEC_GLOBAL: _appended(
            wasm, global_section, bytes([_I32, _MUTABLE, _OP_I32_CONST, 0, _OP_END])
        ),
        _SEC_EXPORT: _appended(
            wasm,
            export_section,
            _encode_name(DEPTH_EXPORT) + bytes([_EXPORT_GLOBAL]) + _encode_uleb(depth),
        ),
        _SEC_CODE: code,
    }
    if extra_types:
        payload = b"".join(bytes([_FUNC_FORM, 0]) + result for result in extra_types)
        count, first = _vec_count(wasm, type_section)
        existing = b"" if type_section is None else wasm[first : type_section.end]
        payloads[_SEC_TYPE] = _encode_uleb(count + len(extra_types)) + existing + payload
    return _assemble(wasm, sections, payloads)


def _function_type_indices(data: bytes, section: _Section | None) -> list[int]:
    if section is None:
        return []
    reader = _Reader(data, section.body, section.end)
    indices = [reader.u32() for _ in range(reader.u32())]
    _expect_end(reader)
    return indices


def _wrapped_code(
    data: bytes,
    section: _Section,
    results: list[tuple[int, bytes]],
    function_types: list[int],
    depth: int,
    max_depth: int,
) -> tuple[bytes, list[bytes]]:
    """The code section's payload with every body wrapped, and the result lists that need a
    type of their own (``[] -> [results]``) to be a block type."""
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    if count != len(function_types):
        raise WasmBinaryError("function and code section counts differ", section.start)
    global_index = _encode_uleb(depth)
    get = bytes([_OP_GLOBAL_GET]) + global_index
    put = bytes([_OP_GLOBAL_SET]) + global_index
    enter = b"".join(
        (
            get,
            bytes([_OP_I32_CONST, 1, _OP_I32_ADD]),
            put,
            get,
            bytes([_OP_I32_CONST]) + _sleb32(max_depth),
            bytes([_OP_I32_GT_U, _OP_IF, _BLOCK_EMPTY, _OP_UNREACHABLE, _OP_END]),
        )
    )
    decrement = get + bytes([_OP_I32_CONST, 1, _OP_I32_SUB]) + put
    leave = decrement + bytes([_OP_END])
    extra_types: list[bytes] = []
    block_types: dict[bytes, bytes] = {}
    chunks: list[bytes] = [_encode_uleb(count)]
    end = section.end
    pos = reader.pos
    for type_index in function_types:
        size, pos = _code_uleb(data, pos, end)
        body_end = pos + size
        if body_end > end or type_index >= len(results):
            raise WasmBinaryError("function body runs past the end of its section", pos)
        code = _skip_locals(data, pos, body_end)
        if _NEEDS_DECODING.search(data, code, body_end) and not _no_way_out(data, code, body_end):
            instructions = _returns_leaving(data, code, body_end, decrement)
        else:
            instructions = None
        if instructions is None:
            instructions = data[code:body_end]
        arity, result = results[type_index]
        block_type = block_types.get(result)
        if block_type is None:
            if arity == 0:
                block_type = bytes([_BLOCK_EMPTY])
            elif arity == 1:
                block_type = result[1:]
            else:
                # A block of several results names a type: [] -> [results].
                extra_types.append(result)
                block_type = _sleb32(len(results) + len(extra_types) - 1)
            block_types[result] = block_type
        content = b"".join(
            (
                data[pos:code],
                enter,
                bytes([_OP_BLOCK]),
                block_type,
                instructions,
                leave,
            )
        )
        chunks.append(_encode_uleb(len(content)))
        chunks.append(content)
        pos = body_end
    if pos != end:
        raise WasmBinaryError("code section has bytes after its last body", pos)
    return b"".join(chunks), extra_types


# --------------------------------------------------------------------------
# The decoding and assembly helpers above, under public names for the other passes of this
# package (the metering pass, ``_metering``), which reuse them rather than copy them.

appended = _appended
assemble = _assemble
code_uleb = _code_uleb
count_types = _count_types
encode_name = _encode_name
encode_uleb = _encode_uleb
expect_end = _expect_end
export_offset = _export_offset
find = _find
function_type_indices = _function_type_indices
K_BLOCK = _K_BLOCK
K_BYTES4 = _K_BYTES4
K_BYTES8 = _K_BYTES8
K_FC = _K_FC
K_GROW = _K_GROW
K_LEB = _K_LEB
K_LEB2 = _K_LEB2
K_MEMARG = _K_MEMARG
K_NONE = _K_NONE
K_UNKNOWN = _K_UNKNOWN
LEAVES_OTHERWISE = _LEAVES_OTHERWISE
OPCODE_KINDS = _OPCODE_KINDS
parse_imports = _parse_imports
Reader = _Reader
reader_valtype = _reader_valtype
SEC_CODE = _SEC_CODE
SEC_CUSTOM = _SEC_CUSTOM
SEC_EXPORT = _SEC_EXPORT
SEC_FUNCTION = _SEC_FUNCTION
SEC_GLOBAL = _SEC_GLOBAL
SEC_IMPORT = _SEC_IMPORT
SEC_TYPE = _SEC_TYPE
Section = _Section
SHORT_VALTYPES = _SHORT_VALTYPES
skip_blocktype = _skip_blocktype
skip_heaptype = _skip_heaptype
skip_leb = _skip_leb
skip_memarg = _skip_memarg
skip_prefixed = _skip_prefixed
skip_structured = _skip_structured
skip_valtype = _skip_valtype
sleb32 = _sleb32
split_sections = _split_sections
Unsupported = _Unsupported
vec_count = _vec_count
