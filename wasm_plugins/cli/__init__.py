"""The ``wasm-plugins`` command line: ``list``, ``inspect``, ``call``, ``fuzz``, ``doctor`` and
``demo``.

Exit codes: 0 success, 1 a typed plugin error (printed as ``[kind] message`` and a suggestion on
stderr, or as one JSON object on stdout with ``--json``), 2 a usage error (bad arguments, a size or
duration with an unknown unit, ``--input`` that is not JSON or cannot be read, ``fuzz`` without
Hypothesis installed), 3 ``fuzz`` found an invariant that does not hold, 130 interrupted.

``call --json`` prints a failure as the *underlying* error's ``to_dict()``: ``host.call`` raises a
:class:`~wasm_plugins.errors.ContextualError` that wraps the typed error, and the CLI unwraps it, so
``kind`` is the kind that happened (``timeout``, ``runtime``...) and the object round-trips through
:meth:`~wasm_plugins.errors.PluginError.from_dict`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import platform
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

import attrs

from wasm_plugins._demo import run_demo
from wasm_plugins._units import format_duration, format_size, parse_duration, parse_size
from wasm_plugins.discovery import DISABLE_ENVIRONMENT_VARIABLE
from wasm_plugins.engine import (
    ENGINE_ENVIRONMENT_VARIABLE,
    Engine,
    EngineModule,
    EngineRegistry,
    ExternInfo,
)
from wasm_plugins.errors import ConfigurationError, ContextualError, ModuleError, PluginError
from wasm_plugins.host import PluginHost
from wasm_plugins.manifest import Manifest
from wasm_plugins.sandbox import IMPORT_MODULE, Limits, load_module_bytes
from wasm_plugins.sandbox._abi import plugin_functions
from wasm_plugins.sandbox._sandbox import WASI_MODULE

__all__ = ["main"]

PROG = "wasm-plugins"
WIDTH = 100
"""Tables and rows are laid out to stay readable in 100 columns."""
MODULE_SUFFIXES = (".wasm", ".wat")
MANIFEST_SUFFIX = ".toml"
PACKAGES = (
    "wasm-plugins",
    "pluggy",
    "attrs",
    "cattrs",
    "loguru",
    "wasmtime",
    "wasmer",
    "wasmer-compiler-cranelift",
)
_NOT_NAME = re.compile(r"[^a-z0-9_.-]+")


class UsageError(Exception):
    """A bad command line: printed argparse-style (with the usage when known), exit status 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


def _discover() -> PluginHost:
    """The host every command works with: the installed plugins (tests replace this)."""
    return PluginHost.discover()


# -- output helpers -----------------------------------------------------------------------------


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "", width: int = WIDTH
) -> list[str]:
    """Aligned plain-text columns; the last column wraps so that lines fit in ``width``."""
    body = [list(row) for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in body)]) for i, header in enumerate(headers)
    ]
    fixed = len(indent) + sum(widths[:-1]) + 2 * (len(headers) - 1)
    room = max(width - fixed, 24)
    lines = []
    for row in [list(headers), *body]:
        left = "  ".join(cell.ljust(size) for cell, size in zip(row[:-1], widths, strict=False))
        wrapped = textwrap.wrap(row[-1], room, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{left}  {wrapped[0]}".rstrip() if left else indent + wrapped[0])
        lines.extend(" " * fixed + more for more in wrapped[1:])
    return lines


def _fields(pairs: Iterable[tuple[str, str]], indent: str = "  ", width: int = WIDTH) -> list[str]:
    """``label  value`` lines with aligned values; long values wrap under themselves."""
    items = list(pairs)
    size = max((len(label) for label, _ in items), default=0)
    lines = []
    for label, value in items:
        room = max(width - len(indent) - size - 2, 24)
        wrapped = textwrap.wrap(value, room, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{label.ljust(size)}  {wrapped[0]}")
        lines.extend(f"{indent}{' ' * size}  {more}" for more in wrapped[1:])
    return lines


def _paragraph(out: TextIO, text: str) -> None:
    """Text wrapped to the width, after a blank line."""
    out.write("\n" + "\n".join(textwrap.wrap(text, WIDTH, break_on_hyphens=False)) + "\n")


def _extern_type(item: ExternInfo) -> str:
    """A function's signature, or a memory's size in pages."""
    if item.signature is not None:
        return str(item.signature)
    if item.kind == "memory" and item.minimum is not None:
        maximum = "none" if item.maximum is None else str(item.maximum)
        pages = "page" if item.minimum == 1 else "pages"
        return f"{item.minimum} {pages} min, {maximum} max (64 KiB pages)"
    return "-"


def _emit(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        out.write(line + "\n")


def _dump(value: Any, out: TextIO, *, pretty: bool = False) -> None:
    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False, default=str)
    out.write(text + "\n")


def _underlying(error: PluginError) -> PluginError:
    """The typed error inside a ContextualError (its kind is what happened)."""
    return error.error if isinstance(error, ContextualError) else error


def _report(error: PluginError, as_json: bool) -> int:
    """Print a typed error (stderr, or one JSON object on stdout with ``--json``); exit code 1."""
    inner = _underlying(error)
    if as_json:
        _dump(inner.to_dict(), sys.stdout)
    else:
        sys.stderr.write(_describe(inner) + "\n")
    return 1


def _describe(error: PluginError) -> str:
    """``error: [kind] message (plugin.function)`` and the suggestion, wrapped to the width."""
    inner = _underlying(error)
    where = ".".join(part for part in (inner.plugin, inner.function) if part)
    text = f"error: [{inner.kind}] {inner.message}" + (f" ({where})" if where else "")
    lines = textwrap.wrap(text, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
    if inner.suggestion:
        lines += textwrap.wrap(
            f"suggestion: {inner.suggestion}",
            WIDTH,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def _limit_text(name: str, value: Any) -> str:
    if value is None:
        return "unlimited" if name != "timeout" else "none"
    if name == "timeout":
        return format_duration(float(value))
    if name == "fuel":
        return f"{value:,} units"
    return format_size(int(value))


def _limits_json(limits: Limits) -> dict[str, Any]:
    return {
        "memory_bytes": limits.memory,
        "fuel": limits.fuel,
        "timeout_seconds": limits.timeout,
        "max_input_bytes": limits.max_input,
        "max_output_bytes": limits.max_output,
    }


# -- targets: an installed plugin's name, or a manifest or module file --------------------------


@attrs.frozen
class Target:
    """What TARGET named: the manifest, and whether it is an installed plugin of the host."""

    manifest: Manifest
    installed: bool
    source: str
    """Where it came from, for people: a distribution or a file path."""


def _unknown_plugin(host: PluginHost, name: str) -> ConfigurationError:
    close = difflib.get_close_matches(name, list(host.plugins), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigurationError(
        field="plugin",
        plugin=name,
        message=f"Invalid configuration: plugin - no plugin named {name!r}",
        suggestion=hint
        + f"'{PROG} list' shows the installed plugins; a path to a .toml, .wasm or .wat file "
        "works too",
    )


def _module_name(path: Path) -> str:
    """A valid plugin name from a file name: ``My Module.wat`` -> ``my-module``."""
    name = _NOT_NAME.sub("-", path.stem.lower()).lstrip("-_.")[:64].rstrip("-_.")
    return name or "module"


def _is_module_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in MODULE_SUFFIXES:
        return True
    if suffix == MANIFEST_SUFFIX:
        return False
    try:
        with path.open("rb") as file:
            head = file.read(256)
    except OSError:
        return False
    return head.startswith(b"\0asm") or head.lstrip().startswith((b"(module", b";;", b"(;"))


def resolve_target(host: PluginHost, target: str, *, raw: bool = False) -> Target:
    """The manifest TARGET stands for.

    :raises ConfigurationError: for an unknown plugin (with a "did you mean"), a missing file or an
        invalid manifest.
    """
    info = host.plugins.get(target)
    if info is not None:
        return Target(info.manifest, True, info.distribution or "registered by the host")
    path = Path(target)
    looks_like_path = (
        path.suffix.lower() in (*MODULE_SUFFIXES, MANIFEST_SUFFIX)
        or os.sep in target
        or "/" in target
        or path.exists()
    )
    if not looks_like_path:
        raise _unknown_plugin(host, target)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ConfigurationError(
            field="target",
            message=f"Invalid configuration: target - {problem}: {target}",
            suggestion="give an installed plugin's name, or the path of a plugin manifest (.toml) "
            "or of a module (.wasm, .wat)",
        )
    if not _is_module_file(path):
        return Target(Manifest.from_file(path), False, str(path))
    manifest = Manifest.from_dict(
        {
            "name": _module_name(path),
            "module": {"path": str(path.resolve())},
            "description": f"The module {path.name}, not packaged as a plugin.",
            "codec": "raw" if raw else "json",
        }
    )
    return Target(manifest, False, str(path))


def _engine_factory(registry: EngineRegistry, name: str) -> Callable[[], Engine]:
    def factory() -> Engine:
        try:
            return registry.get(name)
        except ConfigurationError as exc:
            raise ImportError(registry.availability().get(name) or exc.message) from None

    return factory


def scratch_host(base: PluginHost, manifest: Manifest) -> PluginHost:
    """A host that runs ``manifest`` alone, with the engines and host functions of ``base``.

    Used for module and manifest files, and for installed plugins whose manifest the command line
    changes (``--engine``, ``--memory``...): a host cannot register a second plugin of one name.
    """
    host = PluginHost(engine=base.engine_name, isolation=base.isolation)
    for name in base.engines.names():
        host.engines.register(name, _engine_factory(base.engines, name))
    host.host_functions.update(base.host_functions)
    host.load(manifest)
    return host


def _engine_label(host: PluginHost, manifest: Manifest) -> tuple[str, str]:
    """(engine name, how it was chosen) for a plugin: ``none`` when no engine can load, with
    ``(unavailable)`` when the one it names cannot."""
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


# -- list ---------------------------------------------------------------------------------------


def _plugin_summary(host: PluginHost, name: str) -> dict[str, Any]:
    info = host.plugins[name]
    manifest = info.manifest
    engine, how = _engine_label(host, manifest)
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
            inner = _underlying(error)
            entry["functions"] = []
            entry["error"] = {"kind": inner.kind, "message": inner.message}
    return entry


def _list(as_json: bool, out: TextIO) -> int:
    with _discover() as host:
        plugins = [_plugin_summary(host, name) for name in sorted(host.plugins)]
        problems = [attrs.asdict(problem) for problem in host.problems]
    if as_json:
        _dump({"plugins": plugins, "problems": problems}, out)
        return 0
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
        _emit(out, _table(("NAME", "VERSION", "ENGINE", "CAPABILITIES", "FUNCTIONS"), rows))
    count = len(plugins)
    out.write(
        f"\n{count} plugin{'s' if count != 1 else ''}, "
        f"{len(problems)} discovery problem{'s' if len(problems) != 1 else ''}"
        + (":" if problems else ".")
        + "\n"
    )
    for problem in problems:
        where = problem["distribution"] or problem["source"]
        out.write(f"  {where}: {problem['stage']} failed: {problem['reason']}\n")
    return 0


# -- inspect ------------------------------------------------------------------------------------


def _compile(host: PluginHost, manifest: Manifest) -> EngineModule:
    """The module compiled as its author wrote it (nothing of it runs: no instance is made)."""
    engine = host.engines.get(manifest.engine or host.engine_name)
    try:
        source = manifest.module_source()
    except OSError as exc:
        raise ConfigurationError(
            field="module",
            plugin=manifest.name,
            message=f"Invalid configuration: module - cannot read the module: {exc}",
            suggestion="check [module] in the manifest; the file must exist next to it",
        ) from None
    wasm = load_module_bytes(source, engine)
    engine.validate(wasm)
    return engine.compile(wasm)


def _import_row(
    host: PluginHost, manifest: Manifest, module: str, name: str, kind: str
) -> dict[str, Any]:
    """What an import needs: the capability, and whether the manifest grants it."""
    offered = True
    capability: str | None = None
    if module == WASI_MODULE:
        capability = "wasi"
    elif (module == IMPORT_MODULE and name == "error") or kind == "memory":
        capability = None  # the ABI's own error import, or a memory the host creates
    elif (module, name) in host.host_functions:
        capability = host.host_functions[(module, name)].capability
    else:
        offered = False
    if not offered:
        status = "not offered by this host"
    elif capability is None or capability in manifest.capabilities:
        status = "ok"
    else:
        status = "denied: not granted"
    return {"capability": capability, "offered": offered, "status": status}


def _inspect_data(host: PluginHost, target: Target) -> tuple[dict[str, Any], PluginError | None]:
    manifest = target.manifest
    engine, how = _engine_label(host, manifest)
    wasi = manifest.wasi
    data: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
        "source": target.source,
        "installed": target.installed,
        "module": {k: v for k, v in attrs.asdict(manifest.module).items() if k != "wasm" and v},
        "codec": manifest.codec,
        "abi": manifest.abi,
        "engine": engine,
        "engine_choice": how,
        "isolation": manifest.isolation,
        "limits": _limits_json(manifest.limits),
        "capabilities": sorted(manifest.capabilities),
        "config_keys": sorted(manifest.config),
        "wasi": {
            "granted": "wasi" in manifest.capabilities,
            "preopens": [attrs.asdict(p) for p in wasi.preopens],
            "env": list(wasi.env),
            "args": list(wasi.args),
            "capture_output": wasi.capture_output,
        },
        "functions": [
            {
                "name": name,
                "description": spec.description,
                "idempotent": spec.idempotent,
                "simplified": spec.simplified,
                "has_default": spec.has_default,
            }
            for name, spec in manifest.functions.items()
        ],
        "functions_from": "manifest",
        "exports": [],
        "imports": [],
        "missing_capabilities": [],
        "module_error": None,
    }
    try:
        module = _compile(host, manifest)
    except PluginError as error:
        inner = _underlying(error)
        data["module_error"] = {"kind": inner.kind, "message": inner.message}
        return data, inner
    data["exports"] = [
        {"name": e.name, "kind": e.kind, "signature": _extern_type(e)} for e in module.exports
    ]
    for item in module.imports:
        row = {
            "module": item.module,
            "name": item.name,
            "kind": item.kind,
            "signature": _extern_type(item),
            **_import_row(host, manifest, item.module or "", item.name, item.kind),
        }
        data["imports"].append(row)
    data["missing_capabilities"] = sorted(
        {row["capability"] for row in data["imports"] if row["status"].startswith("denied")}
    )
    if not manifest.functions:
        data["functions_from"] = "exports"
        data["functions"] = [
            {
                "name": name,
                "description": "",
                "idempotent": False,
                "simplified": None,
                "has_default": False,
            }
            for name in plugin_functions(module.exports)
        ]
    return data, None


def _inspect_text(data: Mapping[str, Any], out: TextIO) -> None:
    out.write(f"{data['name']} {data['version']}\n")
    if data["description"]:
        _emit(
            out,
            textwrap.wrap(data["description"], WIDTH, initial_indent="  ", subsequent_indent="  "),
        )
    module = ", ".join(f"{key} {value}" for key, value in data["module"].items())
    wasi = data["wasi"]
    if wasi["granted"]:
        preopens = [
            f"{p['host']} -> {p['guest']} ({'read-only' if p['read_only'] else 'read-write'})"
            for p in wasi["preopens"]
        ]
        wasi_text = (
            f"preopens: {', '.join(preopens) or 'none'}; env: {', '.join(wasi['env']) or 'none'}; "
            f"args: {' '.join(wasi['args']) or 'none'}; output "
            + ("captured to the log" if wasi["capture_output"] else "discarded")
        )
    else:
        wasi_text = "not granted"
    out.write("\nManifest\n")
    _emit(
        out,
        _fields(
            [
                ("source", ("installed: " if data["installed"] else "file: ") + data["source"]),
                ("module", module),
                ("codec", data["codec"]),
                ("abi", str(data["abi"])),
                ("engine", f"{data['engine']} (chosen by {data['engine_choice']})"),
                ("isolation", data["isolation"]),
                ("capabilities", ", ".join(data["capabilities"]) or "none"),
                ("config keys", ", ".join(data["config_keys"]) or "none"),
                ("wasi", wasi_text),
            ]
        ),
    )
    out.write("\nLimits\n")
    limits = data["limits"]
    values = {
        "memory": limits["memory_bytes"],
        "fuel": limits["fuel"],
        "timeout": limits["timeout_seconds"],
        "max_input": limits["max_input_bytes"],
        "max_output": limits["max_output_bytes"],
    }
    _emit(out, _fields((name, _limit_text(name, value)) for name, value in values.items()))
    out.write(f"\nFunctions (from the {data['functions_from']})\n")
    if data["functions"]:
        rows = [
            (f["name"], "yes" if f["idempotent"] else "no", f["description"] or "-")
            for f in data["functions"]
        ]
        _emit(out, _table(("NAME", "IDEMPOTENT", "DESCRIPTION"), rows, indent="  "))
    else:
        out.write("  none\n")
    if data["module_error"] is not None:
        error = data["module_error"]
        out.write(f"\nModule: cannot be compiled: [{error['kind']}] {error['message']}\n")
        return
    out.write("\nExports\n")
    exports = [(e["name"], e["kind"], e["signature"] or "-") for e in data["exports"]]
    _emit(out, _table(("NAME", "KIND", "SIGNATURE"), exports, "  ") if exports else ["  none"])
    out.write("\nImports\n")
    imports = [
        (
            f"{i['module']}.{i['name']}",
            i["kind"],
            i["signature"] or "-",
            i["capability"] or ("-" if i["offered"] else "?"),
            i["status"],
        )
        for i in data["imports"]
    ]
    headers = ("IMPORT", "KIND", "SIGNATURE", "CAPABILITY", "STATUS")
    _emit(out, _table(headers, imports, indent="  ") if imports else ["  none"])
    missing = data["missing_capabilities"]
    unoffered = [f"{i['module']}.{i['name']}" for i in data["imports"] if not i["offered"]]
    if missing:
        _paragraph(
            out,
            f"The imports need the capabilities {', '.join(repr(c) for c in missing)}, which the "
            "manifest does not grant: loading fails with a security_violation.",
        )
    if unoffered:
        _paragraph(
            out, f"This host offers no {', '.join(unoffered)}: loading fails with a module error."
        )


def _inspect(target_name: str, as_json: bool, out: TextIO) -> int:
    with _discover() as host:
        target = resolve_target(host, target_name)
        data, module_error = _inspect_data(host, target)
    if as_json:
        _dump(data, out)
    else:
        _inspect_text(data, out)
    return 1 if module_error is not None else 0


# -- call ---------------------------------------------------------------------------------------


def _size(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fuel(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of fuel units, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"fuel must be positive, got {text!r}")
    return value


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _read_input(spec: str | None, raw: bool) -> Any:
    """``--input``: JSON text, or ``@path`` (``@-``: standard input) to read it from a file."""
    if spec is None:
        return b"" if raw else None
    if spec.startswith("@"):
        where = spec[1:]
        try:
            data = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
        except OSError as exc:
            raise UsageError(f"--input: cannot read {where!r}: {exc.strerror or exc}") from None
    else:
        data = spec.encode("utf-8", "surrogateescape")
    if raw:
        return data
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise UsageError(f"--input is not UTF-8 text: {exc}") from None
    except ValueError as exc:
        shown = spec if len(spec) <= 60 else spec[:57] + "..."
        raise UsageError(
            f"--input {shown!r} is not valid JSON ({exc}); quote strings, for example "
            "--input '\"text\"', or use --raw to send the text as bytes"
        ) from None


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
            _dump({"text": text} if is_text else {"hex": text}, out)
        else:
            out.write(text + ("\n" if not text.endswith("\n") else ""))
        return
    _dump(value, out, pretty=not as_json)


def _suggest_function(error: PluginError, host: PluginHost, plugin: str, function: str) -> None:
    """Replace the suggestion of a "no exported function" error with the plugin's functions."""
    inner = _underlying(error)
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


def _call(arguments: argparse.Namespace, out: TextIO) -> int:
    base = _discover()
    host = base
    try:
        target = resolve_target(base, arguments.target, raw=arguments.raw)
        manifest = _overrides(target.manifest, arguments)
        raw = manifest.codec == "raw"
        value = _read_input(arguments.input, raw)
        if not target.installed or manifest != target.manifest:
            host = scratch_host(base, manifest)
        try:
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


# -- fuzz ---------------------------------------------------------------------------------------

FUZZ_NEEDS = (
    "wasm-plugins fuzz needs Hypothesis, which is not installed here: "
    "pip install 'wasm-plugins[testing]'"
)


def _fault_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: comma-separated fault names, ``all``, ``none`` or ``default``."""
    from wasm_plugins.testing.faults import DEFAULT_FAULT_KINDS, FAULT_LABELS

    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        return FAULT_LABELS
    if names == ["default"]:
        return DEFAULT_FAULT_KINDS
    unknown = [name for name in names if name not in FAULT_LABELS]
    if unknown or not names:
        close = difflib.get_close_matches(unknown[0], FAULT_LABELS, n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(
            f"unknown fault {unknown[0] if unknown else text!r}{hint}; choose from "
            f"{', '.join(FAULT_LABELS)}, or all, none, default"
        )
    return tuple(dict.fromkeys(names))


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the rate is a share of attempts, 0 to 1; got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is not negative, got {text!r}")
    return value


def _fuzz(arguments: argparse.Namespace, out: TextIO) -> int:
    try:
        from wasm_plugins.testing.fuzz import run_fuzz
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("hypothesis"):
            raise
        raise UsageError(FUZZ_NEEDS) from None
    example = None
    if arguments.input is not None:
        example = _read_input(arguments.input, raw=False)
    return run_fuzz(
        arguments.target,
        arguments.function,
        examples=arguments.examples,
        seed=arguments.seed,
        kinds=arguments.faults,
        rate=arguments.rate,
        example_input=example,
        has_example=arguments.input is not None,
        steps=arguments.steps,
        out=out,
        err=sys.stderr,
    )


# -- doctor -------------------------------------------------------------------------------------


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "wasm-plugins":
            from wasm_plugins import __version__

            return f"{__version__} (not installed: running from {Path(__file__).parent})"
        return "not installed"


def _doctor(out: TextIO) -> int:
    out.write(
        f"Python    {platform.python_version()} ({platform.python_implementation()}) "
        f"at {sys.executable}\n"
        f"Platform  {platform.platform()} ({platform.machine()})\n"
    )
    out.write("\nPackages\n")
    packages = list(PACKAGES) + (["tomli"] if sys.version_info < (3, 11) else [])
    _emit(out, _fields((name, _package_version(name)) for name in packages))
    with _discover() as host:
        registry = host.engines
        availability = registry.availability()
        choice: str | None
        try:
            choice = registry.resolve_name("auto")
            auto_problem = availability.get(choice, f"unknown engine {choice!r}")
        except ConfigurationError as exc:
            choice, auto_problem = None, exc.message
        out.write("\nEngines\n")
        rows = []
        for name, reason in availability.items():
            if reason is None:
                engine = registry.get(name)
                enforced = ["memory"] + [
                    limit
                    for limit, supported in (
                        ("timeout", engine.features.timeout),
                        ("fuel", engine.features.fuel),
                    )
                    if supported
                ]
                marker = " (auto)" if name == choice else ""
                rows.append((name + marker, "yes", engine.version, ", ".join(enforced)))
            else:
                rows.append((name, "no", "-", f"not available: {reason}"))
        _emit(out, _table(("ENGINE", "AVAILABLE", "VERSION", "ENFORCES IN-PROCESS"), rows, "  "))
        source = (
            f"from {ENGINE_ENVIRONMENT_VARIABLE}"
            if os.environ.get(ENGINE_ENVIRONMENT_VARIABLE)
            else "first available of wasmer, wasmtime"
        )
        if choice is None:
            out.write(f"  auto picks: nothing - {auto_problem}\n")
        elif auto_problem is not None:
            out.write(f"  auto picks: {choice} ({source}), which cannot load: {auto_problem}\n")
        else:
            out.write(f"  auto picks: {choice} ({source})\n")
        out.write("\nEnvironment\n")
        _emit(
            out,
            _fields(
                (variable, os.environ.get(variable) or "(not set)")
                for variable in (ENGINE_ENVIRONMENT_VARIABLE, DISABLE_ENVIRONMENT_VARIABLE)
            ),
        )
        plugins = host.plugins
        distributions: dict[str, int] = {}
        for info in plugins.values():
            key = info.distribution or "registered by hand"
            distributions[key] = distributions.get(key, 0) + 1
        out.write(f"\nPlugins\n  {len(plugins)} discovered, {len(host.problems)} problems\n")
        for distribution, count in sorted(distributions.items()):
            out.write(f"  {distribution}: {count} plugin{'s' if count != 1 else ''}\n")
        for problem in host.problems:
            out.write(f"  problem: {problem}\n")
        if not plugins:
            out.write(
                "  (none installed; from a source checkout: pip install -e plugins/text-tools)\n"
            )
    working = any(reason is None for reason in availability.values())
    if not working:
        out.write("\nNo engine works here: pip install wasmtime\n")
    return 0 if working else 1


# -- the parser and main ------------------------------------------------------------------------


def _silence_stdout() -> None:
    """The reader went away (``| head``): send what is left to /dev/null, no traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises instead of exiting, so ``main`` returns its status."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}", self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _parser() -> argparse.ArgumentParser:
    from wasm_plugins import __version__
    from wasm_plugins.testing.faults import DEFAULT_FAULT_KINDS

    parser = _Parser(
        prog=PROG,
        description="Run untrusted WebAssembly plugins under enforced limits, with typed errors.",
        epilog="Exit status: 0 success, 1 a plugin error, 2 a usage error, 3 fuzz found a "
        "broken invariant.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="the installed plugins, their engine and functions")
    listing.add_argument("--json", action="store_true", help="print one JSON document")

    inspect = commands.add_parser(
        "inspect", help="a plugin's manifest, exports, imports (and capabilities) and limits"
    )
    inspect.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    inspect.add_argument("--json", action="store_true", help="print one JSON document")

    call = commands.add_parser("call", help="call a plugin function and print its result")
    call.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    call.add_argument("function", metavar="FUNCTION")
    call.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="JSON text, or @path to read it (@- stdin); default null",
    )
    call.add_argument("--engine", metavar="E", help="engine: auto, wasmer, wasmtime...")
    call.add_argument("--timeout", metavar="DURATION", type=_duration, help="such as '200 ms'")
    call.add_argument("--memory", metavar="SIZE", type=_size, help="such as '16 MiB'")
    call.add_argument("--fuel", metavar="N", type=_fuel, help="units of work (wasmtime)")
    call.add_argument(
        "--json", action="store_true", help="one line of JSON: the value, or the error's dict"
    )
    call.add_argument(
        "--raw",
        action="store_true",
        help="raw codec: send the input text's bytes, print text or hex",
    )

    fuzz = commands.add_parser(
        "fuzz",
        help="generated inputs and injected faults against a plugin, checking the error policy",
        description=(
            "Run random sequences of calls (generated inputs, faults injected into their "
            "attempts, outages, clock moves) against a plugin on fresh hosts, and check the "
            "invariants of the error policy after each step. Typed errors are fine outcomes. "
            "Exit status: 0 every invariant held, 3 one broke (the shortest sequence that breaks "
            "it is printed as Python), 1 a plugin error, 2 a usage error. Needs Hypothesis "
            "(pip install 'wasm-plugins[testing]')."
        ),
    )
    fuzz.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    fuzz.add_argument("function", metavar="FUNCTION")
    fuzz.add_argument(
        "--examples",
        metavar="N",
        type=_count,
        default=100,
        help="examples, each on a fresh host (100)",
    )
    fuzz.add_argument(
        "--seed", metavar="S", type=_seed, default=None, help="repeat a run (default: random)"
    )
    fuzz.add_argument(
        "--faults",
        metavar="KINDS",
        type=_fault_kinds,
        default=DEFAULT_FAULT_KINDS,
        help="comma-separated: error kinds (network, timeout, runtime...), latency, value, "
        "exception; all; none (default: " + ", ".join(DEFAULT_FAULT_KINDS) + ")",
    )
    fuzz.add_argument(
        "--rate", metavar="R", type=_rate, default=0.3, help="share of attempts with a fault (0.3)"
    )
    fuzz.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="an example input: half the inputs are shaped like it (default: any JSON)",
    )
    fuzz.add_argument(
        "--steps", metavar="N", type=_count, default=50, help="steps per example at most (50)"
    )

    commands.add_parser("doctor", help="Python, packages, engines available and why not")
    demo = commands.add_parser("demo", help="a host at work: good calls and typed failures")
    demo.add_argument("--hostapi", type=Path, default=None, help="path of the hostapi/ folder")
    return parser


def _run(arguments: argparse.Namespace, out: TextIO) -> int:
    command = arguments.command
    if command == "list":
        return _list(arguments.json, out)
    if command == "inspect":
        return _inspect(arguments.target, arguments.json, out)
    if command == "call":
        return _call(arguments, out)
    if command == "fuzz":
        return _fuzz(arguments, out)
    if command == "doctor":
        return _doctor(out)
    return run_demo(out, arguments.hostapi)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wasm-plugins`` command; returns the exit status."""
    command = ""
    as_json = False
    try:
        arguments = _parser().parse_args(argv)
        command = arguments.command
        as_json = bool(getattr(arguments, "json", False))
        return _run(arguments, sys.stdout)
    except _Exit as stop:
        return stop.status
    except UsageError as problem:
        message = problem.message
        if not message.startswith(PROG):
            message = f"{PROG} {command}: error: {message}"
        sys.stderr.write(f"{problem.usage}{message}\n")
        return 2
    except PluginError as error:
        return _report(error, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as exc:  # the last resort: a bug, still no traceback
        message = f"internal error: {type(exc).__name__}: {exc}"
        if as_json:
            _dump({"kind": "internal", "message": message}, sys.stdout)
        else:
            sys.stderr.write(
                f"error: [internal] {message}\n  suggestion: a bug in wasm-plugins or in an "
                "installed extension; please report it with the command that failed\n"
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
