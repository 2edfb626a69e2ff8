"""Hypothesis strategies for the framework's data.

- :func:`errors` (every kind, or one), :func:`error_contexts`;
- :func:`json_values` / :func:`json_inputs` (values a JSON codec round-trips), :func:`inputs_like`
  (values shaped like an example);
- :func:`manifest_dicts` and :func:`manifests` (valid manifests, as dicts and as ``Manifest``);
- :func:`generated_modules` (small valid ABI-1 modules in WAT that do something with their input,
  with a model of their answers), :func:`wat_modules`, :func:`module_bytes`;
- :func:`mutations` and :func:`mutated_modules` (byte flips, truncations, reordered, dropped or
  duplicated sections, inserted bytes);
- :func:`faults` and :func:`fault_schedules` (what a fault injector injects, attempt by attempt).

Importing this module registers strategies for ``st.from_type``: every error class,
``ErrorContext``, ``Manifest``, ``Limits``, ``Fault``, ``GeneratedModule`` and ``Mutation``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import timezone
from typing import Any

from hypothesis import strategies as st

from wasm_plugins.engine import get_engine
from wasm_plugins.errors import (
    CallCancelled,
    CommunicationError,
    CompilationError,
    ConfigurationError,
    ContextualError,
    DeadlineExceeded,
    Diagnostic,
    ErrorContext,
    ExecutionEnvironment,
    ExecutionError,
    GuestFrame,
    HostIOError,
    InstanceError,
    ModuleError,
    NetworkError,
    PluginError,
    RecoveryPotential,
    ResourceLimitExceeded,
    SecurityViolation,
    Severity,
    ValidationIssue,
    error_classes,
)
from wasm_plugins.manifest import CAPABILITIES, FALLBACK_STRATEGIES, Manifest
from wasm_plugins.sandbox import Limits
from wasm_plugins.testing.faults import DEFAULT_FAULT_KINDS, FAULT_LABELS, Fault
from wasm_plugins.testing.modules import (
    JSON_OPERATIONS,
    OPERATIONS,
    GeneratedModule,
    GuestFunction,
    Mutation,
    constant_text,
)

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "error_contexts",
    "errors",
    "fault_schedules",
    "faults",
    "function_names",
    "generated_modules",
    "inputs_like",
    "json_inputs",
    "json_values",
    "limits",
    "manifest_dicts",
    "manifests",
    "module_bytes",
    "mutated_modules",
    "mutations",
    "objects_with",
    "plugin_names",
    "wat_modules",
]

_names = st.text(min_size=1, max_size=20)
_optional_names = st.none() | _names
_counts = st.integers(min_value=0, max_value=2**40)
_optional_counts = st.none() | _counts
_seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


def json_values(max_leaves: int = 10, keys: Iterable[str] = ()) -> st.SearchStrategy[Any]:
    """Values that survive a JSON round trip unchanged (no NaN, no infinities, no tuples).
    Object keys are any text, or often one of ``keys`` when given."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    names = sorted(set(keys))
    key_strategy = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(key_strategy, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


_frames = st.builds(
    GuestFrame,
    function=_optional_names,
    function_index=_optional_counts,
    module_offset=_optional_counts,
)

_common: dict[str, st.SearchStrategy[Any]] = {
    "message": st.text(max_size=60),
    "plugin": _optional_names,
    "function": _optional_names,
    "suggestion": st.none() | st.text(max_size=40),
    "severity": st.sampled_from(Severity),
    "recovery_potential": st.sampled_from(RecoveryPotential),
}

_specific: dict[type[PluginError], dict[str, st.SearchStrategy[Any]]] = {
    CompilationError: {
        "diagnostics": st.lists(
            st.builds(
                Diagnostic,
                message=st.text(max_size=30),
                level=st.sampled_from(["error", "warning"]),
                line=_optional_counts,
                column=_optional_counts,
                suggestion=st.none() | st.text(max_size=20),
            ),
            max_size=3,
        ).map(tuple)
    },
    ModuleError: {
        "validation_errors": st.lists(
            st.builds(ValidationIssue, message=st.text(max_size=30), offset=_optional_counts),
            max_size=3,
        ).map(tuple),
        "missing_export": _optional_names,
    },
    ExecutionError: {
        "trap": _names,
        "guest_stack": st.lists(_frames, max_size=4).map(tuple),
        "details": json_values(),
    },
    ResourceLimitExceeded: {
        "resource": st.sampled_from(["memory", "fuel", "input", "output", "concurrency"]),
        "used": _optional_counts,
        "limit": _optional_counts,
        "unit": st.sampled_from(["bytes", "units", "calls"]),
    },
    SecurityViolation: {
        "violation_type": _names,
        "capability": _optional_names,
        "resource": _optional_names,
    },
    HostIOError: {"operation": _names, "path": _optional_names, "code": _optional_names},
    NetworkError: {"operation": _names, "host": _optional_names, "code": _optional_names},
    ConfigurationError: {"field": _optional_names},
    InstanceError: {
        "state": _optional_names,
        "exit_signal": _optional_names,
        "exit_code": st.none() | st.integers(-255, 255),
    },
    CommunicationError: {"channel": _names, "direction": _names},
    DeadlineExceeded: {
        "operation": _names,
        "duration": st.none() | _seconds,
        "limit": st.none() | _seconds,
        "partial_result": json_values(),
    },
    CallCancelled: {"operation": _names},
}


def error_contexts(
    previous: st.SearchStrategy[tuple[PluginError, ...]] | None = None,
) -> st.SearchStrategy[ErrorContext]:
    """Contexts with every field filled; ``previous`` draws the earlier attempts' errors."""
    return st.builds(
        ErrorContext,
        execution_id=st.uuids().map(lambda u: u.hex),
        sandbox_id=_optional_names,
        plugin=_optional_names,
        function=_optional_names,
        timestamp=st.datetimes(timezones=st.just(timezone.utc)),
        environment=st.builds(
            ExecutionEnvironment,
            engine=st.none() | st.sampled_from(["wasmer", "wasmtime"]),
            isolation=st.none() | st.sampled_from(["in-process", "process"]),
            input_size=_optional_counts,
            attempt=st.integers(1, 20),
            extra=st.dictionaries(_names, json_values(max_leaves=3), max_size=2),
        ),
        guest_stack=st.lists(_frames, max_size=3).map(tuple),
        previous_errors=previous if previous is not None else st.just(()),
    )


def _plain_errors(
    cls: type[PluginError], context: st.SearchStrategy[ErrorContext | None]
) -> st.SearchStrategy[PluginError]:
    return st.builds(cls, context=context, **_common, **_specific[cls])


def errors(kind: str | None = None, *, with_context: bool = True) -> st.SearchStrategy[PluginError]:
    """Errors of one ``kind`` (or of every kind), with contexts holding earlier errors."""
    classes = [cls for cls in _specific if kind is None or cls.kind == kind]
    any_simple = st.one_of([_plain_errors(cls, st.none()) for cls in _specific])
    context: st.SearchStrategy[ErrorContext | None] = (
        st.none() | error_contexts(st.lists(any_simple, max_size=2).map(tuple))
        if with_context
        else st.none()
    )
    strategies = [_plain_errors(cls, context) for cls in classes]
    if kind in (None, ContextualError.kind):
        strategies.append(
            st.builds(
                ContextualError,
                error=any_simple,
                context=context,
                **_common,
            )
        )
    return st.one_of(strategies)


# -- inputs ---------------------------------------------------------------------------------------


def json_inputs(max_leaves: int = 10, keys: Iterable[str] = ()) -> st.SearchStrategy[Any]:
    """Call inputs for a JSON-codec plugin: any JSON value, objects and arrays included; object
    keys are often one of ``keys`` (the field names the function is known to read)."""
    return json_values(max_leaves, keys)


def objects_with(names: Iterable[str]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with some of the keys ``names`` (and only those), values mostly text."""
    values = st.text(max_size=40) | json_values(3)
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, values))


def inputs_like(example: Any, max_size: int = 5) -> st.SearchStrategy[Any]:
    """Values shaped like ``example``: an object with the same keys (each value like the
    example's), a list of elements like its first one, and a value of the same type for a
    scalar (``None`` gives ``None``)."""
    if isinstance(example, Mapping):
        return st.fixed_dictionaries(
            {key: inputs_like(value, max_size) for key, value in example.items()}
        )
    if isinstance(example, list | tuple):
        element = inputs_like(example[0], max_size) if example else json_values(4)
        return st.lists(element, max_size=max_size)
    if isinstance(example, bool):
        return st.booleans()
    if isinstance(example, int):
        return st.integers(min_value=-(2**63), max_value=2**63)
    if isinstance(example, float):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(example, str):
        return st.text(max_size=max(20, 2 * len(example)))
    if isinstance(example, bytes | bytearray):
        return st.binary(max_size=max(20, 2 * len(example)))
    return st.none()


# -- modules --------------------------------------------------------------------------------------


def function_names() -> st.SearchStrategy[str]:
    """Names a plugin function may have (not ``memory``, not starting with ``wp_``)."""
    return st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
        lambda name: not name.startswith("wp_") and name != "memory"
    )


def _functions(name: str, json_only: bool, constants: int) -> st.SearchStrategy[GuestFunction]:
    operations = [
        operation
        for operation in (JSON_OPERATIONS if json_only else OPERATIONS)
        if operation != "constant" or constants > 0
    ]

    def argument(operation: str) -> st.SearchStrategy[int]:
        if operation in ("count", "xor"):
            return st.integers(0, 255)
        if operation == "head":
            return st.integers(0, 64)
        if operation == "constant":
            return st.integers(0, constants - 1)
        return st.just(0)

    return st.sampled_from(operations).flatmap(
        lambda operation: argument(operation).map(
            lambda value: GuestFunction(name, operation, value)
        )
    )


@st.composite
def _generated(draw: st.DrawFn, json_only: bool, max_functions: int) -> GeneratedModule:
    texts = st.lists(json_values(4).map(constant_text), max_size=3)
    constants = tuple(draw(texts.filter(lambda items: sum(map(len, items)) <= 600)))
    names = draw(st.lists(function_names(), min_size=1, max_size=max_functions, unique=True))
    functions = tuple(draw(_functions(name, json_only, len(constants))) for name in names)
    return GeneratedModule(functions, constants, draw(st.integers(1, 3)))


def generated_modules(
    *, json_only: bool = False, max_functions: int = 4
) -> st.SearchStrategy[GeneratedModule]:
    """Small valid ABI-1 modules: 1 to ``max_functions`` functions, each an operation on its
    input (``GeneratedModule.expected`` says what it returns). ``json_only`` keeps the
    operations that answer JSON to JSON, for the default codec."""
    return _generated(json_only, max_functions)


def wat_modules(*, json_only: bool = False) -> st.SearchStrategy[str]:
    """The WAT text of :func:`generated_modules`."""
    return generated_modules(json_only=json_only).map(lambda module: module.wat)


@functools.lru_cache(maxsize=256)
def _compile(wat: str) -> bytes:

    return get_engine("wasmtime").wat_to_wasm(wat)


def module_bytes(*, json_only: bool = False) -> st.SearchStrategy[bytes]:
    """The binary form of :func:`generated_modules` (compiled with wasmtime's WAT parser)."""
    return wat_modules(json_only=json_only).map(_compile)


def mutations(max_insert: int = 16) -> st.SearchStrategy[Mutation]:
    """One :class:`~wasm_plugins.testing.modules.Mutation` of module bytes."""
    positions = st.integers(0, 2**16)
    return st.one_of(
        st.builds(Mutation, kind=st.just("flip"), position=positions, value=st.integers(0, 255)),
        st.builds(Mutation, kind=st.just("truncate"), position=positions),
        st.builds(
            Mutation,
            kind=st.just("reorder"),
            order=st.lists(st.integers(0, 15), min_size=1, max_size=16).map(tuple),
        ),
        st.builds(Mutation, kind=st.just("drop"), position=st.integers(0, 15)),
        st.builds(Mutation, kind=st.just("duplicate"), position=st.integers(0, 15)),
        st.builds(
            Mutation,
            kind=st.just("insert"),
            position=positions,
            data=st.binary(min_size=1, max_size=max_insert),
        ),
    )


def mutated_modules(
    base: bytes | st.SearchStrategy[bytes] | None = None, *, max_mutations: int = 3
) -> st.SearchStrategy[bytes]:
    """Module bytes after 1 to ``max_mutations`` mutations of ``base`` (bytes, a strategy of
    bytes, or by default :func:`module_bytes`). Most are invalid; some still load, and a flipped
    byte can turn any loop endless: run what loads only under a timeout and fuel."""
    if base is None:
        bases: st.SearchStrategy[bytes] = module_bytes()
    elif isinstance(base, bytes | bytearray):
        bases = st.just(bytes(base))
    else:
        bases = base

    def apply(wasm: bytes, changes: list[Mutation]) -> bytes:
        for change in changes:
            wasm = change.apply(wasm)
        return wasm

    return st.builds(apply, bases, st.lists(mutations(), min_size=1, max_size=max_mutations))


# -- manifests ------------------------------------------------------------------------------------


def plugin_names() -> st.SearchStrategy[str]:
    """Valid plugin names."""
    return st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,30}", fullmatch=True)


def _sizes(low_mib: int, high_mib: int) -> st.SearchStrategy[Any]:
    mebibytes = st.integers(low_mib, high_mib)
    return st.one_of(
        mebibytes.map(lambda n: f"{n} MiB"),
        mebibytes.map(lambda n: n * 2**20),
        mebibytes.map(lambda n: f"{n * 1024} KiB"),
    )


def _durations(low_ms: int, high_ms: int) -> st.SearchStrategy[Any]:
    milliseconds = st.integers(low_ms, high_ms)
    return st.one_of(
        milliseconds.map(lambda n: f"{n} ms"),
        milliseconds.map(lambda n: n / 1000),
        milliseconds.map(lambda n: f"{n / 1000} s"),
    )


def _optional(
    values: Mapping[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict(values))


def _limits_table() -> st.SearchStrategy[dict[str, Any]]:
    return _optional(
        {
            "memory": _sizes(1, 64),
            "fuel": st.integers(10_000, 10**9),
            "timeout": _durations(10, 5000),
            "max_input": _sizes(1, 8),
            "max_output": _sizes(1, 8),
        }
    )


def limits() -> st.SearchStrategy[Limits]:
    """Limits as a manifest may set them."""
    return _limits_table().map(lambda table: Limits(**table))


def _policy_table() -> st.SearchStrategy[dict[str, Any]]:
    breaker = _optional(
        {
            "failure_threshold": st.integers(1, 20),
            "failure_ratio": st.sampled_from([0.25, 0.5, 0.75, 1.0]),
            "window": _durations(1000, 120_000),
            "min_calls": st.integers(1, 50),
            "recovery_time": _durations(1000, 120_000),
            "half_open_probes": st.integers(1, 5),
            "success_threshold": st.integers(1, 5),
        }
    )
    return _optional(
        {
            "max_attempts": st.integers(1, 6),
            "deadline": _durations(100, 60_000),
            "backoff_base": _durations(1, 500),
            "backoff_cap": _durations(500, 10_000),
            "retry_budget_ratio": st.sampled_from([0.1, 0.2, 0.5, 1.0]),
            "retry_budget_maximum": st.integers(1, 100),
            "max_memory": _sizes(64, 256),
            "max_timeout": _durations(5000, 30_000),
            "max_fuel": st.integers(10**9, 10**10),
            "growth": st.sampled_from([1.5, 2.0, 4.0]),
            "fallbacks": st.lists(st.sampled_from(FALLBACK_STRATEGIES), unique=True),
            "cache_ttl": _durations(1000, 600_000),
            "cache_entries": st.integers(1, 10_000),
            "breaker": breaker,
        }
    )


@st.composite
def _manifest_dicts(draw: st.DrawFn, module: GeneratedModule | None) -> dict[str, Any]:
    chosen = module if module is not None else draw(generated_modules(json_only=True))
    codec = "json" if chosen.json_safe else "raw"
    names = list(chosen.names)
    listed = draw(st.lists(st.sampled_from(names), unique=True))
    functions: dict[str, Any] = {}
    for name in listed:
        fields: dict[str, st.SearchStrategy[Any]] = {
            "description": st.text(max_size=40),
            "idempotent": st.booleans(),
            "default": json_values(4),
        }
        # The simplified stand-in is another export than the function itself.
        others = [other for other in names if other != name]
        if others:
            fields["simplified"] = st.sampled_from(others)
        functions[name] = draw(_optional(fields))
    manifest: dict[str, Any] = {
        "name": draw(plugin_names()),
        "module": {"wat": chosen.wat},
        "codec": codec,
    }
    manifest.update(
        draw(
            _optional(
                {
                    "version": st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True),
                    "description": st.text(max_size=60),
                    "abi": st.just(1),
                    "isolation": st.sampled_from(["auto", "in-process", "process"]),
                    "capabilities": st.lists(
                        st.sampled_from([c for c in CAPABILITIES if c != "wasi"]), unique=True
                    ),
                    "config": st.dictionaries(
                        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
                        json_values(3),
                        max_size=3,
                    ),
                }
            )
        )
    )
    if functions:
        manifest["functions"] = functions
    table = draw(_limits_table())
    if table:
        manifest["limits"] = table
    policy = draw(_policy_table())
    if policy:
        manifest["policy"] = policy
    return manifest


def manifest_dicts(module: GeneratedModule | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Valid manifests as plain data (what TOML parses into): a generated module in WAT (or
    ``module``), some of its functions described, limits and policy settings with units."""
    return _manifest_dicts(module)


def manifests(module: GeneratedModule | None = None) -> st.SearchStrategy[Manifest]:
    """Valid :class:`~wasm_plugins.manifest.Manifest` objects (from :func:`manifest_dicts`)."""
    return manifest_dicts(module).map(Manifest.from_dict)


# -- faults ---------------------------------------------------------------------------------------

_RESOURCES = ("memory", "fuel", "concurrency", "input", "output")


def faults(
    kinds: Iterable[str] | None = None, *, max_latency: float = 5.0
) -> st.SearchStrategy[Fault]:
    """Faults of the given labels (error kinds, ``latency``, ``value``, ``exception``; default
    :data:`DEFAULT_FAULT_KINDS`); fields vary where the policy treats them differently (the
    resource of a limit, the trap of a runtime error)."""
    labels = list(kinds) if kinds is not None else list(DEFAULT_FAULT_KINDS)
    unknown = sorted(set(labels) - set(FAULT_LABELS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULT_LABELS)}")
    if not labels:
        return st.nothing()
    seconds = st.sampled_from([0.001, 0.05, 0.5, 1.0, max_latency])

    def one(label: str) -> st.SearchStrategy[Fault]:
        if label == "latency":
            return seconds.map(Fault.delay)
        if label == "value":
            return json_values(3).map(Fault.wrong_value)
        if label == "exception":
            return st.just(Fault.exception())
        if label == "resource_limit_exceeded":
            return st.sampled_from(_RESOURCES).map(lambda r: Fault.error(label, resource=r))
        if label == "runtime":
            traps = st.sampled_from(["unreachable", "out_of_bounds", "guest_error"])
            return traps.map(lambda trap: Fault.error(label, trap=trap))
        if label == "communication":
            channels = st.sampled_from(["guest-output", "guest-memory", "input"])
            return channels.map(lambda channel: Fault.error(label, channel=channel))
        return st.just(Fault.error(label))

    return st.sampled_from(labels).flatmap(one)


def fault_schedules(
    kinds: Iterable[str] | None = None, *, rate: float = 0.3, max_attempts: int = 6
) -> st.SearchStrategy[tuple[Fault | None, ...]]:
    """What to inject into the attempts of one call, attempt by attempt: about ``rate`` of them
    get a fault (``None`` leaves an attempt alone). Shrinks towards fewer faults."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {rate}")
    threshold = round(1000 * (1.0 - rate))
    chosen = faults(kinds)
    one = (
        st.integers(0, 999).flatmap(lambda n: chosen if n >= threshold else st.none())
        if rate > 0
        else st.none()
    )
    return st.lists(one, max_size=max_attempts).map(tuple)


# -- st.from_type ---------------------------------------------------------------------------------


def _register() -> None:
    st.register_type_strategy(PluginError, errors())
    for cls in error_classes():
        st.register_type_strategy(cls, errors(cls.kind))
    st.register_type_strategy(ErrorContext, error_contexts())
    st.register_type_strategy(Manifest, manifests())
    st.register_type_strategy(Limits, limits())
    st.register_type_strategy(Fault, faults(FAULT_LABELS))
    st.register_type_strategy(GeneratedModule, generated_modules())
    st.register_type_strategy(Mutation, mutations())


_register()
