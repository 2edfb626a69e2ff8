"""Lifecycle and scale: map throughput, reload time, and async calls against sync ones.

    python benchmarks/bench_lifecycle.py [--inputs 4000] [--rounds 5] [--no-cluster]

- ``map``: calls per second of ``host.map`` (the built-in thread executor, 1, 2 and 4 threads),
  of a Python loop of ``host.call`` over the same inputs, and of ``host.map`` on a Dask
  ``LocalCluster`` of 2 worker processes (the ``dask`` extra; cluster start and the workers'
  first host not counted: one warm-up batch runs first). The plugin is ``text-tools``
  ``word_count`` over short texts.
- ``reload``: ``host.reload`` of a plugin loaded from a manifest file, with a warm module cache:
  the 20 KiB C plugin and a 2 MB synthetic module (``benchmarks/modules.py``), against loading
  the same cached module with a bare ``Sandbox`` (read, deserialize, instantiate).
- ``acall``: ``await host.acall`` in a loop against ``host.call`` in a loop (the JSON echo), for
  a plugin whose limits bound a call to 100 ms (run on the loop, the host's ``inline_async_calls``
  raised to 0.1 s so that a busy machine does not time the echo out) and for one they do not (run
  in a thread).

Figures are medians of interleaved rounds; ratios come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.modules import synthetic_module  # noqa: E402
from wasm_plugins import ModuleCache, PluginHost  # noqa: E402
from wasm_plugins.sandbox import Sandbox  # noqa: E402

ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
TEXT_TOOLS = ROOT / "plugins" / "text-tools" / "src" / "wasm_plugins_text_tools" / "text_tools.wasm"
PAYLOAD = {"text": "hello", "n": 1}


def median_of(rounds: int, action: Callable[[], float]) -> float:
    """The median of ``rounds`` timings (each returned by ``action``), after one warm-up."""
    action()
    return statistics.median(action() for _ in range(rounds))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# -- map ------------------------------------------------------------------------------------------


def bench_map(count: int, rounds: int, cluster: bool) -> list[str]:
    inputs = [{"text": "the quick brown fox " * (1 + i % 5)} for i in range(count)]
    lines = [f"map: {count} inputs of text-tools word_count, calls per second (median)"]
    with PluginHost.discover() as host:

        def loop() -> float:
            return timed(lambda: [host.call("text-tools", "word_count", x) for x in inputs])

        figures = {"Python loop of host.call": count / median_of(rounds, loop)}
        for threads in (1, 2, 4):

            def mapped(threads: int = threads) -> float:
                return timed(
                    lambda: host.map("text-tools", "word_count", inputs, concurrency=threads)
                )

            figures[f"host.map, {threads} thread(s)"] = count / median_of(rounds, mapped)
        if cluster:
            figures.update(_cluster_figures(host, inputs, rounds))
    base = figures["Python loop of host.call"]
    for label, rate in figures.items():
        lines.append(f"  {label:<40} {rate:>10,.0f} calls/s  {rate / base:5.2f}x the loop")
    return lines


def _cluster_figures(host: PluginHost, inputs: list[Any], rounds: int) -> dict[str, float]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return {}
    from wasm_plugins.cluster import DaskExecutor

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        executor = DaskExecutor(client, batch_size=500)

        def mapped() -> float:
            return timed(lambda: host.map("text-tools", "word_count", inputs, executor=executor))

        return {"host.map on LocalCluster (2 processes)": len(inputs) / median_of(rounds, mapped)}


# -- reload ---------------------------------------------------------------------------------------


def bench_reload(rounds: int) -> list[str]:
    lines = ["reload with a warm module cache (median)"]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        cache = ModuleCache(base / "cache")
        modules = {
            "20 KiB (text-tools)": TEXT_TOOLS.read_bytes(),
            "2 MB (synthetic)": synthetic_module(2 << 20),
        }
        for label, wasm in modules.items():
            name = "plugin-" + str(len(wasm))
            (base / f"{name}.wasm").write_bytes(wasm)
            toml = base / f"{name}.toml"
            toml.write_text(
                f'name = "{name}"\nversion = "1.0.0"\n[module]\npath = "{name}.wasm"\n'
                '[limits]\nmodule_size = "32 MiB"\n'
            )
            with PluginHost(engine="wasmtime", module_cache=cache, blocked=()) as host:
                host.load(toml)
                host.sandbox(name)  # compiled once: the cache is warm from here on
                reload = median_of(rounds, lambda: timed(lambda: host.reload(name)))

                def bare(wasm: bytes = wasm) -> float:
                    return timed(lambda: Sandbox(wasm, engine="wasmtime", cache=cache).close())

                sandbox = median_of(rounds, bare)
            lines.append(
                f"  {label:<22} host.reload {reload * 1e3:8.2f} ms   bare cached Sandbox "
                f"{sandbox * 1e3:8.2f} ms   ratio {reload / sandbox:5.2f}"
            )
    return lines


# -- acall ----------------------------------------------------------------------------------------


def bench_acall(calls: int, rounds: int) -> list[str]:
    lines = [f"acall against call, {calls} tiny echo calls in a loop (median)"]
    # Bounds loose enough that a busy machine does not time the echo out; the host's inline
    # bound raised to match (the default, 10 ms, suits the limits of a plugin made for it).
    bounded = {"limits": {"timeout": "50 ms"}, "policy": {"deadline": "50 ms"}}
    for label, extra in (("bounded (runs on the loop)", bounded), ("unbounded (thread)", {})):
        with PluginHost(
            engine="wasmtime", module_cache=False, blocked=(), inline_async_calls=0.1
        ) as host:
            host.load(
                {"name": "echo", "module": {"path": str(ECHO)}, "functions": {"echo": {}}, **extra}
            )

            def sync() -> float:
                return timed(lambda: [host.call("echo", "echo", PAYLOAD) for _ in range(calls)])

            async def loop() -> None:
                for _ in range(calls):
                    await host.acall("echo", "echo", PAYLOAD)

            def asynchronous() -> float:
                return timed(lambda: asyncio.run(loop()))

            sync_time = median_of(rounds, sync)
            async_time = median_of(rounds, asynchronous)
        lines.append(
            f"  {label:<28} call {sync_time / calls * 1e6:7.1f} us  acall "
            f"{async_time / calls * 1e6:7.1f} us  acall throughput {sync_time / async_time:4.2f}x"
            " call's (target >= 0.5 when bounded)"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--no-cluster", action="store_true")
    options = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} CPUs")
    for lines in (
        bench_acall(options.calls, options.rounds),
        bench_reload(options.rounds),
        bench_map(options.inputs, options.rounds, not options.no_cluster),
    ):
        print("\n".join(lines), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
