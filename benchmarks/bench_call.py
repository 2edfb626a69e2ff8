"""Per-call cost of an echo through the Sandbox against a raw export call, on every engine.

Every figure is a median over several timed rounds after a warm-up, and every comparison is a ratio
against a baseline measured in the same run on the same machine:

- raw export: the engine's own public API calling the ``echo`` export with a pointer and a length
  (no copying, no encoding): the floor any framework sits on;
- adapter: our engine adapter's ABI fast path for the same export (wasmtime: ctypes, types cached);
- sandbox bytes: ``Sandbox.call_bytes`` (copy in, one call, bounds checks, copy out);
- sandbox json: ``Sandbox.call`` with a tiny JSON payload (encode and decode as well).

    python benchmarks/bench_call.py [--rounds 7] [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasm_plugins.engine import Engine, default_registry
from wasm_plugins.sandbox import Sandbox

ECHO = Path(__file__).resolve().parent.parent / "hostapi" / "examples" / "echo.wat"
PAYLOAD = {"text": "hello", "n": 1}


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


def raw_export_call(engine: Engine, sandbox: Sandbox) -> Callable[[], Any]:
    """The engine's public API calling ``echo(ptr, len)`` on the sandbox's own instance."""
    instance: Any = sandbox._state().session.instance
    if engine.name == "wasmtime":
        func = instance._exports["echo"]
        store = instance._store
        return lambda: func(store, 1024, 20)
    func = instance._instance.exports.echo
    return lambda: func(1024, 20)


def measure(engine: Engine, calls: int, rounds: int) -> dict[str, float]:
    sandbox = Sandbox(ECHO, engine=engine, name="echo")
    session = sandbox._state().session
    export = session.function("echo")
    data = b'{"text":"hello","n":1}'
    figures = {
        "raw export": per_call(raw_export_call(engine, sandbox), calls, rounds),
        "adapter": per_call(lambda: session.instance.call_abi(export, 1024, 20), calls, rounds),
        "sandbox bytes": per_call(lambda: sandbox.call_bytes("echo", data), calls, rounds),
        "sandbox json": per_call(lambda: sandbox.call("echo", PAYLOAD), calls, rounds),
    }
    sandbox.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    arguments = parser.parse_args()
    registry = default_registry()
    columns = ("raw export", "adapter", "sandbox bytes", "sandbox json")
    print(f"{'engine':<10}" + "".join(f"{c + ' µs':>17}" for c in columns), end="")
    print(f"{'json/raw':>11}{'json/adapter':>14}")
    for name, reason in registry.availability().items():
        if reason is not None:
            print(f"{name:<10} not available: {reason}")
            continue
        figures = measure(registry.get(name), arguments.calls, arguments.rounds)
        row = "".join(f"{figures[c] * 1e6:>17.2f}" for c in columns)
        ratio_raw = figures["sandbox json"] / figures["raw export"]
        ratio_adapter = figures["sandbox json"] / figures["adapter"]
        print(f"{name:<10}{row}{ratio_raw:>11.2f}{ratio_adapter:>14.2f}")


if __name__ == "__main__":
    main()
