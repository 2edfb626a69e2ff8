"""The error taxonomy: one attrs exception per kind of failure, with severity, recovery and context.

Every error made by the framework is an instance of :class:`PluginError`. Each subclass names one
``kind`` (the tag of its dict form), carries the fields that describe that kind of failure, and a
default severity and recovery potential that the classification hook may override. Errors convert to
plain dicts and back (:meth:`PluginError.to_dict`, :meth:`PluginError.from_dict`) so that they cross
process boundaries and reach logs intact.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar

import attrs

from wasm_plugins._units import format_duration, format_size
from wasm_plugins.errors._convert import error_from_dict, error_to_dict
from wasm_plugins.errors._records import (
    Diagnostic,
    ExecutionEnvironment,
    GuestFrame,
    RecoveryPotential,
    Severity,
    ValidationIssue,
)
from wasm_plugins.errors._registry import error_classes as registered_classes
from wasm_plugins.errors._registry import register

__all__ = [
    "CallCancelled",
    "CommunicationError",
    "CompilationError",
    "ConfigurationError",
    "ContextualError",
    "DeadlineExceeded",
    "ErrorContext",
    "ExecutionError",
    "HostIOError",
    "InstanceError",
    "ModuleError",
    "NetworkError",
    "PluginError",
    "ResourceLimitExceeded",
    "SecurityViolation",
    "circuit_open_error",
    "contextual_error",
    "error_classes",
]


def _declare_kind_defaults(cls: type[Any]) -> None:
    """Make a class's own ``default_severity`` and ``default_recovery`` its fields' defaults.

    Called before attrs builds the class, so the generated ``__init__`` assigns a constant: a
    default factory reading the class attribute would run on every error made, and a refused call
    makes two errors.
    """
    annotations = cls.__annotations__  # the class's own (Python 3.10 no longer inherits them)
    for field, default, field_type in (
        ("severity", "default_severity", Severity),
        ("recovery_potential", "default_recovery", RecoveryPotential),
    ):
        if default in cls.__dict__ and field not in annotations:
            annotations[field] = field_type
            setattr(cls, field, cls.__dict__[default])


_UTC = timezone.utc


def _utc_now() -> datetime:
    return datetime.now(_UTC)


# Unique across processes (a random prefix per process) and cheap within one (a counter):
# an id is made for every failed call, and uuid4 costs more than the rest of a fast fail. The
# next id is a call of C (a map's next), not of Python: every refusal makes one.
_new_execution_id: Callable[[], str] = map(
    (uuid.uuid4().hex[:16] + "%016x").__mod__, itertools.count(1)
).__next__


@attrs.frozen
class ErrorContext:
    """Everything known about the call in which an error happened."""

    execution_id: str = attrs.field(factory=_new_execution_id)
    sandbox_id: str | None = None
    plugin: str | None = None
    function: str | None = None
    timestamp: datetime = attrs.field(factory=_utc_now)
    environment: ExecutionEnvironment = attrs.field(factory=ExecutionEnvironment)
    guest_stack: tuple[GuestFrame, ...] = ()
    previous_errors: tuple[PluginError, ...] = ()
    call_id: str | None = None
    """The id of the policy call the error ended (``plugin#number``), as its events, log
    records and :class:`Outcome` carry it."""


def _frames(value: Sequence[GuestFrame]) -> tuple[GuestFrame, ...]:
    return tuple(value)


def _diagnostics(value: Sequence[Diagnostic]) -> tuple[Diagnostic, ...]:
    return tuple(value)


def _issues(value: Sequence[ValidationIssue]) -> tuple[ValidationIssue, ...]:
    return tuple(value)


# Not ``auto_exc`` (attrs' default for exceptions): it hands every field to
# ``BaseException.__init__`` for an ``args`` tuple that nothing reads, a quarter of the cost of
# making an error. ``eq=False`` keeps what matters of it: errors compare and hash by identity.
@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class PluginError(Exception):
    """Base of every error the framework raises about a plugin.

    Subclasses set ``kind``; the message is derived from the fields when it is not given.
    """

    kind: ClassVar[str] = "plugin"
    default_severity: ClassVar[Severity] = Severity.MEDIUM
    default_recovery: ClassVar[RecoveryPotential] = RecoveryPotential.NONE
    derived_fields: ClassVar[tuple[str, ...]] = ()
    """Properties computed from the fields, written to the dict form for its readers (a log
    search, another language) and computed again, not read, by :meth:`from_dict`."""

    message: str = ""
    plugin: str | None = None
    function: str | None = None
    suggestion: str | None = None
    severity: Severity = Severity.MEDIUM
    recovery_potential: RecoveryPotential = RecoveryPotential.NONE
    context: ErrorContext | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _declare_kind_defaults(cls)
        register(cls)

    def __attrs_post_init__(self) -> None:
        if not self.message:
            self.message = self._describe()

    def _describe(self) -> str:
        return self.kind.replace("_", " ").capitalize()

    def __str__(self) -> str:
        return self.message

    def with_(self, **changes: Any) -> PluginError:
        """Return a copy with some fields changed (errors are treated as values)."""
        copy = attrs.evolve(self, **changes)
        copy.__cause__ = self.__cause__
        return copy

    def describe(self) -> str:
        """The message and, when there is one, the suggestion, for people to read."""
        where = ".".join(part for part in (self.plugin, self.function) if part)
        text = f"[{self.kind}] {self.message}"
        if where:
            text += f" ({where})"
        if self.suggestion:
            text += f"\n  suggestion: {self.suggestion}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled through the dict form: the generated __init__ takes keywords only.
        return (error_from_dict, (self.to_dict(), PluginError))

    def to_dict(self) -> dict[str, Any]:
        """The error as plain JSON-compatible data, tagged by ``kind``."""
        return error_to_dict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PluginError:
        """Rebuild an error from :meth:`to_dict` output; the class is chosen by ``kind``."""
        return error_from_dict(data, PluginError)


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class CompilationError(PluginError):
    """WAT text or source does not compile."""

    kind: ClassVar[str] = "compilation"
    default_severity = Severity.MEDIUM
    default_recovery = RecoveryPotential.USER_ACTION

    diagnostics: tuple[Diagnostic, ...] = attrs.field(default=(), converter=_diagnostics)

    def _describe(self) -> str:
        if not self.diagnostics:
            return "Compilation failed"
        first = self.diagnostics[0]
        where = f" at line {first.line}, column {first.column}" if first.line is not None else ""
        return f"Compilation failed{where}: {first.message}"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class ModuleError(PluginError):
    """The bytes are not a valid module, or an export the ABI needs is missing."""

    kind: ClassVar[str] = "module"
    default_severity = Severity.MEDIUM
    default_recovery = RecoveryPotential.USER_ACTION

    validation_errors: tuple[ValidationIssue, ...] = attrs.field(default=(), converter=_issues)
    missing_export: str | None = None

    def _describe(self) -> str:
        if self.missing_export is not None:
            return f"Invalid module: missing export {self.missing_export!r}"
        if not self.validation_errors:
            return "Invalid module"
        first = self.validation_errors[0]
        where = f" at offset {first.offset}" if first.offset is not None else ""
        return f"Invalid module{where}: {first.message}"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class ExecutionError(PluginError):
    """The guest trapped (unreachable, divide by zero, out of bounds, stack exhausted) or reported
    an error through the ``error`` host import (``trap == "guest_error"``)."""

    kind: ClassVar[str] = "runtime"
    default_severity = Severity.HIGH
    default_recovery = RecoveryPotential.NONE

    trap: str = "unknown"
    guest_stack: tuple[GuestFrame, ...] = attrs.field(default=(), converter=_frames)
    details: Any = None

    def _describe(self) -> str:
        return f"Guest trapped: {self.trap.replace('_', ' ')}"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class ResourceLimitExceeded(PluginError):
    """A limit was reached: memory, fuel, input or output size, concurrency."""

    kind: ClassVar[str] = "resource_limit_exceeded"
    default_severity = Severity.HIGH
    default_recovery = RecoveryPotential.RECOVERABLE

    derived_fields = ("percentage",)

    resource: str = "unknown"
    used: int | None = None
    limit: int | None = None
    unit: str = "bytes"

    @property
    def percentage(self) -> float | None:
        """``used`` as a percentage of ``limit``, when both are known."""
        if self.used is None or not self.limit:
            return None
        return 100.0 * self.used / self.limit

    def _amount(self, value: int) -> str:
        return format_size(value) if self.unit == "bytes" else f"{value} {self.unit}"

    def _describe(self) -> str:
        parts = []
        if self.used is not None:
            parts.append(f"used {self._amount(self.used)}")
        if self.limit is not None:
            parts.append(f"limit {self._amount(self.limit)}")
        figures = f" - {', '.join(parts)}" if parts else ""
        return f"Resource limit exceeded: {self.resource}{figures}"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class SecurityViolation(PluginError):
    """A capability was denied, at link time or at run time."""

    kind: ClassVar[str] = "security_violation"
    default_severity = Severity.CRITICAL
    default_recovery = RecoveryPotential.SYSTEM_ACTION

    violation_type: str = "capability_denied"
    capability: str | None = None
    resource: str | None = None

    def _describe(self) -> str:
        what = f"capability {self.capability!r} denied" if self.capability else self.violation_type
        on = f" - {self.resource}" if self.resource else ""
        return f"Security violation: {what}{on}"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class HostIOError(PluginError):
    """A host function's file work failed."""

    kind: ClassVar[str] = "io"
    default_severity = Severity.LOW
    default_recovery = RecoveryPotential.RECOVERABLE

    operation: str = "unknown"
    path: str | None = None
    code: str | None = None

    def _describe(self) -> str:
        on = f" on {self.path}" if self.path else ""
        return f"I/O error: {self.operation}{on} failed" + (f" ({self.code})" if self.code else "")


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class NetworkError(PluginError):
    """A host function's network work failed."""

    kind: ClassVar[str] = "network"
    default_severity = Severity.LOW
    default_recovery = RecoveryPotential.RECOVERABLE

    operation: str = "unknown"
    host: str | None = None
    code: str | None = None

    def _describe(self) -> str:
        on = f" to {self.host}" if self.host else ""
        return f"Network error: {self.operation}{on} failed" + (
            f" ({self.code})" if self.code else ""
        )


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class ConfigurationError(PluginError):
    """A manifest or host setting is invalid, or an engine cannot enforce what was asked."""

    kind: ClassVar[str] = "configuration"
    default_severity = Severity.MEDIUM
    default_recovery = RecoveryPotential.USER_ACTION

    derived_fields = ("suggested_fix",)

    field: str | None = None

    @property
    def suggested_fix(self) -> str | None:
        """What to change (the same text as ``suggestion``)."""
        return self.suggestion

    def _describe(self) -> str:
        return f"Invalid configuration: {self.field}" if self.field else "Invalid configuration"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class InstanceError(PluginError):
    """Instantiation failed (a trap in the start function, a missing import) or a worker died."""

    kind: ClassVar[str] = "instance"
    default_severity = Severity.HIGH
    default_recovery = RecoveryPotential.RECOVERABLE

    state: str | None = None
    exit_signal: str | None = None
    exit_code: int | None = None

    def _describe(self) -> str:
        if self.exit_signal:
            return f"Instance failed: worker killed by {self.exit_signal}"
        return "Instance failed" + (f" while {self.state}" if self.state else "")


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class CommunicationError(PluginError):
    """Data between host and guest (or host and worker) was unusable: bad output, bad pointers."""

    kind: ClassVar[str] = "communication"
    default_severity = Severity.MEDIUM
    default_recovery = RecoveryPotential.NONE

    channel: str = "guest-output"
    direction: str = "guest-to-host"

    def _describe(self) -> str:
        return f"Communication failed on {self.channel} ({self.direction})"


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class DeadlineExceeded(PluginError):
    """A wall-clock deadline passed before the guest finished."""

    kind: ClassVar[str] = "timeout"
    default_severity = Severity.MEDIUM
    default_recovery = RecoveryPotential.RECOVERABLE

    operation: str = "call"
    duration: float | None = None
    limit: float | None = None
    partial_result: Any = None
    """Always ``None`` from the framework: under guest ABI 1 a function's result exists only once
    it returns, and a deadline stops it before (in a worker too: the worker is killed). An engine
    or host function that streams results may fill it."""

    def _describe(self) -> str:
        text = f"Timeout: {self.operation}"
        if self.limit is not None:
            text += f" exceeded {format_duration(self.limit)}"
        if self.duration is not None:
            text += f" (stopped after {format_duration(self.duration)})"
        return text


@attrs.define(
    auto_exc=False,
    eq=False,
    kw_only=True,
    on_setattr=attrs.setters.NO_OP,
)
class CallCancelled(PluginError):
    """The caller cancelled the call (an asyncio task cancelled or timed out); the guest was
    stopped. Never retried: nobody waits for the answer."""

    kind: ClassVar[str] = "cancelled"
    default_severity = Severity.LOW
    default_recovery = RecoveryPotential.NONE

    operation: str = "call"

    def _describe(self) -> str:
        return f"Cancelled: the {self.operation} was cancelled by its caller"


@attrs.define(auto_exc=False, eq=False, kw_only=True, on_setattr=attrs.setters.NO_OP)
class ContextualError(PluginError):
    """What reaches the host application when the error policy gives up: the error and its context.

    ``error`` is the last error (its own class tells the kind), and also the exception's
    ``__cause__``; ``context.previous_errors`` holds the errors of earlier attempts. ``str()``
    reads ``[kind] message (plugin.function, execution ID)`` with the inner error's kind and the
    context's execution id, the one to look for in the logs.
    """

    kind: ClassVar[str] = "contextual"
    derived_fields = ("error_kind",)

    error: PluginError
    severity: Severity = attrs.field(
        default=attrs.Factory(lambda self: self.error.severity, takes_self=True)
    )
    recovery_potential: RecoveryPotential = attrs.field(
        default=attrs.Factory(lambda self: self.error.recovery_potential, takes_self=True)
    )

    def __attrs_post_init__(self) -> None:
        if not self.message:
            self.message = self.error.message
        self.plugin = self.plugin or self.error.plugin
        self.function = self.function or self.error.function
        self.suggestion = self.suggestion or self.error.suggestion
        self.__cause__ = self.error

    @property
    def error_kind(self) -> str:
        """The kind of the underlying error."""
        return self.error.kind

    def __str__(self) -> str:
        where = ".".join(part for part in (self.plugin, self.function) if part)
        execution = f"execution {self.context.execution_id}" if self.context is not None else ""
        about = ", ".join(part for part in (where, execution) if part)
        return f"[{self.error.kind}] {self.message}" + (f" ({about})" if about else "")

    def describe(self) -> str:
        """``str()`` (the inner kind, message, plugin, function and execution id) and the
        suggestion, for people to read."""
        if self.suggestion:
            return f"{self}\n  suggestion: {self.suggestion}"
        return str(self)


def circuit_open_error(message: str, suggestion: str) -> InstanceError:
    """The refusal of an open circuit breaker.

    What ``InstanceError(state="circuit_open", message=..., suggestion=...)`` makes, field for
    field, without the generic ``__init__`` (keyword parsing, the defaults, the post-init): an
    open breaker makes one for every call it refuses.
    """
    made: InstanceError = BaseException.__new__(InstanceError)
    made.plugin = None
    made.function = None
    made.suggestion = suggestion
    made.severity = InstanceError.default_severity
    made.recovery_potential = InstanceError.default_recovery
    made.context = None
    made.state = "circuit_open"
    made.exit_signal = None
    made.exit_code = None
    made.message = message or made._describe()
    return made


def call_error_context(
    plugin: str, function: str, environment: ExecutionEnvironment, call_id: str
) -> ErrorContext:
    """The context of an error that ended a call before any attempt (a refusal).

    What ``ErrorContext(plugin=..., function=..., environment=..., call_id=...)`` makes, field
    for field, with a fresh execution id and timestamp, without the generic ``__init__``
    (keyword parsing, the defaults' checks): an open breaker's every refusal gets one.
    """
    made: ErrorContext = object.__new__(ErrorContext)
    store = _store_field
    store(made, "execution_id", _new_execution_id())
    store(made, "sandbox_id", None)
    store(made, "plugin", plugin)
    store(made, "function", function)
    store(made, "timestamp", datetime.now(_UTC))
    store(made, "environment", environment)
    store(made, "guest_stack", ())
    store(made, "previous_errors", ())
    store(made, "call_id", call_id)
    return made


_store_field = object.__setattr__
"""Sets a field of a frozen ErrorContext (what attrs' own ``__init__`` uses)."""


def contextual_error(error: PluginError, context: ErrorContext) -> ContextualError:
    """``error`` as the host application receives it once the error policy gives up.

    What ``ContextualError(error=error, context=context)`` makes, field for field, without
    the generic ``__init__`` (keyword parsing, the two defaults' factories, the post-init's
    fallbacks): the call path raises one for every call that fails, a refused one included.
    """
    made: ContextualError = BaseException.__new__(ContextualError)
    made.message = error.message
    made.plugin = error.plugin
    made.function = error.function
    made.suggestion = error.suggestion
    made.context = context
    made.error = error
    made.severity = error.severity
    made.recovery_potential = error.recovery_potential
    made.__cause__ = error
    return made


def error_classes() -> tuple[type[PluginError], ...]:
    """Every concrete error class, one per kind (``ContextualError`` included), in definition order.

    A subclass of :class:`PluginError` that declares its own ``kind`` is added when it is defined.
    """
    return tuple(cls for cls in registered_classes() if issubclass(cls, PluginError))


attrs.resolve_types(ErrorContext, globals(), locals())
