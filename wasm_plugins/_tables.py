"""Plain-text layout for a terminal: aligned tables and ``label  value`` lines, 100 columns wide."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

__all__ = ["WIDTH", "fields", "table"]

WIDTH = 100
"""Tables and rows are laid out to stay readable in 100 columns."""


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "", width: int = WIDTH
) -> list[str]:
    """Aligned plain-text columns; the last column wraps so that lines fit in ``width``."""
    body = [list(row) for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in body)]) for i, header in enumerate(headers)
    ]
    fixed = len(indent) + sum(widths[:-1]) + 2 * (len(headers) - 1)
    room = max(width - fixed, 24)
    lines = []
    for row in [list(headers), *body]:
        left = "  ".join(cell.ljust(size) for cell, size in zip(row[:-1], widths, strict=False))
        wrapped = textwrap.wrap(row[-1], room, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{left}  {wrapped[0]}".rstrip() if left else indent + wrapped[0])
        lines.extend(" " * fixed + more for more in wrapped[1:])
    return lines


def fields(pairs: Iterable[tuple[str, str]], indent: str = "  ", width: int = WIDTH) -> list[str]:
    """``label  value`` lines with aligned values; long values wrap under themselves."""
    items = list(pairs)
    size = max((len(label) for label, _ in items), default=0)
    lines = []
    for label, value in items:
        room = max(width - len(indent) - size - 2, 24)
        wrapped = textwrap.wrap(value, room, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{label.ljust(size)}  {wrapped[0]}")
        lines.extend(f"{indent}{' ' * size}  {more}" for more in wrapped[1:])
    return lines
