"""The framework's own hookimpls: ordinary pluggy plugins, all ``trylast``, blockable by name."""

from __future__ import annotations

from types import ModuleType

__all__ = ["builtin_plugins"]


def builtin_plugins() -> dict[str, ModuleType]:
    """The built-in plugins by the name they are registered under (and blocked by)."""
    from wasm_plugins.builtin import attempt, engines, host_functions

    return {
        "builtin-engines": engines,
        "builtin-host-functions": host_functions,
        "builtin-attempt": attempt,
    }
