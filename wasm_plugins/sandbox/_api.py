"""What every sandbox offers its users, wherever its plugin runs: :class:`PluginSandbox`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from wasm_plugins.engine import Engine, EngineModule
from wasm_plugins.sandbox._codec import Codec
from wasm_plugins.sandbox._limits import Limits
from wasm_plugins.sandbox._loaded import LoadedModule

__all__ = ["PluginSandbox"]


@runtime_checkable
class PluginSandbox(Protocol):
    """A plugin's sandbox: :class:`~wasm_plugins.sandbox.Sandbox` in this process,
    :class:`~wasm_plugins.isolation.ProcessSandbox` in worker processes."""

    id: str
    name: str
    isolation: str
    """Where the plugin runs: ``in-process`` or ``process``."""
    engine: Engine
    limits: Limits
    capabilities: frozenset[str]
    codec: Codec
    services: Any
    functions: tuple[str, ...]
    loaded: LoadedModule

    @property
    def module(self) -> EngineModule:
        """The compiled module (exports, imports, serialisation)."""

    @property
    def compiled_from_cache(self) -> bool:
        """Whether the compiled module was loaded from the cache rather than compiled."""

    @property
    def instances(self) -> int:
        """Live instances in this process."""

    def call(self, function: str, input: Any = None) -> Any:
        """Call a plugin function with a value encoded by the codec; return the decoded result."""

    def call_bytes(self, function: str, data: bytes) -> bytes:
        """Call a plugin function with encoded input; return the guest's output bytes."""

    def close(self) -> None:
        """Release the plugin's instances; later calls fail with an InstanceError."""

    def __enter__(self) -> PluginSandbox: ...

    def __exit__(self, *exc_info: object) -> None: ...
