"""Plugin manifests: attrs records structured from TOML or a dict by one strict cattrs converter.

An invalid manifest is a ConfigurationError whose ``field`` is the path of the first bad field
(``limits.memory``, ``functions.word_count.idempotent``) and whose suggestion says how to fix it.
Unknown keys are refused at every level, so a misspelt setting cannot be silently ignored.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Union

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from wasm_plugins._units import MAX_COUNT, parse_duration, parse_size
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.sandbox import Limits

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable

    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    from importlib.abc import Traversable

    import tomli as tomllib

__all__ = [
    "CAPABILITIES",
    "CODECS",
    "FALLBACK_STRATEGIES",
    "ISOLATIONS",
    "NO_DEFAULT",
    "BreakerSpec",
    "FunctionSpec",
    "Manifest",
    "ModuleSpec",
    "PluginSource",
    "PolicySpec",
    "Traversable",
    "WasiPreopen",
    "WasiSpec",
    "manifest_converter",
]

CODECS = ("json", "raw")
ISOLATIONS = ("auto", "in-process", "process")
CAPABILITIES = ("log", "config", "kv", "clock", "random", "wasi", "http")
"""The capabilities the framework itself defines; host apps may add more with host functions."""


PluginSource = Union["Manifest", Mapping[str, Any], str, os.PathLike[str], Traversable]
"""What a plugin registration and ``PluginHost.load`` take: a manifest, a dict, or a TOML file."""


class _FieldError(ValueError):
    """A problem with one key of a table structured by hand (the key joins the field path)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()
"""Marks a function without a default value (``None`` is a valid default)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plugin_name(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _NAME.match(value):
        raise _FieldError(
            attribute.name,
            f"{value!r} is not a plugin name: use 1 to 64 lower-case letters, digits, '-', '_' "
            "or '.', starting with a letter or digit",
        )


GUEST_ABIS = ("auto", "wasm-plugins", "extism")
"""``auto`` detects the ABI from the module's imports; ``abi = 1`` means ``wasm-plugins``."""


def _abi_name(value: Any) -> Any:
    return "wasm-plugins" if value in (1, "1") else value


def _supported_abi(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in GUEST_ABIS:
        raise _FieldError(
            attribute.name,
            f'ABI {value!r} is not supported; use 1 (or "wasm-plugins"), "extism" or "auto"',
        )


def _at_least(minimum: float, *, strictly: bool = False) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is None:
            return
        if not math.isfinite(value):
            raise _FieldError(attribute.name, f"must be a finite number, got {value}")
        if value < minimum or (strictly and value == minimum):
            relation = "greater than" if strictly else "at least"
            raise _FieldError(attribute.name, f"must be {relation} {minimum}, got {value}")

    return check


def _at_most(maximum: float) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is not None and value > maximum:
            raise _FieldError(attribute.name, f"must be at most {maximum}, got {value}")

    return check


def _one_of(options: tuple[str, ...]) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and value not in options:
            raise _FieldError(attribute.name, f"{value!r} is not one of {', '.join(options)}")

    return check


def _inside_distribution(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise _FieldError(
            attribute.name,
            f"{value!r} leaves the manifest's folder: a resource is a path inside it, "
            "without '..' and not absolute",
        )


@attrs.frozen
class ModuleSpec:
    """Where the module comes from: exactly one of the fields."""

    resource: str | None = attrs.field(default=None, validator=_inside_distribution)
    """A file next to the manifest (inside the distribution that ships it, never outside)."""
    path: str | None = None
    """A file path; relative paths are resolved against the manifest's folder."""
    wat: str | None = None
    """WAT text, inline."""
    wasm: bytes | None = None
    """Module bytes (only from Python, not from TOML)."""

    def __attrs_post_init__(self) -> None:
        given = [name for name in ("resource", "path", "wat", "wasm") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of resource, path, wat (or wasm from Python); got "
                + (", ".join(given) or "none")
            )


@attrs.frozen
class FunctionSpec:
    """One plugin function the module offers."""

    description: str = ""
    idempotent: bool = False
    """Safe to retry after a timeout (the call may have had effects)."""
    simplified: str | None = None
    """A cheaper export that gives an approximate answer, for the simplified-processing fallback."""
    default: Any = attrs.field(default=NO_DEFAULT, repr=False)
    """A value to answer with when every attempt failed (the default-value fallback)."""

    @property
    def has_default(self) -> bool:
        """Whether the manifest gives a default value."""
        return self.default is not NO_DEFAULT


@attrs.frozen
class HealthCheckSpec:
    """A call a new version of the plugin must answer before it replaces the running one."""

    function: str
    """The plugin function to call."""
    input: Any = None
    """The input to call it with."""


@attrs.frozen
class WasiPreopen:
    """A host directory the guest sees under ``guest``."""

    host: str
    guest: str
    read_only: bool = True


@attrs.frozen
class WasiSpec:
    """WASI preview1 settings, used when the ``wasi`` capability is granted."""

    preopens: tuple[WasiPreopen, ...] = ()
    env: tuple[str, ...] = ()
    """Names of host environment variables the guest may see (an allow-list)."""
    args: tuple[str, ...] = ()
    capture_output: bool = True
    """Send the guest's stdout and stderr to the log (where the engine allows)."""


FALLBACK_STRATEGIES = ("cache", "simplified", "external", "default")
"""The built-in fallback strategies, in their default order."""


def _ratio(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise _FieldError(attribute.name, f"must be in (0, 1], got {value}")


@attrs.frozen
class BreakerSpec:
    """Circuit breaker thresholds (``[policy.breaker]``); see docs/error-handling.md."""

    failure_threshold: int = attrs.field(default=5, validator=_at_least(1))
    """Consecutive failures that open the breaker."""
    failure_ratio: float | None = attrs.field(default=None, validator=_ratio)
    """Also open when this share of the calls in ``window`` failed (None: consecutive only)."""
    window: float = attrs.field(default=60.0, validator=_at_least(0, strictly=True))
    """Seconds of calls the failure ratio looks at."""
    min_calls: int = attrs.field(default=10, validator=_at_least(1))
    """Calls the window must hold before the ratio counts."""
    recovery_time: float = attrs.field(default=30.0, validator=_at_least(0, strictly=True))
    """Seconds an open breaker waits before letting probes through."""
    half_open_probes: int = attrs.field(default=1, validator=_at_least(1))
    """Calls allowed at a time while half-open."""
    success_threshold: int = attrs.field(default=1, validator=_at_least(1))
    """Probe successes in a row that close the breaker."""


@attrs.frozen
class PolicySpec:
    """Per-plugin error policy (``[policy]``): retries, ceilings, fallbacks, breaker."""

    max_attempts: int = attrs.field(default=3, validator=_at_least(1))
    """Attempts per call, the first included."""
    deadline: float | None = attrs.field(default=None, validator=_at_least(0, strictly=True))
    """Seconds a call may take, retries and waits included (None: no overall deadline)."""
    backoff_base: float = attrs.field(default=0.05, validator=_at_least(0, strictly=True))
    """Longest wait before the first retry; it doubles for each retry (full jitter)."""
    backoff_cap: float = attrs.field(default=2.0, validator=_at_least(0, strictly=True))
    """Longest wait before any retry."""
    retry_budget_ratio: float = attrs.field(default=0.2, validator=_ratio)
    """Retries earned per call (a token bucket per plugin)."""
    retry_budget_maximum: float = attrs.field(default=10.0, validator=_at_least(1))
    """Retries the bucket holds at most."""
    max_memory: int | None = attrs.field(default=None, validator=_at_least(1))
    """The ceiling memory recovery may raise the memory limit to."""
    max_timeout: float | None = attrs.field(default=None, validator=_at_least(0, strictly=True))
    """The ceiling timeout recovery may extend the timeout to."""
    max_fuel: int | None = attrs.field(default=None, validator=[_at_least(1), _at_most(MAX_COUNT)])
    """The ceiling fuel recovery may raise fuel to."""
    growth: float = attrs.field(default=2.0, validator=_at_least(1, strictly=True))
    """Factor by which recovery raises a limit (memory, timeout, fuel) for the next attempt."""
    fallbacks: tuple[str, ...] = attrs.field(default=FALLBACK_STRATEGIES)
    """Built-in fallback strategies to try, in order: cache, simplified, external, default."""
    cache_ttl: float = attrs.field(default=300.0, validator=_at_least(0, strictly=True))
    """Seconds a cached result may answer for a failed call."""
    cache_entries: int = attrs.field(default=1000, validator=_at_least(1))
    """Results the cache keeps per plugin (least recently used go first)."""
    breaker: BreakerSpec = attrs.field(factory=BreakerSpec)

    @fallbacks.validator
    def _known(self, _: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for name in value:
            if name not in FALLBACK_STRATEGIES:
                raise _FieldError(
                    "fallbacks",
                    f"unknown strategy {name!r}; built-in strategies: "
                    + ", ".join(FALLBACK_STRATEGIES),
                )


def _simplified_elsewhere(_: Any, __: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    # The simplified fallback answers for a function whose breaker may be open: it must run
    # other code than the function it stands in for.
    for name, spec in value.items():
        if isinstance(spec, FunctionSpec) and spec.simplified == name:
            raise _FieldError(
                f"functions.{name}.simplified",
                "names the function itself; name a cheaper export of the plugin",
            )


@attrs.frozen
class Manifest:
    """Everything the host needs to know about one plugin."""

    name: str = attrs.field(validator=_plugin_name)
    module: ModuleSpec
    version: str = "0.0.0"
    description: str = ""
    abi: str = attrs.field(default="auto", converter=_abi_name, validator=_supported_abi)
    codec: str = attrs.field(default="json", validator=_one_of(CODECS))
    engine: str | None = None
    isolation: str = attrs.field(default="auto", validator=_one_of(ISOLATIONS))
    functions: dict[str, FunctionSpec] = attrs.field(factory=dict, validator=_simplified_elsewhere)
    limits: Limits = attrs.field(factory=Limits)
    capabilities: frozenset[str] = attrs.field(factory=frozenset)
    config: dict[str, Any] = attrs.field(factory=dict)
    wasi: WasiSpec = attrs.field(factory=WasiSpec)
    http: tuple[str, ...] = ()
    """Hosts the plugin asks to reach through the ``http`` capability (the trust policy decides)."""
    policy: PolicySpec = attrs.field(factory=PolicySpec)
    health_check: HealthCheckSpec | None = None
    """Probed on a reload or replace before the new version serves (none: no probe)."""
    base: Path | Traversable | None = attrs.field(default=None, eq=False, repr=False)
    """The folder resources and relative paths resolve against (not read from TOML)."""

    def module_source(self) -> bytes | str | Path:
        """The module as the Sandbox takes it: bytes, WAT text or a path."""
        spec = self.module
        if spec.wasm is not None:
            return spec.wasm
        if spec.wat is not None:
            return spec.wat
        relative = spec.resource or spec.path or ""
        if spec.path is not None and Path(relative).is_absolute():
            return Path(relative)
        if self.base is None:
            return Path(relative)
        target = self.base / relative
        if isinstance(target, Path):
            if spec.resource is not None and isinstance(self.base, Path):
                _confined(target, self.base, self.name)
            return target
        data = target.read_bytes()
        return data if data.startswith(b"\0asm") else data.decode("utf-8")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: Path | Traversable | None = None
    ) -> Manifest:
        """Structure a manifest from plain data (for example parsed TOML).

        :raises ConfigurationError: naming the first invalid field and how to fix it.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                field="manifest",
                message=(
                    "Invalid configuration: manifest - expected a table, got " + type(data).__name__
                ),
                suggestion="a manifest is a TOML document or a dict",
            )
        _check_plain(data)
        try:
            manifest = manifest_converter().structure(dict(data), cls)
        except cattrs.BaseValidationError as exc:
            raise _configuration_error(exc, data) from None
        except _FieldError as exc:
            raise _configuration_error(exc, data) from None
        return attrs.evolve(manifest, base=base)

    @classmethod
    def from_toml(cls, text: str, *, base: Path | Traversable | None = None) -> Manifest:
        """Parse TOML text.

        :raises ConfigurationError: for TOML that does not parse or an invalid field.
        """
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
            # ValueError: an integer too long to convert; RecursionError: nesting too deep.
            raise ConfigurationError(
                field="manifest",
                message=f"Invalid configuration: manifest - not valid TOML: {_shorter(exc)}",
                suggestion="fix the TOML syntax at the position shown",
            ) from None
        return cls.from_dict(data, base=base)

    @classmethod
    def from_file(cls, path: Path | Traversable | str) -> Manifest:
        """Read a TOML manifest; its folder becomes the base for resources and paths."""
        target: Path | Traversable = Path(path) if isinstance(path, str) else path
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                field="manifest",
                message=f"Invalid configuration: manifest - cannot read {target}: {exc}",
                suggestion="give the path of a readable plugin.toml",
            ) from None
        parent: Path | Traversable | None = (
            target.parent if isinstance(target, Path) else _traversable_parent(target)
        )
        return cls.from_toml(text, base=parent)


MAX_DEPTH = 32
"""Tables and lists nest at most this deep in a manifest."""
MAX_INTEGER = 2**64
"""Integers in a manifest lie strictly between minus and plus this."""


def _check_plain(data: Mapping[str, Any]) -> None:
    """Refuse what no valid manifest holds and what would fail later in untyped ways: nesting
    deeper than :data:`MAX_DEPTH`, integers beyond 64 bits, NaN and infinities, keys that are
    not strings. Iterative, so that no input can exhaust the stack."""
    pending: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while pending:
        value, path = pending.pop()
        if len(path) > MAX_DEPTH:
            raise _plain_error(path, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _plain_error(path, f"keys are strings, got {type(key).__name__}")
                pending.append((item, (*path, key)))
        elif isinstance(value, list | tuple):
            pending.extend((item, (*path, str(index))) for index, item in enumerate(value))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not -MAX_INTEGER < value < MAX_INTEGER:
            raise _plain_error(path, "integer out of range (more than 64 bits)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise _plain_error(path, f"{value} is not a finite number")


def _plain_error(path: tuple[str, ...], problem: str) -> ConfigurationError:
    where = ".".join(path[:MAX_DEPTH]) or "manifest"
    if len(path) > MAX_DEPTH:
        where += ".…"
    return ConfigurationError(
        field=where,
        message=f"Invalid configuration: {where} - {problem}",
        suggestion=_SUGGESTIONS.get(path[0] if path else "", "see docs/manifest.md"),
    )


def _shorter(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"


def _confined(target: Path, base: Path, plugin: str) -> None:
    """A resource reached through a symlink may not leave the manifest's folder either."""
    folder = base.resolve()
    resolved = target.resolve()
    if resolved != folder and folder not in resolved.parents:
        raise ConfigurationError(
            field="module.resource",
            plugin=plugin,
            message=(
                "Invalid configuration: module.resource - it resolves outside the manifest's folder"
            ),
            suggestion="ship the module inside the distribution, next to its manifest",
        )


def _traversable_parent(target: Traversable) -> Traversable | None:
    parent = getattr(target, "parent", None)
    return parent if parent is not None else None


# -- the converter ------------------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}


def _strict(expected: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(f"expected {_TYPE_NAMES[expected]}, got {value!r}")
        return value

    return structure


def _structure_limits(value: Any, _: Any) -> Limits:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {value!r}")
    known = {field.name for field in attrs.fields(Limits)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _FieldError(unknown[0], f"unknown limit; known limits: {', '.join(sorted(known))}")
    for key, item in value.items():
        try:
            Limits(**{key: item})
        except ConfigurationError as exc:
            raise _FieldError(key, str(exc.__cause__ or exc.message)) from None
        except TypeError as exc:
            raise _FieldError(key, str(exc)) from None
    return Limits(**value)


def _units(parse: Callable[[Any], Any], *, optional: bool) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        return parse(value)

    return structure


@functools.cache
def manifest_converter() -> cattrs.Converter:
    """The strict converter: no type coercion, no extra keys."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    for expected in (str, int, bool, float):
        converter.register_structure_hook(expected, _strict(expected))
    converter.register_structure_hook(Limits, _structure_limits)
    strings = _strict(str)
    lists = _strict(list)
    converter.register_structure_hook_func(
        lambda kind: kind == frozenset[str],
        lambda value, _: frozenset(strings(item, None) for item in lists(value, None)),
    )
    converter.register_structure_hook_func(
        lambda kind: kind == tuple[str, ...],
        lambda value, _: tuple(strings(item, None) for item in lists(value, None)),
    )
    converter.register_structure_hook_func(lambda kind: kind is Any, lambda value, _: value)
    # Sizes and durations are written with units ("16 MiB", "2 s") and parsed by field. Nested
    # records first: a record's generated hook looks its fields' hooks up when it is made.
    duration = override(struct_hook=_units(parse_duration, optional=False))
    optional_duration = override(struct_hook=_units(parse_duration, optional=True))
    optional_size = override(struct_hook=_units(parse_size, optional=True))
    converter.register_structure_hook(
        BreakerSpec,
        make_dict_structure_fn(
            BreakerSpec,
            converter,
            _cattrs_forbid_extra_keys=True,
            window=duration,
            recovery_time=duration,
        ),
    )
    converter.register_structure_hook(
        PolicySpec,
        make_dict_structure_fn(
            PolicySpec,
            converter,
            _cattrs_forbid_extra_keys=True,
            deadline=optional_duration,
            backoff_base=duration,
            backoff_cap=duration,
            max_timeout=optional_duration,
            cache_ttl=duration,
            max_memory=optional_size,
        ),
    )
    for record in (ModuleSpec, FunctionSpec, WasiPreopen, WasiSpec):
        converter.register_structure_hook(
            record, make_dict_structure_fn(record, converter, _cattrs_forbid_extra_keys=True)
        )
    converter.register_structure_hook(
        Manifest,
        make_dict_structure_fn(
            Manifest,
            converter,
            _cattrs_forbid_extra_keys=True,
            base=override(omit=True),
            abi=override(struct_hook=lambda value, _: _abi_name(value)),
        ),
    )
    return converter


_TYPE_NAMES[list] = "a list"

_SUGGESTIONS = {
    "name": "use a short lower-case name such as 'text-tools'",
    "module": "give [module] with exactly one of resource, path or wat",
    "codec": 'use codec = "json" or "raw"',
    "isolation": 'use isolation = "auto", "in-process" or "process"',
    "abi": 'use abi = "auto" (detected from the imports), 1 or "extism"',
    "limits": 'sizes take units ("16 MiB"), durations too ("2 s"); fuel is a whole number',
    "capabilities": 'list capability names, for example capabilities = ["log", "kv"]',
    "functions": "one [functions.<name>] table per function, with description and idempotent",
    "wasi": "[wasi] takes preopens, env, args and capture_output",
    "policy": "see docs/manifest.md for the policy settings",
}


def _path_of(location: str) -> str:
    """cattrs' ``$.functions['word_count'].idempotent`` as ``functions.word_count.idempotent``."""
    path = location.removeprefix("$").lstrip(".")
    path = re.sub(r"\[['\"]?([^'\"\]]+)['\"]?\]", r".\1", path)
    return path.lstrip(".")


def _first_problem(exc: BaseException, prefix: str = "") -> tuple[str, str]:
    """Walk a cattrs exception group to the first leaf: (field path, message)."""
    if isinstance(exc, cattrs.BaseValidationError):
        for child in exc.exceptions:
            note = _note_path(child)
            return _first_problem(child, _join(prefix, note))
    if isinstance(exc, _FieldError):
        return _join(prefix, exc.key), str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        extra = sorted(exc.extra_fields)
        return _join(prefix, extra[0]), f"unknown key {extra[0]!r}"
    if isinstance(exc, KeyError):
        return prefix, "required field missing"
    return prefix, str(exc) or type(exc).__name__


def _note_path(exc: BaseException) -> str:
    for note in getattr(exc, "__notes__", ()):
        match = re.match(r"Structuring class \S+ @ attribute (\S+)", str(note))
        if match:
            return match.group(1)
        match = re.match(r"Structuring (?:mapping|typing\.\S+|\S+) value @ key (.+)", str(note))
        if match:
            return match.group(1).strip("'\"")
        match = re.match(r"Structuring .+ @ index (\d+)", str(note))
        if match:
            return match.group(1)
    return ""


def _join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix and part else prefix or part


def _configuration_error(exc: Exception, data: Mapping[str, Any]) -> ConfigurationError:
    field, problem = _first_problem(exc)
    top = field.split(".", 1)[0]
    where = field or "manifest"
    plugin = data.get("name") if isinstance(data.get("name"), str) else None
    return ConfigurationError(
        field=where,
        message=f"Invalid configuration: {where} - {problem}",
        suggestion=_SUGGESTIONS.get(top, "see docs/manifest.md for every field"),
        plugin=plugin,
    )
