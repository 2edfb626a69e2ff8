"""Sandboxes of one host: built on first use per plugin and limits, kept, discarded, closed.

Below the policy: the pipeline gets a :class:`Sandboxes` as its sandbox provider when it is built,
and never reaches the host for one. What a sandbox is made of comes from the plugin's manifest
(engine, isolation, capabilities, WASI, codec), the host functions offered, the host's services
and the compiled-module cache.
"""

from __future__ import annotations

import collections
import difflib
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, final

from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins.engine import Engine, EngineRegistry, WasiDirectory, WasiSettings
from wasm_plugins.errors import CallCancelled, ConfigurationError, PluginError
from wasm_plugins.isolation import ProcessSandbox, WorkerPool, choose_isolation
from wasm_plugins.manifest import CAPABILITIES, Manifest
from wasm_plugins.sandbox import HostFunction, Limits, ModuleCache, PluginSandbox, Sandbox
from wasm_plugins.services import HostServices
from wasm_plugins.trust import refusing_at_call

__all__ = ["Cancellation", "Sandboxes", "make_module_cache", "wasi_settings"]


class _Calling(threading.local):
    token: Cancellation | None = None
    """The :class:`Cancellation` of the call this thread runs, if its caller can cancel it (a
    class default: reading a missing attribute would raise and catch an AttributeError on every
    call)."""


_calling = _Calling()


@final
class _Signal(threading.Event):
    """The event a :class:`Cancellation` sets, which tells those who asked (:meth:`when_set`):
    an engine that stops a guest at its next look at the epoch advances the epoch itself,
    rather than a timer ticking through every call that could be cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[Callable[[], object]] = []
        self.on = False
        """:meth:`is_set` as an attribute: a look with no call (the calls of a thread of
        awaited calls look before each call, and after)."""

    def when_set(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` (from the thread that sets the event) once it is set; at once when it
        is set already. A hook asked for twice is kept once."""
        if hook not in self._hooks:
            self._hooks.append(hook)
        if self.is_set():
            hook()

    def set(self) -> None:
        super().set()
        self.on = True
        for hook in list(self._hooks):
            try:
                hook()
            except Exception:  # a hook must not keep the cancellation from the others
                logger.opt(exception=True).warning("a cancellation hook failed")

    def clear(self) -> None:
        self.on = False
        super().clear()


@final
class Cancellation:
    """A call its caller may cancel: :meth:`cancel` stops the guest running it (a wasmtime store
    is interrupted at its next epoch tick, a worker process is killed) and every later attempt
    of the call ends at once with a ``CallCancelled``.

    :param lasting: it serves one thread's calls one after another (the threads of awaited
        calls): a sandbox asked to watch it keeps watching between calls, rather than being
        told to stop after each (on wasmtime, stopping and starting again cost a third of a
        tiny call), and is not asked again after a call that returned (its instance is the
        one that watches). A call of such a sandbox, one that has nothing to interrupt (its
        calls are not stopped by killing a worker), is then not even noted as running: only
        whether the cancellation is set is looked at (see :meth:`Sandboxes.call`). The thread
        must run every call under it, or under its successor (which the sandbox is then asked
        to watch instead).
    """

    def __init__(self, *, lasting: bool = False) -> None:
        self._lock = threading.Lock()
        self.cancelled = _Signal()
        self._running: tuple[PluginSandbox, int] | None = None
        self._watching = False
        """Whether the running attempt's sandbox watches :attr:`cancelled`."""
        self.lasting = lasting
        self._kept: PluginSandbox | None = None
        """Lasting: the sandbox of the last call, which returned, when it has nothing to
        interrupt: its instance, kept, still watches (or still cannot)."""

    def run(self, thunk: Callable[[], Any]) -> Any:
        """Run ``thunk`` (a call through the policy) in this thread, cancellable."""
        _calling.token = self
        try:
            return thunk()
        finally:
            _calling.token = None

    def hold(self) -> None:
        """Run this thread's calls under this cancellation from now on (a thread of awaited
        calls, with a lasting one): what :meth:`run` does around one call."""
        _calling.token = self

    @staticmethod
    def release() -> None:
        """This thread's calls no longer run under a cancellation."""
        _calling.token = None

    def cancel(self) -> None:
        """Stop the call: the guest running now, and any attempt after it."""
        with self._lock:
            self.cancelled.set()
            running = self._running
        if running is not None:
            interrupt = getattr(running[0], "interrupt", None)
            if interrupt is not None:
                interrupt(running[1])

    def _enter(self, sandbox: PluginSandbox) -> None:
        with self._lock:
            if self.cancelled.is_set():
                raise CallCancelled(plugin=sandbox.name)
            self._running = (sandbox, threading.get_ident())
        if sandbox is self._kept:
            return
        watch = getattr(sandbox, "watch", None)
        # In this process the guest runs on this thread: its engine watches the event (not
        # wasmer's, which cannot stop a running guest: that sandbox is not asked to unwatch).
        self._watching = watch is not None and bool(watch(self.cancelled))

    def _leave(self, sandbox: PluginSandbox, failed: bool = False) -> None:
        """After an attempt; ``failed``: it raised (its sandbox may have dropped the instance
        that watched)."""
        # No lock: cancel() interrupts what it saw running after it let its lock go anyway.
        self._running = None
        watching, self._watching = self._watching, False
        if self.lasting:
            interrupts = getattr(sandbox, "interrupt", None) is not None
            self._kept = None if failed or interrupts else sandbox
        elif watching:
            sandbox.watch(None)  # type: ignore[attr-defined]


@final
class _Version:
    """One version of a plugin: the sandboxes made for it and the calls running in them.

    A version replaced or unloaded is retired: new calls no longer reach it, and its sandboxes
    (and their workers) are closed when the last call running in them returns. Counting the
    calls takes no lock (a deque's append and pop are atomic): a successful call queues on
    nothing; only a retired version's last call takes the lock, to close its sandboxes once.
    :meth:`Sandboxes.call` counts a call in before it reads ``retired`` (so a retirement never
    misses it) and out with :meth:`leave`'s first line written out.
    """

    __slots__ = ("_lock", "retired", "running", "sandboxes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sandboxes: list[PluginSandbox] = []
        self.running: collections.deque[None] = collections.deque()
        """One item per call running on this version."""
        self.retired = False

    def leave(self) -> list[PluginSandbox]:
        """Count a call out: the sandboxes to close when it was the last of a retired version."""
        self.running.pop()
        return self.drained_sandboxes() if self.retired else []

    def drained_sandboxes(self) -> list[PluginSandbox]:
        """A retired version's sandboxes, taken once, when no call runs on it any more."""
        with self._lock:
            return self._drained()

    def retire(self) -> list[PluginSandbox]:
        """No new calls; the sandboxes to close now when none is running."""
        with self._lock:
            self.retired = True
            return self._drained()

    @property
    def drained(self) -> bool:
        """Retired, with no call running."""
        return self.retired and not self.running

    def _drained(self) -> list[PluginSandbox]:
        if not self.drained:
            return []
        sandboxes, self.sandboxes = self.sandboxes, []
        return sandboxes


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
        self._versions: dict[str, _Version] = {}
        """By plugin, the version new calls reach."""
        self._retired: list[_Version] = []
        """Versions replaced or unloaded whose calls have not all returned."""
        self._last: dict[str, tuple[Limits, PluginSandbox, _Version]] = {}
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
        return self._current(plugin, limits)[0]

    def call(self, plugin: str, limits: Limits, function: str, input: Any) -> Any:
        """Call a function in the plugin's sandbox under these limits; the version the call
        starts on serves it to the end, even when the plugin is replaced meanwhile."""
        last = self._last.get(plugin)
        if last is not None and last[0] is limits:
            sandbox, version = last[1], last[2]
        else:
            sandbox, version = self._current(plugin, limits)
        # Every call passes here: the version's bookkeeping is written out (no call of its own).
        running = version.running
        running.append(None)
        while version.retired:
            drained = version.leave()
            if drained:
                self._release(version, drained)
            sandbox, version = self._current(plugin, limits)
            running = version.running
            running.append(None)
        token = _calling.token
        try:
            if token is None:
                return sandbox.call(function, input)
            kept = sandbox is token._kept
            if not kept:
                token._enter(sandbox)
            elif token.cancelled.on:
                # A lasting cancellation's sandbox, watching it since its last call returned,
                # with nothing to interrupt: nothing to note (Cancellation._enter, _leave).
                raise CallCancelled(plugin=sandbox.name)
            try:
                value = sandbox.call(function, input)
            except PluginError as error:
                token._leave(sandbox, failed=True)
                if token.cancelled.is_set() and not isinstance(error, CallCancelled):
                    raise CallCancelled(plugin=plugin, function=function) from error
                raise
            except BaseException:
                token._leave(sandbox, failed=True)
                raise
            if not kept:
                token._leave(sandbox)
            return value
        finally:
            running.pop()
            if version.retired:
                drained = version.drained_sandboxes()
                if drained:
                    self._release(version, drained)

    def _current(self, plugin: str, limits: Limits | None) -> tuple[PluginSandbox, _Version]:
        if limits is None:
            limits = self._manifest(plugin).limits
        key = (plugin, limits)
        with self._lock:
            version = self._versions.get(plugin)
            if version is None:
                version = self._versions[plugin] = _Version()
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
                version.sandboxes.append(sandbox)
            # Set under the lock, so that a sandbox discarded meanwhile is never remembered.
            self._last[plugin] = (limits, sandbox, version)
            return sandbox, version

    def prepare(self, manifest: Manifest) -> PluginSandbox:
        """A sandbox of a new version of a plugin, compiled, checked and linked under its
        manifest's limits, but not yet serving: :meth:`install` makes it serve.

        :raises PluginError: the typed error of the first check that failed.
        """
        with self._lock:
            if self._closed:
                raise ConfigurationError(
                    field="host",
                    message="Invalid configuration: host - the host is closed",
                    suggestion="create a new PluginHost",
                )
            return self._make(manifest, manifest.limits)

    def install(
        self,
        plugin: str,
        sandbox: PluginSandbox | None,
        limits: Limits,
        commit: Callable[[], None],
    ) -> None:
        """Make a prepared sandbox the plugin's (None: the plugin is gone); calls running on the
        previous version finish there, and its sandboxes close when the last one returns.

        ``commit`` (the host's new manifest lookup) runs under the same lock as the swap, so
        that no sandbox is ever made from one version's manifest for the other.
        """
        with self._lock:
            commit()
            old = self._versions.pop(plugin, None)
            self._last.pop(plugin, None)
            self._recompile.discard(plugin)
            for key in [key for key in self._held if key[0] == plugin]:
                del self._held[key]
            if sandbox is not None:
                version = self._versions[plugin] = _Version()
                version.sandboxes.append(sandbox)
                self._held[(plugin, limits)] = sandbox
            if old is not None:
                self._retired.append(old)
        if old is not None:
            self._release(old, old.retire())

    def _release(self, version: _Version, sandboxes: list[PluginSandbox]) -> None:
        """Close a drained version's sandboxes, and the worker pool once no sandbox needs it."""
        for sandbox in sandboxes:
            sandbox.close()
        with self._lock:
            # A version still running calls stays retired (its workers are needed) until the
            # last one returns.
            if version.drained and version in self._retired:
                self._retired.remove(version)
            pool = self._pool
            idle = pool is not None and not any(
                isinstance(sandbox, ProcessSandbox)
                for version in (*self._versions.values(), *self._retired)
                for sandbox in version.sandboxes
            )
            if idle:
                self._pool = None
        if idle and pool is not None:
            pool.close()

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
            version = self._versions.get(plugin)
            if version is not None:
                version.sandboxes = [s for s in version.sandboxes if s not in dropped]
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
            sandboxes += [s for version in self._retired for s in version.sandboxes]
            self._held.clear()
            self._last.clear()
            self._versions.clear()
            self._retired.clear()
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
