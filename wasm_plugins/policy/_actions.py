"""What policy hooks answer: recovery actions, fallback results, classifications."""

from __future__ import annotations

from typing import Any

import attrs

from wasm_plugins.errors import RecoveryPotential, Severity
from wasm_plugins.sandbox import Limits

__all__ = [
    "Abort",
    "Classification",
    "FallbackResult",
    "RecoveryAction",
    "Retry",
    "UseValue",
]


@attrs.frozen
class RecoveryAction:
    """Base of what a recovery hook answers."""

    reason: str = ""
    """Why, for people and for the events (``memory: 64 MiB -> 128 MiB``)."""


@attrs.frozen
class Retry(RecoveryAction):
    """Try again, after ``delay`` seconds (``None``: the policy's backoff), optionally under other
    limits, on a fresh instance, or after compiling the module again."""

    delay: float | None = None
    limits: Limits | None = None
    fresh_instance: bool = False
    recompile: bool = False


@attrs.frozen
class UseValue(RecoveryAction):
    """Answer the call with this value instead of retrying (a fallback decided by recovery)."""

    value: Any = None
    quality: float = attrs.field(default=0.5)
    strategy: str = "recovery"

    @quality.validator
    def _quality(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"a value's quality is in (0, 1], got {value}")


@attrs.frozen
class Abort(RecoveryAction):
    """Stop trying; the fallbacks may still answer."""


@attrs.frozen
class FallbackResult:
    """What a fallback hook answers: a value, which strategy produced it, and how good it is."""

    value: Any
    strategy: str
    quality: float = attrs.field(default=0.5)

    @quality.validator
    def _quality(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"a fallback's quality is in (0, 1], got {value}")


@attrs.frozen
class Classification:
    """What a classification hook answers: new severity and/or recovery potential, and whether
    the caller caused the error (the circuit breaker then ignores it)."""

    severity: Severity | None = None
    recovery_potential: RecoveryPotential | None = None
    caused_by_caller: bool | None = None
    """Say ``True`` only on the host's own evidence (the input checked by the host), never on
    the guest's word: a plugin that blames its input for every failure must still be stopped."""
