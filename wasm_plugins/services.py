"""What a host offers the host functions: a clock, a random source, key-value stores, configuration.

Time and randomness are injected, so tests control them; the key-value store is a protocol, so a
host application can keep plugin data where it likes. Each plugin sees only its own namespace.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from wasm_plugins._units import MiB

__all__ = ["HostServices", "KeyValueStore", "MemoryKeyValueStore", "QuotaExceeded"]


class QuotaExceeded(Exception):
    """A plugin's store is full."""


class KeyValueStore(Protocol):
    """Values by (plugin, key); one plugin never sees another plugin's keys."""

    def get(self, plugin: str, key: bytes) -> bytes | None:
        """The value, or ``None``."""

    def set(self, plugin: str, key: bytes, value: bytes) -> None:
        """Store a value.

        :raises QuotaExceeded: when the plugin's quota would be exceeded.
        """

    def delete(self, plugin: str, key: bytes) -> bool:
        """Remove a value; whether there was one."""


class MemoryKeyValueStore:
    """An in-memory store with a per-plugin quota on keys and bytes; thread-safe."""

    def __init__(self, max_keys: int = 10_000, max_bytes: int = 4 * MiB) -> None:
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._data: dict[str, dict[bytes, bytes]] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, plugin: str, key: bytes) -> bytes | None:
        with self._lock:
            return self._data.get(plugin, {}).get(key)

    def set(self, plugin: str, key: bytes, value: bytes) -> None:
        with self._lock:
            namespace = self._data.setdefault(plugin, {})
            old = namespace.get(key)
            size = self._sizes.get(plugin, 0) + len(key) + len(value)
            if old is not None:
                size -= len(key) + len(old)
            if (old is None and len(namespace) >= self.max_keys) or size > self.max_bytes:
                raise QuotaExceeded(
                    f"store of {plugin!r} is limited to {self.max_keys} keys and "
                    f"{self.max_bytes} bytes"
                )
            namespace[key] = value
            self._sizes[plugin] = size

    def delete(self, plugin: str, key: bytes) -> bool:
        with self._lock:
            namespace = self._data.get(plugin, {})
            old = namespace.pop(key, None)
            if old is None:
                return False
            self._sizes[plugin] -= len(key) + len(old)
            return True


def _no_config(_: str) -> Mapping[str, Any]:
    return {}


@attrs.define
class HostServices:
    """The host's services, handed to every host function through ``HostCall.services``."""

    wall_clock_ns: Callable[[], int] = time.time_ns
    """Nanoseconds since the Unix epoch (UTC)."""
    monotonic_ns: Callable[[], int] = time.monotonic_ns
    """Nanoseconds from an arbitrary origin, never going back."""
    random_bytes: Callable[[int], bytes] = os.urandom
    store: KeyValueStore = attrs.field(factory=MemoryKeyValueStore)
    config: Callable[[str], Mapping[str, Any]] = _no_config
    """The configuration values of a plugin, by plugin name."""
