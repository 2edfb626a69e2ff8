"""Running :meth:`PluginHost.map` on a Dask ``distributed`` cluster (the ``dask`` extra).

Plugin hosts do not travel: a host holds compiled modules, worker processes and threads. What
travels is a :class:`HostRecipe`, the host's settings (engine, isolation, trust policy, module
cache, configuration), whether it was discovered, and the manifests it loaded itself. Each Dask
worker process builds one host per recipe, the first time a batch needs it, and keeps it for the
batches after (its module cache makes that cheap when the workers share a disk). Inputs go out in
batches; each result comes back as plain data, a typed error as its dict, and is rebuilt here.

>>> from distributed import Client, LocalCluster  # doctest: +SKIP
>>> with LocalCluster(n_workers=4) as cluster, Client(cluster) as client:  # doctest: +SKIP
...     results = host.map("text-tools", "word_count", inputs, executor=DaskExecutor(client))
"""

from __future__ import annotations

import atexit
import hashlib
import pickle
import threading
from collections.abc import Callable, Mapping
from typing import Any, final

import attrs

from wasm_plugins.errors import PluginError
from wasm_plugins.host import MapResult, Outcome, PluginHost, PluginSource

__all__ = ["DaskExecutor", "HostRecipe"]


@attrs.frozen
class HostRecipe:
    """What another process needs to build a host like this one."""

    settings: Mapping[str, Any]
    """:attr:`PluginHost.settings`."""
    discover: bool
    """Build it with :meth:`PluginHost.discover` (the distributions installed there)."""
    preload: bool
    sources: Mapping[str, PluginSource]
    """The plugins the host loaded itself, by name."""

    @classmethod
    def of(cls, host: PluginHost) -> HostRecipe:
        """The recipe of a host."""
        discovered, preload = host.discovered
        return cls(dict(host.settings), discovered, preload, host.sources(own_only=True))

    @property
    def key(self) -> str:
        """Equal for equal recipes: a worker builds one host per key."""
        return hashlib.sha256(pickle.dumps(attrs.astuple(self, recurse=False))).hexdigest()

    def build(self) -> PluginHost:
        """A new host from the recipe."""
        settings = {name: value for name, value in self.settings.items() if value is not None}
        if self.discover:
            host = PluginHost.discover(preload=self.preload, **settings)
        else:
            host = PluginHost(**settings)
        for source in self.sources.values():
            host.load(source)
        return host


_hosts: dict[str, PluginHost] = {}
_hosts_lock = threading.Lock()


def _host(recipe: HostRecipe) -> PluginHost:
    """This process's host for a recipe, built on first use."""
    key = recipe.key
    with _hosts_lock:
        host = _hosts.get(key)
        if host is None:
            host = _hosts[key] = recipe.build()
    return host


@atexit.register
def _close_hosts() -> None:
    with _hosts_lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.close()


def _outcome_data(outcome: Outcome) -> dict[str, Any]:
    return {
        "value": outcome.value,
        "attempts": outcome.attempts,
        "errors": [error.to_dict() for error in outcome.errors],
        "duration": outcome.duration,
        "fallback": outcome.fallback,
        "quality": outcome.quality,
        "error": outcome.error.to_dict() if outcome.error is not None else None,
        "call_id": outcome.call_id,
    }


def run_batch(
    recipe: HostRecipe, plugin: str, function: str, batch: list[tuple[int, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    """On a worker: call the function once per input of a batch; each result as plain data
    (``{"outcome": ...}`` or ``{"error": <the typed error's dict>}``)."""
    host = _host(recipe)
    results: list[tuple[int, dict[str, Any]]] = []
    for index, value in batch:
        try:
            outcome = host.invoke(plugin, function, value)
        except PluginError as error:
            results.append((index, {"error": error.to_dict()}))
        else:
            results.append((index, {"outcome": _outcome_data(outcome)}))
    return results


def rebuild(plugin: str, function: str, index: int, data: Mapping[str, Any]) -> MapResult:
    """A batch's result, rebuilt: the outcome with its typed errors, or the typed error."""
    error = data.get("error")
    if error is not None:
        return MapResult(index, None, PluginError.from_dict(error))
    outcome = data["outcome"]
    return MapResult(
        index,
        Outcome(
            value=outcome["value"],
            plugin=plugin,
            function=function,
            attempts=outcome["attempts"],
            errors=tuple(PluginError.from_dict(item) for item in outcome["errors"]),
            duration=outcome["duration"],
            fallback=outcome["fallback"],
            quality=outcome["quality"],
            error=PluginError.from_dict(outcome["error"]) if outcome["error"] else None,
            call_id=outcome["call_id"],
        ),
        None,
    )


@final
class DaskExecutor:
    """A :class:`~wasm_plugins.host.MapExecutor` that runs the inputs on a Dask cluster, in
    batches, each Dask worker calling through a host of its own built from the caller's
    :class:`HostRecipe`.

    :param client: a ``distributed.Client`` connected to the cluster.
    :param batch_size: inputs per task: large enough that a task's overhead (a few
        milliseconds) is small beside its calls, small enough to spread over the workers.
    """

    def __init__(self, client: Any, *, batch_size: int = 250) -> None:
        self.client = client
        self.batch_size = batch_size

    def map(
        self,
        host: PluginHost,
        plugin: str,
        function: str,
        inputs: list[Any],
        progress: Callable[[int], None] | None,
    ) -> list[MapResult]:
        import distributed  # noqa: PLC0415 - the optional dask extra

        as_completed: Any = distributed.as_completed  # untyped

        recipe = self.client.scatter(HostRecipe.of(host), broadcast=True, hash=False)
        numbered = list(enumerate(inputs))
        batches = [
            numbered[start : start + self.batch_size]
            for start in range(0, len(numbered), self.batch_size)
        ]
        futures = [
            self.client.submit(run_batch, recipe, plugin, function, batch, pure=False)
            for batch in batches
        ]
        results: list[MapResult] = []
        for future in as_completed(futures):
            results.extend(
                rebuild(plugin, function, index, data) for index, data in future.result()
            )
            if progress is not None:
                progress(len(results))
        return results
