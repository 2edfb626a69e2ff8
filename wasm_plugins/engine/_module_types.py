"""The imports and exports of a module with their types, read from the module's own bytes.

Engines are not asked for function types: wasmtime's C API aborts the whole process when asked
the kind of a ``v128`` value type, and each engine spells reference types its own way. The types
are the module's, so they are read from its bytes here, the same for every engine, and carried
after an engine's compiled code (:func:`pack` / :func:`unpack`, :func:`read_packed_types` for a
file) so a module loaded from compiled code knows them too: after, so that the compiled code
starts a file and an engine can map the file as it is. Only the type, import, function, table,
memory, global and export sections are read; code and data are skipped by their sizes.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from typing import Any, NoReturn

import attrs

from wasm_plugins.engine._protocol import ExternInfo, FuncSignature
from wasm_plugins.errors import ModuleError, ValidationIssue

__all__ = [
    "ModuleTypes",
    "pack",
    "read_module_types",
    "read_packed_types",
    "unpack",
    "value_type_name",
]

_VALUE_TYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}
_KINDS = ("func", "table", "memory", "global", "tag")
_PACK_MAGIC = b"WPTYPES2"
_PACK_LENGTH = struct.Struct("<I")
_PACK_TRAILER = _PACK_LENGTH.size + len(_PACK_MAGIC)
_TAIL_READ = 4096
"""Bytes read from the end of packed code at once: the types of most modules fit."""
_PARSED_TYPES: dict[bytes, ModuleTypes] = {}
_PARSED_TYPES_LOCK = threading.Lock()
_PARSED_TYPES_KEPT = 64


def value_type_name(code: int) -> str:
    """The WAT spelling of a one-byte value type; other encodings are ``ref``."""
    return _VALUE_TYPES.get(code, "ref")


@attrs.frozen
class ModuleTypes:
    """A module's imports and exports, in declaration order."""

    imports: tuple[ExternInfo, ...]
    exports: tuple[ExternInfo, ...]

    def signature(self, export: str) -> FuncSignature | None:
        """The type of an exported function, or None when no function has that name."""
        for item in self.exports:
            if item.name == export and item.kind == "func":
                return item.signature
        return None


class _Cursor:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def fail(self, message: str) -> NoReturn:
        raise ModuleError(
            validation_errors=(ValidationIssue(message=message, offset=self.pos),),
            suggestion="rebuild the module; its binary layout could not be read",
        )

    def byte(self) -> int:
        if self.pos >= self.end:
            self.fail("unexpected end of data")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self) -> int:
        result = 0
        for shift in range(0, 64, 7):
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
        self.fail("integer representation too long")

    def name(self) -> str:
        length = self.uleb()
        if length > self.end - self.pos:
            self.fail("name runs past the end of its section")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")

    def value_type(self) -> str:
        code = self.byte()
        if code in (0x63, 0x64):
            # (ref null? heaptype): the heap type is a signed LEB128.
            self.uleb()
            return "ref"
        if code not in _VALUE_TYPES and code < 0x60:
            self.fail(f"invalid value type 0x{code:02x}")
        return value_type_name(code)

    def limits(self) -> tuple[int, int | None]:
        flags = self.byte()
        minimum = self.uleb()
        maximum = self.uleb() if flags & 0x01 else None
        if flags & 0x08:
            self.uleb()
        return minimum, maximum


def read_module_types(wasm: bytes) -> ModuleTypes:
    """Imports and exports with the types the module declares.

    :raises ModuleError: when the sections read are malformed.
    """
    data = bytes(wasm)
    cursor = _Cursor(data, 8, len(data))
    if data[:4] != b"\0asm":
        cursor.fail("not a WebAssembly module (bad magic number)")
    types: list[FuncSignature] = []
    imports: list[ExternInfo] = []
    spaces: dict[str, list[ExternInfo | FuncSignature | None]] = {kind: [] for kind in _KINDS}
    exports: list[ExternInfo] = []
    while cursor.pos < cursor.end:
        section_id = cursor.byte()
        size = cursor.uleb()
        if size > cursor.end - cursor.pos:
            cursor.fail("section size runs past the end of the module")
        section = _Cursor(data, cursor.pos, cursor.pos + size)
        cursor.pos += size
        if section_id == 1:
            types = _types(section)
        elif section_id == 2:
            imports = _imports(section, types, spaces)
        elif section_id == 3:
            spaces["func"].extend(_function_types(section, types))
        elif section_id in (4, 5):
            for _ in range(section.uleb()):
                if section_id == 4:
                    section.value_type()
                    section.limits()
                    spaces["table"].append(None)
                else:
                    minimum, maximum = section.limits()
                    spaces["memory"].append(
                        ExternInfo(name="", kind="memory", minimum=minimum, maximum=maximum)
                    )
        elif section_id == 6:
            spaces["global"].extend(None for _ in range(section.uleb()))
        elif section_id == 7:
            exports = _exports(section, spaces)
    return ModuleTypes(tuple(imports), tuple(exports))


def _types(section: _Cursor) -> list[FuncSignature]:
    types = []
    for _ in range(section.uleb()):
        if section.byte() != 0x60:
            section.fail("only function types are supported")
        params = tuple(section.value_type() for _ in range(_count(section)))
        results = tuple(section.value_type() for _ in range(_count(section)))
        types.append(FuncSignature(params, results))
    return types


def _count(section: _Cursor) -> int:
    count = section.uleb()
    # Every element takes at least one byte: this bounds loops on hostile counts.
    if count > section.end - section.pos:
        section.fail("count runs past the end of its section")
    return count


def _function_types(section: _Cursor, types: list[FuncSignature]) -> list[FuncSignature]:
    count = section.uleb()
    start = section.pos
    indices = section.data[start : section.end]
    if len(indices) == count and (not count or max(indices) < len(types)):
        # One byte per type index, the common case: no per-function decoding.
        section.pos = section.end
        return [types[index] for index in indices]
    return [_signature_at(section, types) for _ in range(count)]


def _signature_at(section: _Cursor, types: list[FuncSignature]) -> FuncSignature:
    index = section.uleb()
    if index >= len(types):
        section.fail(f"type index {index} out of range")
    return types[index]


def _imports(
    section: _Cursor,
    types: list[FuncSignature],
    spaces: dict[str, list[ExternInfo | FuncSignature | None]],
) -> list[ExternInfo]:
    imports = []
    for _ in range(_count(section)):
        module = section.name()
        name = section.name()
        kind = section.byte()
        if kind == 0:
            signature = _signature_at(section, types)
            spaces["func"].append(signature)
            imports.append(ExternInfo(name=name, module=module, kind="func", signature=signature))
        elif kind == 1:
            section.value_type()
            section.limits()
            spaces["table"].append(None)
            imports.append(ExternInfo(name=name, module=module, kind="table"))
        elif kind == 2:
            minimum, maximum = section.limits()
            info = ExternInfo(
                name=name, module=module, kind="memory", minimum=minimum, maximum=maximum
            )
            spaces["memory"].append(info)
            imports.append(info)
        elif kind == 3:
            section.value_type()
            section.byte()
            spaces["global"].append(None)
            imports.append(ExternInfo(name=name, module=module, kind="global"))
        elif kind == 4:
            section.byte()
            section.uleb()
            imports.append(ExternInfo(name=name, module=module, kind="tag"))
        else:
            section.fail(f"unknown import kind {kind}")
    return imports


def _exports(
    section: _Cursor, spaces: dict[str, list[ExternInfo | FuncSignature | None]]
) -> list[ExternInfo]:
    exports = []
    for _ in range(_count(section)):
        name = section.name()
        kind_code = section.byte()
        index = section.uleb()
        if kind_code >= len(_KINDS):
            section.fail(f"unknown export kind {kind_code}")
        kind = _KINDS[kind_code]
        space = spaces[kind]
        item = space[index] if index < len(space) else None
        if isinstance(item, FuncSignature):
            exports.append(ExternInfo(name=name, kind=kind, signature=item))
        elif isinstance(item, ExternInfo):
            exports.append(attrs.evolve(item, name=name, module=None))
        else:
            exports.append(ExternInfo(name=name, kind=kind))
    return exports


def pack(types: ModuleTypes, compiled: bytes) -> bytes:
    """Compiled code followed by the module's types, for :func:`unpack`."""
    header = json.dumps(
        [[_row(item) for item in types.imports], [_row(item) for item in types.exports]],
        separators=(",", ":"),
    ).encode()
    return b"".join((compiled, header, _PACK_LENGTH.pack(len(header)), _PACK_MAGIC))


def unpack(data: bytes) -> tuple[ModuleTypes, bytes]:
    """The types and the engine's compiled code from :func:`pack` output.

    :raises ModuleError: when the data was not made by :func:`pack`.
    """
    try:
        if not data.endswith(_PACK_MAGIC) or len(data) < _PACK_TRAILER:
            raise ValueError("no module types after the compiled code")
        (length,) = _PACK_LENGTH.unpack_from(data, len(data) - _PACK_TRAILER)
        end = len(data) - _PACK_TRAILER - length
        if end < 0:
            raise ValueError("the module types run past the start of the data")
        types = _parse_types(bytes(data[end : len(data) - _PACK_TRAILER]))
    except (ValueError, TypeError, struct.error) as exc:
        raise _unpack_error(exc) from None
    return types, data[:end]


def read_packed_types(descriptor: int, size: int) -> tuple[ModuleTypes, int]:
    """The types at the end of the first ``size`` bytes of an open file of :func:`pack` output,
    and the size of the compiled code before them; read with one ``pread`` for most modules.

    :raises ModuleError: when the file's first ``size`` bytes were not made by :func:`pack`.
    """
    try:
        tail_size = min(size, _TAIL_READ)
        tail = os.pread(descriptor, tail_size, size - tail_size)
        if len(tail) != tail_size or not tail.endswith(_PACK_MAGIC) or size < _PACK_TRAILER:
            raise ValueError("no module types after the compiled code")
        (length,) = _PACK_LENGTH.unpack_from(tail, tail_size - _PACK_TRAILER)
        end = size - _PACK_TRAILER - length
        if end < 0:
            raise ValueError("the module types run past the start of the file")
        if length + _PACK_TRAILER <= tail_size:
            header = tail[tail_size - _PACK_TRAILER - length : tail_size - _PACK_TRAILER]
        else:
            header = os.pread(descriptor, length, end)
            if len(header) != length:
                raise ValueError("the file ends inside the module types")
        return _parse_types(header), end
    except (ValueError, TypeError, struct.error) as exc:
        raise _unpack_error(exc) from None


def _parse_types(header: bytes) -> ModuleTypes:
    # Loading one module again and again (a warm cache, a sandbox per thread) parses the same
    # few hundred bytes each time: kept parsed, by content, in a small bounded table.
    found = _PARSED_TYPES.get(header)
    if found is not None:
        return found
    imports, exports = json.loads(header)
    types = ModuleTypes(tuple(_item(row) for row in imports), tuple(_item(row) for row in exports))
    with _PARSED_TYPES_LOCK:
        if len(_PARSED_TYPES) >= _PARSED_TYPES_KEPT:
            _PARSED_TYPES.pop(next(iter(_PARSED_TYPES)))
        _PARSED_TYPES[header] = types
    return types


def _unpack_error(exc: Exception) -> ModuleError:
    return ModuleError(
        message=f"Invalid module: cannot load compiled code: {exc}",
        suggestion="compile the module again from its source",
    )


def _row(item: ExternInfo) -> list[Any]:
    signature = item.signature
    return [
        item.name,
        item.kind,
        item.module,
        None if signature is None else [list(signature.params), list(signature.results)],
        item.minimum,
        item.maximum,
    ]


def _item(row: list[Any]) -> ExternInfo:
    name, kind, module, signature, minimum, maximum = row
    return ExternInfo(
        name=str(name),
        kind=str(kind),
        module=module,
        signature=None
        if signature is None
        else FuncSignature(tuple(signature[0]), tuple(signature[1])),
        minimum=minimum,
        maximum=maximum,
    )
