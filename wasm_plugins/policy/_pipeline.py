"""The call pipeline: breaker, attempt, report, classify, recover, retry or fall back.

Per call of (plugin, function):

1. The circuit breaker may refuse at once (open); the fallbacks may still answer.
2. One attempt runs through the attempt hook, under the limits in force.
3. On a typed error: the classification hooks may change its severity and recovery potential; the
   reporters see it; the breaker counts it; the recovery hooks are asked for an action (first
   answer wins, in pluggy order; one that raises or is too slow counts as no answer).
4. A retry happens only within the attempt limit, before the call's deadline, within the plugin's
   retry budget, and, after a timeout, only for a function declared idempotent. Raised limits
   never pass the manifest's ceilings.
5. When recovery is exhausted, the fallback hooks answer in order, or nobody does.
6. Otherwise the caller gets a ContextualError: the last error and the context of every attempt.

Time, sleep and randomness are injected, so tests never sleep. The pipeline is given what it needs
from the layers below when it is built (a manifest lookup, a sandbox provider, the hook
dispatcher); it never calls back into the host.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, final

import attrs
import pluggy

from wasm_plugins._correlation import ATTEMPT, CALLER, caller_fields
from wasm_plugins._log import logger
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    ContextualError,
    DeadlineExceeded,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    InstanceError,
    PluginError,
    ResourceLimitExceeded,
    call_error_context,
    contextual_error,
)
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy._actions import (
    Classification,
    FallbackResult,
    RecoveryAction,
    Retry,
    UseValue,
)
from wasm_plugins.policy._breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Permit,
    Verdict,
)
from wasm_plugins.policy._call import (
    Attempt,
    CallState,
    ManifestLookup,
    Outcome,
    SandboxProvider,
)
from wasm_plugins.policy._clock import Clock, RandomSource
from wasm_plugins.policy._dispatch import HookDispatcher, Maker, Reporter
from wasm_plugins.policy._events import (
    AttemptFailed,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PolicyEvent,
    Report,
    RetryScheduled,
)
from wasm_plugins.policy._retry import Backoff, RetryBudget
from wasm_plugins.sandbox import Limits

__all__ = ["CallPipeline", "caused_by_caller"]

_MAX_ROUTES = 4096
"""Routes kept per plugin; past that its table starts again (function names come from callers)."""
_MAX_BREAKERS = 1024
"""Breakers kept per plugin (function names come from callers, and each makes one); past that,
those at rest are dropped, and when fewer than a quarter of them are, the oldest (see
:meth:`CallPipeline.breaker`)."""


@final
class _Route:
    """What every call of one (plugin, function) needs, made on its first call and again after
    the hooks change (a plugin's registration never changes once made; the hooks may)."""

    __slots__ = (
        "attempt",
        "breaker",
        "budget",
        "deadline",
        "environment",
        "fallbacks",
        "limits",
        "manifest",
        "on_attempt",
        "on_error",
        "on_value",
    )

    def __init__(
        self,
        manifest: Manifest,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        attempt: Callable[[CallState], Any],
        on_attempt: tuple[Reporter, ...],
        on_value: tuple[Reporter, ...],
        on_error: tuple[Reporter, ...],
        fallbacks: tuple[pluggy.HookImpl, ...],
        environment: ExecutionEnvironment,
    ) -> None:
        self.manifest = manifest
        self.limits = manifest.limits
        self.deadline = manifest.policy.deadline
        self.breaker = breaker
        self.budget = budget
        self.attempt = attempt
        """The attempt hook as a function of the call (what its implementations take is made
        from it, and nothing else)."""
        self.on_attempt = on_attempt
        """The reporters of a successful attempt (often none: then it is not reported)."""
        self.on_value = on_value
        """The reporters of a call that ends with its value."""
        self.on_error = on_error
        """The reporters of a call that ends with an error."""
        self.fallbacks = fallbacks
        """The fallback hook's implementations that may answer for this function."""
        self.environment = environment
        """Where a call refused before any attempt ran (the errors of attempts bring their
        own)."""


_REPORT_ARGUMENTS: dict[str, Maker] = {"record": None, "event": lambda record: record.event}
"""The report hook's arguments, made from a record: the record itself, and the full event only
for a reporter that takes it."""


def _attempt_hook_failure(exc: Exception) -> ExecutionError:
    failure = ExecutionError(
        message=f"An attempt hook failed: {type(exc).__name__}: {exc}",
        trap="host_error",
        suggestion="a bug in a wasm_plugins_attempt hookimpl; see the cause",
    )
    failure.__cause__ = exc
    return failure


def _reporter_failed(source: str, event: str, exc: Exception) -> None:
    logger.bind(reporter=source, event=event).error(
        "reporter failed: {}: {}", type(exc).__name__, exc
    )


def caused_by_caller(error: PluginError) -> bool:
    """Whether the caller, not the plugin's health, caused this error (the breaker ignores it),
    by the host's own evidence: a setting, an input too large for the limit or that cannot be
    encoded. An error the guest reports is not such evidence (a plugin could fail every call
    and blame the input): it counts, unless a classification hook says otherwise."""
    if isinstance(error, ConfigurationError):
        return True
    if isinstance(error, ResourceLimitExceeded):
        return error.resource == "input"
    if isinstance(error, CommunicationError):
        return error.channel == "input"
    return False


class CallPipeline:
    """Runs calls for one host: its breakers, retry budgets, and the policy hooks.

    :param manifest: a plugin's manifest by name (raises a ConfigurationError for an unknown one).
    :param provider: the sandboxes attempts run in.
    :param hooks: the dispatcher of the host's hooks.
    :param clock: the monotonic clock and sleep.
    :param random: the random source of backoff jitter.
    :param default_engine: the engine named in an error's context when the manifest names none.
    :param recovery_timeout: seconds a policy hook may take before its answer is ignored.
    """

    def __init__(
        self,
        *,
        manifest: ManifestLookup,
        provider: SandboxProvider,
        hooks: HookDispatcher,
        clock: Clock,
        random: RandomSource,
        default_engine: str = "auto",
        recovery_timeout: float = 1.0,
    ) -> None:
        self._manifest = manifest
        self._provider = provider
        self._hooks = hooks
        self._manager = hooks.manager
        self._attempt_arguments: dict[str, Maker] = {"attempt": self._make_attempt, "call": None}
        self._clock = clock
        self._monotonic: Callable[[], float] = clock.monotonic
        self._random = random
        self._default_engine = default_engine
        self.recovery_timeout = recovery_timeout
        self._breakers: dict[str, dict[str, CircuitBreaker]] = {}
        """By plugin, then function, in the order they were made."""
        self._budgets: dict[str, RetryBudget] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._routes: dict[str, dict[str, _Route]] = {}
        """By plugin, then function (two lookups cost less than making a key). A new table
        replaces it whenever the hooks change: a call finds its route or makes it, and asks
        nothing else."""
        self._manager.listeners.append(self._hooks_changed)

    # -- per-plugin state ---------------------------------------------------------------------

    def breaker(self, plugin: str, function: str) -> CircuitBreaker:
        """The breaker of (plugin, function), made on first use from the manifest's settings."""
        breaker = self._breakers.get(plugin, {}).get(function)
        if breaker is not None:
            return breaker
        with self._lock:
            made = self._breakers.setdefault(plugin, {})
            breaker = made.get(function)
            if breaker is None:
                if len(made) >= _MAX_BREAKERS:
                    self._drop_breakers(plugin, made)
                spec = self._manifest(plugin).policy.breaker
                breaker = CircuitBreaker(
                    f"{plugin}.{function}",
                    BreakerConfig(
                        failure_threshold=spec.failure_threshold,
                        failure_ratio=spec.failure_ratio,
                        window=spec.window,
                        min_calls=spec.min_calls,
                        recovery_time=spec.recovery_time,
                        half_open_probes=spec.half_open_probes,
                        success_threshold=spec.success_threshold,
                    ),
                    self._clock,
                    self._transition_reporter(plugin, function),
                )
                made[function] = breaker
        return breaker

    def _drop_breakers(self, plugin: str, made: dict[str, CircuitBreaker]) -> None:
        """With the lock held, the plugin's breakers at their bound: drop those at rest (a
        fresh breaker decides as they do), and when that frees less than a quarter of the
        bound, the oldest of the others too, so that the next names do not look again. A
        dropped breaker's route goes with it (a call in flight keeps the one it holds)."""
        dropped: list[str] = []
        others: list[str] = []
        for function, breaker in made.items():
            (dropped if breaker.at_rest else others).append(function)
        short = _MAX_BREAKERS // 4 - len(dropped)
        if short > 0:
            dropped += others[:short]
        routes = self._routes.get(plugin, {})
        for function in dropped:
            del made[function]
            routes.pop(function, None)

    def breakers(self) -> dict[tuple[str, str], CircuitBreaker]:
        """Every breaker kept now, by (plugin, function)."""
        with self._lock:
            return {
                (plugin, function): breaker
                for plugin, made in self._breakers.items()
                for function, breaker in made.items()
            }

    def budget(self, plugin: str) -> RetryBudget:
        """The plugin's retry budget."""
        budget = self._budgets.get(plugin)
        if budget is None:
            with self._lock:
                budget = self._budgets.get(plugin)
                if budget is None:
                    spec = self._manifest(plugin).policy
                    budget = RetryBudget(spec.retry_budget_ratio, spec.retry_budget_maximum)
                    self._budgets[plugin] = budget
        return budget

    def forget(self, plugin: str) -> None:
        """Drop a plugin's routes, breakers and retry budget: a new module starts afresh."""
        with self._lock:
            self._routes.pop(plugin, None)
            self._budgets.pop(plugin, None)
            self._breakers.pop(plugin, None)

    def _transition_reporter(
        self, plugin: str, function: str
    ) -> Callable[[BreakerState, BreakerState, str], None]:
        def report(before: BreakerState, after: BreakerState, reason: str) -> None:
            self.report(
                BreakerStateChanged(
                    plugin, function, "", self._clock.monotonic(), before.value, after.value, reason
                )
            )

        return report

    def _hooks_changed(self) -> None:
        # Replaced, not cleared: a route made from the hooks as they were goes into the table
        # it was made for, which no call reads any longer.
        self._routes = {}

    def _route(self, plugin: str, function: str) -> _Route:
        """Made on the first call of (plugin, function) and again when the hooks change; other
        calls find it in ``_routes``."""
        # Read first: should the hooks change while the route is made, it goes into the old
        # table, and the next call makes it again.
        table = self._routes
        try:
            manifest = self._manifest(plugin)
        except PluginError as error:
            raise self._contextual(error, plugin, function, None) from None
        hooks = self._hooks
        key = (plugin, function)
        route = _Route(
            manifest,
            self.breaker(plugin, function),
            self.budget(plugin),
            hooks.caller("wasm_plugins_attempt", self._attempt_arguments),
            hooks.reporters("wasm_plugins_report", "attempt_succeeded", _REPORT_ARGUMENTS, key),
            hooks.reporters("wasm_plugins_report", "call_finished.value", _REPORT_ARGUMENTS, key),
            hooks.reporters("wasm_plugins_report", "call_finished.error", _REPORT_ARGUMENTS, key),
            hooks.implementations("wasm_plugins_fallback", key),
            ExecutionEnvironment(
                engine=manifest.engine or self._default_engine, isolation="in-process", attempt=0
            ),
        )
        routes = table.setdefault(plugin, {})
        if len(routes) >= _MAX_ROUTES and function not in routes:
            routes.clear()
        routes[function] = route
        return route

    def _make_attempt(self, call: CallState) -> Attempt:
        return Attempt(
            call.plugin,
            call.function,
            call.input,
            call.attempt,
            call.limits,
            self._provider,
            self._clock,
        )

    # -- the call -----------------------------------------------------------------------------

    def invoke(self, plugin: str, function: str, input: Any) -> Outcome:
        """Run one call through the whole policy: the :class:`Outcome`, or a ContextualError."""
        outcome: Outcome = self.call(plugin, function, input, True)
        return outcome

    def call(  # noqa: PLR0915 - one path, in one function: a success costs no call more
        self, plugin: str, function: str, input: Any = None, want_outcome: bool = False
    ) -> Any:
        """:meth:`invoke`, returning the value alone unless ``want_outcome`` (no
        :class:`Outcome` is made for a value alone)."""
        try:
            route = self._routes[plugin][function]
        except KeyError:
            route = self._route(plugin, function)
        monotonic = self._monotonic
        started = monotonic()
        deadline = route.deadline
        call = CallState(
            plugin,
            function,
            input,
            next(self._ids),
            route.manifest,
            started,
            started + deadline if deadline is not None else None,
            route.limits,
        )
        budget = route.budget
        if not budget.full:
            budget.deposit()
        breaker = route.breaker
        while True:
            # A closed breaker with nothing to count hands out its permit as an attribute.
            permit = breaker.quiet or breaker.try_acquire()
            if isinstance(permit, InstanceError):
                # Refused before an attempt: the last plugin error, if any, tells more.
                if call.errors:
                    last = call.errors[-1]
                else:
                    # The refusal is made fresh with no context: its call is all it lacks.
                    permit.plugin = plugin
                    permit.function = function
                    last = permit
                break
            call.attempt += 1
            # Published for what the attempt reports on its way (guest log lines, spans, the
            # host functions a worker process asks for), so they carry the call's id.
            token = ATTEMPT.set(call)
            try:
                try:
                    value = route.attempt(call)
                finally:
                    ATTEMPT.reset(token)
            except PluginError as error:
                result: PluginError = error
            except Exception as exc:
                result = _attempt_hook_failure(exc)
            except BaseException:
                # KeyboardInterrupt and the like: the call ends, but its permit (perhaps a
                # half-open probe slot) must not stay taken.
                breaker.record(permit, Verdict.IGNORED)
                raise
            else:
                if permit is not breaker.quiet:
                    breaker.record_success(permit)
                now = monotonic()
                call.value = value
                if route.on_attempt:
                    self._tell(
                        route.on_attempt,
                        call.report_as("attempt_succeeded", now, now - call.attempt_started),
                    )
                # What report_as does, written out (this runs for every call that succeeds).
                call.name = "call_finished"
                call.time = now
                call.duration = duration = now - started
                call._event = None
                call.outcome = "value"
                # The reporters of this topic only, so that one with nothing to do for a plain
                # success (the log) is not called for one.
                for source, report in route.on_value:
                    try:
                        report(call)
                    except Exception as exc:
                        _reporter_failed(source, "call_finished", exc)
                if not want_outcome:
                    return value
                return Outcome(
                    value,
                    plugin,
                    function,
                    call.attempt,
                    call.errors,
                    duration,
                    call_id=call.call_id,
                )
            last = self._failed(call, result, breaker, permit)
            action = self._recovery(last, call)
            if isinstance(action, UseValue):
                outcome = self._answer_with(
                    FallbackResult(action.value, action.strategy, action.quality), last, call
                )
                return outcome if want_outcome else outcome.value
            if breaker.state is BreakerState.OPEN or not self._retry(action, last, call, budget):
                break
        outcome = self._give_up(call, last, route)
        return outcome if want_outcome else outcome.value

    def _failed(
        self, call: CallState, failure: PluginError, breaker: CircuitBreaker, permit: Permit
    ) -> PluginError:
        now = self._clock.monotonic()
        if any(earlier is failure for earlier in call.errors):
            # The same exception object raised again (a host function that keeps one): each
            # attempt's error must keep its own context.
            failure = failure.with_()
        classified, blamed = self._classify(failure, call)
        error = self._stamp(classified, call.plugin, call.function, call.attempt, call.call_id)
        call.errors = (*call.errors, error)
        self.report(
            AttemptFailed(
                call.plugin,
                call.function,
                call.call_id,
                now,
                call.attempt,
                now - call.attempt_started,
                error,
            )
        )
        by_caller = caused_by_caller(error) if blamed is None else blamed
        breaker.record(permit, Verdict.IGNORED if by_caller else Verdict.FAILURE)
        return error

    def _retry(
        self,
        action: RecoveryAction | None,
        error: PluginError,
        call: CallState,
        budget: RetryBudget,
    ) -> bool:
        """Prepare the next attempt when the action asks for one and the rules allow it."""
        admitted = self._admit(action, error, call, budget)
        if admitted is None:
            return False
        delay, limits, reason = admitted
        now = self._clock.monotonic()
        self.report(
            RetryScheduled(
                call.plugin, call.function, call.call_id, now, call.attempt + 1, delay, reason
            )
        )
        if limits != call.limits:
            self.report(
                LimitsChanged(
                    call.plugin,
                    call.function,
                    call.call_id,
                    now,
                    call.attempt + 1,
                    call.limits,
                    limits,
                    reason,
                )
            )
            call.limits = limits
        if isinstance(action, Retry) and (action.fresh_instance or action.recompile):
            self._provider.discard(call.plugin, call.limits, action.recompile)
        self._clock.sleep(delay)
        call.attempt_started = self._monotonic()
        return True

    def _give_up(self, call: CallState, last: PluginError, route: _Route) -> Outcome:
        """No more attempts: a fallback answers, or the caller gets a ContextualError."""
        if route.fallbacks:
            result = self._fallback(last, call, route.fallbacks)
            if result is not None:
                return self._answer_with(result, last, call)
        now = self._monotonic()
        call.outcome = "error"
        call.error = last
        # (Its value is None: only a success sets one, and returns.)
        # What report_as does, written out: a refusal costs as little as it can.
        call.name = "call_finished"
        call.time = now
        call.duration = now - call.started
        call._event = None
        for source, report in route.on_error:
            try:
                report(call)
            except Exception as exc:
                _reporter_failed(source, "call_finished", exc)
        if call.attempt == 0 and last.context is None and not CALLER.get():
            # Refused before any attempt (the refusal is stamped) and no caller's fields to
            # carry: the context is the route's, made once.
            raise contextual_error(
                last,
                call_error_context(
                    call.plugin, call.function, route.environment, f"{call.plugin}#{call.number}"
                ),
            )
        raise self._contextual(last, call.plugin, call.function, call)

    def _answer_with(self, result: FallbackResult, error: PluginError, call: CallState) -> Outcome:
        now = self._clock.monotonic()
        self.report(
            FallbackUsed(
                call.plugin,
                call.function,
                call.call_id,
                now,
                result.strategy,
                result.quality,
                error,
            )
        )
        self.report(
            CallFinished(
                call.plugin,
                call.function,
                call.call_id,
                now,
                "fallback",
                call.attempt,
                now - call.started,
                error,
                result.strategy,
            ),
            "call_finished.fallback",
        )
        return Outcome(
            value=result.value,
            plugin=call.plugin,
            function=call.function,
            attempts=call.attempt,
            errors=tuple(call.errors),
            duration=now - call.started,
            fallback=result.strategy,
            quality=result.quality,
            error=error,
            call_id=call.call_id,
        )

    # -- retries --------------------------------------------------------------------------------

    def _admit(
        self,
        action: RecoveryAction | None,
        error: PluginError,
        call: CallState,
        budget: RetryBudget,
    ) -> tuple[float, Limits, str] | None:
        """The delay, limits and reason of the next attempt, or None when there is none."""
        if not isinstance(action, Retry):
            return None
        policy = call.manifest.policy
        if call.attempt >= policy.max_attempts:
            return None
        if isinstance(error, DeadlineExceeded) and not call.idempotent:
            return None
        delay = action.delay
        if delay is None:
            backoff = Backoff(policy.backoff_base, policy.backoff_cap)
            delay = backoff.delay(call.attempt, self._random)
        delay = max(0.0, delay)
        remaining = call.remaining(self._clock.monotonic())
        if remaining is not None and delay >= remaining:
            return None
        limits = self._within_ceilings(action.limits or call.limits, call)
        if not budget.withdraw():
            return None
        return delay, limits, action.reason or "retry"

    @staticmethod
    def _within_ceilings(limits: Limits, call: CallState) -> Limits:
        """Limits a recovery asked for, held to the manifest's ceilings."""
        policy = call.manifest.policy
        base = call.manifest.limits
        memory_ceiling = policy.max_memory if policy.max_memory is not None else base.memory
        timeout_ceiling = policy.max_timeout if policy.max_timeout is not None else base.timeout
        fuel_ceiling = policy.max_fuel if policy.max_fuel is not None else base.fuel
        changes: dict[str, Any] = {}
        # A recovery may raise a limit, never remove one the manifest sets.
        for name in ("memory", "timeout", "fuel", "max_input", "max_output"):
            if getattr(limits, name) is None and getattr(base, name) is not None:
                changes[name] = getattr(call.limits, name)
        limits = limits.replace(**changes) if changes else limits
        changes = {}
        if limits.memory is not None and memory_ceiling is not None:
            changes["memory"] = min(limits.memory, max(memory_ceiling, base.memory or 0))
        if limits.timeout is not None and timeout_ceiling is not None:
            changes["timeout"] = min(limits.timeout, max(timeout_ceiling, base.timeout or 0))
        if limits.fuel is not None and fuel_ceiling is not None:
            changes["fuel"] = min(limits.fuel, max(fuel_ceiling, base.fuel or 0))
        return limits.replace(**changes) if changes else limits

    # -- hooks ----------------------------------------------------------------------------------

    def _first_answer(
        self,
        hook_name: str,
        expected: type,
        error: PluginError,
        call: CallState,
        implementations: tuple[pluggy.HookImpl, ...] | None = None,
    ) -> Any:
        def failed(source: str, reason: str) -> None:
            self.report(
                HookFailed(
                    call.plugin,
                    call.function,
                    call.call_id,
                    self._clock.monotonic(),
                    hook_name,
                    source,
                    reason,
                )
            )

        return self._hooks.first_answer(
            hook_name,
            {"error": error, "call": call},
            expected,
            failed,
            self._clock.monotonic,
            self.recovery_timeout,
            implementations,
        )

    def _classify(self, error: PluginError, call: CallState) -> tuple[PluginError, bool | None]:
        """The error as classified, and whether a classifier says the caller caused it."""
        answer = self._first_answer("wasm_plugins_classify_error", Classification, error, call)
        if answer is None:
            return error, None
        changes: dict[str, Any] = {}
        if answer.severity is not None:
            changes["severity"] = answer.severity
        if answer.recovery_potential is not None:
            changes["recovery_potential"] = answer.recovery_potential
        return (error.with_(**changes) if changes else error), answer.caused_by_caller

    def _recovery(self, error: PluginError, call: CallState) -> RecoveryAction | None:
        answer: RecoveryAction | None = self._first_answer(
            "wasm_plugins_recovery_action", RecoveryAction, error, call
        )
        return answer

    def _fallback(
        self, error: PluginError, call: CallState, implementations: tuple[pluggy.HookImpl, ...]
    ) -> FallbackResult | None:
        answer: FallbackResult | None = self._first_answer(
            "wasm_plugins_fallback", FallbackResult, error, call, implementations
        )
        return answer

    def report(self, event: PolicyEvent, topic: str | None = None) -> None:
        """Hand an event to every reporter that wants its topic (by default its name); one that
        raises is logged and the others still run."""
        self._report(Report.of(event), topic)

    def _report(self, record: Report, topic: str | None = None) -> None:
        implementations, wants_event = self._hooks.topic(
            "wasm_plugins_report", topic or record.name, "event"
        )
        if not implementations:
            return
        arguments = {"record": record, "event": record.event} if wants_event else {"record": record}
        failures = self._hooks.call_each(implementations, arguments)
        if failures is not None:
            for source, exc in failures:
                _reporter_failed(source, record.name, exc)

    @staticmethod
    def _tell(reporters: tuple[Reporter, ...], record: Report) -> None:
        for source, report in reporters:
            try:
                report(record)
            except Exception as exc:
                _reporter_failed(source, record.name, exc)

    # -- errors ---------------------------------------------------------------------------------

    @staticmethod
    def _stamp(
        error: PluginError, plugin: str, function: str, attempt: int, call_id: str | None = None
    ) -> PluginError:
        """The one place an error learns its call: plugin, function, the call's id, the attempt
        its context belongs to, and the caller's own fields (:func:`call_context`)."""
        error.plugin = error.plugin or plugin
        error.function = error.function or function
        context = error.context
        if context is None:
            return error
        caller = caller_fields()
        environment = context.environment
        if environment.attempt != attempt or (caller and environment.extra != caller):
            environment = attrs.evolve(
                environment, attempt=attempt, extra={**environment.extra, **caller}
            )
        if environment is not context.environment or (call_id and context.call_id != call_id):
            error.context = attrs.evolve(
                context, environment=environment, call_id=call_id or context.call_id
            )
        return error

    def _contextual(
        self, error: PluginError, plugin: str, function: str, call: CallState | None
    ) -> ContextualError:
        """What the caller gets when the policy gives up: the error, and the context of the
        whole call (its attempts' errors before the last)."""
        attempt = call.attempt if call is not None else 1
        self._stamp(error, plugin, function, attempt, call.call_id if call is not None else None)
        caller = caller_fields()
        previous = tuple(call.errors[:-1]) if call is not None else ()
        base = error.context
        if base is None:
            engine = None
            if call is not None:
                engine = call.manifest.engine or self._default_engine
            context = ErrorContext(
                plugin=plugin,
                function=function,
                environment=ExecutionEnvironment(
                    engine=engine, isolation="in-process", attempt=attempt, extra=caller
                ),
                previous_errors=previous,
                call_id=call.call_id if call is not None else None,
            )
        else:
            environment = base.environment
            context = attrs.evolve(
                base,
                plugin=plugin,
                function=function,
                environment=attrs.evolve(
                    environment,
                    isolation=environment.isolation or "in-process",
                    attempt=attempt,
                    extra={**environment.extra, **caller},
                ),
                previous_errors=previous,
                call_id=call.call_id if call is not None else base.call_id,
            )
        return contextual_error(error, context)
