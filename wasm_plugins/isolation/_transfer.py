"""How a loaded module travels to a worker: the LOAD frame that describes it, and its rebuilding.

The host sends the compiled code as the payload and, in the header, the plugin's name, engine and
version, limits, grow probe, imported memory, WASI settings and imports, and for an Extism plugin
its config values (resolved in the host), grants and HTTP hosts; the worker compiles the Extism
kernel itself. An import is served in the worker when it is one of the ABI's own host functions
(the guest's ``error``; the Extism kernel's config, vars, logs and HTTP, which work on the
instance's kernel memory); every other host function becomes a stub that forwards the call to
the host, which runs the real one. An Extism plugin's log lines travel to the host as output of
the stream ``log``, and ``get_log_level`` is answered by the host, whose logging it describes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from wasm_plugins.engine import (
    FuncSignature,
    MemoryImport,
    WasiDirectory,
    WasiSettings,
    get_engine,
)
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.isolation import _protocol as wire
from wasm_plugins.sandbox import (
    PAGE_SIZE,
    HostFunction,
    Limits,
    LinkPlan,
    LoadedModule,
    abi_host_functions,
    compiled_with_fuel,
    linked_kernel,
    worker_served_functions,
)

__all__ = ["RemoteModule", "describe", "rebuild"]

_LIMIT_FIELDS = ("memory", "fuel", "timeout", "max_input", "max_output")


@attrs.frozen
class RemoteModule:
    """What a worker needs to load a plugin, encoded once: headers, compiled code, and the host
    functions the worker forwards to the host (by index)."""

    load_header: bytes
    instantiate_header: bytes
    serialized: bytes
    forwarded: tuple[HostFunction, ...]


def _served_in_worker() -> tuple[HostFunction, ...]:
    return (*abi_host_functions(), *worker_served_functions())


def _config_text(value: Any) -> str:
    """A config value as the Extism kernel hands it over, in a form JSON carries byte for byte."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = json.dumps(value, separators=(",", ":")).encode()
    return data.decode("latin-1")


def describe(
    loaded: LoadedModule, key: str, config: Mapping[str, Any] | None = None
) -> RemoteModule:
    """The LOAD frame of ``loaded``, under ``key`` (the module's name in the worker).

    :param config: an Extism plugin's config values when the loaded module has none of its own
        (the host's configuration of the plugin).
    """
    served_in_worker = set(_served_in_worker())
    forwarded: list[HostFunction] = []
    imports = []
    for function in loaded.link.functions:
        local = function in served_in_worker
        if not local:
            forwarded.append(function)
        imports.append(
            [
                function.module,
                function.name,
                list(function.signature.params),
                list(function.signature.results),
                local,
            ]
        )
    memory = loaded.link.memory
    wasi = loaded.wasi
    engine = loaded.engine
    header = {
        "key": key,
        "plugin": loaded.plugin,
        "engine": engine.name,
        "version": engine.version,
        "limits": {name: getattr(loaded.limits, name) for name in _LIMIT_FIELDS},
        "probe": loaded.grow_probe,
        "memory_import": (
            None if memory is None else [memory.module, memory.name, memory.minimum, memory.maximum]
        ),
        "imports": imports,
        "wasi": None
        if wasi is None
        else {
            "directories": [[d.host_path, d.guest_path, d.read_only] for d in wasi.directories],
            "environment": [list(pair) for pair in wasi.environment],
            "arguments": list(wasi.arguments),
            "capture": wasi.output is not None,
        },
        "abi": loaded.abi,
    }
    if loaded.abi == "extism":
        values = loaded.config if loaded.config is not None else config or {}
        header["extism"] = {
            "config": {name: _config_text(value) for name, value in values.items()},
            "capabilities": sorted(loaded.capabilities),
            "http_hosts": list(loaded.http_hosts),
        }
    return RemoteModule(
        load_header=wire.dumps(header),
        instantiate_header=wire.dumps({"key": key}),
        serialized=loaded.serialize(),
        forwarded=tuple(forwarded),
    )


def rebuild(
    header: dict[str, Any],
    payload: bytes,
    stub: Callable[[int], Callable[..., Any]],
    output: Callable[[str, bytes], None],
    guest_log: Callable[[str, str], None] | None = None,
) -> LoadedModule:
    """The loaded module a LOAD frame describes, its forwarded imports made by ``stub(index)``,
    its WASI output handed to ``output`` and an Extism plugin's log lines to ``guest_log``.

    :raises PluginError: when the engine differs from the host's or refuses the code.
    """
    engine = get_engine(header["engine"])
    if engine.version != header["version"]:
        raise ConfigurationError(
            field="engine",
            message=(
                f"Invalid configuration: engine - the worker has {engine.name} "
                f"{engine.version}, the host compiled with {header['version']}"
            ),
            suggestion="run workers with the same Python environment as the host",
        )
    limits = Limits(**header["limits"])
    module = engine.deserialize(payload, fuel=compiled_with_fuel(engine, limits))
    served_here = {(f.module, f.name): f for f in _served_in_worker()}
    functions = []
    # The host numbers the functions it serves among themselves (RemoteModule.forwarded).
    forwarded = 0
    for module_name, name, params, results, local in header["imports"]:
        if local:
            functions.append(served_here[(module_name, name)])
        else:
            signature = FuncSignature(tuple(params), tuple(results))
            functions.append(HostFunction(module_name, name, signature, stub(forwarded)))
            forwarded += 1
    memory = header["memory_import"]
    spec = header["wasi"]
    wasi = None
    if spec is not None:
        wasi = WasiSettings(
            directories=tuple(WasiDirectory(*item) for item in spec["directories"]),
            environment=tuple((name, value) for name, value in spec["environment"]),
            arguments=tuple(spec["arguments"]),
            output=output if spec["capture"] else None,
        )
    extism: dict[str, Any] = {}
    spec = header.get("extism")
    if header.get("abi") == "extism" and spec is not None:
        pages = None if limits.memory is None else limits.memory // PAGE_SIZE
        extism = {
            "abi": "extism",
            "kernel": linked_kernel(engine, pages, limits),
            "config": {name: text.encode("latin-1") for name, text in spec["config"].items()},
            "capabilities": frozenset(spec["capabilities"]),
            "http_hosts": tuple(spec["http_hosts"]),
            "guest_log": guest_log,
        }
    return LoadedModule(
        engine=engine,
        module=module,
        limits=limits,
        link=LinkPlan(
            functions=tuple(functions),
            memory=MemoryImport(*memory) if memory is not None else None,
        ),
        plugin=header["plugin"],
        grow_probe=header["probe"],
        wasi=wasi,
        **extism,
    )
