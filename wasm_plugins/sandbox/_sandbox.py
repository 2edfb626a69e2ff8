"""The Sandbox: one module on one engine, under limits and capabilities, callable from any thread.

The module is loaded once (:class:`~wasm_plugins.sandbox.LoadedModule`: compiled, checked, linked).
Each thread then gets its own instance (wasmer objects are bound to the thread that made them); an
instance that trapped, timed out, ran out of fuel or was unwound by a failing host function is
dropped and the next call in that thread gets a fresh one. A call back into the plugin from one of
its own calls gets an instance of its own. A thread whose native stack is too small for guest code
has its calls run on a thread that has enough (see ``_stack``).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wasm_plugins.engine import Engine, EngineModule, WasiSettings, get_engine
from wasm_plugins.errors import ConfigurationError, InstanceError, PluginError
from wasm_plugins.sandbox._abi import Session
from wasm_plugins.sandbox._cache import ModuleCache
from wasm_plugins.sandbox._codec import Codec, get_codec
from wasm_plugins.sandbox._extism import ExtismSession
from wasm_plugins.sandbox._failures import (
    annotate,
    closed_sandbox,
    host_failure,
    input_too_large,
    instance_is_suspect,
)
from wasm_plugins.sandbox._host_functions import HostFunction, LinkPlan
from wasm_plugins.sandbox._limits import Limits
from wasm_plugins.sandbox._loaded import LoadedModule, ModuleSource
from wasm_plugins.sandbox._stack import on_roomy_stack, roomy

__all__ = ["Sandbox"]


class _ThreadState:
    """One thread's instance and ABI session."""

    def __init__(self, session: Session | ExtismSession, *, reentrant: bool = False) -> None:
        self.session = session
        self.reentrant = reentrant
        """Made for one call back from a call in progress; never kept."""
        self.watched: threading.Event | None = None
        """What the instance watches (see :meth:`Sandbox.watch`): an instance made to replace
        this one within a call watches it too."""


class Sandbox:
    """One module, its limits and capabilities, on one engine, run in this process.

    >>> sandbox = Sandbox(Path("hostapi/examples/echo.wat"))  # doctest: +SKIP
    >>> sandbox.call("echo", {"hello": "world"})  # doctest: +SKIP
    {'hello': 'world'}

    :param source: module bytes, WAT text, or a path to a ``.wasm`` / ``.wat`` file.
    :param engine: an engine name (``auto``, ``wasmer``, ``wasmtime``) or an engine object.
    :param limits: memory, fuel, timeout, input and output sizes.
    :param capabilities: capabilities granted to the module (deny by default).
    :param host_functions: host functions offered besides the ABI's own.
    :param codec: ``json`` (default) or ``raw``.
    :param functions: plugin functions the module must export (checked at load).
    :param name: the plugin's name, used in errors and logs.
    :param services: handed to host functions (``HostCall.services``): the host's clock, stores...
    :param wasi: WASI preview1 settings, used when the ``wasi`` capability is granted.
    :param cache: a :class:`~wasm_plugins.sandbox.ModuleCache` to load the compiled module from
        and store it in (``None``: compile every time). A host passes its own.
    :param refresh_cache: compile even when the cache has the module, and replace its entry.
    :param abi: the guest ABI: ``auto`` (detected from the imports), ``wasm-plugins`` (or ``1``)
        or ``extism`` (unmodified Extism plugins).
    :param config: an Extism plugin's config values (default: the host's configuration of the
        plugin, from ``services``).
    :param http_hosts: the hosts an Extism plugin granted ``http`` may reach (``host``,
        ``host:port`` or ``*.domain``).
    :raises PluginError: a typed error when anything about the module or the settings is wrong.
    """

    isolation = "in-process"

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
        self._local = threading.local()
        # Weak: a thread's state lives in its thread-local slot, so that it is released with the
        # thread (engines such as wasmer must release objects in the thread that made them).
        self._states: weakref.WeakSet[_ThreadState] = weakref.WeakSet()
        self._closed = False
        try:
            self.engine: Engine = (
                engine if not isinstance(engine, str | None) else get_engine(engine)
            )
            self._engine_name = self.engine.name
            # An engine that runs guests outside this process names its isolation.
            isolation = getattr(self.engine, "isolation", None)
            if isinstance(isolation, str):
                self.isolation = isolation
            _check_in_process(self.engine, self.limits)
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
                abi=abi,
                config=config,
                http_hosts=http_hosts,
            )
            """The compiled, checked and linked module."""
            self.functions = self.loaded.functions
            self.abi = self.loaded.abi
            """The guest ABI the module speaks: ``wasm-plugins`` or ``extism``."""
            # The instance is made where its calls will run (see call_bytes).
            on_roomy_stack(self._state).session.end_budget()
        except PluginError as error:
            raise self._annotate(error, None, None) from error.__cause__
        except Exception as exc:
            raise self._annotate(host_failure(exc), None, None) from exc

    @property
    def module(self) -> EngineModule:
        """The compiled module (exports, imports, serialisation)."""
        return self.loaded.module

    @property
    def link_plan(self) -> LinkPlan:
        """How the module's imports are satisfied."""
        return self.loaded.link

    @property
    def compiled_from_cache(self) -> bool:
        """Whether the compiled module was loaded from the cache rather than compiled."""
        return self.loaded.compiled_from_cache

    # -- instances ----------------------------------------------------------------------------

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        if self._closed:
            raise closed_sandbox()
        state = _ThreadState(self.loaded.instantiate(self.services))
        self._local.state = state
        with self._lock:
            self._states.add(state)
        return state

    def _discard(self, state: _ThreadState) -> None:
        self._local.state = None
        with self._lock:
            self._states.discard(state)

    @property
    def instances(self) -> int:
        """Live instances (one per thread that called, until that thread ends or a trap)."""
        with self._lock:
            return len(self._states)

    def close(self) -> None:
        """Drop every instance; later calls fail with an InstanceError."""
        with self._lock:
            self._closed = True
            self._states.clear()
        self._local = threading.local()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def watch(self, cancelled: threading.Event | None) -> bool:
        """Stop this thread's calls when ``cancelled`` is set by another thread (None: stop
        watching); the call stopped raises a ``CallCancelled`` and its instance is dropped.

        :returns: False when the engine cannot stop a running guest (wasmer, for a module not
            metered: one without a fuel or timeout limit): the call then runs until its own
            limits stop it.
        """
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            if cancelled is None or not roomy():
                return False
            try:
                state = self._state()
            except PluginError:
                return False  # the call itself meets the same error
        state.watched = cancelled
        return state.session.instance.watch(cancelled)

    # -- calls --------------------------------------------------------------------------------

    def call(self, function: str, input: Any = None) -> Any:
        """Call a plugin function with a value encoded by the codec; return the decoded result.

        :raises PluginError: a typed error for every failure; the sandbox stays usable.
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
        """Call a plugin function with encoded input; return the guest's output bytes."""
        limits = self.limits
        if len(data) > limits.max_input:
            error = input_too_large(len(data), limits.max_input)
            raise self._annotate(error, function, len(data))
        state = getattr(self._local, "state", None)
        if state is None and not roomy():
            # This thread's stack is too small for guest code: its calls (and its instance)
            # live on a thread that has enough.
            return on_roomy_stack(self.call_bytes, function, data)
        try:
            state = state or self._state()
            session = state.session
            if session.in_call:
                # Called back from one of this thread's own calls (through a host function):
                # that call's input buffer and output are live, so this one gets an instance of
                # its own, dropped afterwards (and a failure to make it is not the outer's).
                state = None
                state = _ThreadState(self.loaded.instantiate(self.services), reentrant=True)
                session = state.session
            return session.invoke(
                session._functions.get(function) or session.function(function),
                data,
                limits.max_output,
            )
        except PluginError as error:
            if _evicted(error) and state is not None and not state.reentrant:
                # The engine closed this instance's idle process to bound live processes, before
                # the call touched the guest: the call runs on a fresh instance, which watches
                # what this one did (its caller asked before the call, and may not again).
                watched = state.watched
                self._discard(state)
                del state
                if watched is not None:
                    self.watch(watched)
                return self.call_bytes(function, data)
            failure = self._failed(error, state, function, len(data))
            cause: BaseException | None = failure.__cause__
        except Exception as exc:
            # Only host code (a host function) can raise anything else; the guest stopped halfway.
            failure = self._failed(host_failure(exc), state, function, len(data))
            cause = exc
        # Raised outside the handler, with the locals gone: a traceback keeps its frames' locals,
        # and this frame's would keep the instance alive in a cycle (the error references the
        # traceback that references this frame, whose locals reference the error and the
        # instance) until some thread happens to collect garbage.
        state = session = None
        try:
            raise failure from cause
        finally:
            del failure, cause

    def _failed(
        self, error: PluginError, state: _ThreadState | None, function: str, size: int
    ) -> PluginError:
        if state is not None:
            error = self.loaded.explain(error, state.session)
            if not state.reentrant and (state.session.in_call or instance_is_suspect(error)):
                self._discard(state)
        return self._annotate(error, function, size)

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

    def __repr__(self) -> str:
        return f"<Sandbox {self.name!r} on {self.engine.name} ({len(self.functions)} functions)>"


def _evicted(error: PluginError) -> bool:
    return isinstance(error, InstanceError) and error.state == "evicted"


def _check_in_process(engine: Engine, limits: Limits) -> None:
    """A timeout or fuel limit the engine cannot enforce in this process is refused."""
    features = engine.features
    for limit, supported in (("timeout", features.timeout), ("fuel", features.fuel)):
        if getattr(limits, limit) is not None and not supported:
            raise ConfigurationError(
                field=f"limits.{limit}",
                message=(
                    f"Invalid configuration: limits.{limit} - the {engine.name} engine "
                    f"cannot enforce a {limit} inside this process"
                ),
                suggestion=(
                    f"use engine='wasmtime', which enforces {limit} in-process, or drop "
                    f"the {limit} limit (worker-process isolation enforces it on "
                    f"{engine.name})"
                ),
            )
