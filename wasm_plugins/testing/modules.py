"""Small valid plugin modules written in WAT, and mutations of module bytes.

A :class:`GeneratedModule` is a complete ABI-1 module (``memory``, ``wp_alloc``, ``wp_free`` and one
export per :class:`GuestFunction`) whose functions each do something with their input (echo it,
count its bytes, reverse it...), with a model in Python of what each returns
(:meth:`GeneratedModule.expected`), so a test can check a host against it. :class:`Mutation`
breaks module bytes the way a corrupted download or a hostile author would: byte flips,
truncations, reordered, dropped or duplicated sections, inserted bytes.

The Hypothesis strategies that draw these live in :mod:`wasm_plugins.testing.strategies`; this
module needs nothing but the standard library and attrs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from wasm_plugins.sandbox import get_codec
from wasm_plugins.testing.plugins import bump_allocator_wat

__all__ = [
    "JSON_OPERATIONS",
    "MUTATIONS",
    "OPERATIONS",
    "GeneratedModule",
    "GuestFunction",
    "Mutation",
    "constant_text",
    "has_start_section",
    "module_sections",
]

OPERATIONS = (
    "echo",
    "length",
    "sum",
    "count",
    "wrap",
    "constant",
    "reverse",
    "upper",
    "xor",
    "head",
)
"""What a generated function does with its input bytes."""

JSON_OPERATIONS = ("echo", "length", "sum", "count", "wrap", "constant")
"""The operations whose output is JSON whenever their input is (usable with the JSON codec)."""

_CONSTANTS_AT = 256
_CONSTANTS_ROOM = 700
_SCRATCH_END = 80
_HEAP = 1024


@attrs.frozen
class GuestFunction:
    """One exported plugin function: its name, its operation and the operation's argument (the
    byte ``count`` counts, the key ``xor`` applies, the length ``head`` keeps, the index of the
    ``constant`` it returns)."""

    name: str
    operation: str = attrs.field(validator=attrs.validators.in_(OPERATIONS))
    argument: int = 0


def _loop(body: str) -> str:
    """A loop over ``$i`` from 0 to ``$len`` around ``body``."""
    return f"""
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      {body}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))"""


_IN = "(i32.load8_u (i32.add (local.get $ptr) (local.get $i)))"
_OUT_AT = "(i32.add (local.get $o) (local.get $i))"


def _body(function: GuestFunction, constants: Sequence[tuple[int, int]]) -> str:
    operation, argument = function.operation, function.argument
    if operation == "echo":
        return "(call $pack (local.get $ptr) (local.get $len))"
    if operation == "length":
        return "(call $number (local.get $len))"
    if operation == "sum":
        add = f"(local.set $acc (i32.add (local.get $acc) {_IN}))"
        return _loop(add) + "\n    (call $number (local.get $acc))"
    if operation == "count":
        add = f"(local.set $acc (i32.add (local.get $acc) (i32.eq {_IN} (i32.const {argument}))))"
        return _loop(add) + "\n    (call $number (local.get $acc))"
    if operation == "constant":
        offset, length = constants[argument]
        return f"(call $pack (i32.const {offset}) (i32.const {length}))"
    if operation == "head":
        return (
            "(call $pack (local.get $ptr) (if (result i32) (i32.lt_u (local.get $len) "
            f"(i32.const {argument})) (then (local.get $len)) (else (i32.const {argument}))))"
        )
    if operation == "wrap":
        copy = f"(i32.store8 (i32.add (local.get $o) (i32.add (local.get $i) (i32.const 1))) {_IN})"
        return (
            "(local.set $o (call $reserve (i32.add (local.get $len) (i32.const 2))))\n"
            "    (i32.store8 (local.get $o) (i32.const 91))"
            + _loop(copy)
            + "\n    (i32.store8 (i32.add (local.get $o) (i32.add (local.get $len) (i32.const 1)))"
            " (i32.const 93))\n"
            "    (call $pack (local.get $o) (i32.add (local.get $len) (i32.const 2)))"
        )
    if operation == "reverse":
        step = (
            f"(i32.store8 {_OUT_AT} (i32.load8_u (i32.add (local.get $ptr) "
            "(i32.sub (i32.sub (local.get $len) (i32.const 1)) (local.get $i)))))"
        )
    elif operation == "upper":
        step = (
            f"(local.set $acc {_IN})\n"
            "      (if (i32.and (i32.ge_u (local.get $acc) (i32.const 97))"
            " (i32.le_u (local.get $acc) (i32.const 122)))\n"
            "        (then (local.set $acc (i32.sub (local.get $acc) (i32.const 32)))))\n"
            f"      (i32.store8 {_OUT_AT} (local.get $acc))"
        )
    else:  # xor
        step = f"(i32.store8 {_OUT_AT} (i32.xor {_IN} (i32.const {argument})))"
    return (
        "(local.set $o (call $reserve (local.get $len)))"
        + _loop(step)
        + "\n    (call $pack (local.get $o) (local.get $len))"
    )


def _wat_string(data: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in data)


_PRELUDE = """
  (global $out (mut i32) (i32.const 0))
  (global $capacity (mut i32) (i32.const 0))

{allocator}

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; The guest-owned output buffer, reused by every call and grown when an output is larger.
  (func $reserve (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (global.get $capacity))
      (then
        (global.set $out (call $alloc (local.get $size)))
        (if (i32.eqz (global.get $out)) (then unreachable))
        (global.set $capacity (local.get $size))))
    (global.get $out))

  ;; The decimal digits of an unsigned number, written backwards from the end of a scratch area.
  (func $number (param $value i32) (result i64)
    (local $pos i32)
    (local.set $pos (i32.const {scratch}))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos)
        (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $digit (local.get $value)))
    (call $pack (local.get $pos) (i32.sub (i32.const {scratch}) (local.get $pos))))
"""


@attrs.frozen
class GeneratedModule:
    """A small ABI-1 module: ``functions`` over a ``pages``-page memory, with ``constants`` (JSON
    texts) in a data segment for the ``constant`` operation."""

    functions: tuple[GuestFunction, ...]
    constants: tuple[str, ...] = ()
    pages: int = 1

    def __attrs_post_init__(self) -> None:
        names = [function.name for function in self.functions]
        if not names:
            raise ValueError("a module needs at least one function")
        if len(set(names)) != len(names):
            raise ValueError(f"function names must be unique, got {names}")
        if any(name.startswith("wp_") or name == "memory" for name in names):
            raise ValueError("names starting with wp_ and the name memory are reserved")
        if sum(len(text.encode()) for text in self.constants) > _CONSTANTS_ROOM:
            raise ValueError(f"the constants take more than {_CONSTANTS_ROOM} bytes")
        for function in self.functions:
            if function.operation == "constant" and not 0 <= function.argument < len(
                self.constants
            ):
                raise ValueError(f"{function.name}: no constant {function.argument}")

    def _layout(self) -> list[tuple[int, int]]:
        places, offset = [], _CONSTANTS_AT
        for text in self.constants:
            size = len(text.encode())
            places.append((offset, size))
            offset += size
        return places

    @property
    def wat(self) -> str:
        """The module's WAT text."""
        places = self._layout()
        parts = [
            "(module",
            f'  (memory (export "memory") {self.pages})',
        ]
        if self.constants:
            data = b"".join(text.encode() for text in self.constants)
            parts.append(f'  (data (i32.const {_CONSTANTS_AT}) "{_wat_string(data)}")')
        parts.append(_PRELUDE.format(scratch=_SCRATCH_END, allocator=bump_allocator_wat(_HEAP)))
        for function in self.functions:
            parts.append(
                f'  (func (export "{function.name}") (param $ptr i32) (param $len i32) '
                "(result i64)\n"
                "    (local $i i32) (local $acc i32) (local $o i32)\n"
                f"    {_body(function, places)})"
            )
        parts.append(")")
        return "\n".join(parts) + "\n"

    @property
    def names(self) -> tuple[str, ...]:
        """The plugin functions' names."""
        return tuple(function.name for function in self.functions)

    @property
    def json_safe(self) -> bool:
        """Whether every function answers JSON to JSON (the module works with the JSON codec)."""
        return all(function.operation in JSON_OPERATIONS for function in self.functions)

    def function(self, name: str) -> GuestFunction:
        """The function called ``name``.

        :raises KeyError: when there is none.
        """
        for function in self.functions:
            if function.name == name:
                return function
        raise KeyError(name)

    def expected(self, name: str, data: bytes) -> bytes:
        """What function ``name`` returns for the input bytes ``data`` (the raw codec's view)."""
        function = self.function(name)
        operation, argument = function.operation, function.argument
        if operation == "echo":
            return data
        if operation == "length":
            return str(len(data) % 2**32).encode()
        if operation == "sum":
            return str(sum(data) % 2**32).encode()
        if operation == "count":
            return str(data.count(bytes([argument]))).encode()
        if operation == "wrap":
            return b"[" + data + b"]"
        if operation == "constant":
            return self.constants[argument].encode()
        if operation == "reverse":
            return data[::-1]
        if operation == "upper":
            return bytes(byte - 32 if 97 <= byte <= 122 else byte for byte in data)
        if operation == "xor":
            return bytes(byte ^ argument for byte in data)
        return data[:argument]  # head

    def expected_value(self, name: str, value: Any) -> Any:
        """What function ``name`` returns through the JSON codec for the input ``value``."""

        codec = get_codec("json")
        return codec.decode(self.expected(name, codec.encode(value)))

    def __str__(self) -> str:
        return self.wat


def _leb_u32(data: bytes, position: int) -> tuple[int, int] | None:
    """An unsigned LEB128 at ``position``: (value, position after it), or None when malformed."""
    result = shift = 0
    for count in range(5):
        if position + count >= len(data):
            return None
        byte = data[position + count]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position + count + 1
        shift += 7
    return None


def module_sections(wasm: bytes) -> list[tuple[int, bytes]] | None:
    """The top-level sections of module bytes, as (section id, the section's bytes with its
    header); None when the bytes are not a sequence of well-formed sections after the 8-byte
    preamble."""
    if len(wasm) < 8:
        return None
    sections: list[tuple[int, bytes]] = []
    position = 8
    while position < len(wasm):
        start = position
        section_id = wasm[position]
        size = _leb_u32(wasm, position + 1)
        if size is None:
            return None
        length, body = size
        end = body + length
        if end > len(wasm):
            return None
        sections.append((section_id, wasm[start:end]))
        position = end
    return sections


MUTATIONS = ("flip", "truncate", "reorder", "drop", "duplicate", "insert")


@attrs.frozen
class Mutation:
    """One change to module bytes; positions wrap around, so any mutation applies to any bytes.

    - ``flip``: the byte at ``position`` becomes ``value``;
    - ``truncate``: keep the first ``position`` bytes;
    - ``reorder``: put the sections in the order ``order`` (indices, wrapped);
    - ``drop``: remove the section at index ``position``;
    - ``duplicate``: repeat the section at index ``position`` right after itself;
    - ``insert``: insert ``data`` at ``position``.

    Section mutations leave bytes whose sections cannot be read unchanged.
    """

    kind: str = attrs.field(validator=attrs.validators.in_(MUTATIONS))
    position: int = 0
    value: int = 0
    order: tuple[int, ...] = ()
    data: bytes = b""

    def apply(self, wasm: bytes) -> bytes:
        """The mutated bytes."""
        if self.kind == "flip":
            if not wasm:
                return wasm
            at = self.position % len(wasm)
            return wasm[:at] + bytes([self.value & 0xFF]) + wasm[at + 1 :]
        if self.kind == "truncate":
            return wasm[: self.position % (len(wasm) + 1)]
        if self.kind == "insert":
            at = self.position % (len(wasm) + 1)
            return wasm[:at] + self.data + wasm[at:]
        sections = module_sections(wasm)
        if not sections:
            return wasm
        chunks = [chunk for _, chunk in sections]
        if self.kind == "reorder":
            order = [index % len(chunks) for index in self.order] or list(range(len(chunks)))
            chunks = [chunks[index] for index in order]
        elif self.kind == "drop":
            del chunks[self.position % len(chunks)]
        else:  # duplicate
            index = self.position % len(chunks)
            chunks.insert(index, chunks[index])
        return wasm[:8] + b"".join(chunks)


def has_start_section(wasm: bytes) -> bool:
    """Whether module bytes declare a start function (guest code that runs at instantiation).
    Bytes whose sections cannot be read count as having none: an engine refuses them before it
    instantiates anything."""
    return any(section_id == 8 for section_id, _ in module_sections(wasm) or ())


def constant_text(value: Any) -> str:
    """A JSON value as the compact text the ``constant`` operation returns."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
