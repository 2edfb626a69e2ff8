"""The cattrs converter: errors and contexts to plain, JSON-compatible dicts and back.

Errors are a tagged union on ``kind`` over the registered classes. Nested errors (a
ContextualError's ``error``, a context's ``previous_errors``) go through the same union, so any
error survives a process boundary intact.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from wasm_plugins.errors._records import RecoveryPotential, Severity
from wasm_plugins.errors._registry import error_class, error_classes

__all__ = ["error_from_dict", "error_to_dict", "make_converter"]

_Error = TypeVar("_Error", bound=BaseException)


def _is_error_union(annotation: Any) -> bool:
    # A field typed with an error class (the base class, usually) holds any registered kind
    # derived from it.
    return (
        isinstance(annotation, type)
        and issubclass(annotation, BaseException)
        and any(issubclass(cls, annotation) for cls in error_classes())
    )


def make_converter() -> cattrs.Converter:
    """Build the converter that knows every registered error kind and the records they carry."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
    # A ``str`` enumeration would otherwise pass through as the member itself.
    for enumeration in (Severity, RecoveryPotential):
        converter.register_unstructure_hook(enumeration, lambda member: member.value)

    # The tagged union is written out rather than built with cattrs' strategy: the strategy looks
    # member hooks up through the union hook below, which would recurse. Member hooks are made on
    # first use, so a kind registered after the converter was built converts too.
    unstructure_by_class: dict[type[BaseException], Callable[[Any], dict[str, Any]]] = {}
    structure_by_class: dict[type[BaseException], Callable[[Any, Any], Any]] = {}

    def unstructure_member(cls: type[BaseException]) -> Callable[[Any], dict[str, Any]]:
        hook = unstructure_by_class.get(cls)
        if hook is None:
            hook = unstructure_by_class[cls] = make_dict_unstructure_fn(cls, converter)
        return hook

    def structure_member(cls: type[BaseException]) -> Callable[[Any, Any], Any]:
        hook = structure_by_class.get(cls)
        if hook is None:
            hook = structure_by_class[cls] = make_dict_structure_fn(
                cls, converter, _cattrs_forbid_extra_keys=True
            )
        return hook

    def unstructure_error(error: BaseException) -> dict[str, Any]:
        kind = getattr(error, "kind", None)
        if not isinstance(kind, str) or error_class(kind) is not type(error):
            raise TypeError(f"{type(error).__name__} has no registered kind")
        data = {"kind": kind, **unstructure_member(type(error))(error)}
        for name in getattr(error, "derived_fields", ()):
            data[name] = converter.unstructure(getattr(error, name))
        return data

    def structure_error(data: Any, annotation: type[BaseException]) -> BaseException:
        if not isinstance(data, dict):
            raise TypeError(f"an error's dict form must be a dict, not {type(data).__name__}")
        kind = data.get("kind")
        cls = error_class(kind) if isinstance(kind, str) else None
        if cls is None or not issubclass(cls, annotation):
            known = ", ".join(
                sorted(
                    str(getattr(c, "kind", ""))
                    for c in error_classes()
                    if issubclass(c, annotation)
                )
            )
            raise ValueError(f"unknown error kind {kind!r}; known kinds: {known}")
        derived = {"kind", *getattr(cls, "derived_fields", ())}
        fields = {key: value for key, value in data.items() if key not in derived}
        error: BaseException = structure_member(cls)(fields, cls)
        return error

    converter.register_unstructure_hook_func(_is_error_union, unstructure_error)
    converter.register_structure_hook_func(_is_error_union, structure_error)
    return converter


@functools.cache
def _converter() -> cattrs.Converter:
    return make_converter()


def error_to_dict(error: BaseException) -> dict[str, Any]:
    """The error as a JSON-compatible dict tagged by ``kind``.

    :raises TypeError: when the error's class is not registered under its kind.
    """
    data: dict[str, Any] = _converter().unstructure(error, unstructure_as=BaseException)
    return data


def error_from_dict(data: dict[str, Any], base: type[_Error]) -> _Error:
    """Rebuild an error of a kind derived from ``base`` from :func:`error_to_dict` output.

    :raises ValueError: when ``kind`` is missing or unknown, or a field does not fit.
    """
    try:
        error: _Error = _converter().structure(data, base)
    except cattrs.BaseValidationError as exc:
        raise ValueError("not an error dict: " + "; ".join(cattrs.transform_error(exc))) from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an error dict: {exc}") from exc
    return error


_SHARED_FIELDS = frozenset(
    {"kind", "message", "plugin", "function", "suggestion", "context", "severity"}
)
"""Fields every error has; a log record or a span names them once, outside the error's own."""


def error_log_fields(error: BaseException) -> dict[str, Any]:
    """The fields a log record or a span carries of an error, flat and JSON-compatible: its kind,
    message, severity and recovery potential, its own fields (``used`` and ``limit``, ``trap``,
    ``capability``...), and from its context the execution id, the call id, the engine, the
    isolation, the attempt and the guest's stack (``"function @ 0xoffset"``, innermost first).
    """
    data = error_to_dict(error)
    fields: dict[str, Any] = {
        "kind": data["kind"],
        "error": data["message"],
        "severity": data["severity"],
    }
    for name, value in data.items():
        if name not in _SHARED_FIELDS and value is not None:
            fields[name] = value
    context = getattr(error, "context", None)
    if context is not None:
        environment = context.environment
        fields.update(
            execution_id=context.execution_id,
            engine=environment.engine,
            isolation=environment.isolation,
            attempt=environment.attempt,
        )
        if context.call_id is not None:
            fields["call_id"] = context.call_id
        if context.guest_stack:
            fields["guest_stack"] = [str(frame) for frame in context.guest_stack]
    return fields
