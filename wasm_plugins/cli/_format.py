"""What the commands print: JSON documents, wrapped text, typed errors, limits and engine labels."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from wasm_plugins._escape import escape, escape_lines
from wasm_plugins._tables import WIDTH
from wasm_plugins._units import format_duration, format_size

if TYPE_CHECKING:
    from wasm_plugins.engine import ExternInfo
    from wasm_plugins.errors import PluginError
    from wasm_plugins.host import PluginHost
    from wasm_plugins.manifest import Manifest
    from wasm_plugins.sandbox import Limits

__all__ = [
    "EscapingWriter",
    "describe",
    "dump",
    "emit",
    "engine_label",
    "extern_type",
    "limit_text",
    "limits_json",
    "paragraph",
    "report",
    "underlying",
]


def emit(out: TextIO, lines: Iterable[str]) -> None:
    """Write each line, with its newline."""
    for line in lines:
        out.write(line + "\n")


def dump(value: Any, out: TextIO, *, pretty: bool = False) -> None:
    """One JSON document and a newline (indented when ``pretty``); every character that is not
    printable (a plugin's text may hold terminal escapes) written as a JSON escape."""
    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, default=str)
    if not text.isprintable():
        text = "".join(
            character if character.isprintable() or character == "\n" else _json_escape(character)
            for character in text
        )
    out.write(text + "\n")


def _json_escape(character: str) -> str:
    code = ord(character)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class EscapingWriter:
    """A text stream that shows the control characters of what is written (a plugin's names,
    messages and output may hold terminal escapes), keeping newlines."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(escape_lines(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def paragraph(out: TextIO, text: str) -> None:
    """Text wrapped to the width, after a blank line."""
    out.write("\n" + "\n".join(textwrap.wrap(text, WIDTH, break_on_hyphens=False)) + "\n")


def extern_type(item: ExternInfo) -> str:
    """A function's signature, or a memory's size in pages."""
    if item.signature is not None:
        return str(item.signature)
    if item.kind == "memory" and item.minimum is not None:
        maximum = "none" if item.maximum is None else str(item.maximum)
        pages = "page" if item.minimum == 1 else "pages"
        return f"{item.minimum} {pages} min, {maximum} max (64 KiB pages)"
    return "-"


def underlying(error: PluginError) -> PluginError:
    """The typed error inside a ContextualError (its kind is what happened)."""
    # Loaded by the command that raised the error: importing it here costs nothing then.
    from wasm_plugins.errors import ContextualError  # noqa: PLC0415 - keeps --help fast

    return error.error if isinstance(error, ContextualError) else error


def report(error: PluginError, as_json: bool) -> int:
    """Print a typed error (stderr, or one JSON object on stdout with ``--json``); exit code 1."""
    inner = underlying(error)
    if as_json:
        dump(inner.to_dict(), sys.stdout)
    else:
        sys.stderr.write(describe(inner) + "\n")
    return 1


def describe(error: PluginError) -> str:
    """``error: [kind] message (plugin.function)`` and the suggestion, wrapped to the width."""
    inner = underlying(error)
    where = ".".join(part for part in (inner.plugin, inner.function) if part)
    text = f"error: [{inner.kind}] {inner.message}" + (f" ({where})" if where else "")
    lines = textwrap.wrap(escape(text), WIDTH, subsequent_indent="    ", break_on_hyphens=False)
    if inner.suggestion:
        # A suggestion may end with lines to copy (a trust policy entry): those stay as they are.
        first, *verbatim = inner.suggestion.split("\n")
        lines += textwrap.wrap(
            f"suggestion: {escape(first)}",
            WIDTH,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        lines += [f"    {escape(line)}" for line in verbatim]
    return "\n".join(lines)


def limit_text(name: str, value: Any) -> str:
    """A limit with its unit (``16 MiB``, ``200 ms``, ``1,000 units``), or that there is none."""
    if value is None:
        return "unlimited" if name != "timeout" else "none"
    if name == "timeout":
        return format_duration(float(value))
    if name == "fuel":
        return f"{value:,} units"
    return format_size(int(value))


def limits_json(limits: Limits) -> dict[str, Any]:
    """The limits as JSON, each key naming its unit."""
    return {
        "memory_bytes": limits.memory,
        "fuel": limits.fuel,
        "timeout_seconds": limits.timeout,
        "max_input_bytes": limits.max_input,
        "max_output_bytes": limits.max_output,
    }


def engine_label(host: PluginHost, manifest: Manifest) -> tuple[str, str]:
    """(engine name, how it was chosen) for a plugin: ``none`` when no engine can load, with
    ``(unavailable)`` when the one it names cannot."""
    from wasm_plugins.engine import ENGINE_ENVIRONMENT_VARIABLE  # noqa: PLC0415 - keeps --help fast
    from wasm_plugins.errors import ConfigurationError  # noqa: PLC0415 - keeps --help fast

    requested = manifest.engine or host.engine_name
    how = "manifest" if manifest.engine else "host"
    try:
        resolved = host.engines.resolve_name(requested)
    except ConfigurationError:
        return "none", how
    if requested in (None, "auto"):
        how = (
            "auto"
            if not os.environ.get(ENGINE_ENVIRONMENT_VARIABLE)
            else ENGINE_ENVIRONMENT_VARIABLE
        )
    if host.engines.availability().get(resolved, "unknown engine") is not None:
        return f"{resolved} (unavailable)", how
    return resolved, how
