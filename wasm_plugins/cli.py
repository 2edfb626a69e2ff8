"""The ``wasm-plugins`` command line: ``demo`` and ``doctor``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from wasm_plugins._demo import run_demo
from wasm_plugins.engine import ENGINE_ENVIRONMENT_VARIABLE, default_registry

__all__ = ["main"]


def _doctor() -> int:
    print(f"Python {platform.python_version()} ({platform.python_implementation()})")
    registry = default_registry()
    choice: str | None
    try:
        choice = registry.resolve_name("auto")
    except Exception:
        choice = None
    for name, reason in registry.availability().items():
        if reason is None:
            engine = registry.get(name)
            marker = " (auto)" if name == choice else ""
            print(f"  {name:<10} available, version {engine.version}{marker}")
        else:
            print(f"  {name:<10} not available: {reason}")
    print(f"  {ENGINE_ENVIRONMENT_VARIABLE} overrides 'auto'")
    return 0 if choice else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasm-plugins", description="Run untrusted WebAssembly plugins under enforced limits."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a host at work: good calls and typed failures")
    demo.add_argument("--hostapi", type=Path, default=None, help="path of the hostapi/ folder")
    commands.add_parser("doctor", help="Python, engines available and why not, versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wasm-plugins`` command."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "demo":
        return run_demo(sys.stdout, arguments.hostapi)
    return _doctor()


if __name__ == "__main__":
    sys.exit(main())
