"""The error policy: circuit breakers, retries with backoff, recovery actions, fallbacks, events.

``__all__`` lists what hook authors use. The pipeline, the dispatcher and the plugin manager are
the host's wiring: importable from here, not part of that list.
"""

from wasm_plugins.policy._actions import (
    Abort,
    Classification,
    FallbackResult,
    RecoveryAction,
    Retry,
    UseValue,
)
from wasm_plugins.policy._breaker import BreakerConfig as BreakerConfig
from wasm_plugins.policy._breaker import BreakerState, CircuitBreaker
from wasm_plugins.policy._breaker import Permit as Permit
from wasm_plugins.policy._breaker import Verdict as Verdict
from wasm_plugins.policy._call import (
    Attempt,
    CallState,
    ManifestLookup,
    Outcome,
    SandboxProvider,
)
from wasm_plugins.policy._clock import Clock, RandomSource, SystemClock
from wasm_plugins.policy._clock import FakeClock as FakeClock
from wasm_plugins.policy._clock import FixedRandom as FixedRandom
from wasm_plugins.policy._clock import system_random as system_random
from wasm_plugins.policy._dispatch import HookDispatcher as HookDispatcher
from wasm_plugins.policy._dispatch import PluginManager as PluginManager
from wasm_plugins.policy._events import (
    Alert,
    AttemptFailed,
    AttemptSucceeded,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PluginLoaded,
    PluginReplaced,
    PluginReplaceFailed,
    PluginUnloaded,
    PolicyEvent,
    Report,
    RetryScheduled,
)
from wasm_plugins.policy._pipeline import CallPipeline as CallPipeline
from wasm_plugins.policy._pipeline import caused_by_caller
from wasm_plugins.policy._retry import Backoff, RetryBudget

__all__ = [
    "Abort",
    "Alert",
    "Attempt",
    "AttemptFailed",
    "AttemptSucceeded",
    "Backoff",
    "BreakerState",
    "BreakerStateChanged",
    "CallFinished",
    "CallState",
    "CircuitBreaker",
    "Classification",
    "Clock",
    "FallbackResult",
    "FallbackUsed",
    "HookFailed",
    "LimitsChanged",
    "ManifestLookup",
    "Outcome",
    "PluginLoaded",
    "PluginReplaceFailed",
    "PluginReplaced",
    "PluginUnloaded",
    "PolicyEvent",
    "RandomSource",
    "RecoveryAction",
    "Report",
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "SandboxProvider",
    "SystemClock",
    "UseValue",
    "caused_by_caller",
]
