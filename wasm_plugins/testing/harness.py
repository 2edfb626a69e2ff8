"""A host under test: steps (calls with faults, clock moves, outages) and the invariants they keep.

:class:`HostHarness` drives one :class:`~wasm_plugins.host.PluginHost` made by a factory you give it
(with a :class:`~wasm_plugins.testing.clock.FakeClock`, so the policy never sleeps), injects faults
through a :class:`~wasm_plugins.testing.faults.FaultInjector`, records every policy event, and after
every step checks the invariants of the error policy (docs/testing.md):

- **every call ends** in a value, a fallback's value, a ``ContextualError`` or a cancellation
  (a ``ContextualError`` whose error is a ``CallCancelled``, when the caller cancelled it), and
  within ``max_attempts_per_call`` attempts;
- **nothing untyped escapes**: no other exception reaches the caller, every error is a
  ``PluginError`` of the taxonomy, and an injected error reaches the policy with its own kind;
- **every event is reported once**: one attempt event per attempt, numbered 1 to n, one
  ``RetryScheduled`` before each retry, one ``FallbackUsed`` when a fallback answered, exactly one
  ``CallFinished`` per call and last, agreeing with what the caller got; no event object twice;
- **breaker transitions are legal**: closed to open, open to half-open (not before the recovery
  time), half-open to closed or open (and open to closed by hand), each starting where the last
  ended; a call refused without an attempt is refused by an open or half-open breaker;
- **no worker or instance leaks**: at most one instance per sandbox (one thread), no bulkhead slot
  held after a call, and after ``close()`` no sandbox holds an instance and no worker process of
  the host is alive.

A violation raises :class:`InvariantViolation`, which carries the steps so far;
:meth:`InvariantViolation.reproducer` prints them as a Python program that :func:`replay` runs.
The Hypothesis state machine (:mod:`wasm_plugins.testing.stateful`) and the ``wasm-plugins fuzz``
command are built on this class; it needs no Hypothesis itself.
"""

from __future__ import annotations

import os
import textwrap
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import attrs

from wasm_plugins.errors import (
    ContextualError,
    ExecutionError,
    InstanceError,
    PluginError,
    error_classes,
)
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.host import Outcome, PluginHost
from wasm_plugins.policy import (
    AttemptFailed,
    AttemptSucceeded,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    PolicyEvent,
    RetryScheduled,
)
from wasm_plugins.testing import FakeClock
from wasm_plugins.testing.faults import Fault, FaultInjector, Injection, RunawayCall

__all__ = [
    "LEGAL_TRANSITIONS",
    "Advance",
    "Call",
    "CallResult",
    "EventLedger",
    "Heal",
    "HostFactory",
    "HostHarness",
    "InvariantViolation",
    "Outage",
    "Step",
    "child_pids",
    "error_detail",
    "minimize",
    "replay",
]

HostFactory = Callable[[FakeClock], PluginHost]
"""Makes the host under test from the fake clock it must use: ``PluginHost(clock=clock, ...)``."""

LEGAL_TRANSITIONS = frozenset(
    {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("half_open", "open"),
        ("open", "closed"),  # force_close()
    }
)
"""The breaker transitions a host may announce, as (before, after) state names."""

_KINDS = frozenset(cls.kind for cls in error_classes())


# -- steps ----------------------------------------------------------------------------------------


def _fault_tuple(faults: Iterable[Fault | None]) -> tuple[Fault | None, ...]:
    return tuple(faults)


@attrs.frozen(repr=False)
class Call:
    """Call ``plugin.function`` with ``input``; ``faults[i]`` is injected into attempt ``i + 1``
    (``None``, and every attempt past the tuple: no planned fault, the attempt runs as it is,
    unless an :class:`Outage` is on)."""

    plugin: str
    function: str
    input: Any = None
    faults: tuple[Fault | None, ...] = attrs.field(default=(), converter=_fault_tuple)

    def __repr__(self) -> str:
        parts = [repr(self.plugin), repr(self.function), repr(self.input)]
        if self.faults:
            parts.append(f"faults={list(self.faults)!r}")
        return f"Call({', '.join(parts)})"


@attrs.frozen(repr=False)
class Advance:
    """Move the fake clock ``seconds`` forward."""

    seconds: float

    def __repr__(self) -> str:
        return f"Advance({self.seconds!r})"


@attrs.frozen(repr=False)
class Outage:
    """From now on, every attempt without a planned fault fails with ``fault``."""

    fault: Fault

    def __repr__(self) -> str:
        return f"Outage({self.fault!r})"


@attrs.frozen(repr=False)
class Heal:
    """End the outage."""

    def __repr__(self) -> str:
        return "Heal()"


Step = Union[Call, Advance, Outage, Heal]  # noqa: UP007 (a runtime alias on Python 3.10)


# -- violations -----------------------------------------------------------------------------------


class InvariantViolation(AssertionError):
    """An invariant of the error policy did not hold. ``invariant`` names it, ``steps`` are the
    steps run, the last one included."""

    def __init__(self, invariant: str, detail: str, steps: Sequence[Step] = ()) -> None:
        self.invariant = invariant
        self.detail = detail
        self.steps: tuple[Step, ...] = tuple(steps)
        super().__init__(f"{invariant}: {detail}")

    def reproducer(self, factory: str = "make_host", imports: Iterable[str] = ()) -> str:
        """The steps as a Python program: ``replay(<factory>, steps)`` raises this violation
        again. ``factory`` is the expression that names the host factory; ``imports`` are the
        lines that make it available."""
        lines = [
            "from wasm_plugins.testing.faults import Fault",
            "from wasm_plugins.testing.harness import Advance, Call, Heal, Outage, replay",
            *imports,
            "",
            *textwrap.wrap(str(self), 98, initial_indent="# ", subsequent_indent="# "),
            "steps = [",
            *(f"    {step!r}," for step in self.steps),
            "]",
            f"replay({factory}, steps)",
        ]
        return "\n".join(lines) + "\n"


# -- the event ledger -----------------------------------------------------------------------------


class EventLedger:
    """A reporter that keeps every policy event, and notices an event object reported twice."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []
        self._seen: set[int] = set()
        self.repeated: list[PolicyEvent] = []
        """Event objects reported more than once."""

    @hookimpl(tryfirst=True)
    def wasm_plugins_report(self, event: PolicyEvent) -> None:
        """Record the event."""
        if id(event) in self._seen:
            self.repeated.append(event)
        self._seen.add(id(event))
        self.events.append(event)

    def names(self) -> list[str]:
        """The events' names, in order."""
        return [event.name for event in self.events]


# -- processes ------------------------------------------------------------------------------------


def child_pids() -> set[int]:
    """The live (or not yet reaped) child processes of this process, from ``/proc``; an empty
    set where there is no ``/proc``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    me = os.getpid()
    children = set()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            stat = (proc / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(me):
            children.add(int(entry))
    return children


# -- the harness ----------------------------------------------------------------------------------


@attrs.frozen
class CallResult:
    """What one call ended in."""

    outcome: str
    """``value``, ``fallback`` or ``error``."""
    kind: str | None
    """The error's kind (``error``), or the error a fallback answered for (``fallback``)."""
    attempts: int
    value: Any = None
    strategy: str | None = None
    detail: str | None = None
    """What the error's kind alone does not tell: a runtime error's trap, the resource of a
    limit, an instance error's state, a communication error's channel."""

    @property
    def label(self) -> str:
        """``value``, ``fallback (strategy)`` or ``error: kind (detail)``, for summaries."""
        if self.outcome == "value":
            return "value"
        if self.outcome == "fallback":
            return f"fallback ({self.strategy})"
        return f"error: {self.kind}" + (f" ({self.detail})" if self.detail else "")


def error_detail(error: PluginError) -> str | None:
    """The field that tells errors of one kind apart (a trap, a resource, a state, a channel)."""
    for name in ("trap", "resource", "state", "channel"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            return value
    return None


class HostHarness:
    """Runs steps against a host and checks the invariants after each one.

    :param make_host: makes the host under test from a :class:`FakeClock`.
    :param max_attempts_per_call: a call that reaches more attempts does not end (a violation).
    :param clock: the fake clock (default: a new one).
    :param check_leaks: check instances, bulkhead slots and worker processes.
    """

    def __init__(
        self,
        make_host: HostFactory,
        *,
        max_attempts_per_call: int = 100,
        clock: FakeClock | None = None,
        check_leaks: bool = True,
    ) -> None:
        self.clock = clock or FakeClock()
        self.steps: list[Step] = []
        self.check_leaks = check_leaks
        self.max_attempts_per_call = max_attempts_per_call
        self.injector = FaultInjector(
            rate=0.0, seed=0, clock=self.clock, max_attempts_per_call=max_attempts_per_call
        )
        self.ledger = EventLedger()
        self.results: list[CallResult] = []
        self._breakers: dict[tuple[str, str], str] = {}
        self._opened_at: dict[tuple[str, str], float] = {}
        self._checked = 0
        self._sandboxes: weakref.WeakSet[Any] = weakref.WeakSet()
        self._workers: set[int] = set()
        self.closed = False
        self.on_violation: Callable[[InvariantViolation], None] | None = None
        """Called with every violation found, before it is raised."""
        self.host = make_host(self.clock)
        self.host.register_policy(self.injector, name="wasm-plugins-fault-injector")
        self.host.register_policy(self.ledger, name="wasm-plugins-event-ledger")

    # -- steps ----------------------------------------------------------------------------------

    def run(self, step: Step) -> CallResult | None:
        """Run one step and check the invariants; a call's result is returned.

        :raises InvariantViolation: when an invariant did not hold.
        """
        self.steps.append(step)
        if isinstance(step, Call):
            return self.call(step)
        if isinstance(step, Advance):
            self.clock.advance(step.seconds)
        elif isinstance(step, Outage):
            self.injector.outage(step.fault)
        else:
            self.injector.heal()
        self.check()
        return None

    def run_all(self, steps: Iterable[Step]) -> list[CallResult]:
        """Run steps in order, then close the host (checking for leaks); the calls' results."""
        results = [result for step in steps if (result := self.run(step)) is not None]
        self.close()
        return results

    def violation(self, invariant: str, detail: str) -> InvariantViolation:
        """An :class:`InvariantViolation` carrying the steps so far (``on_violation`` sees it)."""
        found = InvariantViolation(invariant, detail, self.steps)
        if self.on_violation is not None:
            self.on_violation(found)
        return found

    def call(self, step: Call) -> CallResult:
        """Make one call with its planned faults, then check it and the host."""
        if not self.steps or self.steps[-1] is not step:
            self.steps.append(step)
        mark = len(self.ledger.events)
        injected = len(self.injector.injected)
        seen = self.injector.attempts
        self.injector.clear_plan()
        self.injector.plan(step.faults)
        outcome: Outcome | None = None
        failure: ContextualError | None = None
        try:
            outcome = self.host.invoke(step.plugin, step.function, step.input)
        except ContextualError as error:
            failure = error
        except RunawayCall as runaway:
            raise self.violation("every call ends", str(runaway)) from None
        except KeyboardInterrupt:
            raise
        except PluginError as error:
            raise self.violation(
                "nothing untyped escapes",
                f"the call raised {type(error).__name__} ({error.kind}: {error.message}) instead "
                "of a ContextualError",
            ) from error
        except BaseException as exc:
            raise self.violation(
                "nothing untyped escapes",
                f"the call raised {type(exc).__name__}: {exc}",
            ) from exc
        finally:
            self.injector.clear_plan()
        attempts = self.injector.attempts - seen
        result = self._check_call(
            step,
            outcome,
            failure,
            self.ledger.events[mark:],
            self.injector.injected[injected:],
            attempts,
        )
        self.results.append(result)
        self.check()
        return result

    # -- invariants -----------------------------------------------------------------------------

    def _check_call(
        self,
        step: Call,
        outcome: Outcome | None,
        failure: ContextualError | None,
        events: list[PolicyEvent],
        injections: list[Injection],
        attempts: int,
    ) -> CallResult:
        where = f"{step.plugin}.{step.function}"
        mine = [event for event in events if event.call_id]
        ids = sorted({event.call_id for event in mine})
        if len(ids) > 1:
            raise self.violation(
                "every event is reported once", f"one call of {where} reported events of {ids}"
            )
        finished = [event for event in mine if isinstance(event, CallFinished)]
        if len(finished) != 1:
            raise self.violation(
                "every event is reported once",
                f"a call of {where} reported {len(finished)} CallFinished events (events: "
                f"{[event.name for event in mine]})",
            )
        end = finished[0]
        if mine[-1] is not end:
            raise self.violation(
                "every event is reported once",
                f"a call of {where} reported {mine[-1].name} after its CallFinished",
            )
        tried = [event for event in mine if isinstance(event, AttemptSucceeded | AttemptFailed)]
        numbers = [event.attempt for event in tried]
        if numbers != list(range(1, attempts + 1)):
            raise self.violation(
                "every event is reported once",
                f"a call of {where} made {attempts} attempts but reported attempt events "
                f"numbered {numbers}",
            )
        successes = [i for i, event in enumerate(tried) if isinstance(event, AttemptSucceeded)]
        if successes and successes != [len(tried) - 1]:
            raise self.violation(
                "every event is reported once",
                f"a call of {where} reported AttemptSucceeded before its last attempt",
            )
        if end.attempts != attempts:
            raise self.violation(
                "every event is reported once",
                f"CallFinished of {where} says {end.attempts} attempts; {attempts} were made",
            )
        retries = [event for event in mine if isinstance(event, RetryScheduled)]
        if not max(attempts - 1, 0) <= len(retries) <= attempts:
            raise self.violation(
                "every event is reported once",
                f"a call of {where} made {attempts} attempts and scheduled {len(retries)} retries",
            )
        if [event.attempt for event in retries] != list(range(2, len(retries) + 2)):
            raise self.violation(
                "every event is reported once",
                f"the retries of a call of {where} announce attempts "
                f"{[event.attempt for event in retries]}",
            )
        fallbacks = [event for event in mine if isinstance(event, FallbackUsed)]
        failed = [event for event in tried if isinstance(event, AttemptFailed)]
        for event in failed:
            self._typed(event.error, f"the error of attempt {event.attempt} of {where}")
        self._injected_kinds(where, injections, failed)
        if outcome is not None:
            result = self._check_outcome(where, outcome, end, tried, failed, fallbacks)
        else:
            assert failure is not None
            result = self._check_failure(step, failure, end, attempts, retries, fallbacks)
        return result

    def _typed(self, error: object, what: str) -> None:
        if not isinstance(error, PluginError):
            raise self.violation(
                "nothing untyped escapes", f"{what} is a {type(error).__name__}, not a PluginError"
            )
        if error.kind not in _KINDS:
            raise self.violation(
                "nothing untyped escapes", f"{what} has the unknown kind {error.kind!r}"
            )

    def _injected_kinds(
        self, where: str, injections: list[Injection], failed: list[AttemptFailed]
    ) -> None:
        by_attempt = {event.attempt: event for event in failed}
        for injection in injections:
            fault = injection.fault
            if fault.scenario not in ("error", "exception"):
                continue
            event = by_attempt.get(injection.attempt)
            expected = fault.kind if fault.scenario == "error" else "runtime"
            if event is None or event.error.kind != expected:
                seen = "no AttemptFailed" if event is None else f"a {event.error.kind} error"
                raise self.violation(
                    "injected faults go through the policy",
                    f"{fault!r} was injected into attempt {injection.attempt} of {where}, and "
                    f"the policy reported {seen}",
                )
            if fault.scenario == "exception" and not (
                isinstance(event.error, ExecutionError) and event.error.trap == "host_error"
            ):
                raise self.violation(
                    "nothing untyped escapes",
                    f"an exception raised by an attempt hook of {where} became "
                    f"{event.error.kind} {getattr(event.error, 'trap', '')!r}, not a host_error",
                )

    def _check_outcome(
        self,
        where: str,
        outcome: Outcome,
        end: CallFinished,
        tried: Sequence[PolicyEvent],
        failed: list[AttemptFailed],
        fallbacks: list[FallbackUsed],
    ) -> CallResult:
        if not isinstance(outcome, Outcome):
            raise self.violation(
                "every call ends", f"invoke of {where} returned a {type(outcome).__name__}"
            )
        for error in outcome.errors:
            self._typed(error, f"an error of the outcome of {where}")
        if len(outcome.errors) != len(failed) or outcome.attempts != len(tried):
            raise self.violation(
                "every event is reported once",
                f"the outcome of {where} lists {outcome.attempts} attempts and "
                f"{len(outcome.errors)} errors; the events say {len(tried)} and {len(failed)}",
            )
        if outcome.fallback is None:
            if end.outcome != "value" or fallbacks:
                raise self.violation(
                    "every event is reported once",
                    f"{where} answered with its own value, but the events say {end.outcome} "
                    f"with {len(fallbacks)} FallbackUsed",
                )
            if not tried or not isinstance(tried[-1], AttemptSucceeded):
                raise self.violation(
                    "every call ends", f"{where} answered a value without a successful attempt"
                )
            if outcome.quality != 1.0 or outcome.error is not None:
                raise self.violation(
                    "every call ends",
                    f"{where}'s own value has quality {outcome.quality} and error "
                    f"{outcome.error!r}",
                )
            return CallResult("value", None, outcome.attempts, outcome.value)
        if end.outcome != "fallback" or len(fallbacks) != 1:
            raise self.violation(
                "every event is reported once",
                f"a fallback ({outcome.fallback}) answered {where}, but the events say "
                f"{end.outcome} with {len(fallbacks)} FallbackUsed",
            )
        if fallbacks[0].strategy != outcome.fallback or end.strategy != outcome.fallback:
            raise self.violation(
                "every event is reported once",
                f"the fallback of {where} is {outcome.fallback!r} in the outcome and "
                f"{fallbacks[0].strategy!r} in the events",
            )
        if not 0.0 < outcome.quality <= 1.0:
            raise self.violation(
                "every call ends", f"the fallback of {where} has quality {outcome.quality}"
            )
        self._typed(outcome.error, f"the error a fallback of {where} answered for")
        kind = outcome.error.kind if outcome.error is not None else None
        return CallResult("fallback", kind, outcome.attempts, outcome.value, outcome.fallback)

    def _check_failure(
        self,
        step: Call,
        failure: ContextualError,
        end: CallFinished,
        attempts: int,
        retries: list[RetryScheduled],
        fallbacks: list[FallbackUsed],
    ) -> CallResult:
        where = f"{step.plugin}.{step.function}"
        error = failure.error
        self._typed(error, f"the error of the ContextualError of {where}")
        if isinstance(error, ContextualError):
            raise self.violation(
                "nothing untyped escapes", f"the ContextualError of {where} wraps another one"
            )
        context = failure.context
        if context is None:
            raise self.violation(
                "every call ends", f"the ContextualError of {where} has no context"
            )
        for earlier in context.previous_errors:
            self._typed(earlier, f"an earlier error of {where}")
        if context.environment.attempt != attempts:
            raise self.violation(
                "every call ends",
                f"the ContextualError of {where} says {context.environment.attempt} attempts; "
                f"{attempts} were made",
            )
        if len(context.previous_errors) != max(attempts - 1, 0):
            raise self.violation(
                "every call ends",
                f"the ContextualError of {where} holds {len(context.previous_errors)} earlier "
                f"errors after {attempts} attempts",
            )
        if end.outcome != "error" or fallbacks:
            raise self.violation(
                "every event is reported once",
                f"{where} failed, but the events say {end.outcome} with {len(fallbacks)} "
                "FallbackUsed",
            )
        if end.error is None or end.error.kind != error.kind:
            raise self.violation(
                "every event is reported once",
                f"{where} failed with {error.kind}, CallFinished says "
                f"{end.error.kind if end.error else None}",
            )
        refused = isinstance(error, InstanceError) and error.state == "circuit_open"
        if attempts == 0 or len(retries) == attempts:
            state = self._breakers.get((step.plugin, step.function), "closed")
            if not refused:
                raise self.violation(
                    "every call ends",
                    f"{where} ended without its last attempt, with {error.kind} instead of a "
                    "circuit_open refusal",
                )
            if state not in ("open", "half_open"):
                raise self.violation(
                    "breaker transitions are legal",
                    f"the breaker of {where} refused a call while {state}",
                )
        return CallResult("error", error.kind, attempts, detail=error_detail(error))

    def check(self) -> None:
        """Check what holds between steps: the breakers' transitions and states, instances and
        bulkhead slots.

        :raises InvariantViolation: when an invariant did not hold.
        """
        if self.ledger.repeated:
            event = self.ledger.repeated[0]
            raise self.violation(
                "every event is reported once", f"the event {event!r} was reported twice"
            )
        for key, breaker in self.host.pipeline.breakers().items():
            state = breaker.state.value  # may announce open -> half_open
            self._transitions()
            known = self._breakers.get(key, "closed")
            if state != known:
                raise self.violation(
                    "breaker transitions are legal",
                    f"the breaker of {'.'.join(key)} is {state}, but the last transition "
                    f"announced was to {known}",
                )
        self._transitions()
        if self.check_leaks:
            self._check_instances()

    def _transitions(self) -> None:
        events = self.ledger.events
        for event in events[self._checked :]:
            if not isinstance(event, BreakerStateChanged):
                continue
            key = (event.plugin, event.function)
            where = f"{event.plugin}.{event.function}"
            before = self._breakers.get(key, "closed")
            if event.before != before:
                raise self.violation(
                    "breaker transitions are legal",
                    f"the breaker of {where} moved from {event.before}, but it was {before}",
                )
            if (event.before, event.after) not in LEGAL_TRANSITIONS:
                raise self.violation(
                    "breaker transitions are legal",
                    f"the breaker of {where} moved from {event.before} to {event.after}",
                )
            if event.after == "open":
                self._opened_at[key] = event.time
            elif event.before == "open" and event.after == "half_open":
                recovery = self.host.breaker(*key).config.recovery_time
                opened = self._opened_at.get(key, float("-inf"))
                if event.time < opened + recovery:
                    raise self.violation(
                        "breaker transitions are legal",
                        f"the breaker of {where} became half-open {event.time - opened:.3f} s "
                        f"after it opened, before its recovery time of {recovery} s",
                    )
            self._breakers[key] = event.after
        self._checked = len(events)

    def _check_instances(self) -> None:
        for (plugin, _), sandbox in self.host.sandboxes().items():
            self._sandboxes.add(sandbox)
            states = sandbox.instances
            if states > 1:
                raise self.violation(
                    "no worker or instance leaks",
                    f"a sandbox of {plugin} holds {states} instances after calls from one thread",
                )
            bulkhead: Any = getattr(sandbox, "bulkhead", None)
            if bulkhead is not None and bulkhead.in_flight:
                raise self.violation(
                    "no worker or instance leaks",
                    f"a sandbox of {plugin} holds {bulkhead.in_flight} bulkhead slots between "
                    "calls",
                )
        self._workers.update(self.host.worker_pids())

    def close(self) -> None:
        """Close the host and check that it left nothing behind.

        :raises InvariantViolation: when an instance or a worker outlives the host.
        """
        if self.closed:
            return
        self.closed = True
        if self.check_leaks:
            self._check_instances()
        self.host.close()
        if not self.check_leaks:
            return
        left = self.host.sandboxes()
        if left:
            raise self.violation(
                "no worker or instance leaks", f"the closed host still holds {len(left)} sandboxes"
            )
        for sandbox in list(self._sandboxes):
            states = sandbox.instances
            if states:
                raise self.violation(
                    "no worker or instance leaks",
                    f"a sandbox of {sandbox.name} holds {states} instances after close()",
                )
        alive = self._workers & child_pids()
        if alive:
            raise self.violation(
                "no worker or instance leaks",
                f"worker processes {sorted(alive)} are alive after close()",
            )

    # -- summaries ------------------------------------------------------------------------------

    def outcomes(self) -> Counter[str]:
        """Calls by outcome label (``value``, ``fallback (cache)``, ``error: runtime``...)."""
        return Counter(result.label for result in self.results)


def replay(
    make_host: HostFactory, steps: Iterable[Step], *, max_attempts_per_call: int = 100
) -> list[CallResult]:
    """Run ``steps`` on a fresh host from ``make_host`` and close it, checking every invariant.

    :raises InvariantViolation: when one does not hold (the reproducer's failure, again).
    """
    harness = HostHarness(make_host, max_attempts_per_call=max_attempts_per_call)
    try:
        return harness.run_all(steps)
    finally:
        if not harness.closed:
            harness.host.close()


def _reproduces(
    make_host: HostFactory, steps: Sequence[Step], invariant: str, max_attempts_per_call: int
) -> InvariantViolation | None:
    try:
        replay(make_host, steps, max_attempts_per_call=max_attempts_per_call)
    except InvariantViolation as found:
        return found if found.invariant == invariant else None
    except Exception:
        return None
    return None


def _simpler_calls(step: Step) -> list[Step]:
    """Simpler versions of a call: each planned fault removed, in turn."""
    if not isinstance(step, Call):
        return []
    versions: list[Step] = []
    for index, fault in enumerate(step.faults):
        if fault is None:
            continue
        faults: list[Fault | None] = [*step.faults[:index], None, *step.faults[index + 1 :]]
        while faults and faults[-1] is None:
            faults.pop()
        versions.append(Call(step.plugin, step.function, step.input, faults))
    return versions


def minimize(
    make_host: HostFactory,
    violation: InvariantViolation,
    *,
    max_attempts_per_call: int = 100,
    budget: int = 500,
) -> InvariantViolation | None:
    """The violation again, on as few steps and planned faults as replaying allows: each step is
    dropped, and each planned fault removed, while the same invariant still breaks (at most
    ``budget`` replays). ``None`` when replaying the steps does not break it at all (a flaky
    failure: timing, real time, state outside the host).

    Hypothesis shrinks a failing sequence a long way, but not always to a minimum; this finishes
    the job on the reproducer itself, so that it is also known to reproduce.
    """
    invariant = violation.invariant
    best = _reproduces(make_host, violation.steps, invariant, max_attempts_per_call)
    if best is None:
        return None
    tries = 1
    changed = True
    while changed and tries < budget:
        changed = False
        steps = list(best.steps)
        index = len(steps) - 1
        while index >= 0 and tries < budget:
            candidates: list[list[Step]] = [steps[:index] + steps[index + 1 :]]
            candidates += [
                [*steps[:index], simpler, *steps[index + 1 :]]
                for simpler in _simpler_calls(steps[index])
            ]
            for candidate in candidates:
                tries += 1
                found = _reproduces(make_host, candidate, invariant, max_attempts_per_call)
                if found is not None:
                    best, steps, changed = found, list(found.steps), True
                    break
            index = min(index, len(steps)) - 1
    return best
