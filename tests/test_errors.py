"""The error taxonomy: messages, defaults, and the dict and JSON round trip of every kind."""

from __future__ import annotations

import ast
import json
import pickle
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wasm_plugins.errors
from wasm_plugins.errors import (
    ConfigurationError,
    ContextualError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    HostIOError,
    InstanceError,
    NetworkError,
    PluginError,
    RecoveryPotential,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    _registry,
    call_error_context,
    circuit_open_error,
    contextual_error,
    error_classes,
)
from wasm_plugins.testing.strategies import errors

ERRORS_PACKAGE = Path(wasm_plugins.errors.__file__).parent


class TestTaxonomy:
    def test_one_class_per_kind(self) -> None:
        """Every kind is used by exactly one class, all derived from PluginError."""
        kinds = [cls.kind for cls in error_classes()]
        assert len(kinds) == len(set(kinds))
        assert {
            "compilation",
            "module",
            "runtime",
            "resource_limit_exceeded",
            "security_violation",
            "io",
            "network",
            "configuration",
            "instance",
            "communication",
            "timeout",
        } <= set(kinds)
        assert all(issubclass(cls, PluginError) for cls in error_classes())

    def test_no_builtin_shadowed(self) -> None:
        """No error class has the name of a Python builtin."""
        import builtins

        assert not {cls.__name__ for cls in error_classes()} & set(dir(builtins))

    def test_defaults_per_kind(self) -> None:
        """Severity and recovery potential default per kind, as the design table says."""
        assert ResourceLimitExceeded().severity is Severity.HIGH
        assert ResourceLimitExceeded().recovery_potential is RecoveryPotential.RECOVERABLE
        assert SecurityViolation().severity is Severity.CRITICAL
        assert ExecutionError().recovery_potential is RecoveryPotential.NONE
        assert ConfigurationError().recovery_potential is RecoveryPotential.USER_ACTION

    def test_resource_message_format(self) -> None:
        """Resource messages read 'Resource limit exceeded: memory - used 70 MiB, limit 64 MiB'."""
        error = ResourceLimitExceeded(resource="memory", used=70 * 2**20, limit=64 * 2**20)
        assert str(error) == "Resource limit exceeded: memory - used 70 MiB, limit 64 MiB"
        assert error.percentage == pytest.approx(109.375)

    def test_timeout_message(self) -> None:
        """A timeout names the limit and how long the call ran."""
        error = DeadlineExceeded(operation="call", limit=0.2, duration=0.2034)
        assert str(error) == "Timeout: call exceeded 200 ms (stopped after 203 ms)"

    def test_contextual_error_takes_the_error_fields(self) -> None:
        """A ContextualError carries its error's message, severity and recovery potential."""
        inner = SecurityViolation(capability="kv", plugin="p", function="f")
        wrapped = ContextualError(error=inner, context=ErrorContext(plugin="p"))
        assert (wrapped.message, wrapped.severity, wrapped.error_kind) == (
            inner.message,
            Severity.CRITICAL,
            "security_violation",
        )
        assert (wrapped.plugin, wrapped.function) == ("p", "f")

    def test_raisable_and_catchable(self) -> None:
        """Errors are exceptions: raised, caught by the base class, notes can be added."""
        with pytest.raises(PluginError) as caught:
            raise ResourceLimitExceeded(resource="fuel")
        assert caught.value.kind == "resource_limit_exceeded"
        caught.value.__notes__ = ["a note"]  # what add_note and Hypothesis do
        assert caught.value.__notes__ == ["a note"]


class TestRoundTrip:
    @given(errors())
    def test_dict_and_json_round_trip(self, error: PluginError) -> None:
        """Every error survives to_dict, JSON and from_dict with the same class and fields."""
        data = error.to_dict()
        assert data["kind"] == error.kind
        again = PluginError.from_dict(json.loads(json.dumps(data)))
        assert type(again) is type(error)
        assert again.to_dict() == data
        assert (
            attrs.asdict(again, recurse=False).keys() == attrs.asdict(error, recurse=False).keys()
        )

    def test_dict_form_holds_plain_values(self) -> None:
        """Enumerations become their plain string values, nested errors included."""
        inner = HostIOError(operation="read")
        context = ErrorContext(previous_errors=(inner,))
        data = ContextualError(error=inner, context=context).to_dict()
        for form in (data, data["error"], data["context"]["previous_errors"][0]):
            assert (type(form["severity"]), type(form["recovery_potential"])) == (str, str)

    @pytest.mark.parametrize("cls", error_classes())
    def test_each_kind_round_trips(self, cls: type[PluginError]) -> None:
        """Each class, built with defaults, round-trips to itself."""
        error = cls(error=ExecutionError()) if cls is ContextualError else cls()
        assert (
            PluginError.from_dict(json.loads(json.dumps(error.to_dict()))).to_dict()
            == error.to_dict()
        )

    @given(errors())
    def test_pickle_round_trip(self, error: PluginError) -> None:
        """An error pickles (as a process pool sends it) to the same class and fields."""
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert again.to_dict() == error.to_dict()

    @pytest.mark.parametrize(
        "data",
        [{}, {"kind": "nope"}, {"kind": "io", "unknown_field": 1}, {"kind": "io", "severity": "x"}],
    )
    def test_bad_dicts_are_refused(self, data: dict[str, object]) -> None:
        """A dict that is not an error's dict form is a ValueError that says why."""
        with pytest.raises(ValueError, match="not an error dict"):
            PluginError.from_dict(data)


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Classes a test defines are forgotten afterwards, so other tests see only the real kinds."""
    monkeypatch.setattr(_registry, "_CLASSES", dict(_registry._CLASSES))


class TestRegistry:
    def test_every_error_class_is_registered(self) -> None:
        """Each exported error class but the base is registered under its own kind."""
        exported = {
            obj
            for obj in vars(wasm_plugins.errors).values()
            if isinstance(obj, type) and issubclass(obj, PluginError) and obj is not PluginError
        }
        assert set(error_classes()) == exported
        assert all(_registry.error_class(cls.kind) is cls for cls in exported)

    @pytest.mark.usefixtures("own_registry")
    def test_a_subclass_registers_itself(self) -> None:
        """A subclass that declares a new kind is known by kind and round-trips through a dict."""

        @attrs.define(eq=False, kw_only=True)
        class QuotaExhausted(PluginError):
            kind: ClassVar[str] = "quota_exhausted"
            quota: str = "requests"

        assert error_classes()[-1] is QuotaExhausted
        again = PluginError.from_dict(QuotaExhausted(quota="tokens").to_dict())
        assert type(again) is QuotaExhausted
        assert again.quota == "tokens"

    @pytest.mark.usefixtures("own_registry")
    def test_a_subclass_sets_its_own_defaults(self) -> None:
        """A new kind's ``default_severity`` and ``default_recovery`` are what it is made with."""

        @attrs.define(eq=False, kw_only=True)
        class QuotaExhausted(PluginError):
            kind: ClassVar[str] = "quota_exhausted"
            default_severity = Severity.LOW
            default_recovery = RecoveryPotential.RECOVERABLE

        error = QuotaExhausted()
        assert (error.severity, error.recovery_potential) == (
            Severity.LOW,
            RecoveryPotential.RECOVERABLE,
        )
        assert QuotaExhausted(severity=Severity.HIGH).severity is Severity.HIGH

    @pytest.mark.usefixtures("own_registry")
    def test_a_duplicate_kind_is_refused(self) -> None:
        """A class that takes a kind another class holds is refused when it is defined."""
        before = error_classes()
        with pytest.raises(TypeError, match=r"'io'.*HostIOError"):

            @attrs.define(eq=False, kw_only=True)
            class DiskError(PluginError):
                kind: ClassVar[str] = "io"

        assert error_classes() == before
        assert _registry.error_class("io") is HostIOError

    @pytest.mark.usefixtures("own_registry")
    def test_an_inherited_kind_is_not_registered(self) -> None:
        """A subclass without a kind of its own is not a kind, and has no dict form."""

        @attrs.define(eq=False, kw_only=True)
        class SlowNetwork(NetworkError):
            pass

        assert SlowNetwork not in error_classes()
        with pytest.raises(TypeError, match="no registered kind"):
            SlowNetwork().to_dict()


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and ``TYPE_CHECKING`` blocks too)."""
    package = "wasm_plugins.errors"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


class TestFloor:
    def test_errors_import_nothing_above_units(self) -> None:
        """The errors package imports no module of wasm_plugins but its own and ``_units``."""
        allowed = ("wasm_plugins.errors", "wasm_plugins._units")
        climbing = {
            f"{path.name}: {module}"
            for path in ERRORS_PACKAGE.glob("*.py")
            for module in _imported_modules(path)
            if module.startswith("wasm_plugins") and not module.startswith(allowed)
        }
        assert not climbing


class TestCircuitOpenErrorOfTheCallPath:
    """``circuit_open_error`` (made for every call an open breaker refuses) makes, without
    attrs' generic ``__init__``, the very error ``InstanceError(state="circuit_open", ...)``
    makes."""

    @given(message=st.text(max_size=40), suggestion=st.text(max_size=40))
    def test_same_error_as_the_constructor(self, message: str, suggestion: str) -> None:
        made = circuit_open_error(message, suggestion)
        expected = InstanceError(state="circuit_open", message=message, suggestion=suggestion)
        assert type(made) is InstanceError
        assert made.to_dict() == expected.to_dict()
        assert str(made) == str(expected)
        assert made.describe() == expected.describe()
        assert made.args == expected.args
        assert made.__cause__ is None and made.__context__ is None
        for field in attrs.fields(InstanceError):
            assert getattr(made, field.name) == getattr(expected, field.name), field.name

    def test_it_takes_its_call_pickles_and_raises(self) -> None:
        made = circuit_open_error("Instance unavailable: open", "wait")
        made.plugin, made.function = "p", "f"
        assert (
            made.to_dict()
            == InstanceError(
                state="circuit_open",
                message="Instance unavailable: open",
                suggestion="wait",
                plugin="p",
                function="f",
            ).to_dict()
        )
        with pytest.raises(InstanceError) as caught:
            raise made
        assert caught.value is made
        again = pickle.loads(pickle.dumps(made))
        assert again.to_dict() == made.to_dict()


class TestCallErrorContext:
    """``call_error_context`` (the context of every refusal) makes, without attrs' generic
    ``__init__``, the context ``ErrorContext(plugin=..., function=..., environment=...,
    call_id=...)`` makes: the same fields, a fresh execution id, the time it was made."""

    @given(plugin=st.text(max_size=20), function=st.text(max_size=20), number=st.integers(1))
    def test_same_context_as_the_constructor(self, plugin: str, function: str, number: int) -> None:
        environment = ExecutionEnvironment(engine="wasmtime", isolation="in-process")
        call_id = f"{plugin}#{number}"
        before = datetime.now(timezone.utc)
        made = call_error_context(plugin, function, environment, call_id)
        after = datetime.now(timezone.utc)
        expected = ErrorContext(
            plugin=plugin, function=function, environment=environment, call_id=call_id
        )
        assert type(made) is ErrorContext
        for field in attrs.fields(ErrorContext):
            if field.name not in ("execution_id", "timestamp"):
                assert getattr(made, field.name) == getattr(expected, field.name), field.name
        assert before <= made.timestamp <= after
        assert made.timestamp.tzinfo is not None
        assert len(made.execution_id) == len(expected.execution_id)
        assert made.execution_id != expected.execution_id
        assert attrs.evolve(made, execution_id="x", timestamp=before) == attrs.evolve(
            expected, execution_id="x", timestamp=before
        )

    def test_it_stays_frozen_and_pickles(self) -> None:
        made = call_error_context("p", "f", ExecutionEnvironment(), "p#1")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            made.plugin = "q"  # type: ignore[misc]
        assert pickle.loads(pickle.dumps(made)) == made
        assert hash(made) == hash(attrs.evolve(made))


class TestContextualErrorOfTheCallPath:
    """``contextual_error`` (what the policy raises when it gives up) makes, without attrs'
    generic ``__init__``, the very error ``ContextualError(error=..., context=...)`` makes."""

    @given(errors())
    def test_same_error_as_the_constructor(self, error: PluginError) -> None:
        context = ErrorContext(plugin="p", function="f", call_id="p#1")
        made = contextual_error(error, context)
        expected = ContextualError(error=error, context=context)
        assert type(made) is ContextualError
        assert made.to_dict() == expected.to_dict()
        assert str(made) == str(expected)
        assert made.describe() == expected.describe()
        assert made.__cause__ is error
        assert made.args == expected.args
        assert made.error is error and made.context is context
        for field in attrs.fields(ContextualError):
            assert getattr(made, field.name) == getattr(expected, field.name), field.name

    def test_it_pickles_and_raises(self) -> None:
        inner = DeadlineExceeded(operation="call", duration=1.0, limit=0.5, plugin="p")
        made = contextual_error(inner, ErrorContext(plugin="p"))
        with pytest.raises(ContextualError) as caught:
            raise made
        assert caught.value is made
        again = pickle.loads(pickle.dumps(made))
        assert again.to_dict() == made.to_dict()
