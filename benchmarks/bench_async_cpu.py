"""Awaited calls counted in CPU time: what a gathered ``acall`` costs whoever else runs.

``benchmarks/run.py --parts async`` gives wall-clock time per call; on a machine whose cores are
taken by other processes, a loop of ``host.call`` and a gather of ``acall`` lose their cores at
different moments, and their ratio swings by half. Here the same forms are counted in CPU time:

- ``call``: a loop of ``PluginHost.call`` of the JSON echo (this thread's CPU time);
- ``gather``: ``asyncio.gather`` of 100 ``host.acall`` of the same echo, the process's CPU time
  (the event loop's thread and the host's thread that runs the calls), split into the loop's
  part (its thread's CPU time) and the rest (the host's thread);
- ``asyncio alone``: a gather of 100 tasks awaiting futures that the loop resolves in one batch,
  no call at all.

The ratio printed is ``call / gather`` (the calls per second of the gather against the loop of
``call``, target at least 0.5), and the ceiling ``call / (call + asyncio alone)``: the GIL runs
the loop's part and the thread's one after the other. Rounds alternate between the forms;
figures are medians.

    python benchmarks/bench_async_cpu.py [--rounds 9] [--engines wasmer,wasmtime]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run import BATCH, ECHO, PAYLOAD, gather_of_resolved_futures
from wasm_plugins import PluginHost

BATCHES = 20
"""Batches per round and form."""


def measure(engine: str, rounds: int) -> dict[str, float]:
    """Medians, in µs of CPU time per call."""
    host = PluginHost(engine=engine, blocked=(), module_cache=False, inline_async_calls=1.0)
    host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
    loop = asyncio.new_event_loop()

    async def gathered() -> None:
        await asyncio.gather(*(host.acall("echo", "echo", PAYLOAD) for _ in range(BATCH)))

    def alone() -> Any:
        return gather_of_resolved_futures(loop)

    def calls() -> None:
        for _ in range(BATCH):
            host.call("echo", "echo", PAYLOAD)

    samples: dict[str, list[float]] = {"call": [], "gather": [], "loop": [], "alone": []}
    per_call = 1e6 / (BATCH * BATCHES)
    try:
        for _ in range(5):
            calls()
            loop.run_until_complete(gathered())
            loop.run_until_complete(alone())
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(BATCHES):
                calls()
            samples["call"].append((time.thread_time() - started) * per_call)
            process, thread = time.process_time(), time.thread_time()
            for _ in range(BATCHES):
                loop.run_until_complete(gathered())
            samples["gather"].append((time.process_time() - process) * per_call)
            samples["loop"].append((time.thread_time() - thread) * per_call)
            started = time.thread_time()
            for _ in range(BATCHES):
                loop.run_until_complete(alone())
            samples["alone"].append((time.thread_time() - started) * per_call)
    finally:
        host.close()
        loop.close()
    return {form: statistics.median(values) for form, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--engines", default="wasmer,wasmtime")
    options = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}; µs of CPU time per call, medians")
    for engine in options.engines.split(","):
        figures = measure(engine, options.rounds)
        call, gather, alone = figures["call"], figures["gather"], figures["alone"]
        print(
            f"{engine}: call {call:.1f}, gather {gather:.1f} (loop {figures['loop']:.1f}, "
            f"thread {gather - figures['loop']:.1f}), asyncio alone {alone:.1f}; "
            f"gather {call / gather:.2f}x the calls/s of call (target >= 0.5), "
            f"ceiling {call / (call + alone):.2f}x"
        )
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
