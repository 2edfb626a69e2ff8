"""wasm-plugins: load untrusted WebAssembly plugins under enforced limits, with typed errors.

The names below are imported from their modules when first used, so ``import wasm_plugins`` (a
command line's start, a plugin package naming a hook) costs next to nothing: the engines, the
policy and loguru are loaded by what uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wasm_plugins._correlation import call_context, caller_fields
    from wasm_plugins._version import __version__ as __version__
    from wasm_plugins.errors import (
        CallCancelled,
        CommunicationError,
        CompilationError,
        ConfigurationError,
        ContextualError,
        DeadlineExceeded,
        ErrorContext,
        ExecutionError,
        HostIOError,
        InstanceError,
        ModuleError,
        NetworkError,
        PluginError,
        RecoveryPotential,
        ResourceLimitExceeded,
        SecurityViolation,
        Severity,
    )
    from wasm_plugins.hookspecs import (
        hookimpl,
        hookspec,
    )
    from wasm_plugins.host import (
        PluginHost,
        PluginInfo,
    )
    from wasm_plugins.manifest import Manifest
    from wasm_plugins.policy import (
        Abort,
        Alert,
        Attempt,
        AttemptFailed,
        AttemptSucceeded,
        BreakerStateChanged,
        CallFinished,
        CallState,
        Classification,
        FallbackResult,
        FallbackUsed,
        HookFailed,
        LimitsChanged,
        Outcome,
        PolicyEvent,
        RecoveryAction,
        Report,
        Retry,
        RetryScheduled,
        UseValue,
    )
    from wasm_plugins.sandbox import (
        HostCall,
        HostFunction,
        Limits,
        ModuleCache,
        Sandbox,
    )
    from wasm_plugins.services import (
        HostServices,
        KeyValueStore,
    )
    from wasm_plugins.trust import (
        Grant,
        GrantedDirectory,
        TrustPolicy,
    )

__all__ = [
    "Abort",
    "Alert",
    "Attempt",
    "AttemptFailed",
    "AttemptSucceeded",
    "BreakerStateChanged",
    "CallCancelled",
    "CallFinished",
    "CallState",
    "Classification",
    "CommunicationError",
    "CompilationError",
    "ConfigurationError",
    "ContextualError",
    "DeadlineExceeded",
    "ErrorContext",
    "ExecutionError",
    "FallbackResult",
    "FallbackUsed",
    "Grant",
    "GrantedDirectory",
    "HookFailed",
    "HostCall",
    "HostFunction",
    "HostIOError",
    "HostServices",
    "InstanceError",
    "KeyValueStore",
    "Limits",
    "LimitsChanged",
    "Manifest",
    "ModuleCache",
    "ModuleError",
    "NetworkError",
    "Outcome",
    "PluginError",
    "PluginHost",
    "PluginInfo",
    "PolicyEvent",
    "RecoveryAction",
    "RecoveryPotential",
    "Report",
    "ResourceLimitExceeded",
    "Retry",
    "RetryScheduled",
    "Sandbox",
    "SecurityViolation",
    "Severity",
    "TrustPolicy",
    "UseValue",
    "call_context",
    "caller_fields",
    "hookimpl",
    "hookspec",
]

_SOURCES = {
    **dict.fromkeys(
        (
            "CallCancelled",
            "CommunicationError",
            "CompilationError",
            "ConfigurationError",
            "ContextualError",
            "DeadlineExceeded",
            "ErrorContext",
            "ExecutionError",
            "HostIOError",
            "InstanceError",
            "ModuleError",
            "NetworkError",
            "PluginError",
            "RecoveryPotential",
            "ResourceLimitExceeded",
            "SecurityViolation",
            "Severity",
        ),
        "wasm_plugins.errors",
    ),
    **dict.fromkeys(("hookimpl", "hookspec"), "wasm_plugins.hookspecs"),
    **dict.fromkeys(("PluginHost", "PluginInfo"), "wasm_plugins.host"),
    **dict.fromkeys(("Manifest",), "wasm_plugins.manifest"),
    **dict.fromkeys(
        (
            "Abort",
            "Alert",
            "Attempt",
            "AttemptFailed",
            "AttemptSucceeded",
            "BreakerStateChanged",
            "CallFinished",
            "CallState",
            "Classification",
            "FallbackResult",
            "FallbackUsed",
            "HookFailed",
            "LimitsChanged",
            "Outcome",
            "PolicyEvent",
            "RecoveryAction",
            "Report",
            "Retry",
            "RetryScheduled",
            "UseValue",
        ),
        "wasm_plugins.policy",
    ),
    **dict.fromkeys(
        ("HostCall", "HostFunction", "Limits", "ModuleCache", "Sandbox"), "wasm_plugins.sandbox"
    ),
    **dict.fromkeys(("HostServices", "KeyValueStore"), "wasm_plugins.services"),
    **dict.fromkeys(("Grant", "GrantedDirectory", "TrustPolicy"), "wasm_plugins.trust"),
    **dict.fromkeys(("call_context", "caller_fields"), "wasm_plugins._correlation"),
    "__version__": "wasm_plugins._version",
}
"""Where each public name comes from."""


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'wasm_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
