"""Sandboxes of one host: built on first use per plugin and limits, kept, discarded, closed.

Below the policy: the pipeline gets a :class:`Sandboxes` as its sandbox provider when it is built,
and never reaches the host for one. What a sandbox is made of comes from the plugin's manifest
(engine, isolation, capabilities, WASI, codec), the host functions offered, the host's services
and the compiled-module cache.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, final

from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins.engine import Engine, EngineRegistry, WasiDirectory, WasiSettings
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.isolation import ProcessSandbox, WorkerPool, choose_isolation
from wasm_plugins.manifest import CAPABILITIES, Manifest
from wasm_plugins.sandbox import HostFunction, Limits, ModuleCache, PluginSandbox, Sandbox
from wasm_plugins.services import HostServices
from wasm_plugins.trust import refusing_at_call

__all__ = ["Sandboxes", "make_module_cache", "wasi_settings"]


@final
class Sandboxes:
    """The sandboxes of one host, by (plugin, limits in force).

    :param manifest: a plugin's manifest by name (raises a ConfigurationError for an unknown one).
    :param engines: the engines by name.
    :param engine: the default engine's name; a manifest's wins.
    :param isolation: the default isolation; a manifest's wins.
    :param host_functions: the host functions offered, by (module, name).
    :param revoked: a plugin's capabilities that a clamping trust policy left out: their host
        functions refuse when called.
    :param services: what host functions reach (clock, store, configuration).
    :param cache: the compiled-module cache (None: none).
    :param name: names the worker pool, started on first need.
    """

    def __init__(
        self,
        *,
        manifest: Callable[[str], Manifest],
        engines: EngineRegistry,
        engine: str,
        isolation: str,
        host_functions: Mapping[tuple[str, str], HostFunction],
        revoked: Callable[[str], frozenset[str]],
        services: HostServices,
        cache: ModuleCache | None,
        name: str,
    ) -> None:
        self._manifest = manifest
        self._engines = engines
        self._engine = engine
        self._isolation = isolation
        self._host_functions = host_functions
        self._revoked = revoked
        self._services = services
        self.cache = cache
        self._name = name
        self._held: dict[tuple[str, Limits], PluginSandbox] = {}
        self._last: dict[str, tuple[Limits, PluginSandbox]] = {}
        """By plugin, the sandbox last given and the very limits object asked for: most calls
        ask again with the same object, found without hashing limits."""
        self._recompile: set[str] = set()
        """Plugins whose next sandbox compiles again, replacing the cached code."""
        self._lock = threading.RLock()
        self._closed = False
        self._pool: WorkerPool | None = None

    def engine_for(self, plugin: str) -> Engine:
        """The engine a plugin runs on: its manifest's choice, else the default."""
        return self._engines.get(self._manifest(plugin).engine or self._engine)

    def sandbox(self, plugin: str, limits: Limits | None = None) -> PluginSandbox:
        """The plugin's sandbox under these limits (None: its manifest's), made on first use."""
        last = self._last.get(plugin)
        if last is not None and last[0] is limits:
            return last[1]
        if limits is None:
            limits = self._manifest(plugin).limits
        key = (plugin, limits)
        with self._lock:
            sandbox = self._held.get(key)
            if sandbox is None:
                if self._closed:
                    raise ConfigurationError(
                        field="host",
                        message="Invalid configuration: host - the host is closed",
                        suggestion="create a new PluginHost",
                    )
                sandbox = self._make(self._manifest(plugin), limits)
                self._recompile.discard(plugin)
                self._held[key] = sandbox
            # Set under the lock, so that a sandbox discarded meanwhile is never remembered.
            self._last[plugin] = (limits, sandbox)
            return sandbox

    def _make(self, manifest: Manifest, limits: Limits) -> PluginSandbox:
        self._check_capabilities(manifest)
        requested = manifest.isolation if manifest.isolation != "auto" else self._isolation
        engine = self._engines.get(manifest.engine or self._engine)
        settings: dict[str, Any] = {
            "wasi": wasi_settings(manifest) if "wasi" in manifest.capabilities else None,
            "engine": engine,
            "limits": limits,
            "capabilities": manifest.capabilities,
            "host_functions": refusing_at_call(
                self._host_functions.values(), self._revoked(manifest.name)
            ),
            "codec": manifest.codec,
            "functions": tuple(manifest.functions) or None,
            "name": manifest.name,
            "services": self._services,
            "cache": self.cache,
            "refresh_cache": manifest.name in self._recompile,
        }
        # The manifest is the granted one: its hosts are those the trust policy let through.
        settings.update(abi=manifest.abi, http_hosts=manifest.http)
        if choose_isolation(engine, limits, requested) == "process":
            return ProcessSandbox(manifest.module_source(), pool=self._worker_pool(), **settings)
        return Sandbox(manifest.module_source(), **settings)

    def _check_capabilities(self, manifest: Manifest) -> None:
        offered = {f.capability for f in self._host_functions.values() if f.capability}
        known = offered | set(CAPABILITIES)
        for capability in sorted(manifest.capabilities):
            if capability not in known:
                close = difflib.get_close_matches(capability, sorted(known), n=1)
                raise ConfigurationError(
                    field="capabilities",
                    plugin=manifest.name,
                    message=(
                        f"Invalid configuration: capabilities - unknown capability {capability!r}"
                    ),
                    suggestion=(f"did you mean {close[0]!r}? " if close else "")
                    + "known capabilities: "
                    + ", ".join(sorted(known)),
                )

    def _worker_pool(self) -> WorkerPool:
        """The pool of worker processes, started on first need."""
        if self._pool is None:
            self._pool = WorkerPool(name=self._name)
        return self._pool

    def discard(self, plugin: str, limits: Limits, recompile: bool) -> None:
        """Drop a plugin's sandbox so that the next attempt gets a fresh one; with
        ``recompile``, every sandbox of the plugin, and the next one compiles the module again
        (bypassing the compiled-module cache, whose entry it replaces)."""
        with self._lock:
            if recompile:
                self._recompile.add(plugin)
            self._last.pop(plugin, None)
            dropped = [
                self._held.pop(key)
                for key in list(self._held)
                if key[0] == plugin and (recompile or key[1] == limits)
            ]
        for sandbox in dropped:
            sandbox.close()

    def held(self) -> dict[tuple[str, Limits], PluginSandbox]:
        """The sandboxes held, by (plugin, limits in force)."""
        with self._lock:
            return dict(self._held)

    def worker_pids(self) -> list[int]:
        """The process ids of the workers (none until a plugin needs one)."""
        return [] if self._pool is None else self._pool.pids()

    def close(self) -> None:
        """Close every sandbox and the worker pool; later requests fail with a typed error."""
        with self._lock:
            self._closed = True
            sandboxes = list(self._held.values())
            self._held.clear()
            self._last.clear()
        for sandbox in sandboxes:
            sandbox.close()
        if self._pool is not None:
            self._pool.close()


def make_module_cache(
    setting: ModuleCache | str | os.PathLike[str] | bool | None,
) -> ModuleCache | None:
    """The compiled-module cache a host's setting names (see ``PluginHost(module_cache=...)``)."""
    if setting is None or setting is False:
        return None
    if setting is True:
        cache = ModuleCache.from_environment()
        return cache if cache.enabled else None
    if isinstance(setting, ModuleCache):
        return setting if setting.enabled else None
    return ModuleCache(setting)


def wasi_settings(manifest: Manifest) -> WasiSettings:
    """WASI for a plugin: its preopens (relative host paths from the working directory), the
    environment variables on its allow-list that are set, and its output into the log."""
    spec = manifest.wasi
    log = logger.bind(plugin=manifest.name, source="guest")

    def output(stream: str, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.info("{}: {}", stream, escape(line))

    return WasiSettings(
        directories=tuple(
            WasiDirectory(str(Path(p.host).resolve()), p.guest, p.read_only) for p in spec.preopens
        ),
        environment=tuple((name, os.environ[name]) for name in spec.env if name in os.environ),
        arguments=(manifest.name, *spec.args),
        output=output if spec.capture_output else None,
    )
