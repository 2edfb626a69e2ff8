"""The demo's policy part: retries, a recovery with raised limits, a breaker opening and closing,
fallbacks, shown as the events a reporter receives.

The plugins here are small WAT modules written for the demo: ``forecast`` asks a host function
for the weather (the demo makes that function fail on purpose, like a flaky network), and
``hungry`` needs more memory than its manifest grants. The host runs on a simulated clock, so
backoff waits and the breaker's recovery time pass at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from wasm_plugins.engine import FuncSignature
from wasm_plugins.errors import NetworkError, PluginError
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.host import PluginHost
from wasm_plugins.policy import (
    AttemptFailed,
    BreakerStateChanged,
    FallbackUsed,
    LimitsChanged,
    PolicyEvent,
    RetryScheduled,
)
from wasm_plugins.sandbox import HostCall, HostFunction
from wasm_plugins.testing import FakeClock, FixedRandom

__all__ = ["run_policy_demo"]

_ALLOCATOR = """
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
"""

FORECAST = f"""(module
  (import "wasm_plugins" "weather" (func $weather (result i32)))
  {_ALLOCATOR}
  (data (i32.const 512) "\\"sunny\\"")
  (func (export "today") (param i32 i32) (result i64)
    (drop (call $weather))
    (call $pack (i32.const 512) (i32.const 7))))"""

HUNGRY = f"""(module
  {_ALLOCATOR}
  (data (i32.const 512) "\\"fed\\"")
  (func (export "eat") (param i32 i32) (result i64)
    ;; 12 MiB more than the one page it starts with
    (if (i32.eq (memory.grow (i32.const 192)) (i32.const -1)) (then unreachable))
    (call $pack (i32.const 512) (i32.const 5))))"""


class _Weather:
    """The host function behind ``forecast``: fails as often as the demo tells it to."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self, call: HostCall) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise NetworkError(operation="fetch the forecast", host="weather.example")
        return 0

    @hookimpl
    def wasm_plugins_register_host_functions(
        self, register: Callable[[HostFunction], None]
    ) -> None:
        """Offer the weather host function to plugins granted the ``weather`` capability."""
        register(
            HostFunction(
                module="wasm_plugins",
                name="weather",
                signature=FuncSignature((), ("i32",)),
                implementation=self,
                capability="weather",
            )
        )


class _Narrator:
    """A reporter that tells what the policy does, as it does it."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    @hookimpl
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Print the events worth reading."""
        if isinstance(event, AttemptFailed):
            line = f"attempt {event.attempt} failed: [{event.error.kind}] {event.error.message}"
        elif isinstance(event, RetryScheduled):
            line = f"retry {event.attempt} in {event.delay * 1000:.0f} ms ({event.reason})"
        elif isinstance(event, LimitsChanged):
            line = f"limits raised for the next attempt: {event.reason}"
        elif isinstance(event, BreakerStateChanged):
            line = f"circuit {event.before} -> {event.after} ({event.reason})"
        elif isinstance(event, FallbackUsed):
            line = f"fallback {event.strategy!r} answers, quality {event.quality}"
        else:
            return
        self._out.write(f"      . {line[:90]}\n")


def _show(out: TextIO, caption: str, action: Callable[[], Any]) -> tuple[str, str]:
    out.write(f"  {caption}\n")
    try:
        outcome = action()
    except PluginError as failure:
        error = getattr(failure, "error", failure)
        out.write(f"    -> [{error.kind}] {error.message[:80]}\n")
        return caption, error.kind
    value = json.dumps(outcome.value)
    via = f" (fallback {outcome.fallback})" if outcome.fallback else ""
    out.write(f"    -> {value} after {outcome.attempts} attempt(s){via}\n")
    return caption, "fallback" if outcome.fallback else "ok"


def run_policy_demo(
    out: TextIO, on_host: Callable[[PluginHost], None] | None = None
) -> list[tuple[str, str]]:
    """Run the policy part; returns (caption, outcome) rows for the summary.

    :param on_host: told of the host it makes.
    """
    clock = FakeClock()
    weather = _Weather()
    out.write("\n== The error policy at work (a simulated clock: waits pass at once)\n")
    with PluginHost(clock=clock, random=FixedRandom(0.5), blocked=()) as host:
        if on_host is not None:
            on_host(host)
        host.register_policy(weather, name="demo-weather")
        host.register_policy(_Narrator(out), name="demo-narrator")
        host.load(
            {
                "name": "forecast",
                "module": {"wat": FORECAST},
                "capabilities": ["weather"],
                "functions": {"today": {"idempotent": True, "default": "unknown"}},
                "policy": {
                    "max_attempts": 3,
                    "fallbacks": ["cache", "default"],
                    "breaker": {"failure_threshold": 3, "recovery_time": "30 s"},
                },
            }
        )
        host.load(
            {
                "name": "hungry",
                "module": {"wat": HUNGRY},
                "functions": {"eat": {"idempotent": True}},
                "limits": {"memory": "8 MiB"},
                "policy": {"max_memory": "32 MiB"},
            }
        )
        rows = []
        weather.failures = 2
        rows.append(
            _show(
                out, "forecast fails twice, then answers", lambda: host.invoke("forecast", "today")
            )
        )
        rows.append(
            _show(
                out,
                "hungry needs 12 MiB under an 8 MiB limit",
                lambda: host.invoke("hungry", "eat"),
            )
        )
        weather.failures = 9
        rows.append(
            _show(
                out,
                "forecast keeps failing: the cache answers",
                lambda: host.invoke("forecast", "today"),
            )
        )
        rows.append(
            _show(
                out,
                "the breaker is open: no call reaches the plugin",
                lambda: host.invoke("forecast", "today"),
            )
        )
        clock.advance(30)
        weather.failures = 0
        out.write("  (30 s pass on the simulated clock)\n")
        rows.append(
            _show(
                out,
                "a probe succeeds: the breaker closes",
                lambda: host.invoke("forecast", "today"),
            )
        )
        snapshot = host.metrics.snapshot()["counters"]
        out.write(
            "  metrics: "
            + ", ".join(f"{name} {sum(values.values())}" for name, values in snapshot.items())
            + "\n"
        )
    return rows
