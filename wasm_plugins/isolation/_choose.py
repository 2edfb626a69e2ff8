"""Which isolation a plugin runs under: in this process, or in a worker process.

A limit the engine cannot enforce in this process is enforced by a worker, never dropped: a
timeout on an engine that cannot stop a guest needs a worker (which the host kills at the
deadline). Fuel is metered by the engine (natively, or through a metered module), so fuel on an
engine that meters neither way is refused whatever the isolation. wasmer 1.1 enforces both
in-process through metering by instrumentation; wasmtime natively.
"""

from __future__ import annotations

from wasm_plugins.engine import Engine, get_engine
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.sandbox import Limits

__all__ = ["IN_PROCESS", "ISOLATIONS", "PROCESS", "choose_isolation", "limits_needing_worker"]

IN_PROCESS = "in-process"
PROCESS = "process"
ISOLATIONS = ("auto", IN_PROCESS, PROCESS)
"""What a host or manifest may ask for."""


def _engine(engine: Engine | str | None) -> Engine:
    return engine if not isinstance(engine, str | None) else get_engine(engine)


def limits_needing_worker(engine: Engine | str | None, limits: Limits | None) -> tuple[str, ...]:
    """The configured limits ``engine`` cannot enforce in this process but a worker can.

    Only ``timeout`` (on an engine that cannot stop a guest in-process).
    """
    limits = limits or Limits()
    features = _engine(engine).features
    return ("timeout",) if limits.timeout is not None and not features.timeout else ()


def choose_isolation(
    engine: Engine | str | None, limits: Limits | None, requested: str = "auto"
) -> str:
    """``"in-process"`` or ``"process"``: where a plugin with these limits runs on ``engine``.

    - ``"auto"``: in-process when the engine enforces every configured limit in-process, else
      ``"process"`` (a timeout on an engine that cannot stop a guest);
    - ``"in-process"``: in-process, or a ConfigurationError when a limit needs a worker;
    - ``"process"``: a worker process.

    :param engine: an engine or its name (``None`` / ``"auto"``: the default engine).
    :raises ConfigurationError: for an unknown ``requested``, for fuel on an engine that cannot
        meter it (no isolation can), and for ``"in-process"`` with a limit only a worker enforces.
    """
    if requested not in ISOLATIONS:
        raise ConfigurationError(
            field="isolation",
            message=(
                f"Invalid configuration: isolation - {requested!r} is not one of "
                + ", ".join(ISOLATIONS)
            ),
            suggestion="use isolation='auto', 'in-process' or 'process'",
        )
    resolved = _engine(engine)
    limits = limits or Limits()
    if limits.fuel is not None and not resolved.features.fuel:
        raise ConfigurationError(
            field="limits.fuel",
            message=(
                f"Invalid configuration: limits.fuel - the {resolved.name} engine cannot meter "
                "fuel, in this process or in a worker process"
            ),
            suggestion=(
                "use engine='wasmtime', which meters fuel, or drop the fuel limit and bound "
                "calls with limits.timeout (enforced by a worker process on "
                f"{resolved.name})"
            ),
        )
    needs_worker = limits_needing_worker(resolved, limits)
    if requested == PROCESS:
        return PROCESS
    if requested == IN_PROCESS:
        if needs_worker:
            limit = needs_worker[0]
            raise ConfigurationError(
                field=f"limits.{limit}",
                message=(
                    f"Invalid configuration: limits.{limit} - the {resolved.name} engine cannot "
                    f"enforce a {limit} inside this process"
                ),
                suggestion=(
                    f"use isolation='process' (or 'auto'), which enforces the {limit} by "
                    f"stopping a worker process, or engine='wasmtime'"
                ),
            )
        return IN_PROCESS
    return PROCESS if needs_worker else IN_PROCESS
