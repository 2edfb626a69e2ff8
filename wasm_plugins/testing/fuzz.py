"""``wasm-plugins fuzz``: generated inputs and injected faults against a real plugin.

Each example is a fresh host running a random sequence of steps (calls of the plugin's function
with generated inputs and faults planned for their attempts, outages, clock moves) under the
invariants of :mod:`wasm_plugins.testing.harness`. Typed errors are fine outcomes; a broken
invariant is shrunk by Hypothesis to the shortest sequence of calls and faults, printed as a
Python program.
"""

from __future__ import annotations

import random
import re
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TextIO, cast

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from wasm_plugins._tables import table
from wasm_plugins.host import PluginHost
from wasm_plugins.manifest import Manifest
from wasm_plugins.targets import resolve_target, scratch_host
from wasm_plugins.testing import FakeClock
from wasm_plugins.testing.harness import (
    Call,
    HostFactory,
    InvariantViolation,
    minimize,
)
from wasm_plugins.testing.stateful import CallSpec, HostStateMachine
from wasm_plugins.testing.strategies import inputs_like, json_inputs, objects_with

__all__ = ["FuzzReport", "Progress", "field_names", "fuzz", "run_fuzz", "target_host"]

run_machine = cast(Callable[..., None], run_state_machine_as_test)
"""Hypothesis' runner (untyped there)."""

BAR = 30


def target_host(target: str, *, seed: int = 0) -> HostFactory:
    """A host factory for TARGET as the command line takes it: an installed plugin's name (the
    host discovers every installed plugin, with their policy plugins), or the path of a
    manifest or module (a host with that plugin alone, and the installed engines and host
    functions). The host's jitter comes from a ``random.Random(seed)``."""
    with PluginHost.discover() as base:
        resolved = resolve_target(base, target)

    if resolved.installed:

        def installed(clock: FakeClock) -> PluginHost:
            return PluginHost.discover(clock=clock, random=random.Random(seed))

        return installed

    def from_file(clock: FakeClock) -> PluginHost:
        return scratch_host(base, resolved.manifest, clock=clock, random=random.Random(seed))

    return from_file


class Progress:
    """A plain-text progress bar on a stream: redrawn in place on a terminal, one line per tenth
    elsewhere."""

    def __init__(self, title: str, total: int, stream: TextIO) -> None:
        self.title = title
        self.total = max(1, total)
        self.stream = stream
        self.examples = 0
        self.calls = 0
        self.shrinking = False
        self.shrink_runs = 0
        self.minimizing = False
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._shown = -1
        self._last = 0.0

    def _line(self) -> str:
        if self.minimizing:
            return f"{self.title}: an invariant broke; shrunk in {self.shrink_runs} runs, replaying"
        if self.shrinking:
            return f"{self.title}: an invariant broke; shrinking ({self.shrink_runs} runs)"
        done = min(self.examples, self.total)
        filled = BAR * done // self.total
        bar = "#" * filled + "-" * (BAR - filled)
        return f"{self.title}: [{bar}] {done}/{self.total} examples, {self.calls} calls"

    def update(self, force: bool = False) -> None:
        """Show the progress (rate-limited on a terminal, by tenths elsewhere)."""
        if self._tty:
            now = time.monotonic()
            if force or now - self._last > 0.1:
                self._last = now
                self.stream.write("\r" + self._line().ljust(80))
                self.stream.flush()
            return
        step = -2 if self.shrinking else 10 * min(self.examples, self.total) // self.total
        step = -3 if self.minimizing else step
        if step != self._shown:
            self._shown = step
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self._tty:
            self.stream.write("\r" + self._line().ljust(80) + "\n")
            self.stream.flush()


class FuzzReport:
    """What the examples did (the generation phase only: shrinking replays are not counted)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.attempts = 0
        self.examples = 0
        self.violation: InvariantViolation | None = None
        self.flaky = False

    @property
    def calls(self) -> int:
        """Calls made."""
        return sum(self.outcomes.values())


def _machine(
    make_host: HostFactory,
    plugin: str,
    function: str,
    inputs: st.SearchStrategy[Any],
    kinds: Sequence[str],
    rate: float,
    progress: Progress,
    report: FuzzReport,
) -> type[HostStateMachine]:
    class Fuzz(HostStateMachine):
        calls = (CallSpec(plugin, function, inputs),)
        fault_kinds = tuple(kinds)
        fault_rate = rate

        def __init__(self) -> None:
            super().__init__()
            self.harness.on_violation = self._found

        def make_host(self, clock: FakeClock) -> PluginHost:
            return make_host(clock)

        @staticmethod
        def _found(_: InvariantViolation) -> None:
            progress.shrinking = True

        def _report(self, result: Any) -> None:
            if result is not None and not progress.shrinking:
                progress.calls += 1
                progress.update()

        def teardown(self) -> None:
            try:
                super().teardown()
            finally:
                harness = self.harness
                if progress.shrinking:
                    progress.shrink_runs += 1
                else:
                    progress.examples += 1
                    report.examples += 1
                    report.outcomes.update(harness.outcomes())
                    report.faults.update(harness.injector.counts())
                    report.attempts += harness.injector.attempts
                progress.update()

    return Fuzz


def _find_violation(error: BaseException) -> InvariantViolation | None:
    if isinstance(error, InvariantViolation):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _find_violation(inner)
        if found is not None:
            return found
    return None


def fuzz(
    make_host: HostFactory,
    plugin: str,
    function: str,
    *,
    inputs: st.SearchStrategy[Any],
    examples: int = 100,
    seed: int = 0,
    kinds: Sequence[str] = (),
    rate: float = 0.3,
    steps: int = 50,
    progress: Progress,
) -> FuzzReport:
    """Run the examples; the report holds the outcomes and, if one broke, the shrunk violation."""
    report = FuzzReport()
    machine = _machine(make_host, plugin, function, inputs, kinds, rate, progress, report)
    hypothesis_seed(seed)(machine)
    options = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )
    try:
        with with_reporter(lambda _: None):
            run_machine(machine, settings=options)
    except Exception as error:
        violation = _find_violation(error)
        if violation is None:
            raise
        progress.minimizing = True
        progress.update(force=True)
        smallest = minimize(make_host, violation)
        report.violation = smallest or violation
        report.flaky = smallest is None
    return report


def _summary(
    report: FuzzReport, title: str, seed: int, kinds: Sequence[str], rate: float, out: TextIO
) -> None:
    out.write(
        f"{title}: {report.examples} runs on fresh hosts, {report.calls} calls, "
        f"{report.attempts} attempts (seed {seed})\n\n"
    )
    total = max(1, report.calls)
    rows = [
        (label, str(count), f"{100 * count / total:.1f}%")
        for label, count in sorted(report.outcomes.items(), key=lambda item: (-item[1], item[0]))
    ]
    for line in table(("OUTCOME", "CALLS", "SHARE"), rows or [("(no calls)", "0", "-")]):
        out.write(line + "\n")
    faults = ", ".join(kinds) if kinds else "none"
    heading = f"Faults injected ({rate:g} of attempts, and outages), from: {faults}"
    out.write("\n" + "\n".join(textwrap.wrap(heading, 100, subsequent_indent="  ")) + "\n")
    fault_rows = [
        (label, str(count))
        for label, count in sorted(report.faults.items(), key=lambda item: (-item[1], item[0]))
    ]
    for line in table(("FAULT", "ATTEMPTS"), fault_rows or [("(none injected)", "0")], "  "):
        out.write(line + "\n")


def _observed(make_host: HostFactory, on_host: Callable[[PluginHost], None]) -> HostFactory:
    def make(clock: FakeClock) -> PluginHost:
        host = make_host(clock)
        on_host(host)
        return host

    return make


def run_fuzz(
    target: str,
    function: str,
    *,
    examples: int = 100,
    seed: int | None = None,
    kinds: Sequence[str] = (),
    rate: float = 0.3,
    example_input: Any = None,
    has_example: bool = False,
    steps: int = 50,
    out: TextIO | None = None,
    err: TextIO | None = None,
    on_host: Callable[[PluginHost], None] | None = None,
) -> int:
    """The ``fuzz`` command: 0 when every invariant held, 3 when one broke (the shrunk
    reproducer is printed).

    :param on_host: told of every host the run makes (``wasm-plugins stats`` reads them).

    :raises PluginError: a typed error when TARGET cannot be resolved.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    make_host = target_host(target)
    if on_host is not None:
        make_host = _observed(make_host, on_host)
    probe = make_host(FakeClock())
    try:
        plugin = _only_plugin(probe, target)
        manifest = probe.plugins[plugin].manifest
    finally:
        probe.close()
    inputs: st.SearchStrategy[Any]
    if manifest.codec == "raw":
        inputs = st.binary(max_size=256)
    else:
        names = field_names(manifest, function)
        inputs = json_inputs(keys=names)
        if names:
            inputs = st.one_of(inputs, objects_with(names))
        if has_example:
            inputs = st.one_of(inputs_like(example_input), inputs)
    title = f"fuzz {plugin}.{function}"
    progress = Progress(title, examples, err)
    progress.update(force=True)
    try:
        report = fuzz(
            make_host,
            plugin,
            function,
            inputs=inputs,
            examples=examples,
            seed=seed,
            kinds=kinds,
            rate=rate,
            steps=steps,
            progress=progress,
        )
    finally:
        progress.finish()
    _summary(report, title, seed, kinds, rate, out)
    violation = report.violation
    if violation is None:
        out.write(
            "\nEvery invariant held: each call ended in a value, a fallback or a typed error; "
            "every event was\nreported once; the breaker's transitions were legal; nothing "
            "untyped escaped; nothing leaked.\n"
        )
        return 0
    calls = sum(1 for step in violation.steps if isinstance(step, Call))
    broke = textwrap.wrap(f"An invariant broke: {violation}", 100, subsequent_indent="  ")
    out.write(
        "\n"
        + "\n".join(broke)
        + "\n"
        + (
            "(replaying these steps did not break it again: the failure is flaky, it depends on "
            "timing or on state\noutside the host; this is the sequence Hypothesis shrank)\n"
            if report.flaky
            else ""
        )
        + f"\nShrunk reproducer ({len(violation.steps)} steps, {calls} "
        f"call{'s' if calls != 1 else ''}; rerun with --seed {seed}):\n\n"
    )
    out.write(
        violation.reproducer(
            f"target_host({target!r})",
            imports=["from wasm_plugins.testing.fuzz import target_host"],
        )
    )
    return 3


_QUOTED = re.compile(r'"([A-Za-z_][A-Za-z0-9_]{0,31})"')


def field_names(manifest: Manifest, function: str) -> tuple[str, ...]:
    """The names a function's description in the manifest quotes (``{"text": str}`` gives
    ``text``): likely keys of its input, so generated objects often use them."""
    spec = manifest.functions.get(function)
    if spec is None:
        return ()
    return tuple(dict.fromkeys(_QUOTED.findall(spec.description)))


def _only_plugin(host: PluginHost, target: str) -> str:
    """The plugin TARGET names in a host made by :func:`target_host`."""
    if target in host.plugins:
        return target
    names = [name for name, info in host.plugins.items() if info.distribution is None]
    if len(names) == 1:
        return names[0]
    raise LookupError(f"cannot tell which plugin {target!r} is among {sorted(host.plugins)}")
