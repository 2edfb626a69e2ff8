"""The guest kit: new_plugin and build_plugin make a distribution that builds and passes its own
tests from an empty folder, in every scaffolded language, with the toolchains of the test extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from wasm_plugins import cli
from wasm_plugins.errors import CompilationError, ConfigurationError
from wasm_plugins.guest import LANGUAGES, build_plugin, default_requirement, kit_path, new_plugin
from wasm_plugins.sandbox import Sandbox


class TestKit:
    def test_kit_files(self) -> None:
        """The headers, libraries and ABI text ship inside the package."""
        kit = kit_path()
        for name in (
            "ABI.md",
            "c/wasm_plugins.h",
            "c/wp_kit.h",
            "c/wp_json.h",
            "zig/wasm_plugins.zig",
            "assemblyscript/wasm-plugins.ts",
        ):
            assert (kit / name).is_file(), name

    def test_abi_text_is_the_normative_one(self) -> None:
        """The shipped ABI text and header are the ones in hostapi/, unchanged (after editing
        hostapi/ABI.md or hostapi/wasm_plugins.h, copy them into wasm_plugins/guest/)."""
        assert (kit_path() / "ABI.md").read_text() == (ROOT / "hostapi" / "ABI.md").read_text()
        header = (kit_path() / "c" / "wasm_plugins.h").read_text()
        assert header == (ROOT / "hostapi" / "wasm_plugins.h").read_text()

    def test_requirement_from_a_checkout(self) -> None:
        """Run from a source folder, a new plugin depends on that folder by path."""
        assert default_requirement() == f"wasm-plugins @ {ROOT.as_uri()}"


class TestNewPlugin:
    @pytest.mark.parametrize("name", ["", "Upper", "1st", "a b", "x" * 65])
    def test_bad_name(self, tmp_path: Path, name: str) -> None:
        """A name that is not a plugin name is a configuration error on the name."""
        with pytest.raises(ConfigurationError) as caught:
            new_plugin(name, "c", tmp_path / "p")
        assert caught.value.field == "name"

    def test_bad_language(self, tmp_path: Path) -> None:
        """The supported languages are listed in the suggestion."""
        with pytest.raises(ConfigurationError) as caught:
            new_plugin("ok", "cobol", tmp_path / "p")
        assert "assemblyscript" in (caught.value.suggestion or "")

    def test_refuses_a_folder_with_files(self, tmp_path: Path) -> None:
        """Nothing is overwritten."""
        (tmp_path / "keep.txt").write_text("mine")
        with pytest.raises(ConfigurationError):
            new_plugin("ok", "wat", tmp_path)
        assert (tmp_path / "keep.txt").read_text() == "mine"

    def test_layout(self, tmp_path: Path) -> None:
        """A distribution: pyproject with an entry point and build settings, manifest, source,
        vendored kit, a test."""
        written = new_plugin("my-plugin", "c", tmp_path, requirement="wasm-plugins>=0.1")
        names = {p.relative_to(tmp_path).as_posix() for p in written}
        package = "src/wasm_plugins_my_plugin"
        assert {
            "pyproject.toml",
            "README.md",
            f"{package}/__init__.py",
            f"{package}/plugin.toml",
            f"{package}/wasm_plugins_my_plugin.c",
            f"{package}/wp_json.h",
            "tests/test_wasm_plugins_my_plugin.py",
        } <= names
        project = (tmp_path / "pyproject.toml").read_text()
        assert 'dependencies = ["wasm-plugins>=0.1"]' in project
        assert 'my-plugin = "wasm_plugins_my_plugin"' in project
        assert "{{" not in "".join(p.read_text() for p in written if p.suffix != ".h")

    def test_build_without_settings(self, tmp_path: Path) -> None:
        """build names what is missing."""
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        with pytest.raises(ConfigurationError) as caught:
            build_plugin(tmp_path)
        assert caught.value.field == "tool.wasm-plugins"

    def test_compiler_errors_are_reported(self, tmp_path: Path) -> None:
        """A source that does not compile is a compilation error with the compiler's output."""
        pytest.importorskip("ziglang", reason="the ziglang package (test extra) builds C")
        new_plugin("broken", "c", tmp_path)
        source = tmp_path / "src" / "wasm_plugins_broken" / "wasm_plugins_broken.c"
        source.write_text(source.read_text() + "\nthis is not C;\n")
        with pytest.raises(CompilationError) as caught:
            build_plugin(tmp_path)
        assert "wasm_plugins_broken.c" in caught.value.diagnostics[0].message


def _toolchain_missing(language: str) -> str | None:
    if language in ("c", "zig"):
        try:
            import ziglang  # noqa: F401
        except ImportError:
            return "the ziglang package (in the test extra) is not installed"
    if language == "assemblyscript" and (
        shutil.which("node") is None or shutil.which("npm") is None
    ):
        return "AssemblyScript needs Node.js and npm, which are not installed here"
    return None


@pytest.mark.slow
class TestFromAnEmptyFolder:
    @pytest.mark.parametrize("language", LANGUAGES)
    def test_new_build_and_its_own_tests(self, tmp_path: Path, language: str) -> None:
        """new, then build, then the distribution's own tests pass (in a fresh interpreter)."""
        missing = _toolchain_missing(language)
        if missing is not None:
            pytest.skip(missing)
        project = tmp_path / f"hello-{language}"
        new_plugin(f"hello-{language}", language, project)
        module = build_plugin(project)
        assert module.read_bytes().startswith(b"\0asm")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 passed" in done.stdout

    def test_c_json_reader_and_writer(self, tmp_path: Path) -> None:
        """wp_json.h skips nested values, unescapes \\u escapes and escapes its output."""
        missing = _toolchain_missing("c")
        if missing is not None:
            pytest.skip(missing)
        new_plugin("json-check", "c", tmp_path)
        sandbox = Sandbox(build_plugin(tmp_path))
        tricky = '{"other": {"a": [1, "x\\"}", {"b": null}]}, "name": "\\u00c9mile \\"Z\\""}'
        assert sandbox.call("greet", json.loads(tricky)) == {"greeting": 'Hello, Émile "Z"!'}
        raw = Sandbox(build_plugin(tmp_path), codec="raw")
        assert json.loads(raw.call_bytes("greet", tricky.encode())) == {
            "greeting": 'Hello, Émile "Z"!'
        }
        for bad in (b"[]", b'{"name": 3}', b'{"name": "unterminated', b"{", b""):
            with pytest.raises(Exception, match="a non-empty name is required"):
                raw.call_bytes("greet", bad)

    def test_distribution_packages_the_module(self, tmp_path: Path) -> None:
        """The built distribution is a wheel with the module, the manifest and the entry point."""
        project = tmp_path / "packaged"
        new_plugin("packaged", "wat", project)
        build_plugin(project)
        dist = str(tmp_path / "dist")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, str(project)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wheel,) = (tmp_path / "dist").glob("*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        assert "wasm_plugins_packaged/wasm_plugins_packaged.wasm" in names
        assert "wasm_plugins_packaged/plugin.toml" in names
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = zipfile.ZipFile(wheel).read(entry_points).decode()
        assert "[wasm_plugins]" in text and "packaged = wasm_plugins_packaged" in text

    def test_wasm_plugins_wheel_ships_the_kit(self, tmp_path: Path) -> None:
        """pip wheel of wasm-plugins itself carries the guest kit and the templates."""
        dist = str(tmp_path / "dist")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, str(ROOT)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wheel,) = (tmp_path / "dist").glob("wasm_plugins-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        kit = kit_path()
        expected = {
            "wasm_plugins/guest/" + p.relative_to(kit).as_posix()
            for p in kit.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert expected <= names, sorted(expected - names)


class TestCommandLine:
    def test_new_then_build(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """wasm-plugins new, then wasm-plugins build, from an empty folder (WAT: no toolchain)."""
        project = tmp_path / "demo"
        assert cli.main(["new", "demo", "--lang", "wat", "--directory", str(project)]) == 0
        assert cli.main(["build", str(project)]) == 0
        module = project / "src" / "wasm_plugins_demo" / "wasm_plugins_demo.wasm"
        assert Sandbox(module, codec="raw").call_bytes("upper", b"abc") == b"ABC"
        assert "built" in capsys.readouterr().out

    def test_errors_are_typed(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad name exits 1 with the configuration error and its suggestion, no traceback."""
        assert cli.main(["new", "Bad", "--directory", str(tmp_path / "x")]) == 1
        err = capsys.readouterr().err
        assert "[configuration]" in err and "suggestion" in err and "Traceback" not in err

    def test_unknown_language_is_a_usage_error(self, tmp_path: Path) -> None:
        """--lang is checked by the parser (exit 2)."""
        assert cli.main(["new", "ok", "--lang", "cobol", "--directory", str(tmp_path)]) == 2
