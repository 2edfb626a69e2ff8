"""``wasm-plugins inspect``: a plugin's manifest, exports, imports (with the capability each
needs) and limits, from its compiled module (nothing of it runs)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import attrs

from wasm_plugins._tables import WIDTH, fields, table
from wasm_plugins.cli._arguments import granted_by_flags, trust_options
from wasm_plugins.cli._format import (
    dump,
    emit,
    engine_label,
    extern_type,
    limit_text,
    limits_json,
    paragraph,
    underlying,
)
from wasm_plugins.engine import EngineModule
from wasm_plugins.errors import ConfigurationError, PluginError
from wasm_plugins.host import PluginHost
from wasm_plugins.manifest import Manifest
from wasm_plugins.sandbox import (
    EXTISM_MODULE,
    EXTISM_USER_MODULE,
    IMPORT_MODULE,
    WASI_MODULE,
    detect_abi,
    extism_host_functions,
    extism_plugin_functions,
    load_module_bytes,
    plugin_functions,
)
from wasm_plugins.targets import Target, resolve_target

__all__ = ["inspect_options", "inspect_target"]


def inspect_options(parser: argparse.ArgumentParser) -> None:
    """TARGET, ``--json`` and the trust options."""
    parser.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    trust_options(parser)


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
    elif module in (EXTISM_MODULE, EXTISM_USER_MODULE):
        extism = {
            (f.module, f.name): f for f in extism_host_functions(host.host_functions.values())
        }
        offered = (module, name) in extism
        capability = extism[(module, name)].capability if offered else None
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
    engine, how = engine_label(host, manifest)
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
        "limits": limits_json(manifest.limits),
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
        "trust": None if target.review is None else target.review.as_dict(),
    }
    try:
        module = _compile(host, manifest)
    except PluginError as error:
        inner = underlying(error)
        data["module_error"] = {"kind": inner.kind, "message": inner.message}
        return data, inner
    data["exports"] = [
        {"name": e.name, "kind": e.kind, "signature": extern_type(e)} for e in module.exports
    ]
    for item in module.imports:
        row = {
            "module": item.module,
            "name": item.name,
            "kind": item.kind,
            "signature": extern_type(item),
            **_import_row(host, manifest, item.module or "", item.name, item.kind),
        }
        data["imports"].append(row)
    data["missing_capabilities"] = sorted(
        {row["capability"] for row in data["imports"] if row["status"].startswith("denied")}
    )
    if manifest.abi == "auto":
        data["abi"] = detect_abi(module.imports)
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
            for name in (
                extism_plugin_functions(module.exports)
                if data["abi"] == "extism"
                else plugin_functions(module.exports)
            )
        ]
    return data, None


def _inspect_text(data: Mapping[str, Any], out: TextIO) -> None:
    out.write(f"{data['name']} {data['version']}\n")
    if data["description"]:
        emit(
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
    emit(
        out,
        fields(
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
    trust = data["trust"]
    if trust is not None:
        verdict = (
            "refused: it asks for more than its grant"
            if not trust["allowed"]
            else "clamped: it runs with its grant only"
            if trust["excess"]
            else "granted as asked"
        )
        if trust["pinned"] is False:
            verdict = "refused: its module is not the one the policy pins"
        out.write(f"\nTrust ({verdict})\n")
        rows = [
            (what, asked, granted)
            for what, asked, granted in _trust_rows(trust)
            if asked != granted or what in ("capabilities", "limits.memory")
        ]
        emit(out, table(("SETTING", "REQUESTED", "GRANTED"), rows, indent="  "))
        if not trust["allowed"]:
            out.write("\n  wasm-plugins trust NAME prints the policy entry that would grant it.\n")
    out.write("\nLimits\n")
    limits = data["limits"]
    values = {
        "memory": limits["memory_bytes"],
        "fuel": limits["fuel"],
        "timeout": limits["timeout_seconds"],
        "max_input": limits["max_input_bytes"],
        "max_output": limits["max_output_bytes"],
    }
    emit(out, fields((name, limit_text(name, value)) for name, value in values.items()))
    out.write(f"\nFunctions (from the {data['functions_from']})\n")
    if data["functions"]:
        rows = [
            (f["name"], "yes" if f["idempotent"] else "no", f["description"] or "-")
            for f in data["functions"]
        ]
        emit(out, table(("NAME", "IDEMPOTENT", "DESCRIPTION"), rows, indent="  "))
    else:
        out.write("  none\n")
    if data["module_error"] is not None:
        error = data["module_error"]
        out.write(f"\nModule: cannot be compiled: [{error['kind']}] {error['message']}\n")
        return
    out.write("\nExports\n")
    exports = [(e["name"], e["kind"], e["signature"] or "-") for e in data["exports"]]
    emit(out, table(("NAME", "KIND", "SIGNATURE"), exports, "  ") if exports else ["  none"])
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
    emit(out, table(headers, imports, indent="  ") if imports else ["  none"])
    missing = data["missing_capabilities"]
    unoffered = [f"{i['module']}.{i['name']}" for i in data["imports"] if not i["offered"]]
    if missing:
        paragraph(
            out,
            f"The imports need the capabilities {', '.join(repr(c) for c in missing)}, which the "
            "manifest does not grant: loading fails with a security_violation.",
        )
    if unoffered:
        paragraph(
            out, f"This host offers no {', '.join(unoffered)}: loading fails with a module error."
        )


def _trust_rows(trust: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    requested, granted = trust["requested"], trust["granted"]
    rows = []
    for key in ("capabilities", "preopens", "env", "http"):
        rows.append((key, ", ".join(requested[key]) or "-", ", ".join(granted[key]) or "-"))
    for name, value in requested["limits"].items():
        rows.append((f"limits.{name}", value, granted["limits"][name]))
    for name, value in requested["ceilings"].items():
        rows.append((f"policy.{name}", value, granted["ceilings"][name]))
    rows.append(("isolation", requested["isolation"], granted["isolation"]))
    return rows


def inspect_target(
    arguments: argparse.Namespace, out: TextIO, discover: Callable[[], PluginHost]
) -> int:
    """Print what TARGET is, needs and offers (and, when the trust policy decided, what it asks
    for next to what it is granted); exit status 1 when its module does not compile."""
    as_json = arguments.json
    with discover() as host:
        target = resolve_target(
            host, arguments.target, extra=granted_by_flags(arguments), refused=True
        )
        data, module_error = _inspect_data(host, target)
    if as_json:
        dump(data, out)
    else:
        _inspect_text(data, out)
    return 1 if module_error is not None else 0
