"""The one place hooks are called: implementations cached per registration generation, every
answer or the first one, an implementation that raises isolated from the others.

pluggy's own call stops at the first implementation that raises; the policy and the host need
each implementation on its own (a reporter that raises must not silence the next one), so they
call hooks through :class:`HookDispatcher`, never through loops of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, final

import pluggy

__all__ = [
    "ROUTES_ATTRIBUTE",
    "TOPICS_ATTRIBUTE",
    "HookDispatcher",
    "Maker",
    "PluginManager",
    "Reporter",
]

TOPICS_ATTRIBUTE: Final = "hook_topics"
"""A plugin object's optional collection of the topics it wants (for reporters: event names);
it is not called for others. Without it, a plugin gets every topic. A topic may be refined after a
dot (``call_finished.value``): a plugin that names the topic (``call_finished``) gets every
refinement of it, one that names a refinement gets that one only."""

ROUTES_ATTRIBUTE: Final = "hook_wants_route"
"""A plugin object's optional function ``(hook name, plugin, function) -> bool``: whether its
implementation of that hook has anything to do for calls of that plugin function (a reporter
with nothing to count, a fallback with no strategy). Asked once per route and registration
generation, never per call: its answer must not change while the plugin's registration does
not."""

_UNWRAPPABLE_HOOKS: Final = (
    "wasm_plugins_classify_error",
    "wasm_plugins_recovery_action",
    "wasm_plugins_fallback",
    "wasm_plugins_report",
)

OnError = Callable[[str, Exception], None]
"""Told of an implementation that raised: ``(its plugin's name, the exception)``."""

Maker = Callable[[Any], Any] | None
"""How one argument of a hook is made from the object a caller has at hand (the call, a
record); ``None``: it is that object itself."""

Reporter = tuple[str, Callable[[Any], Any]]
"""An implementation ready to be called with the caller's object: its plugin's name, and a
function of that object (the implementation itself when the object is all it takes)."""


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting changes to its plugins so that the dispatcher can keep the
    lists of implementations it calls until they change."""

    generation = 0

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.listeners: list[Callable[[], None]] = []
        """Called after every change to the plugins (what is built from the hooks, made
        again)."""
        self.unknown_hooks: dict[str, list[str]] = {}
        """By plugin name: its hookimpls that name no hook, left out when it was registered."""
        self._registering: str | None = None

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._registering = name or self.get_canonical_name(plugin)
        try:
            result = super().register(plugin, name)
        finally:
            self._registering = None
        self._changed()
        if result is not None:
            self._refuse_policy_wrappers(plugin)
        return result

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        """pluggy's, but a hookimpl of a hook nobody specified (a misspelt name) is left out and
        remembered in :attr:`unknown_hooks`, so that the plugin's other hookimpls still work."""
        options = super().parse_hookimpl_opts(plugin, name)
        if options is None or options.get("optionalhook"):
            return options
        caller = getattr(self.hook, name, None)
        if caller is not None and caller.has_spec():
            return options
        if self._registering is not None:
            self.unknown_hooks.setdefault(self._registering, []).append(name)
        return None

    def _refuse_policy_wrappers(self, plugin: object) -> None:
        """The dispatcher calls the policy's hooks implementation by implementation, so a
        wrapper on them would never run: refuse it loudly instead of ignoring it."""
        for hook_name in _UNWRAPPABLE_HOOKS:
            for implementation in getattr(self.hook, hook_name).get_hookimpls():
                if implementation.plugin is plugin and (
                    implementation.wrapper or implementation.hookwrapper
                ):
                    self.unregister(plugin)
                    raise pluggy.PluginValidationError(
                        plugin,
                        f"{hook_name} of {implementation.plugin_name} is a wrapper; wrappers "
                        "are supported on wasm_plugins_attempt only",
                    )

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        result = super().unregister(plugin, name)
        self._changed()
        return result

    def set_blocked(self, name: str) -> None:
        super().set_blocked(name)
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        for listener in self.listeners:
            listener()


@final
class _Plan:
    """A hook's implementations as one generation of the manager has them."""

    __slots__ = ("argnames", "by_topic", "direct", "generation", "plain")

    def __init__(self, generation: int, caller: pluggy.HookCaller) -> None:
        implementations = list(reversed(caller.get_hookimpls()))
        self.generation = generation
        self.plain = tuple(
            impl for impl in implementations if not (impl.wrapper or impl.hookwrapper)
        )
        """The implementations that are not wrappers, in call order."""
        self.direct = (
            self.plain[0].function if len(implementations) == 1 and len(self.plain) == 1 else None
        )
        """The only implementation, when nothing wraps it: called as is, without pluggy's
        machinery, which gives the same answer."""
        self.argnames = frozenset(name for impl in self.plain for name in impl.argnames)
        """Every argument some implementation takes."""
        self.by_topic: dict[tuple[str, str], tuple[tuple[pluggy.HookImpl, ...], bool]] = {}
        """By (topic, argument): the implementations that want the topic, and whether one of
        them takes the argument."""

    def for_topic(self, topic: str, argument: str) -> tuple[tuple[pluggy.HookImpl, ...], bool]:
        key = (topic, argument)
        found = self.by_topic.get(key)
        if found is None:
            general = topic.partition(".")[0]
            implementations = tuple(
                impl
                for impl in self.plain
                if _wants(getattr(impl.plugin, TOPICS_ATTRIBUTE, None), topic, general)
            )
            takes = any(argument in impl.argnames for impl in implementations)
            found = self.by_topic[key] = (implementations, takes)
        return found


@final
class HookDispatcher:
    """Calls the hooks of one plugin manager."""

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self._plans: dict[str, _Plan] = {}

    def _plan(self, hook_name: str) -> _Plan:
        plan = self._plans.get(hook_name)
        generation = self.manager.generation
        if plan is None or plan.generation != generation:
            plan = _Plan(generation, getattr(self.manager.hook, hook_name))
            self._plans[hook_name] = plan
        return plan

    @property
    def generation(self) -> int:
        """The registration generation the plans are made for: what is built from them (a
        caller, reporters) is good while it stays the same."""
        return self.manager.generation

    def caller(self, hook_name: str, makers: Mapping[str, Maker]) -> Callable[[Any], Any]:
        """A *firstresult* hook's call, as a function of the caller's object (``makers`` says
        how each argument is made from it). A lone implementation that nothing wraps is called
        as it is, with the one argument it takes: the others are not made. Good for this
        generation."""
        plan = self._plan(hook_name)
        if plan.direct is not None and len(plan.plain[0].argnames) == 1:
            return _single(plan.direct, makers[plan.plain[0].argnames[0]])
        # pluggy's own call wants every argument of the specification.
        hook = getattr(self.manager.hook, hook_name)
        chosen = dict(makers)

        def call(source: Any) -> Any:
            return hook(
                **{name: source if make is None else make(source) for name, make in chosen.items()}
            )

        return call

    def reporters(
        self,
        hook_name: str,
        topic: str,
        makers: Mapping[str, Maker],
        route: tuple[str, str] | None = None,
    ) -> tuple[Reporter, ...]:
        """The implementations :meth:`each` calls for ``topic`` (and, given a ``route``, whose
        plugin wants it), each as a function of the caller's object that makes only the
        arguments it takes. Good for this generation."""
        implementations = self._plan(hook_name).for_topic(topic, "")[0]
        if route is not None:
            implementations = _for_route(implementations, hook_name, route)
        return tuple(
            (impl.plugin_name, _single(impl.function, None))
            if len(impl.argnames) == 1 and makers.get(impl.argnames[0], 0) is None
            else (impl.plugin_name, _adapter(impl, makers))
            for impl in implementations
        )

    def implementations(
        self, hook_name: str, route: tuple[str, str] | None = None
    ) -> tuple[pluggy.HookImpl, ...]:
        """A hook's implementations that are not wrappers, in call order (given a ``route``,
        those that have something to do for it)."""
        plain = self._plan(hook_name).plain
        return plain if route is None else _for_route(plain, hook_name, route)

    def takes(self, hook_name: str, argument: str) -> bool:
        """Whether some implementation of a hook takes this argument (one nobody takes need not
        be made)."""
        return argument in self._plan(hook_name).argnames

    def topic(
        self, hook_name: str, topic: str, argument: str
    ) -> tuple[tuple[pluggy.HookImpl, ...], bool]:
        """The implementations :meth:`each` calls for ``topic``, and whether one of them takes
        ``argument``: what a caller needs to know before making that argument."""
        plan = self._plans.get(hook_name)
        if plan is None or plan.generation != self.manager.generation:
            plan = self._plan(hook_name)
        found = plan.by_topic.get((topic, argument))
        return found if found is not None else plan.for_topic(topic, argument)

    @staticmethod
    def call_each(
        implementations: tuple[pluggy.HookImpl, ...], arguments: Mapping[str, Any]
    ) -> list[tuple[str, Exception]] | None:
        """:meth:`each` over implementations already chosen with :meth:`topic`: those that
        raised (their plugin's name, the exception), or None when none did."""
        failures: list[tuple[str, Exception]] | None = None
        for impl in implementations:
            names = impl.argnames
            try:
                # _call's work, written out: this loop runs for every event.
                if len(names) == 1:
                    impl.function(arguments[names[0]])
                else:
                    impl.function(*[arguments[name] for name in names])
            except Exception as exc:
                if failures is None:
                    failures = []
                failures.append((impl.plugin_name, exc))
        return failures

    def plugin_names(self, hook_name: str) -> list[str]:
        """The plugins implementing a hook (wrappers included), in call order."""
        caller = getattr(self.manager.hook, hook_name)
        return [implementation.plugin_name for implementation in reversed(caller.get_hookimpls())]

    def first_result(self, hook_name: str, **arguments: Any) -> Any:
        """pluggy's call of a *firstresult* hook (wrappers included); an implementation that
        raises ends the call with its exception."""
        plan = self._plans.get(hook_name)
        if plan is None or plan.generation != self.manager.generation:
            plan = self._plan(hook_name)
        direct = plan.direct
        if direct is not None:
            return direct(**arguments)
        return getattr(self.manager.hook, hook_name)(**arguments)

    def each(
        self,
        hook_name: str,
        arguments: Mapping[str, Any],
        on_error: Callable[[str, BaseException], None],
        only: str | None = None,
        topic: str | None = None,
    ) -> None:
        """Call every implementation (or only those of the plugin named ``only``, or only those
        whose plugin wants ``topic``) with the arguments it names; one that raises is told to
        ``on_error`` and the next still runs."""
        plan = self._plan(hook_name)
        for impl in plan.plain if topic is None else plan.for_topic(topic, "")[0]:
            if only is not None and impl.plugin_name != only:
                continue
            try:
                _call(impl, arguments)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                # A distribution's code (its register hooks) may raise SystemExit or worse: it
                # spoils only itself.
                on_error(impl.plugin_name, exc)

    def first_answer(
        self,
        hook_name: str,
        arguments: Mapping[str, Any],
        expected: type,
        on_failure: Callable[[str, str], None],
        clock: Callable[[], float],
        timeout: float,
        implementations: tuple[pluggy.HookImpl, ...] | None = None,
    ) -> Any:
        """The first answer of the ``expected`` type, implementation by implementation (all of
        the hook's, or those given). One that raises, runs past ``timeout`` seconds of
        ``clock``, or answers something else than ``expected`` or None is told to
        ``on_failure`` (its plugin's name, why) and skipped."""
        if implementations is None:
            implementations = self._plan(hook_name).plain
        for impl in implementations:
            started = clock()
            try:
                answer = _call(impl, arguments)
            except Exception as exc:
                on_failure(impl.plugin_name, f"{type(exc).__name__}: {exc}")
                continue
            elapsed = clock() - started
            if elapsed > timeout:
                on_failure(
                    impl.plugin_name,
                    f"took {elapsed:.3f} s, more than the recovery timeout of {timeout:.3f} s",
                )
                continue
            if answer is None:
                continue
            if not isinstance(answer, expected):
                on_failure(
                    impl.plugin_name,
                    f"answered {type(answer).__name__}, not {expected.__name__} or None",
                )
                continue
            return answer
        return None


def _for_route(
    implementations: tuple[pluggy.HookImpl, ...], hook_name: str, route: tuple[str, str]
) -> tuple[pluggy.HookImpl, ...]:
    chosen = []
    for impl in implementations:
        wants = getattr(impl.plugin, ROUTES_ATTRIBUTE, None)
        if wants is None or wants(hook_name, *route):
            chosen.append(impl)
    return tuple(chosen)


def _single(function: Callable[..., Any], make: Maker) -> Callable[[Any], Any]:
    if make is None:
        return function
    return lambda source: function(make(source))


def _adapter(impl: pluggy.HookImpl, makers: Mapping[str, Maker]) -> Callable[[Any], Any]:
    chosen = [makers[name] for name in impl.argnames]
    function = impl.function

    def call(source: Any) -> Any:
        return function(*[source if make is None else make(source) for make in chosen])

    return call


def _wants(topics: Any, topic: str, general: str) -> bool:
    return topics is None or topic in topics or general in topics


def _call(impl: pluggy.HookImpl, arguments: Mapping[str, Any]) -> Any:
    # A hookimpl names a subset of the hook's arguments, in its own order.
    names = impl.argnames
    if len(names) == 1:
        return impl.function(arguments[names[0]])
    return impl.function(*[arguments[name] for name in names])
