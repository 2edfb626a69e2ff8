"""Integrations with the host application's own observability stack: OpenTelemetry, Prometheus,
Sentry and the standard library's ``logging``.

Each is an ordinary hookimpl or a reader of a host's metrics, set up only when its package is
there: a host whose application uses none of them pays nothing. The packages are the extras
``otel``, ``prometheus`` and ``sentry``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from wasm_plugins.integrations._names import (
    OTEL_PLUGIN_NAME,
    PROMETHEUS_PLUGIN_NAME,
    SENTRY_PLUGIN_NAME,
)
from wasm_plugins.integrations.sentry import SentryReporter
from wasm_plugins.integrations.stdlib_logging import forward_to_logging

__all__ = [
    "OTEL_PLUGIN_NAME",
    "PROMETHEUS_PLUGIN_NAME",
    "SENTRY_PLUGIN_NAME",
    "forward_to_logging",
    "integration_plugins",
]


def integration_plugins(
    *, breaker_state: Callable[[str, str], Any], metrics: Any
) -> dict[str, object]:
    """The integration plugins of one host, by the name they are registered under.

    - Sentry: always (it reports only while the application's client is active);
    - OpenTelemetry: when the application imported ``opentelemetry`` and set a tracer provider
      (:func:`wasm_plugins.integrations.otel.instrument` adds it to a host made before that);
    - Prometheus: the host's ``metrics`` are read by the process's collector, which this
      registers on ``prometheus_client.REGISTRY`` the first time; a plugin keeps the host's
      counts there once it closes.

    :param breaker_state: the state's name of the breaker of (plugin, function).
    :param metrics: the host's metrics reporter (its ``snapshot()``).
    """
    plugins: dict[str, object] = {SENTRY_PLUGIN_NAME: SentryReporter()}
    if "opentelemetry.trace" in sys.modules:
        # Only then can the application have set a provider: a host that does not use
        # OpenTelemetry never imports it.
        from wasm_plugins.integrations import otel  # noqa: PLC0415 optional dependency

        if otel.provider_is_set():
            plugins[OTEL_PLUGIN_NAME] = otel.OpenTelemetryPlugin(breaker_state)
    if "prometheus_client" in sys.modules or importlib.util.find_spec("prometheus_client"):
        from wasm_plugins.integrations import prometheus  # noqa: PLC0415 optional dependency

        prometheus.watch(metrics)
        plugins[PROMETHEUS_PLUGIN_NAME] = prometheus.PrometheusRetirement(metrics)
    return plugins
