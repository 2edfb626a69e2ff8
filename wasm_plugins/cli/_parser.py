"""The command line's parser: the commands and their one-line help; each command's module adds its
own options, when that command is parsed."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from wasm_plugins.cli._arguments import UsageError

__all__ = ["PROG", "Exit", "Parser", "build_parser"]

PROG = "wasm-plugins"


class Exit(Exception):
    """The parser is done (``--help``, ``--version``): ``main`` returns ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Parser(argparse.ArgumentParser):
    """An argparse parser that raises instead of exiting, so ``main`` returns its status.

    :param add_arguments: adds the parser's options the first time it parses: a command's options
        (and what they import) cost nothing unless that command runs.
    """

    def __init__(
        self,
        *args: Any,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        # The one entry of a parse, for a command's parser too (argparse's subparsers action
        # calls it), hence the place to add the options first.
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise Exit(status)


def _options(module: str, function: str) -> Callable[[argparse.ArgumentParser], None]:
    """A command's options, from its module imported when they are added (the modules import
    what their command runs: the host, the engines)."""

    def add(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(f"wasm_plugins.cli.{module}"), function)(parser)

    return add


class _Version(argparse.Action):
    """``--version``: the distribution's metadata is read only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **_: Any):
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from wasm_plugins._version import __version__  # noqa: PLC0415 - keeps start-up fast

        sys.stdout.write(f"{parser.prog} {__version__}\n")
        parser.exit()


def _fuzz_options(parser: argparse.ArgumentParser) -> None:
    from wasm_plugins.cli._fuzz import FUZZ_DESCRIPTION, fuzz_options  # noqa: PLC0415 - as above

    parser.description = FUZZ_DESCRIPTION
    fuzz_options(parser)


def build_parser() -> Parser:
    """The ``wasm-plugins`` parser, its commands and their one-line help."""
    parser = Parser(
        prog=PROG,
        description="Run untrusted WebAssembly plugins under enforced limits, with typed errors.",
        epilog="Exit status: 0 success, 1 a plugin error, 2 a usage error, 3 fuzz found a "
        "broken invariant.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "list",
        help="the installed plugins, their engine and functions",
        add_arguments=_options("_list", "list_options"),
    )
    commands.add_parser(
        "inspect",
        help="a plugin's manifest, exports, imports (and capabilities) and limits",
        add_arguments=_options("_inspect", "inspect_options"),
    )
    commands.add_parser(
        "call",
        help="call a plugin function and print its result",
        add_arguments=_options("_call", "call_options"),
    )
    commands.add_parser(
        "trust",
        help="the trust policy entry that grants what a plugin asks, to review and add",
        add_arguments=_options("_trust", "trust_command_options"),
    )
    commands.add_parser(
        "map",
        help="call a plugin function once per line of a JSON Lines file",
        add_arguments=_options("_map", "map_options"),
    )
    commands.add_parser(
        "fuzz",
        help="generated inputs and injected faults against a plugin, checking the error policy",
        add_arguments=_fuzz_options,
    )
    commands.add_parser(
        "new",
        help="scaffold a plugin distribution (c, zig, assemblyscript or wat)",
        add_arguments=_options("_guest", "new_options"),
    )
    commands.add_parser(
        "build",
        help="build a plugin project's module with its language's toolchain",
        add_arguments=_options("_guest", "build_options"),
    )
    commands.add_parser(
        "doctor",
        help="Python, packages, engines available and why not",
        add_arguments=_options("_doctor", "doctor_options"),
    )
    commands.add_parser(
        "demo",
        help="a host at work: good calls and typed failures",
        add_arguments=_options("_demo", "demo_options"),
    )
    commands.add_parser(
        "stats",
        help="run the demo or a fuzz run, then print its calls, errors and latencies per function",
        add_arguments=_options("_stats", "stats_options"),
    )
    return parser
