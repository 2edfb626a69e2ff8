"""Built-in fallbacks, tried in the order of the manifest's ``policy.fallbacks``:

- ``cache``: the last result of the same function for the same input (a hash of the canonical
  input), at most ``policy.cache_ttl`` old; filled on every success of an idempotent function
  (only a function without effects may answer from a cache); quality falls with age;
- ``simplified``: the cheaper export the manifest names in ``functions.<name>.simplified``;
- ``external``: a callable the host application supplies (``PluginHost(external_fallbacks=...)``);
- ``default``: the value the manifest gives in ``functions.<name>.default``.

``trylast``: a third party's ``wasm_plugins_fallback`` answers first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from wasm_plugins.errors import PluginError
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy import (
    BreakerState,
    CallState,
    CircuitBreaker,
    Clock,
    FallbackResult,
    ManifestLookup,
    Report,
    SandboxProvider,
    Verdict,
    caused_by_caller,
)

__all__ = ["CACHE_QUALITY", "QUALITY", "BuiltinFallbacks", "ResultCache", "input_key"]

QUALITY = {"simplified": 0.6, "external": 0.7, "default": 0.3}
CACHE_QUALITY = 0.9
"""A fresh cached result's quality; it falls linearly to a tenth of it at the end of the TTL."""

ExternalFallback = Callable[[str, Any], Any]
"""``(function, input) -> value``: a host application's own way to answer."""

BreakerLookup = Callable[[str, str], CircuitBreaker]
"""The circuit breaker of (plugin, function)."""


def input_key(function: str, value: Any) -> str:
    """A hash of the function and its canonical input (sorted keys, compact JSON; raw: bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = b"raw:" + bytes(value)
    else:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(function.encode() + b"\0" + data).hexdigest()


class ResultCache:
    """The results of one plugin: bounded (least recently used go first), with a TTL."""

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, value: Any) -> None:
        """Remember a result (a private copy: callers may change theirs)."""
        stored = copy.deepcopy(value)
        with self._lock:
            self._entries[key] = (self._clock(), stored)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, key: str) -> tuple[Any, float] | None:
        """A copy of the result and its age, or None when absent or older than the TTL."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            age = self._clock() - entry[0]
            if age > self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return copy.deepcopy(entry[1]), age


class BuiltinFallbacks:
    """The built-in fallback strategies of one host (the cache is per host and per plugin).

    :param manifest: a plugin's manifest by name.
    :param provider: the sandboxes the ``simplified`` strategy calls its cheaper export in.
    :param breakers: the circuit breakers: the cheaper export runs only while its own is closed,
        and its outcome counts there.
    :param clock: the policy's clock (the age of cached results).
    :param external: by plugin name, the host application's own answers.
    """

    hook_topics = frozenset(("call_finished.value",))
    """As a reporter, only calls that end with their value matter (their results fill the
    cache)."""

    def __init__(
        self,
        manifest: ManifestLookup,
        provider: SandboxProvider,
        breakers: BreakerLookup,
        clock: Clock,
        external: Mapping[str, ExternalFallback] | None = None,
    ) -> None:
        self._manifest = manifest
        self._provider = provider
        self._breakers = breakers
        self._clock = clock
        self._services = dict(external or {})
        self._caches: dict[str, ResultCache] = {}
        self._caching: dict[str, dict[str, bool]] = {}
        """By plugin, then function: whether its results are kept, read once per function (only
        functions that answered are here: the plugin's exports, a bounded set)."""
        self._lock = threading.Lock()

    def cache(self, plugin: str) -> ResultCache:
        """The result cache of a plugin."""
        cache = self._caches.get(plugin)
        if cache is None:
            with self._lock:
                cache = self._caches.get(plugin)
                if cache is None:
                    policy = self._manifest(plugin).policy
                    cache = ResultCache(
                        policy.cache_entries, policy.cache_ttl, self._clock.monotonic
                    )
                    self._caches[plugin] = cache
        return cache

    def forget(self, plugin: str) -> None:
        """Drop a plugin's cached results (a new module must not answer with the old one's)."""
        with self._lock:
            self._caches.pop(plugin, None)

    @staticmethod
    def _caches_results(function: str, manifest: Manifest) -> bool:
        spec = manifest.functions.get(function)
        return spec is not None and spec.idempotent and "cache" in manifest.policy.fallbacks

    def hook_wants_route(self, hook: str, plugin: str, function: str) -> bool:
        """As a reporter, only the results of functions whose results are kept matter; as a
        fallback, only plugins whose manifest names a strategy."""
        try:
            manifest = self._manifest(plugin)
        except PluginError:
            return False
        if hook == "wasm_plugins_report":
            return self._caches_results(function, manifest)
        return hook != "wasm_plugins_fallback" or bool(manifest.policy.fallbacks)

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Remember successful results of idempotent functions for the cache strategy."""
        plugin, function = record.plugin, record.function
        by_function = self._caching.get(plugin)
        caching = by_function.get(function) if by_function is not None else None
        if caching is None:
            caching = self._caches_results(function, self._manifest(plugin))
            self._caching.setdefault(plugin, {})[function] = caching
        if caching:
            self.cache(record.plugin).put(input_key(record.function, record.input), record.value)

    @hookimpl(trylast=True)
    def wasm_plugins_fallback(self, error: PluginError, call: CallState) -> FallbackResult | None:
        """Try the manifest's strategies in its order."""
        for strategy in call.manifest.policy.fallbacks:
            result: FallbackResult | None = getattr(self, f"_{strategy}")(call)
            if result is not None:
                return result
        return None

    def _cache(self, call: CallState) -> FallbackResult | None:
        spec = call.manifest.functions.get(call.function)
        if spec is None or not spec.idempotent:
            # Only results of idempotent functions are kept: nothing to look for.
            return None
        found = self.cache(call.plugin).get(input_key(call.function, call.input))
        if found is None:
            return None
        value, age = found
        freshness = max(0.1, 1.0 - age / call.manifest.policy.cache_ttl)
        return FallbackResult(value, "cache", round(CACHE_QUALITY * freshness, 3))

    def _simplified(self, call: CallState) -> FallbackResult | None:
        spec = call.manifest.functions.get(call.function)
        if spec is None or spec.simplified is None or spec.simplified == call.function:
            return None
        # Other code than the function it stands in for, under its own breaker: a stand-in
        # that keeps failing is stopped like any function (no plugin code runs for a breaker
        # that is not closed, and half-open probes are left to real calls).
        breaker = self._breakers(call.plugin, spec.simplified)
        if breaker.state is not BreakerState.CLOSED:
            return None
        permit = breaker.try_acquire()
        if isinstance(permit, PluginError):
            return None
        try:
            sandbox = self._provider.sandbox(call.plugin, call.manifest.limits)
            value = sandbox.call(spec.simplified, call.input)
        except PluginError as error:
            breaker.record(permit, Verdict.IGNORED if caused_by_caller(error) else Verdict.FAILURE)
            return None
        except BaseException:
            breaker.record(permit, Verdict.IGNORED)
            raise
        breaker.record(permit, Verdict.SUCCESS)
        return FallbackResult(value, "simplified", QUALITY["simplified"])

    def _external(self, call: CallState) -> FallbackResult | None:
        answer = self._services.get(call.plugin)
        if answer is None:
            return None
        try:
            value = answer(call.function, call.input)
        except Exception:
            return None
        return FallbackResult(value, "external", QUALITY["external"])

    def _default(self, call: CallState) -> FallbackResult | None:
        spec = call.manifest.functions.get(call.function)
        if spec is None or not spec.has_default:
            return None
        return FallbackResult(copy.deepcopy(spec.default), "default", QUALITY["default"])
