"""The ``wasm-plugins`` command line: ``list``, ``inspect``, ``call``, ``trust``, ``fuzz``,
``new``, ``build``, ``doctor``, ``demo`` and ``stats``.

Exit codes: 0 success, 1 a typed plugin error (printed as ``[kind] message`` and a suggestion on
stderr, or as one JSON object on stdout with ``--json``), 2 a usage error (bad arguments, a size or
duration with an unknown unit, ``--input`` that is not JSON or cannot be read, ``fuzz`` without
Hypothesis installed), 3 ``fuzz`` found an invariant that does not hold, 130 interrupted.

``call --json`` prints a failure as the *underlying* error's ``to_dict()``: ``host.call`` raises a
:class:`~wasm_plugins.errors.ContextualError` that wraps the typed error, and the CLI unwraps it, so
``kind`` is the kind that happened (``timeout``, ``runtime``...) and the object round-trips through
:meth:`~wasm_plugins.errors.PluginError.from_dict`.

Plugins are granted what the trust policy says (``--trust FILE``, else ``WASM_PLUGINS_TRUST``,
else the default policy), plus what ``--allow``, ``--preopen`` and ``--allow-http`` grant the
plugin the command names. Every string a plugin controls is printed with its control characters
shown.

Each command is a module (``_list``, ``_inspect``, ``_call``, ``_trust``, ``_fuzz``, ``_guest`` for
``new`` and ``build``, ``_doctor``, ``_demo``, ``_stats``); ``_parser`` holds the parser and
``_format`` what they print. A command imports what only it needs (the demo, the testing
toolkit, Hypothesis) when it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO, cast

from wasm_plugins.cli._arguments import UsageError, trust_policy
from wasm_plugins.cli._format import EscapingWriter, dump, report
from wasm_plugins.cli._parser import PROG, Exit, build_parser

if TYPE_CHECKING:
    from wasm_plugins.host import PluginHost
    from wasm_plugins.trust import TrustPolicy

__all__ = ["main"]


def _discover(trust: TrustPolicy | None = None) -> PluginHost:
    """The host every command works with: the installed plugins, as the trust policy grants
    them (tests replace this)."""
    from wasm_plugins.host import PluginHost  # noqa: PLC0415 - keeps --help fast

    return PluginHost.discover(trust=trust)


def _discoverer(arguments: argparse.Namespace) -> Callable[[], PluginHost]:
    """Discovery under the policy the command line gives (``--trust`` and the flags)."""
    policy = trust_policy(arguments)
    if policy is None:
        return lambda: _discover()  # noqa: PLW0108 - tests replace _discover after import
    return lambda: _discover(policy)


def _silence_stdout() -> None:
    """The reader went away (``| head``): send what is left to /dev/null, no traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _run(arguments: argparse.Namespace, out: TextIO) -> int:
    # Each command's module is imported when it runs, so what it needs costs --help nothing:
    # that is the reason for each PLC0415 exception below.
    command = arguments.command
    discover = _discoverer(arguments)
    if command == "list":
        from wasm_plugins.cli._list import list_plugins  # noqa: PLC0415

        return list_plugins(arguments.json, out, discover, arguments.strict, arguments.check)
    if command == "inspect":
        from wasm_plugins.cli._inspect import inspect_target  # noqa: PLC0415

        return inspect_target(arguments, out, discover)
    if command == "call":
        from wasm_plugins.cli._call import call_function  # noqa: PLC0415

        return call_function(arguments, out, discover)
    if command == "trust":
        from wasm_plugins.cli._trust import print_entry  # noqa: PLC0415

        return print_entry(arguments, out, discover)
    if command == "map":
        from wasm_plugins.cli._map import map_file  # noqa: PLC0415

        return map_file(arguments, out, discover)
    if command == "fuzz":
        from wasm_plugins.cli._fuzz import fuzz_plugin  # noqa: PLC0415

        return fuzz_plugin(arguments, out)
    if command in ("new", "build"):
        from wasm_plugins.cli._guest import build_project, new_project  # noqa: PLC0415

        return (new_project if command == "new" else build_project)(arguments, out)
    if command == "doctor":
        from wasm_plugins.cli._doctor import diagnose  # noqa: PLC0415

        return diagnose(out, discover, arguments.json)
    if command == "stats":
        from wasm_plugins.cli._stats import print_stats  # noqa: PLC0415

        return print_stats(arguments, out)
    from wasm_plugins.cli._demo import show_demo  # noqa: PLC0415

    return show_demo(out, arguments.hostapi)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wasm-plugins`` command; returns the exit status."""
    command = ""
    as_json = False
    try:
        arguments = build_parser().parse_args(argv)
        command = arguments.command
        as_json = bool(getattr(arguments, "json", False))
        # Plugins' names, messages and output reach the terminal with control characters shown.
        return _run(arguments, cast(TextIO, EscapingWriter(sys.stdout)))
    except Exit as stop:
        return stop.status
    except UsageError as problem:
        message = problem.message
        if not message.startswith(PROG):
            message = f"{PROG} {command}: error: {message}"
        sys.stderr.write(f"{problem.usage}{message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:
        errors = sys.modules.get("wasm_plugins.errors")
        # A typed error comes from a command that loaded the errors package: no import here.
        if errors is not None and isinstance(exc, errors.PluginError):
            return report(exc, as_json)
        # The last resort: a bug, still no traceback.
        message = f"internal error: {type(exc).__name__}: {exc}"
        if as_json:
            dump({"kind": "internal", "message": message}, sys.stdout)
        else:
            sys.stderr.write(
                f"error: [internal] {message}\n  suggestion: a bug in wasm-plugins or in an "
                "installed extension; please report it with the command that failed\n"
            )
        return 1
