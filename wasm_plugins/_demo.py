"""The demo host: good calls and typed failures on every available engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from wasm_plugins.engine import Engine, default_registry
from wasm_plugins.errors import PluginError
from wasm_plugins.sandbox import Limits, Sandbox

__all__ = ["find_hostapi", "run_demo"]


def find_hostapi(start: Path | None = None) -> Path | None:
    """The ``hostapi`` folder of a source checkout: under the working directory or the package's."""
    candidates = [Path.cwd() / "hostapi", Path(__file__).resolve().parent.parent / "hostapi"]
    if start is not None:
        candidates.insert(0, start)
    return next((path for path in candidates if (path / "conformance").is_dir()), None)


def _row(out: TextIO, label: str, outcome: str, detail: str) -> None:
    out.write(f"  {label:<34} {outcome:<26} {detail}\n")


def _attempt(out: TextIO, label: str, action: Callable[[], Any]) -> None:
    started = time.perf_counter()
    try:
        value = action()
    except PluginError as error:
        elapsed = (time.perf_counter() - started) * 1000
        _row(out, label, error.kind, f"{error.message[:70]} [{elapsed:.0f} ms]")
    else:
        _row(out, label, "ok", repr(value)[:70])


def run_demo(out: TextIO, hostapi: Path | None = None) -> int:
    """Run the demo, writing to ``out``; returns the process exit code."""
    folder = find_hostapi(hostapi)
    if folder is None:
        out.write("The demo needs the hostapi/ folder of a source checkout; run it from there.\n")
        return 2
    registry = default_registry()
    for engine_name, reason in registry.availability().items():
        if reason is not None:
            out.write(f"\n== {engine_name}: not available here ({reason})\n")
            continue
        _demo_engine(out, registry.get(engine_name), folder)
    out.write("\nEvery failure above is a typed error; the host process kept running.\n")
    return 0


def _demo_engine(out: TextIO, engine: Engine, folder: Path) -> None:
    abi = folder / "conformance" / "abi.wat"
    out.write(f"\n== engine {engine.name} {engine.version}\n")
    plugin = Sandbox(abi, engine=engine, name="conformance")
    with Sandbox(folder / "examples" / "echo.wat", engine=engine, name="echo") as echo:
        _attempt(out, "echo a JSON document", lambda: echo.call("echo", {"hello": "wasm"}))
    _attempt(out, "upper-case a string", lambda: plugin.call("upper", "typed errors"))
    for function in (
        "trap_unreachable",
        "trap_divide_by_zero",
        "trap_stack_overflow",
        "memory_bomb",
        "bad_json",
        "bad_pointer",
        "guest_error",
    ):
        _attempt(out, function, partial(plugin.call, function, None))
    _attempt(out, "still answering after all that", lambda: plugin.call("upper", "yes"))
    _attempt(out, "input over max_input", lambda: plugin.call("echo", "x" * 5_000_000))

    def endless_loop(limits: Limits) -> Any:
        return Sandbox(abi, engine=engine, limits=limits, name="loop").call("loop_forever")

    _attempt(out, "endless loop, 200 ms timeout", partial(endless_loop, Limits(timeout="200 ms")))
    _attempt(out, "endless loop, 1M fuel", partial(endless_loop, Limits(fuel=1_000_000)))
    _attempt(out, "WAT with a syntax error", lambda: Sandbox("(module (func", engine=engine))
    _attempt(out, "truncated module bytes", lambda: Sandbox(b"\0asm\1\0\0\0\1\5", engine=engine))
    start_trap = folder / "conformance" / "start_trap.wat"
    _attempt(out, "start function traps", lambda: Sandbox(start_trap, engine=engine))
