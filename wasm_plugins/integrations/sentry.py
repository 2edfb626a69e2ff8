"""Sentry: one exception event per call that failed, through the application's own client.

The library never calls ``sentry_sdk.init``: it reports only when the application has imported
``sentry_sdk`` and its client is active (``sentry_sdk.get_client().is_active()``), and it reports
a call once, when the policy gives up (not each failed attempt, nor a call a fallback answered).

The event is the typed error as an exception (its stack included), with:

- fingerprint ``["wasm-plugins", kind, plugin, function]``: one issue per kind of failure of one
  function, whatever the message says;
- level from the error's severity (low: info, medium: warning, high: error, critical: fatal);
- tags ``wasm_plugins.kind``, ``wasm_plugins.plugin``, ``wasm_plugins.function``,
  ``wasm_plugins.severity`` and ``wasm_plugins.call_id``;
- contexts ``wasm_plugins_error`` (the error's dict form) and ``wasm_plugins_call`` (call id,
  attempts, duration, and the caller's :func:`~wasm_plugins.call_context` fields).
"""

from __future__ import annotations

import sys

from wasm_plugins._correlation import caller_fields
from wasm_plugins.errors import Severity
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.integrations._names import SENTRY_PLUGIN_NAME
from wasm_plugins.policy import Report

__all__ = ["LEVELS", "PLUGIN_NAME", "SentryReporter"]

PLUGIN_NAME = SENTRY_PLUGIN_NAME
"""The name the reporter is registered (and blocked) under."""

LEVELS = {
    Severity.LOW: "info",
    Severity.MEDIUM: "warning",
    Severity.HIGH: "error",
    Severity.CRITICAL: "fatal",
}
"""Sentry's level of an event, by the error's severity."""


class SentryReporter:
    """Sends each call that ended in an error to the application's Sentry client."""

    hook_topics = frozenset({"call_finished.error"})
    """Only calls that ended in an error (a fallback's answer is not a failure of the call)."""

    @hookimpl(trylast=True)
    def wasm_plugins_report(self, record: Report) -> None:
        """Capture the call's last error."""
        error = record.error
        if error is None:
            return
        # The sentry_sdk module, when the application imported it and its client is active
        # (written out: an open breaker's every refusal comes here).
        sentry = sys.modules.get("sentry_sdk")
        if sentry is None or not sentry.get_client().is_active():
            return
        call_id = record.call_id
        with sentry.new_scope() as scope:
            scope.fingerprint = ["wasm-plugins", error.kind, record.plugin, record.function]
            scope.set_level(LEVELS.get(error.severity, "error"))
            scope.set_tag("wasm_plugins.kind", error.kind)
            scope.set_tag("wasm_plugins.plugin", record.plugin)
            scope.set_tag("wasm_plugins.function", record.function)
            scope.set_tag("wasm_plugins.severity", error.severity.value)
            scope.set_tag("wasm_plugins.call_id", call_id)
            scope.set_context("wasm_plugins_error", error.to_dict())
            scope.set_context(
                "wasm_plugins_call",
                {
                    "call_id": call_id,
                    "attempts": record.attempt,
                    "duration": record.duration,
                    **caller_fields(),
                },
            )
            sentry.capture_exception(error)
