"""``wasm-plugins doctor``: the Python, the packages, which engines work here (and why not) and
what the environment and discovery say."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TextIO

from wasm_plugins._tables import fields, table
from wasm_plugins._version import __version__
from wasm_plugins.cli._format import emit
from wasm_plugins.discovery import DISABLE_ENVIRONMENT_VARIABLE
from wasm_plugins.engine import ENGINE_ENVIRONMENT_VARIABLE
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.host import PluginHost

__all__ = ["diagnose"]

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


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "wasm-plugins":
            where = Path(__file__).resolve().parent.parent
            return f"{__version__} (not installed: running from {where})"
        return "not installed"


def diagnose(out: TextIO, discover: Callable[[], PluginHost]) -> int:
    """Print what runs here and why not; exit status 1 when no engine works."""
    out.write(
        f"Python    {platform.python_version()} ({platform.python_implementation()}) "
        f"at {sys.executable}\n"
        f"Platform  {platform.platform()} ({platform.machine()})\n"
    )
    out.write("\nPackages\n")
    packages = list(PACKAGES) + (["tomli"] if sys.version_info < (3, 11) else [])
    emit(out, fields((name, _package_version(name)) for name in packages))
    with discover() as host:
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
        emit(out, table(("ENGINE", "AVAILABLE", "VERSION", "ENFORCES IN-PROCESS"), rows, "  "))
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
        emit(
            out,
            fields(
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
