"""Every hook of wasm-plugins: the contract between a host and the plugins that extend it.

Third parties implement these with ``@wasm_plugins.hookimpl`` in a module or object they expose
through the ``wasm_plugins`` entry-point group. A hookimpl may accept any subset of a hook's
arguments. Hooks marked *firstresult* stop at the first implementation that returns something
other than ``None``; implementations run in pluggy's order (``tryfirst`` first, ``trylast`` last,
otherwise the most recently registered first). The framework's own implementations in
``wasm_plugins.builtin`` are all ``trylast``, so a third party's hookimpl wins by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from wasm_plugins.engine import Engine
    from wasm_plugins.errors import PluginError
    from wasm_plugins.manifest import Manifest, PluginSource
    from wasm_plugins.policy import (
        Alert,
        Attempt,
        CallState,
        Classification,
        FallbackResult,
        PolicyEvent,
        RecoveryAction,
        Report,
    )
    from wasm_plugins.sandbox import HostFunction
    from wasm_plugins.trust import Grant

PROJECT_NAME = "wasm_plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a function as a hook specification of wasm-plugins (the specs below are the contract)."""
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function as an implementation of a wasm-plugins hook: ``@hookimpl``, or with pluggy's
options, as in ``@hookimpl(tryfirst=True)``."""

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]


# ---------------------------------------------------------------------------------------------
# The host's life
# ---------------------------------------------------------------------------------------------


@hookspec(historic=True)
def wasm_plugins_host_configured(host: Any) -> None:
    """See the host once it is configured: plugins registered, engines and host functions known.

    Historic: a hookimpl registered later (for instance with ``host.register_policy``) is called
    at once with the same host.

    :param host: the configured :class:`~wasm_plugins.PluginHost` (typed ``Any`` here: the
        hook specifications sit below the host they describe).
    """


@hookspec
def wasm_plugins_host_closing(host: Any) -> None:
    """Release what you hold: the host is closing (``host.close()`` or leaving its ``with`` block).

    Called once; an implementation that raises is logged and the others still run.

    :param host: the host being closed.
    """


# ---------------------------------------------------------------------------------------------
# Contributions: each hook receives a register callback
# ---------------------------------------------------------------------------------------------


@hookspec
def wasm_plugins_register_plugins(register: Callable[[PluginSource], None]) -> None:
    """Contribute WASM plugins.

    Call ``register`` once per plugin with its manifest: a path or importlib resource of a TOML
    manifest (``files(__name__) / "plugin.toml"``), a :class:`~wasm_plugins.manifest.Manifest`, or
    a dict. Resources named by a manifest resolve next to the manifest file.

    :param register: the callback that adds one plugin to the host.
    """


@hookspec
def wasm_plugins_register_engines(register: Callable[[str, Callable[[], Engine]], None]) -> None:
    """Contribute WebAssembly engines.

    Call ``register(name, factory)``; ``factory()`` returns an object that satisfies
    :class:`~wasm_plugins.engine.Engine`, or raises ImportError when it cannot load here (the
    ``doctor`` command then reports why). A manifest or the host selects it by ``name``.

    :param register: the callback that offers one engine.
    """


@hookspec
def wasm_plugins_register_host_functions(register: Callable[[HostFunction], None]) -> None:
    """Contribute host functions that guests may import.

    Call ``register`` with a :class:`~wasm_plugins.sandbox.HostFunction`. Give each one a
    ``capability``: a module that imports it loads only when its manifest grants that capability.
    The implementation receives a :class:`~wasm_plugins.sandbox.HostCall` (the guest's memory,
    the plugin's name) and then the guest's arguments.

    :param register: the callback that offers one host function.
    """


# ---------------------------------------------------------------------------------------------
# Trust
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def wasm_plugins_grant(manifest: Manifest, distribution: str | None, digest: str) -> Grant | None:
    """Decide what a plugin gets, in place of the trust policy's entry for it.

    firstresult: the first :class:`~wasm_plugins.trust.Grant` returned is the plugin's entry
    (what it does not say, the policy's default says); ``None`` leaves the decision to the trust
    policy. Called for every manifest the host does not take as written: those found through
    entry points or given on the command line, and ``host.load(manifest, check=True)``. An
    implementation that raises refuses the plugin (it is listed in ``host.problems``).

    :param manifest: the plugin's manifest, as its author wrote it (a request).
    :param distribution: the installed distribution that ships it (``name version``), if any.
    :param digest: the hex SHA-256 digest of the plugin's module.
    """


# ---------------------------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def wasm_plugins_attempt(attempt: Attempt, call: CallState) -> Any:
    """Perform one attempt of a call and return its value.

    firstresult: the first implementation that returns a value answers; the built-in one, which
    runs the plugin's sandbox, is ``trylast``. To observe or change attempts (tracing, timing,
    fault injection), implement it as a new-style wrapper (``@hookimpl(wrapper=True)``): ``yield``
    gives the value, or raises the attempt's error.

    :param attempt: the plugin, the function, the input, the attempt number, the limits in force.
    :param call: the call so far, as the other policy hooks see it (its ``attempt`` is this
        attempt's number, its ``limits`` the limits in force). While no implementation takes
        ``attempt`` (the built-in one takes ``call``), no :class:`Attempt` object is made.
    :returns: the call's value; failures are raised as :class:`~wasm_plugins.errors.PluginError`.
    """


# ---------------------------------------------------------------------------------------------
# The error policy: classify, recover, fall back, report
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def wasm_plugins_classify_error(error: PluginError, call: CallState) -> Classification | None:
    """Override the severity or recovery potential of an error before the policy acts on it.

    firstresult: the first :class:`~wasm_plugins.policy.Classification` returned is applied. An
    implementation that raises or runs past the recovery timeout is reported and skipped.

    :param error: the typed error of the attempt that just failed.
    :param call: the call so far (plugin, function, input, attempt number, limits, errors).
    """


@hookspec(firstresult=True)
def wasm_plugins_recovery_action(error: PluginError, call: CallState) -> RecoveryAction | None:
    """Choose what to do about a failed attempt: retry (after a delay, under other limits, on a
    fresh instance), answer with a value, or abort.

    firstresult: the first action returned wins; ``None`` passes to the next implementation. An
    implementation that raises or runs past the recovery timeout counts as no answer and is
    reported. The pipeline still holds every retry to the attempt limit, the call's deadline, the
    retry budget, the manifest's ceilings, and retries after a timeout to idempotent functions.

    :param error: the typed error of the attempt that just failed (after classification).
    :param call: the call so far (plugin, function, input, attempt number, limits, errors).
    """


@hookspec(firstresult=True)
def wasm_plugins_fallback(error: PluginError, call: CallState) -> FallbackResult | None:
    """Answer in the plugin's place once recovery is exhausted (or the breaker is open).

    firstresult: the first :class:`~wasm_plugins.policy.FallbackResult` (value, strategy name,
    quality in (0, 1]) answers the call; the caller's outcome records the strategy, the quality
    and the original error. An implementation that raises is reported and skipped.

    :param error: the error that made a fallback necessary.
    :param call: the call (plugin, function, input, attempts made, errors).
    """


@hookspec
def wasm_plugins_report(event: PolicyEvent, record: Report) -> None:
    """Receive every policy event: attempt succeeded or failed, retry scheduled, limits changed,
    breaker changed state, fallback used, hook failed, call finished.

    Every implementation sees every event; one that raises is logged and changes nothing. Take
    ``event`` for the full event object, or only ``record`` for its light record (the name, the
    call, and the fields of the common events): the built-in reporters take ``record``, and while
    no implementation takes ``event`` a call that succeeds makes no event object at all.

    :param event: a :class:`~wasm_plugins.policy.PolicyEvent` subclass instance.
    :param record: the same event as a :class:`~wasm_plugins.policy.Report`; its ``event``
        property gives the full event.
    """


@hookspec
def wasm_plugins_alert(alert: Alert) -> None:
    """Receive every alert the built-in rules raise: a security violation, an error rate over
    its threshold, repeated resource-limit breaches. The channel for a webhook, a pager, a chat.

    Every implementation sees every alert; one that raises is logged and the others still run.
    The built-in implementation writes the alert to the log at the level of its severity (block
    ``builtin-logs`` to silence it). Called on the thread of the call that raised the alert:
    hand slow work (a network request) to a queue of your own.

    :param alert: a :class:`~wasm_plugins.policy.Alert`: time, plugin, function, the rule
        (``reason``), message, ``severity`` and the figures behind it (``details``).
    """
