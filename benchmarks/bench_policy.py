"""Cost of the error policy on the happy path, and of a circuit-open fast fail, on every engine.

Ratios against baselines measured in the same run:

- sandbox: ``Sandbox.call`` of an echo with a tiny JSON payload (no policy);
- policy: ``PluginHost.call`` of the same echo (breaker, attempt hook, reporters, outcome);
- open circuit: ``PluginHost.invoke`` while the breaker is open and no fallback answers
  (it raises a ContextualError; the time includes raising and catching it).

Targets (DESIGN section 12): the open-circuit fast fail at most a third of a happy-path call.

    python benchmarks/bench_policy.py [--rounds 7] [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wasm_plugins import ContextualError, PluginHost
from wasm_plugins.engine import default_registry
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


def measure(engine: str, calls: int, rounds: int) -> dict[str, float]:
    sandbox = Sandbox(ECHO, engine=engine, name="echo")
    host = PluginHost(engine=engine, blocked=())
    host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})

    def fast_fail() -> None:
        try:
            host.invoke("echo", "echo", PAYLOAD)
        except ContextualError:
            pass

    figures = {
        "sandbox": per_call(lambda: sandbox.call("echo", PAYLOAD), calls, rounds),
        "policy": per_call(lambda: host.call("echo", "echo", PAYLOAD), calls, rounds),
    }
    host.breaker("echo", "echo").force_open("benchmark")
    figures["open circuit"] = per_call(fast_fail, calls, rounds)
    host.close()
    sandbox.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    arguments = parser.parse_args()
    columns = ("sandbox", "policy", "open circuit")
    print(f"{'engine':<10}" + "".join(f"{c + ' µs':>16}" for c in columns), end="")
    print(f"{'policy/sandbox':>16}{'open/policy':>13}")
    for name, reason in default_registry().availability().items():
        if reason is not None:
            print(f"{name:<10} not available: {reason}")
            continue
        figures = measure(name, arguments.calls, arguments.rounds)
        row = "".join(f"{figures[c] * 1e6:>16.2f}" for c in columns)
        overhead = figures["policy"] / figures["sandbox"]
        fast = figures["open circuit"] / figures["policy"]
        print(f"{name:<10}{row}{overhead:>16.2f}{fast:>13.2f}")


if __name__ == "__main__":
    main()
