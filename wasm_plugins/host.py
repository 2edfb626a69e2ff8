"""PluginHost: the host application's one object: plugins found, checked, granted, and called.

>>> with PluginHost.discover() as host:                      # doctest: +SKIP
...     host.call("text-tools", "word_count", {"text": "one two"})
{'words': 2, 'lines': 1, 'characters': 7, 'bytes': 7}

Each host has its own pluggy PluginManager (several hosts in one process do not share hookimpls);
the framework's behaviour is itself a set of ``trylast`` hookimpls (``wasm_plugins.builtin``).
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, final

import attrs
import pluggy

from wasm_plugins import hookspecs
from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins._suggest import did_you_mean
from wasm_plugins.builtin import builtin_plugins
from wasm_plugins.builtin.fallbacks import BuiltinFallbacks, ExternalFallback
from wasm_plugins.builtin.reporters import AlertReporter, MetricsReporter
from wasm_plugins.builtin.stats import Stats
from wasm_plugins.discovery import (
    DISABLE_ENVIRONMENT_VARIABLE,
    DiscoveryProblem,
    blocked_names,
    entry_point_names,
    load_entry_points,
    unknown_hook_reason,
)
from wasm_plugins.engine import Engine, EngineRegistry
from wasm_plugins.errors import ConfigurationError, PluginError, SecurityViolation
from wasm_plugins.integrations import OTEL_PLUGIN_NAME, integration_plugins
from wasm_plugins.manifest import ISOLATIONS, Manifest, PluginSource
from wasm_plugins.policy import (
    Alert,
    Attempt,
    CallPipeline,
    CircuitBreaker,
    Clock,
    HookDispatcher,
    Outcome,
    PluginLoaded,
    PluginManager,
    PluginReplaced,
    PluginReplaceFailed,
    PluginUnloaded,
    RandomSource,
    SystemClock,
    system_random,
)
from wasm_plugins.provider import Sandboxes, make_module_cache
from wasm_plugins.sandbox import HostFunction, Limits, ModuleCache, PluginSandbox
from wasm_plugins.services import HostServices
from wasm_plugins.trust import Grant, Review, TrustPolicy, module_digest
from wasm_plugins.watching import PluginWatcher

if TYPE_CHECKING:
    # asyncio and the threads of awaited calls: imported with the first awaited call that runs
    # off the event loop (see PluginHost._awaited).
    from wasm_plugins._async_calls import AsyncCalls

__all__ = [
    "Attempt",
    "MapExecutor",
    "MapResult",
    "Outcome",
    "PluginHost",
    "PluginInfo",
    "PluginSource",
    "ThreadExecutor",
]


@attrs.frozen
class MapResult:
    """One input's result in :meth:`PluginHost.map`: its outcome, or the typed error."""

    index: int
    """The input's position."""
    outcome: Outcome | None
    error: PluginError | None
    """The typed error (a ``ContextualError``, its ``error`` telling the kind), or None."""

    @property
    def value(self) -> Any:
        """The value (None when the call failed)."""
        return self.outcome.value if self.outcome is not None else None


class MapExecutor(Protocol):
    """Where :meth:`PluginHost.map` runs its inputs."""

    def map(
        self,
        host: PluginHost,
        plugin: str,
        function: str,
        inputs: list[Any],
        progress: Callable[[int], None] | None,
    ) -> list[MapResult]:
        """One result per input, in any order (each knows its index); ``progress`` gets the
        number of results so far as they come."""


@final
class ThreadExecutor:
    """The built-in :class:`MapExecutor`: the host's own threads call the function, each
    taking the next input as it is free."""

    def __init__(self, concurrency: int | None = None) -> None:
        self.concurrency = concurrency

    def map(
        self,
        host: PluginHost,
        plugin: str,
        function: str,
        inputs: list[Any],
        progress: Callable[[int], None] | None,
    ) -> list[MapResult]:
        finished: list[MapResult] = []
        pending = iter(enumerate(inputs))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    item = next(pending, None)
                if item is None:
                    return
                index, value = item
                try:
                    result = MapResult(index, host.invoke(plugin, function, value), None)
                except PluginError as error:
                    result = MapResult(index, None, error)
                with lock:
                    finished.append(result)
                    done = len(finished)
                if progress is not None:
                    progress(done)

        workers = max(1, min(self.concurrency or os.cpu_count() or 1, len(inputs)))
        threads = [
            threading.Thread(target=work, name=f"wasm-plugins-map-{n}") for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return finished


@attrs.frozen
class PluginInfo:
    """A registered WASM plugin, as ``host.plugins`` lists it."""

    manifest: Manifest
    """The manifest the plugin runs with: what the trust policy granted, when it decided."""
    distribution: str | None
    """The installed distribution that contributed it, when it came from an entry point."""
    review: Review | None = attrs.field(default=None, repr=False)
    """The trust policy's decision (what was asked, what was granted), when it decided; ``None``
    for a manifest the host's own code loaded as written."""

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.manifest.name

    @property
    def requested(self) -> Manifest:
        """The manifest as its author wrote it."""
        return self.review.requested if self.review is not None else self.manifest

    @property
    def revoked(self) -> frozenset[str]:
        """Capabilities asked for but left out by a clamping policy (refused when called)."""
        return self.requested.capabilities - self.manifest.capabilities


class _Hooks:
    """Typed calls of every hook the host calls (pluggy cannot type ``manager.hook.*``)."""

    def __init__(self, dispatcher: HookDispatcher) -> None:
        self._dispatcher = dispatcher

    def host_configured(
        self,
        host: PluginHost,
        on_error: Callable[[str, BaseException], None],
        only: str | None = None,
    ) -> None:
        # Called implementation by implementation (and again for each plugin registered later),
        # rather than through pluggy's historic call, so that one that raises spoils only itself.
        self._dispatcher.each("wasm_plugins_host_configured", {"host": host}, on_error, only)

    def host_closing(
        self, host: PluginHost, on_error: Callable[[str, BaseException], None]
    ) -> None:
        self._dispatcher.each("wasm_plugins_host_closing", {"host": host}, on_error)

    def grant(self, manifest: Manifest, distribution: str | None, digest: str) -> Grant | None:
        answer: Grant | None = self._dispatcher.first_result(
            "wasm_plugins_grant", manifest=manifest, distribution=distribution, digest=digest
        )
        if answer is not None and not isinstance(answer, Grant):
            raise TypeError(f"wasm_plugins_grant returned {type(answer).__name__}, not a Grant")
        return answer

    def alert(self, alert: Alert, on_error: Callable[[str, BaseException], None]) -> None:
        self._dispatcher.each("wasm_plugins_alert", {"alert": alert}, on_error)

    def register_engines(
        self,
        register: Callable[[str, Callable[[], Engine]], None],
        on_error: Callable[[str, BaseException], None],
        only: str | None = None,
    ) -> None:
        self._dispatcher.each(
            "wasm_plugins_register_engines", {"register": register}, on_error, only
        )

    def register_host_functions(
        self,
        register: Callable[[HostFunction], None],
        on_error: Callable[[str, BaseException], None],
        only: str | None = None,
    ) -> None:
        self._dispatcher.each(
            "wasm_plugins_register_host_functions", {"register": register}, on_error, only
        )

    def register_plugins(
        self,
        register: Callable[[PluginSource], None],
        on_error: Callable[[str, BaseException], None],
        only: str,
    ) -> None:
        self._dispatcher.each(
            "wasm_plugins_register_plugins", {"register": register}, on_error, only
        )

    def plugin_names(self, hook_name: str) -> list[str]:
        """The plugins implementing a hook, in call order."""
        return self._dispatcher.plugin_names(hook_name)


@attrs.define
class _Versions:
    """What a host keeps per plugin beyond its manifest: to reload it, and to call it from
    asyncio."""

    sources: dict[str, PluginSource] = attrs.Factory(dict)
    """By plugin, what it was loaded from: :meth:`PluginHost.reload` reads it again."""
    digests: dict[str, str | None] = attrs.Factory(dict)
    """By plugin, the SHA-256 of the module serving."""
    inline: set[str] = attrs.Factory(set)
    """The plugins whose manifest bounds a call enough to run it on the event loop (see
    ``PluginHost._note_inline``)."""
    awaited: AsyncCalls | None = None
    """The threads that run the other awaited calls, off the event loop (made, with asyncio
    imported, for the first awaited call that is not run inline)."""
    watchers: list[PluginWatcher] = attrs.Factory(list)
    """The file watchers started by :meth:`PluginHost.watch`."""


class PluginHost:
    """Finds plugins, checks their manifests, grants what they declare, and calls them.

    :param engine: the default engine (``auto``, ``wasmer``, ``wasmtime`` or a registered name);
        a manifest's ``engine`` wins for its plugin.
    :param isolation: the default isolation: ``auto`` (a worker process when the engine cannot
        enforce a limit in-process), ``in-process`` or ``process``;
        a manifest's wins.
    :param services: clock, random source, key-value store and configuration for host functions.
    :param config: configuration values by plugin name, merged over each manifest's ``[config]``.
    :param blocked: names of plugins not to use (default: ``WASM_PLUGINS_DISABLE``).
    :param clock: the policy's monotonic clock and sleep (tests pass a fake one).
    :param random: the policy's random source, for backoff jitter.
    :param recovery_timeout: seconds a policy hook may take before its answer is ignored.
    :param external_fallbacks: by plugin name, ``(function, input) -> value`` callables that the
        ``external`` fallback strategy asks.
    :param trust: the trust policy that decides what plugins found through entry points get (a
        :class:`~wasm_plugins.trust.TrustPolicy` or the path of its TOML file); ``None``: the
        file named by ``WASM_PLUGINS_TRUST``, else the default policy (``log`` only, memory,
        input and output capped). See docs/security.md.
    :param module_cache: where compiled modules are kept between runs: ``True`` (the default)
        for the user's cache directory (see :class:`~wasm_plugins.ModuleCache`;
        ``WASM_PLUGINS_CACHE=off`` turns it off), a directory, a
        :class:`~wasm_plugins.ModuleCache`, or ``False`` / ``None`` for none.
    :param inline_async_calls: seconds: :meth:`acall` and :meth:`ainvoke` run a call on the
        event loop itself, rather than in a thread, when its plugin bounds it to at most this
        long (a ``limits.timeout`` and a ``policy.deadline`` whose sum is no more); 0: never.
        See docs/lifecycle.md.
    """

    discovered: tuple[bool, bool] = (False, False)
    """Whether :meth:`discover` made the host, and with ``preload``."""

    def __init__(
        self,
        *,
        engine: str = "auto",
        isolation: str = "auto",
        services: HostServices | None = None,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        blocked: Iterable[str] | None = None,
        clock: Clock | None = None,
        random: RandomSource | None = None,
        recovery_timeout: float = 1.0,
        external_fallbacks: Mapping[str, ExternalFallback] | None = None,
        module_cache: ModuleCache | str | os.PathLike[str] | bool | None = True,
        trust: TrustPolicy | str | os.PathLike[str] | None = None,
        inline_async_calls: float = 0.01,
    ) -> None:
        _check_isolation(isolation)
        self.engine_name = engine
        self.isolation = isolation
        self.settings: dict[str, Any] = {
            "engine": engine,
            "isolation": isolation,
            "config": config,
            "blocked": blocked,
            "recovery_timeout": recovery_timeout,
            "module_cache": module_cache.directory
            if isinstance(module_cache, ModuleCache)
            else module_cache,
            "trust": trust,
            "inline_async_calls": inline_async_calls,
        }
        """The options another process rebuilds this host from (those that can be sent there:
        not services, clock, random source or external fallbacks)."""
        self.trust: TrustPolicy = _trust_policy(trust)
        """What plugins that are not the host's own decision get (see docs/security.md)."""
        self.manager = PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        dispatcher = HookDispatcher(self.manager)
        self.hooks = _Hooks(dispatcher)
        self.blocked = frozenset(blocked) if blocked is not None else blocked_names()
        for name in self.blocked:
            self.manager.set_blocked(name)
        self.problems: list[DiscoveryProblem] = []
        """Every contribution that could not be used, with its distribution and the reason."""
        self._distributions: dict[str, str | None] = {}
        self._config = {name: dict(values) for name, values in (config or {}).items()}
        self.services = services or HostServices()
        self.services.config = self._plugin_config
        self._plugins: dict[str, PluginInfo] = {}
        self._refused: dict[str, Review] = {}
        self._versions = _Versions()
        self._lock = threading.RLock()
        self._closed = False
        self._configured = False
        self.engines = EngineRegistry()
        self.host_functions: dict[tuple[str, str], HostFunction] = {}
        self._sandboxes = Sandboxes(
            manifest=self._manifest,
            engines=self.engines,
            engine=engine,
            isolation=isolation,
            host_functions=self.host_functions,
            revoked=self._revoked,
            services=self.services,
            cache=make_module_cache(module_cache),
            name=f"host-{id(self):x}",
        )
        self.module_cache: ModuleCache | None = self._sandboxes.cache
        """The compiled-module cache every sandbox of this host uses (``None``: none)."""
        self.clock: Clock = clock or SystemClock()
        self.pipeline = CallPipeline(
            manifest=self._manifest,
            provider=self._sandboxes,
            hooks=dispatcher,
            clock=self.clock,
            random=random or system_random(),
            default_engine=engine,
            recovery_timeout=recovery_timeout,
        )
        if type(self).call is PluginHost.call:
            # The policy's own call answers ``host.call`` (same arguments, same result): the
            # frame of a method that only forwards is saved on every call. A subclass that
            # overrides ``call`` keeps its own.
            self.__dict__["call"] = self.pipeline.call
        builtins = builtin_plugins(
            manifest=self._manifest,
            provider=self._sandboxes,
            breakers=self.pipeline.breaker,
            clock=self.clock,
            external_fallbacks=external_fallbacks,
            alert=self._send_alert,
        )
        for name, plugin in builtins.items():
            if not self.manager.is_blocked(name):
                self.manager.register(plugin, name=name)
        self.metrics = cast(MetricsReporter, builtins["builtin-metrics"])
        """Counters and latency histograms (``snapshot()``, ``prometheus_text()``)."""
        self.alerts = cast(AlertReporter, builtins["builtin-alerts"])
        """Alerts raised (``alerts.raised``): security violations, error-rate thresholds,
        repeated resource-limit breaches."""
        integrations = integration_plugins(
            breaker_state=lambda plugin, function: (
                self.pipeline.breaker(plugin, function).state.value
            ),
            metrics=self.metrics,
        )
        for name, plugin in integrations.items():
            if not self.manager.is_blocked(name):
                self.manager.register(plugin, name=name)
        self._own_names = frozenset(builtins) | frozenset(integrations) | {OTEL_PLUGIN_NAME}
        """The framework's own plugin names (``blocked=`` may name them)."""
        self._offered: set[str] = set()
        """Every WASM plugin name offered to the host, blocked ones included."""
        self._fallbacks = cast(BuiltinFallbacks, builtins["builtin-fallbacks"])

    def _send_alert(self, alert: Alert) -> None:
        self.hooks.alert(
            alert,
            lambda source, exc: logger.bind(source=source, alert=alert.reason).error(
                "alert channel failed: {}: {}", type(exc).__name__, exc
            ),
        )

    def stats(self) -> Stats:
        """Per plugin and function: calls, errors by kind, error rates over the last minute and
        five minutes, latency percentiles, retries, fallbacks by strategy, the breaker's state
        and transitions. Read from the built-in metrics (empty when ``builtin-metrics`` is
        blocked); times from the policy clock."""
        breakers = {key: breaker.state.value for key, breaker in self.pipeline.breakers().items()}
        return self.metrics.tally.stats(self.clock.monotonic(), breakers)

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def discover(cls, *, preload: bool = False, **options: Any) -> PluginHost:
        """A host with every plugin installed through the ``wasm_plugins`` entry points.

        A distribution that fails is listed in :attr:`problems` (and logged); the others load.
        With ``preload``, every plugin is compiled (through the module cache), checked against
        the ABI and its grants, and linked now: one that fails is a problem (stage ``preload``)
        and is not registered, rather than failing on its first call.
        """
        host = cls(**options)
        registered, problems = load_entry_points(host.manager, host.blocked)
        host._distributions.update(registered)
        host.problems.extend(problems)
        host.configure()
        host.check_names()
        host.discovered = (True, preload)
        if preload:
            host.preload()
        return host

    def check_names(self) -> list[DiscoveryProblem]:
        """Report the names this host was given that name nothing (a misspelling does nothing
        silently otherwise): in ``blocked=`` or ``WASM_PLUGINS_DISABLE``, a name that is no
        plugin, entry point or distribution; in ``config=``, a plugin that is not loaded. Each
        is added to :attr:`problems` (stage ``blocked`` or ``config``) with the closest known
        name, and returned. :meth:`discover` calls it once everything is loaded."""
        with self._lock:
            plugins = set(self._plugins) | set(self._refused) | self._offered
        # A blocked name is listed too, with no plugin: it is not evidence that the name exists.
        pluggy_names = {
            name for name, plugin in self.manager.list_name_plugin() if plugin is not None
        }
        known = plugins | pluggy_names | set(self._own_names) | entry_point_names()
        found: list[DiscoveryProblem] = []
        for name in sorted(self.blocked - known):
            found.append(
                DiscoveryProblem(
                    name,
                    None,
                    "blocked",
                    f"{name!r} (in blocked= or {DISABLE_ENVIRONMENT_VARIABLE}) names no plugin, "
                    "entry point or distribution; " + did_you_mean(name, known).rstrip(),
                )
            )
        for name in sorted(set(self._config) - plugins):
            found.append(
                DiscoveryProblem(
                    name,
                    None,
                    "config",
                    f"config= names plugin {name!r}, which is not loaded; "
                    + did_you_mean(name, plugins).rstrip(),
                )
            )
        for problem in found:
            logger.bind(source=problem.source).warning("{}", problem)
        self.problems.extend(found)
        return found

    def preload(self) -> list[str]:
        """Make every plugin's sandbox now; a plugin that fails is removed and listed in
        :attr:`problems` (stage ``preload``). Returns the names of the plugins removed."""
        removed = []
        for name, info in self.plugins.items():
            try:
                self._sandboxes.sandbox(name)
            except PluginError as error:
                problem = DiscoveryProblem(name, info.distribution, "preload", error.message)
                self.problems.append(problem)
                logger.bind(source=name).error("plugin problem: {}", problem)
                self._remove(name)
                removed.append(name)
        return removed

    def register_policy(self, plugin: object, name: str | None = None) -> None:
        """Register a pluggy plugin (an object or module with hookimpls) with this host only.

        :raises ConfigurationError: when it implements a hook that does not exist.
        """
        try:
            registered = self.manager.register(plugin, name=name)
            self.manager.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            raise ConfigurationError(
                field="hookimpl",
                message=f"Invalid configuration: hookimpl - {exc}",
                suggestion="hook names start with wasm_plugins_; see docs/hooks.md",
            ) from None
        unknown = self.manager.unknown_hooks.pop(registered or "", [])
        if unknown:
            # Registered by the host's own code: a misspelt name is a mistake to fix now.
            self.manager.unregister(plugin)
            raise ConfigurationError(
                field="hookimpl",
                message=f"Invalid configuration: hookimpl - unknown hook {unknown[0]!r}",
                suggestion=unknown_hook_reason(unknown[0], self.manager),
            )
        if registered is not None and self._configured:
            plugin_name = name or self.manager.get_name(plugin) or ""
            self._collect(plugin_name)
            self.hooks.host_configured(self, self._configured_failed, plugin_name)

    def configure(self) -> None:
        """Collect engines, host functions and plugins from every registered hookimpl.

        Called by :meth:`discover`; call it yourself after registering plugins by hand.
        """
        self._collect(None)
        if not self._configured:
            self._configured = True
            self.hooks.host_configured(self, self._configured_failed)

    def _configured_failed(self, source: str, exc: BaseException) -> None:
        self._problem(source, "configured", f"{type(exc).__name__}: {exc}")

    def _collect(self, only: str | None) -> None:
        def failed(source: str, exc: BaseException) -> None:
            self._problem(source, "register", f"{type(exc).__name__}: {exc}")

        self.hooks.register_engines(self._register_engine, failed, only)
        self.hooks.register_host_functions(self._register_host_function, failed, only)
        # Each plugin's register callback knows which distribution the plugins came from.
        for source in self.hooks.plugin_names("wasm_plugins_register_plugins"):
            if only is None or source == only:
                self.hooks.register_plugins(self._plugin_registrar(source), failed, source)

    def _problem(self, source: str, stage: str, reason: str) -> None:
        problem = DiscoveryProblem(source, self._distributions.get(source), stage, reason)
        self.problems.append(problem)
        logger.bind(source=source).error("plugin problem: {}", problem)

    def _register_engine(self, name: str, factory: Callable[[], Engine]) -> None:
        if name not in self.engines.names():
            self.engines.register(name, factory)

    def _register_host_function(self, function: HostFunction) -> None:
        key = (function.module, function.name)
        if key not in self.host_functions:
            self.host_functions[key] = function

    def _plugin_registrar(self, source: str) -> Callable[[PluginSource], None]:
        # Plugins of an entry point are requests; those of an object the host's own code
        # registered (register_policy) are the host's decision.
        from_entry_point = source in self._distributions
        distribution = self._distributions.get(source)

        def register(item: PluginSource) -> None:
            try:
                manifest = _as_manifest(item)
            except PluginError as error:
                self._problem(source, "load", error.message)
                return
            try:
                info = (
                    self._granted(manifest, distribution)
                    if from_entry_point
                    else PluginInfo(manifest, distribution)
                )
            except PluginError as error:
                detail = f"{error.message}\n{error.suggestion}" if error.suggestion else ""
                self._problem(source, "trust", detail or error.message)
                return
            try:
                self._add(info, item)
            except PluginError as error:
                self._problem(source, "load", error.message)

        return register

    def load(self, source: PluginSource, *, check: bool = False) -> PluginInfo:
        """Add one plugin from a manifest, a dict, or the path of a TOML manifest.

        The host's own code deciding, the manifest is granted as written; with ``check``, it is
        a request and the trust policy decides, as for plugins found through entry points.

        :raises ConfigurationError: for an invalid manifest or a duplicate name.
        :raises SecurityViolation: with ``check``, when the manifest asks for more than its grant.
        """
        manifest = _as_manifest(source)
        info = self._granted(manifest, None) if check else PluginInfo(manifest, None)
        self._add(info, source)
        if not self._configured:
            self.configure()
        return info

    def admit(self, review: Review) -> PluginInfo:
        """Add a plugin as a trust policy's review decided: with its granted manifest, and the
        capabilities a clamping policy left out refused when called.

        :raises SecurityViolation: when the review does not allow the plugin to run.
        """
        if not review.allowed:
            raise review.refusal()
        info = self._add(PluginInfo(review.granted, review.distribution, review))
        if not self._configured:
            self.configure()
        return info

    def review(
        self, manifest: Manifest, distribution: str | None = None, *, extra: Grant | None = None
    ) -> Review:
        """What the trust policy (or a ``wasm_plugins_grant`` hookimpl) grants a manifest.

        :param extra: capabilities, directories, variables and hosts granted on top of the
            plugin's entry (what the command line's flags add).
        :raises PluginError: when the module cannot be read to take its digest.
        """
        digest = module_digest(manifest)
        try:
            grant = self.hooks.grant(manifest, distribution, digest)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise SecurityViolation(
                violation_type="grant_failed",
                plugin=manifest.name,
                message=(
                    f"Security violation: plugin {escape(manifest.name)!r} - the grant hook "
                    f"failed: {escape(f'{type(exc).__name__}: {exc}')}"
                ),
                suggestion="fix the wasm_plugins_grant hookimpl; without a grant it is refused",
            ) from None
        policy = self.trust
        if extra is not None:
            policy = policy.granting(
                manifest.name,
                capabilities=extra.capabilities or (),
                preopens=extra.preopens or (),
                env=extra.env or (),
                http=extra.http or (),
            )
        return policy.review(manifest, distribution, digest, grant)

    def _granted(self, manifest: Manifest, distribution: str | None) -> PluginInfo:
        """The plugin as the trust policy lets it run, or the refusal."""
        try:
            review = self.review(manifest, distribution)
        except ConfigurationError:
            raise
        except OSError as exc:
            raise ConfigurationError(
                field="module",
                plugin=manifest.name,
                message=f"Invalid configuration: module - cannot read it: {escape(exc)}",
                suggestion="ship the module next to the manifest",
            ) from None
        if not review.allowed:
            with self._lock:
                self._refused[manifest.name] = review
            raise review.refusal()
        if review.excess:
            logger.bind(plugin=manifest.name).warning(
                "plugin {} runs clamped to its grant: {}",
                escape(manifest.name),
                "; ".join(escape(excess) for excess in review.excess),
            )
        return PluginInfo(review.granted, distribution, review)

    def _add(self, info: PluginInfo, source: PluginSource | None = None) -> PluginInfo:
        manifest = info.manifest
        self._offered.add(manifest.name)
        if manifest.name in self.blocked:
            raise ConfigurationError(
                field="name",
                plugin=manifest.name,
                message=f"Invalid configuration: name - plugin {manifest.name!r} is blocked",
                suggestion="remove it from WASM_PLUGINS_DISABLE to use it",
            )
        with self._lock:
            if manifest.name in self._plugins:
                raise ConfigurationError(
                    field="name",
                    plugin=manifest.name,
                    message=(
                        f"Invalid configuration: name - a plugin named {manifest.name!r} "
                        "is already registered"
                    ),
                    suggestion="give each plugin a unique name",
                )
            self._plugins[manifest.name] = info
            self._note_inline(manifest.name, manifest)
            self._versions.sources[manifest.name] = source if source is not None else manifest
            self._versions.digests[manifest.name] = digest = _module_digest(manifest)
        self.pipeline.report(
            PluginLoaded(manifest.name, "", "", self.clock.monotonic(), manifest.version, digest)
        )
        return info

    def sources(self, *, own_only: bool = False) -> dict[str, PluginSource]:
        """By plugin, what it was loaded from (what :meth:`reload` reads again); with
        ``own_only``, only the plugins the host loaded itself (:meth:`load`, not a
        distribution): with :attr:`settings`, what another process needs to rebuild the host."""
        with self._lock:
            return {
                name: source
                for name, source in self._versions.sources.items()
                if not own_only or self._plugins[name].distribution is None
            }

    def watch(
        self,
        *,
        debounce: float = 0.3,
        on_reload: Callable[[str, PluginError | None], None] | None = None,
    ) -> PluginWatcher:
        """Reload plugins when their manifest or module files change (the ``watch`` extra), in
        a thread, once changes have settled for ``debounce`` seconds; a version that fails a
        step is refused and the old one keeps serving. ``on_reload`` is told the plugin and the
        error, if any. Stop it with ``stop()`` (closing the host does too)."""
        watcher = PluginWatcher(self, debounce=debounce, on_reload=on_reload)
        with self._lock:
            self._versions.watchers.append(watcher)
        return watcher.start()

    # -- versions -------------------------------------------------------------------------------

    def replace(self, name: str, manifest: Manifest | Mapping[str, Any]) -> PluginInfo:
        """Serve a new version of a plugin, once it is compiled, checked against the ABI and its
        grants, linked and (with a manifest ``health_check``) has answered its probe. Calls
        running on the old version finish there; its sandboxes and workers are released when
        the last one returns. A new module starts with fresh breakers, retry budget and cached
        results.

        :raises ConfigurationError: ``field`` ``replace.<step>`` (``manifest``, ``grant``,
            ``compile``, ``health_check``) when a step failed; the old version keeps serving, and a
            ``PluginReplaceFailed`` event tells the reporters.
        """
        return self._swap(name, manifest)

    def reload(self, name: str) -> PluginInfo:
        """:meth:`replace` a plugin by what it was loaded from, read again: its manifest file and
        module file (a manifest given as a dict or object is kept; its module file is read
        again)."""
        self._info(name)
        return self._swap(name, self._versions.sources[name])

    def unload(self, name: str) -> None:
        """Remove a plugin: new calls fail with a ConfigurationError; calls running finish, and
        its sandboxes and workers are released when the last one returns."""
        info = self._info(name)
        self._remove(name)
        self.pipeline.report(
            PluginUnloaded(name, "", "", self.clock.monotonic(), info.manifest.version)
        )

    def _remove(self, name: str) -> None:
        info = self._info(name)

        def commit() -> None:
            with self._lock:
                self._plugins.pop(name, None)
                self._note_inline(name, None)
                self._versions.sources.pop(name, None)
                self._versions.digests.pop(name, None)

        self._sandboxes.install(name, None, info.manifest.limits, commit)
        self.pipeline.forget(name)
        self._fallbacks.forget(name)

    def _swap(self, name: str, source: PluginSource) -> PluginInfo:
        old = self._info(name)
        step = "manifest"
        try:
            manifest = _as_manifest(source)
            if manifest.name != name:
                raise ConfigurationError(
                    field="name",
                    plugin=name,
                    message=(
                        f"Invalid configuration: name - the new manifest names {manifest.name!r}"
                    ),
                    suggestion=f"a new version of {name!r} keeps its name",
                )
            step = "grant"
            # A plugin the trust policy let in is reviewed again: a new version gets its grant.
            info = (
                self._granted(manifest, old.distribution)
                if old.review is not None
                else PluginInfo(manifest, old.distribution)
            )
            manifest = info.manifest
            step = "compile"
            digest = _module_digest(manifest)
            sandbox = self._sandboxes.prepare(manifest)
            check = manifest.health_check
            if check is not None:
                step = "health_check"
                try:
                    sandbox.call(check.function, check.input)
                except BaseException:
                    sandbox.close()
                    raise
        except PluginError as error:
            self.pipeline.report(
                PluginReplaceFailed(name, "", "", self.clock.monotonic(), step, error)
            )
            raise ConfigurationError(
                field=f"replace.{step}",
                plugin=name,
                message=(
                    f"Invalid configuration: replace.{step} - version "
                    f"{old.manifest.version} keeps serving: {error.message}"
                ),
                suggestion=error.suggestion or "fix the new version and replace again",
            ) from error
        changed = True

        def commit() -> None:
            nonlocal changed
            with self._lock:
                changed = self._versions.digests.get(name) != digest or digest is None
                self._plugins[name] = info
                self._note_inline(name, info.manifest)
                self._versions.sources[name] = source
                self._versions.digests[name] = digest

        self._sandboxes.install(name, sandbox, manifest.limits, commit)
        self.pipeline.forget(name)
        if changed:
            self._fallbacks.forget(name)
        self.pipeline.report(
            PluginReplaced(
                name,
                "",
                "",
                self.clock.monotonic(),
                old.manifest.version,
                manifest.version,
                digest or "",
                changed,
            )
        )
        return info

    def _plugin_config(self, plugin: str) -> Mapping[str, Any]:
        info = self._plugins.get(plugin)
        base = dict(info.manifest.config) if info is not None else {}
        base.update(self._config.get(plugin, {}))
        return base

    # -- plugins and sandboxes -------------------------------------------------------------------

    @property
    def plugins(self) -> Mapping[str, PluginInfo]:
        """Registered plugins by name."""
        return dict(self._plugins)

    @property
    def refused(self) -> Mapping[str, Review]:
        """Plugins the trust policy refused, by name: what each asked for and was granted."""
        with self._lock:
            return dict(self._refused)

    def _revoked(self, plugin: str) -> frozenset[str]:
        info = self._plugins.get(plugin)
        return frozenset() if info is None else info.revoked

    def _info(self, plugin: str) -> PluginInfo:
        info = self._plugins.get(plugin)
        if info is None:
            close = difflib.get_close_matches(plugin, list(self._plugins), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "wasm-plugins list shows them"
            raise ConfigurationError(
                field="plugin",
                plugin=plugin,
                message=f"Invalid configuration: plugin - no plugin named {plugin!r}",
                suggestion=hint,
            )
        return info

    def _manifest(self, plugin: str) -> Manifest:
        return self._info(plugin).manifest

    def engine_for(self, plugin: str) -> Engine:
        """The engine a plugin runs on: its manifest's choice, else the host's."""
        return self._sandboxes.engine_for(plugin)

    def sandboxes(self) -> dict[tuple[str, Limits], PluginSandbox]:
        """The sandboxes the host holds, by (plugin, limits in force)."""
        return self._sandboxes.held()

    def worker_pids(self) -> list[int]:
        """The process ids of the host's worker processes (none until a plugin needs one)."""
        return self._sandboxes.worker_pids()

    def sandbox(self, plugin: str) -> PluginSandbox:
        """The plugin's sandbox under its manifest's limits (loading it if needed).

        :raises PluginError: a typed error when the plugin cannot be loaded.
        """
        return self._sandboxes.sandbox(plugin)

    # -- calls ----------------------------------------------------------------------------------

    def invoke(self, plugin: str, function: str, input: Any = None) -> Outcome:
        """Call a plugin function through the error policy and return an :class:`Outcome`: the
        value, whether a fallback gave it (strategy, quality, original error), the attempts
        and their errors, and the time taken.

        :raises ContextualError: when the policy gave up; ``error`` is the typed error and
            ``context.previous_errors`` the errors of the earlier attempts.
        """
        outcome: Outcome = self.pipeline.call(plugin, function, input, True)
        return outcome

    def breaker(self, plugin: str, function: str) -> CircuitBreaker:
        """The circuit breaker of (plugin, function): its state, counters, manual open/close."""
        self._info(plugin)
        return self.pipeline.breaker(plugin, function)

    def call(self, plugin: str, function: str, input: Any = None) -> Any:
        """Call a plugin function through the error policy and return its value.

        :raises ContextualError: when the call failed; ``error`` is the typed error.
        """
        return self.pipeline.call(plugin, function, input)

    def map(
        self,
        plugin: str,
        function: str,
        inputs: Iterable[Any],
        *,
        concurrency: int | None = None,
        ordered: bool = True,
        progress: Callable[[int], None] | None = None,
        executor: MapExecutor | None = None,
    ) -> list[MapResult]:
        """Call a function once per input through the error policy; one failure never stops
        the others.

        :param concurrency: threads calling at once, with the built-in executor (default: the
            CPUs).
        :param ordered: results in the inputs' order; otherwise in the order they finished.
        :param progress: called with the number of results so far, after each one (or batch).
        :param executor: where the inputs run: by default this host's threads (and its worker
            pool, for plugins isolated in workers); ``wasm_plugins.cluster.DaskExecutor`` runs
            them on a Dask cluster.
        :returns: one :class:`MapResult` per input: the outcome, or the typed error (an input the
            codec cannot encode gives a ``communication`` error).
        """
        items = list(inputs)
        chosen = executor if executor is not None else ThreadExecutor(concurrency)
        results = chosen.map(self, plugin, function, items, progress)
        if ordered:
            results.sort(key=lambda result: result.index)
        return results

    def acall(self, plugin: str, function: str, input: Any = None) -> Coroutine[Any, Any, Any]:
        """:meth:`call` for asyncio: the call runs in a worker thread, not on the event loop,
        unless its plugin bounds it to a short time (see ``inline_async_calls``).

        Await it, gather it, make it a task: what it returns is both the future of the call,
        queued at once (``asyncio.gather`` makes no task for it), and a coroutine. Cancelling
        it, or the task awaiting it (``asyncio.wait_for`` timing out, too), stops the call: see
        :meth:`ainvoke`.
        """
        return self._awaitable(self.call, plugin, function, input)

    def ainvoke(
        self, plugin: str, function: str, input: Any = None
    ) -> Coroutine[Any, Any, Outcome]:
        """:meth:`invoke` for asyncio: the :class:`Outcome`, the call running in a worker thread
        (or on the loop, when its plugin bounds it to a short time: see ``inline_async_calls``).
        What it returns serves as :meth:`acall`'s does.

        Cancelling the call stops it: a guest running on wasmtime in this process is
        interrupted, one running in a worker process is killed with its worker (the pool starts
        another); later attempts are not made, and the hooks see the call end with a
        ``cancelled`` error (``CallCancelled``). The awaiting task gets the cancellation
        (``asyncio.TimeoutError`` from ``asyncio.wait_for``).
        """
        return self._awaitable(self.invoke, plugin, function, input)

    def _awaitable(
        self, run: Callable[[str, str, Any], Any], plugin: str, function: str, input: Any
    ) -> Coroutine[Any, Any, Any]:
        """``run(plugin, function, input)`` as :meth:`acall` and :meth:`ainvoke` return it: on
        the loop when awaited, for a plugin bounded to a short time; else queued for the
        host's threads."""
        if plugin in self._versions.inline:
            return self._on_the_loop(run, plugin, function, input)
        return (self._versions.awaited or self._awaited()).start(run, (plugin, function, input))

    @staticmethod
    async def _on_the_loop(run: Callable[[str, str, Any], Any], *args: Any) -> Any:
        """A bounded plugin's call, run on the loop when awaited."""
        return run(*args)

    def _awaited(self) -> AsyncCalls:
        """The threads that run awaited calls (made, and asyncio's machinery imported, by the
        first awaited call that is not run on the loop)."""
        from wasm_plugins._async_calls import AsyncCalls  # noqa: PLC0415 - imports asyncio

        with self._lock:
            awaited = self._versions.awaited
            if awaited is None:
                awaited = self._versions.awaited = AsyncCalls("wasm-plugins-host")
        return awaited

    def _note_inline(self, name: str, manifest: Manifest | None) -> None:
        """Whether calls of the plugin now serving (None: none) are bounded to
        ``inline_async_calls`` seconds: its attempts start before the policy's deadline and
        each ends within the timeout (or the ceiling recovery may raise it to). A thread hop
        costs several tiny calls; a call this short blocks the loop less than a slow callback
        may. Noted as the plugin is loaded, replaced or unloaded, so that an awaited call
        looks at a set (the look costs a good part of a tiny call's hand-over otherwise)."""
        bound: float = self.settings["inline_async_calls"]
        inline = False
        if manifest is not None and bound > 0:
            timeout = manifest.limits.timeout
            deadline = manifest.policy.deadline
            inline = (
                timeout is not None
                and deadline is not None
                and deadline + max(timeout, manifest.policy.max_timeout or 0) <= bound
            )
        if inline:
            self._versions.inline.add(name)
        else:
            self._versions.inline.discard(name)

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Tell the hooks, drop every sandbox; later calls fail with a typed error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watchers, self._versions.watchers = self._versions.watchers, []
        for watcher in watchers:
            watcher.stop()
        self.hooks.host_closing(
            self,
            lambda source, exc: logger.bind(source=source).error("closing hook failed: {}", exc),
        )
        self._sandboxes.close()
        awaited = self._versions.awaited
        if awaited is not None:
            awaited.close()

    def __enter__(self) -> PluginHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[PluginInfo]:
        return iter(self.plugins.values())

    def __repr__(self) -> str:
        return f"<PluginHost {len(self._plugins)} plugins, engine={self.engine_name!r}>"


def _check_isolation(isolation: str) -> None:
    if isolation not in ISOLATIONS:
        raise ConfigurationError(
            field="isolation",
            message=f"Invalid configuration: isolation - {isolation!r} is not one of "
            + ", ".join(ISOLATIONS),
            suggestion="use isolation='auto', 'in-process' or 'process'",
        )


def _trust_policy(setting: TrustPolicy | str | os.PathLike[str] | None) -> TrustPolicy:
    if setting is None:
        return TrustPolicy.from_environment()
    if isinstance(setting, TrustPolicy):
        return setting
    return TrustPolicy.from_file(setting)


def _as_manifest(source: PluginSource) -> Manifest:
    if isinstance(source, Manifest):
        return source
    if isinstance(source, Mapping):
        return Manifest.from_dict(source)
    if isinstance(source, str | os.PathLike):
        return Manifest.from_file(Path(source))
    return Manifest.from_file(source)


def _module_digest(manifest: Manifest) -> str | None:
    """The SHA-256 of a manifest's module as it is now (None: it cannot be read)."""
    try:
        return module_digest(manifest)
    except OSError:
        return None
