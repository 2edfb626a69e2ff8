"""The framework's own hookimpls: ordinary pluggy plugins, all ``trylast``, blockable by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wasm_plugins.host import PluginHost

__all__ = ["builtin_plugins"]


def builtin_plugins(host: PluginHost, external_fallbacks: Any = None) -> dict[str, object]:
    """The built-in plugins of one host, by the name they are registered under (and blocked by).

    Stateful ones (the result cache, metrics, alerts) are made per host: hosts share nothing.
    """
    from wasm_plugins.builtin import attempt, engines, host_functions, recovery
    from wasm_plugins.builtin.fallbacks import BuiltinFallbacks
    from wasm_plugins.builtin.reporters import (
        AlertReporter,
        LogReporter,
        MetricsReporter,
        SentryReporter,
    )

    plugins: dict[str, object] = {
        "builtin-engines": engines,
        "builtin-host-functions": host_functions,
        "builtin-attempt": attempt,
        "builtin-recovery": recovery,
        "builtin-fallbacks": BuiltinFallbacks(host, external_fallbacks),
        "builtin-logs": LogReporter(),
        "builtin-metrics": MetricsReporter(),
        "builtin-alerts": AlertReporter(host.clock.monotonic),
    }
    sentry = SentryReporter.create()
    if sentry is not None:
        plugins["builtin-sentry"] = sentry
    return plugins
