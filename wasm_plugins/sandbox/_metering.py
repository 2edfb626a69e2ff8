"""Metering by instrumentation: fuel and deadlines for engines that meter nothing themselves.

:func:`meter_module` gives a module

- a mutable i64 global, the fuel counter, appended after the module's globals (no global index
  moves) and exported as :data:`FUEL_EXPORT`; it starts at 0;
- an imported function :data:`METER_MODULE` ``.`` :data:`METER_FUNCTION` ``(i64) -> i64``,
  appended after the module's imports: every defined function's index goes up by one, so every
  ``call``, ``ref.func``, function export, element segment, start function and function name
  is renumbered;
- a charge at the start of every region of straight-line code (a basic block)::

      fuel -= cost                                   # every region
      if fuel < 0: fuel = refill(fuel)               # function entries and loop headers only

  where the meter (:class:`wasm_plugins.engine._meter.Meter`, on the host) either hands out more
  fuel, or raises the typed error of the limit that was reached, which stops the guest;
- ``memory.copy`` and ``memory.fill`` of memory 0 become calls of helper functions appended
  after the module's functions (no index moves), which charge their length before running them.

Costs are counted as wasmtime counts its native fuel: one unit per instruction, none for
``nop``, ``drop``, ``block``, ``loop``, ``end``, ``else``, ``return`` and ``unreachable``, one
unit per function entered, and one per byte that ``memory.copy`` or ``memory.fill`` moves. A
region ends where control may leave or join it (after ``br``, ``br_table``, ``return``,
``unreachable``, ``if`` and ``else``, at a loop header, after the ``end`` of an ``if``, a loop,
or a block some branch targets) and is charged in full before it runs. A ``br_if`` to a label
that takes no values does not end its region: it becomes ``if (fuel += rest of the region; br)
end``, so the path that falls through pays nothing more and the one that branches is given back
what it did not run (a loop with an exit test costs one charge per iteration); a ``br_if``
carrying values ends its region. The units are then wasmtime's (``docs/engines.md`` gives the
measurements), except for instructions wasmtime charges by size that are not rewritten
(``memory.init``, the table bulk instructions, a copy or fill of a memory other than 0): one
unit each here.

The pass is a pure function of the bytes (the sandbox runs it before compiling, and the module
cache keys on :data:`METERING_VERSION`). Modules using instructions it does not know
(exceptions, tail calls, which no engine here runs) are refused with :class:`WasmBinaryError`.
"""

from __future__ import annotations

from wasm_plugins.engine import (
    FUEL_EXPORT,
    METER_FUNCTION,
    METER_MODULE,
    register_metering_pass,
)
from wasm_plugins.errors import ModuleError, ValidationIssue
from wasm_plugins.sandbox._binary import (
    K_BLOCK as _K_BLOCK,
)
from wasm_plugins.sandbox._binary import (
    K_BYTES4 as _K_BYTES4,
)
from wasm_plugins.sandbox._binary import (
    K_BYTES8 as _K_BYTES8,
)
from wasm_plugins.sandbox._binary import (
    K_FC as _K_FC,
)
from wasm_plugins.sandbox._binary import (
    K_GROW as _K_GROW,
)
from wasm_plugins.sandbox._binary import (
    K_LEB as _K_LEB,
)
from wasm_plugins.sandbox._binary import (
    K_LEB2 as _K_LEB2,
)
from wasm_plugins.sandbox._binary import (
    K_MEMARG as _K_MEMARG,
)
from wasm_plugins.sandbox._binary import (
    K_NONE as _K_NONE,
)
from wasm_plugins.sandbox._binary import (
    K_UNKNOWN as _K_UNKNOWN,
)
from wasm_plugins.sandbox._binary import (
    LEAVES_OTHERWISE as _LEAVES_OTHERWISE,
)
from wasm_plugins.sandbox._binary import (
    OPCODE_KINDS as _OPCODE_KINDS,
)
from wasm_plugins.sandbox._binary import (
    SEC_CODE as _SEC_CODE,
)
from wasm_plugins.sandbox._binary import (
    SEC_CUSTOM as _SEC_CUSTOM,
)
from wasm_plugins.sandbox._binary import (
    SEC_EXPORT as _SEC_EXPORT,
)
from wasm_plugins.sandbox._binary import (
    SEC_FUNCTION as _SEC_FUNCTION,
)
from wasm_plugins.sandbox._binary import (
    SEC_GLOBAL as _SEC_GLOBAL,
)
from wasm_plugins.sandbox._binary import (
    SEC_IMPORT as _SEC_IMPORT,
)
from wasm_plugins.sandbox._binary import (
    SEC_TYPE as _SEC_TYPE,
)
from wasm_plugins.sandbox._binary import (
    SHORT_VALTYPES as _SHORT_VALTYPES,
)
from wasm_plugins.sandbox._binary import (
    Reader as _Reader,
)
from wasm_plugins.sandbox._binary import (
    Section as _Section,
)
from wasm_plugins.sandbox._binary import (
    Unsupported as _Unsupported,
)
from wasm_plugins.sandbox._binary import (
    WasmBinaryError,
)
from wasm_plugins.sandbox._binary import (
    appended as _appended,
)
from wasm_plugins.sandbox._binary import (
    assemble as _assemble,
)
from wasm_plugins.sandbox._binary import (
    code_uleb as _code_uleb,
)
from wasm_plugins.sandbox._binary import (
    count_types as _count_types,
)
from wasm_plugins.sandbox._binary import (
    encode_name as _encode_name,
)
from wasm_plugins.sandbox._binary import (
    encode_uleb as _encode_uleb,
)
from wasm_plugins.sandbox._binary import (
    expect_end as _expect_end,
)
from wasm_plugins.sandbox._binary import (
    export_offset as _export_offset,
)
from wasm_plugins.sandbox._binary import (
    find as _find,
)
from wasm_plugins.sandbox._binary import (
    function_type_indices as _function_type_indices,
)
from wasm_plugins.sandbox._binary import (
    parse_imports as _parse_imports,
)
from wasm_plugins.sandbox._binary import (
    reader_valtype as _reader_valtype,
)
from wasm_plugins.sandbox._binary import (
    skip_blocktype as _skip_blocktype,
)
from wasm_plugins.sandbox._binary import (
    skip_heaptype as _skip_heaptype,
)
from wasm_plugins.sandbox._binary import (
    skip_leb as _skip_leb,
)
from wasm_plugins.sandbox._binary import (
    skip_memarg as _skip_memarg,
)
from wasm_plugins.sandbox._binary import (
    skip_prefixed as _skip_prefixed,
)
from wasm_plugins.sandbox._binary import (
    skip_structured as _skip_structured,
)
from wasm_plugins.sandbox._binary import (
    skip_valtype as _skip_valtype,
)
from wasm_plugins.sandbox._binary import (
    sleb32 as _sleb32,
)
from wasm_plugins.sandbox._binary import (
    split_sections as _split_sections,
)
from wasm_plugins.sandbox._binary import (
    vec_count as _vec_count,
)

__all__ = [
    "FUEL_EXPORT",
    "METERING_VERSION",
    "METER_FUNCTION",
    "METER_MODULE",
    "instruction_cost",
    "meter_module",
    "metered_or_refused",
]

METERING_VERSION = 2
"""Changes whenever :func:`meter_module`'s output for the same input could change, or what an
engine does with it (2: wasmer-sdk meters every module, with fuel or not)."""

_SEC_START = 8
_SEC_ELEMENT = 9
_OP_LOOP = 0x03
_OP_END = 0x0B
_OP_CALL = 0x10
_OP_REF_FUNC = 0xD2
_EXPORT_FUNC = 0x00
_EXPORT_GLOBAL = 0x03
_I32 = 0x7F
_I64 = 0x7E
_MUTABLE = 0x01

_FREE = frozenset({0x00, 0x01, 0x02, 0x03, 0x05, 0x0B, 0x0F, 0x1A})
"""unreachable, nop, block, loop, else, end, return, drop: no fuel on wasmtime either."""
_COSTS = bytes(0 if op in _FREE else 1 for op in range(256))


def instruction_cost(opcode: int) -> int:
    """The units an instruction with this first byte costs (prefixed instructions: 1)."""
    return _COSTS[opcode]


def metered_or_refused(wasm: bytes) -> bytes:
    """:func:`meter_module`, a module it cannot meter refused as a :class:`ModuleError`."""
    try:
        return meter_module(wasm)
    except WasmBinaryError as exc:
        raise ModuleError(
            validation_errors=(ValidationIssue(message=exc.message, offset=exc.offset),),
            suggestion=(
                f"rename the export {FUEL_EXPORT!r} (the name is reserved), or use an engine "
                "that meters fuel and time itself (engine='wasmtime')"
            ),
        ) from None


def meter_module(wasm: bytes) -> bytes:
    """The module with fuel charged at function entries and loop headers (see above).

    :raises WasmBinaryError: for a malformed module, one that already imports from
        :data:`METER_MODULE` or exports :data:`FUEL_EXPORT`, or one the pass cannot rewrite.
    """
    data = bytes(wasm)
    sections = _split_sections(data)
    export_section = _find(sections, _SEC_EXPORT)
    clash = _export_offset(data, export_section, FUEL_EXPORT.encode())
    if clash is not None:
        raise WasmBinaryError(f"module already exports {FUEL_EXPORT!r}", clash)
    import_section = _find(sections, _SEC_IMPORT)
    imports = _parse_imports(data, import_section)
    try:
        return _metered(data, sections, imports.functions, imports.globals)
    except _Unsupported:
        raise WasmBinaryError(
            "the module uses instructions or types the metering pass cannot rewrite", 0
        ) from None
    except IndexError:
        raise WasmBinaryError("function body runs past the end of the module", 0) from None


def _metered(data: bytes, sections: list[_Section], functions: int, imported_globals: int) -> bytes:
    type_section = _find(sections, _SEC_TYPE)
    import_section = _find(sections, _SEC_IMPORT)
    global_section = _find(sections, _SEC_GLOBAL)
    meter_type = _count_types(data, type_section)
    _refuse_meter_imports(data, import_section)
    globals_payload, defined_globals = _renumbered_globals(data, global_section, functions)
    fuel = imported_globals + defined_globals
    meter = functions  # the new import comes after every imported function
    import_entry = (
        _encode_name(METER_MODULE)
        + _encode_name(METER_FUNCTION)
        + bytes([0x00])
        + _encode_uleb(meter_type)
    )
    type_count, first_type = _vec_count(data, type_section)
    types = b"" if type_section is None else data[first_type : type_section.end]
    payloads: dict[int, bytes] = {
        # (i64) -> (i64) for the meter, (i32 i32 i32) -> () for the bulk-memory helpers
        _SEC_TYPE: _encode_uleb(type_count + 2)
        + types
        + bytes([0x60, 1, _I64, 1, _I64, 0x60, 3, _I32, _I32, _I32, 0]),
        _SEC_IMPORT: _appended(data, import_section, import_entry),
        _SEC_GLOBAL: _encode_uleb(defined_globals + 1)
        + globals_payload
        + bytes([_I64, _MUTABLE, 0x42, 0, _OP_END]),  # (mut i64) (i64.const 0)
        _SEC_EXPORT: _renumbered_exports(
            data,
            _find(sections, _SEC_EXPORT),
            functions,
            _encode_name(FUEL_EXPORT) + bytes([_EXPORT_GLOBAL]) + _encode_uleb(fuel),
        ),
    }
    start = _find(sections, _SEC_START)
    if start is not None:
        reader = _Reader(data, start.body, start.end)
        index = reader.u32()
        _expect_end(reader)
        payloads[_SEC_START] = _encode_uleb(_shifted(index, functions))
    element = _find(sections, _SEC_ELEMENT)
    if element is not None:
        payloads[_SEC_ELEMENT] = _renumbered_elements(data, element, functions)
    code = _find(sections, _SEC_CODE)
    if code is not None:
        function_section = _find(sections, _SEC_FUNCTION)
        defined, first = _vec_count(data, function_section)
        charges = _Charges(fuel, meter, functions + 1 + defined)
        payloads[_SEC_CODE] = _metered_code(
            data,
            code,
            functions,
            charges,
            _param_counts(data, type_section),
            _function_type_indices(data, function_section),
        )
        if charges.helpers and function_section is not None:
            payloads[_SEC_FUNCTION] = (
                _encode_uleb(defined + len(charges.helpers))
                + data[first : function_section.end]
                + _encode_uleb(meter_type + 1) * len(charges.helpers)
            )
    kept = [s for s in sections if not _is_name_section(data, s)]
    out = _assemble(data, kept, payloads)
    names = [s for s in sections if _is_name_section(data, s)]
    for section in names:
        renamed = _renumbered_names(data, section, functions)
        if renamed is not None:
            out += bytes([_SEC_CUSTOM]) + _encode_uleb(len(renamed)) + renamed
    return out


def _shifted(index: int, functions: int) -> int:
    return index + 1 if index >= functions else index


def _refuse_meter_imports(data: bytes, section: _Section | None) -> None:
    if section is None:
        return
    reader = _Reader(data, section.body, section.end)
    for _ in range(reader.u32()):
        entry = reader.pos
        if reader.name() == METER_MODULE.encode():
            raise WasmBinaryError(f"module already imports from {METER_MODULE!r}", entry)
        reader.name()
        kind = reader.byte()
        if kind == 0:
            reader.u32()
        elif kind == 1:
            _reader_valtype(reader)
            _limits(reader)
        elif kind == 2:
            _limits(reader)
        elif kind == 3:
            _reader_valtype(reader)
            reader.byte()
        else:
            reader.byte()
            reader.u32()


def _limits(reader: _Reader) -> None:
    flags = reader.byte()
    read = reader.u64 if flags & 0x04 else reader.u32
    read()
    if flags & 0x01:
        read()
    if flags & 0x08:
        reader.u32()


def _renumbered_expr(data: bytes, pos: int, end: int, functions: int) -> tuple[bytes, int]:
    """A constant expression starting at ``pos`` with ``ref.func`` renumbered, and the
    position after its ``end``."""
    parts: list[bytes] = []
    copied = pos
    while True:
        if pos >= end:
            raise WasmBinaryError("constant expression runs past the end of its section", pos)
        start = pos
        op = data[pos]
        pos += 1
        if op == _OP_END:
            break
        if op == _OP_REF_FUNC:
            index, pos = _code_uleb(data, pos, end)
            if index >= functions:
                parts += [data[copied:start], bytes([op]) + _encode_uleb(index + 1)]
                copied = pos
        elif op in (0x23, 0x41, 0x42):  # global.get, i32.const, i64.const
            pos = _skip_leb(data, pos)
        elif op == 0x43:
            pos += 4
        elif op == 0x44:
            pos += 8
        elif op == 0xD0:
            pos = _skip_heaptype(data, pos, end)
        elif op == 0xFD:
            sub, pos = _code_uleb(data, pos, end)
            if sub != 12:
                raise _Unsupported
            pos += 16
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended constants
            continue
        else:
            raise _Unsupported
    parts.append(data[copied:pos])
    return b"".join(parts), pos


def _renumbered_globals(data: bytes, section: _Section | None, functions: int) -> tuple[bytes, int]:
    """The global entries (without their count) with ``ref.func`` renumbered, and their count."""
    if section is None:
        return b"", 0
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    parts: list[bytes] = []
    for _ in range(count):
        start = reader.pos
        _reader_valtype(reader)
        reader.byte()
        parts.append(data[start : reader.pos])
        expr, reader.pos = _renumbered_expr(data, reader.pos, reader.end, functions)
        parts.append(expr)
    _expect_end(reader)
    return b"".join(parts), count


def _renumbered_exports(
    data: bytes, section: _Section | None, functions: int, new_entry: bytes
) -> bytes:
    if section is None:
        return b"\x01" + new_entry
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    parts: list[bytes] = [_encode_uleb(count + 1)]
    for _ in range(count):
        start = reader.pos
        reader.name()
        kind = reader.byte()
        parts.append(data[start : reader.pos])
        index = reader.u32()
        parts.append(_encode_uleb(_shifted(index, functions) if kind == _EXPORT_FUNC else index))
    _expect_end(reader)
    parts.append(new_entry)
    return b"".join(parts)


def _renumbered_elements(data: bytes, section: _Section, functions: int) -> bytes:
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    parts: list[bytes] = [_encode_uleb(count)]
    for _ in range(count):
        start = reader.pos
        flags = reader.u32()
        if flags > 7:
            reader.fail(f"invalid element segment flags {flags}", start)
        if not flags & 0x01:
            if flags & 0x02:
                reader.u32()
            parts.append(data[start : reader.pos])
            expr, reader.pos = _renumbered_expr(data, reader.pos, reader.end, functions)
            parts.append(expr)
            start = reader.pos
        if flags & 0x03:
            if flags & 0x04:
                _reader_valtype(reader)
            else:
                reader.byte()  # elemkind
        items = reader.u32()
        parts.append(data[start : reader.pos])
        for _ in range(items):
            if flags & 0x04:
                expr, reader.pos = _renumbered_expr(data, reader.pos, reader.end, functions)
                parts.append(expr)
            else:
                parts.append(_encode_uleb(_shifted(reader.u32(), functions)))
    _expect_end(reader)
    return b"".join(parts)


def _is_name_section(data: bytes, section: _Section) -> bool:
    if section.id != _SEC_CUSTOM:
        return False
    reader = _Reader(data, section.body, section.end)
    return reader.name() == b"name"


def _renumbered_names(data: bytes, section: _Section, functions: int) -> bytes | None:
    """The ``name`` section's payload with function indices renumbered (function, local and
    label names); ``None`` (the section is dropped) when it does not parse."""
    try:
        reader = _Reader(data, section.body, section.end)
        parts: list[bytes] = [_encode_name("name")]
        reader.name()
        while reader.pos < reader.end:
            kind = reader.byte()
            size = reader.u32()
            body = reader.pos
            reader.skip(size)
            if kind not in (1, 2, 3):
                parts.append(bytes([kind]) + _encode_uleb(size) + data[body : reader.pos])
                continue
            sub = _Reader(data, body, reader.pos)
            entries: list[bytes] = []
            count = sub.u32()
            entries.append(_encode_uleb(count))
            for _ in range(count):
                entries.append(_encode_uleb(_shifted(sub.u32(), functions)))
                start = sub.pos
                if kind == 1:
                    sub.name()
                else:
                    for _ in range(sub.u32()):
                        sub.u32()
                        sub.name()
                entries.append(data[start : sub.pos])
            _expect_end(sub)
            content = b"".join(entries)
            parts.append(bytes([kind]) + _encode_uleb(len(content)) + content)
        return b"".join(parts)
    except WasmBinaryError:
        return None


_GLOBAL_ACCESS = frozenset({0x23, 0x24})  # global.get, global.set
_INDEXED = frozenset({_OP_CALL, _OP_REF_FUNC}) | _GLOBAL_ACCESS
_REWRITTEN = _INDEXED | {0x11, 0xFC}  # and call_indirect, memory.copy and memory.fill
_BLOCK = 0
_LOOP = 1
_IF = 2
_EMPTY_BLOCK = 0x40
_OP_BLOCK = 0x02
_OP_IF = 0x04
_OP_BR_TABLE = 0x0E


class _Charges:
    """The code the pass inserts in one module: charges (a subtraction, or one followed by the
    check), refunds, the counter's moves between a function's local and the global, and the
    bulk-memory helpers."""

    __slots__ = (
        "check_only",
        "checked",
        "first_helper",
        "flush",
        "fuel",
        "global_get",
        "global_set",
        "helpers",
        "meter",
        "plain",
        "prefix",
        "reload",
    )

    def __init__(self, fuel: int, meter: int, first_helper: int) -> None:
        self.fuel = fuel
        self.meter = meter
        self.first_helper = first_helper
        self.helpers: list[int] = []
        """The bulk-memory instructions (sub-opcodes) given a helper, in index order."""
        self.global_get = bytes([0x23]) + _encode_uleb(fuel)
        self.global_set = bytes([0x24]) + _encode_uleb(fuel)
        self.flush = self.reload = b""
        self.counter(self.global_get, self.global_set)

    def counter(self, get: bytes, put: bytes) -> None:
        """Charge the counter read by ``get`` and written by ``put``: the fuel global, or a
        function's local copy of it (kept in a register by the engine's compiler)."""
        self.prefix = get + bytes([0x42])  # <counter>; i64.const <cost>
        self.plain = bytes([0x7D]) + put  # i64.sub; set <counter>
        # if counter < 0: counter = refill(counter)
        self.check_only = b"".join(
            (
                get,
                bytes([0x42, 0x00, 0x53, 0x04, 0x40]),  # i64.const 0; i64.lt_s; if
                get,
                bytes([_OP_CALL]) + _encode_uleb(self.meter),
                put,
                bytes([_OP_END]),
            )
        )
        self.checked = self.plain + self.check_only

    def local_counter(self, local: int) -> None:
        """A function whose counter is its local ``local``: loaded from the global at entry and
        after every call, stored back before every call and every way out."""
        get = bytes([0x20]) + _encode_uleb(local)
        put = bytes([0x21]) + _encode_uleb(local)
        self.counter(get, put)
        self.flush = get + self.global_set
        self.reload = self.global_get + put

    def bulk_call(self, sub: int) -> bytes:
        """A call of the helper that charges a ``memory.copy`` or ``memory.fill`` of memory 0
        by its length, as wasmtime does, then runs it."""
        if sub not in self.helpers:
            self.helpers.append(sub)
        return bytes([_OP_CALL]) + _encode_uleb(self.first_helper + self.helpers.index(sub))

    def helper_bodies(self) -> list[bytes]:
        self.counter(self.global_get, self.global_set)
        bodies = []
        for sub in self.helpers:
            code = b"".join(
                (
                    self.prefix[:-1],  # global.get fuel
                    bytes([0x20, 2, 0xAD]),  # local.get 2 (the length); i64.extend_i32_u
                    self.checked,
                    bytes([0x20, 0, 0x20, 1, 0x20, 2, 0xFC, sub]),
                    bytes(2 if sub == _MEMORY_COPY else 1),  # memory 0 (and 0)
                    bytes([_OP_END]),
                )
            )
            bodies.append(_encode_uleb(len(code) + 1) + b"\x00" + code)
        return bodies

    def close(
        self,
        parts: list[bytes],
        at: int,
        cost: int,
        refunds: list[tuple[int, int]],
        *,
        checked: bool,
    ) -> None:
        """Charge a region of this cost at ``parts[at]``, and give each of its refunding
        ``br_if`` (the branch in ``parts[index]``) back the cost of the rest of the region."""
        parts[at] = self.code(cost, checked=checked)
        for index, so_far in refunds:
            rest = cost - so_far
            if rest:
                depth, _ = _code_uleb(parts[index], 1, len(parts[index]))
                parts[index] = b"".join(
                    (
                        bytes([_OP_IF, _EMPTY_BLOCK]),
                        self.prefix,
                        _sleb32(rest),
                        bytes([0x7C]),  # i64.add
                        self.plain[1:],  # global.set fuel
                        bytes([_OP_BR]) + _encode_uleb(depth + 1),
                        bytes([_OP_END]),
                    )
                )
        refunds.clear()

    def code(self, cost: int, *, checked: bool) -> bytes:
        """What charges a region of this cost (a check at function entries and loop headers)."""
        if not cost:
            return self.check_only if checked else b""
        return self.prefix + _sleb32(cost) + (self.checked if checked else self.plain)


def _metered_code(
    data: bytes,
    section: _Section,
    functions: int,
    charges: _Charges,
    params: list[int],
    function_types: list[int],
) -> bytes:
    reader = _Reader(data, section.body, section.end)
    count = reader.u32()
    if count != len(function_types):
        raise WasmBinaryError("function and code section counts differ", section.start)
    chunks: list[bytes] = []
    end = section.end
    pos = reader.pos
    for type_index in function_types:
        size, pos = _code_uleb(data, pos, end)
        body_end = pos + size
        if body_end > end or type_index >= len(params):
            raise WasmBinaryError("function body runs past the end of its section", pos)
        groups, first = _code_uleb(data, pos, body_end)
        declared, code = 0, first
        for _ in range(groups):
            repeat, code = _code_uleb(data, code, body_end)
            declared += repeat
            code = _skip_valtype(data, code, body_end)
        if code > body_end or data[body_end - 1] != _OP_END:
            raise WasmBinaryError("function body does not end with end", body_end)
        # One more local, the counter, after the parameters and the declared locals.
        charges.local_counter(params[type_index] + declared)
        locals_ = _encode_uleb(groups + 1) + data[first:code] + bytes([1, _I64])
        parts = _metered_body(data, code, body_end, functions, charges)
        content = b"".join((locals_, charges.reload, *parts))
        chunks.append(_encode_uleb(len(content)))
        chunks.append(content)
        pos = body_end
    if pos != end:
        raise WasmBinaryError("code section has bytes after its last body", pos)
    helpers = charges.helper_bodies()
    return _encode_uleb(count + len(helpers)) + b"".join(chunks) + b"".join(helpers)


def _param_counts(data: bytes, section: _Section | None) -> list[int]:
    """Each function type's parameter count (raises _Unsupported for other type forms)."""
    counts: list[int] = []
    if section is None:
        return counts
    reader = _Reader(data, section.body, section.end)
    for _ in range(reader.u32()):
        if reader.byte() != 0x60:
            raise _Unsupported
        for results in (False, True):
            arity = reader.u32()
            if not results:
                counts.append(arity)
            for _ in range(arity):
                _reader_valtype(reader)
    _expect_end(reader)
    return counts


def _metered_body(
    data: bytes, code: int, end: int, functions: int, charges: _Charges
) -> list[bytes]:
    """The instructions in [code, end), charged and renumbered, as parts to join.

    A region (a basic block) ends where control may leave or join it: after a branch,
    ``return``, ``unreachable``, ``if`` or ``else``, at a loop header, and after the ``end`` of
    an ``if``, a loop, or a block that a branch targets. Its charge goes in ``parts[at]``, in
    front of its first instruction, once its cost is known. A ``br_if`` to a label that takes no
    values does not end its region: it becomes ``if (refund the rest of the region; br) end``,
    so that falling through costs nothing more, the path that branches gets back what it did not
    run.
    """
    kinds, costs, leaves = _OPCODE_KINDS, _COSTS, _LEAVES_OTHERWISE
    parts: list[bytes] = [b""]
    at, cost, checked = 0, 1, True  # the entry region: one unit for the call itself
    refunds: list[tuple[int, int]] = []  # the region's br_ifs: (index in parts, cost so far)
    frames: list[int] = []  # one per open block, loop or if: kind, targeted, takes no values
    copied = pos = code
    while pos < end:
        start = pos
        op = data[pos]
        pos += 1
        if op in leaves:
            raise _Unsupported
        cost += costs[op]
        kind = kinds[op]
        if op in _REWRITTEN and (kind != _K_FC or data.startswith(_BULK_ON_MEMORY_0, pos)):
            pos, rewritten = _rewritten(op, data, start, pos, end, functions, charges)
            if rewritten is not None:
                parts += (data[copied:start], rewritten)
                copied = pos
            continue
        pos, boundary = _boundary(op, kind, data, pos, end, frames)
        if boundary & _LEAVES:  # the counter goes back to the global on the way out
            parts += (data[copied:start], charges.flush)
            copied = start
            boundary &= ~_LEAVES
        if boundary == _REFUNDED:
            parts.append(data[copied:start])
            refunds.append((len(parts), cost))
            parts.append(data[start:pos])
            copied = pos
        elif boundary:
            charges.close(parts, at, cost, refunds, checked=checked)
            parts.append(data[copied:pos])
            copied = pos
            at, cost, checked = len(parts), 0, op == _OP_LOOP
            parts.append(b"")
    if pos != end or frames:
        raise WasmBinaryError("instruction runs past the end of the function body", end)
    # Falling off the end of the body is a way out too.
    parts += (data[copied : end - 1], charges.flush, bytes([_OP_END]))
    charges.close(parts, at, cost, refunds, checked=checked)
    return parts


_TARGETED = 4
_NO_VALUES = 8
_SPLIT = 1
_REFUNDED = 2
_LEAVES = 16
_OP_RETURN = 0x0F
_OP_CALL_INDIRECT = 0x11
_PREFIX_FC = 0xFC
_MEMORY_COPY = 10
_BULK_ON_MEMORY_0 = (b"\x0a\x00\x00", b"\x0b\x00")
"""memory.copy 0 0 and memory.fill 0, after their prefix."""
_ENDS_REGION = frozenset({0x00, 0x05, 0x0F})  # unreachable, else, return
_OP_BR = 0x0C
_OP_BR_IF = 0x0D


def _boundary(
    op: int, kind: int, data: bytes, pos: int, end: int, frames: list[int]
) -> tuple[int, int]:
    """The position after the instruction's immediates, and whether a region ends after it
    (``_SPLIT``), goes on past a ``br_if`` that refunds (``_REFUNDED``), or neither (0).
    ``frames`` follows the blocks it opens and closes, and marks the blocks branched to."""
    if kind == _K_NONE:
        if op == _OP_END:
            # The function's own end, or a block's that is only reached by falling through,
            # leaves control where it was.
            return pos, _SPLIT if frames and frames.pop() & ~_NO_VALUES != _BLOCK else 0
        if op == _OP_RETURN:
            return pos, _SPLIT | _LEAVES
        return pos, _SPLIT if op in _ENDS_REGION else 0
    if kind == _K_BLOCK:
        # What a branch to the label carries: a loop's parameters, a block's results.
        blocktype = data[pos]
        none = blocktype == _EMPTY_BLOCK or (op == _OP_LOOP and blocktype in _SHORT_VALTYPES)
        pos = _skip_blocktype(data, pos, end)
        frame = _LOOP if op == _OP_LOOP else _IF if op == _OP_IF else _BLOCK
        frames.append(frame | (_NO_VALUES if none else 0))
        return pos, _SPLIT if op != _OP_BLOCK else 0
    if op in (_OP_BR, _OP_BR_IF):
        depth, pos = _code_uleb(data, pos, end)
        refunded = op == _OP_BR_IF and depth < len(frames) and frames[-1 - depth] & _NO_VALUES
        leaves = _LEAVES if depth >= len(frames) else 0
        _target(frames, depth)
        return pos, (_REFUNDED if refunded else _SPLIT) | leaves
    if op == _OP_BR_TABLE:
        count, pos = _code_uleb(data, pos, end)
        if count > end - pos:
            raise WasmBinaryError("vector runs past the end of the function body", pos)
        leaves = 0
        for _ in range(count + 1):
            depth, pos = _code_uleb(data, pos, end)
            leaves |= _LEAVES if depth >= len(frames) else 0
            _target(frames, depth)
        return pos, _SPLIT | leaves
    if kind == _K_LEB:
        return _skip_leb(data, pos), 0
    return _skip_immediates(kind, data, pos, end), 0


def _target(frames: list[int], depth: int) -> None:
    if depth < len(frames):
        frames[-1 - depth] |= _TARGETED


def _rewritten(
    op: int, data: bytes, start: int, pos: int, end: int, functions: int, charges: _Charges
) -> tuple[int, bytes | None]:
    """The position after a call, a bulk-memory instruction or an instruction naming a
    function or a global, and the code that replaces it (``None``: kept as it is). A call
    stores the counter in the global before, and loads it back after (the callee uses it)."""
    if op == _PREFIX_FC:
        sub = data[pos]
        call = charges.bulk_call(sub)
        pos += 3 if sub == _MEMORY_COPY else 2
    elif op == _OP_CALL_INDIRECT:
        pos = _skip_leb(data, _skip_leb(data, pos))
        call = data[start:pos]
    else:
        index, pos = _code_uleb(data, pos, end)
        renumbered = _renumbered_index(op, index, start, functions, charges.fuel)
        if op != _OP_CALL:
            return pos, renumbered
        call = renumbered or data[start:pos]
    return pos, charges.flush + call + charges.reload


def _renumbered_index(op: int, index: int, at: int, functions: int, fuel: int) -> bytes | None:
    """The instruction again with its function index renumbered, or ``None`` to keep it."""
    if op in _GLOBAL_ACCESS:
        # Bodies are not validated before this pass: an index one past the module's globals
        # would name the fuel counter once it is appended, and the guest could refill itself.
        if index >= fuel:
            raise WasmBinaryError("global index out of range", at)
        return None
    return bytes([op]) + _encode_uleb(index + 1) if index >= functions else None


def _skip_immediates(kind: int, data: bytes, pos: int, end: int) -> int:
    """The position after the immediates of an instruction of any other kind."""
    if kind == _K_MEMARG:
        return _skip_memarg(data, pos, end)
    if kind == _K_LEB2:
        return _skip_leb(data, _skip_leb(data, pos))
    if kind == _K_GROW:
        return _code_uleb(data, pos, end)[1]
    if kind == _K_BYTES4:
        return pos + 4
    if kind == _K_BYTES8:
        return pos + 8
    if kind == _K_UNKNOWN:
        raise _Unsupported
    if kind >= _K_FC:
        return _skip_prefixed(kind, data, pos, end)
    return _skip_structured(kind, data, pos, end)


register_metering_pass(metered_or_refused)
