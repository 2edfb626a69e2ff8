"""The built-in attempt: run the plugin's function in its sandbox."""

from __future__ import annotations

from typing import Any, final

from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import CallState, SandboxProvider

__all__ = ["BuiltinAttempt"]


@final
class BuiltinAttempt:
    """Runs attempts in the host's sandboxes.

    :param provider: the sandbox of a plugin under the limits in force.
    """

    def __init__(self, provider: SandboxProvider) -> None:
        self._call = provider.call

    @hookimpl(trylast=True)
    def wasm_plugins_attempt(self, call: CallState) -> Any:
        """Call the function in the plugin's sandbox under the attempt's limits.

        It takes the call, not an :class:`~wasm_plugins.policy.Attempt`: none is made for it.
        """
        # Through the provider, so the call stays on one plugin version from start to end and a
        # caller's cancellation reaches the guest.
        return self._call(call.plugin, call.limits, call.function, call.input)
