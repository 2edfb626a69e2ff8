"""``wasm-plugins call``: call a plugin function and print its result, with the limits, engine and
codec the command line changes."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from typing import Any, TextIO

import attrs

from wasm_plugins.cli._arguments import (
    duration,
    fuel,
    granted_by_flags,
    read_input,
    size,
    trust_options,
)
from wasm_plugins.cli._format import dump, underlying
from wasm_plugins.cli._guest_log import LOG_LEVELS, guest_log
from wasm_plugins.errors import ModuleError, PluginError
from wasm_plugins.host import PluginHost
from wasm_plugins.manifest import Manifest
from wasm_plugins.targets import resolve_target, scratch_host

__all__ = ["call_function", "call_options"]


def call_options(parser: argparse.ArgumentParser) -> None:
    """TARGET, FUNCTION, ``--input``, the limits, the engine and the output."""
    parser.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="JSON text, or @path to read it (@- stdin); default null",
    )
    parser.add_argument("--engine", metavar="E", help="engine: auto, wasmer, wasmtime...")
    parser.add_argument("--timeout", metavar="DURATION", type=duration, help="such as '200 ms'")
    parser.add_argument("--memory", metavar="SIZE", type=size, help="such as '16 MiB'")
    parser.add_argument("--fuel", metavar="N", type=fuel, help="units of work (wasmtime)")
    parser.add_argument(
        "--json", action="store_true", help="one line of JSON: the value, or the error's dict"
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="raw codec: send the input text's bytes, print text or hex",
    )
    trust_options(parser)
    parser.add_argument(
        "--log",
        metavar="LEVEL",
        type=str.upper,
        choices=LOG_LEVELS,
        help="show the plugin's log lines (and WASI output) at LEVEL and above on stderr, escaped",
    )


def _overrides(manifest: Manifest, arguments: argparse.Namespace) -> Manifest:
    changes = {
        name: value
        for name, value in (
            ("memory", arguments.memory),
            ("timeout", arguments.timeout),
            ("fuel", arguments.fuel),
        )
        if value is not None
    }
    evolved = manifest
    if changes:
        evolved = attrs.evolve(evolved, limits=manifest.limits.replace(**changes))
    if arguments.engine is not None:
        evolved = attrs.evolve(evolved, engine=arguments.engine)
    if arguments.raw and evolved.codec != "raw":
        evolved = attrs.evolve(evolved, codec="raw")
    return evolved


def _print_value(value: Any, as_json: bool, out: TextIO) -> None:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            text, is_text = data.decode("utf-8"), True
        except UnicodeDecodeError:
            text, is_text = data.hex(), False
        if as_json:
            dump({"text": text} if is_text else {"hex": text}, out)
        else:
            out.write(text + ("\n" if not text.endswith("\n") else ""))
        return
    dump(value, out, pretty=not as_json)


def _suggest_function(error: PluginError, host: PluginHost, plugin: str, function: str) -> None:
    """Replace the suggestion of a "no exported function" error with the plugin's functions."""
    inner = underlying(error)
    if not isinstance(inner, ModuleError) or inner.missing_export != function:
        return
    known = list(host.plugins[plugin].manifest.functions)
    if not known:
        try:
            known = list(host.sandbox(plugin).functions)
        except PluginError:
            return
    if not known:
        return
    close = difflib.get_close_matches(function, known, n=1)
    inner.suggestion = (f"did you mean {close[0]!r}? " if close else "") + (
        f"{plugin} offers: {', '.join(known)}"
    )


def call_function(
    arguments: argparse.Namespace, out: TextIO, discover: Callable[[], PluginHost]
) -> int:
    """Call the function and print its value; a typed error propagates (the caller prints it)."""
    base = discover()
    host = base
    try:
        target = resolve_target(
            base, arguments.target, raw=arguments.raw, extra=granted_by_flags(arguments)
        )
        manifest = _overrides(target.manifest, arguments)
        raw = manifest.codec == "raw"
        value = read_input(arguments.input, raw)
        if not target.installed or manifest != target.manifest:
            host = scratch_host(base, manifest, review=target.review)
        try:
            with guest_log(arguments.log, sys.stderr):
                result = host.call(manifest.name, arguments.function, value)
        except PluginError as error:
            _suggest_function(error, host, manifest.name, arguments.function)
            raise
        _print_value(result, arguments.json, out)
        return 0
    finally:
        if host is not base:
            host.close()
        base.close()
