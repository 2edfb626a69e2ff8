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

Time, sleep and randomness come from the host (injected), so tests never sleep.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from loguru import logger

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
    contextual_error,
)
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
from wasm_plugins.policy._clock import Clock, RandomSource, SystemClock
from wasm_plugins.policy._events import (
    AttemptFailed,
    AttemptSucceeded,
    BreakerStateChanged,
    CallFinished,
    FallbackUsed,
    HookFailed,
    LimitsChanged,
    PolicyEvent,
    RetryScheduled,
)
from wasm_plugins.policy._retry import Backoff, RetryBudget
from wasm_plugins.sandbox import Limits

if TYPE_CHECKING:
    from wasm_plugins.host import Outcome, PluginHost, PluginInfo
    from wasm_plugins.manifest import Manifest

__all__ = ["CallPipeline", "CallState", "caused_by_caller"]


@attrs.define
class CallState:
    """One call as policy hooks see it; ``attempt`` and ``limits`` change as it goes."""

    host: PluginHost
    plugin: str
    function: str
    input: Any
    call_id: str
    manifest: Manifest
    started: float
    deadline: float | None
    attempt: int = 0
    attempt_started: float = 0.0
    limits: Limits = attrs.field(factory=Limits)
    errors: list[PluginError] = attrs.field(factory=list)

    @property
    def idempotent(self) -> bool:
        """Whether the manifest declares the function safe to repeat after a timeout."""
        spec = self.manifest.functions.get(self.function)
        return spec is not None and spec.idempotent

    def remaining(self, now: float) -> float | None:
        """Seconds left before the call's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - now


_QUICK_HOOK = 1e-3
"""Seconds under which a fallback hook that has nothing to say always answers. The refusal's
straight path skips asking the built-in fallbacks when none of their strategies applies, which is
what asking them gives unless the recovery timeout is so short that even that answer counts as
too slow (a ``hook_failed`` event): with such a timeout, refusals take the general path."""

_MAX_ROUTES = 4096
"""Routes kept per plugin; past that its table starts again (function names come from callers)."""

ValueHandler = Callable[[float, Any, Any], None]
"""A built-in reporter told of a call whose first attempt returned: ``(duration, input, value)``,
what it would do with that attempt's ``attempt_succeeded`` and the ``call_finished`` events."""
RefusalHandler = Callable[[int, float, float, PluginError], None]
"""A built-in reporter told of a call the breaker refused before any attempt, no fallback
answering: ``(call number, time, duration, error)``, what it would do with its ``call_finished``
event."""
_H = TypeVar("_H")
_Handlers = tuple[tuple[str, _H], ...]


class _Route:
    """What every call of one (plugin, function) needs, looked up once."""

    __slots__ = (
        "breaker",
        "budget",
        "direct",
        "environment",
        "fast_value",
        "generation",
        "info",
        "manifest",
        "on_refusal",
        "on_value",
    )

    def __init__(
        self,
        *,
        generation: int | None,
        info: PluginInfo,
        manifest: Manifest,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        direct: bool,
        on_value: _Handlers[ValueHandler] | None,
        on_refusal: _Handlers[RefusalHandler] | None,
    ) -> None:
        self.generation = generation
        self.info = info
        self.manifest = manifest
        self.breaker = breaker
        self.budget = budget
        self.direct = direct
        """Only the built-in attempt implements the attempt hook: the sandbox is called as is."""
        self.on_value = on_value
        """The built-in reporters' handlers of a first attempt's value (None: send events)."""
        self.fast_value = on_value if direct else None
        """Those handlers, when the attempt can also be made straight through."""
        self.on_refusal = on_refusal
        """Their handlers of a refusal no fallback answers (None: the general path)."""
        self.environment: ExecutionEnvironment | None = None
        """The environment of a refusal's context (the same for every refusal)."""


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
    """Whether the caller, not the plugin's health, caused this error (the breaker ignores it)."""
    if isinstance(error, ConfigurationError):
        return True
    if isinstance(error, ResourceLimitExceeded):
        return error.resource == "input"
    if isinstance(error, CommunicationError):
        return error.channel == "input"
    if isinstance(error, ExecutionError):
        return error.trap == "guest_error"
    return False


class CallPipeline:
    """Runs calls for one host: its breakers, retry budgets, and the policy hooks."""

    def __init__(
        self,
        host: PluginHost,
        clock: Clock,
        random: RandomSource,
        recovery_timeout: float = 1.0,
    ) -> None:
        self._host = host
        self._clock = clock
        self._monotonic: Callable[[], float] = (
            time.monotonic if type(clock) is SystemClock else clock.monotonic
        )
        """The clock's reading, straight from ``time`` for the system clock."""
        self._random = random
        self.recovery_timeout = recovery_timeout
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._implementations: dict[str, tuple[int | None, list[Any]]] = {}
        self._direct_attempt: tuple[int | None, bool] = (None, False)
        self._routes: dict[str, dict[str, _Route]] = {}
        """By plugin, then function (two lookups cost less than making a key)."""
        # wasm_plugins.host imports this module: its Outcome is looked up once, here.
        from wasm_plugins.host import Outcome

        self._outcome = Outcome

    # -- per-plugin state ---------------------------------------------------------------------

    def breaker(self, plugin: str, function: str) -> CircuitBreaker:
        """The breaker of (plugin, function), made on first use from the manifest's settings."""
        key = (plugin, function)
        breaker = self._breakers.get(key)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                spec = self._host._info(plugin).manifest.policy.breaker
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
                self._breakers[key] = breaker
        return breaker

    def breakers(self) -> dict[tuple[str, str], CircuitBreaker]:
        """Every breaker made so far."""
        with self._lock:
            return dict(self._breakers)

    def budget(self, plugin: str) -> RetryBudget:
        """The plugin's retry budget."""
        budget = self._budgets.get(plugin)
        if budget is None:
            with self._lock:
                budget = self._budgets.get(plugin)
                if budget is None:
                    spec = self._host._info(plugin).manifest.policy
                    budget = RetryBudget(spec.retry_budget_ratio, spec.retry_budget_maximum)
                    self._budgets[plugin] = budget
        return budget

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

    # -- the call -----------------------------------------------------------------------------

    def invoke(self, plugin: str, function: str, input: Any) -> Outcome:
        """Run one call through the whole policy."""
        outcome: Outcome = self.call(plugin, function, input, True)
        return outcome

    def call(self, plugin: str, function: str, input: Any, want_outcome: bool = False) -> Any:
        """:meth:`invoke`, returning only the value unless ``want_outcome`` (no
        :class:`Outcome` is made for a value alone)."""
        # The common cases run straight through: the breaker closed, the built-in attempt, the
        # built-in reporters told directly instead of through events; or a refusal that no
        # fallback can answer. Everything else (a failure, a hook or a reporter of a third
        # party) goes through the general loop, which is the policy as documented; both give
        # the same results, events and counts.
        route = self._route(plugin, function)
        monotonic = self._monotonic
        started = monotonic()
        number = next(self._ids)
        budget = route.budget
        if budget._tokens != budget.maximum:  # full: depositing changes nothing
            budget.deposit()
        breaker = route.breaker
        permit = breaker.try_acquire()
        if isinstance(permit, InstanceError):
            if route.on_refusal is not None and self.recovery_timeout >= _QUICK_HOOK:
                raise self._refused(route, plugin, function, permit, started, number)
            call = self._new_call(route, plugin, function, input, started, number)
            outcome = self._give_up(call, self._annotate(permit, call))
            return outcome if want_outcome else outcome.value
        result: Any
        on_value = route.fast_value
        if on_value is not None:
            try:
                value = self._host._sandbox(plugin, None).call(function, input)
            except PluginError as error:
                result = error
            except Exception as exc:
                result = _attempt_hook_failure(exc)
            except BaseException:
                breaker.record(permit, Verdict.IGNORED)
                raise
            else:
                duration = monotonic() - started
                breaker.record_success(permit)
                for source, handler in on_value:
                    try:
                        handler(duration, input, value)
                    except Exception as exc:
                        _reporter_failed(source, "call_finished", exc)
                if not want_outcome:
                    return value
                return self._outcome(
                    value=value,
                    plugin=plugin,
                    function=function,
                    attempts=1,
                    errors=(),
                    duration=duration,
                )
            call = self._new_call(route, plugin, function, input, started, number)
            call.attempt = 1
            call.attempt_started = started
        else:
            call = self._new_call(route, plugin, function, input, started, number)
            call.attempt = 1
            try:
                result = self._attempt(call)
            except BaseException:
                # KeyboardInterrupt and the like: the call ends, but its permit (perhaps a
                # half-open probe slot) must not stay taken.
                breaker.record(permit, Verdict.IGNORED)
                raise
        outcome = self._loop(call, breaker, budget, permit, result)
        return outcome if want_outcome else outcome.value

    def _loop(
        self,
        call: CallState,
        breaker: CircuitBreaker,
        budget: RetryBudget,
        permit: Permit | None,
        result: Any,
    ) -> Outcome:
        """The policy from the result of an attempt made under ``permit`` (with no permit: from
        asking the breaker for the next attempt)."""
        while True:
            if permit is None:
                granted = breaker.try_acquire()
                if isinstance(granted, InstanceError):
                    # Refused before an attempt: the last plugin error, if any, tells more.
                    last = call.errors[-1] if call.errors else self._annotate(granted, call)
                    break
                permit = granted
                call.attempt += 1
                try:
                    result = self._attempt(call)
                except BaseException:
                    breaker.record(permit, Verdict.IGNORED)
                    raise
            if not isinstance(result, PluginError):
                breaker.record(permit, Verdict.SUCCESS)
                return self._succeeded(call, result)
            last = self._failed(call, result, breaker, permit)
            permit = None
            action = self._recovery(last, call)
            if isinstance(action, UseValue):
                return self._answer_with(
                    FallbackResult(action.value, action.strategy, action.quality), last, call
                )
            if breaker.state is BreakerState.OPEN or not self._retry(action, last, call, budget):
                break
        return self._give_up(call, last)

    def _give_up(self, call: CallState, last: PluginError) -> Outcome:
        """No more attempts: a fallback answers, or the caller gets a ContextualError."""
        result = self._fallback(last, call)
        if result is not None:
            return self._answer_with(result, last, call)
        now = self._clock.monotonic()
        self.report(
            CallFinished(
                call.plugin,
                call.function,
                call.call_id,
                now,
                "error",
                call.attempt,
                now - call.started,
                last,
            )
        )
        raise self._contextual(last, call.plugin, call.function, call, call.errors[:-1])

    def _refused(
        self,
        route: _Route,
        plugin: str,
        function: str,
        rejection: InstanceError,
        started: float,
        number: int,
    ) -> ContextualError:
        """The breaker refused the first attempt and no fallback can answer: what the general
        path does then (the ``call_finished`` event, the ContextualError), without the call
        state and the event object that nobody else would see."""
        rejection.plugin = rejection.plugin or plugin
        rejection.function = rejection.function or function
        now = self._monotonic()
        assert route.on_refusal is not None
        for source, handler in route.on_refusal:
            try:
                handler(number, now, now - started, rejection)
            except Exception as exc:
                _reporter_failed(source, "call_finished", exc)
        engine = route.manifest.engine or self._host.engine_name
        environment = route.environment
        if environment is None or environment.engine != engine:
            environment = ExecutionEnvironment(engine=engine, isolation="in-process", attempt=0)
            route.environment = environment
        return contextual_error(
            rejection, ErrorContext(plugin=plugin, function=function, environment=environment)
        )

    def _new_call(
        self,
        route: _Route,
        plugin: str,
        function: str,
        input: Any,
        started: float,
        number: int,
    ) -> CallState:
        manifest = route.manifest
        deadline = manifest.policy.deadline
        return CallState(
            host=self._host,
            plugin=plugin,
            function=function,
            input=input,
            call_id=f"{plugin}#{number}",
            manifest=manifest,
            started=started,
            deadline=started + deadline if deadline is not None else None,
            limits=manifest.limits,
        )

    def _route(self, plugin: str, function: str) -> _Route:
        """What calls of (plugin, function) need, kept until the host's hooks change."""
        host = self._host
        routes = self._routes.get(plugin)
        route = routes.get(function) if routes is not None else None
        generation = getattr(host.manager, "generation", None)
        # A plugin's registration never changes once made: only the hooks can.
        if route is not None and route.generation == generation:
            return route
        try:
            info = host._info(plugin)
        except PluginError as error:
            raise self._contextual(error, plugin, function, None, []) from None
        manifest = info.manifest
        breaker = self.breaker(plugin, function)
        budget = self.budget(plugin)
        on_value, on_refusal = self._fast_reporters(plugin, function, manifest)
        if on_refusal is not None and not self._fallbacks_silent(plugin, function, manifest):
            on_refusal = None
        route = _Route(
            generation=generation,
            info=info,
            manifest=manifest,
            breaker=breaker,
            budget=budget,
            direct=self._only_builtin_attempt(),
            on_value=on_value,
            on_refusal=on_refusal,
        )
        if generation is not None:
            routes = self._routes.setdefault(plugin, {})
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            routes[function] = route
        return route

    def _builtin_objects(self) -> set[int]:
        """The host's own built-in plugin objects (by identity)."""
        builtins: dict[str, object] = getattr(self._host, "_builtin_plugins", {})
        return {id(plugin) for plugin in builtins.values()}

    def _fast_reporters(
        self, plugin: str, function: str, manifest: Manifest
    ) -> tuple[_Handlers[ValueHandler] | None, _Handlers[RefusalHandler] | None]:
        """The built-in reporters' direct handlers for this route, in reporting order, or None
        when some reporter is not one of the host's built-in ones (then everybody gets events,
        in order)."""
        builtin = self._builtin_objects()
        on_value: list[tuple[str, ValueHandler]] = []
        on_refusal: list[tuple[str, RefusalHandler]] = []
        for impl in self._each("wasm_plugins_report"):
            handlers = getattr(impl.plugin, "fast_handlers", None)
            if id(impl.plugin) not in builtin or handlers is None:
                return None, None
            value, refusal = handlers(plugin, function, manifest)
            if value is not None:
                on_value.append((impl.plugin_name, value))
            if refusal is not None:
                on_refusal.append((impl.plugin_name, refusal))
        return tuple(on_value), tuple(on_refusal)

    def _fallbacks_silent(self, plugin: str, function: str, manifest: Manifest) -> bool:
        """Whether no fallback can answer for (plugin, function), whatever the input."""
        builtin = self._builtin_objects()
        for impl in self._each("wasm_plugins_fallback"):
            silent = getattr(impl.plugin, "answers_nothing", None)
            if id(impl.plugin) not in builtin or silent is None:
                return False
            if not silent(plugin, function, manifest):
                return False
        return True

    def _attempt(self, call: CallState) -> Any:
        """Run one attempt: its value, or the typed error it ended with (returned, not raised)."""
        from wasm_plugins.host import Attempt

        limits = None if call.limits == call.manifest.limits else call.limits
        call.attempt_started = started = self._clock.monotonic()
        try:
            if self._only_builtin_attempt():
                # Nobody else implements or wraps the attempt hook: skip pluggy's dispatch.
                value = self._host._sandbox(call.plugin, limits).call(call.function, call.input)
            else:
                value = self._host.hooks.attempt(
                    Attempt(
                        self._host, call.plugin, call.function, call.input, call.attempt, limits
                    )
                )
        except PluginError as error:
            return error
        except Exception as exc:
            return _attempt_hook_failure(exc)
        now = self._clock.monotonic()
        self.report(
            AttemptSucceeded(
                call.plugin,
                call.function,
                call.call_id,
                now,
                call.attempt,
                now - started,
                call.input,
                value,
            )
        )
        return value

    def _succeeded(self, call: CallState, value: Any) -> Outcome:
        from wasm_plugins.host import Outcome

        now = self._clock.monotonic()
        self.report(
            CallFinished(
                call.plugin,
                call.function,
                call.call_id,
                now,
                "value",
                call.attempt,
                now - call.started,
            )
        )
        return Outcome(
            value=value,
            plugin=call.plugin,
            function=call.function,
            attempts=call.attempt,
            errors=tuple(call.errors),
            duration=now - call.started,
        )

    def _failed(
        self, call: CallState, failure: PluginError, breaker: CircuitBreaker, permit: Permit
    ) -> PluginError:
        now = self._clock.monotonic()
        if any(earlier is failure for earlier in call.errors):
            # The same exception object raised again (a host function that keeps one): each
            # attempt's error must keep its own context.
            failure = failure.with_()
        error = self._annotate(self._classify(failure, call), call)
        if error.context is not None and error.context.environment.attempt != call.attempt:
            error.context = attrs.evolve(
                error.context,
                environment=attrs.evolve(error.context.environment, attempt=call.attempt),
            )
        call.errors.append(error)
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
        breaker.record(permit, Verdict.IGNORED if caused_by_caller(error) else Verdict.FAILURE)
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
            changed = None if call.limits == call.manifest.limits else call.limits
            self._host._discard_sandbox(call.plugin, changed, recompile=action.recompile)
        self._clock.sleep(delay)
        return True

    def _answer_with(self, result: FallbackResult, error: PluginError, call: CallState) -> Outcome:
        from wasm_plugins.host import Outcome

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
            )
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

    def _each(self, hook_name: str) -> list[Any]:
        """The plain implementations of a hook in call order, cached until plugins change."""
        manager = self._host.manager
        generation = getattr(manager, "generation", None)
        cached = self._implementations.get(hook_name)
        if cached is not None and generation is not None and cached[0] == generation:
            return cached[1]
        caller = getattr(manager.hook, hook_name)
        implementations = [
            impl
            for impl in reversed(caller.get_hookimpls())
            if not (impl.hookwrapper or impl.wrapper)
        ]
        self._implementations[hook_name] = (generation, implementations)
        return implementations

    def _only_builtin_attempt(self) -> bool:
        manager = self._host.manager
        generation = getattr(manager, "generation", None)
        if generation is None or self._direct_attempt[0] != generation:
            implementations = manager.hook.wasm_plugins_attempt.get_hookimpls()
            direct = (
                len(implementations) == 1 and implementations[0].plugin_name == "builtin-attempt"
            )
            self._direct_attempt = (generation, direct)
        return self._direct_attempt[1]

    def _first_answer(
        self, hook_name: str, expected: type, call: CallState, **arguments: Any
    ) -> Any:
        """The first answer of the ``expected`` type, implementation by implementation; an
        implementation that raises, runs past the recovery timeout, or answers something else
        than ``expected`` or None is reported and skipped."""
        arguments["call"] = call
        for impl in self._each(hook_name):
            started = self._clock.monotonic()
            try:
                answer = impl.function(**{name: arguments[name] for name in impl.argnames})
            except Exception as exc:
                self._hook_failed(call, hook_name, impl.plugin_name, f"{type(exc).__name__}: {exc}")
                continue
            elapsed = self._clock.monotonic() - started
            if elapsed > self.recovery_timeout:
                self._hook_failed(
                    call,
                    hook_name,
                    impl.plugin_name,
                    f"took {elapsed:.3f} s, more than the recovery timeout of "
                    f"{self.recovery_timeout:.3f} s",
                )
                continue
            if answer is None:
                continue
            if not isinstance(answer, expected):
                self._hook_failed(
                    call,
                    hook_name,
                    impl.plugin_name,
                    f"answered {type(answer).__name__}, not {expected.__name__} or None",
                )
                continue
            return answer
        return None

    def _hook_failed(self, call: CallState, hook: str, source: str, reason: str) -> None:
        self.report(
            HookFailed(
                call.plugin,
                call.function,
                call.call_id,
                self._clock.monotonic(),
                hook,
                source,
                reason,
            )
        )

    def _classify(self, error: PluginError, call: CallState) -> PluginError:
        answer = self._first_answer(
            "wasm_plugins_classify_error", Classification, call, error=error
        )
        if answer is None:
            return error
        changes: dict[str, Any] = {}
        if answer.severity is not None:
            changes["severity"] = answer.severity
        if answer.recovery_potential is not None:
            changes["recovery_potential"] = answer.recovery_potential
        return error.with_(**changes) if changes else error

    def _recovery(self, error: PluginError, call: CallState) -> RecoveryAction | None:
        answer: RecoveryAction | None = self._first_answer(
            "wasm_plugins_recovery_action", RecoveryAction, call, error=error
        )
        return answer

    def _fallback(self, error: PluginError, call: CallState) -> FallbackResult | None:
        answer: FallbackResult | None = self._first_answer(
            "wasm_plugins_fallback", FallbackResult, call, error=error
        )
        return answer

    def report(self, event: PolicyEvent) -> None:
        """Hand an event to every reporter; one that raises is logged and the others still run."""
        for impl in self._each("wasm_plugins_report"):
            try:
                if impl.argnames:
                    impl.function(event)
                else:
                    impl.function()
            except Exception as exc:
                _reporter_failed(impl.plugin_name, event.name, exc)

    # -- errors ---------------------------------------------------------------------------------

    def _annotate(self, error: PluginError, call: CallState) -> PluginError:
        error.plugin = error.plugin or call.plugin
        error.function = error.function or call.function
        return error

    def _contextual(
        self,
        error: PluginError,
        plugin: str,
        function: str,
        call: CallState | None,
        previous: list[PluginError],
    ) -> ContextualError:
        error.plugin = error.plugin or plugin
        error.function = error.function or function
        attempt = call.attempt if call is not None else 1
        base = error.context
        if base is None:
            engine = None
            if call is not None:
                engine = call.manifest.engine or self._host.engine_name
            context = ErrorContext(
                plugin=plugin,
                function=function,
                environment=ExecutionEnvironment(
                    engine=engine, isolation="in-process", attempt=attempt
                ),
                previous_errors=tuple(previous),
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
                ),
                previous_errors=tuple(previous),
            )
        return ContextualError(error=error, context=context)
