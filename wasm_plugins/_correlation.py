"""Correlation: the call and attempt running in this context, and the caller's own fields.

Two context variables, read by whatever reports on a call (log records, errors, events, spans,
Sentry): the attempt in progress, set by the policy around each attempt, and the fields the host
application attaches with :func:`call_context` (a request id, a tenant, a trace id of its own).
Context variables follow the call into ``asyncio.to_thread`` and into host functions that a
worker process asks the host to run, so one id follows a call wherever it goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "ATTEMPT",
    "CALLER",
    "CurrentAttempt",
    "attempt_id",
    "call_context",
    "caller_fields",
    "correlation_fields",
    "current_attempt",
    "running_attempt",
]


class CurrentAttempt(Protocol):
    """What the policy publishes of the attempt in progress."""

    plugin: str
    function: str
    attempt: int

    @property
    def call_id(self) -> str:
        """The call's id."""


_EMPTY: Mapping[str, Any] = {}
CALLER: ContextVar[Mapping[str, Any]] = ContextVar("wasm_plugins_caller", default=_EMPTY)
"""The caller's fields (:func:`caller_fields`); the path of a refusal reads them with
``CALLER.get()``, a call of C, where the function is one of Python."""
ATTEMPT: ContextVar[CurrentAttempt | None] = ContextVar("wasm_plugins_attempt", default=None)
"""The attempt in progress; the policy sets and resets it itself around each attempt (a context
manager would cost more than the variable)."""


def attempt_id(call_id: str, attempt: int) -> str:
    """The id of one attempt of a call: ``call_id/attempt``."""
    return f"{call_id}/{attempt}"


@contextlib.contextmanager
def call_context(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Attach the caller's own fields (JSON-compatible values) to every call made inside the
    ``with`` block: they are in the calls' log records, in their errors'
    ``context.environment.extra``, on their spans and in their Sentry events. Blocks nest; an
    inner field of the same name wins.

    ``with call_context(request_id=request.id): host.call("text-tools", "word_count", text)``
    """
    merged = {**CALLER.get(), **fields}
    token = CALLER.set(merged)
    try:
        yield merged
    finally:
        CALLER.reset(token)


def caller_fields() -> Mapping[str, Any]:
    """The fields :func:`call_context` attached in this context (empty outside one)."""
    return CALLER.get()


def current_attempt() -> CurrentAttempt | None:
    """The attempt running in this context, or None outside a call."""
    return ATTEMPT.get()


@contextlib.contextmanager
def running_attempt(attempt: CurrentAttempt) -> Iterator[None]:
    """Publish ``attempt`` as the one in progress for the ``with`` block."""
    token = ATTEMPT.set(attempt)
    try:
        yield
    finally:
        ATTEMPT.reset(token)


def correlation_fields() -> dict[str, Any]:
    """What a log record made during a call carries to name it: ``call_id``, ``attempt_id`` and
    ``function`` of the attempt in progress (none outside a call), and the caller's fields."""
    attempt = ATTEMPT.get()
    if attempt is None:
        return dict(CALLER.get())
    call_id = attempt.call_id
    return {
        "call_id": call_id,
        "attempt_id": attempt_id(call_id, attempt.attempt),
        "function": attempt.function,
        **CALLER.get(),
    }
