"""Synthetic modules of a given size for the load benchmarks: many functions of ordinary code
(loads and stores, arithmetic, blocks, branches, calls) and one ``memory.grow``, like a
compiled program with an allocator."""

from __future__ import annotations


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(payload)) + payload


def _vector(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _body(index: int) -> bytes:
    """``(func (param i32 i32) (result i32))`` doing ordinary work, calling the one before."""
    k = _sleb(index * 7919 % 100_000)
    code = bytearray()
    for step in range(6):
        code += b"\x20\x00\x28\x02" + _uleb(64 + step * 4)  # local.get 0; i32.load offset=..
        code += b"\x41" + k + b"\x6a"  # i32.const k; i32.add
        code += b"\x21\x02"  # local.set 2
        code += b"\x02\x40"  # block
        code += b"\x20\x02\x20\x01\x49\x0d\x00"  # local.get 2; local.get 1; i32.lt_u; br_if 0
        code += b"\x20\x00\x20\x02\x36\x02" + _uleb(128 + step * 4)  # i32.store offset=..
        code += b"\x0b"  # end
    code += b"\x20\x02\x20\x01\x04\x7f"  # local.get 2; local.get 1; if (result i32)
    if index:
        code += b"\x20\x00\x41\x01\x10" + _uleb(index - 1)  # call the previous function
    else:
        code += b"\x20\x00"
    code += b"\x05\x20\x02\x0b"  # else local.get 2 end
    code += b"\x6a\x0b"  # i32.add; end
    locals_ = b"\x01\x01\x7f"
    content = locals_ + bytes(code)
    return _uleb(len(content)) + content


# (func (export "wp_alloc") (param i32) (result i32) local.get 0 memory.grow)
_GROW = b"\x06\x00\x20\x00\x40\x00\x0b"


def synthetic_module(size: int, code: int | None = None) -> bytes:
    """A valid module of about ``size`` bytes, ``code`` of them function bodies (all by
    default), the rest passive data segments (as a language runtime carries its snapshot)."""
    code = size if code is None else code
    sample = len(_body(1000))
    count = max(1, (code - 200) // sample)
    data = size - code
    chunk = 1 << 20
    segments = [b"\x01" + _uleb(n) + bytes(range(256)) * (n // 256) for n in _chunks(data, chunk)]
    bodies = [_body(i) for i in range(count)] + [_GROW, b"\x02\x00\x0b"]
    types = _vector([b"\x60\x02\x7f\x7f\x01\x7f", b"\x60\x01\x7f\x01\x7f", b"\x60\x02\x7f\x7f\x00"])
    functions = _vector([b"\x00"] * count + [b"\x01", b"\x02"])
    memory = _vector([b"\x00\x02"])
    exports = _vector(
        [
            b"\x06memory\x02\x00",
            b"\x08wp_alloc\x00" + _uleb(count),
            b"\x07wp_free\x00" + _uleb(count + 1),
            b"\x04work\x00" + _uleb(count - 1),
        ]
    )
    return b"".join(
        (
            b"\x00asm\x01\x00\x00\x00",
            _section(1, types),
            _section(3, functions),
            _section(5, memory),
            _section(7, exports),
            _section(10, _vector(bodies)),
            _section(11, _vector(segments)) if segments else b"",
        )
    )


def _chunks(total: int, chunk: int) -> list[int]:
    sizes = [chunk] * (total // chunk)
    rest = total - sum(sizes)
    return sizes + ([rest - rest % 256] if rest >= 256 else [])
