"""``wasm-plugins build``: compile a plugin distribution's source into the module its manifest
names, with the toolchain of its language.

The project says what to build in ``pyproject.toml``::

    [tool.wasm-plugins]
    language = "c"                      # c, zig, assemblyscript or wat
    source = "src/my_plugin/my_plugin.c"
    output = "src/my_plugin/my_plugin.wasm"

C and Zig are compiled by Zig's toolchain from PyPI (``pip install ziglang``), freestanding (no
libc, no WASI); AssemblyScript by the ``assemblyscript`` compiler from the npm registry (installed
into the project by ``npm install`` when missing); WAT by the engine's own WAT compiler.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wasm_plugins.engine import get_engine
from wasm_plugins.errors import CompilationError, ConfigurationError, Diagnostic

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["C_FLAGS", "build_plugin"]

C_FLAGS = (
    "--target=wasm32-freestanding",
    "-mcpu=mvp",
    "-mbulk-memory",
    "-msign-ext",
    "-O2",
    "-g0",
    "-ffreestanding",
    "-nostdlib",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",
)
"""The features every supported engine accepts; a 64 KiB stack keeps the initial memory small."""

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _settings(directory: Path) -> dict[str, Any]:
    project = directory / "pyproject.toml"
    try:
        data = tomllib.loads(project.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            field="pyproject.toml",
            message=f"Invalid configuration: pyproject.toml - cannot read {project}: {exc}",
            suggestion="build a plugin project (one made by wasm-plugins new)",
        ) from None
    settings = data.get("tool", {}).get("wasm-plugins")
    if not isinstance(settings, dict) or not all(
        isinstance(settings.get(key), str) for key in ("language", "source", "output")
    ):
        raise ConfigurationError(
            field="tool.wasm-plugins",
            message="Invalid configuration: tool.wasm-plugins - needs language, source, output",
            suggestion='add [tool.wasm-plugins] with language = "c", source = ..., output = ...',
        )
    return settings


def _needs_ziglang() -> None:
    if importlib.util.find_spec("ziglang") is None:
        raise ConfigurationError(
            field="toolchain",
            message="Invalid configuration: toolchain - C and Zig plugins are built with ziglang",
            suggestion="pip install ziglang",
        )


def _run(runner: Runner, command: Sequence[str], directory: Path, what: str) -> None:
    try:
        done = runner(
            list(command), cwd=directory, capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(
            field="toolchain",
            message=f"Invalid configuration: toolchain - {what} could not run: {exc}",
            suggestion="check that the toolchain is installed",
        ) from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout or "").strip()
        raise CompilationError(
            message=f"Compilation failed: {what} exited with {done.returncode}",
            diagnostics=(Diagnostic(message=output[-4000:] or "no output"),),
            suggestion="fix the errors the compiler reports",
        )


def _assemblyscript(directory: Path, source: Path, output: Path, runner: Runner) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ConfigurationError(
            field="toolchain",
            message="Invalid configuration: toolchain - AssemblyScript needs Node.js and npm",
            suggestion="install Node.js (which brings npm); the compiler comes from npm",
        )
    compiler = directory / "node_modules" / "assemblyscript" / "bin" / "asc.js"
    if not compiler.is_file():
        install = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"]
        _run(runner, install, directory, "npm install")
    command = [node, str(compiler), str(source), "--outFile", str(output)]
    command += ["--runtime", "incremental", "--use", "abort=", "-O3", "--noAssert"]
    _run(runner, command, directory, "asc")


def build_plugin(directory: Path, *, runner: Runner = subprocess.run) -> Path:
    """Build the plugin project in ``directory``; return the module written.

    :raises ConfigurationError: for a project without build settings or a missing toolchain.
    :raises CompilationError: with the compiler's messages when the source does not compile.
    """
    directory = directory.resolve()
    settings = _settings(directory)
    language = settings["language"]
    source = directory / settings["source"]
    output: Path = directory / settings["output"]
    output.parent.mkdir(parents=True, exist_ok=True)
    if language == "c":
        _needs_ziglang()
        command = [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, f"-I{source.parent}"]
        _run(runner, [*command, "-o", str(output), str(source)], directory, "zig cc")
    elif language == "zig":
        _needs_ziglang()
        command = [sys.executable, "-m", "ziglang", "build-exe", str(source)]
        command += ["-target", "wasm32-freestanding", "-fno-entry", "-rdynamic"]
        command += ["-O", "ReleaseSmall", f"-femit-bin={output}"]
        _run(runner, command, directory, "zig build-exe")
    elif language == "assemblyscript":
        _assemblyscript(directory, source, output, runner)
    elif language == "wat":
        output.write_bytes(get_engine("auto").wat_to_wasm(source.read_text(encoding="utf-8")))
    else:
        raise ConfigurationError(
            field="tool.wasm-plugins.language",
            message=f"Invalid configuration: tool.wasm-plugins.language - {language!r}",
            suggestion="use c, zig, assemblyscript or wat",
        )
    return output
