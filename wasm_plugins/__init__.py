"""wasm-plugins: load untrusted WebAssembly plugins under enforced limits, with typed errors."""

from loguru import logger

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
from wasm_plugins.sandbox import HostFunction, Limits, Sandbox

__all__ = [
    "CommunicationError",
    "CompilationError",
    "ConfigurationError",
    "ContextualError",
    "DeadlineExceeded",
    "ErrorContext",
    "ExecutionError",
    "HostFunction",
    "HostIOError",
    "InstanceError",
    "Limits",
    "ModuleError",
    "NetworkError",
    "PluginError",
    "RecoveryPotential",
    "ResourceLimitExceeded",
    "Sandbox",
    "SecurityViolation",
    "Severity",
]

__version__ = "0.1.0"

# A library adds no log handlers; the host application opts in with logger.enable("wasm_plugins").
logger.disable("wasm_plugins")
