"""Throughput of the checks a module goes through before an engine compiles it.

Builds modules of about 1 MB and 20 MB (many small functions: the worst case, one body header to
read per ~100 bytes; and one large data segment: the best case) and times, side by side, our
structural validation, the reading of import and export types, the memory/table rewrite, and
wasmtime's own validation of the same bytes. Prints MB/s (best of ``--repeat`` runs)::

    .venv/bin/python benchmarks/bench_validate.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import wasmtime

from wasm_plugins.engine._module_types import read_module_types
from wasm_plugins.sandbox._binary import prepare_module
from wasm_plugins.sandbox._validate import validate_module

MB = 1_000_000


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _leb(len(payload)) + payload


def many_functions(size: int) -> bytes:
    """A module of ``(i32) -> i32`` functions of about 100 bytes each, up to ``size`` bytes."""
    # Body: one i32 local, then (local.get 0 i32.const 1 i32.add local.set 1) repeated, end.
    step = b"\x20\x00\x41\x01\x6a\x21\x01"
    code = b"\x01\x01\x7f" + step * 13 + b"\x20\x01\x0b"
    body = _leb(len(code)) + code
    count = size // len(body)
    return b"".join(
        (
            b"\0asm\1\0\0\0",
            _section(1, b"\x01\x60\x01\x7f\x01\x7f"),
            _section(3, _leb(count) + b"\x00" * count),
            _section(5, b"\x01\x00\x01"),
            _section(7, b"\x01" + _leb(6) + b"memory" + b"\x02\x00"),
            _section(10, _leb(count) + body * count),
        )
    )


def one_data_segment(size: int) -> bytes:
    """A module whose bytes are nearly all one active data segment."""
    pages = size // 65536 + 1
    data = b"\x00\x41\x00\x0b" + _leb(size) + bytes(size)
    return b"".join(
        (
            b"\0asm\1\0\0\0",
            _section(5, b"\x01\x00" + _leb(pages)),
            _section(11, b"\x01" + data),
        )
    )


def best(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    engine = wasmtime.Engine()
    print(f"{'module':<26}{'validate':>12}{'types':>12}{'rewrite':>12}{'wasmtime':>12}  (MB/s)")
    for label, make in (("functions", many_functions), ("data segment", one_data_segment)):
        for size in (1 * MB, 20 * MB):
            wasm = make(size)
            validate_module(wasm)
            wasmtime.Module.validate(engine, wasm)
            row = [
                best(args.repeat, lambda wasm=wasm: validate_module(wasm)),
                best(args.repeat, lambda wasm=wasm: read_module_types(wasm)),
                best(
                    args.repeat,
                    lambda wasm=wasm: prepare_module(
                        wasm, memory_limit_bytes=64 << 20, table_limit_elements=100_000
                    ),
                ),
                best(args.repeat, lambda wasm=wasm: wasmtime.Module.validate(engine, wasm)),
            ]
            name = f"{label}, {len(wasm) / MB:.1f} MB"
            print(f"{name:<26}" + "".join(f"{len(wasm) / MB / seconds:>12.0f}" for seconds in row))


if __name__ == "__main__":
    main()
