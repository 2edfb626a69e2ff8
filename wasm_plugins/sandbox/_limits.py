"""Limits on one plugin: memory, fuel, wall-clock timeout, input and output size."""

from __future__ import annotations

from typing import Any

import attrs

from wasm_plugins._units import MiB, parse_duration, parse_size

__all__ = ["DEFAULT_MAX_INPUT", "DEFAULT_MAX_OUTPUT", "DEFAULT_MEMORY", "Limits"]

DEFAULT_MEMORY = 64 * MiB
DEFAULT_MAX_INPUT = 4 * MiB
DEFAULT_MAX_OUTPUT = 4 * MiB


def _optional_size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


def _optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _positive(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class Limits:
    """What one plugin may use per call; sizes and durations accept units (``"16 MiB"``, ``"2 s"``).

    ``None`` means no limit; ``memory`` defaults to 64 MiB and input and output to 4 MiB each,
    because an untrusted plugin should never be unbounded by default.
    """

    memory: int | None = attrs.field(
        default=DEFAULT_MEMORY, converter=_optional_size, validator=_positive
    )
    """Bytes of linear memory, per memory of the module."""
    fuel: int | None = attrs.field(default=None, converter=_optional_count)
    """Units of work per call (wasmtime's fuel: roughly one per instruction)."""
    timeout: float | None = attrs.field(default=None, converter=_optional_duration)
    """Seconds of wall-clock time per call, instantiation included."""
    max_input: int = attrs.field(
        default=DEFAULT_MAX_INPUT, converter=parse_size, validator=_positive
    )
    """Bytes of encoded input per call."""
    max_output: int = attrs.field(
        default=DEFAULT_MAX_OUTPUT, converter=parse_size, validator=_positive
    )
    """Bytes of encoded output per call."""

    def replace(self, **changes: Any) -> Limits:
        """A copy with some limits changed."""
        return attrs.evolve(self, **changes)
