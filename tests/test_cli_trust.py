"""The command line and the trust policy: --trust, --allow, --preopen, --allow-http, ``inspect``
showing what a plugin asks for next to what it gets, ``trust`` printing the entry to review, and
every string a plugin controls escaped on the way to the terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._distributions import install_distribution
from tests.test_trust_end_to_end import SECRET, Installed
from wasm_plugins import cli
from wasm_plugins.engine import Engine
from wasm_plugins.trust import TrustPolicy

ESC = "\x1b"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wasmtime_engine: Engine
) -> Installed:
    monkeypatch.delenv("WASM_PLUGINS_ENGINE", raising=False)
    return Installed(tmp_path, monkeypatch)


class TestTrustOnTheCommandLine:
    """The CLI applies --trust FILE or WASM_PLUGINS_TRUST (else the default policy), plus what
    its flags grant."""

    def test_refused_by_default_with_the_reason(
        self, installed: Installed, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Calling a refused plugin says why and what to grant, not 'no such plugin'."""
        status, out, err = run(capsys, "call", "greedy", "read_secret", "--raw")
        assert status == 1
        assert SECRET.strip() not in out + err
        assert "asks for more than the trust policy grants" in " ".join(err.split())
        assert '[plugins."greedy"]' in err
        installed.untouched()

    def test_trust_file(
        self,
        installed: Installed,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--trust FILE, and WASM_PLUGINS_TRUST, grant what the file says."""
        policy = installed.policy(
            f"""[plugins.greedy]
capabilities = ["log", "kv", "wasi"]
preopens = [{{ host = "{installed.root}", guest = "/root", read_only = false }}]
limits = {{ memory = "1 GiB" }}
"""
        )
        status, out, _ = run(
            capsys, "call", "greedy", "read_secret", "--raw", "--trust", str(policy)
        )
        assert (status, out) == (0, SECRET)
        monkeypatch.setenv("WASM_PLUGINS_TRUST", str(policy))
        status, out, _ = run(capsys, "call", "greedy", "kv", "--raw")
        assert (status, out.strip()) == (0, "value")

    def test_flags_grant_more(
        self, installed: Installed, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--allow, --preopen DIR:rw and --allow-http add to the policy for the plugin called;
        what no flag grants (1 GiB of memory) still needs the policy file."""
        flags = ["--allow", "kv", "--allow", "wasi", "--preopen", f"{installed.root}:rw"]
        status, _, err = run(capsys, "call", "greedy", "kv", "--raw", *flags)
        assert status == 1 and "limits.memory" in err and "'kv'" not in err
        memory = installed.policy('[plugins.greedy]\nlimits = { memory = "1 GiB" }\n')
        status, out, _ = run(
            capsys, "call", "greedy", "plant", "--raw", *flags, "--trust", str(memory)
        )
        assert (status, out.strip()) == (0, "value")
        assert (installed.root / "planted.txt").read_text() == "value"

    def test_read_only_preopen_flag(
        self, installed: Installed, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--preopen DIR (no :rw) grants it read-only: a writable request is still more."""
        memory = installed.policy('[plugins.greedy]\nlimits = { memory = "1 GiB" }\n')
        status, _, err = run(
            capsys,
            "call",
            "greedy",
            "plant",
            "--raw",
            "--allow",
            "kv",
            "--allow",
            "wasi",
            "--preopen",
            str(installed.root),
            "--trust",
            str(memory),
        )
        assert status == 1 and "read-only" in err
        installed.untouched()

    def test_inspect_shows_requested_and_granted(
        self, installed: Installed, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """inspect NAME: what the manifest asks for next to what the policy grants."""
        status, out, _ = run(capsys, "inspect", "greedy", "--json")
        assert status == 0
        data = json.loads(out)
        assert data["trust"]["allowed"] is False
        assert sorted(data["trust"]["requested"]["capabilities"]) == ["kv", "log", "wasi"]
        assert data["trust"]["granted"]["capabilities"] == ["log"]
        assert {e["field"] for e in data["trust"]["excess"]} >= {"capabilities", "limits.memory"}
        status, out, _ = run(capsys, "inspect", "greedy")
        assert status == 0
        assert "Trust (refused" in out and "REQUESTED" in out and "GRANTED" in out
        assert "1 GiB" in out and "64 MiB" in out

    def test_trust_prints_the_entry(
        self, installed: Installed, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """trust NAME prints the policy entry that grants what it asks, with its digest; added
        to a policy file, it lets the plugin run."""
        status, out, _ = run(capsys, "trust", "greedy")
        assert status == 0
        assert out.startswith('[plugins."greedy"]')
        assert "sha256 = " in out
        policy = installed.policy(out)
        assert TrustPolicy.from_file(policy).grant_for("greedy").sha256 is not None
        status, value, _ = run(
            capsys, "call", "greedy", "read_secret", "--raw", "--trust", str(policy)
        )
        assert (status, value) == (0, SECRET)


# A module whose export names, guest error and log message carry terminal escapes.
EVIL_WAT = r"""(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{\"message\": \"\1b[2J\1b]0;pwned\07 cleared\"}")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "fail") (param i32 i32) (result i64)
    (call $error (i32.const 256) (i32.const 36))
    (i64.const 0))
  (func (export "red\1b[31m") (param i32 i32) (result i64) (i64.const 0)))
"""


class TestEscapedOutput:
    """Text a plugin controls reaches the terminal with its control characters shown."""

    def test_guest_error_message(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A guest's error message with terminal escapes is printed escaped."""
        module = tmp_path / "evil.wat"
        module.write_text(EVIL_WAT)
        status, out, err = run(capsys, "call", str(module), "fail", "--raw")
        assert status == 1
        assert ESC not in out + err and "\x07" not in out + err
        assert "\\x1b[2J" in err

    def test_export_names(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """inspect shows an export name with an escape in it escaped."""
        module = tmp_path / "evil.wat"
        module.write_text(EVIL_WAT)
        status, out, err = run(capsys, "inspect", str(module))
        assert status == 0
        assert ESC not in out + err
        assert "red\\x1b[31m" in out

    def test_list(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A distribution's version, description, function names and failure reasons are
        shown escaped by list."""
        install_distribution(
            tmp_path,
            monkeypatch,
            name="evil-dist",
            package="evil_dist",
            files={
                "__init__.py": (
                    "from importlib.resources import files\n"
                    "from wasm_plugins import hookimpl\n\n\n"
                    "@hookimpl\n"
                    "def wasm_plugins_register_plugins(register):\n"
                    "    register(files(__name__) / 'plugin.toml')\n"
                    "    raise ValueError('\\x1b[2Jgone')\n"
                ),
                "plugin.toml": (
                    'name = "evil"\nversion = "1.0\\u001b[8m"\n'
                    'description = "\\u001b]0;title\\u0007"\n'
                    "[module]\nwat = '''" + EVIL_WAT + "'''\n"
                    '[functions.fail]\ndescription = "\\u001b[2J\\r"\n'
                ),
            },
            entry_points={"evil": "evil_dist"},
        )
        for argv in (["list"], ["list", "--json"], ["inspect", "evil"]):
            status, out, err = run(capsys, *argv)
            assert ESC not in out + err, argv
        assert status == 0, out + err
