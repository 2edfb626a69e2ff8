"""Strict validation of a module's binary structure, the same for every engine, before any sees it.

Engines disagree at the edges: wasmer 1.1 reads a limits flag as a LEB128 (so ``0x81 0x00``
passes) where the binary format says one byte, and each engine enables a different set of
proposals. This reader applies the binary format's rules to everything outside function bodies
(LEB128 widths and ranges, section order and sizes, counts that agree, limits flags, names in
UTF-8, constant expressions, index ranges) and admits the features every engine runs: the 1.0
standard with mutable globals, sign extension, saturating conversions, multiple values, bulk
memory, reference types and 128-bit SIMD. Memory64, shared memories, custom page sizes,
exceptions, typed function references and GC types are refused with a message that names them.

Function bodies are only framed (size, locals, final ``end``): decoding instructions is the
engine's work, and it is where the time would go on a large module.
"""

from __future__ import annotations

from typing import NoReturn

import attrs

from wasm_plugins.engine import Engine
from wasm_plugins.errors import (
    ConfigurationError,
    ModuleError,
    ResourceLimitExceeded,
    ValidationIssue,
)
from wasm_plugins.sandbox._binary import (
    PreparedModule,
    WasmBinaryError,
    prepare_module,
    read_memories,
    read_tables,
)
from wasm_plugins.sandbox._limits import Limits

__all__ = ["ModuleShape", "check_module_bytes", "prepare_within_limits", "validate_module"]

_MAGIC = b"\0asm"
_VERSION = b"\x01\x00\x00\x00"

# Position of each section id in the mandated order (the data-count section, 12, comes before
# code).  The tag section (13) belongs to exception handling, which not every engine runs.
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 12: 10, 10: 11, 11: 12}

_I32, _I64, _F32, _F64, _V128 = 0x7F, 0x7E, 0x7D, 0x7C, 0x7B
_FUNCREF, _EXTERNREF = 0x70, 0x6F
_NUMERIC = frozenset({_I32, _I64, _F32, _F64, _V128})
_REFERENCE = frozenset({_FUNCREF, _EXTERNREF})
_VALUE_TYPES = _NUMERIC | _REFERENCE

# Implementation limits shared by the engines' validators (wasmparser's): a module past them is
# refused by at least one engine, so it is refused here for all.
MAX_TYPES = 1_000_000
MAX_FUNCTIONS = 1_000_000
MAX_IMPORTS = 100_000
MAX_EXPORTS = 100_000
MAX_GLOBALS = 1_000_000
MAX_TABLES = 100
MAX_MEMORIES = 100
MAX_SEGMENTS = 100_000
MAX_PARAMS = 1000
MAX_RESULTS = 1000
MAX_LOCALS = 50_000
MAX_FUNCTION_SIZE = 7_654_321
MAX_NAME = 100_000
MAX_TABLE_ELEMENTS = 10_000_000
MAX_PAGES = 65_536

_TOO_LONG = "integer representation too long"
_TOO_LARGE = "integer too large"


@attrs.frozen
class ModuleShape:
    """What the limits need to know of a valid module."""

    memories: int
    """Linear memories, imported and defined."""
    tables: int
    """Tables, imported and defined."""
    functions: int
    """Functions, imported and defined."""


class _Cursor:
    """A bounded reader that refuses every malformation with its offset."""

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

    def u32(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        if pos < end and data[pos] < 0x80:
            # The common one-byte case, without the loop.
            self.pos = pos + 1
            return data[pos]
        result = 0
        for shift in (0, 7, 14, 21, 28):
            if pos >= end:
                self.fail("unexpected end of data in integer", pos)
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if result >> 32:
                    self.fail(_TOO_LARGE, pos - 1)
                self.pos = pos
                return result
        self.fail(_TOO_LONG, pos - 1)

    def sleb(self, bits: int) -> int:
        """A signed LEB128 of ``bits`` bits: at most ceil(bits / 7) bytes, unused bits a sign."""
        result = 0
        shift = 0
        for _ in range((bits + 6) // 7):
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte & 0x40:
                    result -= 1 << shift
                if not -(1 << (bits - 1)) <= result < (1 << (bits - 1)):
                    self.fail(_TOO_LARGE, self.pos - 1)
                return result
        self.fail(_TOO_LONG, self.pos - 1)

    def count(self, limit: int, what: str) -> int:
        offset = self.pos
        value = self.u32()
        if value > limit:
            self.fail(f"too many {what}: {value} (at most {limit})", offset)
        # Every element takes at least one byte: a count cannot promise more than remains.
        if value > self.end - self.pos:
            self.fail(f"{what} count runs past the end of its section", offset)
        return value

    def skip(self, length: int) -> None:
        if length > self.end - self.pos:
            self.fail("length runs past the end of its section")
        self.pos += length

    def name(self) -> str:
        offset = self.pos
        length = self.u32()
        if length > MAX_NAME:
            self.fail(f"name longer than {MAX_NAME} bytes", offset)
        start = self.pos
        self.skip(length)
        try:
            return self.data[start : self.pos].decode("utf-8")
        except UnicodeDecodeError:
            self.fail("malformed UTF-8 encoding in a name", start)

    def value_type(self) -> int:
        offset = self.pos
        code = self.byte()
        if code not in _VALUE_TYPES:
            self.fail(_unsupported_type(code), offset)
        return code

    def reference_type(self) -> int:
        offset = self.pos
        code = self.byte()
        if code not in _REFERENCE:
            self.fail(_unsupported_type(code), offset)
        return code

    def index(self, bound: int, what: str) -> int:
        offset = self.pos
        value = self.u32()
        if value >= bound:
            self.fail(f"unknown {what} {value}", offset)
        return value

    def expect_end(self) -> None:
        if self.pos != self.end:
            self.fail("section size mismatch: unexpected bytes at the end of the section")


def _unsupported_type(code: int) -> str:
    if code in (0x63, 0x64):
        return "typed function references are not supported"
    if 0x65 <= code <= 0x75:
        return "this reference type (garbage collection proposal) is not supported"
    return f"invalid value type 0x{code:02x}"


@attrs.define
class _Module:
    """Index spaces, filled section by section."""

    types: list[tuple[tuple[int, ...], tuple[int, ...]]] = attrs.Factory(list)
    functions: list[int] = attrs.Factory(list)
    tables: list[int] = attrs.Factory(list)
    memories: int = 0
    globals: list[tuple[int, bool]] = attrs.Factory(list)
    imported_globals: int = 0
    imported_functions: int = 0
    data_count: int | None = None
    code_count: int | None = None
    data_segments: int | None = None


def check_module_bytes(wasm: bytes, limits: Limits, engine: Engine) -> ModuleShape:
    """Check a module's size, structure and number of memories before an engine reads it.

    :raises ResourceLimitExceeded: when the module is larger than ``limits.module_size``.
    :raises ModuleError: when the structure is malformed, uses a feature not every engine runs,
        or has more memories than ``limits.memories``.
    :raises ConfigurationError: when the module has several memories and the engine cannot run
        them.
    """
    if limits.module_size is not None and len(wasm) > limits.module_size:
        raise ResourceLimitExceeded(
            resource="module_size",
            used=len(wasm),
            limit=limits.module_size,
            suggestion="raise limits.module_size, or build a smaller module",
        )
    try:
        shape = validate_module(wasm)
    except WasmBinaryError as exc:
        raise ModuleError(
            validation_errors=(ValidationIssue(message=exc.message, offset=exc.offset),),
            suggestion="rebuild the module with a toolchain that targets WebAssembly 1.0 "
            "(with at most SIMD, bulk memory and reference types)",
        ) from None
    if shape.memories > limits.memories:
        raise ModuleError(
            validation_errors=(
                ValidationIssue(
                    message=f"the module has {shape.memories} memories; limits.memories "
                    f"allows {limits.memories}"
                ),
            ),
            suggestion=f"set limits.memories = {shape.memories} in the manifest to run a "
            "multi-memory module (limits.memory then covers all memories together)",
        )
    if shape.memories > 1 and not engine.features.multi_memory:
        raise ConfigurationError(
            field="limits.memories",
            message=f"Invalid configuration: limits.memories - the {engine.name} engine cannot "
            "run a module with several memories",
            suggestion="use engine='wasmtime', which runs multi-memory modules",
        )
    return shape


def prepare_within_limits(
    wasm: bytes, limits: Limits, *, instrument_grow: bool = True
) -> PreparedModule:
    """The module rewritten so that its memories and tables cannot grow past the limits.

    :raises ResourceLimitExceeded: when the initial memories or tables are already larger.
    :raises ModuleError: when the binary layout cannot be read.
    """
    try:
        memory = limits.memory
        initial = sum(info.initial_bytes for info in read_memories(wasm))
        if memory is not None and initial > memory:
            raise ResourceLimitExceeded(
                resource="memory",
                used=initial,
                limit=memory,
                suggestion=(
                    "the module's initial memory is larger than limits.memory: raise the "
                    "limit or link the module with a smaller initial memory"
                ),
            )
        table = limits.table
        elements = sum(info.initial_elements for info in read_tables(wasm))
        if table is not None and elements > table:
            raise ResourceLimitExceeded(
                resource="table",
                used=elements,
                limit=table,
                unit="elements",
                suggestion="the module's initial tables are larger than limits.table: raise the "
                "limit or build the module with fewer table elements",
            )
        return prepare_module(
            wasm,
            memory_limit_bytes=memory,
            instrument_grow=instrument_grow,
            table_limit_elements=table,
        )
    except WasmBinaryError as exc:
        raise ModuleError(
            validation_errors=(ValidationIssue(message=exc.message, offset=exc.offset),),
            suggestion="rebuild the module; its binary layout could not be read",
        ) from None


def validate_module(wasm: bytes) -> ModuleShape:
    """Check every structural rule of the binary format outside function bodies.

    :raises WasmBinaryError: naming the first rule broken and its byte offset.
    """
    data = bytes(wasm)
    if data[:4] != _MAGIC:
        raise WasmBinaryError("magic header not detected: bad magic number", 0)
    if data[4:8] != _VERSION:
        raise WasmBinaryError("unknown binary version", 4)
    module = _Module()
    cursor = _Cursor(data, 8, len(data))
    last = 0
    while cursor.pos < cursor.end:
        section_id = cursor.byte()
        size = cursor.u32()
        if size > cursor.end - cursor.pos:
            cursor.fail("section size runs past the end of the module")
        section = _Cursor(data, cursor.pos, cursor.pos + size)
        cursor.pos += size
        if section_id == 0:
            section.name()
            continue
        rank = _ORDER.get(section_id)
        # Reported at the payload, as the engines do.
        if rank is None:
            message = (
                "exception handling (tag section) is not supported"
                if section_id == 13
                else f"malformed section id {section_id}"
            )
            section.fail(message)
        if rank <= last:
            section.fail(f"section {section_id} is duplicated or out of order")
        last = rank
        _SECTIONS[section_id](section, module)
        section.expect_end()
    if len(module.functions) - module.imported_functions != (module.code_count or 0):
        cursor.fail("function and code section have inconsistent lengths", len(data))
    if (
        module.data_count is not None
        and module.data_segments is not None
        and module.data_count != module.data_segments
    ):
        cursor.fail("data count and data section have inconsistent lengths", len(data))
    if module.data_count is not None and module.data_segments is None and module.data_count:
        cursor.fail("data count section without a data section", len(data))
    return ModuleShape(
        memories=module.memories, tables=len(module.tables), functions=len(module.functions)
    )


def _type_section(section: _Cursor, module: _Module) -> None:
    for _ in range(section.count(MAX_TYPES, "types")):
        offset = section.pos
        form = section.byte()
        if form != 0x60:
            section.fail("only function types are supported (garbage collection types)", offset)
        params = tuple(section.value_type() for _ in range(section.count(MAX_PARAMS, "parameters")))
        results = tuple(section.value_type() for _ in range(section.count(MAX_RESULTS, "results")))
        module.types.append((params, results))


def _limits(section: _Cursor, maximum_allowed: int, what: str) -> None:
    offset = section.pos
    flags = section.byte()
    if flags & 0x02 and what == "memory":
        section.fail("shared memories (threads proposal) are not supported", offset)
    if flags & 0x04:
        section.fail(f"64-bit {what} indices are not supported", offset)
    if flags & 0x08 and what == "memory":
        section.fail("custom page sizes are not supported", offset)
    if flags > 0x01:
        section.fail(f"invalid {what} limits flags 0x{flags:02x}", offset)
    minimum = section.u32()
    if minimum > maximum_allowed:
        section.fail(f"{what} size must be at most {maximum_allowed}", offset)
    if flags & 0x01:
        maximum = section.u32()
        if maximum > maximum_allowed:
            section.fail(f"{what} size must be at most {maximum_allowed}", offset)
        if maximum < minimum:
            section.fail(f"{what} size minimum must not be greater than maximum", offset)


def _table_type(section: _Cursor, module: _Module) -> None:
    if len(module.tables) >= MAX_TABLES:
        section.fail(f"too many tables (at most {MAX_TABLES})")
    module.tables.append(section.reference_type())
    _limits(section, MAX_TABLE_ELEMENTS, "table")


def _memory_type(section: _Cursor, module: _Module) -> None:
    if module.memories >= MAX_MEMORIES:
        section.fail(f"too many memories (at most {MAX_MEMORIES})")
    module.memories += 1
    _limits(section, MAX_PAGES, "memory")


def _global_type(section: _Cursor) -> tuple[int, bool]:
    value_type = section.value_type()
    offset = section.pos
    mutability = section.byte()
    if mutability > 1:
        section.fail(f"malformed mutability 0x{mutability:02x}", offset)
    return value_type, bool(mutability)


def _import_section(section: _Cursor, module: _Module) -> None:
    for _ in range(section.count(MAX_IMPORTS, "imports")):
        section.name()
        section.name()
        offset = section.pos
        kind = section.byte()
        if kind == 0:
            module.functions.append(section.index(len(module.types), "type"))
            module.imported_functions += 1
        elif kind == 1:
            _table_type(section, module)
        elif kind == 2:
            _memory_type(section, module)
        elif kind == 3:
            module.globals.append(_global_type(section))
            module.imported_globals += 1
        elif kind == 4:
            section.fail("exception handling (tag imports) is not supported", offset)
        else:
            section.fail(f"malformed import kind {kind}", offset)


def _function_section(section: _Cursor, module: _Module) -> None:
    count = section.count(MAX_FUNCTIONS, "functions")
    if count + len(module.functions) > MAX_FUNCTIONS:
        section.fail(f"too many functions (at most {MAX_FUNCTIONS})")
    bound = len(module.types)
    start = section.pos
    if section.end - start == count:
        # Every index is a one-byte LEB128 (fewer than 128 types): checked in one pass.
        indices = section.data[start : section.end]
        if count and max(indices) >= bound:
            section.fail(f"unknown type {max(indices)}", start + indices.index(max(indices)))
        module.functions.extend(indices)
        section.pos = section.end
        return
    for _ in range(count):
        module.functions.append(section.index(bound, "type"))


def _table_section(section: _Cursor, module: _Module) -> None:
    for _ in range(section.count(MAX_TABLES, "tables")):
        _table_type(section, module)


def _memory_section(section: _Cursor, module: _Module) -> None:
    for _ in range(section.count(MAX_MEMORIES, "memories")):
        _memory_type(section, module)


def _global_section(section: _Cursor, module: _Module) -> None:
    count = section.count(MAX_GLOBALS, "globals")
    if count + len(module.globals) > MAX_GLOBALS:
        section.fail(f"too many globals (at most {MAX_GLOBALS})")
    for _ in range(count):
        value_type, mutable = _global_type(section)
        _constant(section, module, value_type)
        module.globals.append((value_type, mutable))


def _export_section(section: _Cursor, module: _Module) -> None:
    names: set[str] = set()
    bounds = (len(module.functions), len(module.tables), module.memories, len(module.globals))
    what = ("function", "table", "memory", "global")
    for _ in range(section.count(MAX_EXPORTS, "exports")):
        offset = section.pos
        name = section.name()
        if name in names:
            section.fail(f"duplicate export name {name!r}", offset)
        names.add(name)
        kind_offset = section.pos
        kind = section.byte()
        if kind == 4:
            section.fail("exception handling (tag exports) is not supported", kind_offset)
        if kind > 4:
            section.fail(f"malformed export kind {kind}", kind_offset)
        section.index(bounds[kind], what[kind])


def _start_section(section: _Cursor, module: _Module) -> None:
    offset = section.pos
    function = section.index(len(module.functions), "function")
    if module.types[module.functions[function]] != ((), ()):
        section.fail("the start function must take and return nothing", offset)


def _element_section(section: _Cursor, module: _Module) -> None:
    for _ in range(section.count(MAX_SEGMENTS, "element segments")):
        offset = section.pos
        flags = section.u32()
        if flags > 7:
            section.fail(f"malformed element segment flags {flags}", offset)
        active = not flags & 0x01
        if active:
            table = section.index(len(module.tables), "table") if flags & 0x02 else 0
            if table >= len(module.tables):
                section.fail("unknown table 0", offset)
            _constant(section, module, _I32)
        uses_expressions = bool(flags & 0x04)
        if flags & 0x03:
            if uses_expressions:
                element_type = section.reference_type()
            else:
                kind_offset = section.pos
                if section.byte() != 0x00:
                    section.fail("malformed element kind", kind_offset)
                element_type = _FUNCREF
        else:
            element_type = _FUNCREF
        if active and module.tables[table] != element_type:
            section.fail("element segment type does not match its table", offset)
        for _ in range(section.count(MAX_TABLE_ELEMENTS, "elements")):
            if uses_expressions:
                _constant(section, module, element_type)
            else:
                section.index(len(module.functions), "function")


def _data_count_section(section: _Cursor, module: _Module) -> None:
    offset = section.pos
    module.data_count = section.u32()
    if module.data_count > MAX_SEGMENTS:
        section.fail(f"too many data segments (at most {MAX_SEGMENTS})", offset)


def _code_section(section: _Cursor, module: _Module) -> None:
    count = section.u32()
    defined = len(module.functions) - module.imported_functions
    if count != defined:
        section.fail("function and code section have inconsistent lengths")
    # The hot loop of a large module (one pass per function body): one-byte LEB128s, by far
    # the common case, are read inline; anything longer goes through the strict reader.
    data = section.data
    end = section.end
    pos = section.pos
    value_types = _VALUE_TYPES
    for _ in range(count):
        offset = pos
        if pos < end and data[pos] < 0x80:
            size = data[pos]
            pos += 1
        else:
            size, pos = _slow_u32(data, pos, end)
            if size > MAX_FUNCTION_SIZE:
                raise WasmBinaryError(
                    f"function body larger than {MAX_FUNCTION_SIZE} bytes", offset
                )
        body_end = pos + size
        if body_end > end:
            raise WasmBinaryError("function body runs past the end of its section", pos)
        if size == 0 or data[body_end - 1] != 0x0B:
            raise WasmBinaryError("function body must end with `end`", body_end)
        groups = data[pos]
        if groups < 0x80:
            pos += 1
        else:
            groups, pos = _slow_u32(data, pos, body_end)
        if groups > body_end - pos:
            raise WasmBinaryError("local declarations run past the end of the body", pos)
        locals_ = 0
        for _ in range(groups):
            if pos < body_end and data[pos] < 0x80:
                locals_ += data[pos]
                pos += 1
            else:
                declared, pos = _slow_u32(data, pos, body_end)
                locals_ += declared
            if pos >= body_end or data[pos] not in value_types:
                raise WasmBinaryError("invalid value type of a local", pos)
            pos += 1
        if locals_ > MAX_LOCALS:
            raise WasmBinaryError(f"too many locals (at most {MAX_LOCALS})", offset)
        pos = body_end
    section.pos = pos
    module.code_count = count


def _slow_u32(data: bytes, pos: int, end: int) -> tuple[int, int]:
    cursor = _Cursor(data, pos, end)
    value = cursor.u32()
    return value, cursor.pos


def _data_section(section: _Cursor, module: _Module) -> None:
    count = section.count(MAX_SEGMENTS, "data segments")
    if module.data_count is not None and count != module.data_count:
        section.fail("data count and data section have inconsistent lengths")
    for _ in range(count):
        offset = section.pos
        flags = section.u32()
        if flags > 2:
            section.fail(f"malformed data segment flags {flags}", offset)
        if flags != 1:
            memory = section.index(module.memories, "memory") if flags == 2 else 0
            if memory >= module.memories:
                section.fail("unknown memory 0", offset)
            _constant(section, module, _I32)
        section.skip(section.u32())
    module.data_segments = count


def _constant(section: _Cursor, module: _Module, expected: int) -> None:
    """One constant instruction of the expected type, then ``end``."""
    offset = section.pos
    op = section.byte()
    if op == 0x41:
        section.sleb(32)
        produced = _I32
    elif op == 0x42:
        section.sleb(64)
        produced = _I64
    elif op == 0x43:
        section.skip(4)
        produced = _F32
    elif op == 0x44:
        section.skip(8)
        produced = _F64
    elif op == 0xFD:
        if section.u32() != 12:
            section.fail("constant expression required", offset)
        section.skip(16)
        produced = _V128
    elif op == 0xD0:
        produced = section.reference_type()
    elif op == 0xD2:
        section.index(len(module.functions), "function")
        produced = _FUNCREF
    elif op == 0x23:
        index = section.index(module.imported_globals, "imported global")
        produced, mutable = module.globals[index]
        if mutable:
            section.fail("constant expression required: the global is mutable", offset)
    else:
        section.fail("constant expression required (extended constants are not supported)", offset)
    if produced != expected:
        section.fail("type mismatch in constant expression", offset)
    if section.byte() != 0x0B:
        section.fail(
            "constant expression required: one instruction, then `end` (extended constants "
            "are not supported)",
            offset,
        )


_SECTIONS = {
    1: _type_section,
    2: _import_section,
    3: _function_section,
    4: _table_section,
    5: _memory_section,
    6: _global_section,
    7: _export_section,
    8: _start_section,
    9: _element_section,
    12: _data_count_section,
    10: _code_section,
    11: _data_section,
}
