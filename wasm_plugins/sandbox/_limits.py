"""Limits on one plugin: memory, tables, module size, fuel, wall-clock timeout, input and output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from wasm_plugins._units import MiB, parse_count, parse_duration, parse_size
from wasm_plugins.errors import ConfigurationError

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


def _convert(name: str, parse: Callable[[Any], Any], value: Any) -> Any:
    """Parse a limit, or raise a ConfigurationError naming it (caused by the ValueError that
    says what is wrong)."""
    try:
        parsed = parse(value)
        if parsed <= 0:
            raise ValueError(f"must be positive, got {value!r}")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            field=f"limits.{name}",
            message=f"Invalid configuration: limits.{name} - {exc}",
            suggestion='sizes take units ("16 MiB"), durations too ("2 s"); fuel is a whole number',
        ) from exc
    return parsed


def _memory(value: Any) -> int | None:
    return None if value is None else int(_convert("memory", parse_size, value))


def _fuel(value: Any) -> int | None:
    return None if value is None else int(_convert("fuel", parse_count, value))


def _timeout(value: Any) -> float | None:
    return None if value is None else float(_convert("timeout", parse_duration, value))


def _max_input(value: Any) -> int:
    return int(_convert("max_input", parse_size, value))


def _max_output(value: Any) -> int:
    return int(_convert("max_output", parse_size, value))


def _table(value: Any) -> int | None:
    return None if value is None else int(_convert("table", parse_count, value))


def _module_size(value: Any) -> int | None:
    return None if value is None else int(_convert("module_size", parse_size, value))


def _memories(value: Any) -> int:
    return int(_convert("memories", parse_count, value))


@attrs.frozen
class Limits:
    """What one plugin may use per call; sizes and durations accept units (``"16 MiB"``, ``"2 s"``).

    ``None`` means no limit; ``memory`` defaults to 64 MiB, input and output to 4 MiB each,
    ``table`` to 100 000 elements and ``module_size`` to 32 MiB, because an untrusted plugin
    should never be unbounded by default. A value out of range raises a ConfigurationError
    naming the limit.
    """

    memory: int | None = attrs.field(default=DEFAULT_MEMORY, converter=_memory)
    """Bytes of linear memory, all memories of the module together."""
    fuel: int | None = attrs.field(default=None, converter=_fuel)
    """Units of work per call (wasmtime's fuel: roughly one per instruction), shared by every guest
    entry of the call: the start function of an instance made for it, ``wp_alloc``, ``wp_free``
    and the function."""
    timeout: float | None = attrs.field(default=None, converter=_timeout)
    """Seconds of wall-clock time per call, shared by every guest entry of the call like fuel."""
    max_input: int = attrs.field(default=DEFAULT_MAX_INPUT, converter=_max_input)
    """Bytes of encoded input per call."""
    max_output: int = attrs.field(default=DEFAULT_MAX_OUTPUT, converter=_max_output)
    """Bytes of encoded output per call."""
    table: int | None = attrs.field(default=DEFAULT_TABLE, converter=_table)
    """Elements of all the tables the module defines, together."""
    module_size: int | None = attrs.field(default=DEFAULT_MODULE_SIZE, converter=_module_size)
    """Bytes of the binary module, checked before any engine reads it."""
    memories: int = attrs.field(default=1, converter=_memories)
    """Linear memories a module may have; more than one needs an engine that runs them."""

    def replace(self, **changes: Any) -> Limits:
        """A copy with some limits changed."""
        return attrs.evolve(self, **changes)
