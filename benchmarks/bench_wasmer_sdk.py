"""What the wasmer-sdk engine costs: a call, a fresh process, a timeout, threads and memory.

Run: ``python benchmarks/bench_wasmer_sdk.py`` (Linux: threads and RSS come from /proc).
Prints medians; figures depend on the machine and its load, so note ``uptime`` beside them.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins.engine._wasmer_sdk import resource_usage  # noqa: E402
from wasm_plugins.errors import DeadlineExceeded  # noqa: E402
from wasm_plugins.sandbox import Limits, Sandbox  # noqa: E402

ABI = ROOT / "hostapi" / "conformance" / "abi.wat"


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def calls(engine: str, count: int = 2000) -> float:
    sandbox = Sandbox(ABI, engine=engine, codec="raw")
    sandbox.call("echo", b"x")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sandbox.call("echo", b"hello")
        samples.append(time.perf_counter() - start)
    sandbox.close()
    return median_us(samples)


def fresh_instances(count: int = 50) -> float:
    sandbox = Sandbox(ABI, engine="wasmer-sdk", codec="raw")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sandbox.loaded.instantiate()
        samples.append(time.perf_counter() - start)
    return median_us(samples)


def timeout_stop(runs: int = 3) -> float:
    sandbox = Sandbox(ABI, engine="wasmer-sdk", limits=Limits(timeout=0.3))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            sandbox.call("loop_forever")
        except DeadlineExceeded:
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def per_plugin(engine: str, live: int = 8) -> tuple[float, float]:
    """Native threads and RSS (MiB) each live plugin adds (a sandbox that has called once)."""
    warm = Sandbox(ABI, engine=engine)
    warm.call("echo", 0)
    before = resource_usage()
    sandboxes = [Sandbox(ABI, engine=engine) for _ in range(live)]
    for sandbox in sandboxes:
        sandbox.call("echo", 1)
    after = resource_usage()
    threads = (after["threads"] - before["threads"]) / live
    rss = (after["rss_bytes"] - before["rss_bytes"]) / live / 2**20
    for sandbox in sandboxes:
        sandbox.close()
    return threads, rss


def main() -> None:
    print(f"tiny call, wasmer-sdk: {calls('wasmer-sdk'):.0f} us median")
    print(f"tiny call, wasmtime:   {calls('wasmtime'):.1f} us median")
    print(f"fresh instance (process), wasmer-sdk: {fresh_instances():.0f} us median")
    print(f"endless loop, timeout 300 ms, stopped after: {timeout_stop():.0f} ms median")
    for engine in ("wasmer-sdk", "wasmtime"):
        threads, rss = per_plugin(engine)
        print(f"per live plugin, {engine}: {threads:.1f} threads, {rss:.1f} MiB RSS")
    print(f"process now: {resource_usage()}")


if __name__ == "__main__":
    main()
