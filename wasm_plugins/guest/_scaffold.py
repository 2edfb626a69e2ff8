"""``wasm-plugins new``: a plugin distribution that builds and passes its own tests as created."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from wasm_plugins.errors import ConfigurationError

__all__ = ["LANGUAGES", "default_requirement", "new_plugin"]

LANGUAGES = ("c", "zig", "assemblyscript", "wat")
_KIT = Path(__file__).resolve().parent
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_GREETING = {
    "function": "greet",
    "function_description": 'Greet someone: {\\"name\\": str} -> {\\"greeting\\": str}.',
    "codec": "json",
    "good_input": '{"name": "Ada"}',
    "good_output": '{"greeting": "Hello, Ada!"}',
    "bad_input": "{}",
    "bad_message": "a non-empty name is required",
}
_LANGUAGE_SETTINGS = {
    "c": {**_GREETING, "source": "src/{{package}}/{{package}}.c"},
    "zig": {**_GREETING, "source": "src/{{package}}/{{package}}.zig"},
    "assemblyscript": {**_GREETING, "source": "assembly/index.ts"},
    "wat": {
        "function": "upper",
        "function_description": "Upper-case the ASCII letters of the input bytes.",
        "codec": "raw",
        "source": "src/{{package}}/{{package}}.wat",
        "good_input": 'b"Hello, wasm!"',
        "good_output": 'b"HELLO, WASM!"',
        "bad_input": 'b""',
        "bad_message": "an empty input is refused",
    },
}
_VENDORED = {
    "c": [
        (f"c/{header}", "src/{{package}}") for header in ("wasm_plugins.h", "wp_kit.h", "wp_json.h")
    ],
    "zig": [("zig/wasm_plugins.zig", "src/{{package}}")],
    "assemblyscript": [("assemblyscript/wasm-plugins.ts", "assembly")],
    "wat": [],
}
"""Kit files copied into the project, so that it builds with the kit it was created with."""


def default_requirement() -> str:
    """How a new plugin depends on this wasm-plugins: its source folder when it runs from one
    (so the plugin installs outside this checkout), else the installed version."""
    root = _KIT.parent.parent
    if (root / "pyproject.toml").is_file() and (root / "wasm_plugins").is_dir():
        return f"wasm-plugins @ {root.as_uri()}"
    try:
        return f"wasm-plugins>={version('wasm-plugins')}"
    except PackageNotFoundError:
        return "wasm-plugins"


def new_plugin(
    name: str, language: str, directory: Path, *, requirement: str | None = None
) -> list[Path]:
    """Write a plugin distribution for ``name`` in ``language`` into ``directory``.

    :returns: the files written.
    :raises ConfigurationError: for a bad name or language, or a directory that is not empty.
    """
    if not _NAME.match(name):
        raise ConfigurationError(
            field="name",
            message=f"Invalid configuration: name - {name!r} is not a plugin name",
            suggestion="use lower-case letters, digits, '-' and '_', starting with a letter",
        )
    if language not in LANGUAGES:
        raise ConfigurationError(
            field="language",
            message=f"Invalid configuration: language - {language!r} is not supported",
            suggestion=f"use one of {', '.join(LANGUAGES)}",
        )
    if directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(
            field="directory",
            message=f"Invalid configuration: directory - {directory} is not empty",
            suggestion="give a new or empty folder",
        )
    package = "wasm_plugins_" + name.replace("-", "_")
    values = {
        "name": name,
        "package": package,
        "distribution": "wasm-plugins-" + name.replace("_", "-"),
        "language": language,
        "requirement": requirement or default_requirement(),
        **_LANGUAGE_SETTINGS[language],
    }
    values["source"] = values["source"].replace("{{package}}", package)
    written: list[Path] = []
    for root in (_KIT / "templates" / "common", _KIT / "templates" / language):
        for template in sorted(p for p in root.rglob("*") if p.is_file()):
            # Templates of Python code and of pyproject.toml end in .tmpl, so that no tool (ruff,
            # mypy, pytest) takes them for the kit's own files.
            relative = str(template.relative_to(root)).replace("__package__", package)
            relative = relative.removesuffix(".tmpl")
            target = directory / relative
            text = template.read_text(encoding="utf-8")
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            written.append(target)
    for source, folder in _VENDORED[language]:
        target = directory / folder.replace("{{package}}", package) / Path(source).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_KIT / source, target)
        written.append(target)
    return written
