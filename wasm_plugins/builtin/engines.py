"""The built-in engines, offered through ``wasm_plugins_register_engines`` like anyone else's."""

from __future__ import annotations

from collections.abc import Callable

from wasm_plugins.engine import Engine, builtin_factories
from wasm_plugins.hookspecs import hookimpl

__all__ = ["wasm_plugins_register_engines"]


@hookimpl(trylast=True)
def wasm_plugins_register_engines(register: Callable[[str, Callable[[], Engine]], None]) -> None:
    """Offer wasmer and wasmtime."""
    for name, factory in builtin_factories().items():
        register(name, factory)
