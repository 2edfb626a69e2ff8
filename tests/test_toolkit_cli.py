"""``wasm-plugins fuzz``: generated inputs and injected faults against a real plugin, a progress
bar, a summary table, exit 0 when every invariant held and 3 with a shrunk, runnable reproducer
when one broke; and the rule that only wasm_plugins.testing imports Hypothesis or pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT
from wasm_plugins import PluginHost, hookimpl
from wasm_plugins.cli import main
from wasm_plugins.policy import Retry
from wasm_plugins.testing import fuzz as fuzz_module
from wasm_plugins.testing.clock import FakeClock
from wasm_plugins.testing.harness import InvariantViolation

ECHO = str(ROOT / "hostapi" / "examples" / "echo.wat")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class Relentless:
    """A broken recovery policy: retry everything at once, forever."""

    @hookimpl(tryfirst=True)
    def wasm_plugins_recovery_action(self) -> Retry:
        return Retry(delay=0.0, reason="never give up")


def relentless_host(target: str, *, seed: int = 0) -> Any:
    """Stands in for target_host: the echo plugin, a huge max_attempts, a relentless policy."""

    def make(clock: FakeClock) -> PluginHost:
        host = PluginHost(clock=clock, blocked=())
        host.load(
            {
                "name": "echo",
                "module": {"path": ECHO},
                "policy": {
                    "max_attempts": 10**6,
                    "retry_budget_maximum": 10**6,
                    "breaker": {"failure_threshold": 10**6},
                },
            }
        )
        host.register_policy(Relentless())
        return host

    return make


class TestFuzzCommand:
    def test_a_real_plugin_holds(self, capsys: pytest.CaptureFixture[str]) -> None:
        """text-tools under faults: exit 0, a table of outcomes by kind, the faults injected,
        and a progress bar on stderr."""
        status, out, err = run(
            capsys, "fuzz", "text-tools", "word_count", "--examples", "8", "--seed", "3"
        )
        assert status == 0, out + err
        assert "fuzz text-tools.word_count: " in out and "(seed 3)" in out
        assert "OUTCOME" in out and "error: runtime (guest_error)" in out
        assert "FAULT" in out and "Every invariant held" in out
        assert "8/8 examples" in err and "[####" in err
        assert all(len(line) <= 100 for line in out.splitlines())

    def test_a_seed_repeats_a_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The same seed gives the same summary."""
        first = run(capsys, "fuzz", ECHO, "echo", "--examples", "4", "--seed", "9")
        second = run(capsys, "fuzz", ECHO, "echo", "--examples", "4", "--seed", "9")
        assert first[0] == second[0] == 0
        assert first[1] == second[1]

    def test_a_module_file_without_faults(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A .wat path is a target too; --faults none injects nothing, and every call answers."""
        status, out, _ = run(
            capsys, "fuzz", ECHO, "echo", "--examples", "4", "--faults", "none", "--seed", "1"
        )
        assert status == 0
        assert "(none injected)" in out
        rows = [line.split()[0] for line in out.splitlines() if line.endswith("%")]
        assert rows == ["value"]

    def test_a_broken_invariant_gives_a_runnable_reproducer(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under a policy that retries forever, fuzz exits 3 and prints the shrunk sequence as a
        Python program, which raises the same violation when run."""
        monkeypatch.setattr(fuzz_module, "target_host", relentless_host)
        status, out, err = run(
            capsys, "fuzz", "echo", "echo", "--examples", "40", "--seed", "5", "--steps", "8"
        )
        assert status == 3
        assert "An invariant broke: every call ends" in out
        assert "shrinking" in err
        program = out[out.index("from wasm_plugins.testing.faults import Fault") :]
        assert "replay(target_host('echo'), steps)" in program
        assert (
            "steps = [\n    Outage(Fault.error('network')),\n    Call('echo', 'echo', None),\n]"
            in program
        )
        with pytest.raises(InvariantViolation, match="every call ends"):
            exec(program, {})

    @pytest.mark.parametrize(
        ("argument", "message"),
        [
            (["--faults", "netwrok"], "did you mean 'network'"),
            (["--rate", "2"], "0 to 1"),
            (["--examples", "0"], "positive"),
            (["--seed", "-1"], "not negative"),
        ],
    )
    def test_usage_errors(
        self, capsys: pytest.CaptureFixture[str], argument: list[str], message: str
    ) -> None:
        """Bad options are usage errors (exit 2) that say what is wrong."""
        status, _, err = run(capsys, "fuzz", "text-tools", "word_count", *argument)
        assert status == 2 and message in err

    def test_unknown_target(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown plugin is a typed configuration error (exit 1) with a suggestion."""
        status, _, err = run(capsys, "fuzz", "text-tool", "word_count", "--examples", "1")
        assert status == 1 and "[configuration]" in err and "text-tools" in err

    def test_without_hypothesis(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without Hypothesis, fuzz says how to install it (exit 2); the CLI still works."""
        for name in list(sys.modules):
            if name == "hypothesis" or name.startswith(
                ("hypothesis.", "wasm_plugins.testing.fuzz", "wasm_plugins.testing.st")
            ):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "hypothesis", None)
        status, _, err = run(capsys, "fuzz", "text-tools", "word_count")
        assert status == 2 and "pip install 'wasm-plugins[testing]'" in err
        status, out, _ = run(capsys, "call", ECHO, "echo", "--input", "[1]")
        assert status == 0 and out.split() == ["[", "1", "]"]


IMPORT_ALL_BUT_HYPOTHESIS_USERS = """
import importlib, pkgutil, sys
import wasm_plugins
names = [m.name for m in pkgutil.walk_packages(wasm_plugins.__path__, "wasm_plugins.")]
for name in names:
    if not name.startswith("wasm_plugins.testing") or name in (
        "wasm_plugins.testing.clock", "wasm_plugins.testing.faults",
        "wasm_plugins.testing.harness", "wasm_plugins.testing.modules",
    ):
        try:
            importlib.import_module(name)
        except ImportError as missing:
            # The wasmer adapter on a Python where wasmer does not install.
            if missing.name != "wasmer":
                raise
loaded = sorted(n for n in ("hypothesis", "pytest", "_pytest") if n in sys.modules)
print("LOADED", loaded, len(names))
"""


FUZZ_WITHOUT_THE_COMMAND_LINE = """
import io, sys
from wasm_plugins.testing.fuzz import run_fuzz
out = io.StringIO()
status = run_fuzz(sys.argv[1], "echo", examples=2, steps=3, seed=1, out=out, err=io.StringIO())
cli = "wasm_plugins.cli" in sys.modules
print("STATUS", status, "CLI", cli, "TABLE", "OUTCOME" in out.getvalue())
"""


class TestOptionalDependencies:
    def test_fuzzing_a_file_does_not_load_the_command_line(self) -> None:
        """run_fuzz on a module file (target resolution, a host per example, the summary table)
        works without importing wasm_plugins.cli: the toolkit sits below the command line."""
        result = subprocess.run(
            [sys.executable, "-c", FUZZ_WITHOUT_THE_COMMAND_LINE, ECHO],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert "STATUS 0 CLI False TABLE True" in result.stdout, result.stdout + result.stderr

    def test_only_the_testing_package_imports_hypothesis_or_pytest(self) -> None:
        """Importing every module outside wasm_plugins.testing, the CLI and the fault injector
        imports neither Hypothesis nor pytest."""
        result = subprocess.run(
            [sys.executable, "-c", IMPORT_ALL_BUT_HYPOTHESIS_USERS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 0, result.stderr
        assert "LOADED [] " in result.stdout
