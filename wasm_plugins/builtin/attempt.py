"""The built-in attempt: run the plugin's function in its sandbox."""

from __future__ import annotations

from typing import Any

from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import Attempt

__all__ = ["wasm_plugins_attempt"]


@hookimpl(trylast=True)
def wasm_plugins_attempt(attempt: Attempt) -> Any:
    """Call the function in the plugin's sandbox under the attempt's limits."""
    return attempt.provider.sandbox(attempt.plugin, attempt.limits).call(
        attempt.function, attempt.input
    )
