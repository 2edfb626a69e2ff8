"""``wasm-plugins list``: the installed plugins, their engine and functions, and discovery
problems."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any, TextIO

import attrs

from wasm_plugins._tables import WIDTH, table
from wasm_plugins.cli._arguments import trust_options
from wasm_plugins.cli._format import dump, emit, engine_label, underlying
from wasm_plugins.errors import PluginError
from wasm_plugins.host import PluginHost

__all__ = ["list_options", "list_plugins"]


def list_options(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--strict``, ``--trust`` and ``--check``."""
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when discovery found a problem (for CI)",
    )
    trust_options(parser, flags=False)
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile, check and link every plugin now; exit 1 when one does not load",
    )


def _plugin_summary(host: PluginHost, name: str) -> dict[str, Any]:
    info = host.plugins[name]
    manifest = info.manifest
    engine, how = engine_label(host, manifest)
    entry: dict[str, Any] = {
        "name": name,
        "version": manifest.version,
        "description": manifest.description,
        "distribution": info.distribution,
        "engine": engine,
        "engine_choice": how,
        "capabilities": sorted(manifest.capabilities),
        "functions": list(manifest.functions),
        "functions_from": "manifest",
        "error": None,
    }
    if not manifest.functions:
        entry["functions_from"] = "exports"
        try:
            entry["functions"] = list(host.sandbox(name).functions)
        except PluginError as error:
            inner = underlying(error)
            entry["functions"] = []
            entry["error"] = {"kind": inner.kind, "message": inner.message}
    return entry


def list_plugins(
    as_json: bool,
    out: TextIO,
    discover: Callable[[], PluginHost],
    strict: bool = False,
    check: bool = False,
) -> int:
    """Print the plugins of the host ``discover`` makes, as a table or one JSON document; with
    ``strict``, the exit status is 1 when there are discovery problems; with ``check``, every
    plugin is loaded first and one that does not load is a problem (exit 1)."""
    with discover() as host:
        failed = host.preload() if check else []
        plugins = [_plugin_summary(host, name) for name in sorted(host.plugins)]
        problems = [attrs.asdict(problem) for problem in host.problems]
    if as_json:
        dump({"plugins": plugins, "problems": problems}, out)
        return 1 if failed or (strict and problems) else 0
    if not plugins:
        out.write(
            "No plugins installed. Plugins come in Python distributions with a 'wasm_plugins' "
            "entry point;\nfrom a source checkout: pip install -e plugins/text-tools "
            "-e plugins/hostile-pack\n"
        )
    else:
        rows = []
        for entry in plugins:
            functions = ", ".join(entry["functions"]) or "-"
            if entry["error"] is not None:
                functions = f"(does not load: {entry['error']['kind']})"
            rows.append(
                (
                    entry["name"],
                    entry["version"],
                    entry["engine"],
                    ", ".join(entry["capabilities"]) or "-",
                    functions,
                )
            )
        emit(out, table(("NAME", "VERSION", "ENGINE", "CAPABILITIES", "FUNCTIONS"), rows))
    count = len(plugins)
    out.write(
        f"\n{count} plugin{'s' if count != 1 else ''}, "
        f"{len(problems)} discovery problem{'s' if len(problems) != 1 else ''}"
        + (":" if problems else ".")
        + "\n"
    )
    for problem in problems:
        where = problem["distribution"] or problem["source"]
        if problem["stage"] == "preload":
            where = f"{problem['source']} ({where})"
        # The first line says what failed; a refusal's entry to add is for `trust NAME`.
        reason, *more = problem["reason"].split("\n")
        if problem["stage"] == "trust" and more:
            reason += " (wasm-plugins trust NAME prints the entry that would grant it)"
        text = f"{where}: {problem['stage']} failed: {reason}"
        emit(out, textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="    "))
    return 1 if failed or (strict and problems) else 0
