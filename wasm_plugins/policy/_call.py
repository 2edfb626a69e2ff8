"""What the policy hands to hooks and to callers: the attempt, the call so far, the outcome; and
what it needs from the layers below, given when it is built (a manifest lookup, a sandbox
provider)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

from wasm_plugins.errors import PluginError
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy._clock import Clock
from wasm_plugins.sandbox import Limits, PluginSandbox

__all__ = ["Attempt", "CallState", "ManifestLookup", "Outcome", "SandboxProvider"]

ManifestLookup = Callable[[str], Manifest]
"""A plugin's manifest by name; raises a ConfigurationError for a name nobody registered."""


class SandboxProvider(Protocol):
    """Where the policy gets sandboxes: one per plugin and limits, made on first use and kept."""

    def sandbox(self, plugin: str, limits: Limits) -> PluginSandbox:
        """The plugin's sandbox under these limits."""

    def discard(self, plugin: str, limits: Limits, recompile: bool) -> None:
        """Drop the plugin's sandbox under these limits, so that the next attempt gets a fresh
        one; with ``recompile`` every sandbox of the plugin, the next one compiling the module
        again."""


@attrs.frozen
class Attempt:
    """One attempt of a call, as the attempt hook sees it."""

    plugin: str
    function: str
    input: Any
    number: int
    limits: Limits
    """The limits in force for this attempt (the manifest's, or those a recovery raised)."""
    provider: SandboxProvider = attrs.field(repr=False)
    """Where :meth:`sandbox` comes from."""
    clock: Clock = attrs.field(repr=False)
    """The policy's clock (a fake one in tests)."""

    def sandbox(self) -> PluginSandbox:
        """The sandbox for this plugin under this attempt's limits."""
        return self.provider.sandbox(self.plugin, self.limits)


@attrs.define
class CallState:
    """One call as policy hooks see it; ``attempt`` and ``limits`` change as it goes."""

    plugin: str
    function: str
    input: Any
    number: int
    """The call's number in its host (``call_id`` is made from it)."""
    manifest: Manifest
    started: float
    deadline: float | None
    limits: Limits
    attempt: int = 0
    attempt_started: float = 0.0
    errors: list[PluginError] = attrs.field(factory=list)

    @property
    def call_id(self) -> str:
        """``plugin#number``: the call's name in events and logs."""
        return f"{self.plugin}#{self.number}"

    @property
    def idempotent(self) -> bool:
        """Whether the manifest declares the function safe to repeat after a timeout."""
        spec = self.manifest.functions.get(self.function)
        return spec is not None and spec.idempotent

    def remaining(self, now: float) -> float | None:
        """Seconds left before the call's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - now


@attrs.frozen
class Outcome:
    """What :meth:`PluginHost.invoke` returns: the value and how it was obtained."""

    value: Any
    plugin: str
    function: str
    attempts: int
    errors: tuple[PluginError, ...]
    """Errors of the attempts that failed, in order."""
    duration: float
    """Seconds from the call to its answer."""
    fallback: str | None = None
    """The fallback strategy that answered, when the plugin itself did not."""
    quality: float = 1.0
    """1.0 for the plugin's own answer; a fallback's quality score otherwise."""
    error: PluginError | None = None
    """The error a fallback answered for."""
