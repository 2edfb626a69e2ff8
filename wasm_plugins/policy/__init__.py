"""The error policy: circuit breakers, retries with backoff, recovery actions, fallbacks, events."""

from wasm_plugins.policy._actions import (
    Abort,
    Classification,
    FallbackResult,
    RecoveryAction,
    Retry,
    UseValue,
)
from wasm_plugins.policy._breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Permit,
    Verdict,
)
from wasm_plugins.policy._clock import Clock, RandomSource, SystemClock, system_random
from wasm_plugins.policy._events import (
    AttemptFailed,
    AttemptSucceeded,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PolicyEvent,
    RetryScheduled,
)
from wasm_plugins.policy._pipeline import CallPipeline, CallState, caused_by_caller
from wasm_plugins.policy._retry import Backoff, RetryBudget

__all__ = [
    "Abort",
    "AttemptFailed",
    "AttemptSucceeded",
    "Backoff",
    "BreakerConfig",
    "BreakerState",
    "BreakerStateChanged",
    "CallFinished",
    "CallPipeline",
    "CallState",
    "CircuitBreaker",
    "Classification",
    "Clock",
    "FallbackResult",
    "FallbackUsed",
    "HookFailed",
    "LimitsChanged",
    "Permit",
    "PolicyEvent",
    "RandomSource",
    "RecoveryAction",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "SystemClock",
    "UseValue",
    "Verdict",
    "caused_by_caller",
    "system_random",
]
