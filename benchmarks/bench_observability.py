"""What OpenTelemetry costs a policy call: ``PluginHost.call`` of the ``echo`` example, per engine,
in three hosts measured side by side in interleaved rounds:

- without: a host made before ``opentelemetry`` is imported (as with the extra not installed);
- API, no provider: a host made once the API is imported but no tracer provider is set (the
  target: at most 1.05 times "without");
- provider, no-op exporter: a host traced through an SDK tracer provider whose exporter drops
  every span (the price of a span per call and one per attempt).

    python benchmarks/bench_observability.py [--rounds 9] [--calls 5000]

Needs ``opentelemetry-sdk`` (in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasm_plugins import PluginHost  # noqa: E402

ECHO = ROOT / "hostapi" / "examples" / "echo.wat"
PAYLOAD = {"text": "hello", "n": 1}
TARGET = 1.05
"""The most the API without a provider may cost, as a ratio to the call without it."""


def _host(engine: str) -> PluginHost:
    host = PluginHost(engine=engine, isolation="in-process", blocked=())
    host.load({"name": "echo", "module": {"path": str(ECHO)}, "policy": {"fallbacks": []}})
    assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
    return host


def _interleaved(
    actions: dict[str, Callable[[], Any]], calls: int, rounds: int
) -> dict[str, float]:
    """Median seconds per call of each action, rounds interleaved, after a warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for action in actions.values():
        for _ in range(min(calls, 2000)):
            action()
    for _ in range(rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            for _ in range(calls):
                action()
            samples[name].append((time.perf_counter() - started) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--engines", nargs="*", default=None)
    options = parser.parse_args(argv)
    engines = options.engines or (
        ["wasmer", "wasmtime"] if sys.version_info < (3, 11) else ["wasmtime"]
    )
    without = {engine: _host(engine) for engine in engines}

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from wasm_plugins.integrations import otel

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    no_provider = {engine: _host(engine) for engine in engines}
    traced = {engine: _host(engine) for engine in engines}
    for host in traced.values():
        otel.instrument(host, tracer_provider=provider)
    assert not any(h.manager.has_plugin(otel.PLUGIN_NAME) for h in no_provider.values())

    failed = False
    print(
        f"{'engine':10} {'without':>10} {'API only':>10} {'traced':>10} {'API/without':>12} "
        f"{'traced/without':>15}"
    )
    for engine in engines:
        figures = _interleaved(
            {
                "without": lambda h=without[engine]: h.call("echo", "echo", PAYLOAD),
                "api": lambda h=no_provider[engine]: h.call("echo", "echo", PAYLOAD),
                "traced": lambda h=traced[engine]: h.call("echo", "echo", PAYLOAD),
            },
            options.calls,
            options.rounds,
        )
        api_ratio = figures["api"] / figures["without"]
        traced_ratio = figures["traced"] / figures["without"]
        failed |= api_ratio > TARGET
        print(
            f"{engine:10} {figures['without'] * 1e6:8.2f}µs {figures['api'] * 1e6:8.2f}µs "
            f"{figures['traced'] * 1e6:8.2f}µs {api_ratio:11.3f}x {traced_ratio:14.2f}x"
        )
    print(
        f"target: API without a provider ≤ {TARGET}x the call without it: "
        + ("missed" if failed else "met")
    )
    for host in [*without.values(), *no_provider.values(), *traced.values()]:
        host.close()
    provider.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
