"""Finding policy and WASM plugins through the ``wasm_plugins`` entry-point group.

Each entry point names an object (usually a module) that pluggy registers as a plugin; a WASM plugin
is contributed by its implementation of ``wasm_plugins_register_plugins``. One distribution that
fails to import, or whose hookimpls are misspelt, is reported with its name and reason; the others
still load. ``WASM_PLUGINS_DISABLE`` (comma-separated) blocks entry points, pluggy plugins and WASM
plugins by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import attrs
import pluggy

from wasm_plugins._escape import escape, escape_lines
from wasm_plugins._log import logger
from wasm_plugins._suggest import did_you_mean
from wasm_plugins.hookspecs import PROJECT_NAME

__all__ = [
    "DISABLE_ENVIRONMENT_VARIABLE",
    "ENTRY_POINT_GROUP",
    "DiscoveryProblem",
    "blocked_names",
    "entry_point_names",
    "load_entry_points",
    "unknown_hook_reason",
]

ENTRY_POINT_GROUP = PROJECT_NAME
DISABLE_ENVIRONMENT_VARIABLE = "WASM_PLUGINS_DISABLE"


@attrs.frozen
class DiscoveryProblem:
    """Why one contribution could not be used."""

    source: str
    """The entry point (``name = module``) or plugin that failed."""
    distribution: str | None
    """The installed distribution that provides it."""
    stage: str
    """``import``, ``hookimpl`` (a hook that does not exist), ``register`` or ``load``."""
    reason: str

    def __str__(self) -> str:
        where = f" (from distribution {escape(self.distribution)})" if self.distribution else ""
        return f"{escape(self.source)}{where}: {self.stage} failed: {escape_lines(self.reason)}"


def blocked_names(environment: dict[str, str] | None = None) -> frozenset[str]:
    """Names blocked by ``WASM_PLUGINS_DISABLE``."""
    value = (environment if environment is not None else os.environ).get(
        DISABLE_ENVIRONMENT_VARIABLE, ""
    )
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def entry_point_names(group: str = ENTRY_POINT_GROUP) -> set[str]:
    """The names of the group's entry points and of the distributions that provide them (the
    names ``WASM_PLUGINS_DISABLE`` may block)."""
    names: set[str] = set()
    for entry_point in entry_points(group=group):
        names.add(entry_point.name)
        if entry_point.dist is not None:
            names.add(entry_point.dist.name)
    return names


def _unknown_hooks(manager: pluggy.PluginManager, name: str) -> list[str]:
    unknown: dict[str, list[str]] = getattr(manager, "unknown_hooks", {})
    return unknown.pop(name, [])


def unknown_hook_reason(hook: str, manager: pluggy.PluginManager) -> str:
    """Why a hookimpl was left out: the hook it names does not exist; the closest one that does."""
    known = [
        name
        for name, caller in vars(manager.hook).items()
        if isinstance(caller, pluggy.HookCaller) and caller.has_spec()
    ]
    return (
        f"unknown hook {hook!r}: this hookimpl is left out, the others are used; "
        + did_you_mean(hook, known)
        + "hooks are listed in docs/hooks.md"
    )


def _distribution(entry_point: EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return None if dist is None else f"{dist.name} {dist.version}"


def load_entry_points(
    manager: pluggy.PluginManager,
    blocked: Iterable[str] = (),
    group: str = ENTRY_POINT_GROUP,
) -> tuple[dict[str, str | None], list[DiscoveryProblem]]:
    """Register every entry point of ``group`` with ``manager``, isolating failures.

    :returns: the registered plugin names with their distributions, and the problems found.
    """
    blocked = frozenset(blocked)
    registered: dict[str, str | None] = {}
    problems: list[DiscoveryProblem] = []
    for entry_point in entry_points(group=group):
        distribution = _distribution(entry_point)
        source = f"{entry_point.name} = {entry_point.value}"
        dist_name = entry_point.dist.name if entry_point.dist is not None else None
        if entry_point.name in blocked or dist_name in blocked:
            logger.bind(plugin=entry_point.name).info("blocked by {}", DISABLE_ENVIRONMENT_VARIABLE)
            manager.set_blocked(entry_point.name)
            continue
        if manager.get_plugin(entry_point.name) is not None or manager.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            # Importing runs the distribution's code: SystemExit, GeneratorExit or an exception
            # of its own making must not end the host's discovery of the others.
            problems.append(
                DiscoveryProblem(
                    source, distribution, "import", escape(f"{type(exc).__name__}: {exc}")
                )
            )
            continue
        try:
            manager.register(plugin, name=entry_point.name)
            manager.check_pending()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            if manager.is_registered(plugin):
                manager.unregister(plugin)
            reason = (
                str(exc)
                if isinstance(exc, pluggy.PluginValidationError | ValueError)
                else f"{type(exc).__name__}: {exc}"
            )
            problems.append(DiscoveryProblem(source, distribution, "hookimpl", escape(reason)))
            continue
        registered[entry_point.name] = distribution
        problems.extend(
            DiscoveryProblem(source, distribution, "hookimpl", unknown_hook_reason(hook, manager))
            for hook in _unknown_hooks(manager, entry_point.name)
        )
    for problem in problems:
        logger.bind(source=problem.source, distribution=problem.distribution).error(
            "plugin discovery problem: {}", problem
        )
    return registered, problems
