"""The ``wasm-plugins`` command: list, inspect, call, doctor and demo.

Most tests call ``main([...])`` in-process and read the output with ``capsys``; the console script
and ``python -m wasm_plugins.cli`` are also run as subprocesses, to check exit codes and that no
traceback reaches the user. The example plugins (text-tools, hostile-pack) must be installed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, ROOT
from wasm_plugins import cli
from wasm_plugins._demo import run_demo
from wasm_plugins.discovery import DiscoveryProblem
from wasm_plugins.engine import Engine, default_registry
from wasm_plugins.errors import DeadlineExceeded, PluginError
from wasm_plugins.host import PluginHost

ECHO_WAT = EXAMPLES / "echo.wat"
HOSTILE = ("trapper", "memory-bomb", "bad-output", "endless-loop", "capability-thief")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def line_of(output: str, name: str) -> str:
    """The table line that starts with ``name``."""
    lines = [line for line in output.splitlines() if line.split(" ", 1)[0] == name]
    assert lines, f"no line for {name!r} in:\n{output}"
    return lines[0]


def section(output: str, title: str) -> str:
    """The lines of a titled section (up to the next blank line), unindented."""
    body = output.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line.strip() for line in body.splitlines())


def host_with(*manifests: dict[str, Any]) -> PluginHost:
    """The installed plugins plus some loaded by hand."""
    host = PluginHost.discover()
    for manifest in manifests:
        host.load(manifest)
    return host


@pytest.fixture(autouse=True)
def _no_engine_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests pick engines themselves; an inherited WASM_PLUGINS_ENGINE would change 'auto'."""
    monkeypatch.delenv("WASM_PLUGINS_ENGINE", raising=False)
    monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)


@pytest.fixture(autouse=True)
def _hostile_pack_trusted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A trust policy (WASM_PLUGINS_TRUST) that grants wasi-escape the WASI directory it asks
    for, so that every example plugin is listed (the default policy refuses it)."""
    policy = tmp_path / "trust.toml"
    policy.write_text(
        '[plugins."wasi-escape"]\ncapabilities = ["log", "wasi"]\n'
        f'preopens = [{{ host = "{Path("sandbox-dir").resolve()}", guest = "/data" }}]\n'
    )
    monkeypatch.setenv("WASM_PLUGINS_TRUST", str(policy))


class TestList:
    def test_shows_example_plugins_with_functions(self, capsys: pytest.CaptureFixture[str]) -> None:
        """text-tools and every hostile plugin are listed with their version and functions."""
        status, out, _ = run(capsys, "list")
        assert status == 0
        assert line_of(out, "NAME").split() == [
            "NAME",
            "VERSION",
            "ENGINE",
            "CAPABILITIES",
            "FUNCTIONS",
        ]
        text_tools = line_of(out, "text-tools")
        assert "1.0.0" in text_tools
        assert "word_count, slugify, top_words" in text_tools
        for name in HOSTILE:
            assert line_of(out, name)
        assert "steal" in line_of(out, "capability-thief")
        assert "spin" in line_of(out, "endless-loop")

    def test_shows_capabilities(self, capsys: pytest.CaptureFixture[str]) -> None:
        """wasi-escape is listed with its wasi capability; text-tools with none."""
        _, out, _ = run(capsys, "list")
        assert line_of(out, "wasi-escape").split()[3] == "wasi"
        assert line_of(out, "text-tools").split()[3] == "-"

    def test_fits_in_100_columns(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Long function lists wrap instead of running past 100 columns."""
        _, out, _ = run(capsys, "list")
        assert max(len(line) for line in out.splitlines()) <= 100
        assert "write_readonly" in out

    def test_json_parses(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one document with every plugin and the discovery problems."""
        status, out, _ = run(capsys, "list", "--json")
        document = json.loads(out)
        assert status == 0
        plugins = {entry["name"]: entry for entry in document["plugins"]}
        assert {"text-tools", *HOSTILE} <= set(plugins)
        assert plugins["text-tools"]["functions"] == ["word_count", "slugify", "top_words"]
        assert plugins["wasi-escape"]["capabilities"] == ["wasi"]
        assert plugins["text-tools"]["distribution"].startswith("wasm-plugins-text-tools")
        assert document["problems"] == []

    def test_functions_from_exports_and_load_failures(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without [functions] the module's exports are listed; a plugin that does not load
        shows its error kind, and the other plugins are still listed."""
        host = host_with(
            {"name": "bare-echo", "module": {"path": str(ECHO_WAT)}},
            {"name": "broken", "module": {"wat": "(module (func"}},
        )
        monkeypatch.setattr(cli, "_discover", lambda: host)
        status, out, _ = run(capsys, "list")
        assert status == 0
        assert line_of(out, "bare-echo").endswith("echo")
        assert "(does not load: compilation)" in line_of(out, "broken")
        assert line_of(out, "text-tools")

    def test_discovery_problems_follow_the_table(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each discovery problem is printed after the table with its distribution and reason."""
        host = PluginHost.discover()
        host.problems.append(
            DiscoveryProblem("broken = broken_mod", "broken-dist 0.1", "import", "ImportError: no")
        )
        monkeypatch.setattr(cli, "_discover", lambda: host)
        _, out, _ = run(capsys, "list")
        assert "1 discovery problem:" in out
        assert out.index("broken-dist 0.1: import failed: ImportError: no") > out.index(
            "text-tools"
        )


class TestInspect:
    def test_text_tools(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Manifest fields, functions, exports with signatures, imports and limits with units."""
        status, out, _ = run(capsys, "inspect", "text-tools")
        assert status == 0
        assert out.startswith("text-tools 1.0.0\n")
        for title in ("Manifest", "Limits", "Exports", "Imports"):
            assert f"\n{title}\n" in out
        assert "resource text_tools.wasm" in out
        limits = section(out, "Limits")
        assert line_of(limits, "memory").split() == ["memory", "16", "MiB"]
        assert line_of(limits, "timeout").split() == ["timeout", "none"]
        assert "max_input   1 MiB" in out
        assert "word_count  func    (i32, i32) -> (i64)" in out
        assert "wp_alloc    func    (i32) -> (i32)" in out
        assert "wasm_plugins.error  func  (i32, i32) -> ()" in out
        assert "word_count  yes" in out

    def test_capability_thief_names_the_capabilities_its_imports_need(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each import is shown with the capability it needs, denied since none is granted."""
        status, out, _ = run(capsys, "inspect", "capability-thief")
        assert status == 0
        imports = section(out, "Imports")
        kv = line_of(imports, "wasm_plugins.kv_get").split()
        clock = line_of(imports, "wasm_plugins.clock_now").split()
        assert kv[-4:] == ["kv", "denied:", "not", "granted"]
        assert clock[-4:] == ["clock", "denied:", "not", "granted"]
        assert "'clock', 'kv'" in out
        assert "security_violation" in out

    def test_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives the same facts as data: imports carry their capability and status."""
        status, out, _ = run(capsys, "inspect", "capability-thief", "--json")
        data = json.loads(out)
        assert status == 0
        imports = {item["name"]: item for item in data["imports"]}
        assert imports["kv_get"]["capability"] == "kv"
        assert imports["clock_now"]["status"].startswith("denied")
        assert data["missing_capabilities"] == ["clock", "kv"]
        assert data["limits"]["memory_bytes"] == 64 * 2**20
        assert {"name": "steal", "kind": "func", "signature": "(i32, i32) -> (i64)"} in data[
            "exports"
        ]

    def test_wasi_settings(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A plugin granted wasi shows its preopens (as granted: resolved host paths), and its WASI
        imports need 'wasi'."""
        _, out, _ = run(capsys, "inspect", "wasi-escape", "--json")
        data = json.loads(out)
        assert data["wasi"]["granted"] is True
        assert data["wasi"]["preopens"] == [
            {"host": str(Path("sandbox-dir").resolve()), "guest": "/data", "read_only": True}
        ]
        wasi_imports = [i for i in data["imports"] if i["module"] == "wasi_snapshot_preview1"]
        assert wasi_imports
        assert {i["capability"] for i in wasi_imports} == {"wasi"}
        assert {i["status"] for i in wasi_imports} == {"ok"}

    def test_module_file(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A .wat file is inspected under a name made from its stem; functions come from exports."""
        status, out, _ = run(capsys, "inspect", str(ECHO_WAT))
        assert status == 0
        assert out.startswith("echo 0.0.0\n")
        assert "Functions (from the exports)" in out
        assert "\n  echo  no" in out

    def test_module_that_does_not_compile(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """A module that does not compile is reported with its error kind, exit status 1."""
        bad = tmp_path / "bad.wat"
        bad.write_text("(module (func")
        status, out, _ = run(capsys, "inspect", str(bad))
        assert status == 1
        assert "Module: cannot be compiled: [compilation]" in out

    def test_unknown_plugin(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown name is a configuration error with a "did you mean" suggestion."""
        status, out, err = run(capsys, "inspect", "trapperr")
        assert status == 1
        assert out == ""
        assert "[configuration]" in err
        assert "did you mean 'trapper'?" in err


class TestCall:
    def test_word_count(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The result is printed as pretty JSON with the right counts."""
        status, out, err = run(
            capsys, "call", "text-tools", "word_count", "--input", '{"text": "a b c"}'
        )
        assert status == 0, err
        assert json.loads(out) == {"words": 3, "lines": 1, "characters": 5, "bytes": 5}
        assert out.count("\n") > 1

    def test_json_success_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints the bare value on one line."""
        status, out, _ = run(
            capsys, "call", "text-tools", "slugify", "--input", '{"text": "Crème Brûlée"}', "--json"
        )
        assert status == 0
        assert out == '"creme-brulee"\n'

    def test_wat_file(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A .wat path runs as a plugin without a manifest."""
        status, out, _ = run(
            capsys, "call", str(ECHO_WAT), "echo", "--input", '{"hello": ["wasm", 1]}', "--json"
        )
        assert status == 0
        assert json.loads(out) == {"hello": ["wasm", 1]}

    def test_wasm_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, wasmtime_engine: Engine
    ) -> None:
        """A .wasm file built from echo.wat runs too; its odd file name becomes a valid name."""
        module = tmp_path / "My Echo!.wasm"
        module.write_bytes(wasmtime_engine.wat_to_wasm(ECHO_WAT.read_text()))
        status, out, _ = run(capsys, "call", str(module), "echo", "--input", "[1, 2]", "--json")
        assert (status, json.loads(out)) == (0, [1, 2])
        status, out, _ = run(capsys, "call", str(module), "nope", "--json")
        assert status == 1
        assert json.loads(out)["plugin"] == "my-echo"

    def test_input_from_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """--input @path reads the JSON from a file."""
        source = tmp_path / "input.json"
        source.write_text(json.dumps({"text": "one two\nthree"}), encoding="utf-8")
        status, out, _ = run(
            capsys, "call", "text-tools", "word_count", "--input", f"@{source}", "--json"
        )
        assert status == 0
        assert json.loads(out)["words"] == 3
        assert json.loads(out)["lines"] == 2

    def test_manifest_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A .toml manifest path runs its module, resolved next to the manifest."""
        manifest = tmp_path / "plugin.toml"
        manifest.write_text(
            f'name = "my-echo"\n[module]\npath = "{ECHO_WAT.as_posix()}"\n'
            '[functions.echo]\ndescription = "echo"\n'
        )
        status, out, _ = run(capsys, "call", str(manifest), "echo", "--input", '"hi"', "--json")
        assert (status, out) == (0, '"hi"\n')

    def test_invalid_manifest(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """An invalid manifest is a configuration error naming the field, not a traceback."""
        manifest = tmp_path / "plugin.toml"
        manifest.write_text('name = "x"\n[module]\nwat = "(module)"\n[limits]\nmemory = "lots"\n')
        status, _, err = run(capsys, "call", str(manifest), "f")
        assert status == 1
        assert err.startswith("error: [configuration] Invalid configuration: limits.memory")
        assert "Traceback" not in err

    def test_missing_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A module path that does not exist is a typed error saying so."""
        status, _, err = run(capsys, "call", str(tmp_path / "missing.wasm"), "echo")
        assert status == 1
        assert "[configuration]" in err
        assert "no such file" in err

    def test_json_failure(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json failure: one JSON object, the underlying error's dict, which round-trips."""
        status, out, err = run(capsys, "call", "trapper", "unreachable", "--json")
        assert status == 1
        assert err == ""
        data = json.loads(out)
        assert data["kind"] == "runtime"
        assert (data["plugin"], data["function"]) == ("trapper", "unreachable")
        assert data["trap"] == "unreachable"
        assert PluginError.from_dict(data).kind == "runtime"

    def test_failure_on_stderr(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --json a failure prints kind, message and suggestion on stderr."""
        status, out, err = run(capsys, "call", "capability-thief", "steal")
        assert status == 1
        assert out == ""
        assert err.startswith("error: [security_violation] Security violation: capability")
        assert "\n  suggestion: grant the" in err

    def test_unknown_plugin(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown plugin fails with a "did you mean" suggestion."""
        status, _, err = run(capsys, "call", "text-tool", "word_count")
        assert status != 0
        assert "no plugin named 'text-tool'" in err
        assert "did you mean 'text-tools'?" in err

    def test_unknown_function(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown function suggests the closest one and lists the plugin's functions."""
        status, _, err = run(capsys, "call", "text-tools", "wordcount")
        assert status == 1
        assert "did you mean 'word_count'?" in err
        assert "word_count, slugify, top_words" in err

    def test_bad_memory_unit(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A size with an unknown unit is a usage error (exit 2) naming the unit."""
        status, out, err = run(capsys, "call", "text-tools", "word_count", "--memory", "16 XB")
        assert status == 2
        assert out == ""
        assert "argument --memory: unknown size unit 'XB'" in err
        assert "MiB" in err

    def test_bad_timeout_unit(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A duration with an unknown unit is a usage error too."""
        status, _, err = run(capsys, "call", "text-tools", "word_count", "--timeout", "3 days")
        assert status == 2
        assert "unknown duration unit 'days'" in err

    def test_bad_json_input(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--input that is not JSON is a usage error, with a hint about quoting and --raw."""
        status, _, err = run(capsys, "call", "text-tools", "word_count", "--input", "{text: 1}")
        assert status == 2
        assert "is not valid JSON" in err
        assert "--raw" in err

    def test_missing_input_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """--input @path of a missing file is a usage error."""
        missing = tmp_path / "nope.json"
        status, _, err = run(capsys, "call", "text-tools", "word_count", "--input", f"@{missing}")
        assert status == 2
        assert "cannot read" in err

    def test_timeout_on_wasmtime(
        self, capsys: pytest.CaptureFixture[str], wasmtime_engine: Engine
    ) -> None:
        """--timeout 100ms on wasmtime stops the endless loop with kind 'timeout'."""
        status, out, _ = run(
            capsys,
            "call",
            "endless-loop",
            "spin",
            "--engine",
            "wasmtime",
            "--timeout",
            "100ms",
            "--json",
        )
        error = PluginError.from_dict(json.loads(out))
        assert status == 1
        assert error.kind == "timeout"
        assert isinstance(error, DeadlineExceeded)
        assert error.limit == pytest.approx(0.1)

    def test_timeout_on_wasmer(
        self, capsys: pytest.CaptureFixture[str], wasmer_engine: Engine
    ) -> None:
        """On wasmer, --timeout stops the guest in-process through its metered module."""
        status, out, _ = run(
            capsys,
            "call",
            "endless-loop",
            "spin",
            "--engine",
            "wasmer",
            "--timeout",
            "200ms",
            "--json",
        )
        data = json.loads(out)
        assert status == 1
        assert data["kind"] == "timeout"
        assert data["limit"] == pytest.approx(0.2)

    def test_memory_override(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--memory replaces the manifest's 8 MiB limit: the memory bomb stops at 2 MiB."""
        status, out, _ = run(
            capsys, "call", "memory-bomb", "explode", "--memory", "2 MiB", "--json"
        )
        data = json.loads(out)
        assert status == 1
        assert (data["kind"], data["resource"], data["limit"]) == (
            "resource_limit_exceeded",
            "memory",
            2 * 2**20,
        )

    def test_fuel_override(
        self, capsys: pytest.CaptureFixture[str], wasmtime_engine: Engine
    ) -> None:
        """--fuel limits the work of a call on wasmtime."""
        status, out, _ = run(
            capsys,
            "call",
            "text-tools",
            "word_count",
            "--input",
            '{"text": "a b"}',
            "--engine",
            "wasmtime",
            "--fuel",
            "100",
            "--json",
        )
        data = json.loads(out)
        assert status == 1
        assert (data["kind"], data["resource"]) == ("resource_limit_exceeded", "fuel")

    def test_unknown_engine(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An engine name that does not exist is a configuration error listing the engines."""
        status, _, err = run(capsys, "call", "text-tools", "word_count", "--engine", "nope")
        assert status == 1
        assert "unknown engine 'nope'" in err
        assert "wasmtime" in err

    def test_raw_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--raw sends the input text's bytes and prints the output as text."""
        status, out, _ = run(capsys, "call", str(ECHO_WAT), "echo", "--input", "héllo", "--raw")
        assert (status, out) == (0, "héllo\n")

    def test_raw_binary_is_hex(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """Output that is not UTF-8 is printed as hex (as {"hex": ...} with --json)."""
        source = tmp_path / "input.bin"
        source.write_bytes(b"\xff\x00\x10")
        status, out, _ = run(
            capsys, "call", str(ECHO_WAT), "echo", "--input", f"@{source}", "--raw"
        )
        assert (status, out) == (0, "ff0010\n")
        status, out, _ = run(
            capsys, "call", str(ECHO_WAT), "echo", "--input", f"@{source}", "--raw", "--json"
        )
        assert json.loads(out) == {"hex": "ff0010"}

    def test_default_input_is_null(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --input the function receives null."""
        status, out, _ = run(capsys, "call", str(ECHO_WAT), "echo", "--json")
        assert (status, out) == (0, "null\n")


class TestDoctor:
    def test_lists_engines(
        self, capsys: pytest.CaptureFixture[str], wasmtime_engine: Engine
    ) -> None:
        """Both engine names appear with availability and version, and which one 'auto' picks."""
        status, out, _ = run(capsys, "doctor")
        engines = section(out, "Engines")
        assert status == 0
        wasmtime = line_of(engines, "wasmtime").replace(" (auto)", "").split()
        assert wasmtime[:3] == ["wasmtime", "yes", wasmtime_engine.version]
        assert line_of(engines, "wasmer")
        assert f"auto picks: {default_registry().resolve_name('auto')} (" in engines
        assert f"Python    {sys.version.split()[0]}" in out

    def test_says_which_wasmer_it_would_use_and_why(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """doctor names the engine ``engine="wasmer"`` runs here, and why that one."""
        registry = default_registry()
        choice = registry.resolve_name("wasmer")
        _, out, _ = run(capsys, "doctor")
        wasmer = [line for line in section(out, "Engines").splitlines() if "wasmer picks" in line]
        assert len(wasmer) == 1
        assert wasmer[0].startswith(f"wasmer picks: {choice} (")
        if choice == "wasmer-sdk":
            reason = registry.availability()["wasmer"]
            assert reason is not None
            assert reason in wasmer[0]
        _, out, _ = run(capsys, "doctor", "--json")
        assert json.loads(out)["wasmer"]["choice"] == choice

    def test_environment_and_plugins(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The environment variables are shown, and the plugins discovered are counted."""
        monkeypatch.setenv("WASM_PLUGINS_ENGINE", "wasmtime")
        monkeypatch.setenv("WASM_PLUGINS_DISABLE", "hostile-pack")
        _, out, _ = run(capsys, "doctor")
        assert "WASM_PLUGINS_ENGINE   wasmtime" in out
        assert "WASM_PLUGINS_DISABLE  hostile-pack" in out
        assert "auto picks: wasmtime (from WASM_PLUGINS_ENGINE)" in out
        assert "1 discovered, 0 problems" in out

    def test_no_engine_works(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a working engine doctor says why for each one and exits 1."""

        def broken() -> Engine:
            raise ImportError("no module named 'broken_engine'")

        def discover() -> PluginHost:
            host = PluginHost(blocked=["builtin-engines"])
            host.configure()
            host.engines.register("broken", broken)
            return host

        monkeypatch.setattr(cli, "_discover", discover)
        status, out, _ = run(capsys, "doctor")
        assert status == 1
        assert "not available: no module named 'broken_engine'" in out
        assert "No engine works here" in out


class TestDemo:
    def test_runs_and_summarises(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The demo calls text-tools, shows the hostile plugins failing, and prints a summary."""
        status, out, _ = run(capsys, "demo", "--hostapi", str(ROOT / "hostapi"))
        assert status == 0
        assert "== Summary of the host's calls" in out
        summary = section(out, "== Summary of the host's calls")
        auto = default_registry().resolve_name("auto")
        assert line_of(summary, "trapper").split()[2:4] == [auto, "runtime"]
        for plugin, kind in (
            ("memory-bomb", "resource_limit_exceeded"),
            ("bad-output", "communication"),
            ("capability-thief", "security_violation"),
        ):
            assert line_of(summary, plugin).split()[3] == kind
        assert line_of(summary, "text-tools").split()[3] == "ok"
        assert "creme-brulee-a-la-mode" in out
        assert "== Conformance modules on engine wasmtime" in out
        assert out.rstrip().endswith("the host process kept running.")

    def test_endless_loop_per_engine(self, wasmtime_engine: Engine) -> None:
        """The endless loop times out on every engine, in-process."""
        out = io.StringIO()
        run_demo(out, ROOT / "hostapi")
        rows = [line.split() for line in out.getvalue().splitlines() if "  endless-loop " in line]
        outcomes = {row[2]: row[3] for row in rows}
        assert outcomes["wasmtime"] == "timeout"
        if "wasmer" in outcomes:
            assert outcomes["wasmer"] == "timeout"

    def test_without_example_plugins(self) -> None:
        """Without the example plugins the demo says how to install them and still runs the
        conformance part."""

        def bare(**options: Any) -> PluginHost:
            host = PluginHost(**options)
            host.configure()
            return host

        out = io.StringIO()
        status = run_demo(out, ROOT / "hostapi", discover=bare)
        text = out.getvalue()
        assert status == 0
        assert "pip install -e plugins/text-tools -e plugins/hostile-pack" in text
        assert "== Conformance modules on engine" in text
        assert "Summary" not in text

    def test_fits_in_100_columns(self) -> None:
        """Every line of the demo fits in 100 columns."""
        out = io.StringIO()
        run_demo(out, ROOT / "hostapi")
        assert max(len(line) for line in out.getvalue().splitlines()) <= 100


class TestMain:
    def test_help_and_version_return_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help and --version print and return 0 instead of exiting the interpreter."""
        status, out, _ = run(capsys, "--help")
        assert status == 0
        assert "inspect" in out
        status, out, _ = run(capsys, "--version")
        assert (status, out.split()[0]) == (0, "wasm-plugins")

    def test_usage_errors_return_two(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing command or argument is a usage error, exit status 2."""
        assert run(capsys)[0] == 2
        status, _, err = run(capsys, "call", "text-tools")
        assert status == 2
        assert "FUNCTION" in err


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), environment.get("PYTHONPATH")])
    )
    environment.pop("WASM_PLUGINS_ENGINE", None)
    return environment


HELP_LOADS = """
import sys
from wasm_plugins.cli import main
status = main(sys.argv[1:])
heavy = ("wasm_plugins._demo", "wasm_plugins.testing", "hypothesis", "pytest", "_pytest")
print("STATUS", status, "LOADED", sorted(n for n in sys.modules if n.startswith(heavy)))
"""


class TestScript:
    def test_console_script(self) -> None:
        """The installed wasm-plugins script runs call and reports a typed failure by exit code."""
        script = shutil.which("wasm-plugins")
        if script is None:
            pytest.skip("the wasm-plugins console script is not on PATH (pip install -e .)")
        done = subprocess.run(
            [script, "call", "text-tools", "word_count", "--input", '{"text": "a b c"}', "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert (done.returncode, json.loads(done.stdout)["words"]) == (0, 3)
        done = subprocess.run(
            [script, "call", "nope", "f"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 1
        assert "Traceback" not in done.stderr

    @pytest.mark.parametrize("argv", [["--help"], ["call", "--help"], ["list"]])
    def test_commands_import_only_what_they_use(self, argv: list[str]) -> None:
        """--help, and the commands but demo and fuzz, import neither the demo nor the testing
        toolkit (nor Hypothesis or pytest): those load when their command runs."""
        done = subprocess.run(
            [sys.executable, "-c", HELP_LOADS, *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=ROOT,
            env=_environment(),
        )
        assert "STATUS 0 LOADED []" in done.stdout, done.stdout + done.stderr

    @pytest.mark.parametrize(
        ("argv", "status", "expected"),
        [
            (["call", "text-tool", "word_count"], 1, "did you mean 'text-tools'?"),
            (["call", "missing.wasm", "f"], 1, "no such file"),
            (["call", "text-tools", "word_count", "--input", "{"], 2, "not valid JSON"),
            (["call", "text-tools", "word_count", "--memory", "1 parsec"], 2, "--memory"),
            (["inspect", "README.md"], 1, "[configuration]"),
        ],
    )
    def test_no_traceback_on_bad_input(self, argv: list[str], status: int, expected: str) -> None:
        """Bad input from the command line gives a message and an exit status, never a traceback."""
        done = subprocess.run(
            [sys.executable, "-m", "wasm_plugins.cli", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=ROOT,
            env=_environment(),
        )
        assert done.returncode == status
        assert expected in done.stderr
        assert "Traceback" not in done.stderr
