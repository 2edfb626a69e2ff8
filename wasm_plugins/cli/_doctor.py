"""``wasm-plugins doctor``: the Python, the packages, which engines work here (and why not) and
what the environment and discovery say."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import attrs

from wasm_plugins._tables import fields, table
from wasm_plugins._version import __version__
from wasm_plugins.cli._format import dump, emit
from wasm_plugins.discovery import DISABLE_ENVIRONMENT_VARIABLE
from wasm_plugins.engine import ENGINE_ENVIRONMENT_VARIABLE, EngineRegistry
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.host import PluginHost

__all__ = ["diagnose", "doctor_options", "examine"]

PACKAGES = (
    "wasm-plugins",
    "pluggy",
    "attrs",
    "cattrs",
    "loguru",
    "wasmtime",
    "wasmer",
    "wasmer-compiler-cranelift",
    "wasmer-sdk",
    "opentelemetry-api",
    "prometheus-client",
    "sentry-sdk",
)


def doctor_options(parser: argparse.ArgumentParser) -> None:
    """``--json``."""
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "wasm-plugins":
            where = Path(__file__).resolve().parent.parent
            return f"{__version__} (not installed: running from {where})"
        return "not installed"


def _engines(host: PluginHost) -> dict[str, Any]:
    """Each engine: whether it works here, its version and the limits it enforces in-process,
    or why not; and what ``auto`` picks."""
    registry = host.engines
    availability = registry.availability()
    choice: str | None
    try:
        choice = registry.resolve_name("auto")
        auto_problem = availability.get(choice, f"unknown engine {choice!r}")
    except ConfigurationError as exc:
        choice, auto_problem = None, exc.message
    engines = []
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
            engines.append(
                {"name": name, "available": True, "version": engine.version, "enforces": enforced}
            )
        else:
            engines.append({"name": name, "available": False, "reason": reason})
    source = (
        f"from {ENGINE_ENVIRONMENT_VARIABLE}"
        if os.environ.get(ENGINE_ENVIRONMENT_VARIABLE)
        else "first available of wasmer, wasmtime"
    )
    return {
        "engines": engines,
        "auto": {"choice": choice, "source": source, "problem": auto_problem},
        "wasmer": _wasmer_choice(registry, availability),
    }


def _wasmer_choice(registry: EngineRegistry, availability: dict[str, str | None]) -> dict[str, Any]:
    """Which engine ``engine="wasmer"`` runs here, and why that one."""
    choice = registry.resolve_name("wasmer")
    problem = availability.get(choice, f"unknown engine {choice!r}")
    if problem is not None:
        why = f"no Wasmer loads here: {problem}"
    elif choice == "wasmer":
        why = "the wasmer 1.1 binding imports: in-process"
    else:
        binding = availability.get("wasmer") or "not registered"
        why = f"the wasmer 1.1 binding does not load here: {binding}; a process per instance"
    return {"choice": choice, "why": why, "problem": problem}


def examine(discover: Callable[[], PluginHost]) -> dict[str, Any]:
    """What runs here, as plain data: Python, platform, packages, engines, environment, plugins
    by distribution, and discovery problems."""
    packages = list(PACKAGES) + (["tomli"] if sys.version_info < (3, 11) else [])
    with discover() as host:
        engines = _engines(host)
        distributions: dict[str, int] = {}
        for info in host.plugins.values():
            key = info.distribution or "registered by hand"
            distributions[key] = distributions.get(key, 0) + 1
        plugins = sorted(host.plugins)
        problems = [attrs.asdict(problem) for problem in host.problems]
        problem_lines = [str(problem) for problem in host.problems]
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {"name": platform.platform(), "machine": platform.machine()},
        "packages": {name: _package_version(name) for name in packages},
        **engines,
        "environment": {
            variable: os.environ.get(variable) or None
            for variable in (ENGINE_ENVIRONMENT_VARIABLE, DISABLE_ENVIRONMENT_VARIABLE)
        },
        "plugins": plugins,
        "distributions": distributions,
        "problems": problems,
        "problem_lines": problem_lines,
        "working": any(engine["available"] for engine in engines["engines"]),
    }


def diagnose(out: TextIO, discover: Callable[[], PluginHost], as_json: bool = False) -> int:
    """Print what runs here and why not (one JSON document with ``as_json``); exit status 1
    when no engine works."""
    found = examine(discover)
    status = 0 if found["working"] else 1
    if as_json:
        found.pop("problem_lines")
        dump(found, out)
        return status
    python, system = found["python"], found["platform"]
    out.write(
        f"Python    {python['version']} ({python['implementation']}) at {python['executable']}\n"
        f"Platform  {system['name']} ({system['machine']})\n"
    )
    out.write("\nPackages\n")
    emit(out, fields(found["packages"].items()))
    out.write("\nEngines\n")
    auto = found["auto"]
    rows = []
    for engine in found["engines"]:
        if engine["available"]:
            marker = " (auto)" if engine["name"] == auto["choice"] else ""
            rows.append(
                (engine["name"] + marker, "yes", engine["version"], ", ".join(engine["enforces"]))
            )
        else:
            rows.append((engine["name"], "no", "-", f"not available: {engine['reason']}"))
    emit(out, table(("ENGINE", "AVAILABLE", "VERSION", "ENFORCES"), rows, "  "))
    if auto["choice"] is None:
        out.write(f"  auto picks: nothing - {auto['problem']}\n")
    elif auto["problem"] is not None:
        out.write(
            f"  auto picks: {auto['choice']} ({auto['source']}), which cannot load: "
            f"{auto['problem']}\n"
        )
    else:
        out.write(f"  auto picks: {auto['choice']} ({auto['source']})\n")
    wasmer = found["wasmer"]
    out.write(f"  wasmer picks: {wasmer['choice']} ({wasmer['why']})\n")
    out.write("\nEnvironment\n")
    emit(
        out,
        fields(
            (variable, value or "(not set)") for variable, value in found["environment"].items()
        ),
    )
    plugins, problems = found["plugins"], found["problem_lines"]
    out.write(f"\nPlugins\n  {len(plugins)} discovered, {len(problems)} problems\n")
    for distribution, count in sorted(found["distributions"].items()):
        out.write(f"  {distribution}: {count} plugin{'s' if count != 1 else ''}\n")
    for problem in problems:
        out.write(f"  problem: {problem}\n")
    if not plugins:
        out.write("  (none installed; from a source checkout: pip install -e plugins/text-tools)\n")
    if status:
        out.write("\nNo engine works here: pip install wasmtime\n")
    return status
