"""``call --log LEVEL``: the guest's log lines and captured WASI output on stderr, escaped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["LOG_LEVELS", "escape", "guest_log"]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
_PACKAGE = "wasm_plugins"
_LOGURU_DEFAULT_HANDLER = 0


def escape(text: str) -> str:
    """The text with every character that a terminal could act on shown as an escape instead
    (``\\x1b``, ``\\n``, ``\\u202e``...), and backslashes doubled so that the escapes are
    unambiguous: a plugin's words reach the user's terminal, never its commands."""
    return "".join(char if char.isprintable() and char != "\\" else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    return "\\\\" if char == "\\" else repr(char)[1:-1]


def _from_guest(record: Record) -> bool:
    return record["extra"].get("source") == "guest"


@contextmanager
def guest_log(level: str | None, stream: TextIO) -> Iterator[None]:
    """While open, write the guest's records at ``level`` and above to ``stream``, one line each:
    ``plugin LEVEL: message``. ``None`` shows nothing (the library's logging stays off)."""
    if level is None:
        yield
        return

    def write(message: Message) -> None:
        record = message.record
        plugin = escape(str(record["extra"].get("plugin", "?")))
        stream.write(f"{plugin} {record['level'].name}: {escape(record['message'])}\n")
        stream.flush()

    # The command line owns this process's logging: loguru's default handler would print the
    # framework's own records, and the guest's unescaped.
    with suppress(ValueError):
        logger.remove(_LOGURU_DEFAULT_HANDLER)
    handler = logger.add(write, level=level, filter=_from_guest, format="{message}")
    logger.enable(_PACKAGE)
    try:
        yield
    finally:
        logger.disable(_PACKAGE)
        logger.remove(handler)
