"""An Extism plugin through wasm-plugins and through the Extism Python SDK, in one run.

    python benchmarks/bench_extism.py [--rounds 7] [--markdown]

The same module (``benchmarks/extism_count_vowels.wat``, compiled once) is called with inputs of
100 B, 10 KB and 1 MB: through ``extism.Plugin.call`` (the SDK bundles its own runtime and
kernel) and through ``Sandbox.call_bytes`` with ``codec="raw"`` on each engine here. Both
sides check that the output is the same. Rounds are interleaved (round 1 of every figure,
then round 2...) and each figure is the median of its rounds, so a machine that gets busier
slows every figure alike; the ratio ``ours / Extism`` is what the target is about (below 1:
faster than the Extism SDK at every size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins.engine import default_registry  # noqa: E402
from wasm_plugins.sandbox import Sandbox  # noqa: E402

PLUGIN = ROOT / "benchmarks" / "extism_count_vowels.wat"
SIZES = {"100 B": 100, "10 KB": 10_000, "1 MB": 1_000_000}
TEXT = b"The quick brown fox jumps over the lazy dog. "


def _input(size: int) -> bytes:
    return (TEXT * (size // len(TEXT) + 1))[:size]


def _per_call(call: Callable[[], object], budget: float) -> float:
    """Seconds per call, over enough calls to fill ``budget`` seconds."""
    call()
    started = time.perf_counter()
    calls = 0
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            return elapsed / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per figure per round")
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()
    try:
        import extism
    except ImportError:
        print("extism is not installed (pip install extism): nothing to compare against")
        return 1
    registry = default_registry()
    # Not wasmer-sdk: its kernel calls are pipe round trips, and 1 MB is a million of them
    # (benchmarks/bench_extism_sdk.py measures one).
    engines = [
        name
        for name, reason in registry.availability().items()
        if reason is None and name != "wasmer-sdk"
    ]
    wasm = registry.get(engines[0]).wat_to_wasm(PLUGIN.read_text())
    theirs = extism.Plugin(wasm, wasi=False)
    ours = {name: Sandbox(wasm, engine=name, codec="raw") for name in engines}
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for label, size in SIZES.items():
        data = _input(size)
        expected = bytes(theirs.call("count_vowels", data))
        calls[(label, "extism")] = lambda data=data: theirs.call("count_vowels", data)
        for name, sandbox in ours.items():
            if sandbox.call_bytes("count_vowels", data) != expected:
                raise SystemExit(f"{name}: output differs from the Extism SDK's at {label}")
            calls[(label, name)] = lambda s=sandbox, data=data: s.call_bytes("count_vowels", data)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(options.rounds):
        for key, call in calls.items():
            samples[key].append(_per_call(call, options.budget))
    median = {key: statistics.median(values) for key, values in samples.items()}
    columns = ["input", "Extism SDK"] + [f"wasm-plugins ({n})" for n in engines]
    columns += [f"ratio ({n})" for n in engines]
    rows = []
    for label in SIZES:
        base = median[(label, "extism")]
        row = [label, f"{base * 1e6:,.1f} µs"]
        row += [f"{median[(label, n)] * 1e6:,.1f} µs" for n in engines]
        row += [f"{median[(label, n)] / base:.2f}" for n in engines]
        rows.append(row)
    if options.markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + " --- |" * len(columns))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"\nper call, median of {options.rounds} interleaved rounds; below 1: faster than Extism")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
