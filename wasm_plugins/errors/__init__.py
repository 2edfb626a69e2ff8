"""Errors: the taxonomy (one attrs exception per kind), their dict form, and the classes by kind.

This package is the floor of ``wasm_plugins``: it imports nothing of the framework but ``_units``,
so every other module can raise and convert errors.
"""

from wasm_plugins.errors._convert import (
    error_from_dict,
    error_log_fields,
    error_to_dict,
    make_converter,
)
from wasm_plugins.errors._records import (
    Diagnostic,
    ExecutionEnvironment,
    GuestFrame,
    RecoveryPotential,
    Severity,
    ValidationIssue,
)
from wasm_plugins.errors._taxonomy import (
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
    ResourceLimitExceeded,
    SecurityViolation,
    call_error_context,
    circuit_open_error,
    contextual_error,
    error_classes,
)

__all__ = [
    "CallCancelled",
    "CommunicationError",
    "CompilationError",
    "ConfigurationError",
    "ContextualError",
    "DeadlineExceeded",
    "Diagnostic",
    "ErrorContext",
    "ExecutionEnvironment",
    "ExecutionError",
    "GuestFrame",
    "HostIOError",
    "InstanceError",
    "ModuleError",
    "NetworkError",
    "PluginError",
    "RecoveryPotential",
    "ResourceLimitExceeded",
    "SecurityViolation",
    "Severity",
    "ValidationIssue",
    "call_error_context",
    "circuit_open_error",
    "contextual_error",
    "error_classes",
    "error_from_dict",
    "error_log_fields",
    "error_to_dict",
    "make_converter",
]
