"""Host functions offered to guests, gated by capabilities, and the linking of a module's imports.

Deny by default: a module that imports a host function whose capability its manifest does not grant
fails at load with a SecurityViolation naming the capability, before any of its code runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from wasm_plugins.engine import ExternInfo, FuncSignature, GuestMemory, HostImport, MemoryImport
from wasm_plugins.errors import ModuleError, SecurityViolation

__all__ = [
    "HostCall",
    "HostFunction",
    "LinkPlan",
    "link_imports",
    "u32",
]

MEMORY_IMPORT_MODULES = ("env",)
"""Import modules from which a module may import its linear memory (``--import-memory``)."""


def u32(value: int) -> int:
    """A guest i32 read as unsigned (engines hand i32 values over signed)."""
    return value & 0xFFFFFFFF


@attrs.define
class HostCall:
    """What a host function sees of the call it serves."""

    memory: GuestMemory
    plugin: str
    session: Any
    """The ABI session of the calling instance (per-instance state, such as a reported error)."""
    services: Any = None
    """What the host offers its host functions (clock, random source, stores, configuration)."""


HostImplementation = Callable[..., Any]


@attrs.frozen
class HostFunction:
    """A function the host offers under ``module.name``.

    ``implementation`` receives a :class:`HostCall` first, then the guest's arguments (i32 values
    arrive signed: read pointers with :func:`u32`), and returns ``None`` or one number. Raising a
    :class:`~wasm_plugins.errors.PluginError` stops the guest; the sandbox raises that error.
    """

    module: str
    name: str
    signature: FuncSignature
    implementation: HostImplementation
    capability: str | None = None
    """The capability a manifest must grant to import this function; ``None``: always offered."""
    description: str = ""

    @property
    def qualified_name(self) -> str:
        """``module.name``, as a module imports it."""
        return f"{self.module}.{self.name}"


@attrs.frozen
class LinkPlan:
    """How a module's imports are satisfied."""

    functions: tuple[HostFunction, ...]
    memory: MemoryImport | None

    def host_imports(self, plugin: str, session: Any, services: Any = None) -> list[HostImport]:
        """Engine imports bound to one session (one instance)."""
        return [_bind(function, plugin, session, services) for function in self.functions]


def _bind(function: HostFunction, plugin: str, session: Any, services: Any) -> HostImport:
    implementation = function.implementation
    # The engine keeps this closure for as long as the instance lives, and the session keeps the
    # instance: a strong reference to the session would be a cycle no collector can see.
    session_ref = weakref.ref(session)

    def call(memory: GuestMemory, *args: Any) -> Any:
        return implementation(HostCall(memory, plugin, session_ref(), services), *args)

    return HostImport(function.module, function.name, function.signature, call)


def link_imports(
    imports: Sequence[ExternInfo],
    offered: Iterable[HostFunction],
    granted: frozenset[str],
    *,
    plugin: str,
    memory_limit_pages: int | None,
    gated_modules: Mapping[str, str] | None = None,
    gated_functions: Mapping[str, str] | None = None,
) -> LinkPlan:
    """Match every import of a module to a host function or a host-made memory.

    :param gated_modules: import modules served by a capability as a whole (``wasi`` for
        ``wasi_snapshot_preview1``); their functions are linked elsewhere, so here they are only
        checked against ``granted``.
    :param gated_functions: functions of those modules (``module.name``) that need one more
        capability (WASI's clocks need ``clock``, its random source ``random``).
    :raises SecurityViolation: when an import needs a capability that is not granted.
    :raises ModuleError: when an import is unknown or has the wrong type.
    """
    by_name = {(f.module, f.name): f for f in offered}
    gated = dict(gated_modules or {})
    functions: list[HostFunction] = []
    linked: set[tuple[str, str]] = set()
    memory: MemoryImport | None = None
    for item in imports:
        module = item.module or ""
        where = f"{module}.{item.name}"
        if module in gated:
            capability = gated[module]
            if capability not in granted:
                raise _denied(capability, where, plugin)
            extra = (gated_functions or {}).get(where)
            if extra is not None and extra not in granted:
                raise _denied(extra, where, plugin)
            continue
        if item.kind == "memory" and module in MEMORY_IMPORT_MODULES:
            minimum = item.minimum or 0
            maximum = item.maximum
            if memory_limit_pages is not None:
                maximum = min(maximum or memory_limit_pages, memory_limit_pages)
            memory = MemoryImport(module, item.name, minimum, maximum)
            continue
        function = by_name.get((module, item.name))
        if item.kind != "func" or function is None:
            offered_here = sorted(name for (mod, name) in by_name if mod == module)
            hint = (
                f"{module} offers: {', '.join(offered_here)}"
                if offered_here
                else "remove the import, or have the host offer it through the host-function hook"
            )
            raise ModuleError(
                message=f"Invalid module: unresolved import {where} ({item.kind})",
                missing_export=None,
                suggestion=hint,
                plugin=plugin,
            )
        if function.capability is not None and function.capability not in granted:
            raise _denied(function.capability, where, plugin)
        if item.signature != function.signature:
            raise ModuleError(
                message=(
                    f"Invalid module: import {where} has type {item.signature}, "
                    f"the host function has type {function.signature}"
                ),
                suggestion="declare the import with the type given in hostapi/ABI.md",
                plugin=plugin,
            )
        # A module may import one host function under several entries: it is defined once.
        if (module, item.name) not in linked:
            linked.add((module, item.name))
            functions.append(function)
    return LinkPlan(functions=tuple(functions), memory=memory)


def _denied(capability: str, where: str, plugin: str) -> SecurityViolation:
    return SecurityViolation(
        violation_type="capability_denied",
        capability=capability,
        resource=where,
        message=(
            f"Security violation: capability {capability!r} denied - the module imports {where}"
        ),
        suggestion=(
            f"grant the {capability!r} capability in the plugin's manifest if the plugin "
            "should have it"
        ),
        plugin=plugin,
    )
