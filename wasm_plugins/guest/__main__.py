"""``python -m wasm_plugins.guest new NAME --lang LANG [DIR]`` and ``... build [DIR]``.

Scaffold a plugin distribution, then build its module; see :mod:`wasm_plugins.guest`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wasm_plugins.errors import PluginError
from wasm_plugins.guest import LANGUAGES, build_plugin, new_plugin


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``new`` or ``build``; 0 on success, 1 with the error on stderr."""
    parser = argparse.ArgumentParser(prog="python -m wasm_plugins.guest")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="scaffold a plugin distribution")
    new.add_argument("name")
    new.add_argument("--lang", choices=LANGUAGES, default="c")
    new.add_argument("--directory", type=Path, help="where to write it (default: ./NAME)")
    new.add_argument("--requirement", help="how the plugin depends on wasm-plugins")
    build = commands.add_parser("build", help="build a plugin project's module")
    build.add_argument("directory", nargs="?", type=Path, default=Path())
    options = parser.parse_args(argv)
    try:
        if options.command == "new":
            directory = options.directory or Path(options.name)
            new_plugin(options.name, options.lang, directory, requirement=options.requirement)
            print(f"created {directory} ({options.lang})")
            print(f"next: python -m wasm_plugins.guest build {directory}")
        else:
            print(f"built {build_plugin(options.directory)}")
    except PluginError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.suggestion:
            print(f"hint: {error.suggestion}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
