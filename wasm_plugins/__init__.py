"""wasm-plugins: load untrusted WebAssembly plugins under enforced limits, with typed errors."""

from loguru import logger

from wasm_plugins._correlation import call_context, caller_fields
from wasm_plugins._version import __version__ as __version__
from wasm_plugins.errors import (
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
from wasm_plugins.hookspecs import hookimpl, hookspec
from wasm_plugins.host import PluginHost, PluginInfo
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy import (
    Abort,
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
from wasm_plugins.sandbox import HostCall, HostFunction, Limits, ModuleCache, Sandbox
from wasm_plugins.services import HostServices, KeyValueStore
from wasm_plugins.trust import Grant, GrantedDirectory, TrustPolicy

__all__ = [
    "Abort",
    "Attempt",
    "AttemptFailed",
    "AttemptSucceeded",
    "BreakerStateChanged",
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

# A library adds no log handlers; the host application opts in with logger.enable("wasm_plugins").
logger.disable("wasm_plugins")
