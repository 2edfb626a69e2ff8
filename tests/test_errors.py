"""The error taxonomy: messages, defaults, and the dict and JSON round trip of every kind."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given

from wasm_plugins.errors import (
    ConfigurationError,
    ContextualError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionError,
    PluginError,
    RecoveryPotential,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    error_classes,
)
from wasm_plugins.testing.strategies import errors


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

    @pytest.mark.parametrize("cls", error_classes())
    def test_each_kind_round_trips(self, cls: type[PluginError]) -> None:
        """Each class, built with defaults, round-trips to itself."""
        error = cls(error=ExecutionError()) if cls is ContextualError else cls()
        assert (
            PluginError.from_dict(json.loads(json.dumps(error.to_dict()))).to_dict()
            == error.to_dict()
        )

    @pytest.mark.parametrize(
        "data",
        [{}, {"kind": "nope"}, {"kind": "io", "unknown_field": 1}, {"kind": "io", "severity": "x"}],
    )
    def test_bad_dicts_are_refused(self, data: dict[str, object]) -> None:
        """A dict that is not an error's dict form is a ValueError that says why."""
        with pytest.raises(ValueError, match="not an error dict"):
            PluginError.from_dict(data)
