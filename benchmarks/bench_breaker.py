"""A breaker's failure-ratio window as its function gets busy: memory held and work per attempt.

A ``CircuitBreaker`` with a ``failure_ratio`` on a fake clock takes successes spread evenly over
its 60 s window (10,000, 100,000 and 600,000 of them: up to 10,000 attempts a second), then:

- ``held``: the memory the breaker allocated for them (``tracemalloc``);
- ``failure + success``: one failed attempt and one successful one, wall-clock time, mean of
  100 pairs (a failure checks the ratio);
- ``success``: one successful attempt, CPU time, mean of 100,000.

    python benchmarks/bench_breaker.py
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wasm_plugins.policy import BreakerConfig, CircuitBreaker, Verdict
from wasm_plugins.testing.clock import FakeClock

WINDOW = 60.0


def measure(attempts: int) -> tuple[int, float, float]:
    clock = FakeClock()
    config = BreakerConfig(failure_threshold=10**9, failure_ratio=0.9, window=WINDOW)
    breaker = CircuitBreaker("bench.f", config, clock)
    tracemalloc.start()
    try:
        for _ in range(attempts):
            clock.advance(WINDOW / attempts)
            breaker.record_success(breaker.acquire())
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    pairs = 100
    started = time.perf_counter()
    for _ in range(pairs):
        clock.advance(1e-6)
        breaker.record(breaker.acquire(), Verdict.FAILURE)
        breaker.record_success(breaker.acquire())
    pair = (time.perf_counter() - started) / pairs
    successes = 100_000
    started = time.process_time()
    for _ in range(successes):
        clock.advance(1e-6)
        breaker.record_success(breaker.acquire())
    success = (time.process_time() - started) / successes
    return held, pair, success


def main() -> int:
    print("| attempts in the window | held | failure + success | success |")
    print("|--:|--:|--:|--:|")
    for attempts in (10_000, 100_000, 600_000):
        held, pair, success = measure(attempts)
        print(
            f"| {attempts:,} | {held / 1000:,.0f} kB | {pair * 1e6:,.1f} µs | "
            f"{success * 1e6:.2f} µs |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
