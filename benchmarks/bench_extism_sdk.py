"""What one Extism kernel call costs on wasmer-sdk, against wasmtime.

    python benchmarks/bench_extism_sdk.py [--rounds 9]

On wasmer-sdk the plugin runs in an SDK process and its kernel in this process (on wasmtime):
every kernel import the plugin calls is a pipe round trip. ``benchmarks/extism_echo.wat`` copies
its input 8 bytes per ``input_load_u64`` and ``store_u64``, so an echo of 8 KiB makes 2 048 more
kernel calls than an echo of nothing; the difference of the two medians, divided by 2 048, is the
cost of one kernel call. The empty echo is the cost of a call with 3 kernel calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins.sandbox import Sandbox  # noqa: E402

PLUGIN = ROOT / "benchmarks" / "extism_echo.wat"
SIZE = 8192
KERNEL_CALLS = 2 * SIZE // 8


def _median(sandbox: Sandbox, data: bytes, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        if sandbox.call_bytes("echo", data) != data:
            raise SystemExit("wrong output")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    options = parser.parse_args()
    for engine in ("wasmer-sdk", "wasmtime"):
        sandbox = Sandbox(PLUGIN, engine=engine, codec="raw")
        sandbox.call_bytes("echo", b"")
        empty = _median(sandbox, b"", options.rounds)
        full = _median(sandbox, bytes(SIZE), options.rounds)
        per_call = (full - empty) / KERNEL_CALLS
        print(
            f"{engine}: echo of 0 B {empty * 1e6:,.1f} µs, of {SIZE} B {full * 1e6:,.1f} µs, "
            f"one kernel call {per_call * 1e6:,.3f} µs"
        )
        sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
