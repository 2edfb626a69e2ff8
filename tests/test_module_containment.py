"""Containment of module structure: every value type in signatures, one validation for every
engine, and limits (memory over all memories, tables, module size, one budget per call).

The corpus is built here: well-formed modules from WAT text and malformed ones assembled byte by
byte. A check that could kill the process (an engine that aborts) runs in a child process, so a
crash fails the test instead of ending the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from wasm_plugins.engine import Engine
from wasm_plugins.errors import (
    ConfigurationError,
    ExecutionError,
    ModuleError,
    ResourceLimitExceeded,
)
from wasm_plugins.sandbox import Limits, Sandbox, _limits

VALUE_TYPES = ("i32", "i64", "f32", "f64", "v128", "funcref", "externref")

ABI_CORE = """
  (memory (export "memory") 1)
  (func $answer (param $value i32) (result i64)
    (i32.store (i32.const 512) (local.get $value))
    (i64.const 0x0000020000000004))
  (global $heap (mut i32) (i32.const 1024))
  (func $alloc (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
"""


def abi_module(extra: str = "", imports: str = "") -> str:
    """WAT of a minimal ABI-1 plugin (``echo``) with more imports and fields."""
    return f"(module {imports} {ABI_CORE} {extra})"


def run_child(code: str, timeout: float = 300) -> Any:
    """Run Python code in a child process; a crash or an exception fails the calling test.

    :returns: the JSON value the child printed on its last line.
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, (
        f"the child process ended with {done.returncode} (negative: killed by that signal)\n"
        f"{done.stderr[-3000:]}"
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Hand-assembled binaries


def leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + leb(len(payload)) + payload


def vector(*items: bytes) -> bytes:
    return leb(len(items)) + b"".join(items)


def name(text: bytes) -> bytes:
    return leb(len(text)) + text


HEADER = b"\0asm\1\0\0\0"
EMPTY_FUNC_TYPE = section(1, vector(b"\x60\x00\x00"))
ONE_FUNCTION = section(3, vector(b"\x00"))
ONE_BODY = section(10, vector(b"\x02\x00\x0b"))


def module(*sections: bytes) -> bytes:
    return HEADER + b"".join(sections)


# (description, bytes, offset of the problem that every engine reports)
MALFORMED: list[tuple[str, bytes, int]] = [
    (
        "table limits flag written as a two-byte LEB128 (0x81 0x00)",
        module(section(4, vector(b"\x70\x81\x00\x01\x02"))),
        12,
    ),
    (
        "memory limits flag written as a two-byte LEB128 (0x81 0x00)",
        module(section(5, vector(b"\x81\x00\x01\x02"))),
        11,
    ),
    ("u32 count longer than five bytes", module(section(1, b"\x80\x80\x80\x80\x80\x00")), 14),
    ("u32 with bits set past 32", module(section(5, vector(b"\x00\x80\x80\x80\x80\x10"))), 16),
    (
        "s32 constant longer than five bytes",
        module(section(6, vector(b"\x7f\x00\x41\x80\x80\x80\x80\x80\x00\x0b"))),
        18,
    ),
    (
        "s32 constant with unused bits that are not a sign extension",
        module(section(6, vector(b"\x7f\x00\x41\xff\xff\xff\xff\x0f\x0b"))),
        18,
    ),
    ("section out of order", module(section(5, vector(b"\x00\x01")), EMPTY_FUNC_TYPE), 15),
    ("section duplicated", module(EMPTY_FUNC_TYPE, EMPTY_FUNC_TYPE), 16),
    ("unknown section id", module(section(14, b"")), 10),
    ("section size past the end", HEADER + b"\x01\x05\x01", 10),
    ("function without a body", module(EMPTY_FUNC_TYPE, ONE_FUNCTION), 18),
    ("table limits flag 0x02", module(section(4, vector(b"\x70\x02\x01"))), 12),
    ("shared memory (threads)", module(section(5, vector(b"\x03\x01\x02"))), 11),
    ("64-bit memory", module(section(5, vector(b"\x04\x01"))), 11),
    ("memory minimum above its maximum", module(section(5, vector(b"\x01\x02\x01"))), 11),
    ("memory of more than 65536 pages", module(section(5, vector(b"\x00" + leb(65537)))), 11),
    (
        "export name used twice",
        module(
            section(5, vector(b"\x00\x01")),
            section(7, vector(name(b"m") + b"\x02\x00", name(b"m") + b"\x02\x00")),
        ),
        20,
    ),
    (
        "export name not UTF-8",
        module(section(5, vector(b"\x00\x01")), section(7, vector(name(b"\xff") + b"\x02\x00"))),
        17,
    ),
    (
        "data count differs from the data segments",
        module(section(5, vector(b"\x00\x01")), section(12, b"\x02"), section(11, vector())),
        19,
    ),
    (
        "start function with a parameter",
        module(
            section(1, vector(b"\x60\x01\x7f\x00")),
            ONE_FUNCTION,
            section(8, b"\x00"),
            section(10, vector(b"\x02\x00\x0b")),
        ),
        21,
    ),
    (
        "extended constant expression",
        module(section(6, vector(b"\x7f\x00\x41\x01\x41\x02\x6a\x0b"))),
        13,
    ),
    ("exception tag section", module(section(13, vector(b"\x00\x00"))), 10),
]

WELL_FORMED: list[tuple[str, bytes]] = [
    ("empty module", HEADER),
    ("u32 padded to its full five bytes", module(section(1, b"\x81\x80\x80\x80\x00\x60\x00\x00"))),
    (
        "custom sections between the others",
        module(
            section(0, name(b"a")), EMPTY_FUNC_TYPE, section(0, name(b"b")), ONE_FUNCTION, ONE_BODY
        ),
    ),
    ("two tables", module(section(4, vector(b"\x70\x00\x01", b"\x6f\x01\x00\x02")))),
]


class TestOneValidation:
    @pytest.mark.parametrize(("description", "wasm", "offset"), MALFORMED, ids=lambda v: "")
    def test_malformed_binary_is_refused_alike(
        self, engine: Engine, description: str, wasm: bytes, offset: int
    ) -> None:
        """A malformed binary is a module error at the same offset on every engine."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(wasm, engine=engine)
        assert caught.value.validation_errors[0].offset == offset, description

    @pytest.mark.parametrize(("description", "wasm"), WELL_FORMED, ids=lambda v: "")
    def test_well_formed_binary_is_accepted_alike(
        self, engine: Engine, description: str, wasm: bytes
    ) -> None:
        """A well-formed binary passes our validation and compiles on every engine."""
        from wasm_plugins.sandbox._validate import validate_module

        validate_module(wasm)
        engine.validate(wasm)
        engine.compile(wasm)

    @pytest.mark.parametrize(
        "body",
        [
            "(drop (memory.grow (i32.const 0))) (drop (global.get 0))",
            "(global.set 0 (i32.const 0))",
            "(drop (global.get 1))",
        ],
        ids=["past-globals-with-grow", "first-appended-global", "second-appended-global"],
    )
    def test_code_naming_a_global_the_module_lacks_is_refused(
        self, engine: Engine, body: str
    ) -> None:
        """Code that names a global past the module's own is refused, although the rewrite
        appends globals (the grow report, the call depth, the fuel counter) that would make the
        index valid: the guest would read or reset the host's own bookkeeping."""
        wat = (
            '(module (memory (export "memory") 1 10)'
            ' (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))'
            ' (func (export "wp_free") (param i32 i32))'
            f' (func (export "f") (param i32 i32) (result i64) {body} (i64.const 0)))'
        )
        with pytest.raises(ModuleError):
            Sandbox(wat, engine=engine)

    @pytest.mark.parametrize(
        "wat",
        [
            '(module (func (export "f") (param v128 funcref externref) (result v128)'
            " (v128.const i64x2 0 0)))",
            "(module (table 2 funcref) (table 3 externref) (elem (i32.const 0) func 0)"
            " (func) (func (param externref)))",
            '(module (memory 1) (data (i32.const 0) "x") (func (memory.fill (i32.const 0)'
            " (i32.const 0) (i32.const 0))))",
            '(module (global (import "env" "g") i32) (global i32 (global.get 0))'
            " (func (result i32 i64) (i32.const 1) (i64.const 2)))",
        ],
    )
    def test_features_every_engine_runs_are_accepted(self, engine: Engine, wat: str) -> None:
        """SIMD, reference types, several tables, bulk memory and multiple results pass."""
        wasm = engine.wat_to_wasm(wat)
        from wasm_plugins.sandbox._validate import validate_module

        validate_module(wasm)
        engine.compile(wasm)

    @pytest.mark.parametrize(
        ("feature", "extra"),
        [
            ("tail calls", "(func $f return_call $f)"),
            ("typed function references", "(type $t (func)) (func (param (ref $t)))"),
            ("exceptions", '(tag $t) (func (export "boom") (throw $t))'),
            ("extended constants", "(global i32 (i32.add (i32.const 1) (i32.const 2)))"),
            ("shared memory", "shared"),
        ],
    )
    def test_features_some_engines_lack_are_refused_by_all(
        self, engine: Engine, feature: str, extra: str
    ) -> None:
        """A plugin using a proposal that not every engine runs is refused on every engine,
        not loaded by one and refused by another."""
        wat = (
            abi_module().replace(
                '(memory (export "memory") 1)', '(memory (export "memory") 1 1 shared)'
            )
            if extra == "shared"
            else abi_module(extra)
        )
        Sandbox(abi_module(), engine=engine)
        with pytest.raises(ModuleError):
            Sandbox(wat, engine=engine)

    def test_host_function_imported_twice(self, engine: Engine) -> None:
        """Importing the ``error`` function twice links both imports to it on every engine."""
        sandbox = Sandbox(
            abi_module(
                extra="""
                (data (i32.const 0) "{\\"message\\":\\"twice\\"}")
                (func (export "fail") (param i32 i32) (result i64)
                  (call $second (i32.const 0) (i32.const 19)) (i64.const 0))""",
                imports="""
                (import "wasm_plugins" "error" (func $first (param i32 i32)))
                (import "wasm_plugins" "error" (func $second (param i32 i32)))""",
            ),
            engine=engine,
        )
        with pytest.raises(ExecutionError) as caught:
            sandbox.call("fail", None)
        assert caught.value.trap == "guest_error"
        assert "twice" in caught.value.message
        assert sandbox.call("echo", [1]) == [1]


# --------------------------------------------------------------------------------------------
# Signatures


SIGNATURES_CHILD = """
import json, sys
from wasm_plugins.errors import ModuleError, PluginError
from wasm_plugins.sandbox import Sandbox
from tests.test_module_containment import VALUE_TYPES, abi_module

engine = sys.argv[1] if len(sys.argv) > 1 else {engine!r}
report = {{}}
for value_type in VALUE_TYPES:
    extra = (
        f'(func (export "odd") (param {{value_type}}) (result {{value_type}}) local.get 0)'
        f'(func (export "odd_abi") (param i32 {{value_type}}) (result i32) i32.const 0)'
    )
    row = {{}}
    sandbox = Sandbox(abi_module(extra), engine=engine)
    row["functions"] = list(sandbox.functions)
    exports = {{e.name: e for e in sandbox.module.exports}}
    row["odd"] = [list(exports["odd"].signature.params), list(exports["odd"].signature.results)]
    for function in ("odd", "odd_abi"):
        try:
            sandbox.call(function, None)
            row[function + "_call"] = "answered"
        except ModuleError as error:
            row[function + "_call"] = "module"
    try:
        Sandbox(abi_module(extra), engine=engine, functions=["echo", "odd_abi"])
        row["declared"] = "loaded"
    except ModuleError as error:
        row["declared"] = error.missing_export
    row["echo"] = sandbox.call("echo", {{"ok": value_type}})
    again = sandbox.engine.deserialize(sandbox.module.serialize())
    exports = {{e.name: e for e in again.exports}}
    row["odd_again"] = [
        list(exports["odd"].signature.params), list(exports["odd"].signature.results)
    ]
    report[value_type] = row
print(json.dumps(report))
"""


class TestSignatures:
    def test_every_value_type_is_read_without_crashing(self, engine: Engine) -> None:
        """Exports with every value type (v128 included) load; their types are described, also
        after the compiled code is serialized and loaded again; only the ABI functions are plugin
        functions; calling another export is a module error."""
        report = run_child(SIGNATURES_CHILD.format(engine=engine.name))
        for value_type in VALUE_TYPES:
            row = report[value_type]
            assert row["functions"] == ["echo"]
            assert row["odd"] == row["odd_again"] == [[value_type], [value_type]]
            assert row["odd_call"] == row["odd_abi_call"] == "module"
            assert row["declared"] == "odd_abi"
            assert row["echo"] == {"ok": value_type}

    def test_wrong_abi_signature_is_a_module_error(self, engine: Engine) -> None:
        """A declared plugin function of the wrong type is refused at load, naming it."""
        wat = abi_module('(func (export "f") (param i32 i32) (result i32) i32.const 0)')
        with pytest.raises(ModuleError) as caught:
            Sandbox(wat, engine=engine, functions=["f"])
        assert caught.value.missing_export == "f"
        assert "(i32, i32) -> (i32)" in caught.value.message


# --------------------------------------------------------------------------------------------
# Limits


GROW_BOTH = abi_module(
    """
    (memory $second 0)
    (func (export "grow_first") (param i32 i32) (result i64)
      (call $answer (memory.grow (i32.const 1))))
    (func (export "grow_second") (param i32 i32) (result i64)
      (call $answer (memory.grow $second (i32.const 1))))
    """
)


def answer(sandbox: Sandbox, function: str) -> int:
    """The number a function of these modules answers (through ``$answer``)."""
    return int.from_bytes(sandbox.call_bytes(function, b"x"), "little", signed=True)


class TestMemoryOverAllMemories:
    def test_multi_memory_refused_by_default(self, engine: Engine) -> None:
        """A module with two memories does not load unless limits.memories allows it."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(GROW_BOTH, engine=engine, codec="raw")
        assert "limits.memories" in caught.value.suggestion

    def test_wasmer_cannot_run_multi_memory(self, wasmer_engine: Engine) -> None:
        """Allowed by the limits, a multi-memory module is a configuration error on wasmer."""
        with pytest.raises(ConfigurationError) as caught:
            Sandbox(GROW_BOTH, engine=wasmer_engine, limits=Limits(memories=2))
        assert caught.value.field == "limits.memories"

    def test_memory_limit_covers_all_memories(self, wasmtime_engine: Engine) -> None:
        """limits.memory bounds the sum of all memories, not each one: memory 0 may take what
        the other memories' initial sizes leave; memory 1 then cannot grow."""
        sandbox = Sandbox(
            GROW_BOTH,
            engine=wasmtime_engine,
            codec="raw",
            limits=Limits(memory="512 KiB", memories=2),
        )
        assert answer(sandbox, "grow_second") == -1
        grown = 0
        while answer(sandbox, "grow_first") != -1:
            grown += 1
        assert grown == 7
        assert answer(sandbox, "grow_second") == -1


class TestTables:
    GROWER = abi_module(
        """
        (table $t 10 funcref)
        (func (export "grow_table") (param i32 i32) (result i64)
          (call $answer (table.grow $t (ref.null func) (i32.const 10000000))))
        (func (export "grow_a_little") (param i32 i32) (result i64)
          (call $answer (table.grow $t (ref.null func) (i32.const 990))))
        (func (export "table_size") (param i32 i32) (result i64)
          (call $answer (table.size $t)))
        """
    )

    def test_default_table_limit(self) -> None:
        """Tables are limited by default."""
        assert Limits().table == _limits.DEFAULT_TABLE

    def test_table_grow_past_the_limit_fails(self, engine: Engine) -> None:
        """table.grow of ten million elements is refused under limits.table."""
        sandbox = Sandbox(self.GROWER, engine=engine, limits=Limits(table=1000), codec="raw")
        assert answer(sandbox, "grow_table") == -1
        assert answer(sandbox, "table_size") == 10
        assert answer(sandbox, "grow_a_little") == 10
        assert answer(sandbox, "table_size") == 1000

    def test_initial_table_over_the_limit_does_not_load(self, engine: Engine) -> None:
        """A module whose tables start larger than limits.table is refused at load."""
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(self.GROWER, engine=engine, limits=Limits(table=5))
        assert (caught.value.resource, caught.value.used, caught.value.limit) == ("table", 10, 5)


class TestModuleSize:
    def test_default_module_size(self) -> None:
        """Modules are limited in size by default."""
        assert Limits().module_size == _limits.DEFAULT_MODULE_SIZE

    def test_module_over_the_limit_does_not_load(self, engine: Engine) -> None:
        """A module larger than limits.module_size is refused before any engine reads it."""
        wasm = engine.wat_to_wasm(abi_module())
        with pytest.raises(ResourceLimitExceeded) as caught:
            Sandbox(wasm, engine=engine, limits=Limits(module_size=len(wasm) - 1))
        assert (caught.value.resource, caught.value.used) == ("module_size", len(wasm))
        Sandbox(wasm, engine=engine, limits=Limits(module_size=len(wasm)))


BURN = """
    (func $burn
      (local $i i32)
      (local.set $i (i32.const 60000))
      (loop $again
        (br_if $again (local.tee $i (i32.sub (local.get $i) (i32.const 1))))))
"""


def _burning_module(start: bool) -> str:
    """A plugin whose start function, ``wp_alloc`` and ``run`` each burn about 300 000 fuel."""
    return f"""
    (module
      (memory (export "memory") 1)
      {BURN}
      {"(start $burn)" if start else ""}
      (func (export "wp_alloc") (param i32) (result i32) (call $burn) (i32.const 1024))
      (func (export "wp_free") (param i32 i32))
      (func (export "run") (param i32 i32) (result i64) (call $burn) (i64.const 0)))
    """


class TestOneBudgetPerCall:
    def test_alloc_and_function_share_the_fuel(self, wasmtime_engine: Engine) -> None:
        """wp_alloc and the function of one call draw on one fuel budget."""
        sandbox = Sandbox(
            _burning_module(start=False),
            engine=wasmtime_engine,
            codec="raw",
            limits=Limits(fuel=500_000),
        )
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call("run", b"x")
        assert caught.value.resource == "fuel"

    def test_each_call_has_its_own_budget(self, wasmtime_engine: Engine) -> None:
        """Once the input buffer exists, a call that burns less than the budget succeeds, and
        so does the next: budgets are per call, not per instance."""
        sandbox = Sandbox(
            _burning_module(start=False),
            engine=wasmtime_engine,
            codec="raw",
            limits=Limits(fuel=800_000),
        )
        for _ in range(3):
            assert sandbox.call("run", b"x") == b""

    def test_start_function_shares_the_fuel_of_the_call(self, wasmtime_engine: Engine) -> None:
        """An instance made for a call (a new thread) runs its start function on that call's
        budget, while the load's instance got a budget of its own."""
        sandbox = Sandbox(
            _burning_module(start=True),
            engine=wasmtime_engine,
            codec="raw",
            limits=Limits(fuel=700_000),
        )
        assert sandbox.call("run", b"x") == b""
        failures: list[BaseException] = []

        def other_thread() -> None:
            try:
                sandbox.call("run", b"x")
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(failures) == 1
        assert isinstance(failures[0], ResourceLimitExceeded)
        assert failures[0].resource == "fuel"


# --------------------------------------------------------------------------------------------
# Generated modules


_VALUE = st.sampled_from(VALUE_TYPES)
_IMPORTS = st.sampled_from(
    [
        '(import "wasm_plugins" "error" (func (param i32 i32)))',
        '(import "wasm_plugins" "error" (func (param i32)))',
        '(import "wasm_plugins" "missing" (func))',
        '(import "nowhere" "f" (func (param v128)))',
        '(import "env" "memory" (memory 1))',
        '(import "env" "table" (table 1 funcref))',
        '(import "env" "g" (global i32))',
    ]
)


@st.composite
def generated_modules(draw: st.DrawFn) -> dict[str, Any]:
    """WAT of a module with random signatures, memories, tables and imports, and limits."""
    parts = [draw(_IMPORTS) for _ in range(draw(st.integers(0, 3)) // 2)]
    if draw(st.integers(0, 4)):
        parts.append(ABI_CORE)
    for index in range(draw(st.integers(0, 3)) // 2):
        maximum = draw(st.none() | st.integers(0, 4))
        minimum = draw(st.integers(0, 3 if maximum is None else maximum))
        limits = f"{minimum} {'' if maximum is None else maximum}"
        parts.append(f"(memory $extra{index} {limits})")
    for index in range(draw(st.integers(0, 3))):
        minimum = draw(st.integers(0, 20) | st.integers(0, 3000))
        maximum = draw(st.none() | st.integers(minimum, minimum + 10))
        kind = draw(st.sampled_from(["funcref", "externref"]))
        parts.append(
            f"(table $t{index} {minimum} {'' if maximum is None else maximum} {kind})"
            f'(func (export "grow_t{index}") (param i32 i32) (result i64)'
            f" (i64.extend_i32_s (table.grow $t{index} (ref.null {kind[:-3]})"
            " (i32.const 100000))))"
        )
    for index in range(draw(st.integers(0, 4))):
        params = " ".join(draw(st.lists(_VALUE, max_size=3)))
        results = " ".join(draw(st.lists(_VALUE, max_size=2)))
        parts.append(f'(func (export "f{index}") (param {params}) (result {results}) unreachable)')
    return {
        "wat": "(module " + " ".join(parts) + ")",
        "limits": {
            "memory": draw(st.sampled_from([65536, 1 << 20, 64 << 20])),
            "table": draw(st.sampled_from([10, 1000, 100_000])),
            "memories": draw(st.integers(1, 3)),
        },
        "mutations": draw(
            st.just([]) | st.lists(st.tuples(st.integers(8, 400), st.integers(0, 255)), max_size=3)
        ),
    }


FUZZ_CHILD = """
import json, sys
import wasmtime
from wasm_plugins.errors import PluginError
from wasm_plugins.sandbox import Limits, Sandbox

engine = sys.argv[1]
cases = json.loads(sys.stdin.read())
outcomes = []
for case in cases:
    wasm = bytearray(wasmtime.wat2wasm(case["wat"]))
    for offset, value in case["mutations"]:
        if offset < len(wasm):
            wasm[offset] = value
    try:
        sandbox = Sandbox(bytes(wasm), engine=engine, limits=Limits(**case["limits"]), codec="raw")
        for function in [e.name for e in sandbox.module.exports if e.kind == "func"]:
            try:
                sandbox.call_bytes(function, b"x")
            except PluginError:
                pass
        outcomes.append("loaded")
    except PluginError as error:
        outcomes.append(error.kind)
    except Exception as error:
        outcomes.append("UNTYPED " + type(error).__name__ + ": " + str(error)[:200])
print(json.dumps(outcomes))
"""


class TestGeneratedModules:
    @settings(
        max_examples=4,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(cases=st.lists(generated_modules(), min_size=25, max_size=25))
    def test_only_typed_errors_never_a_dead_process(
        self, engine: Engine, cases: list[dict[str, Any]]
    ) -> None:
        """Random modules (signatures, memories, tables, imports, byte mutations) through
        Sandbox end in a loaded plugin or a typed error; the process survives them all."""
        done = subprocess.run(
            [sys.executable, "-c", FUZZ_CHILD, engine.name],
            input=json.dumps(cases),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes = json.loads(done.stdout.strip().splitlines()[-1])
        untyped = [outcome for outcome in outcomes if outcome.startswith("UNTYPED")]
        assert not untyped


# --------------------------------------------------------------------------------------------
# Worker-process isolation


WORKER_CHILD = """
import json
from wasm_plugins.errors import ModuleError
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from tests.test_module_containment import VALUE_TYPES, abi_module

report = {{}}
with WorkerPool(1, name="containment") as pool:
    for value_type in VALUE_TYPES:
        extra = f'(func (export "odd") (param {{value_type}}) (result {{value_type}}) local.get 0)'
        sandbox = ProcessSandbox(abi_module(extra), engine={engine!r}, pool=pool)
        try:
            sandbox.call("odd", None)
            odd = "answered"
        except ModuleError:
            odd = "module"
        report[value_type] = [sandbox.call("echo", value_type), odd, list(sandbox.functions)]
        sandbox.close()
print(json.dumps(report))
"""


class TestInWorkers:
    def test_every_value_type_in_a_worker(self, engine: Engine) -> None:
        """A worker loads modules with every value type from the compiled code it is sent."""
        report = run_child(WORKER_CHILD.format(engine=engine.name))
        assert report == {
            value_type: [value_type, "module", ["echo"]] for value_type in VALUE_TYPES
        }

    def test_alloc_and_function_share_the_fuel_in_a_worker(self, wasmtime_engine: Engine) -> None:
        """In a worker too, one call's wp_alloc and function draw on one fuel budget."""
        from wasm_plugins.isolation import ProcessSandbox, WorkerPool

        with WorkerPool(1, name="containment-fuel") as pool:
            sandbox = ProcessSandbox(
                _burning_module(start=False),
                engine=wasmtime_engine,
                pool=pool,
                codec="raw",
                limits=Limits(fuel=500_000),
            )
            with pytest.raises(ResourceLimitExceeded) as caught:
                sandbox.call("run", b"x")
            assert caught.value.resource == "fuel"
            sandbox.close()


class TestManifestLimits:
    def test_limits_from_a_manifest(self) -> None:
        """A manifest sets the table, module-size and memory-count limits, with units."""
        from wasm_plugins.manifest import Manifest

        manifest = Manifest.from_dict(
            {
                "name": "limited",
                "version": "1.0.0",
                "module": {"wat": abi_module()},
                "limits": {"table": 500, "module_size": "1 MiB", "memories": 2},
            }
        )
        assert (manifest.limits.table, manifest.limits.module_size) == (500, 1 << 20)
        assert manifest.limits.memories == 2
