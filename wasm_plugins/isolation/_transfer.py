"""How a loaded module travels to a worker: the LOAD frame that describes it, and its rebuilding.

The host sends the compiled code as the payload and, in the header, the plugin's name, engine and
version, limits, grow probe, imported memory, WASI settings and imports. An import is served in
the worker when it is one of the ABI's own host functions (the guest's ``error``); every other
host function becomes a stub that forwards the call to the host, which runs the real one.
"""

from __future__ import annotations

from collections.abc import Callable
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
    HostFunction,
    Limits,
    LinkPlan,
    LoadedModule,
    abi_host_functions,
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


def describe(loaded: LoadedModule, key: str) -> RemoteModule:
    """The LOAD frame of ``loaded``, under ``key`` (the module's name in the worker)."""
    served_in_worker = set(abi_host_functions())
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
) -> LoadedModule:
    """The loaded module a LOAD frame describes, its forwarded imports made by ``stub(index)``
    and its WASI output handed to ``output``.

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
    module = engine.deserialize(payload, fuel=limits.fuel is not None)
    served_here = {(f.module, f.name): f for f in abi_host_functions()}
    functions = []
    for index, (module_name, name, params, results, local) in enumerate(header["imports"]):
        if local:
            functions.append(served_here[(module_name, name)])
        else:
            signature = FuncSignature(tuple(params), tuple(results))
            functions.append(HostFunction(module_name, name, signature, stub(index)))
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
    )
