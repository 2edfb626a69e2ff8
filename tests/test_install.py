"""The documented one-command install, run as a newcomer would: a fresh virtual environment and an
application outside the checkout, wasm-plugins and the example plugins given to pip by path, every
third-party package from the index."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

MARKER = "<!-- install-from-anywhere -->"
DOCUMENTED_CHECKOUT = "~/src/wasm-plugins"
DOCUMENTED_APPLICATION = "./my-host-app"

APPLICATION = '''
"""A host application that knows wasm-plugins only as a dependency."""

import wasm_plugins
from wasm_plugins import PluginHost

with PluginHost.discover() as host:
    print(wasm_plugins.__file__)
    print(sorted(host.plugins))
    print(host.call("text-tools", "word_count", {"text": "one two three"})["words"])
    # The default trust policy refuses example plugins that ask for more than it grants; any
    # other problem is an install that went wrong.
    print(len([problem for problem in host.problems if problem.stage != "trust"]))
'''


def documented_command() -> str:
    """The command after the install-from-anywhere marker of the getting-started guide."""
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    after = text.split(MARKER, 1)[1]
    match = re.search(r"^```console\n\$ (.+)$", after, re.MULTILINE)
    assert match is not None, f"no console block after {MARKER}"
    return match.group(1)


def _write_application(directory: Path) -> None:
    (directory / "my_host_app").mkdir(parents=True)
    (directory / "my_host_app" / "__init__.py").write_text("", encoding="utf-8")
    (directory / "my_host_app" / "__main__.py").write_text(APPLICATION, encoding="utf-8")
    (directory / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "my-host-app"
            version = "1.0"
            dependencies = ["wasm-plugins"]

            [tool.setuptools]
            packages = ["my_host_app"]
            """
        ),
        encoding="utf-8",
    )


@pytest.mark.slow
def test_the_documented_command_installs_from_anywhere(tmp_path: Path) -> None:
    """The command of the guide, run from outside the checkout in a fresh venv with its own pip,
    installs an application that then finds and calls the example plugins."""
    command = documented_command()
    assert command.startswith("python -m pip install ")
    arguments = (
        command.removeprefix("python -m pip install ")
        .replace(DOCUMENTED_CHECKOUT, str(ROOT))
        .replace(DOCUMENTED_APPLICATION, str(tmp_path / "my-host-app"))
        .split()
    )
    _write_application(tmp_path / "my-host-app")
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *arguments],
        cwd=outside,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    ran = subprocess.run(
        [str(python), "-m", "my_host_app"],
        cwd=outside,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    location, plugins, words, problems = ran.stdout.splitlines()
    assert Path(location).is_relative_to(environment)
    assert "text-tools" in plugins and "trapper" in plugins
    assert (words, problems) == ("3", "0")

    # A plugin author's first hour in the same environment: scaffold, build, install the new
    # distribution (its wasm-plugins requirement resolved outside the checkout), run its tests.
    wasm_plugins_cli = environment / "bin" / "wasm-plugins"
    for step in (
        [str(wasm_plugins_cli), "new", "hello", "--lang", "wat"],
        [str(wasm_plugins_cli), "build", "hello"],
        [str(python), "-m", "pip", "install", "--quiet", "./hello[test]"],
    ):
        done = subprocess.run(
            step, cwd=outside, env=clean, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{step}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    tested = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=outside / "hello",
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert "2 passed" in tested.stdout
    listed = subprocess.run(
        [str(python), "-m", "my_host_app"],
        cwd=outside,
        env=clean,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "hello" in listed.stdout.splitlines()[1]
