"""Sizes and durations with units: parsing ("16 MiB", "200 ms") and formatting for messages."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MAX_DURATION = (2**31 - 1) / 1000
"""The longest duration accepted (about 24.8 days): operating-system waits (``poll``, socket
timeouts) take milliseconds in a signed 32-bit number, and a longer limit means none at all."""
MAX_SIZE = 2**48
"""The largest size accepted (256 TiB): engines take sizes in 64-bit fields that a larger number
would wrap round, and no plugin limit needs more."""
MAX_COUNT = 2**63 - 1
"""The largest count accepted (fuel units): engines keep counts in 64-bit fields."""

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "k": KiB,
    "m": MiB,
    "g": GiB,
}

_DURATION_UNITS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}

_QUANTITY = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Zµ]*)\s*$")


def parse_size(value: str | int) -> int:
    """Parse a size such as ``"16 MiB"``, ``"512k"`` or ``65536`` into bytes.

    :raises ValueError: when the text is not a non-negative size with a known unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return _size_in_range(value, value)
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"expected a size such as '16 MiB', got {value!r}")
    unit = match["unit"].lower() or "b"
    if unit not in _SIZE_UNITS:
        known = ", ".join(sorted({"B", "KiB", "MiB", "GiB", "kB", "MB", "GB"}))
        raise ValueError(f"unknown size unit {match['unit']!r} in {value!r}; use one of {known}")
    return _size_in_range(int(float(match["number"]) * _SIZE_UNITS[unit]), value)


def _size_in_range(size: int, value: str | int) -> int:
    if size > MAX_SIZE:
        raise ValueError(f"a size cannot exceed {MAX_SIZE} bytes (256 TiB), got {value!r}")
    return size


def parse_duration(value: str | float) -> float:
    """Parse a duration such as ``"2 s"``, ``"200 ms"`` or ``1.5`` (seconds) into seconds.

    :raises ValueError: when the text is not a positive finite duration with a known unit.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _QUANTITY.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as '2 s' or '200 ms', got {value!r}")
        unit = match["unit"].lower() or "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(
                f"unknown duration unit {match['unit']!r} in {value!r}; use us, ms, s, min or h"
            )
        seconds = float(match["number"]) * _DURATION_UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive and finite, got {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"a duration cannot exceed {MAX_DURATION:.0f} s (2**31 - 1 ms), got {value!r}"
        )
    return seconds


def parse_count(value: object) -> int:
    """Check a positive whole count such as fuel units.

    :raises ValueError: when the value is not a whole number from 1 to :data:`MAX_COUNT`.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    if value > MAX_COUNT:
        raise ValueError(f"a count cannot exceed {MAX_COUNT} (2**63 - 1), got {value!r}")
    return value


def format_size(size: int) -> str:
    """Format bytes with the largest binary unit that keeps the number readable: ``70 MiB``."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            number = size / factor
            text = f"{number:.0f}" if number == int(number) else f"{number:.1f}"
            return f"{text} {unit}"
    return f"{size} B"


def format_duration(seconds: float) -> str:
    """Format seconds as ``850 µs``, ``200 ms`` or ``2.5 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.3g} s"
