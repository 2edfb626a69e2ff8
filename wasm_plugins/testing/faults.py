"""Fault injection: a pluggy plugin that makes attempts fail, slow down or answer wrongly.

The model is the chaos strategies of Polly: a fault *scenario* (a typed error of any kind, latency,
a wrong value, an untyped exception), an injection *rate*, an on/off *switch* and a *seeded* random
source, with *targeting* by plugin and function. The injector wraps the attempt hook
(``@hookimpl(wrapper=True)`` around ``wasm_plugins_attempt``), so the real error policy handles an
injected fault exactly as it handles a real one: it is classified, reported, counted by the
circuit breaker, perhaps retried, and reaches the caller inside a ``ContextualError`` if the
policy gives up.

>>> from wasm_plugins import PluginHost
>>> from wasm_plugins.testing import FakeClock
>>> injector = FaultInjector([Fault.error("network")], rate=0.5, seed=1)
>>> host = PluginHost(clock=FakeClock())                                 # doctest: +SKIP
>>> host.register_policy(injector)                                       # doctest: +SKIP

This module needs nothing beyond the package itself (no Hypothesis), so the pytest plugin can use it
in any project.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs

from wasm_plugins.errors import (
    CallCancelled,
    CommunicationError,
    CompilationError,
    ConfigurationError,
    DeadlineExceeded,
    Diagnostic,
    ExecutionError,
    HostIOError,
    InstanceError,
    ModuleError,
    NetworkError,
    PluginError,
    ResourceLimitExceeded,
    SecurityViolation,
    ValidationIssue,
)
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.policy import Attempt

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "DEFAULT_SCENARIOS",
    "ERROR_KINDS",
    "FAULT_LABELS",
    "INJECTED",
    "AdvancingClock",
    "Fault",
    "FaultInjector",
    "InjectedException",
    "Injection",
    "RandomLike",
    "RunawayCall",
    "faults_from_labels",
    "injector_from_options",
    "make_error",
]

INJECTED = "injected by the fault injector (wasm_plugins.testing)"
"""The suggestion of every injected error, so that logs tell injected faults from real ones."""


def _sample_errors() -> dict[str, Callable[..., PluginError]]:
    def compilation(**fields: Any) -> PluginError:
        fields.setdefault(
            "diagnostics", (Diagnostic(message="injected compilation failure", line=1, column=1),)
        )
        return CompilationError(**fields)

    def module(**fields: Any) -> PluginError:
        fields.setdefault(
            "validation_errors", (ValidationIssue(message="injected invalid module", offset=8),)
        )
        return ModuleError(**fields)

    def runtime(**fields: Any) -> PluginError:
        fields.setdefault("trap", "unreachable")
        return ExecutionError(**fields)

    def resource(**fields: Any) -> PluginError:
        fields.setdefault("resource", "memory")
        if fields["resource"] == "memory":
            fields.setdefault("used", 128 * 2**20)
            fields.setdefault("limit", 64 * 2**20)
        elif fields["resource"] == "concurrency":
            fields.setdefault("unit", "calls")
        return ResourceLimitExceeded(**fields)

    def security(**fields: Any) -> PluginError:
        fields.setdefault("capability", "kv")
        return SecurityViolation(**fields)

    def io(**fields: Any) -> PluginError:
        fields.setdefault("operation", "read")
        fields.setdefault("path", "/injected")
        return HostIOError(**fields)

    def network(**fields: Any) -> PluginError:
        fields.setdefault("operation", "fetch")
        fields.setdefault("host", "fault-injector.invalid")
        return NetworkError(**fields)

    def configuration(**fields: Any) -> PluginError:
        fields.setdefault("field", "injected")
        return ConfigurationError(**fields)

    def instance(**fields: Any) -> PluginError:
        fields.setdefault("state", "instantiating")
        return InstanceError(**fields)

    def communication(**fields: Any) -> PluginError:
        fields.setdefault("channel", "guest-output")
        return CommunicationError(**fields)

    def timeout(**fields: Any) -> PluginError:
        fields.setdefault("operation", "call")
        fields.setdefault("limit", 0.2)
        fields.setdefault("duration", 0.2)
        return DeadlineExceeded(**fields)

    def cancelled(**fields: Any) -> PluginError:
        return CallCancelled(**fields)

    return {
        "compilation": compilation,
        "module": module,
        "runtime": runtime,
        "resource_limit_exceeded": resource,
        "security_violation": security,
        "io": io,
        "network": network,
        "configuration": configuration,
        "instance": instance,
        "communication": communication,
        "timeout": timeout,
        "cancelled": cancelled,
    }


_ERRORS = _sample_errors()

ERROR_KINDS: tuple[str, ...] = tuple(_ERRORS)
"""Every error kind an attempt can fail with (the taxonomy, without ``contextual``: that is what
reaches the caller, never what an attempt raises)."""

FAULT_LABELS: tuple[str, ...] = (*ERROR_KINDS, "latency", "value", "exception")
"""What ``kinds`` may name: an error kind, ``latency``, ``value`` (a wrong value) or ``exception``
(an untyped exception from the attempt hook, which the policy must turn into a typed error)."""


DEFAULT_FAULT_KINDS: tuple[str, ...] = (
    "network",
    "io",
    "timeout",
    "instance",
    "runtime",
    "resource_limit_exceeded",
    "communication",
    "latency",
)
"""The faults fuzzing injects unless told otherwise: the failures a healthy host meets in
production (not configuration, compilation, module or security errors, which a plugin either
always or never has)."""


def make_error(kind: str, **fields: Any) -> PluginError:
    """A fresh typed error of ``kind`` with plausible fields; ``fields`` override them.

    :raises ValueError: for a kind that is not in :data:`ERROR_KINDS`.
    """
    factory = _ERRORS.get(kind)
    if factory is None:
        raise ValueError(f"unknown error kind {kind!r}; known kinds: {', '.join(ERROR_KINDS)}")
    fields.setdefault("suggestion", INJECTED)
    return factory(**fields)


class InjectedException(RuntimeError):
    """The untyped exception of an ``exception`` fault: a bug in an attempt hook, simulated."""


class RunawayCall(BaseException):
    """Raised by the injector when one call reaches more attempts than its guard allows.

    A ``BaseException``, so that the policy does not turn it into a typed error: the call stops
    at once and whoever runs it (the state machine, the ``fuzz`` command) reports that the call
    did not end.
    """


def _check_latency(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


_SCENARIOS = ("error", "latency", "value", "exception")


@attrs.frozen(repr=False, eq=True)
class Fault:
    """One fault scenario. Make them with the constructors, which read as they print:

    - ``Fault.error("network")``: the attempt fails with a typed error of that kind
      (``Fault.error("resource_limit_exceeded", resource="fuel")`` sets its fields);
    - ``Fault.delay(0.5)``: latency: the clock moves 0.5 s forward, then the attempt runs;
    - ``Fault.wrong_value({"words": -1})``: the attempt runs, and its outcome is replaced by
      this value (what a plugin that answers wrongly looks like to the policy);
    - ``Fault.exception("boom")``: the attempt hook raises an untyped exception.

    ``latency`` may be given to any of them: a slow failure is ``Fault.error("network",
    latency=2.0)``.
    """

    scenario: str = attrs.field(validator=attrs.validators.in_(_SCENARIOS))
    kind: str | None = None
    """The error kind of an ``error`` fault."""
    fields: tuple[tuple[str, Any], ...] = ()
    """Fields of the error (``resource``, ``trap``...), as pairs."""
    latency: float = attrs.field(default=0.0, validator=_check_latency)
    """Seconds the clock moves before the attempt goes on."""
    value: Any = None
    """The wrong value of a ``value`` fault."""
    message: str = "injected fault"
    """The message of an ``exception`` fault."""

    def __attrs_post_init__(self) -> None:
        if self.scenario == "error" and self.kind not in _ERRORS:
            raise ValueError(
                f"unknown error kind {self.kind!r}; known kinds: {', '.join(ERROR_KINDS)}"
            )

    @classmethod
    def error(cls, kind: str, *, latency: float = 0.0, **fields: Any) -> Fault:
        """The attempt fails with a typed error of ``kind`` (see :data:`ERROR_KINDS`)."""
        return cls("error", kind=kind, fields=tuple(sorted(fields.items())), latency=latency)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Latency: the clock moves ``seconds`` forward, then the attempt runs as usual."""
        return cls("latency", latency=seconds)

    @classmethod
    def wrong_value(cls, value: Any, *, latency: float = 0.0) -> Fault:
        """The attempt runs, and its outcome (value or error) is replaced by ``value``."""
        return cls("value", value=value, latency=latency)

    @classmethod
    def exception(cls, message: str = "injected fault", *, latency: float = 0.0) -> Fault:
        """The attempt hook raises an untyped exception (:class:`InjectedException`)."""
        return cls("exception", message=message, latency=latency)

    @classmethod
    def of(cls, label: str, *, latency: float = 1.0, value: Any = None) -> Fault:
        """The default fault for a label of :data:`FAULT_LABELS` (``network``, ``latency``...).

        :raises ValueError: for an unknown label.
        """
        if label == "latency":
            return cls.delay(latency)
        if label == "value":
            return cls.wrong_value(value)
        if label == "exception":
            return cls.exception()
        if label not in _ERRORS:
            raise ValueError(f"unknown fault {label!r}; known faults: {', '.join(FAULT_LABELS)}")
        return cls.error(label)

    @property
    def label(self) -> str:
        """The error kind for an error fault, else the scenario (``latency``, ``value``...)."""
        return self.kind if self.scenario == "error" and self.kind else self.scenario

    def make_error(self) -> PluginError | None:
        """A fresh error for an ``error`` fault (a new object each time), else None."""
        if self.scenario != "error" or self.kind is None:
            return None
        return make_error(self.kind, **dict(self.fields))

    def __repr__(self) -> str:
        slow = [f"latency={self.latency!r}"] if self.latency else []
        if self.scenario == "error":
            extra = [f"{name}={value!r}" for name, value in self.fields]
            return f"Fault.error({', '.join([repr(self.kind), *slow, *extra])})"
        if self.scenario == "latency":
            return f"Fault.delay({self.latency!r})"
        if self.scenario == "value":
            return f"Fault.wrong_value({', '.join([repr(self.value), *slow])})"
        return f"Fault.exception({', '.join([repr(self.message), *slow])})"


@attrs.frozen
class Injection:
    """One fault the injector injected."""

    plugin: str
    function: str
    attempt: int
    """The attempt's number within its call (1 for the first)."""
    fault: Fault
    time: float | None = None
    """The host's clock when it was injected (before any latency)."""


class RandomLike(Protocol):
    """What the injector draws from: ``random.Random`` or anything alike."""

    def random(self) -> float:
        """A number in [0, 1)."""

    def choice(self, seq: Sequence[Any]) -> Any:
        """One element of ``seq``."""


class AdvancingClock(Protocol):
    """A clock the injector moves for latency: it has ``advance`` (a fake clock) or ``sleep``."""

    def monotonic(self) -> float:
        """Seconds, monotonic."""


DEFAULT_SCENARIOS: tuple[Fault, ...] = (Fault.error("network"),)


class FaultInjector:
    """A pluggy plugin that injects faults into attempts; register it with
    ``host.register_policy(injector)``.

    :param scenarios: the faults to choose from (uniformly, with the seeded random source); a
        string names the default fault of a label (``"network"``, ``"latency"``...).
    :param rate: the probability, per attempt, of injecting a fault (0 to 1).
    :param seed: seeds the random source (``None``: seeded by the system).
    :param random: a random source to use instead (anything with ``random()`` and ``choice``).
    :param plugins: only attempts of these plugins get faults (``None``: every plugin).
    :param functions: only attempts of these functions: names, or ``(plugin, function)`` pairs.
    :param enabled: the on/off switch (:meth:`enable`, :meth:`disable`, :meth:`paused`).
    :param clock: the clock latency moves (default: the host's clock of each attempt): its
        ``advance(seconds)`` when it has one, else its ``sleep(seconds)``.
    :param max_attempts_per_call: a guard: an attempt numbered above it raises
        :class:`RunawayCall` instead of running (``None``: no guard).

    Besides the random draws, :meth:`plan` queues explicit faults for the next attempts, and
    :meth:`outage` fails every targeted attempt until :meth:`heal`. What was injected is kept in
    :attr:`injected`; :attr:`attempts` counts every attempt the injector saw.
    """

    def __init__(
        self,
        scenarios: Iterable[Fault | str] | None = None,
        *,
        rate: float = 1.0,
        seed: int | None = 0,
        random: RandomLike | None = None,
        plugins: Iterable[str] | None = None,
        functions: Iterable[str | tuple[str, str]] | None = None,
        enabled: bool = True,
        clock: AdvancingClock | None = None,
        max_attempts_per_call: int | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {rate}")
        chosen = [Fault.of(item) if isinstance(item, str) else item for item in scenarios or ()]
        self.scenarios: tuple[Fault, ...] = tuple(chosen) or DEFAULT_SCENARIOS
        self.rate = rate
        self.seed = seed
        self.random: RandomLike = random if random is not None else _new_random(seed)
        self.plugins = frozenset(plugins) if plugins is not None else None
        self.functions = frozenset(functions) if functions is not None else None
        self.clock = clock
        self.max_attempts_per_call = max_attempts_per_call
        self._enabled = enabled
        self._lock = threading.Lock()
        self._planned: list[Fault | None] = []
        self._outage: Fault | None = None
        self.injected: list[Injection] = []
        """Every fault injected, in order."""
        self.attempts = 0
        """Attempts seen (targeted or not, enabled or not)."""

    # -- the switch, plans and outages ----------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether faults are injected (attempts are counted either way)."""
        return self._enabled

    def enable(self) -> None:
        """Turn injection on."""
        self._enabled = True

    def disable(self) -> None:
        """Turn injection off: attempts run untouched (planned faults wait)."""
        self._enabled = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No injection inside the ``with`` block; the previous setting after it."""
        before = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = before

    def plan(self, faults: Iterable[Fault | None]) -> None:
        """Queue faults for the next targeted attempts, in order. A planned fault is injected
        whatever the rate; ``None`` plans nothing for that attempt (the outage, if any, or the
        rate decides)."""
        with self._lock:
            self._planned.extend(faults)

    def clear_plan(self) -> None:
        """Forget the faults still planned."""
        with self._lock:
            self._planned.clear()

    def outage(self, fault: Fault | str) -> None:
        """Every targeted attempt fails with ``fault`` until :meth:`heal` (after any plan)."""
        self._outage = Fault.of(fault) if isinstance(fault, str) else fault

    def heal(self) -> None:
        """End the outage and forget the plan."""
        with self._lock:
            self._outage = None
            self._planned.clear()

    @property
    def planned(self) -> tuple[Fault | None, ...]:
        """The faults still queued by :meth:`plan`."""
        with self._lock:
            return tuple(self._planned)

    def clear(self) -> None:
        """Forget what was injected and the count of attempts."""
        with self._lock:
            self.injected.clear()
            self.attempts = 0

    def counts(self) -> Counter[str]:
        """Injected faults by label (``network``, ``latency``...)."""
        with self._lock:
            return Counter(injection.fault.label for injection in self.injected)

    def targets(self, plugin: str, function: str) -> bool:
        """Whether attempts of (plugin, function) may get faults."""
        if self.plugins is not None and plugin not in self.plugins:
            return False
        return self.functions is None or (
            function in self.functions or (plugin, function) in self.functions
        )

    # -- the hook -------------------------------------------------------------------------------

    def _choose(self, attempt: Attempt) -> Fault | None:
        with self._lock:
            self.attempts += 1
            if not self._enabled or not self.targets(attempt.plugin, attempt.function):
                return None
            if self._planned:
                planned = self._planned.pop(0)
                if planned is not None:
                    return planned
            if self._outage is not None:
                return self._outage
            if self.rate <= 0.0 or (self.rate < 1.0 and self.random.random() >= self.rate):
                return None
            fault: Fault = self.random.choice(self.scenarios)
            return fault

    def _record(self, attempt: Attempt, fault: Fault) -> None:
        clock = self.clock or attempt.clock
        injection = Injection(
            attempt.plugin, attempt.function, attempt.number, fault, clock.monotonic()
        )
        with self._lock:
            self.injected.append(injection)

    def _delay(self, attempt: Attempt, seconds: float) -> None:
        clock: Any = self.clock or attempt.clock
        advance = getattr(clock, "advance", None)
        if advance is not None:
            advance(seconds)
        else:
            clock.sleep(seconds)

    @hookimpl(wrapper=True, trylast=True)
    def wasm_plugins_attempt(self, attempt: Attempt) -> Generator[None, Any, Any]:
        """Inject the chosen fault around one attempt. ``trylast`` makes it the innermost
        wrapper, closest to the plugin: every other attempt wrapper (tracing, timing) sees an
        injected fault as it would see the plugin's own."""
        limit = self.max_attempts_per_call
        if limit is not None and attempt.number > limit:
            raise RunawayCall(
                f"{attempt.plugin}.{attempt.function}: attempt {attempt.number} of one call, "
                f"more than the {limit} allowed: the call does not end"
            )
        fault = self._choose(attempt)
        if fault is None:
            return (yield)
        self._record(attempt, fault)
        if fault.latency:
            self._delay(attempt, fault.latency)
        error = fault.make_error()
        if error is not None:
            raise error
        if fault.scenario == "exception":
            raise InjectedException(fault.message)
        if fault.scenario == "value":
            with contextlib.suppress(PluginError):
                yield
            return fault.value
        return (yield)

    def __repr__(self) -> str:
        state = "on" if self._enabled else "off"
        labels = ", ".join(fault.label for fault in self.scenarios)
        return f"<FaultInjector {state} rate={self.rate} seed={self.seed} [{labels}]>"


def _new_random(seed: int | None) -> random.Random:
    return random.Random(seed)


def faults_from_labels(
    labels: Iterable[str], *, latency: float = 1.0, value: Any = None
) -> tuple[Fault, ...]:
    """The default fault of each label (see :meth:`Fault.of`)."""
    return tuple(Fault.of(label, latency=latency, value=value) for label in labels)


def injector_from_options(options: Mapping[str, Any], **defaults: Any) -> FaultInjector:
    """A :class:`FaultInjector` from the keyword arguments of a ``wasm_faults`` marker:
    ``rate``, ``kinds`` (labels) or ``faults`` (:class:`Fault` objects), ``seed``, ``plugins``,
    ``functions``, ``latency`` (seconds of a ``latency`` fault), ``value`` (of a ``value``
    fault), ``max_attempts_per_call``; ``defaults`` fill what the options leave out."""
    merged = {**defaults, **options}
    known = {
        "rate",
        "kinds",
        "faults",
        "seed",
        "plugins",
        "functions",
        "latency",
        "value",
        "max_attempts_per_call",
        "clock",
        "enabled",
    }
    unknown = sorted(set(merged) - known)
    if unknown:
        raise TypeError(f"unknown fault options {unknown}; known: {', '.join(sorted(known))}")
    scenarios: list[Fault] = list(merged.get("faults") or ())
    kinds = merged.get("kinds")
    if isinstance(kinds, str):
        kinds = [kinds]
    scenarios.extend(
        faults_from_labels(
            kinds or (), latency=merged.get("latency", 1.0), value=merged.get("value")
        )
    )
    return FaultInjector(
        scenarios,
        rate=merged.get("rate", 1.0),
        seed=merged.get("seed", 0),
        plugins=merged.get("plugins"),
        functions=merged.get("functions"),
        enabled=merged.get("enabled", True),
        clock=merged.get("clock"),
        max_attempts_per_call=merged.get("max_attempts_per_call"),
    )
