"""The library's loguru logger, imported when first used: loguru (with asyncio) costs more to
import than most of the package.

The library adds no handlers and its logs are off until the host application turns them on with
``logger.enable("wasm_plugins")``. They are turned off when loguru is first used here, unless the
application already said otherwise for ``wasm_plugins`` (or a package that holds it) by then.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["logger"]

_PACKAGE = "wasm_plugins"
_lock = threading.Lock()
_loaded: list[Any] = []


def _load() -> Any:
    if _loaded:
        return _loaded[0]
    with _lock:
        if not _loaded:
            from loguru import logger as real  # noqa: PLC0415 - start-up cost, see above

            if not _decided_by_application(real):
                real.disable(_PACKAGE)
            _loaded.append(real)
    return _loaded[0]


def _decided_by_application(real: Any) -> bool:
    """Whether ``enable`` or ``disable`` was called for this package or one that holds it
    (loguru keeps them in its core's activation list, as ``(name + ".", enabled)``)."""
    activations = getattr(getattr(real, "_core", None), "activation_list", None) or []
    return any(f"{_PACKAGE}.".startswith(str(name)) for name, _ in activations if name)


class _LazyLogger:
    """Stands for loguru's logger: every attribute is the real logger's (so loguru still sees
    the calling module's name)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(), name)


logger = cast("Logger", _LazyLogger())
