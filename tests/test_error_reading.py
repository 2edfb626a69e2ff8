"""Errors as a person or a log reads them: ``str()`` and ``describe()`` of what reaches the host,
the exception chain, the dict form of every field, the deadline's partial result, and the
environment's open mapping."""

from __future__ import annotations

import json
import traceback
from typing import Any

import attrs
import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from wasm_plugins import ContextualError, DeadlineExceeded, PluginError, PluginHost
from wasm_plugins.errors import (
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    error_classes,
    make_converter,
)
from wasm_plugins.testing import FAILING
from wasm_plugins.testing.strategies import errors

CONVERTER = make_converter()

LOOP = {
    "name": "spinner",
    "isolation": "process",
    "limits": {"timeout": "200 ms"},
    "module": {
        "wat": """(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "spin") (param i32 i32) (result i64)
    (loop $again (br $again))
    (i64.const 0)))"""
    },
}


@pytest.fixture
def trap() -> ContextualError:
    """What a host application catches when ``failing.trap`` traps."""
    with PluginHost(engine="wasmtime") as host:
        host.load(FAILING)
        try:
            host.call("failing", "trap", {})
        except ContextualError as failure:
            return failure
    raise AssertionError("failing.trap did not fail")


def _plain(value: Any) -> Any:
    return CONVERTER.unstructure(value)


class TestReading:
    def test_str_names_kind_plugin_function_and_execution_id(self, trap: ContextualError) -> None:
        """``str()`` reads ``[runtime] message (failing.trap, execution ID)``."""
        assert trap.context is not None
        assert str(trap) == (
            f"[runtime] {trap.error.message} (failing.trap, execution {trap.context.execution_id})"
        )

    def test_the_cause_is_the_underlying_error(self, trap: ContextualError) -> None:
        """``__cause__`` is the typed error, so a traceback shows it as the direct cause; a
        copy, a pickle or a dict round trip keep it."""
        assert trap.__cause__ is trap.error
        assert isinstance(trap.__cause__, ExecutionError)
        shown = "".join(traceback.format_exception(trap))
        assert "direct cause" in shown and "ExecutionError" in shown
        again = PluginError.from_dict(trap.to_dict())
        assert isinstance(again, ContextualError) and again.__cause__ is again.error

    def test_describe_names_the_inner_kind(self, trap: ContextualError) -> None:
        """``describe()`` says ``[runtime]``, not ``[contextual]``, then the suggestion."""
        first, *rest = trap.describe().splitlines()
        assert first == str(trap) and "[contextual]" not in first
        assert rest == [f"  suggestion: {trap.error.suggestion}"]


class TestDictForm:
    @given(errors())
    def test_every_field_survives_to_dict_and_from_dict(self, error: PluginError) -> None:
        """Each field of the error (and of its inner error) is equal after a trip through a dict
        and JSON; each derived property is written to the dict with its value."""
        data = error.to_dict()
        again = PluginError.from_dict(json.loads(json.dumps(data)))
        assert type(again) is type(error)
        for field in attrs.fields(type(error)):
            assert _plain(getattr(again, field.name)) == _plain(getattr(error, field.name)), field
        for name in type(error).derived_fields:
            assert data[name] == _plain(getattr(error, name)), name

    @pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.kind)
    def test_the_strategies_fill_every_field(self, cls: type[PluginError]) -> None:
        """The round trip above sees every field with a value other than its default, so a field
        the dict form loses cannot go unnoticed."""
        default = cls(error=ExecutionError()) if cls is ContextualError else cls()
        names = {field.name for field in attrs.fields(cls)}
        seen: set[str] = set()

        def fills_every_field(error: PluginError) -> bool:
            seen.update(
                name
                for name in names
                if _plain(getattr(error, name)) != _plain(getattr(default, name))
            )
            return seen == names

        try:
            hypothesis.find(
                errors(cls.kind),
                fills_every_field,
                settings=hypothesis.settings(
                    max_examples=300, database=None, phases=[hypothesis.Phase.generate]
                ),
            )
        except NoSuchExample:
            pytest.fail(f"never drawn but at their default: {sorted(names - seen)}")

    def test_percentage_is_in_the_dict_form(self) -> None:
        """``ResourceLimitExceeded.percentage`` reaches the dict; from_dict computes it again."""
        from wasm_plugins import ResourceLimitExceeded

        data = ResourceLimitExceeded(resource="memory", used=48, limit=64).to_dict()
        assert data["percentage"] == 75.0
        assert PluginError.from_dict({**data, "percentage": 1.0}).percentage == 75.0  # type: ignore[attr-defined]


class TestPartialResult:
    def test_a_deadline_in_a_worker_leaves_no_partial_result(self) -> None:
        """Documented as never filled by the framework: the worker is killed at the deadline,
        before the function has a result."""
        assert DeadlineExceeded.__doc__ is not None
        with PluginHost(engine="wasmtime") as host:
            host.load(LOOP)
            with pytest.raises(ContextualError) as raised:
                host.call("spinner", "spin", None)
        error = raised.value.error
        assert isinstance(error, DeadlineExceeded)
        assert raised.value.context is not None
        assert raised.value.context.environment.isolation == "process"
        assert error.partial_result is None


class TestEnvironment:
    @given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4))
    def test_the_host_adds_its_own_fields(self, extra: dict[str, Any]) -> None:
        """``extra`` holds the host's fields beside the fixed ones, and survives the dict form."""
        environment = ExecutionEnvironment(engine="wasmtime", attempt=2).with_extra(**extra)
        error = ExecutionError(context=ErrorContext(environment=environment))
        again = PluginError.from_dict(json.loads(json.dumps(error.to_dict())))
        assert again.context is not None
        assert dict(again.context.environment.extra) == extra
        assert again.context.environment.engine == "wasmtime"
        assert again.context.environment.attempt == 2
