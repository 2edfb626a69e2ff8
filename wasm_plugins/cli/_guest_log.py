"""``call --log LEVEL``: the guest's log lines and captured WASI output on stderr, escaped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, TextIO

from wasm_plugins._escape import escape
from wasm_plugins._log import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = ["LOG_LEVELS", "guest_log"]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
_PACKAGE = "wasm_plugins"
_LOGURU_DEFAULT_HANDLER = 0


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
    # framework's own records too. The sandbox escapes what a guest logs; escaping again here
    # changes nothing in escaped text and covers records from anywhere else.
    with suppress(ValueError):
        logger.remove(_LOGURU_DEFAULT_HANDLER)
    handler = logger.add(write, level=level, filter=_from_guest, format="{message}")
    logger.enable(_PACKAGE)
    try:
        yield
    finally:
        logger.disable(_PACKAGE)
        logger.remove(handler)
