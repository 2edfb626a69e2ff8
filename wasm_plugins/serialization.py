"""The cattrs converter: errors and contexts to plain, JSON-compatible dicts and back.

Errors are a tagged union on ``kind``. Nested errors (a ContextualError's ``error``, a context's
``previous_errors``) go through the same union, so any error survives a process boundary intact.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from wasm_plugins.errors import PluginError, RecoveryPotential, Severity, error_classes

__all__ = ["error_from_dict", "error_to_dict", "make_converter"]


def make_converter() -> cattrs.Converter:
    """Build the converter that knows every error kind and the records they carry."""
    converter = cattrs.Converter()
    converter.register_unstructure_hook(datetime, datetime.isoformat)
    converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))

    for enum_class in (Severity, RecoveryPotential):
        converter.register_unstructure_hook(enum_class, lambda member: member.value)

    # The tagged union is written out rather than built with cattrs' strategy: the strategy looks
    # member hooks up through the base-class hook below, which would recurse.
    unstructure_by_class: dict[type[PluginError], Any] = {}
    structure_by_kind: dict[str, tuple[type[PluginError], Any]] = {}

    def unstructure_error(error: PluginError) -> dict[str, Any]:
        hook = unstructure_by_class.get(type(error))
        if hook is None:
            raise TypeError(f"{type(error).__name__} has no registered kind")
        return {"kind": error.kind, **hook(error)}

    def structure_error(data: Any, _: Any) -> PluginError:
        if not isinstance(data, dict):
            raise TypeError(f"an error's dict form must be a dict, not {type(data).__name__}")
        kind = data.get("kind")
        if kind not in structure_by_kind:
            known = ", ".join(sorted(structure_by_kind))
            raise ValueError(f"unknown error kind {kind!r}; known kinds: {known}")
        cls, hook = structure_by_kind[kind]
        fields = {key: value for key, value in data.items() if key != "kind"}
        error: PluginError = hook(fields, cls)
        return error

    converter.register_unstructure_hook(PluginError, unstructure_error)
    converter.register_structure_hook(PluginError, structure_error)
    for cls in error_classes():
        unstructure_by_class[cls] = make_dict_unstructure_fn(cls, converter)
        structure_by_kind[cls.kind] = (
            cls,
            make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True),
        )
    return converter


@functools.cache
def _converter() -> cattrs.Converter:
    return make_converter()


def error_to_dict(error: PluginError) -> dict[str, Any]:
    """The error as a JSON-compatible dict tagged by ``kind``."""
    data: dict[str, Any] = _converter().unstructure(error, unstructure_as=PluginError)
    return data


def error_from_dict(data: dict[str, Any]) -> PluginError:
    """Rebuild an error from :func:`error_to_dict` output.

    :raises ValueError: when ``kind`` is missing or unknown, or a field does not fit.
    """
    try:
        error: PluginError = _converter().structure(data, PluginError)
    except cattrs.BaseValidationError as exc:
        raise ValueError("not an error dict: " + "; ".join(cattrs.transform_error(exc))) from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not an error dict: {exc}") from exc
    return error
