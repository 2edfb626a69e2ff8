"""Escaping of text a guest or a plugin's author controls, before it reaches a terminal or a log.

A module's export names, a guest's error message, a manifest's description: any of them may hold
terminal escapes (``\\x1b[2J``), carriage returns that overwrite what was printed before, newlines
that forge a log line, or bidirectional overrides that reorder what a reader sees. ``escape``
shows every character that Python does not count as printable (controls, format characters such
as bidirectional overrides, separators other than the space, unassigned code points) as a
Python-style escape, so it is seen and never interpreted.
"""

from __future__ import annotations

from typing import Any

__all__ = ["escape", "escape_lines"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(character: str) -> str:
    if character.isprintable():
        return character
    named = _NAMED.get(character)
    if named is not None:
        return named
    code = ord(character)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(value: Any) -> str:
    """``value`` as text with every non-printable character shown as an escape.

    >>> escape("ok\\x1b[31m red\\n")
    'ok\\\\x1b[31m red\\\\n'
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(map(_shown, text))


def escape_lines(value: Any) -> str:
    """Like :func:`escape`, but newlines stay (for multi-line text printed as a block)."""
    text = value if isinstance(value, str) else str(value)
    return "\n".join(escape(line) for line in text.split("\n"))
