"""The names the integration plugins are registered (and blocked) under."""

from __future__ import annotations

__all__ = ["OTEL_PLUGIN_NAME", "PROMETHEUS_PLUGIN_NAME", "SENTRY_PLUGIN_NAME"]

OTEL_PLUGIN_NAME = "builtin-otel"
"""The OpenTelemetry plugin (spans and metrics)."""
PROMETHEUS_PLUGIN_NAME = "builtin-prometheus"
"""The plugin that keeps a closed host's counts in the Prometheus collector."""
SENTRY_PLUGIN_NAME = "builtin-sentry"
"""The Sentry reporter."""
