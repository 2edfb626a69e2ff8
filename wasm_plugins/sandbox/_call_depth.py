"""A call-depth bound written into the module: a rewriter pass for engines whose own stack guard
is costly.

wasmer 1.1 lets a guest recurse until the thread's native stack ends, then describes every frame
in its trap: one endless recursion on an 8 MiB stack costs the host about 120 MiB of peak memory
and most of a second with the GIL held. This pass gives the module a mutable ``i32`` global (the
depth, exported as :data:`DEPTH_EXPORT`) and wraps every function body as

    depth += 1; if depth > MAX_DEPTH: unreachable
    block (result ...) <the body, with each return a branch out of this block> end
    depth -= 1

so a recursion stops after :data:`MAX_DEPTH` frames, and its trap describes no more than that.
Branches to the function's own label now reach the wrapping block, whose end is followed by the
decrement; ``return`` becomes a branch to the same place. A trap leaves the depth above the bound
only when the bound was what trapped, which is how the sandbox tells a stack overflow from the
guest's own ``unreachable``. A trap of any kind discards the instance, so the depth a trap leaves
behind is never seen by a later call.

Bodies that could leave the function another way (tail calls, exceptions) are not something this
pass rewrites: such a module is returned unchanged and keeps the engine's own guard.
"""

from __future__ import annotations

import re

from wasm_plugins.sandbox._binary import (
    _FUNC_FORM,
    _I32,
    _K_BLOCK,
    _K_BYTES4,
    _K_BYTES8,
    _K_FC,
    _K_GROW,
    _K_LEB,
    _K_LEB2,
    _K_MEMARG,
    _K_NONE,
    _K_UNKNOWN,
    _MUTABLE,
    _OPCODE_KINDS,
    _SEC_CODE,
    _SEC_EXPORT,
    _SEC_FUNCTION,
    _SEC_GLOBAL,
    _SEC_IMPORT,
    _SEC_TYPE,
    WasmBinaryError,
    _appended,
    _assemble,
    _code_uleb,
    _encode_name,
    _encode_uleb,
    _expect_end,
    _export_offset,
    _find,
    _parse_imports,
    _Reader,
    _Section,
    _skip_blocktype,
    _skip_leb,
    _skip_locals,
    _skip_memarg,
    _skip_prefixed,
    _skip_structured,
    _skip_valtype,
    _split_sections,
    _Unsupported,
    _vec_count,
)
from wasm_plugins.sandbox._stack import WASM_STACK

__all__ = ["DEPTH_EXPORT", "MAX_DEPTH", "bound_call_depth"]

DEPTH_EXPORT = "__wasm_plugins_call_depth"
SMALLEST_FRAME = 16
"""Bytes of native stack the smallest guest frame takes on wasmtime (a one-argument recursion
stops after 32 761 frames under its 512 KiB limit)."""
MAX_DEPTH = WASM_STACK // SMALLEST_FRAME
"""Guest frames a call may stack: as deep as the smallest frames go under wasmtime's stack limit,
so a recursion that runs on one engine runs on the other."""

_OP_UNREACHABLE = 0x00
_OP_BLOCK = 0x02
_OP_IF = 0x04
_OP_END = 0x0B
_OP_BR = 0x0C
_OP_RETURN = 0x0F
_OP_GLOBAL_GET = 0x23
_OP_GLOBAL_SET = 0x24
_OP_I32_CONST = 0x41
_OP_I32_GT_U = 0x4B
_OP_I32_ADD = 0x6A
_OP_I32_SUB = 0x6B
_BLOCK_EMPTY = 0x40
_EXPORT_GLOBAL = 0x03
_OPENS = frozenset({0x02, 0x03, 0x04})
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


def _returns_to_branches(data: bytes, code: int, end: int) -> bytes | None:
    """The instructions in [code, end) with each ``return`` made a branch to the label that
    wraps them, or ``None`` when there is no ``return``. Raises _Unsupported for a way out of the
    function that a branch cannot replace."""
    kinds = _OPCODE_KINDS
    parts: list[bytes] = []
    copied = code
    nesting = 0
    pos = code
    while pos < end:
        start = pos
        op = data[pos]
        pos += 1
        kind = kinds[op]
        if op in _LEAVES_OTHERWISE or kind == _K_UNKNOWN:
            raise _Unsupported
        if kind == _K_NONE:
            if op == _OP_END:
                nesting -= 1
            elif op == _OP_RETURN:
                parts.append(data[copied:start])
                parts.append(bytes([_OP_BR]) + _encode_uleb(nesting))
                copied = pos
            continue
        if kind == _K_LEB:
            pos = _skip_leb(data, pos)
        elif kind == _K_MEMARG:
            pos = _skip_memarg(data, pos, end)
        elif kind == _K_BLOCK:
            nesting += op in _OPENS
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


def bound_call_depth(wasm: bytes, max_depth: int = MAX_DEPTH) -> bytes:
    """The module with its call depth bounded by ``max_depth`` frames (see the module's text);
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
    leave = get + bytes([_OP_I32_CONST, 1, _OP_I32_SUB]) + put + bytes([_OP_END])
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
        if _NEEDS_DECODING.search(data, code, body_end):
            instructions = _returns_to_branches(data, code, body_end)
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
