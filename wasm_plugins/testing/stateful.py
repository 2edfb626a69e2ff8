"""Stateful fault fuzzing of a host with Hypothesis: random sequences of calls, injected faults,
outages and clock moves, checked against the invariants of the error policy, shrunk to the
shortest sequence that breaks one.

For your own host, say how to make it and which calls to make::

    from hypothesis import strategies as st
    from wasm_plugins import PluginHost
    from wasm_plugins.testing.stateful import CallSpec, host_state_machine

    def make_host(clock):
        return PluginHost.discover(clock=clock)      # your host, on the fake clock

    HostFuzz = host_state_machine(
        make_host,
        [CallSpec("text-tools", "word_count", st.builds(lambda t: {"text": t}, st.text()))],
    )
    TestHostFuzz = HostFuzz.TestCase                 # collected by pytest or unittest

or subclass :class:`HostStateMachine` and set the same things as class attributes. A failure is
an :class:`~wasm_plugins.testing.harness.InvariantViolation` whose ``steps`` are the shrunk
sequence (and Hypothesis prints the steps as ``state.call(step=Call(...))`` lines).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wasm_plugins.host import PluginHost
from wasm_plugins.testing import FakeClock
from wasm_plugins.testing.faults import FAULT_LABELS
from wasm_plugins.testing.harness import (
    Advance,
    Call,
    Heal,
    HostFactory,
    HostHarness,
    Outage,
)
from wasm_plugins.testing.strategies import (
    DEFAULT_FAULT_KINDS,
    fault_schedules,
    faults,
    json_inputs,
)

__all__ = ["CallSpec", "HostStateMachine", "host_state_machine"]


@attrs.frozen
class CallSpec:
    """A call the machine may make: ``plugin.function`` with inputs drawn from ``inputs``
    (default: any JSON value)."""

    plugin: str
    function: str
    inputs: st.SearchStrategy[Any] = attrs.field(factory=json_inputs)


_STRATEGIES: weakref.WeakKeyDictionary[type, dict[str, st.SearchStrategy[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _cached(machine: HostStateMachine, name: str) -> st.SearchStrategy[Any]:
    # Made once per class: Hypothesis describes a new strategy (lambdas included, by reading
    # their source) each time one is made, which would cost more than the calls themselves.
    made = _STRATEGIES.setdefault(type(machine), {})
    if name not in made:
        made[name] = getattr(machine, name)()
    return made[name]


def _call_steps(machine: HostStateMachine) -> st.SearchStrategy[Any]:
    return _cached(machine, "call_steps")


def _disturbances(machine: HostStateMachine) -> st.SearchStrategy[Any]:
    return _cached(machine, "disturbances")


class HostStateMachine(RuleBasedStateMachine):
    """Fuzzes one host against the invariants of :mod:`wasm_plugins.testing.harness`.

    Set, in a subclass (or through :func:`host_state_machine`):

    - :meth:`make_host` (or the ``host_factory`` attribute): the host under test, from a fake
      clock;
    - ``calls``: the :class:`CallSpec` the machine chooses from;
    - ``fault_kinds``: what may be injected (labels of
      :data:`~wasm_plugins.testing.faults.FAULT_LABELS`), ``fault_rate`` the share of attempts
      that get one, ``outages`` whether persistent failures happen too;
    - ``clock_steps``: the seconds the clock may move at a time;
    - ``max_attempts_per_call``: past it, a call counts as one that does not end.

    Each example makes a fresh host and closes it at the end (checking for leaks).
    """

    host_factory: ClassVar[HostFactory | None] = None
    calls: ClassVar[Sequence[CallSpec]] = ()
    fault_kinds: ClassVar[Sequence[str]] = DEFAULT_FAULT_KINDS
    fault_rate: ClassVar[float] = 0.3
    outages: ClassVar[bool] = True
    clock_steps: ClassVar[Sequence[float]] = (0.1, 1.0, 5.0, 30.0, 60.0)
    max_attempts_per_call: ClassVar[int] = 100
    on_result: ClassVar[Callable[[HostHarness, Any], None] | None] = None
    """Called after each step with the harness and the step's result (a ``CallResult`` for a
    call, else None): a place to count outcomes."""

    def __init__(self) -> None:
        super().__init__()
        if not self.calls:
            raise TypeError(f"{type(self).__name__}.calls is empty: give the calls to make")
        self.harness = HostHarness(self.make_host, max_attempts_per_call=self.max_attempts_per_call)

    def make_host(self, clock: FakeClock) -> PluginHost:
        """The host under test, on ``clock``; by default ``host_factory(clock)``."""
        factory = type(self).host_factory
        if factory is None:
            raise NotImplementedError(
                f"{type(self).__name__} needs make_host(clock) or a host_factory"
            )
        return factory(clock)

    # -- strategies, made once per machine class (st.runner() gives the machine) ---------------

    def call_steps(self) -> st.SearchStrategy[Call]:
        """Calls: a spec, an input for it, the faults of its attempts."""
        schedules = (
            fault_schedules(self.fault_kinds, rate=self.fault_rate)
            if self.fault_kinds
            else st.just(())
        )
        return st.one_of(
            [
                st.builds(
                    Call, st.just(spec.plugin), st.just(spec.function), spec.inputs, schedules
                )
                for spec in self.calls
            ]
        )

    def disturbances(self) -> st.SearchStrategy[Advance | Outage | Heal]:
        """What happens between calls: the clock moves, an outage starts or ends."""
        moves = st.sampled_from([Advance(seconds) for seconds in self.clock_steps])
        if not (self.outages and self.fault_kinds):
            return moves
        return st.one_of(moves, st.builds(Outage, faults(self.fault_kinds)), st.just(Heal()))

    def _report(self, result: Any) -> None:
        callback = type(self).on_result
        if callback is not None:
            callback(self.harness, result)

    # -- rules ----------------------------------------------------------------------------------

    @rule(step=st.runner().flatmap(_call_steps))
    def call(self, step: Call) -> None:
        """Make a call, with faults planned for its attempts."""
        self._report(self.harness.run(step))

    @rule(step=st.runner().flatmap(_disturbances))
    def disturb(self, step: Advance | Outage | Heal) -> None:
        """Move the clock (the breaker's recovery time, the cache's TTL, the alerts' window),
        or start an outage (every attempt fails with one fault) or end it."""
        self._report(self.harness.run(step))

    @invariant()
    def policy_holds(self) -> None:
        """Breakers, instances and events between steps (calls are checked as they end)."""
        if hasattr(self, "harness"):
            self.harness.check()

    def teardown(self) -> None:
        """Close the host: no instance or worker may outlive it."""
        if hasattr(self, "harness"):
            self.harness.close()


def host_state_machine(
    make_host: HostFactory,
    calls: Iterable[CallSpec],
    *,
    fault_kinds: Iterable[str] = DEFAULT_FAULT_KINDS,
    fault_rate: float = 0.3,
    outages: bool = True,
    clock_steps: Iterable[float] = (0.1, 1.0, 5.0, 30.0, 60.0),
    max_attempts_per_call: int = 100,
    name: str = "HostFuzz",
    on_result: Callable[[HostHarness, Any], None] | None = None,
) -> type[HostStateMachine]:
    """A :class:`HostStateMachine` subclass for your host; use its ``TestCase`` in a test module,
    or ``hypothesis.stateful.run_state_machine_as_test(machine)``.

    :param make_host: makes the host under test from a fake clock.
    :param calls: the calls to choose from.
    :param fault_kinds: what may be injected (error kinds, ``latency``, ``value``,
        ``exception``); empty for no faults.
    :param fault_rate: the share of attempts that get a fault.
    :param outages: whether persistent outages happen too.
    :param clock_steps: the seconds the clock may move at a time.
    :param max_attempts_per_call: past it, a call does not end (a violation).
    :param name: the class's name (it shows in Hypothesis' reports).
    :param on_result: called with the harness and each step's result.
    """
    kinds = tuple(fault_kinds)
    unknown = sorted(set(kinds) - set(FAULT_LABELS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULT_LABELS)}")
    attributes: dict[str, Any] = {
        "host_factory": staticmethod(make_host),
        "calls": tuple(calls),
        "fault_kinds": kinds,
        "fault_rate": fault_rate,
        "outages": outages,
        "clock_steps": tuple(clock_steps),
        "max_attempts_per_call": max_attempts_per_call,
        "on_result": staticmethod(on_result) if on_result is not None else None,
        "__module__": __name__,
    }
    machine: type[HostStateMachine] = type(name, (HostStateMachine,), attributes)
    return machine
