"""ProcessSandbox: the sandbox API, with the plugin running in worker processes.

The host loads and checks the module exactly as :class:`~wasm_plugins.sandbox.Sandbox` does (the
same :class:`~wasm_plugins.sandbox.LoadedModule`, the same typed load errors), compiles it once,
and hands it to a :class:`~wasm_plugins.isolation.WorkerClient`, which ships the compiled code
with the limits and the link plan to a worker the first time that worker serves the plugin. At
load, one worker instantiates the plugin under the timeout, so a start function that traps or never
returns fails the load as it does in-process.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wasm_plugins.engine import Engine, EngineModule, WasiSettings, get_engine
from wasm_plugins.errors import ConfigurationError, PluginError
from wasm_plugins.isolation._bulkhead import Bulkhead
from wasm_plugins.isolation._client import WorkerClient
from wasm_plugins.isolation._pool import DEFAULT_POOL_SIZE, WorkerPool
from wasm_plugins.sandbox import (
    Codec,
    HostFunction,
    Limits,
    LinkPlan,
    LoadedModule,
    ModuleCache,
    ModuleSource,
    annotate,
    closed_sandbox,
    get_codec,
    host_failure,
    input_too_large,
)

__all__ = ["DEFAULT_QUEUE_TIMEOUT", "ProcessSandbox"]

DEFAULT_QUEUE_TIMEOUT = 30.0
"""Seconds a call may wait for a slot of its plugin's bulkhead and for an idle worker."""

_BUILTIN_ADAPTERS = (
    "wasm_plugins.engine._wasmer",
    "wasm_plugins.engine._wasmtime",
    "wasm_plugins.engine._wasmer_sdk",
)


class ProcessSandbox:
    """A plugin's sandbox whose plugin runs in worker processes.

    Same parameters, attributes and methods as :class:`~wasm_plugins.sandbox.Sandbox` (both are
    a :class:`~wasm_plugins.sandbox.PluginSandbox`), plus:

    :param pool: the :class:`WorkerPool` to run in; ``None`` makes a private pool of
        ``concurrency`` (or :data:`~wasm_plugins.isolation.DEFAULT_POOL_SIZE`) workers, closed with
        this sandbox.
    :param concurrency: calls of this plugin in flight at once (default: the pool's size).
    :param queue_size: callers that may wait for a slot (default: four times ``concurrency``);
        more are refused at once with ``ResourceLimitExceeded(resource="concurrency")``.
    :param queue_timeout: seconds a call may wait for a slot and a worker (``None``: no limit).

    Differences from in-process: a timeout is enforced on every engine (the engine stops the
    guest where it can, else the worker is killed);
    fuel on an engine that cannot meter it is still a ConfigurationError; only the built-in engines
    can run in workers; an exception raised by a WASI output callback is logged, not raised.
    """

    isolation = "process"

    def __init__(
        self,
        source: ModuleSource,
        *,
        engine: str | Engine | None = "auto",
        limits: Limits | None = None,
        capabilities: Iterable[str] = (),
        host_functions: Sequence[HostFunction] = (),
        codec: str = "json",
        functions: Sequence[str] | None = None,
        name: str | None = None,
        services: Any = None,
        wasi: WasiSettings | None = None,
        cache: ModuleCache | None = None,
        refresh_cache: bool = False,
        pool: WorkerPool | None = None,
        concurrency: int | None = None,
        queue_size: int | None = None,
        queue_timeout: float | None = DEFAULT_QUEUE_TIMEOUT,
        abi: str | int = "auto",
        config: Mapping[str, Any] | None = None,
        http_hosts: Sequence[str] = (),
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.name = name or "sandbox"
        self.limits = limits or Limits()
        self.capabilities = frozenset(capabilities)
        self.codec: Codec = get_codec(codec)
        self.services = services
        self._engine_name: str | None = None
        self._lock = threading.Lock()
        self._closed = False
        limit = concurrency
        if limit is None:
            limit = pool.size if pool is not None else DEFAULT_POOL_SIZE
        self._bulkhead = Bulkhead(
            limit, 4 * limit if queue_size is None else queue_size, plugin=name
        )
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else WorkerPool(limit, name=self.name)
        try:
            try:
                self.engine: Engine = (
                    engine if not isinstance(engine, str | None) else get_engine(engine)
                )
                self._engine_name = self.engine.name
                _check_in_worker(self.engine, self.limits)
                self.loaded = LoadedModule.load(
                    source,
                    engine=self.engine,
                    limits=self.limits,
                    capabilities=self.capabilities,
                    host_functions=host_functions,
                    functions=functions,
                    plugin=self.name,
                    wasi=wasi,
                    cache=cache,
                    refresh_cache=refresh_cache,
                    keep_serialized=True,
                    abi=abi,
                    config=config,
                    http_hosts=http_hosts,
                )
                """The compiled, checked and linked module (its code is what workers run)."""
                self.abi = self.loaded.abi
                """The guest ABI the module speaks: ``wasm-plugins`` or ``extism``."""
                self.functions = self.loaded.functions
                self._client = WorkerClient(
                    self.loaded, self.pool, self._bulkhead, queue_timeout, services
                )
                self._client.instantiate()
            except PluginError as error:
                raise self._annotate(error, None, None) from error.__cause__
            except Exception as exc:
                raise self._annotate(host_failure(exc), None, None) from exc
        except BaseException:
            if self._owns_pool:
                self.pool.close()
            raise

    @property
    def module(self) -> EngineModule:
        """The compiled module (exports, imports, serialisation)."""
        return self.loaded.module

    @property
    def link_plan(self) -> LinkPlan:
        """How the module's imports are satisfied (host functions run in the host)."""
        return self.loaded.link

    @property
    def compiled_from_cache(self) -> bool:
        """Whether the compiled module was loaded from the cache rather than compiled."""
        return self.loaded.compiled_from_cache

    @property
    def instances(self) -> int:
        """Live instances in this process: none, the plugin's instances live in the workers."""
        return 0

    @property
    def bulkhead(self) -> Bulkhead:
        """The plugin's concurrency gate (``in_flight``, ``waiting``)."""
        return self._bulkhead

    # -- calls ---------------------------------------------------------------------------------

    def call(self, function: str, input: Any = None) -> Any:
        """Call a plugin function with a value encoded by the codec; return the decoded result.

        :raises PluginError: a typed error for every failure, the worker's death included.
        """
        codec = self.codec
        try:
            data = codec.encode(input)
        except PluginError as error:
            raise self._annotate(error, function, None) from None
        output = self.call_bytes(function, data)
        try:
            return codec.decode(output)
        except PluginError as error:
            raise self._annotate(error, function, len(data)) from None

    def call_bytes(self, function: str, data: bytes) -> bytes:
        """Call a plugin function with encoded input in a worker; return the output bytes.

        :raises PluginError: a typed error for every failure, the worker's death included.
        """
        limit = self.limits.max_input
        if len(data) > limit:
            raise self._annotate(input_too_large(len(data), limit), function, len(data))
        try:
            if self._closed:
                raise closed_sandbox()
            return self._client.request(function, data if type(data) is bytes else bytes(data))
        except PluginError as error:
            failure = self._annotate(error, function, len(data))
            cause = error.__cause__
        raise failure from cause

    def interrupt(self, thread: int) -> None:
        """Stop the call that thread runs: its worker is killed (and replaced by the pool)."""
        self._client.interrupt(thread)

    def _annotate(self, error: PluginError, function: str | None, size: int | None) -> PluginError:
        return annotate(
            error,
            sandbox_id=self.id,
            plugin=self.name,
            function=function,
            engine=self._engine_name,
            isolation=self.isolation,
            input_size=size,
        )

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the plugin's workers: its private pool is closed, or its module unloaded from
        a shared pool's workers. Later calls fail with an InstanceError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_pool:
            self.pool.close()
        else:
            self._client.forget()

    def __enter__(self) -> ProcessSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<ProcessSandbox {self.name!r} on {self.engine.name} in {self.pool.name} "
            f"({len(self.functions)} functions)>"
        )


def _check_in_worker(engine: Engine, limits: Limits) -> None:
    """A worker enforces a timeout on every engine; fuel only where the engine meters it."""
    if type(engine).__module__ not in _BUILTIN_ADAPTERS:
        raise ConfigurationError(
            field="engine",
            message=(
                f"Invalid configuration: engine - the {engine.name!r} engine cannot run "
                "in a worker process (only the built-in engines can)"
            ),
            suggestion="use engine='wasmer' or 'wasmtime', or isolation='in-process'",
        )
    if limits.fuel is not None and not engine.features.fuel:
        raise ConfigurationError(
            field="limits.fuel",
            message=(
                f"Invalid configuration: limits.fuel - the {engine.name} engine cannot "
                "meter fuel, in this process or in a worker process"
            ),
            suggestion=(
                "use engine='wasmtime', which meters fuel, or drop the fuel limit and bound "
                "calls with limits.timeout"
            ),
        )
