"""The plain records errors carry: severity, recovery potential, guest frames, diagnostics."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "Diagnostic",
    "ExecutionEnvironment",
    "GuestFrame",
    "RecoveryPotential",
    "Severity",
    "ValidationIssue",
]


class Severity(str, enum.Enum):
    """How bad a failure is for the host application."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class RecoveryPotential(str, enum.Enum):
    """What could make the same call succeed."""

    NONE = "none"
    """Nothing: the same input fails the same way."""
    RECOVERABLE = "recoverable"
    """A retry, possibly with other limits, may succeed."""
    USER_ACTION = "user_action"
    """The plugin author or the host configuration must change something."""
    SYSTEM_ACTION = "system_action"
    """An operator must look at it (a security violation, for instance)."""


@attrs.frozen
class GuestFrame:
    """One frame of a guest's stack at the time of a trap, innermost first."""

    function: str | None = None
    function_index: int | None = None
    module_offset: int | None = None

    def __str__(self) -> str:
        name = self.function or (
            f"<function {self.function_index}>" if self.function_index is not None else "<unknown>"
        )
        if self.module_offset is None:
            return name
        return f"{name} @ 0x{self.module_offset:x}"


@attrs.frozen
class Diagnostic:
    """One compiler message about WAT text or source."""

    message: str
    level: str = "error"
    line: int | None = None
    column: int | None = None
    suggestion: str | None = None


@attrs.frozen
class ValidationIssue:
    """One reason a module's bytes were refused, with the byte offset where it was found."""

    message: str
    offset: int | None = None


@attrs.frozen
class ExecutionEnvironment:
    """Where a failing call ran: the framework's fixed fields, and ``extra`` for the host's own."""

    engine: str | None = None
    isolation: str | None = None
    input_size: int | None = None
    attempt: int = 1
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, hash=False)
    """The host application's own fields (a request id, a tenant, a deployment...), JSON-compatible,
    kept through the dict form. A copy is taken; :meth:`with_extra` makes a record with more."""

    def with_extra(self, **fields: Any) -> ExecutionEnvironment:
        """A copy with ``fields`` added to ``extra``."""
        return attrs.evolve(self, extra={**self.extra, **fields})
