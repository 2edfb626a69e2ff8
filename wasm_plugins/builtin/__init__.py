"""The framework's own hookimpls: ordinary pluggy plugins, all ``trylast``, blockable by name."""

from __future__ import annotations

from collections.abc import Mapping

from wasm_plugins.builtin import attempt, engines, host_functions, recovery
from wasm_plugins.builtin.fallbacks import BreakerLookup, BuiltinFallbacks, ExternalFallback
from wasm_plugins.builtin.reporters import AlertReporter, LogReporter, MetricsReporter
from wasm_plugins.policy import Clock, ManifestLookup, SandboxProvider

__all__ = ["builtin_plugins"]


def builtin_plugins(
    *,
    manifest: ManifestLookup,
    provider: SandboxProvider,
    breakers: BreakerLookup,
    clock: Clock,
    external_fallbacks: Mapping[str, ExternalFallback] | None = None,
) -> dict[str, object]:
    """The built-in plugins of one host, by the name they are registered under (and blocked by).

    Stateful ones (the result cache, metrics, alerts) are made per host: hosts share nothing.

    :param manifest: a plugin's manifest by name.
    :param provider: the host's sandboxes (the ``simplified`` fallback calls another export).
    :param breakers: the circuit breaker of (plugin, function) (the ``simplified`` fallback's
        export runs only while its own is closed).
    :param clock: the policy's clock (cache ages, alert windows).
    :param external_fallbacks: by plugin name, the host application's own answers.
    """
    plugins: dict[str, object] = {
        "builtin-engines": engines,
        "builtin-host-functions": host_functions,
        "builtin-attempt": attempt,
        "builtin-recovery": recovery,
        "builtin-fallbacks": BuiltinFallbacks(
            manifest, provider, breakers, clock, external_fallbacks
        ),
        "builtin-logs": LogReporter(),
        "builtin-metrics": MetricsReporter(),
        "builtin-alerts": AlertReporter(clock.monotonic),
    }
    return plugins
