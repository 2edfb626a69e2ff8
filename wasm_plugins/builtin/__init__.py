"""The framework's own hookimpls: ordinary pluggy plugins, all ``trylast``, blockable by name."""

from __future__ import annotations

from collections.abc import Mapping

from wasm_plugins.builtin import engines, host_functions, recovery
from wasm_plugins.builtin.attempt import BuiltinAttempt
from wasm_plugins.builtin.fallbacks import BreakerLookup, BuiltinFallbacks, ExternalFallback
from wasm_plugins.builtin.reporters import AlertChannel, AlertReporter, LogReporter, MetricsReporter
from wasm_plugins.builtin.stats import CallTally
from wasm_plugins.policy import Clock, ManifestLookup, SandboxProvider

__all__ = ["builtin_plugins"]


def builtin_plugins(
    *,
    manifest: ManifestLookup,
    provider: SandboxProvider,
    breakers: BreakerLookup,
    clock: Clock,
    external_fallbacks: Mapping[str, ExternalFallback] | None = None,
    alert: AlertChannel | None = None,
) -> dict[str, object]:
    """The built-in plugins of one host, by the name they are registered under (and blocked by).

    Stateful ones (the result cache, metrics, alerts) are made per host: hosts share nothing.

    :param manifest: a plugin's manifest by name.
    :param provider: the host's sandboxes (the ``simplified`` fallback calls another export).
    :param breakers: the circuit breaker of (plugin, function) (the ``simplified`` fallback's
        export runs only while its own is closed).
    :param clock: the policy's clock (cache ages, alert windows).
    :param external_fallbacks: by plugin name, the host application's own answers.
    :param alert: where raised alerts go (None: the log).
    """
    tally = CallTally()
    plugins: dict[str, object] = {
        "builtin-engines": engines,
        "builtin-host-functions": host_functions,
        "builtin-attempt": BuiltinAttempt(provider),
        "builtin-recovery": recovery,
        "builtin-fallbacks": BuiltinFallbacks(
            manifest, provider, breakers, clock, external_fallbacks
        ),
        "builtin-logs": LogReporter(),
        # Registered after the metrics, so called after them (pluggy calls trylast hookimpls in
        # the order they were registered): the error rate is read once the call is counted.
        "builtin-metrics": MetricsReporter(tally),
        "builtin-alerts": AlertReporter(clock.monotonic, tally=tally, channel=alert),
    }
    return plugins
