"""``wasm-plugins new`` and ``wasm-plugins build``: scaffold a plugin distribution, build its
module (the work is :mod:`wasm_plugins.guest`'s)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from wasm_plugins.guest import LANGUAGES, build_plugin, new_plugin

__all__ = ["build_options", "build_project", "new_options", "new_project"]


def new_options(parser: argparse.ArgumentParser) -> None:
    """``NAME``, ``--lang``, ``--directory``, ``--requirement``."""
    parser.add_argument("name", help="the plugin's name (lower-case letters, digits, - and _)")
    parser.add_argument("--lang", choices=LANGUAGES, default="c", help="the source language")
    parser.add_argument(
        "--directory", type=Path, help="where to write the project (default: ./NAME)"
    )
    parser.add_argument(
        "--requirement",
        help="how the plugin depends on wasm-plugins (default: this one, by path or version)",
    )


def build_options(parser: argparse.ArgumentParser) -> None:
    """``DIRECTORY``."""
    parser.add_argument(
        "directory", nargs="?", type=Path, default=Path(), help="the plugin project (default: .)"
    )


def new_project(arguments: argparse.Namespace, out: TextIO) -> int:
    """Write the project; print where, and what to run next."""
    directory: Path = arguments.directory or Path(arguments.name)
    new_plugin(arguments.name, arguments.lang, directory, requirement=arguments.requirement)
    out.write(f"created {directory} ({arguments.lang})\n")
    out.write(f"next: wasm-plugins build {directory}, then python -m pytest in it\n")
    return 0


def build_project(arguments: argparse.Namespace, out: TextIO) -> int:
    """Build the project's module; print its path."""
    out.write(f"built {build_plugin(arguments.directory)}\n")
    return 0
