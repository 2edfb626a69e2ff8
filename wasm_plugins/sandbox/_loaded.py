"""The loaded module: a module compiled, checked against the guest ABI and linked against its
grants, ready to be instantiated by a sandbox in this process or by a worker process.

Loading does all the checking once: the source is compiled (WAT) or read, its size and structure
validated (the same for every engine), its code validated by the engine, rewritten so that its
memories and tables cannot grow past the limits, compiled, checked against the guest ABI, and
its imports linked against the granted capabilities. With a compiled-module cache, a module seen
before with the same limits is deserialized from its entry instead (or is the module the cache
object deserialized from the same unchanged entry before): not checked, rewritten or validated
again (its entry was made from a module that passed all three). A worker process makes
its loaded module from the compiled code the host sends, with the same limits and link plan, so
both ends instantiate, probe for a refused ``memory.grow`` and explain failures the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wasm_plugins._log import logger
from wasm_plugins.engine import (
    CallBudget,
    Engine,
    EngineModule,
    ExternInfo,
    LinkedModule,
    WasiSettings,
)
from wasm_plugins.errors import (
    ConfigurationError,
    ExecutionError,
    ModuleError,
    PluginError,
    ValidationIssue,
)
from wasm_plugins.sandbox._abi import Session, abi_host_functions, check_module, plugin_functions
from wasm_plugins.sandbox._binary import (
    DEPTH_EXPORT,
    PAGE_SIZE,
    REWRITER_VERSION,
    PreparedModule,
    WasmBinaryError,
    bound_call_depth,
)
from wasm_plugins.sandbox._cache import ModuleCache
from wasm_plugins.sandbox._extism import (
    ExtismSession,
    check_extism_module,
    detect_abi,
    extism_host_functions,
    extism_plugin_functions,
    kernel_module,
    kernel_plan,
    normalize_abi,
)
from wasm_plugins.sandbox._failures import grow_may_explain, refused_grow, stack_overflow
from wasm_plugins.sandbox._host_functions import HostFunction, LinkPlan, link_imports
from wasm_plugins.sandbox._limits import Limits
from wasm_plugins.sandbox._metering import METERING_VERSION, metered_or_refused
from wasm_plugins.sandbox._stack import MAX_DEPTH
from wasm_plugins.sandbox._validate import check_module_bytes, prepare_within_limits

__all__ = [
    "WASI_MODULE",
    "LoadedModule",
    "ModuleSource",
    "compiled_with_fuel",
    "kernel_fuel",
    "linked_kernel",
    "load_module_bytes",
]

ModuleSource = bytes | bytearray | memoryview | str | os.PathLike[str]
"""Binary module bytes, WAT text, or the path of a ``.wasm`` or ``.wat`` file."""

WASI_MODULE = "wasi_snapshot_preview1"
"""The import module of WASI preview1, linked when the ``wasi`` capability is granted."""
WASI_GATED_FUNCTIONS = {
    f"{WASI_MODULE}.{name}": capability
    for names, capability in (
        # poll_oneoff reads the clocks too (and can sleep): it is a clock.
        (("clock_time_get", "clock_res_get", "poll_oneoff"), "clock"),
        (("random_get",), "random"),
    )
    for name in names
}
"""WASI functions gated by the framework's own capabilities, besides ``wasi`` itself."""
_WASI_GATE = {WASI_MODULE: "wasi"}
_MAGIC = b"\0asm"
_MASK = 0xFFFFFFFF


def compiled_with_fuel(engine: Engine, limits: Limits) -> bool:
    """The ``fuel`` flag a module is compiled (and its compiled code loaded) with: fuel metering
    for an engine that meters natively, a metered module (fuel, a timeout or both) for one that
    meters by instrumentation (fuel alone where the engine keeps deadlines itself), and always
    for an engine that runs metered modules only."""
    features = engine.features
    if features.always_metered:
        return True
    if features.metering_by_instrumentation and features.metering_timeouts:
        return limits.fuel is not None or limits.timeout is not None
    return limits.fuel is not None


def kernel_fuel(engine: Engine, limits: Limits) -> bool:
    """The ``fuel`` flag of an Extism plugin's kernel: our own code, metered only natively."""
    return limits.fuel is not None and not engine.features.metering_by_instrumentation


def linked_kernel(engine: Engine, maximum_pages: int | None, limits: Limits) -> LinkedModule:
    """The Extism kernel to link beside a plugin run by ``engine``: compiled by the engine
    itself, or by its ``linking_engine`` when it has one (wasmer-sdk runs plugins out of
    process, and their kernel in this process, on wasmtime)."""
    linking: Engine = getattr(engine, "linking_engine", engine)
    return kernel_module(linking, maximum_pages, kernel_fuel(linking, limits))


def load_module_bytes(source: ModuleSource, engine: Engine) -> bytes:
    """Binary module bytes from any :data:`ModuleSource`; WAT is compiled.

    :raises CompilationError: for WAT that does not compile.
    :raises ModuleError: for bytes that are not a module.
    :raises ConfigurationError: for a path that cannot be read.
    """
    return _read_module(source, engine)[0]


def _read_module(source: ModuleSource, engine: Engine) -> tuple[bytes, os.stat_result | None]:
    """The module's binary bytes and, for a file, its status taken before it was read."""
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        try:
            # Unbuffered: one read of the size fstat gives, no buffer object in between.
            with open(path, "rb", buffering=0) as handle:
                status = os.fstat(handle.fileno())
                raw = handle.readall()
        except OSError as exc:
            raise ConfigurationError(
                field="module",
                message=f"Invalid configuration: module - cannot read {path}: {exc.strerror}",
                suggestion="give the path of an existing .wasm or .wat file",
            ) from None
        if raw.startswith(_MAGIC):
            return raw, status
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _not_a_module(
                0, "the file is neither a WebAssembly binary nor UTF-8 WAT text"
            ) from None
        return engine.wat_to_wasm(text), status
    if isinstance(source, str):
        return engine.wat_to_wasm(source), None
    data = bytes(source)
    if not data.startswith(_MAGIC):
        raise _not_a_module(0, "magic header not detected: the bytes do not start with \\0asm")
    return data, None


def _module_and_digest(
    source: ModuleSource, engine: Engine, cache: ModuleCache, *, remembered: bool = True
) -> tuple[bytes | None, str]:
    """The module's bytes and their hex SHA-256 digest; the bytes are ``None`` when the digest
    is the one the cache remembers for a module file that has not changed since it was read
    (the file is then not read again)."""
    path = os.fspath(source) if isinstance(source, os.PathLike) else None
    if path is not None and remembered:
        digest = cache.known_digest(path, engine)
        if digest is not None:
            return None, digest
    wasm, status = _read_module(source, engine)
    digest = hashlib.sha256(wasm).hexdigest()
    if path is not None and status is not None:
        cache.remember_digest(path, engine, status, digest)
    return wasm, digest


def _not_a_module(offset: int, message: str) -> ModuleError:
    return ModuleError(
        validation_errors=(ValidationIssue(message=message, offset=offset),),
        suggestion="pass a WebAssembly binary (.wasm) or WAT text",
    )


@attrs.frozen(eq=False)
class LoadedModule:
    """A compiled module with what instantiating it needs: its limits, link plan and WASI.

    Made by :meth:`load` from a source, or directly from a compiled module (a worker process does
    that with the code and the link plan the host sent).
    """

    engine: Engine
    module: EngineModule
    limits: Limits
    link: LinkPlan
    """How the module's imports are satisfied."""
    plugin: str
    """The plugin's name, used in errors and logs."""
    functions: tuple[str, ...] = ()
    """The plugin functions (the declared ones, else every export of the plugin-function type)."""
    grow_probe: str | None = None
    """The exported global where the rewrite leaves the page delta of a refused memory.grow."""
    wasi: WasiSettings | None = None
    """The WASI settings to link, checked against the engine (``None``: no WASI imports)."""
    wasm: bytes | None = None
    """The module as the engine compiled it (after the rewrite); ``None`` when deserialized."""
    serialized: bytes | None = None
    """The compiled code as the cache read or wrote it, when it was kept."""
    compiled_from_cache: bool = False
    """Whether the compiled module was loaded from the cache rather than compiled."""
    abi: str = "wasm-plugins"
    """The guest ABI the module speaks: ``wasm-plugins`` or ``extism``."""
    kernel: LinkedModule | None = None
    """The Extism kernel linked beside an Extism plugin."""
    capabilities: frozenset[str] = frozenset()
    """What the plugin was granted (an Extism plugin's HTTP requests check it again)."""
    config: Mapping[str, Any] | None = None
    """An Extism plugin's config values; ``None``: the host's (``services.config``)."""
    http_hosts: tuple[str, ...] = ()
    """The hosts an Extism plugin granted ``http`` may reach."""
    guest_log: Callable[[str, str], None] | None = None
    """Where an Extism plugin's log lines go (level, text) instead of this process's loguru."""

    @classmethod
    def load(
        cls,
        source: ModuleSource,
        *,
        engine: Engine,
        limits: Limits,
        capabilities: Iterable[str] = (),
        host_functions: Sequence[HostFunction] = (),
        functions: Sequence[str] | None = None,
        plugin: str = "sandbox",
        wasi: WasiSettings | None = None,
        cache: ModuleCache | None = None,
        refresh_cache: bool = False,
        keep_serialized: bool = False,
        abi: str | int = "auto",
        config: Mapping[str, Any] | None = None,
        http_hosts: Sequence[str] = (),
    ) -> LoadedModule:
        """Read, validate, rewrite, compile, check and link a module.

        :param keep_serialized: keep the compiled code the cache read or wrote (to send it to
            worker processes without serializing it again).
        :param abi: ``auto`` (detected from the imports), ``wasm-plugins`` (or ``1``) or
            ``extism``.
        :param config: an Extism plugin's config values (default: the host's, at instantiation).
        :param http_hosts: the hosts an Extism plugin granted ``http`` may reach.
        :raises PluginError: a typed error when anything about the module or the settings is
            wrong.
        """
        requested_abi = normalize_abi(abi)
        fuel = compiled_with_fuel(engine, limits)
        key = None
        found = None
        wasm: bytes | None = None
        if cache is not None and cache.enabled:
            wasm, digest = _module_and_digest(source, engine, cache)
            preparation = _preparation(engine, limits)
            key = cache.key(engine, b"", fuel=fuel, preparation=preparation, module_digest=digest)
            found = cache.lookup(
                engine, key, fuel=fuel, keep_payload=keep_serialized, refresh=refresh_cache
            )
            if found is None and wasm is None:
                # The entry went away (evicted, cleared, refused): the module is compiled from
                # what the file holds now, under the key of what was read.
                wasm, digest = _module_and_digest(source, engine, cache, remembered=False)
                key = cache.key(
                    engine, b"", fuel=fuel, preparation=preparation, module_digest=digest
                )
        if found is not None:
            module, serialized, hit = found.module, found.serialized, True
            probe = found.metadata.get("grow_probe")
            grow_probe = probe if isinstance(probe, str) else None
            prepared_wasm = None
        else:
            if wasm is None:
                wasm = load_module_bytes(source, engine)
            prepared = _compile(engine, wasm, limits, fuel, plugin)
            module, hit = prepared.module, False
            grow_probe, prepared_wasm = prepared.grow_probe, prepared.wasm
            serialized = None
            if cache is not None and key is not None:
                serialized = cache.store(
                    engine, key, module, fuel=fuel, metadata={"grow_probe": grow_probe}
                )
        granted = frozenset(capabilities)
        pages = None if limits.memory is None else limits.memory // PAGE_SIZE
        link = _link(module, requested_abi, functions, host_functions, granted, pages, plugin)
        kernel = linked_kernel(engine, pages, limits) if link.abi == "extism" else None
        return cls(
            engine=engine,
            module=module,
            limits=limits,
            link=link.plan,
            plugin=plugin,
            functions=tuple(functions) if functions else link.functions,
            grow_probe=grow_probe,
            wasi=_wasi_for_module(engine, module, wasi),
            wasm=prepared_wasm,
            serialized=serialized if keep_serialized else None,
            compiled_from_cache=hit,
            abi=link.abi,
            kernel=kernel,
            capabilities=granted,
            config=config,
            http_hosts=tuple(http_hosts),
        )

    def budget(self) -> CallBudget:
        """What the engine enforces per call (a timeout only where the engine can)."""
        limits = self.limits
        timeout = limits.timeout if self.engine.features.timeout else None
        return CallBudget(fuel=limits.fuel, timeout=timeout, memory_bytes=limits.memory)

    def serialize(self) -> bytes:
        """The compiled code: as the cache read or wrote it when kept, else from the engine."""
        return self.serialized if self.serialized is not None else self.module.serialize()

    def instantiate(self, services: object = None) -> Session | ExtismSession:
        """A new instance (its start function runs now) and the ABI session that calls it.

        :param services: handed to host functions (``HostCall.services``).
        """
        session = self._new_session(services)
        linked = {} if self.kernel is None else {"linked": self.kernel}
        instance = self.module.instantiate(
            self.link.host_imports(self.plugin, session, services),
            self.budget(),
            self.link.memory,
            self.wasi,
            **linked,
        )
        session.attach(instance)
        return session

    def _new_session(self, services: object) -> Session | ExtismSession:
        if self.kernel is None:
            return Session()
        config = self.config
        if config is None:
            lookup = getattr(services, "config", None)
            config = lookup(self.plugin) if callable(lookup) else {}
        return ExtismSession(
            plugin=self.plugin,
            config=config,
            capabilities=self.capabilities,
            http_hosts=self.http_hosts,
            http_timeout=self.limits.timeout,
            max_output=self.limits.max_output,
            guest_log=self.guest_log,
        )

    def refused_grow(self, session: Session | ExtismSession) -> int | None:
        """The memory size a refused ``memory.grow`` of this session's instance asked for, if
        one was refused since the last look (the probe is reset)."""
        probe = self.grow_probe
        if probe is None:
            return None
        instance = session.instance
        try:
            requested = instance.read_global(probe)
            if not requested:
                return None
            instance.write_global(probe, 0)
        except PluginError:
            return None
        return instance.memory.size() + (requested & _MASK) * PAGE_SIZE

    def explain(self, error: PluginError, session: Session | ExtismSession | None) -> PluginError:
        """``error``, or what explains it: the call-depth bound it hit, or a refused
        ``memory.grow``."""
        if session is None:
            return error
        if (
            self.engine.features.call_depth_by_instrumentation
            and isinstance(error, ExecutionError)
            and error.trap == "unreachable"
        ):
            depth = session.instance.read_global(DEPTH_EXPORT)
            bound = _max_depth(self.engine)
            if depth is not None and depth & _MASK > bound:
                return stack_overflow(error, bound)
        if self.grow_probe is None or not grow_may_explain(error):
            return error
        used = self.refused_grow(session)
        return error if used is None else refused_grow(used, self.limits.memory, error)


@attrs.frozen
class _Link:
    """How a module was checked against its ABI and linked against a set of grants."""

    imports: tuple[ExternInfo, ...]
    exports: tuple[ExternInfo, ...]
    offered: tuple[HostFunction, ...]
    abi: str
    plan: LinkPlan
    functions: tuple[str, ...]
    """The exports of the plugin-function type."""


_LINKS: dict[tuple[Any, ...], _Link] = {}
_LINKS_KEPT = 64
"""Links kept at most: a host loads a handful of modules, and a kept link keeps its host
functions (and what their implementations hold) alive."""


def _link(
    module: EngineModule,
    requested_abi: str,
    functions: Sequence[str] | None,
    host_functions: Sequence[HostFunction],
    granted: frozenset[str],
    pages: int | None,
    plugin: str,
) -> _Link:
    """The module checked against its ABI and its imports linked; as the last load of the same
    module (the same types objects, kept by the engine for compiled code it has read before)
    with the same grants and the same host function objects did, when there was one."""
    imports, exports = tuple(module.imports), tuple(module.exports)
    offered = tuple(host_functions)
    declared = None if functions is None else tuple(functions)
    key = (id(imports), id(exports), requested_abi, declared, granted, pages, *map(id, offered))
    known = _LINKS.get(key)
    # Ids are compared with the objects the link kept alive: an id is never another object's.
    if (
        known is not None
        and known.imports is imports
        and known.exports is exports
        and all(a is b for a, b in zip(known.offered, offered, strict=True))
    ):
        return known
    abi = detect_abi(imports) if requested_abi == "auto" else requested_abi
    extism = abi == "extism"
    if extism:
        check_extism_module(exports, declared, plugin)
        linkable = extism_host_functions(offered)
    else:
        check_module(exports, imports, declared, plugin=plugin)
        linkable = (*abi_host_functions(), *offered)
    plan = link_imports(
        imports,
        linkable,
        granted,
        plugin=plugin,
        memory_limit_pages=pages,
        gated_modules=_WASI_GATE,
        gated_functions=WASI_GATED_FUNCTIONS,
    )
    if extism:
        plan = kernel_plan(plan)
    exported = extism_plugin_functions(exports) if extism else plugin_functions(exports)
    made = _Link(imports, exports, offered, abi, plan, exported)
    if len(_LINKS) >= _LINKS_KEPT:
        _LINKS.clear()
    _LINKS[key] = made
    return made


def _preparation(engine: Engine, limits: Limits) -> dict[str, object]:
    """What the checks and the rewrite depend on: part of the cache key, so that an entry is
    only found for a module that passed them under the same limits."""
    return {
        "rewriter": REWRITER_VERSION,
        "call_depth": _max_depth(engine) if engine.features.call_depth_by_instrumentation else None,
        "memory": limits.memory,
        "memories": limits.memories,
        "table": limits.table,
        "module_size": limits.module_size,
        "instrument_grow": True,
        "metering": METERING_VERSION if engine.features.metering_by_instrumentation else None,
    }


@attrs.frozen
class _Compiled:
    module: EngineModule
    grow_probe: str | None
    wasm: bytes


def _compile(engine: Engine, wasm: bytes, limits: Limits, fuel: bool, plugin: str) -> _Compiled:
    """The module checked, validated, rewritten and compiled.

    The engine validates the original before the rewrite, not only the rewritten module as it
    compiles: the rewrite appends globals (the refused grow's report, the call depth, the fuel
    counter), and code naming a global one past the module's own, invalid as written, would be
    valid once they are there, and read or reset the host's bookkeeping. Function bodies are
    not decoded by the rewrite, so the engine's validator is what sees such an index; it costs
    1 to 2% of a compile (20 KiB and 1 MB, both engines). A rewritten module the engine then
    refuses is the rewrite's fault."""
    check_module_bytes(wasm, limits, engine)
    engine.validate(wasm)
    prepared = _instrumented(engine, prepare_within_limits(wasm, limits), fuel)
    try:
        return _Compiled(
            engine.compile(prepared.wasm, fuel=fuel), prepared.grow_probe, prepared.wasm
        )
    except ModuleError:
        if prepared.grow_probe is None:
            raise
    # The engine validates the original, so the grow instrumentation is at fault: the memory
    # limit still holds without it, only the report of a refused grow is less precise.
    logger.bind(plugin=plugin).warning(
        "memory.grow instrumentation refused by the engine; continuing without it"
    )
    plain = _instrumented(engine, prepare_within_limits(wasm, limits, instrument_grow=False), fuel)
    return _Compiled(engine.compile(plain.wasm, fuel=fuel), None, plain.wasm)


def _instrumented(engine: Engine, prepared: PreparedModule, fuel: bool) -> PreparedModule:
    """The module with its fuel metered and its call depth bounded, where the engine needs
    those done in the module: metered first, so that the depth check opens every body (the
    command wrapper finds its bound there) and its own instructions are not charged."""
    if fuel and engine.features.metering_by_instrumentation:
        prepared = attrs.evolve(prepared, wasm=metered_or_refused(prepared.wasm))
    return _depth_bounded(engine, prepared)


def _max_depth(engine: Engine) -> int:
    """The call-depth bound the sandbox's instrumentation uses on ``engine``."""
    return engine.features.max_call_depth or MAX_DEPTH


def _depth_bounded(engine: Engine, prepared: PreparedModule) -> PreparedModule:
    """The module with its call depth bounded, where the engine's own stack guard is costly."""
    if not engine.features.call_depth_by_instrumentation:
        return prepared
    try:
        return attrs.evolve(prepared, wasm=bound_call_depth(prepared.wasm, _max_depth(engine)))
    except WasmBinaryError as exc:
        raise ModuleError(
            validation_errors=(ValidationIssue(message=exc.message, offset=exc.offset),),
            suggestion=f"rename the export {DEPTH_EXPORT!r}: the name is reserved",
        ) from None


def _wasi_for_module(
    engine: Engine, module: EngineModule, settings: WasiSettings | None
) -> WasiSettings | None:
    """The WASI settings to link, checked against what the engine can confine."""
    if not any(item.module == WASI_MODULE for item in module.imports):
        return None
    settings = settings or WasiSettings()
    features = engine.features
    if not features.wasi:
        raise _wasi_unsupported(engine, "wasi", "WASI")
    if settings.directories and not features.wasi_confined_directories:
        # wasmer 1.1 lets a guest open absolute paths and follow symlinks out of a preopened
        # directory (checked in tests/test_host_functions.py): no directory is safe there.
        raise _wasi_unsupported(engine, "wasi.preopens", "confined directories")
    if not features.wasi_read_only_preopens and any(
        directory.read_only for directory in settings.directories
    ):
        raise _wasi_unsupported(engine, "wasi.preopens.read_only", "read-only directories")
    if not features.wasi_captured_output:
        # Such an engine hands the guest the host process's own stdin, stdout and stderr: a
        # guest could forge the host's output or send terminal escapes. Whatever capture_output
        # says, a module that can reach a file descriptor does not load.
        reaching = sorted(
            item.name
            for item in module.imports
            if item.module == WASI_MODULE and item.name.startswith(("fd_", "poll_", "sock_"))
        )
        if reaching:
            raise _wasi_unsupported(
                engine,
                "wasi.capture_output",
                "keeping the guest away from the host's own standard streams (the module "
                f"imports {', '.join(reaching)})",
            )
    directories = []
    for directory in settings.directories:
        host_path = Path(directory.host_path)
        if not host_path.is_dir():
            raise ConfigurationError(
                field="wasi.preopens",
                message=f"Invalid configuration: wasi.preopens - {host_path} is not a directory",
                suggestion="give the path of an existing directory",
            )
        directories.append(attrs.evolve(directory, host_path=str(host_path.resolve())))
    return attrs.evolve(settings, directories=tuple(directories))


def _wasi_unsupported(engine: Engine, field: str, what: str) -> ConfigurationError:
    return ConfigurationError(
        field=field,
        message=(
            f"Invalid configuration: {field} - the {engine.name} engine cannot enforce {what}"
        ),
        suggestion="use engine='wasmtime', which confines WASI with read-only directories "
        "and captures output",
    )
