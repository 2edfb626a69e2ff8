"""The testing toolkit's Hypothesis strategies, and what they show about loading: random bytes and
mutated modules, through a Sandbox and through host.load, end in a typed error of the taxonomy or
a working plugin, never in an untyped exception.

The number of examples comes from the Hypothesis profile (``HYPOTHESIS_PROFILE``: a few dozen in
"ci" and "dev", thousands in "deep"). Guest code of a mutated module runs only on wasmtime, under
a timeout and fuel: a flipped byte can make any loop endless.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wasm_plugins import (
    ContextualError,
    ErrorContext,
    ExecutionError,
    Limits,
    Manifest,
    NetworkError,
    PluginError,
    PluginHost,
    Sandbox,
)
from wasm_plugins.engine import Engine
from wasm_plugins.errors import error_classes
from wasm_plugins.testing import strategies as ws
from wasm_plugins.testing.clock import FakeClock
from wasm_plugins.testing.faults import ERROR_KINDS, FAULT_LABELS, Fault
from wasm_plugins.testing.modules import (
    JSON_OPERATIONS,
    GeneratedModule,
    GuestFunction,
    Mutation,
    has_start_section,
    module_sections,
)

KINDS = frozenset(cls.kind for cls in error_classes())
TEXT_TOOLS = files("wasm_plugins_text_tools").joinpath("text_tools.wasm").read_bytes()
_fixtures = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def typed(error: BaseException, *, loading: bool) -> None:
    """Fail unless ``error`` is a PluginError of the taxonomy; at load, not a wrapped bug."""
    assert isinstance(error, PluginError), f"untyped: {type(error).__name__}: {error}"
    assert error.kind in KINDS
    if loading:
        assert not (isinstance(error, ExecutionError) and error.trap == "host_error"), (
            f"an exception inside the host while loading: {error.message}"
        )


def load(source: Any, engine: Engine, limits: Limits | None = None) -> Sandbox | None:
    """A Sandbox, or None after a typed error; anything else fails the test."""
    try:
        return Sandbox(source, engine=engine, limits=limits or Limits(memory="4 MiB"), codec="raw")
    except BaseException as error:
        typed(error, loading=True)
        return None


def run_bounded(sandbox: Sandbox) -> None:
    """Call every function of a loaded module: a value or a typed error."""
    for function in sandbox.functions:
        for data in (b"", b"x", b'{"text": "a b"}'):
            try:
                sandbox.call(function, data)
            except BaseException as error:
                typed(error, loading=False)


BOUNDED = Limits(memory="4 MiB", timeout=0.2, fuel=1_000_000)


class TestGeneratedModule:
    @_fixtures
    @given(module=ws.generated_modules())
    def test_they_satisfy_the_abi_and_the_model(
        self, engine: Engine, module: GeneratedModule
    ) -> None:
        """Every generated module loads on every engine, and each function returns what the
        model says for a few inputs (raw codec)."""
        sandbox = Sandbox(module.wat, engine=engine, codec="raw")
        try:
            assert set(sandbox.functions) == set(module.names)
            for name in module.names:
                for data in (b"", b"hello, world", bytes(range(200))):
                    assert sandbox.call(name, data) == module.expected(name, data)
        finally:
            sandbox.close()

    @given(module=ws.generated_modules(json_only=True), value=ws.json_inputs())
    def test_json_modules_answer_json(self, module: GeneratedModule, value: Any) -> None:
        """The JSON-safe operations give JSON for any JSON input, as the model predicts."""
        assert all(f.operation in JSON_OPERATIONS for f in module.functions)
        with Sandbox(module.wat, engine="wasmtime") as sandbox:
            for name in module.names:
                assert sandbox.call(name, value) == module.expected_value(name, value)

    def test_invalid_definitions_are_refused(self) -> None:
        """Reserved or repeated names and a missing constant are refused at construction."""
        with pytest.raises(ValueError, match="reserved"):
            GeneratedModule((GuestFunction("wp_x", "echo"),))
        with pytest.raises(ValueError, match="unique"):
            GeneratedModule((GuestFunction("a", "echo"), GuestFunction("a", "sum")))
        with pytest.raises(ValueError, match="constant"):
            GeneratedModule((GuestFunction("a", "constant", 0),))


class TestMutation:
    def test_section_mutations(self) -> None:
        """Reorder, drop and duplicate act on whole sections; flips and truncations on bytes."""
        wasm = ws._compile(GeneratedModule((GuestFunction("f", "echo"),)).wat)
        sections = module_sections(wasm)
        assert sections is not None and len(sections) >= 4
        ids = [section_id for section_id, _ in sections]
        reversed_ids = [
            i for i, _ in module_sections(Mutation("reorder", order=(3, 2, 1, 0)).apply(wasm)) or []
        ]
        assert reversed_ids == ids[3::-1]
        assert len(module_sections(Mutation("drop", position=0).apply(wasm)) or []) == len(ids) - 1
        assert (
            len(module_sections(Mutation("duplicate", position=1).apply(wasm)) or [])
            == len(ids) + 1
        )
        assert Mutation("truncate", position=10).apply(wasm) == wasm[:10]
        flipped = Mutation("flip", position=9, value=0xFF).apply(wasm)
        assert flipped[9] == 0xFF and flipped[:9] == wasm[:9] and len(flipped) == len(wasm)
        assert (
            Mutation("insert", position=8, data=b"\x00").apply(wasm)
            == wasm[:8] + b"\x00" + wasm[8:]
        )

    def test_start_sections_are_noticed(self) -> None:
        """A module with a start function is recognised (its guest code runs at load)."""
        with_start = ws._compile("(module (func $s) (start $s))")
        assert has_start_section(with_start)
        assert not has_start_section(ws._compile("(module (func))"))
        assert not has_start_section(b"\0asm\1\0\0\0\x08\xff")  # unreadable: no start

    @given(wasm=ws.module_bytes(), mutation=st.from_type(Mutation))
    def test_each_mutation_does_what_it_says(self, wasm: bytes, mutation: Mutation) -> None:
        """Flips change one byte, truncations keep a prefix, insertions add their bytes, and
        section mutations rearrange whole sections of the original."""
        mutant = mutation.apply(wasm)
        if mutation.kind == "flip":
            assert len(mutant) == len(wasm)
            assert sum(a != b for a, b in zip(mutant, wasm, strict=True)) <= 1
        elif mutation.kind == "truncate":
            assert wasm.startswith(mutant)
        elif mutation.kind == "insert":
            assert len(mutant) == len(wasm) + len(mutation.data)
        else:
            original = [chunk for _, chunk in module_sections(wasm) or []]
            changed = [chunk for _, chunk in module_sections(mutant) or []]
            assert mutant[:8] == wasm[:8]
            assert set(changed) <= set(original)
            expected = {"drop": -1, "duplicate": 1}.get(mutation.kind)
            if expected is not None:
                assert len(changed) == len(original) + expected


class TestLoadingBadModules:
    """Bad module bytes through load: only taxonomy errors, never an untyped exception."""

    @_fixtures
    @given(data=st.binary(max_size=300), header=st.booleans())
    def test_random_bytes_through_a_sandbox(
        self, engine: Engine, data: bytes, header: bool
    ) -> None:
        """Random bytes, bare or after a valid header, load or fail with a typed error."""
        source = b"\0asm\1\0\0\0" + data if header else data
        assume(engine.features.timeout or not has_start_section(source))
        sandbox = load(source, engine)
        if sandbox is not None:
            sandbox.close()

    @_fixtures
    @given(wasm=ws.mutated_modules())
    def test_mutated_modules_through_a_sandbox(self, engine: Engine, wasm: bytes) -> None:
        """Mutants of generated modules load or fail with a typed error; on wasmtime, what
        loads runs under a timeout and fuel, and each call ends in a value or a typed error."""
        if not engine.features.timeout:
            # Loading runs the start function: only where a timeout stops it.
            assume(not has_start_section(wasm))
            sandbox = load(wasm, engine)
        else:
            sandbox = load(wasm, engine, BOUNDED)
            if sandbox is not None:
                run_bounded(sandbox)
        if sandbox is not None:
            sandbox.close()

    @_fixtures
    @given(wasm=ws.mutated_modules(TEXT_TOOLS, max_mutations=2))
    def test_mutated_real_plugin_through_a_sandbox(
        self, wasmtime_engine: Engine, wasm: bytes
    ) -> None:
        """Mutants of a real C plugin (text-tools) load or fail with a typed error, and run
        bounded on wasmtime."""
        sandbox = load(wasm, wasmtime_engine, BOUNDED)
        if sandbox is not None:
            run_bounded(sandbox)
            sandbox.close()

    @given(wasm=ws.mutated_modules() | st.binary(max_size=200))
    def test_mutated_modules_through_host_load(self, wasm: bytes) -> None:
        """Through host.load and the policy: the sandbox loads or fails with a typed error, and
        every call ends in a value or a ContextualError around a typed error."""
        with PluginHost(engine="wasmtime", clock=FakeClock(), blocked=()) as host:
            try:
                host.load(
                    {
                        "name": "mutant",
                        "module": {"wasm": wasm},
                        "codec": "raw",
                        "limits": {"timeout": "200 ms", "fuel": 1_000_000, "memory": "4 MiB"},
                    }
                )
                functions = host.sandbox("mutant").functions
            except BaseException as error:
                typed(error, loading=True)
                if "mutant" not in host.plugins:
                    return  # the manifest itself was refused (empty module bytes)
                functions = ("anything",)
            for function in functions:
                try:
                    host.invoke("mutant", function, b"x")
                except ContextualError as failure:
                    typed(failure.error, loading=False)
                except BaseException as error:
                    pytest.fail(f"host.invoke raised {type(error).__name__}: {error}")


class TestStrategies:
    @given(data=ws.manifest_dicts())
    def test_manifest_dicts_are_valid(self, data: dict[str, Any]) -> None:
        """Every generated manifest dict is accepted, with its module's WAT and codec."""
        manifest = Manifest.from_dict(data)
        assert manifest.name == data["name"] and manifest.module.wat == data["module"]["wat"]

    @given(manifest=st.from_type(Manifest))
    def test_manifests_from_type(self, manifest: Manifest) -> None:
        """st.from_type(Manifest) gives Manifest objects whose module loads."""
        assert isinstance(manifest, Manifest)
        with Sandbox(manifest.module_source(), engine="wasmtime", codec=manifest.codec) as sandbox:
            assert set(manifest.functions) <= set(sandbox.functions)

    @given(data=st.data(), cls=st.sampled_from(error_classes()))
    def test_errors_from_type_by_class(self, data: st.DataObject, cls: type[PluginError]) -> None:
        """st.from_type gives an error of the class asked for, whatever the class."""
        error = data.draw(st.from_type(cls))
        assert type(error) is cls
        assert PluginError.from_dict(error.to_dict()).kind == cls.kind

    @given(error=st.from_type(PluginError), context=st.from_type(ErrorContext))
    def test_base_and_context_from_type(self, error: PluginError, context: ErrorContext) -> None:
        """The base class and ErrorContext resolve too."""
        assert error.kind in KINDS and isinstance(context, ErrorContext)

    @given(error=ws.errors("network"))
    def test_errors_by_kind(self, error: PluginError) -> None:
        """errors(kind) keeps to that kind."""
        assert isinstance(error, NetworkError)

    @given(limits=st.from_type(Limits))
    def test_limits(self, limits: Limits) -> None:
        """Limits from type are Limits with positive sizes."""
        assert limits.max_input > 0 and (limits.memory is None or limits.memory > 0)

    @given(example=ws.json_values(4), data=st.data())
    def test_inputs_like_keep_the_shape(self, example: Any, data: st.DataObject) -> None:
        """A value drawn like an example has the example's type, and an object its keys."""
        value = data.draw(ws.inputs_like(example))
        if isinstance(example, dict):
            assert isinstance(value, dict) and set(value) == set(example)
        elif example is None:
            assert value is None
        else:
            assert type(value) is type(example)

    @given(value=ws.objects_with(["text", "n"]))
    def test_objects_with(self, value: dict[str, Any]) -> None:
        """objects_with keeps to the names given."""
        assert set(value) <= {"text", "n"}


class TestFaultStrategies:
    @given(fault=st.from_type(Fault))
    def test_faults_from_type(self, fault: Fault) -> None:
        """Any fault from type has a known label, and its repr rebuilds it."""
        assert fault.label in FAULT_LABELS
        assert eval(repr(fault), {"Fault": Fault}) == fault

    @given(schedule=ws.fault_schedules(["timeout", "latency"], rate=1.0, max_attempts=4))
    def test_full_rate_schedules(self, schedule: tuple[Fault | None, ...]) -> None:
        """At rate 1 every planned attempt gets a fault, of the kinds asked for."""
        assert len(schedule) <= 4
        assert all(f is not None and f.label in ("timeout", "latency") for f in schedule)

    @given(schedule=ws.fault_schedules(rate=0.0))
    def test_zero_rate_schedules(self, schedule: tuple[Fault | None, ...]) -> None:
        """At rate 0 nothing is planned."""
        assert all(fault is None for fault in schedule)

    def test_unknown_kinds_are_refused(self) -> None:
        """A misspelt fault kind is an error naming the known ones."""
        with pytest.raises(ValueError, match="known"):
            ws.faults(["netwrok"])
        assert set(ERROR_KINDS) == KINDS - {"contextual"}
