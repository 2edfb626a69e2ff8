"""The ``wasm-plugins`` command line: ``list``, ``inspect``, ``call``, ``trust``, ``fuzz``,
``new``, ``build``, ``doctor`` and ``demo``.

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
``new`` and ``build``, ``_doctor``, ``_demo``); ``_parser`` holds the parser and ``_format`` what
they print. A command imports what only it needs (the demo, the testing toolkit, Hypothesis) when
it runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO, cast

from wasm_plugins.cli._arguments import UsageError, trust_policy
from wasm_plugins.cli._call import call_function
from wasm_plugins.cli._demo import show_demo
from wasm_plugins.cli._doctor import diagnose
from wasm_plugins.cli._format import EscapingWriter, dump, report
from wasm_plugins.cli._fuzz import fuzz_plugin
from wasm_plugins.cli._guest import build_project, new_project
from wasm_plugins.cli._inspect import inspect_target
from wasm_plugins.cli._list import list_plugins
from wasm_plugins.cli._parser import PROG, Exit, build_parser
from wasm_plugins.cli._trust import print_entry
from wasm_plugins.errors import PluginError
from wasm_plugins.host import PluginHost
from wasm_plugins.trust import TrustPolicy

__all__ = ["main"]


def _discover(trust: TrustPolicy | None = None) -> PluginHost:
    """The host every command works with: the installed plugins, as the trust policy grants
    them (tests replace this)."""
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
    command = arguments.command
    discover = _discoverer(arguments)
    if command == "list":
        return list_plugins(arguments.json, out, discover, arguments.strict)
    if command == "inspect":
        return inspect_target(arguments, out, discover)
    if command == "call":
        return call_function(arguments, out, discover)
    if command == "trust":
        return print_entry(arguments, out, discover)
    if command == "fuzz":
        return fuzz_plugin(arguments, out)
    if command == "new":
        return new_project(arguments, out)
    if command == "build":
        return build_project(arguments, out)
    if command == "doctor":
        return diagnose(out, discover, arguments.json)
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
    except PluginError as error:
        return report(error, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:  # the last resort: a bug, still no traceback
        message = f"internal error: {type(exc).__name__}: {exc}"
        if as_json:
            dump({"kind": "internal", "message": message}, sys.stdout)
        else:
            sys.stderr.write(
                f"error: [internal] {message}\n  suggestion: a bug in wasm-plugins or in an "
                "installed extension; please report it with the command that failed\n"
            )
        return 1
