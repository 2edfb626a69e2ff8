"""Built-in recovery: what to do about each kind of failure, when no other hook has an answer.

``trylast``: a third party's ``wasm_plugins_recovery_action`` is asked first.

- memory, fuel: raise the limit by the manifest's ``growth`` factor, up to its ceiling
  (``policy.max_memory``, ``policy.max_fuel``); at the ceiling, abort;
- timeout: for idempotent functions, extend the timeout up to ``policy.max_timeout``; others abort
  (a call that timed out may have had effects);
- compilation: compile once more without any cached code, then abort;
- network, io: retry after the backoff;
- security: never retried (the alert reporter raises a critical alert);
- instance: retry on a fresh instance (a worker that died, a start function that failed);
- anything else: retry when its recovery potential says a retry may succeed, else abort.
"""

from __future__ import annotations

import math

from wasm_plugins._units import format_duration, format_size
from wasm_plugins.errors import (
    CompilationError,
    DeadlineExceeded,
    HostIOError,
    InstanceError,
    NetworkError,
    PluginError,
    RecoveryPotential,
    ResourceLimitExceeded,
    SecurityViolation,
)
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import Abort, CallState, RecoveryAction, Retry
from wasm_plugins.sandbox import PAGE_SIZE

__all__ = ["raise_limit", "wasm_plugins_recovery_action"]


def _show(name: str, value: float) -> str:
    if name == "memory":
        return format_size(int(value))
    if name == "timeout":
        return format_duration(value)
    return str(int(value))


def raise_limit(call: CallState, name: str, ceiling: float | None, growth: float) -> RecoveryAction:
    """Retry with limit ``name`` multiplied by ``growth``, held to ``ceiling``; abort at it."""
    current = getattr(call.limits, name)
    if current is None:
        return Abort(reason=f"{name}: no limit is set, so raising it cannot help")
    if ceiling is None or current >= ceiling:
        where = "no ceiling is set" if ceiling is None else f"the ceiling is {_show(name, ceiling)}"
        return Abort(reason=f"{name}: already at {_show(name, current)} and {where}")
    target = min(ceiling, current * growth)
    if name == "memory":
        target = min(ceiling, math.ceil(target / PAGE_SIZE) * PAGE_SIZE)
    elif name == "fuel":
        target = math.ceil(target)
    return Retry(
        limits=call.limits.replace(**{name: target}),
        reason=f"{name}: {_show(name, current)} -> {_show(name, target)}",
    )


@hookimpl(trylast=True)
def wasm_plugins_recovery_action(error: PluginError, call: CallState) -> RecoveryAction:
    """The default answer for every kind of error."""
    policy = call.manifest.policy
    if isinstance(error, SecurityViolation):
        return Abort(reason="security violations are never retried")
    if isinstance(error, ResourceLimitExceeded):
        if error.resource == "memory":
            return raise_limit(call, "memory", policy.max_memory, policy.growth)
        if error.resource == "fuel":
            return raise_limit(call, "fuel", policy.max_fuel, policy.growth)
        if error.resource == "concurrency":
            return Retry(reason="concurrency: the bulkhead is full, retry after the backoff")
        return Abort(reason=f"{error.resource}: the same input goes over the same limit")
    if isinstance(error, DeadlineExceeded):
        if not call.idempotent:
            return Abort(
                reason="timeout: the function is not idempotent, a retry could repeat its effects"
            )
        return raise_limit(call, "timeout", policy.max_timeout, policy.growth)
    if isinstance(error, CompilationError):
        earlier = sum(1 for seen in call.errors if isinstance(seen, CompilationError))
        if earlier <= 1:
            return Retry(recompile=True, delay=0.0, reason="compilation: compile once more")
        return Abort(reason="compilation failed twice")
    if isinstance(error, NetworkError | HostIOError):
        return Retry(reason=f"{error.kind}: retry after the backoff")
    if isinstance(error, InstanceError):
        if error.state == "circuit_open":
            return Abort(reason="the circuit is open")
        return Retry(fresh_instance=True, reason="instance: retry on a fresh instance")
    if error.recovery_potential is RecoveryPotential.RECOVERABLE:
        return Retry(reason=f"{error.kind}: recoverable, retry after the backoff")
    return Abort(reason=f"{error.kind}: recovery potential {error.recovery_potential.value}")
