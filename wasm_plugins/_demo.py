"""The demo: a host application at work on the example plugins, then the conformance modules on
every available engine. Good calls and typed failures; the host keeps running throughout.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import attrs

from wasm_plugins._demo_policy import run_policy_demo
from wasm_plugins.engine import Engine, default_registry
from wasm_plugins.errors import ContextualError, PluginError
from wasm_plugins.host import PluginHost
from wasm_plugins.sandbox import Limits, Sandbox

__all__ = ["HostCallResult", "find_hostapi", "run_demo"]

WIDTH = 100
TEXT_TOOLS = "text-tools"
HOSTILE = ("trapper", "memory-bomb", "bad-output", "endless-loop", "capability-thief")
INSTALL_HINT = (
    "The example plugins are not installed. From a source checkout:\n"
    "    pip install -e plugins/text-tools -e plugins/hostile-pack\n"
    "(nox -s demo installs them for you). The conformance part still runs.\n"
)
SAMPLE = "The quick brown fox jumps over the lazy dog.\nThe dog sleeps; the fox runs."


def find_hostapi(start: Path | None = None) -> Path | None:
    """The ``hostapi`` folder of a source checkout: under the working directory or the package's."""
    candidates = [Path.cwd() / "hostapi", Path(__file__).resolve().parent.parent / "hostapi"]
    if start is not None:
        candidates.insert(0, start)
    return next((path for path in candidates if (path / "conformance").is_dir()), None)


def _fit(text: str, width: int = WIDTH) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split("\n"))
    return line if len(line) <= width else line[: width - 3] + "..."


def _row(out: TextIO, label: str, outcome: str, detail: str) -> None:
    out.write(_fit(f"  {label:<34} {outcome:<24} {detail}") + "\n")


# -- part 1: a host application and the example plugins -----------------------------------------


@attrs.frozen
class HostCallResult:
    """One call the demo host made: what it called, on which engine, the outcome and its time."""

    plugin: str
    function: str
    engine: str
    outcome: str
    """``ok``, or the kind of the typed error."""
    seconds: float
    detail: str


def _host_call(
    out: TextIO,
    host: PluginHost,
    engine: str,
    caption: str,
    plugin: str,
    function: str,
    value: Any = None,
) -> HostCallResult:
    started = time.perf_counter()
    try:
        result = host.call(plugin, function, value)
    except PluginError as error:
        inner = error.error if isinstance(error, ContextualError) else error
        outcome, detail = inner.kind, inner.message
    except Exception as exc:  # the demo never crashes; a bug shows as such
        outcome, detail = "unexpected", f"{type(exc).__name__}: {exc}"
    else:
        outcome, detail = "ok", json.dumps(result, ensure_ascii=False)
    seconds = time.perf_counter() - started
    out.write(f"  {caption:<34} {outcome}\n")
    lines = textwrap.wrap(" ".join(detail.split()), WIDTH - 6, break_on_hyphens=False)
    if len(lines) > 2:
        lines = [lines[0], _fit(" ".join(lines[1:]), WIDTH - 6)]
    out.writelines(f"      {line}\n" for line in lines)
    return HostCallResult(plugin, function, engine, outcome, seconds, detail)


def _engine_of(host: PluginHost) -> str:
    try:
        return host.engines.resolve_name(host.engine_name)
    except PluginError:
        return "none"


def _demo_host(
    out: TextIO, discover: Callable[..., PluginHost], results: list[HostCallResult]
) -> bool:
    """The host part; False when the example plugins are not there to call."""
    try:
        host = discover()
    except PluginError as error:
        out.write(f"\nThe host could not start: [{error.kind}] {error.message}\n")
        return False
    with host:
        engine = _engine_of(host)
        out.write(
            f"\n== A host application: PluginHost.discover() found {len(host.plugins)} plugins "
            f"({len(host.problems)} problems); engine auto -> {engine}\n"
        )
        for problem in host.problems:
            out.write(_fit(f"  problem: {problem}") + "\n")
        if TEXT_TOOLS not in host.plugins:
            out.write(INSTALL_HINT)
            return False
        call = partial(_host_call, out, host, engine)
        results.append(call("count words and lines", TEXT_TOOLS, "word_count", {"text": SAMPLE}))
        results.append(
            call(
                "slugify accented text", TEXT_TOOLS, "slugify", {"text": "Crème Brûlée à la Mode!"}
            )
        )
        results.append(
            call("three most frequent words", TEXT_TOOLS, "top_words", {"text": SAMPLE, "n": 3})
        )
        missing = [name for name in HOSTILE if name not in host.plugins]
        if missing:
            out.write(
                f"  (hostile plugins not installed: {', '.join(missing)}; "
                "pip install -e plugins/hostile-pack)\n"
            )
        hostile = (
            ("guest executes unreachable", "trapper", "unreachable"),
            ("guest divides by zero", "trapper", "divide_by_zero"),
            ("guest grows memory past 8 MiB", "memory-bomb", "explode"),
            ("guest returns bytes, not JSON", "bad-output", "not_json"),
            ("guest returns a wild pointer", "bad-output", "pointer_out_of_bounds"),
            ("guest claims 4 GiB of output", "bad-output", "huge_length"),
            ("guest imports kv and clock", "capability-thief", "steal"),
        )
        for caption, plugin, function in hostile:
            if plugin in host.plugins:
                results.append(call(caption, plugin, function))
        if "endless-loop" in host.plugins:
            engines = [name for name, why in host.engines.availability().items() if why is None]
            results.extend(_endless_loop(out, discover, engines))
        results.append(
            call("still answering after all that", TEXT_TOOLS, "word_count", {"text": "yes"})
        )
    return True


def _endless_loop(
    out: TextIO, discover: Callable[..., PluginHost], engines: list[str]
) -> list[HostCallResult]:
    """endless-loop under its manifest's 200 ms timeout, on a host for each available engine:
    stopped in-process on every engine (epoch deadlines on wasmtime, a metered module on
    wasmer)."""
    results = []
    for name in engines:
        try:
            host = discover(engine=name)
        except PluginError as error:
            out.write(f"  (no host on {name}: {error.message})\n")
            continue
        with host:
            caption = f"endless loop, 200 ms, on {name}"
            results.append(_host_call(out, host, name, caption, "endless-loop", "spin"))
    return results


def _summary(out: TextIO, results: list[HostCallResult]) -> None:
    out.write("\n== Summary of the host's calls\n")
    headers = ("PLUGIN", "FUNCTION", "ENGINE", "OUTCOME", "TIME")
    rows = [
        (r.plugin, r.function, r.engine, r.outcome, f"{r.seconds * 1000:.1f} ms") for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        cells = [cell.ljust(size) for cell, size in zip(row[:-1], widths, strict=False)]
        out.write("  " + "  ".join([*cells, row[-1].rjust(widths[-1])]) + "\n")
    failures = sum(1 for r in results if r.outcome != "ok")
    out.write(
        f"  {len(results)} calls: {len(results) - failures} answered, {failures} failed with "
        "a typed error\n"
    )


# -- part 2: the conformance modules on every engine --------------------------------------------


def _attempt(out: TextIO, label: str, action: Callable[[], Any]) -> None:
    started = time.perf_counter()
    try:
        value = action()
    except PluginError as error:
        elapsed = (time.perf_counter() - started) * 1000
        _row(out, label, error.kind, f"[{elapsed:.0f} ms] {error.message}")
    except Exception as exc:  # the demo never crashes; a bug shows as such
        _row(out, label, "unexpected", f"{type(exc).__name__}: {exc}")
    else:
        _row(out, label, "ok", repr(value))


def _demo_engine(out: TextIO, engine: Engine, folder: Path) -> None:
    abi = folder / "conformance" / "abi.wat"
    out.write(f"\n== Conformance modules on engine {engine.name} {engine.version}\n")
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


def _demo_conformance(out: TextIO, folder: Path) -> None:
    registry = default_registry()
    for engine_name, reason in registry.availability().items():
        if reason is not None:
            out.write(_fit(f"\n== {engine_name}: not available here ({reason})") + "\n")
            continue
        try:
            _demo_engine(out, registry.get(engine_name), folder)
        except PluginError as error:
            out.write(_fit(f"  the conformance module did not load: [{error.kind}] {error}") + "\n")


def run_demo(
    out: TextIO,
    hostapi: Path | None = None,
    discover: Callable[..., PluginHost] | None = None,
    on_host: Callable[[PluginHost], None] | None = None,
) -> int:
    """Run the demo, writing to ``out``; returns the process exit code.

    :param hostapi: the ``hostapi`` folder of a checkout (found from the working directory or the
        package when not given); without it the conformance part is skipped.
    :param discover: makes the host (``PluginHost.discover`` by default; it takes ``engine=``).
    :param on_host: told of every host the demo makes (``wasm-plugins stats`` reads them).
    """
    results: list[HostCallResult] = []
    make = discover or PluginHost.discover
    if on_host is not None:
        made = make

        def make(**options: Any) -> PluginHost:
            host = made(**options)
            on_host(host)
            return host

    hosted = _demo_host(out, make, results)
    policy_rows = run_policy_demo(out, on_host)
    folder = find_hostapi(hostapi)
    if folder is None:
        out.write(
            "\nThe conformance part needs the hostapi/ folder of a source checkout: run the demo "
            "from there,\nor give --hostapi PATH.\n"
        )
    else:
        _demo_conformance(out, folder)
    if results:
        _summary(out, results)
    out.write("\n== Policy outcomes\n")
    for caption, outcome in policy_rows:
        out.write(f"  {caption:<52} {outcome}\n")
    if not hosted and folder is None:
        return 2
    out.write("\nEvery failure above is a typed error; the host process kept running.\n")
    return 0
