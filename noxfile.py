"""Development sessions: tests on every supported Python, lint, typing, the demo, the benchmarks.

Run it directly and it sets itself up: ``python3 noxfile.py`` creates ``.nox/_bootstrap`` with nox
in it (once), makes every installed pyenv Python from 3.10 on visible, and runs nox.

    python3 noxfile.py             # the whole suite: lint, typing, tests on 3.10 to 3.13, docs
    python3 noxfile.py -s docs     # build the documentation site into site/
    python3 noxfile.py -s demo     # install the project and run the demo host
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _pyenv_versions() -> str | None:
    """Every pyenv Python 3.10+ installed, the current default first (for PYENV_VERSION)."""
    if shutil.which("pyenv") is None:
        return None
    bare = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    current = (
        subprocess.run(["pyenv", "version-name"], capture_output=True, text=True, check=False)
        .stdout.strip()
        .split(":")
    )
    wanted = [
        v for v in bare if v.split(".")[:2] in (["3", "10"], ["3", "11"], ["3", "12"], ["3", "13"])
    ]
    ordered = [v for v in current if v in wanted] + [v for v in wanted if v not in current]
    return ":".join(ordered) or None


def _bootstrap() -> None:
    venv = ROOT / ".nox" / "_bootstrap"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "nox>=2024.10"], check=True)
    environment = dict(os.environ)
    versions = _pyenv_versions()
    if versions:
        environment["PYENV_VERSION"] = versions
    os.execve(
        str(python),
        [str(python), "-m", "nox", "-f", str(ROOT / "noxfile.py"), *sys.argv[1:]],
        environment,
    )


if __name__ == "__main__":
    _bootstrap()

import nox  # noqa: E402

PYTHONS = nox.project.python_versions(nox.project.load_toml(str(ROOT / "pyproject.toml")))
TYPING_PYTHON = "3.10"
"""mypy runs where both engines install, so the wasmer adapter is checked too."""

nox.options.sessions = ["lint", "typing", "tests", "docs"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"


EXAMPLE_PLUGINS = ("./plugins/text-tools", "./plugins/hostile-pack")
ZIG = "ziglang==0.17.1"
BUILD_PYTHON = "3.11"
"""The one test session that also installs the C toolchain, so the plugin build is checked."""


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite. On 3.10 both in-process engines must run, and wasmer-sdk on Linux and
    macOS: a skipped test of a required engine fails the session."""
    session.install("-e", ".[test]", *EXAMPLE_PLUGINS)
    required = "wasmer,wasmtime" if session.python == "3.10" else "wasmtime"
    if sys.platform in ("linux", "darwin"):
        required += ",wasmer-sdk"  # a required dependency wherever its wheel exists
    environment = {"WASM_PLUGINS_REQUIRE_ENGINES": required, "HYPOTHESIS_PROFILE": "ci"}
    if session.python == BUILD_PYTHON:
        session.install(ZIG)
        environment["WASM_PLUGINS_CC"] = "python -m ziglang cc"
    # The install test takes a minute of pip: once, on the first Python, is enough.
    selection = [] if session.python == PYTHONS[0] else ["-m", "not slow"]
    session.run("pytest", *selection, *session.posargs, env=environment)


@nox.session(python=BUILD_PYTHON)
def build_plugins(session: nox.Session) -> None:
    """Compile the C plugins under plugins/ to wasm (the built .wasm files are committed)."""
    session.install(ZIG, "wasmtime")
    session.run("python", "plugins/build.py", *session.posargs)


@nox.session(python=TYPING_PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "--strict", "wasm_plugins")


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff on the package and the tests (ruff is installed into the bootstrap environment)."""
    session.run(sys.executable, "-m", "pip", "install", "--quiet", "ruff>=0.6", external=True)
    session.run(sys.executable, "-m", "ruff", "check", "wasm_plugins", "tests", external=True)
    session.run(
        sys.executable, "-m", "ruff", "format", "--check", "wasm_plugins", "tests", external=True
    )


@nox.session(python=PYTHONS[0])
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ with ``--strict`` (a broken link, reference or
    docstring fails the build), then check that it is whole."""
    session.install("-e", ".[docs,test]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
    session.run("pytest", "tests/test_docs_site.py", env={"WASM_PLUGINS_SITE": str(ROOT / "site")})


@nox.session(python=PYTHONS[0])
def demo(session: nox.Session) -> None:
    """Install the project and its example plugins, and run the demo host (on 3.10, where both
    engines install)."""
    session.install(".", *EXAMPLE_PLUGINS)
    session.run("wasm-plugins", "demo", *session.posargs)


@nox.session(python=PYTHONS[0])
def bench(session: nox.Session) -> None:
    """The benchmarks in one table, with the ratios against every performance target
    (docs/performance.md), measured in the same run (on 3.10, where both engines install; with
    the Extism Python SDK for the comparison), then an Extism plugin through both at 100 B, 10 KB
    and 1 MB, a breaker's failure-ratio window as its function gets busy, and a full bulkhead's
    queue. ``-- --rounds 15 --calls 10000`` for steadier figures. Then the plots of cost against
    payload size and module size, as SVG under docs/benchmarks/."""
    session.install(".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/bench_extism.py")
    session.run("python", "benchmarks/bench_observability.py")
    session.run("python", "benchmarks/bench_breaker.py")
    session.run("python", "benchmarks/bench_bulkhead.py")
    # The plots go where the documentation site shows them; commit them after a run.
    session.run("python", "benchmarks/plots.py", "--out", str(ROOT / "docs" / "benchmarks"))
