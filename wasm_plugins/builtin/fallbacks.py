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
from typing import TYPE_CHECKING, Any

from wasm_plugins.errors import PluginError
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import AttemptSucceeded, CallState, FallbackResult, PolicyEvent

if TYPE_CHECKING:
    from wasm_plugins.host import PluginHost
    from wasm_plugins.manifest import Manifest
    from wasm_plugins.policy._pipeline import RefusalHandler, ValueHandler

__all__ = ["CACHE_QUALITY", "QUALITY", "BuiltinFallbacks", "ResultCache", "input_key"]

QUALITY = {"simplified": 0.6, "external": 0.7, "default": 0.3}
CACHE_QUALITY = 0.9
"""A fresh cached result's quality; it falls linearly to a tenth of it at the end of the TTL."""

ExternalFallback = Callable[[str, Any], Any]
"""``(function, input) -> value``: a host application's own way to answer."""


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
    """The built-in fallback strategies of one host (the cache is per host and per plugin)."""

    def __init__(
        self, host: PluginHost, external: Mapping[str, ExternalFallback] | None = None
    ) -> None:
        self._host = host
        self._services = dict(external or {})
        self._caches: dict[str, ResultCache] = {}
        self._lock = threading.Lock()

    def cache(self, plugin: str) -> ResultCache:
        """The result cache of a plugin."""
        cache = self._caches.get(plugin)
        if cache is None:
            with self._lock:
                cache = self._caches.get(plugin)
                if cache is None:
                    policy = self._host._info(plugin).manifest.policy
                    cache = ResultCache(
                        policy.cache_entries, policy.cache_ttl, self._host.clock.monotonic
                    )
                    self._caches[plugin] = cache
        return cache

    def _caches_results(self, function: str, manifest: Manifest) -> bool:
        spec = manifest.functions.get(function)
        return spec is not None and spec.idempotent and "cache" in manifest.policy.fallbacks

    def fast_handlers(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[ValueHandler | None, RefusalHandler | None]:
        """The policy's common cases told directly (see ``CallPipeline``): a first attempt's
        value is remembered when the cache strategy applies; a refusal is nothing to keep."""
        if not self._caches_results(function, manifest):
            return None, None

        def succeeded(duration: float, input: Any, value: Any) -> None:
            self.cache(plugin).put(input_key(function, input), value)

        return succeeded, None

    def answers_nothing(self, plugin: str, function: str, manifest: Manifest) -> bool:
        """Whether none of the manifest's strategies can answer for this function, whatever
        the input (the policy then skips asking)."""
        spec = manifest.functions.get(function)
        for strategy in manifest.policy.fallbacks:
            if strategy == "cache" and spec is not None and spec.idempotent:
                return False
            if strategy == "simplified" and spec is not None and spec.simplified is not None:
                return False
            if strategy == "external" and plugin in self._services:
                return False
            if strategy == "default" and spec is not None and spec.has_default:
                return False
        return True

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Remember successful results of idempotent functions for the cache strategy."""
        if not isinstance(event, AttemptSucceeded):
            return
        manifest = self._host._info(event.plugin).manifest
        if self._caches_results(event.function, manifest):
            self.cache(event.plugin).put(input_key(event.function, event.input), event.value)

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
        if spec is None or spec.simplified is None:
            return None
        try:
            value = self._host.sandbox(call.plugin).call(spec.simplified, call.input)
        except PluginError:
            return None
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
