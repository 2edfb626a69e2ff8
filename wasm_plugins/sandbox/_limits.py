"""Limits on one plugin: memory, tables, module size, fuel, wall-clock timeout, input and output."""

from __future__ import annotations

from typing import Any

import attrs

from wasm_plugins._units import MiB, parse_duration, parse_size

__all__ = [
    "DEFAULT_MAX_INPUT",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MEMORY",
    "DEFAULT_MODULE_SIZE",
    "DEFAULT_TABLE",
    "Limits",
]

DEFAULT_MEMORY = 64 * MiB
DEFAULT_MAX_INPUT = 4 * MiB
DEFAULT_MAX_OUTPUT = 4 * MiB
DEFAULT_TABLE = 100_000
"""Table elements: ten times what large compiled programs use, under 2 MB of engine memory."""
DEFAULT_MODULE_SIZE = 32 * MiB
"""Bytes of binary module: above the largest plugins seen, below a compile that takes minutes."""


def _optional_size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _optional_count(value: Any) -> int | None:
    return None if value is None else _count(value)


def _positive(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class Limits:
    """What one plugin may use per call; sizes and durations accept units (``"16 MiB"``, ``"2 s"``).

    ``None`` means no limit; ``memory`` defaults to 64 MiB, input and output to 4 MiB each,
    ``table`` to 100 000 elements and ``module_size`` to 32 MiB, because an untrusted plugin
    should never be unbounded by default.
    """

    memory: int | None = attrs.field(
        default=DEFAULT_MEMORY, converter=_optional_size, validator=_positive
    )
    """Bytes of linear memory, all memories of the module together."""
    fuel: int | None = attrs.field(default=None, converter=_optional_count)
    """Units of work per call (wasmtime's fuel: roughly one per instruction), shared by every guest
    entry of the call: the start function of an instance made for it, ``wp_alloc``, ``wp_free``
    and the function."""
    timeout: float | None = attrs.field(default=None, converter=_optional_duration)
    """Seconds of wall-clock time per call, shared by every guest entry of the call like fuel."""
    max_input: int = attrs.field(
        default=DEFAULT_MAX_INPUT, converter=parse_size, validator=_positive
    )
    """Bytes of encoded input per call."""
    max_output: int = attrs.field(
        default=DEFAULT_MAX_OUTPUT, converter=parse_size, validator=_positive
    )
    """Bytes of encoded output per call."""
    table: int | None = attrs.field(default=DEFAULT_TABLE, converter=_optional_count)
    """Elements of all the tables the module defines, together."""
    module_size: int | None = attrs.field(
        default=DEFAULT_MODULE_SIZE, converter=_optional_size, validator=_positive
    )
    """Bytes of the binary module, checked before any engine reads it."""
    memories: int = attrs.field(default=1, converter=_count)
    """Linear memories a module may have; more than one needs an engine that runs them."""

    def replace(self, **changes: Any) -> Limits:
        """A copy with some limits changed."""
        return attrs.evolve(self, **changes)
