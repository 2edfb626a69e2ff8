"""Sizes and durations with units."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasm_plugins._units import format_duration, format_size, parse_duration, parse_size


class TestParseSize:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("16 MiB", 16 * 2**20),
            ("512k", 512 * 1024),
            ("1.5 GiB", 3 * 2**29),
            ("100", 100),
            (65536, 65536),
            ("2 MB", 2_000_000),
            ("10B", 10),
        ],
    )
    def test_units(self, text: str | int, expected: int) -> None:
        """Binary and decimal units are understood."""
        assert parse_size(text) == expected

    @pytest.mark.parametrize("text", ["", "lots", "-1 MiB", "16 parsecs", True, -5])
    def test_refused(self, text: object) -> None:
        """Anything else is a ValueError."""
        with pytest.raises(ValueError, match=r"size|unit"):
            parse_size(text)  # type: ignore[arg-type]

    @given(st.integers(min_value=0, max_value=2**40))
    def test_format_is_readable(self, size: int) -> None:
        """Formatted sizes name a unit and parse back to within rounding."""
        text = format_size(size)
        assert abs(parse_size(text) - size) <= max(1, size * 0.05)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("2 s", 2.0), ("200 ms", 0.2), ("1.5", 1.5), (3, 3.0), ("1 min", 60.0)],
    )
    def test_units(self, text: str | float, expected: float) -> None:
        """Seconds, milliseconds and minutes are understood."""
        assert parse_duration(text) == pytest.approx(expected)

    @pytest.mark.parametrize("text", ["0 s", "soon", "-1", 0, float("inf")])
    def test_refused(self, text: object) -> None:
        """Zero, negative, infinite or unitless nonsense is refused."""
        with pytest.raises(ValueError, match=r"duration|unit"):
            parse_duration(text)  # type: ignore[arg-type]

    def test_format(self) -> None:
        """Durations are shown in the unit a person would use."""
        assert [format_duration(s) for s in (0.00005, 0.2, 2.5)] == ["50 µs", "200 ms", "2.5 s"]
