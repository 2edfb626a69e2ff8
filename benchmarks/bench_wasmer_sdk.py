"""What the wasmer-sdk engine costs: a call, a fresh process, a timeout, threads and memory;
and, in the same run, a call and a timeout's overshoot on every engine and on the Extism SDK.

Run: ``python benchmarks/bench_wasmer_sdk.py [--rounds 7]`` (Linux: threads and RSS come from
/proc). Prints medians; figures depend on the machine and its load, so note ``uptime`` beside
them. The per-call comparison runs its benchmarks in interleaved rounds (round 1 of each, then
round 2...), so that a machine getting busier slows all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins import PluginHost  # noqa: E402
from wasm_plugins.engine import default_registry  # noqa: E402
from wasm_plugins.engine._wasmer_sdk import resource_usage  # noqa: E402
from wasm_plugins.errors import DeadlineExceeded  # noqa: E402
from wasm_plugins.sandbox import Limits, Sandbox  # noqa: E402

ABI = ROOT / "hostapi" / "conformance" / "abi.wat"
ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
EXTISM_ECHO = ROOT / "benchmarks" / "extism_echo.wat"
PAYLOAD = {"text": "hello", "n": 1}
ENGINES = ("wasmer", "wasmtime", "wasmer-sdk")


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


def _available() -> list[str]:
    availability = default_registry().availability()
    return [name for name in ENGINES if availability.get(name) is None]


def _extism_call() -> Callable[[], Any] | None:
    try:
        import extism  # noqa: PLC0415 optional
        import wasmtime  # noqa: PLC0415
    except ImportError:
        return None
    plugin = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_ECHO.read_text())), wasi=False)

    def call() -> Any:
        return plugin.call("echo", json.dumps(PAYLOAD), parse=lambda out: json.loads(bytes(out)))

    return call


def compared_calls(rounds: int, calls_per_round: int) -> dict[str, float]:
    """The same JSON echo through ``Sandbox.call`` and ``PluginHost.call`` on every engine here,
    and through the Extism SDK: per-call medians (µs) of interleaved rounds."""
    benchmarks: dict[str, Callable[[], Any]] = {}
    hosts = []
    for engine in _available():
        sandbox = Sandbox(ECHO, engine=engine)
        benchmarks[f"Sandbox.call, {engine}"] = lambda s=sandbox: s.call("echo", PAYLOAD)
        host = PluginHost(engine=engine)
        host.load({"name": "echo", "module": {"path": str(ECHO)}})
        hosts.append(host)
        benchmarks[f"PluginHost.call, {engine}"] = lambda h=host: h.call("echo", "echo", PAYLOAD)
    extism_call = _extism_call()
    if extism_call is not None:
        benchmarks["Extism SDK call"] = extism_call
    for call in benchmarks.values():
        assert call() == PAYLOAD
    samples: dict[str, list[float]] = {name: [] for name in benchmarks}
    for _ in range(rounds):
        for name, call in benchmarks.items():
            count = calls_per_round if "wasmer-sdk" not in name else max(calls_per_round // 20, 20)
            start = time.perf_counter()
            for _ in range(count):
                call()
            samples[name].append((time.perf_counter() - start) / count)
    for host in hosts:
        host.close()
    return {name: median_us(values) for name, values in samples.items()}


def overshoot(engine: str, timeout: float, runs: int) -> float:
    """Median time past ``timeout`` (ms) an endless loop ran on ``engine`` before it stopped."""
    sandbox = Sandbox(ABI, engine=engine, limits=Limits(timeout=timeout))
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            sandbox.call("loop_forever")
        except DeadlineExceeded:
            samples.append(time.perf_counter() - start - timeout)
    sandbox.close()
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per benchmark")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (in-process)")
    arguments = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    figures = compared_calls(arguments.rounds, arguments.calls)
    floor = figures.get("Sandbox.call, wasmtime")
    for name, value in figures.items():
        ratio = f"  ({value / floor:.1f}x Sandbox.call on wasmtime)" if floor else ""
        print(f"{name:32} {value:9.1f} us median{ratio}")
    for engine in _available():
        for timeout in (0.01, 0.1):
            late = overshoot(engine, timeout, 5)
            print(
                f"timeout {timeout * 1e3:.0f} ms on {engine}: ended {late:.2f} ms late "
                f"({late / (timeout * 1e3):.3f} of the timeout), median of 5"
            )
    print(f"tiny call, wasmer-sdk: {calls('wasmer-sdk'):.0f} us median")
    print(f"tiny call, wasmtime:   {calls('wasmtime'):.1f} us median")
    print(f"fresh instance (process), wasmer-sdk: {fresh_instances():.0f} us median")
    print(f"endless loop, timeout 300 ms, stopped after: {timeout_stop():.0f} ms median")
    for engine in ("wasmer-sdk", "wasmtime"):
        threads, rss = per_plugin(engine)
        print(f"per live plugin, {engine}: {threads:.1f} threads, {rss:.1f} MiB RSS")
    print(f"process now: {resource_usage()}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
