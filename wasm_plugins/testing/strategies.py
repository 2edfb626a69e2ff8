"""Hypothesis strategies for the framework's data: every error kind, contexts, JSON inputs."""

from __future__ import annotations

from datetime import timezone
from typing import Any

from hypothesis import strategies as st

from wasm_plugins.errors import (
    CommunicationError,
    CompilationError,
    ConfigurationError,
    ContextualError,
    DeadlineExceeded,
    Diagnostic,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    GuestFrame,
    HostIOError,
    InstanceError,
    ModuleError,
    NetworkError,
    PluginError,
    RecoveryPotential,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    ValidationIssue,
)

__all__ = ["error_contexts", "errors", "json_values"]

_names = st.text(min_size=1, max_size=20)
_optional_names = st.none() | _names
_counts = st.integers(min_value=0, max_value=2**40)
_optional_counts = st.none() | _counts
_seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


def json_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    """Values that survive a JSON round trip unchanged (no NaN, no infinities, no tuples)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


_frames = st.builds(
    GuestFrame,
    function=_optional_names,
    function_index=_optional_counts,
    module_offset=_optional_counts,
)

_common: dict[str, st.SearchStrategy[Any]] = {
    "message": st.text(max_size=60),
    "plugin": _optional_names,
    "function": _optional_names,
    "suggestion": st.none() | st.text(max_size=40),
    "severity": st.sampled_from(Severity),
    "recovery_potential": st.sampled_from(RecoveryPotential),
}

_specific: dict[type[PluginError], dict[str, st.SearchStrategy[Any]]] = {
    CompilationError: {
        "diagnostics": st.lists(
            st.builds(
                Diagnostic,
                message=st.text(max_size=30),
                level=st.sampled_from(["error", "warning"]),
                line=_optional_counts,
                column=_optional_counts,
                suggestion=st.none() | st.text(max_size=20),
            ),
            max_size=3,
        ).map(tuple)
    },
    ModuleError: {
        "validation_errors": st.lists(
            st.builds(ValidationIssue, message=st.text(max_size=30), offset=_optional_counts),
            max_size=3,
        ).map(tuple),
        "missing_export": _optional_names,
    },
    ExecutionError: {
        "trap": _names,
        "guest_stack": st.lists(_frames, max_size=4).map(tuple),
        "details": json_values(),
    },
    ResourceLimitExceeded: {
        "resource": st.sampled_from(["memory", "fuel", "input", "output", "concurrency"]),
        "used": _optional_counts,
        "limit": _optional_counts,
        "unit": st.sampled_from(["bytes", "units", "calls"]),
    },
    SecurityViolation: {
        "violation_type": _names,
        "capability": _optional_names,
        "resource": _optional_names,
    },
    HostIOError: {"operation": _names, "path": _optional_names, "code": _optional_names},
    NetworkError: {"operation": _names, "host": _optional_names, "code": _optional_names},
    ConfigurationError: {"field": _optional_names},
    InstanceError: {
        "state": _optional_names,
        "exit_signal": _optional_names,
        "exit_code": st.none() | st.integers(-255, 255),
    },
    CommunicationError: {"channel": _names, "direction": _names},
    DeadlineExceeded: {
        "operation": _names,
        "duration": st.none() | _seconds,
        "limit": st.none() | _seconds,
        "partial_result": json_values(),
    },
}


def error_contexts(
    previous: st.SearchStrategy[tuple[PluginError, ...]] | None = None,
) -> st.SearchStrategy[ErrorContext]:
    """Contexts with every field filled; ``previous`` draws the earlier attempts' errors."""
    return st.builds(
        ErrorContext,
        execution_id=st.uuids().map(lambda u: u.hex),
        sandbox_id=_optional_names,
        plugin=_optional_names,
        function=_optional_names,
        timestamp=st.datetimes(timezones=st.just(timezone.utc)),
        environment=st.builds(
            ExecutionEnvironment,
            engine=st.none() | st.sampled_from(["wasmer", "wasmtime"]),
            isolation=st.none() | st.sampled_from(["in-process", "process"]),
            input_size=_optional_counts,
            attempt=st.integers(1, 20),
        ),
        guest_stack=st.lists(_frames, max_size=3).map(tuple),
        previous_errors=previous if previous is not None else st.just(()),
    )


def _plain_errors(
    cls: type[PluginError], context: st.SearchStrategy[ErrorContext | None]
) -> st.SearchStrategy[PluginError]:
    return st.builds(cls, context=context, **_common, **_specific[cls])


def errors(kind: str | None = None, *, with_context: bool = True) -> st.SearchStrategy[PluginError]:
    """Errors of one ``kind`` (or of every kind), with contexts holding earlier errors."""
    classes = [cls for cls in _specific if kind is None or cls.kind == kind]
    any_simple = st.one_of([_plain_errors(cls, st.none()) for cls in _specific])
    context: st.SearchStrategy[ErrorContext | None] = (
        st.none() | error_contexts(st.lists(any_simple, max_size=2).map(tuple))
        if with_context
        else st.none()
    )
    strategies = [_plain_errors(cls, context) for cls in classes]
    if kind in (None, ContextualError.kind):
        strategies.append(
            st.builds(
                ContextualError,
                error=any_simple,
                context=context,
                **_common,
            )
        )
    return st.one_of(strategies)
