"""A full bulkhead's queue: the cost of a call as more callers wait for its slots.

Threads take one of 2 slots, hold it 100 µs in a wait that releases the GIL (what a call to a
worker process does), and give it back, 3,000 times in all; 2 threads (nobody waits), then 10,
34 and 66 (up to 64 waiting). Per call: the process's CPU time, and the wall-clock time (two
slots: about half the time a slot is held, at best).

    python benchmarks/bench_bulkhead.py
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wasm_plugins.isolation import Bulkhead

SLOTS = 2
HOLD = 100e-6
CALLS = 3000


def measure(waiters: int) -> tuple[float, float]:
    bulkhead = Bulkhead(SLOTS, waiters + SLOTS)
    count = waiters + SLOTS
    each = CALLS // count
    start = threading.Barrier(count + 1)

    def work() -> None:
        start.wait()
        for _ in range(each):
            bulkhead.acquire(None)
            time.sleep(HOLD)
            bulkhead.release()

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    cpu, wall = time.process_time(), time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    calls = each * count
    return (time.process_time() - cpu) / calls, (time.perf_counter() - wall) / calls


def main() -> int:
    print("| threads (waiting at most) | CPU per call | wall-clock per call |")
    print("|--:|--:|--:|")
    for waiters in (0, 8, 32, 64):
        cpu, wall = measure(waiters)
        print(f"| {waiters + SLOTS} ({waiters}) | {cpu * 1e6:.0f} µs | {wall * 1e6:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
