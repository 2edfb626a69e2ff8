"""What the policy hands to hooks and to callers: the attempt, the call so far, the outcome; and
what it needs from the layers below, given when it is built (a manifest lookup, a sandbox
provider)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, final

import attrs

from wasm_plugins.errors import PluginError
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy._clock import Clock
from wasm_plugins.policy._events import PolicyEvent, Report
from wasm_plugins.sandbox import Limits, PluginSandbox

__all__ = ["Attempt", "CallState", "ManifestLookup", "Outcome", "SandboxProvider"]

ManifestLookup = Callable[[str], Manifest]
"""A plugin's manifest by name; raises a ConfigurationError for a name nobody registered."""


class SandboxProvider(Protocol):
    """Where the policy gets sandboxes: one per plugin and limits, made on first use and kept."""

    def sandbox(self, plugin: str, limits: Limits) -> PluginSandbox:
        """The plugin's sandbox under these limits."""

    def call(self, plugin: str, limits: Limits, function: str, input: Any) -> Any:
        """Call a function in the plugin's sandbox under these limits, on one version of the
        plugin from start to end."""

    def discard(self, plugin: str, limits: Limits, recompile: bool) -> None:
        """Drop the plugin's sandbox under these limits, so that the next attempt gets a fresh
        one; with ``recompile`` every sandbox of the plugin, the next one compiling the module
        again."""


@final
class Attempt:
    """One attempt of a call, as the attempt hook sees it (read it, do not change it)."""

    __slots__ = ("clock", "function", "input", "limits", "number", "plugin", "provider")

    def __init__(
        self,
        plugin: str,
        function: str,
        input: Any,
        number: int,
        limits: Limits,
        provider: SandboxProvider,
        clock: Clock,
    ) -> None:
        self.plugin = plugin
        self.function = function
        self.input = input
        self.number = number
        self.limits = limits
        """The limits in force for this attempt (the manifest's, or those a recovery raised)."""
        self.provider = provider
        """Where :meth:`sandbox` comes from."""
        self.clock = clock
        """The policy's clock (a fake one in tests)."""

    def __repr__(self) -> str:
        return (
            f"Attempt(plugin={self.plugin!r}, function={self.function!r}, "
            f"number={self.number}, limits={self.limits!r})"
        )

    def sandbox(self) -> PluginSandbox:
        """The sandbox for this plugin under this attempt's limits."""
        return self.provider.sandbox(self.plugin, self.limits)

    def call(self) -> Any:
        """Run the function with the input in the plugin's sandbox under this attempt's limits
        (the plugin version it starts on is kept until it returns, even across a replace)."""
        return self.provider.call(self.plugin, self.limits, self.function, self.input)


@final
class CallState(Report):
    """One call as policy hooks see it; ``attempt`` and ``limits`` change as it goes.

    It is also the record reporters read of the call's own events (its successful attempt, its
    end): one object per call, whatever the reporters.
    """

    # Slots: made on every call, and an instance dictionary holding this many fields costs
    # more to make and fill than the call's own Python around the guest. Two fields that only
    # a failed attempt or a fallback sets (errors, strategy) are not among them: they keep the
    # class's defaults (Report's for strategy) until then, and a call that succeeds never sets
    # them. (The last error is a slot: a refusal sets it, and the first field set outside the
    # slots makes the instance's dictionary.)
    __slots__ = (
        "_event",
        "attempt",
        "attempt_started",
        "deadline",
        "duration",
        "error",
        "function",
        "input",
        "limits",
        "manifest",
        "name",
        "number",
        "outcome",
        "plugin",
        "started",
        "time",
        "value",
    )

    errors: tuple[PluginError, ...] = ()
    """The errors of the attempts that failed so far, in order."""

    def __init__(
        self,
        plugin: str,
        function: str,
        input: Any,
        number: int,
        manifest: Manifest,
        started: float,
        deadline: float | None,
        limits: Limits,
    ) -> None:
        # Not through Report.__init__: this runs for every call.
        self.name = "call_started"
        self.plugin = plugin
        self.function = function
        self.input = input
        self.number = number
        self.time = started
        self.manifest = manifest
        self.started = started
        self.attempt_started = started
        """When the current attempt started (the policy clock): the call's start, then the end
        of each retry's wait."""
        self.deadline = deadline
        self.limits = limits
        """The limits in force for the next attempt (the manifest's, or those a recovery
        raised)."""
        self.attempt = 0
        self.duration = 0.0
        self.outcome: str | None = None
        self.error: PluginError | None = None
        self.value: Any = None
        self._event: PolicyEvent | None = None

    def __repr__(self) -> str:
        return (
            f"CallState(plugin={self.plugin!r}, function={self.function!r}, "
            f"number={self.number}, attempt={self.attempt}, errors={self.errors!r})"
        )

    @property
    def idempotent(self) -> bool:
        """Whether the manifest declares the function safe to repeat after a timeout."""
        spec = self.manifest.functions.get(self.function)
        return spec is not None and spec.idempotent

    def remaining(self, now: float) -> float | None:
        """Seconds left before the call's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - now

    def report_as(self, name: str, time: float, duration: float) -> CallState:
        """This state as the record of the call's event ``name`` at ``time``."""
        self.name = name
        self.time = time
        self.duration = duration
        self._event = None
        return self


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
    call_id: str = ""
    """The call's id (``plugin#number``), as its events and log records carry it."""
