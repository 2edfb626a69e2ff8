"""How a sandbox explains a failure, wherever its plugin runs (in this process or in a worker).

- a refused ``memory.grow`` explains most failures that follow it, so it is reported instead;
- an exception out of a host function is an ExecutionError (the guest stopped halfway);
- an instance that stopped abnormally is suspect and is replaced;
- an error is stamped once with where it happened (plugin, function, sandbox, engine, isolation);
- a worker reports an error as a dict without where or how bad: the host decides those.
"""

from __future__ import annotations

from typing import Any

from wasm_plugins.errors import (
    CommunicationError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    InstanceError,
    PluginError,
    ResourceLimitExceeded,
    SecurityViolation,
)

__all__ = [
    "annotate",
    "closed_sandbox",
    "error_from_report",
    "error_report",
    "grow_may_explain",
    "host_failure",
    "input_too_large",
    "instance_is_suspect",
    "refused_grow",
    "stack_overflow",
]


def host_failure(exc: Exception) -> ExecutionError:
    """The error for an exception a host function raised (its cause)."""
    failure = ExecutionError(
        message=f"A host function failed: {type(exc).__name__}: {exc}",
        trap="host_error",
        suggestion="a bug in a host function offered to the plugin; see the cause",
    )
    failure.__cause__ = exc
    return failure


def grow_may_explain(error: PluginError) -> bool:
    """Whether a refused ``memory.grow`` before ``error`` would be the better explanation: not
    for a deadline, nor for another limit (input, output, fuel) that was hit on its own, nor for
    a security violation (a guest could otherwise hide one, and the alert it raises, behind a
    refused grow of its own making)."""
    if isinstance(error, DeadlineExceeded | SecurityViolation):
        return False
    return not isinstance(error, ResourceLimitExceeded) or error.resource == "memory"


def refused_grow(used: int, limit: int | None, cause: PluginError) -> ResourceLimitExceeded:
    """The error for a ``memory.grow`` to ``used`` bytes that the limit refused, which led the
    guest to fail with ``cause``."""
    error = ResourceLimitExceeded(
        resource="memory",
        used=used,
        limit=limit,
        suggestion="raise limits.memory, or give the plugin smaller inputs",
    )
    error.__cause__ = cause
    return error


def stack_overflow(trap: ExecutionError, max_depth: int) -> ExecutionError:
    """The error for a guest that hit the call-depth bound (its ``unreachable`` trap as
    ``trap``)."""
    error = ExecutionError(
        message=trap.message.replace("unreachable", "stack overflow", 1)
        + f" (more than {max_depth} nested calls)",
        trap="stack_overflow",
        guest_stack=trap.guest_stack,
        details=trap.details,
        suggestion="the plugin recursed too deeply for this input",
    )
    error.__cause__ = trap.__cause__
    return error


def instance_is_suspect(error: PluginError) -> bool:
    """Whether the guest stopped abnormally, so its instance state cannot be trusted."""
    if isinstance(error, ExecutionError):
        return error.trap != "guest_error"
    if isinstance(error, ResourceLimitExceeded):
        return error.resource in ("memory", "fuel")
    if isinstance(error, CommunicationError):
        # The Extism kernel stops a plugin that misuses it with a trap, halfway through its code.
        return error.channel in ("guest-memory", "extism-kernel")
    return isinstance(error, DeadlineExceeded | InstanceError)


def input_too_large(size: int, limit: int) -> ResourceLimitExceeded:
    """The error for an encoded input of ``size`` bytes over ``limits.max_input``."""
    return ResourceLimitExceeded(
        resource="input",
        used=size,
        limit=limit,
        suggestion="raise limits.max_input, or send a smaller input",
    )


def closed_sandbox(why: str = "the sandbox is closed") -> InstanceError:
    """The error for a call of a sandbox that can no longer run its plugin."""
    return InstanceError(
        state="closed",
        message=f"Instance failed: {why}",
        suggestion="create a new sandbox",
    )


def annotate(
    error: PluginError,
    *,
    sandbox_id: str,
    plugin: str,
    function: str | None,
    engine: str | None,
    isolation: str,
    input_size: int | None,
) -> PluginError:
    """Stamp ``error`` with where it happened, keeping whatever it already says."""
    error.plugin = error.plugin or plugin
    error.function = error.function or function
    if error.context is None:
        error.context = ErrorContext(
            sandbox_id=sandbox_id,
            plugin=plugin,
            function=function,
            environment=ExecutionEnvironment(
                engine=engine, isolation=isolation, input_size=input_size
            ),
            guest_stack=error.guest_stack if isinstance(error, ExecutionError) else (),
        )
    return error


def error_report(error: PluginError) -> dict[str, Any]:
    """An error as a worker sends it: its dict, without the context (the host makes that)."""
    report = error.to_dict()
    report.pop("context", None)
    return report


def error_from_report(report: object) -> PluginError:
    """The typed error of a worker's :func:`error_report`. Where and how bad are the host's to
    say, not the worker's: plugin, function, severity and recovery potential are reset.

    :raises ValueError: when ``report`` is not the dict of an error.
    """
    if not isinstance(report, dict) or report.get("kind") == "contextual":
        raise ValueError(f"an error is not an error dict: {str(report)[:200]!r}")
    fields = {key: value for key, value in report.items() if key != "context"}
    try:
        error = PluginError.from_dict(fields)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"an error dict does not fit: {str(exc)[:300]}") from None
    error.plugin = None
    error.function = None
    error.severity = type(error).default_severity
    error.recovery_potential = type(error).default_recovery
    return error
