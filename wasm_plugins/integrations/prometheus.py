"""Prometheus: one process-wide collector of every live host's metrics.

The collector is registered once per registry (by default ``prometheus_client.REGISTRY``, when
the first host is made), and reads, at each scrape, the counters and latency histograms of every
host still alive (it holds them by weak reference): a second host, as test fixtures and worker
processes make, adds its counts to the same series instead of registering them again, and
``prometheus_client.start_http_server(port)`` shows them with nothing else to do.

Series, each labelled ``plugin`` and ``function`` (and one more bounded label where shown):
``wasm_plugins_calls_total{outcome}``, ``wasm_plugins_attempts_total{result}``,
``wasm_plugins_retries_total``, ``wasm_plugins_breaker_transitions_total{to}``,
``wasm_plugins_fallbacks_total{strategy}`` and the histogram
``wasm_plugins_call_duration_seconds``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from wasm_plugins.hookspecs import hookimpl

__all__ = [
    "COLLECTOR",
    "MetricsSource",
    "PrometheusRetirement",
    "WasmPluginsCollector",
    "register",
    "text",
    "watch",
]

_HELP = {
    "calls": "Plugin calls by outcome (value, fallback, error)",
    "attempts": "Attempts by result (value, or the error kind)",
    "retries": "Retries scheduled",
    "breaker_transitions": "Circuit breaker transitions by the state entered",
    "fallbacks": "Fallback answers by strategy",
}


class MetricsSource(Protocol):
    """What the collector reads of a host: its metrics reporter."""

    def snapshot(self) -> dict[str, Any]:
        """Counters (``{name: {"label=value,...": count}}``) and latency histograms."""


def _labels(text: str) -> dict[str, str]:
    return dict(part.partition("=")[::2] for part in text.split(",") if part)


def _merged(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Several snapshots summed into one of the same form."""
    counters: dict[str, dict[str, float]] = {}
    histograms: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for name, series in snapshot.get("counters", {}).items():
            totals = counters.setdefault(name, {})
            for text, count in series.items():
                totals[text] = totals.get(text, 0) + count
        for route, histogram in snapshot.get("latency_seconds", {}).items():
            into = histograms.setdefault(route, {"buckets": {}, "count": 0, "sum": 0.0})
            for bound, count in histogram["buckets"].items():
                into["buckets"][bound] = into["buckets"].get(bound, 0) + count
            into["count"] += histogram["count"]
            into["sum"] += histogram["sum"]
    return {"counters": counters, "latency_seconds": histograms}


def _le(bound: str) -> str:
    return "+Inf" if bound == "inf" else bound


class WasmPluginsCollector:
    """Sums the metrics of every watched host at each scrape."""

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()
        self._retired: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def watch(self, source: MetricsSource) -> None:
        """Read ``source`` at each scrape for as long as it lives."""
        with self._lock:
            self._sources.add(source)

    def retire(self, source: MetricsSource) -> None:
        """Keep ``source``'s final counts in the totals and stop reading it (a closed host):
        a counter never goes down because a host went away."""
        snapshot = source.snapshot()
        with self._lock:
            if source in self._sources:
                self._sources.discard(source)
                self._retired = [_merged([*self._retired, snapshot])]

    def _snapshots(self) -> list[dict[str, Any]]:
        with self._lock:
            sources = list(self._sources)
            retired = list(self._retired)
        return [*retired, *(source.snapshot() for source in sources)]

    def describe(self) -> list[Metric]:
        """The fixed series' names, for the registry's duplicate check (no samples)."""
        families: list[Metric] = [
            CounterMetricFamily(f"wasm_plugins_{name}", text) for name, text in _HELP.items()
        ]
        families.append(
            HistogramMetricFamily(
                "wasm_plugins_call_duration_seconds", "Duration of plugin calls", unit="seconds"
            )
        )
        return families

    def collect(self) -> Iterator[Metric]:
        """Every counter summed over the live hosts, then the latency histograms."""
        merged = _merged(self._snapshots())
        counters = {
            name: {tuple(sorted(_labels(text).items())): count for text, count in series.items()}
            for name, series in merged["counters"].items()
        }
        histograms = {
            route.rpartition(".")[::2]: (histogram["buckets"], histogram["sum"])
            for route, histogram in merged["latency_seconds"].items()
        }
        for name, series in sorted(counters.items()):
            label_names = sorted({label for key in series for label, _ in key})
            family = CounterMetricFamily(
                f"wasm_plugins_{name}",
                _HELP.get(name, f"wasm-plugins {name.replace('_', ' ')}"),
                labels=label_names,
            )
            for key, count in sorted(series.items()):
                values = dict(key)
                family.add_metric([values.get(label, "") for label in label_names], count)
            yield family
        if histograms:
            duration = HistogramMetricFamily(
                "wasm_plugins_call_duration_seconds",
                "Duration of plugin calls, retries and fallbacks included",
                labels=["plugin", "function"],
                unit="seconds",
            )
            for (plugin, function), (buckets, total) in sorted(histograms.items()):
                cumulative = 0
                points = []
                for bound, count in sorted(buckets.items(), key=lambda item: float(item[0])):
                    cumulative += count
                    points.append((_le(bound), float(cumulative)))
                duration.add_metric([plugin, function], points, sum_value=total)
            yield duration


COLLECTOR = WasmPluginsCollector()
"""The process's one collector."""

_registries: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_registering = threading.Lock()


def register(registry: CollectorRegistry | None = None) -> WasmPluginsCollector:
    """Register the collector on ``registry`` (default ``prometheus_client.REGISTRY``) unless it
    is there already; the collector."""
    target = REGISTRY if registry is None else registry
    with _registering:
        if target not in _registries:
            target.register(COLLECTOR)
            _registries.add(target)
    return COLLECTOR


def text(source: MetricsSource) -> str:
    """``source``'s metrics alone, in Prometheus' text exposition format."""
    collector = WasmPluginsCollector()
    collector.watch(source)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def watch(source: MetricsSource, registry: CollectorRegistry | None = None) -> None:
    """Expose ``source`` (a host's ``metrics``) through the collector on ``registry``."""
    register(registry).watch(source)


class PrometheusRetirement:
    """Retires a host's metrics from the collector when the host closes (their counts stay)."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    @hookimpl(trylast=True)
    def wasm_plugins_host_closing(self) -> None:
        """Keep the closing host's final counts."""
        COLLECTOR.retire(self._source)
