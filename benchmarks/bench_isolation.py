"""Per-call cost of an echo in a worker process against the same call in-process, on every engine.

The target (docs/performance.md): a call through a worker process costs at most four times
the in-process call. Every figure is the median of several timed rounds after a warm-up, measured
side by side in one run:

- in-process: ``Sandbox.call`` / ``call_bytes`` of the ``echo`` example;
- process: ``ProcessSandbox.call`` / ``call_bytes`` of the same module, in a pool of one worker
  (the round trip: frame out, the worker's call, frame back).

The ratio depends on how quickly the operating system hands a message to the other process: the
channel spins briefly before sleeping (``--spin``), which keeps both processes awake between calls;
``--spin 0`` shows the cost of waking a sleeping process on each call.

    python benchmarks/bench_isolation.py [--rounds 7] [--calls 5000] [--spin 0.0001]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasm_plugins.engine import Engine, default_registry
from wasm_plugins.isolation import DEFAULT_SPIN, ProcessSandbox, WorkerPool
from wasm_plugins.sandbox import Sandbox

ECHO = Path(__file__).resolve().parent.parent / "hostapi" / "examples" / "echo.wat"
PAYLOAD = {"text": "hello", "n": 1}
DATA = b'{"text":"hello","n":1}'
TARGET = 4.0


def per_call(action: Callable[[], Any], calls: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``calls`` calls, after a warm-up."""
    for _ in range(min(calls, 2000)):
        action()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


def measure(engine: Engine, calls: int, rounds: int, spin: float) -> dict[str, float]:
    local = Sandbox(ECHO, engine=engine, name="echo")
    with WorkerPool(1, spin=spin, name="bench") as pool:
        remote = ProcessSandbox(ECHO, engine=engine, pool=pool, name="echo")
        assert remote.call("echo", PAYLOAD) == PAYLOAD
        figures = {
            "in-process json": per_call(lambda: local.call("echo", PAYLOAD), calls, rounds),
            "process json": per_call(lambda: remote.call("echo", PAYLOAD), calls, rounds),
            "in-process bytes": per_call(lambda: local.call_bytes("echo", DATA), calls, rounds),
            "process bytes": per_call(lambda: remote.call_bytes("echo", DATA), calls, rounds),
        }
        remote.close()
    local.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--spin", type=float, default=DEFAULT_SPIN)
    arguments = parser.parse_args()
    columns = ("in-process json", "process json", "in-process bytes", "process bytes")
    print(f"spin {arguments.spin * 1e6:.0f} µs, target: process at most {TARGET:g}x in-process")
    print(f"{'engine':<10}" + "".join(f"{c + ' µs':>20}" for c in columns), end="")
    print(f"{'json ratio':>12}{'bytes ratio':>13}")
    for name, reason in default_registry().availability().items():
        if reason is not None:
            print(f"{name:<10}not available: {reason}")
            continue
        engine = default_registry().get(name)
        figures = measure(engine, arguments.calls, arguments.rounds, arguments.spin)
        row = "".join(f"{figures[c] * 1e6:>20.1f}" for c in columns)
        json_ratio = figures["process json"] / figures["in-process json"]
        bytes_ratio = figures["process bytes"] / figures["in-process bytes"]
        print(f"{name:<10}{row}{json_ratio:>11.1f}x{bytes_ratio:>12.1f}x")


if __name__ == "__main__":
    main()
