"""The bridge from the framework's loguru records to the standard library's ``logging``.

The framework logs through loguru, disabled by default (a library adds no handlers). An
application that uses ``logging`` calls :func:`forward_to_logging` once: every record of
``wasm_plugins`` then reaches the ``logging`` logger of the same module name
(``wasm_plugins.builtin.reporters``...), with each bound field (``call_id``, ``plugin``,
``function``, ``kind``, ``used``, ``limit``, ``trap``, the caller's fields...) as an attribute of
the ``LogRecord``, and all of them together in ``record.wasm_plugins``.
"""

from __future__ import annotations

import logging
from typing import Any

from wasm_plugins._log import logger  # loguru, imported when first used

__all__ = ["EXTRA_ATTRIBUTE", "forward_to_logging"]

EXTRA_ATTRIBUTE = "wasm_plugins"
"""The ``LogRecord`` attribute holding every bound field as a dict."""

_RESERVED = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"}
)
"""``LogRecord`` attributes a field must not replace; such a field keeps the dict only."""


def _forward(message: Any) -> None:
    record = message.record
    target = logging.getLogger(record["name"] or "wasm_plugins")
    level = record["level"].no
    if not target.isEnabledFor(level):
        return
    extra: dict[str, Any] = dict(record["extra"])
    fields = {name: value for name, value in extra.items() if name not in _RESERVED}
    fields[EXTRA_ATTRIBUTE] = extra
    exception = record["exception"]
    made = target.makeRecord(
        target.name,
        level,
        record["file"].path,
        record["line"],
        record["message"],
        (),
        (exception.type, exception.value, exception.traceback) if exception else None,
        record["function"],
        fields,
    )
    target.handle(made)


def forward_to_logging(level: str | int = "DEBUG") -> int:
    """Send the framework's records at ``level`` and above to ``logging`` (and enable them);
    the loguru handler's id, for ``logger.remove(id)``. ``logging``'s own levels and handlers
    then decide what is written."""
    logger.enable("wasm_plugins")
    handler: int = logger.add(_forward, level=level, filter="wasm_plugins", format="{message}")
    return handler
