"""Plots of what a call costs against payload size, and what loading costs against module size.

    python benchmarks/plots.py [--out docs/benchmarks] [--rounds 5]

For each available engine (through ``PluginHost.call``, the full policy) and for the Extism Python
SDK (the same JSON echo through ``benchmarks/extism_echo.wat``), it measures:

- a call of the JSON echo with payloads from 16 bytes to 256 KiB (``payload-size.svg``);
- compiling a module from under 1 KiB to about 300 KiB, the echo padded with functions that are
  never called (``module-size.svg``); for Extism, making an ``extism.Plugin`` from the bytes,
  which compiles them. Each round compiles bytes no cache has seen: the Extism SDK keeps what it
  compiled, on disk, and a ``Plugin`` of bytes it has seen costs milliseconds whatever their size.

Each point is the median of interleaved rounds, as in ``run.py``. The SVGs carry no date, so a
rerun on the same figures writes the same files.
"""

from __future__ import annotations

import argparse
import json
import secrets
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

ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
EXTISM_ECHO = ROOT / "benchmarks" / "extism_echo.wat"
ENGINES = ("wasmer", "wasmtime")
PAYLOAD_SIZES = (16, 256, 4 * 1024, 32 * 1024, 256 * 1024)
MODULE_SIZES = (1024, 8 * 1024, 64 * 1024, 512 * 1024)
BUDGET = 0.05
"""Seconds of work per point and round: enough calls to rise above the timer's resolution."""

Series = dict[str, list[tuple[int, float]]]


def payload(size: int) -> dict[str, str]:
    """A JSON object whose encoding is ``size`` bytes long (for sizes from 12 up)."""
    return {"text": "x" * max(0, size - len('{"text": ""}'))}


def padded_wat(wat: str, size: int, salt: int = 0) -> str:
    """``wat`` with functions that are never called appended, to a module of about ``size``
    bytes; ``salt`` changes one constant, so that no cache can know the bytes."""
    body = "(local.get 0)" + "(i32.add (local.get 0))" * 16
    count = max(0, (size - 200) // 100)
    filler = "".join(f"(func (param i32) (result i32) {body})\n" for _ in range(count))
    salted = f"(func (result i32) (i32.const {salt}))\n"
    return wat.rstrip().removesuffix(")") + filler + salted + ")\n"


def _per_call(action: Callable[[], Any], rounds: int) -> float:
    action()
    started = time.perf_counter()
    action()
    once = max(time.perf_counter() - started, 1e-7)
    repeat = max(1, int(BUDGET / once))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            action()
        samples.append((time.perf_counter() - started) / repeat)
    return statistics.median(samples)


def _extism() -> Any | None:
    try:
        import extism  # noqa: PLC0415 optional: the bench extra installs it
    except ImportError:
        return None
    return extism


def _payload_points(call: Callable[[Any], Any], rounds: int) -> list[tuple[int, float]]:
    points = []
    for size in PAYLOAD_SIZES:
        value = payload(size)
        points.append((size, _per_call(lambda: call(value), rounds)))  # noqa: B023 - used at once
    return points


def payload_series(engines: list[str], rounds: int) -> Series:
    series: Series = {}
    for name in engines:
        with PluginHost(engine=name, blocked=(), module_cache=False) as host:
            host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
            series[f"{name}, PluginHost.call"] = _payload_points(
                lambda value, host=host: host.call("echo", "echo", value), rounds
            )
    extism = _extism()
    if extism is not None:
        import wasmtime  # noqa: PLC0415 wat2wasm for the Extism module

        plugin = extism.Plugin(bytes(wasmtime.wat2wasm(EXTISM_ECHO.read_text())), wasi=False)

        def extism_call(value: dict[str, str]) -> Any:
            return plugin.call("echo", json.dumps(value), parse=lambda out: json.loads(bytes(out)))

        series["Extism SDK, Plugin.call"] = _payload_points(extism_call, rounds)
    return series


def _per_compile(source: str, size: int, build: Callable[[bytes], Any], rounds: int) -> float:
    """The median time of ``build`` on fresh bytes each round: the Extism SDK keeps the modules
    it compiled, by content and on disk, so a build of bytes seen before would time a cache hit."""
    import wasmtime  # noqa: PLC0415 wat2wasm

    samples = []
    for _ in range(rounds):
        # Random, not counted: the SDK's cache is on disk, so it outlives a run.
        wasm = bytes(wasmtime.wat2wasm(padded_wat(source, size, secrets.randbits(31))))
        started = time.perf_counter()
        build(wasm)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _module_bytes(source: str, size: int) -> int:
    import wasmtime  # noqa: PLC0415 wat2wasm

    return len(wasmtime.wat2wasm(padded_wat(source, size)))


def module_series(engines: list[str], rounds: int) -> Series:
    series: Series = {}
    echo = ECHO.read_text()
    for name in engines:
        engine = default_registry().get(name)
        series[f"{name}, compile"] = [
            (_module_bytes(echo, size), _per_compile(echo, size, engine.compile, rounds))
            for size in MODULE_SIZES
        ]
    extism = _extism()
    if extism is not None:
        source = EXTISM_ECHO.read_text()
        series["Extism SDK, new Plugin"] = [
            (
                _module_bytes(source, size),
                _per_compile(source, size, lambda wasm: extism.Plugin(wasm, wasi=False), rounds),
            )
            for size in MODULE_SIZES
        ]
    return series


def plot(series: Series, title: str, xlabel: str, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 optional: the bench extra installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.rcParams["svg.hashsalt"] = "wasm-plugins"
    plt.rcParams["svg.fonttype"] = "none"
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for label, points in series.items():
        sizes = [size for size, _ in points]
        micros = [seconds * 1e6 for _, seconds in points]
        axes.plot(sizes, micros, marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("µs, median per operation")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per point")
    parser.add_argument("--engines", default=",".join(ENGINES), help="engines to measure")
    arguments = parser.parse_args()
    availability = default_registry().availability()
    engines = [name for name in arguments.engines.split(",") if availability.get(name, "") is None]
    payloads = payload_series(engines, arguments.rounds)
    plot(
        payloads,
        "A call of a JSON echo against its payload",
        "payload, bytes of JSON",
        arguments.out / "payload-size.svg",
    )
    modules = module_series(engines, arguments.rounds)
    plot(
        modules,
        "Compiling a module against its size",
        "module, bytes",
        arguments.out / "module-size.svg",
    )
    for title, series in (("payload", payloads), ("module", modules)):
        for label, points in series.items():
            figures = ", ".join(f"{size} B: {seconds * 1e6:.1f} µs" for size, seconds in points)
            print(f"{title}: {label}: {figures}")
    print(f"plots written to {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
