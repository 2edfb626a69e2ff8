"""The error classes by kind: a class that declares its own ``kind`` adds itself when defined."""

from __future__ import annotations

__all__ = ["error_class", "error_classes", "register"]

_CLASSES: dict[str, type[BaseException]] = {}


def register(cls: type[BaseException]) -> None:
    """Record ``cls`` under the ``kind`` it declares (a class that inherits its kind is skipped).

    :raises TypeError: when another class already has that kind.
    """
    kind = vars(cls).get("kind")
    if not isinstance(kind, str):
        return
    known = _CLASSES.get(kind)
    # attrs builds a slotted class as a second class with the same name, so the name, not the
    # object, tells a class being finished from another class taking the kind.
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(
            f"{cls.__qualname__} declares kind {kind!r}, which is already "
            f"{known.__module__}.{known.__qualname__}'s; choose another kind"
        )
    _CLASSES[kind] = cls


def error_class(kind: str) -> type[BaseException] | None:
    """The class registered under ``kind``, or ``None``."""
    return _CLASSES.get(kind)


def error_classes() -> tuple[type[BaseException], ...]:
    """Every registered class, in the order they were defined."""
    return tuple(_CLASSES.values())
