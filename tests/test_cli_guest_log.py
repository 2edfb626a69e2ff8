"""``wasm-plugins call --log LEVEL``: the guest's log lines and WASI output on stderr, escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasm_plugins import cli
from wasm_plugins._escape import escape

GREETING = b"hello \x1b[31mred\x07"
DETAIL = b"detail\nforged: line"
STDOUT = b"out \x1b]0;title\x07\n"


def _wat_bytes(data: bytes) -> str:
    return "".join(f"\\{byte:02x}" for byte in data)


SPEAKER_WAT = f"""(module
  (import "wasm_plugins" "log" (func $log (param i32 i32 i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{_wat_bytes(GREETING)}")
  (data (i32.const 200) "{_wat_bytes(DETAIL)}")
  (data (i32.const 300) "{_wat_bytes(STDOUT)}")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "speak") (param $ptr i32) (param $len i32) (result i64)
    (call $log (i32.const 2) (i32.const 100) (i32.const {len(GREETING)}))
    (call $log (i32.const 1) (i32.const 200) (i32.const {len(DETAIL)}))
    (i32.store (i32.const 400) (i32.const 300))
    (i32.store (i32.const 404) (i32.const {len(STDOUT)}))
    (drop (call $fd_write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
)
"""


@pytest.fixture
def speaker(tmp_path: Path) -> Path:
    """A plugin manifest whose ``speak`` logs at INFO and DEBUG and writes to its stdout."""
    (tmp_path / "speaker.wat").write_text(SPEAKER_WAT, encoding="utf-8")
    manifest = tmp_path / "speaker.toml"
    manifest.write_text(
        'name = "speaker"\nengine = "wasmtime"\ncapabilities = ["log", "wasi"]\n'
        '[module]\npath = "speaker.wat"\n',
        encoding="utf-8",
    )
    return manifest


def _call(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # A manifest named on the command line is a request: the flags grant what it asks.
    status = cli.main(["call", "--allow", "wasi", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class TestGuestLog:
    def test_log_lines_and_wasi_output_reach_stderr_escaped(
        self, capsys: pytest.CaptureFixture[str], speaker: Path
    ) -> None:
        """At INFO: the INFO line and the captured stdout, control characters shown as escapes;
        the DEBUG line is below the level."""
        status, out, err = _call(capsys, str(speaker), "speak", "--input", '"x"', "--log", "info")
        assert (status, out.strip()) == (0, '"x"')
        assert err.splitlines() == [
            "speaker INFO: hello \\x1b[31mred\\x07",
            "speaker INFO: stdout: out \\x1b]0;title\\x07",
        ]

    def test_a_lower_level_shows_more_and_a_newline_cannot_forge_a_line(
        self, capsys: pytest.CaptureFixture[str], speaker: Path
    ) -> None:
        """At DEBUG the detail appears, its newline escaped so it stays on one line."""
        _, _, err = _call(capsys, str(speaker), "speak", "--log", "DEBUG")
        assert "speaker DEBUG: detail\\nforged: line" in err.splitlines()
        assert not any(line.startswith("forged") for line in err.splitlines())
        assert "\x1b" not in err and "\x07" not in err

    def test_without_the_option_the_guest_is_silent(
        self, capsys: pytest.CaptureFixture[str], speaker: Path
    ) -> None:
        """No ``--log``: nothing of the guest's on stderr."""
        status, _, err = _call(capsys, str(speaker), "speak")
        assert (status, err) == (0, "")

    def test_an_unknown_level_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str], speaker: Path
    ) -> None:
        """The levels are the guest ABI's: TRACE, DEBUG, INFO, WARNING, ERROR."""
        status, _, err = _call(capsys, str(speaker), "speak", "--log", "loud")
        assert status == 2 and "--log" in err


class TestEscape:
    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("plain words, café", "plain words, café"),
            ("\x1b[2J", "\\x1b[2J"),
            ("tab\tand\r", "tab\\tand\\r"),
            ("right\u202eto left", "right\\u202eto left"),
        ],
    )
    def test_escape(self, text: str, shown: str) -> None:
        """Printable text is kept; what a terminal acts on is shown as an escape."""
        assert escape(text) == shown
