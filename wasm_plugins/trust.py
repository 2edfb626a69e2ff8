"""The trust policy: what the host grants each plugin, whatever its manifest asks for.

A plugin's manifest ships with the plugin, so it is a request. The host's trust policy decides,
per plugin, per distribution and by default: the capabilities granted, the WASI directories a
plugin may open (host paths, read-only unless stated), the environment variables it may see, the
hosts an ``http`` capability may reach, caps on every limit and on every recovery ceiling, an
isolation floor, and optionally the SHA-256 digest the module must have (pinning). A plugin
asking for more than its grant is refused, naming the policy lines that would grant it, unless
the policy's mode is ``clamp``: then it runs with its grant only.

The policy is a TOML file (:meth:`TrustPolicy.from_file`), a Python object, or the answer of a
``wasm_plugins_grant`` hookimpl. ``TrustPolicy()`` is the default policy: the ``log``
capability, no directory, no variable, no host, and caps of 64 MiB of memory, 16 MiB of input and
of output, and a bounded table; no fuel and no timeout of its own.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from wasm_plugins._escape import escape
from wasm_plugins._units import MiB, format_duration, format_size
from wasm_plugins.errors import ConfigurationError, SecurityViolation
from wasm_plugins.manifest import Manifest, WasiPreopen
from wasm_plugins.sandbox import HostCall, HostFunction, Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_GRANT",
    "MODES",
    "TRUST_ENVIRONMENT_VARIABLE",
    "Excess",
    "Grant",
    "GrantedDirectory",
    "Review",
    "TrustPolicy",
    "module_digest",
    "parse_preopen_flag",
    "refusing_at_call",
]

MODES = ("refuse", "clamp")
TRUST_ENVIRONMENT_VARIABLE = "WASM_PLUGINS_TRUST"
ISOLATION_FLOORS = ("auto", "in-process", "process")

CEILINGS = {"memory": "max_memory", "timeout": "max_timeout", "fuel": "max_fuel"}
"""Each limit that recovery may raise, and the manifest's ``[policy]`` field of its ceiling."""

DEFAULT_TABLE_CAP = 100_000
"""Elements of a table, when the limits know tables."""


def _limit_names() -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(Limits))


def _parse_limit(name: str, value: Any) -> Any:
    """A cap in the unit of its limit (bytes, seconds, a count), parsed as a manifest's limit."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    converted = getattr(Limits(**{name: value}), name)
    if converted is None:
        raise ValueError("a cap cannot be empty")
    return converted


def _show_limit(name: str, value: Any) -> str:
    if value is None:
        return "unlimited"
    if name in ("timeout",):
        return format_duration(value)
    if name in ("memory", "max_input", "max_output", "module_size"):
        return format_size(value)
    return str(value)


def _toml_limit(name: str, value: Any) -> str:
    if name == "timeout":
        milliseconds = value * 1000
        if milliseconds == int(milliseconds) and milliseconds % 1000:
            return f'"{int(milliseconds)} ms"'
        return f'"{value:g} s"'
    if name in ("memory", "max_input", "max_output", "module_size"):
        for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
            if value % factor == 0:
                return f'"{value // factor} {unit}"'
        return str(value)
    return str(value)


def _normalized_distribution(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``Foo_Bar`` is ``foo-bar``); a version
    after a space (as discovery records ``name version``) is dropped."""
    return re.sub(r"[-_.]+", "-", name.split(" ", 1)[0]).lower()


@attrs.frozen
class GrantedDirectory:
    """A host directory a plugin may preopen at ``guest``; read-only unless stated."""

    host: str
    """An absolute host path (relative paths in a policy file resolve against its folder)."""
    guest: str | None
    """Where the guest sees it; ``None``: wherever the manifest asks (the CLI's ``--preopen``)."""
    read_only: bool = True


@attrs.frozen
class Grant:
    """What one policy entry grants. ``None`` (and an absent limit) means the entry says
    nothing, so the entry below it decides: a plugin's entry over its distribution's over the
    default."""

    capabilities: frozenset[str] | None = None
    preopens: tuple[GrantedDirectory, ...] | None = None
    env: frozenset[str] | None = None
    http: frozenset[str] | None = None
    """Hosts an ``http`` capability may reach."""
    limits: Mapping[str, Any] = attrs.field(factory=dict)
    """Caps by limit name (bytes, seconds, counts); also the value of a limit the manifest omits."""
    ceilings: Mapping[str, Any] = attrs.field(factory=dict)
    """Caps on the recovery ceilings, by limit name (``memory``, ``timeout``, ``fuel``);
    without one, a limit's cap caps its ceiling too."""
    isolation: str | None = None
    """``process``: the plugin always runs in a worker process, whatever its manifest says."""
    sha256: str | None = None
    """The hex SHA-256 digest the module must have."""
    mode: str | None = None
    """``refuse`` or ``clamp`` for this entry."""

    def over(self, base: Grant) -> Grant:
        """This entry with what it does not say taken from ``base``."""
        return Grant(
            capabilities=_first(self.capabilities, base.capabilities),
            preopens=_first(self.preopens, base.preopens),
            env=_first(self.env, base.env),
            http=_first(self.http, base.http),
            limits={**base.limits, **self.limits},
            ceilings={**base.ceilings, **self.ceilings},
            isolation=_first(self.isolation, base.isolation),
            sha256=_first(self.sha256, base.sha256),
            mode=_first(self.mode, base.mode),
        )

    def adding(
        self,
        capabilities: Iterable[str] = (),
        preopens: Iterable[GrantedDirectory] = (),
        env: Iterable[str] = (),
        http: Iterable[str] = (),
    ) -> Grant:
        """This grant with more capabilities, directories, variables or hosts."""
        return attrs.evolve(
            self,
            capabilities=(self.capabilities or frozenset()) | frozenset(capabilities),
            preopens=(*(self.preopens or ()), *preopens),
            env=(self.env or frozenset()) | frozenset(env),
            http=(self.http or frozenset()) | frozenset(http),
        )


def _first(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value


def _default_limits() -> dict[str, Any]:
    caps: dict[str, Any] = {"memory": 64 * MiB, "max_input": 16 * MiB, "max_output": 16 * MiB}
    if "table" in _limit_names():
        caps["table"] = DEFAULT_TABLE_CAP
    return caps


DEFAULT_GRANT = Grant(
    capabilities=frozenset({"log"}),
    preopens=(),
    env=frozenset(),
    http=frozenset(),
    limits=_default_limits(),
    isolation="auto",
    mode="refuse",
)
"""The default entry: ``log`` only, no directory, variable or host, memory, input, output (and
table) capped; no fuel and no timeout of its own."""


@attrs.frozen
class Excess:
    """One thing a manifest asks for beyond its grant."""

    field: str
    """The manifest's field: ``capabilities``, ``wasi.preopens``, ``wasi.env``, ``http``,
    ``limits.memory``, ``policy.max_memory``, ``module``."""
    requested: str
    granted: str

    def __str__(self) -> str:
        return f"{self.field}: asks for {self.requested}, granted {self.granted}"


@attrs.frozen
class Review:
    """A manifest next to what the policy grants it."""

    requested: Manifest
    granted: Manifest
    """The manifest the plugin runs with: within its grant (clamped, in ``clamp`` mode)."""
    grant: Grant
    """The effective entry (plugin over distribution over default, or the hook's answer)."""
    excess: tuple[Excess, ...]
    mode: str
    pinned: bool | None = None
    """Whether the module matches the policy's digest (``None``: the policy pins none)."""
    digest: str | None = None
    distribution: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the plugin may run: the module matches its pin, and it asks for nothing more
        than its grant or the mode is ``clamp``."""
        if self.pinned is False:
            return False
        return not self.excess or self.mode == "clamp"

    def entry(self) -> str:
        """The policy entry that would grant everything the manifest asks, in TOML, for a person
        to review before adding it to the policy file."""
        manifest = self.requested
        lines = [f"[plugins.{_toml_string(manifest.name)}]"]
        capabilities = sorted(manifest.capabilities | (self.grant.capabilities or frozenset()))
        lines.append(f"capabilities = [{', '.join(_toml_string(c) for c in capabilities)}]")
        if "wasi" in manifest.capabilities:
            if manifest.wasi.preopens:
                items = ", ".join(
                    "{ host = "
                    + _toml_string(str(Path(p.host).resolve()))
                    + f", guest = {_toml_string(p.guest)}, read_only = "
                    + ("true" if p.read_only else "false")
                    + " }"
                    for p in manifest.wasi.preopens
                )
                lines.append(f"preopens = [{items}]")
            if manifest.wasi.env:
                lines.append(f"env = [{', '.join(_toml_string(v) for v in manifest.wasi.env)}]")
        if manifest.http:
            lines.append(f"http = [{', '.join(_toml_string(h) for h in manifest.http)}]")
        limits = []
        for excess in self.excess:
            if excess.field.startswith("limits."):
                name = excess.field.removeprefix("limits.")
                value = getattr(manifest.limits, name)
                if value is not None:
                    limits.append(f"{name} = {_toml_limit(name, value)}")
        if limits:
            lines.append(f"limits = {{ {', '.join(limits)} }}")
        ceilings = []
        for limit, field in CEILINGS.items():
            value = getattr(manifest.policy, field)
            if any(e.field == f"policy.{field}" for e in self.excess) and value is not None:
                ceilings.append(f"{limit} = {_toml_limit(limit, value)}")
        if ceilings:
            lines.append(f"ceilings = {{ {', '.join(ceilings)} }}")
        if self.digest is not None:
            lines.append(f'sha256 = "{self.digest}"')
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The decision as plain data (for ``inspect --json``): what was asked, what is
        granted, every excess, the mode, the pin and the entry that would grant the request."""
        return {
            "allowed": self.allowed,
            "mode": self.mode,
            "pinned": self.pinned,
            "digest": self.digest,
            "requested": _summary(self.requested),
            "granted": _summary(self.granted),
            "excess": [
                {"field": e.field, "requested": e.requested, "granted": e.granted}
                for e in self.excess
            ],
            "entry": self.entry(),
        }

    def refusal(self) -> SecurityViolation:
        """The error that says why the plugin may not run and what would let it."""
        name = self.requested.name
        if self.pinned is False:
            return SecurityViolation(
                violation_type="module_not_pinned",
                resource="module",
                plugin=name,
                message=(
                    f"Security violation: plugin {escape(name)!r} - its module's SHA-256 is "
                    f"{self.digest}, the trust policy pins {self.grant.sha256}"
                ),
                suggestion=(
                    "the module changed since it was pinned: review it, then set "
                    f'sha256 = "{self.digest}" in its entry of the trust policy'
                ),
            )
        capability = next(
            (e.requested.strip("'") for e in self.excess if e.field == "capabilities"), None
        )
        return SecurityViolation(
            violation_type="not_granted",
            capability=capability,
            resource=", ".join(e.field for e in self.excess),
            plugin=name,
            message=(
                f"Security violation: plugin {escape(name)!r} asks for more than the trust "
                "policy grants - " + "; ".join(escape(e) for e in self.excess)
            ),
            suggestion=(
                "to grant it, add this entry to the trust policy (after reviewing it), or set "
                'mode = "clamp" to run it with its grant only:\n' + escape_entry(self.entry())
            ),
        )


def _summary(manifest: Manifest) -> dict[str, Any]:
    wasi = "wasi" in manifest.capabilities
    return {
        "capabilities": sorted(manifest.capabilities),
        "preopens": [
            f"{p.guest} = {p.host} ({'read-only' if p.read_only else 'read-write'})"
            for p in manifest.wasi.preopens
        ]
        if wasi
        else [],
        "env": list(manifest.wasi.env) if wasi else [],
        "http": list(manifest.http),
        "limits": {
            name: _show_limit(name, getattr(manifest.limits, name)) for name in _limit_names()
        },
        "ceilings": {
            field: _show_limit(limit, getattr(manifest.policy, field))
            if getattr(manifest.policy, field) is not None
            else "the limit"
            for limit, field in CEILINGS.items()
        },
        "isolation": manifest.isolation,
    }


def parse_preopen_flag(text: str) -> GrantedDirectory:
    """``DIR`` (read-only) or ``DIR:rw`` (read-write), as the CLI's ``--preopen`` takes it: the
    directory is granted wherever the manifest asks the guest to see it."""
    folder, _, mode = text.rpartition(":") if text.endswith((":rw", ":ro")) else (text, "", "")
    if not folder:
        raise ValueError(f"expected DIR or DIR:rw, got {text!r}")
    return GrantedDirectory(_resolved(folder, None), None, read_only=mode != "rw")


def escape_entry(text: str) -> str:
    """A policy entry built from a manifest's strings, safe to print line by line."""
    return "\n".join(escape(line) for line in text.split("\n"))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and controls escaped."""
    out = []
    for character in text:
        if character in ('"', "\\"):
            out.append("\\" + character)
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            out.append(f"\\u{ord(character):04x}")
        else:
            out.append(character)
    return '"' + "".join(out) + '"'


def module_digest(manifest: Manifest) -> str:
    """The hex SHA-256 digest of the plugin's module as shipped (the file's bytes, the WAT text
    as UTF-8, or the bytes given)."""
    source = manifest.module_source()
    if isinstance(source, Path):
        data = source.read_bytes()
    elif isinstance(source, str):
        data = source.encode("utf-8")
    else:
        data = bytes(source)
    return hashlib.sha256(data).hexdigest()


def refusing_at_call(
    functions: Iterable[HostFunction], revoked: frozenset[str]
) -> tuple[HostFunction, ...]:
    """The host functions with those of ``revoked`` capabilities replaced by functions that
    refuse when called: a clamped plugin still loads, and learns at run time, through a
    security violation, what its grant left out."""
    return tuple(
        _refusing(function)
        if function.capability is not None and function.capability in revoked
        else function
        for function in functions
    )


def _refusing(function: HostFunction) -> HostFunction:
    capability = function.capability

    def refuse(call: HostCall, *_: Any) -> None:
        raise SecurityViolation(
            violation_type="capability_denied",
            capability=capability,
            resource=function.qualified_name,
            plugin=call.plugin,
            message=(
                f"Security violation: capability {capability!r} denied - the trust policy runs "
                f"this plugin with its grant only, which leaves out {function.qualified_name}"
            ),
            suggestion=f"grant {capability!r} to the plugin in the trust policy",
        )

    return attrs.evolve(function, capability=None, implementation=refuse)


class TrustPolicy:
    """Grants per plugin, per distribution and by default, and whether to refuse or clamp.

    :param default: the entry every plugin starts from (``None``: :data:`DEFAULT_GRANT`); what
        it does not say, :data:`DEFAULT_GRANT` says.
    :param plugins: entries by plugin name, over their distribution's.
    :param distributions: entries by distribution name (as installed, e.g.
        ``wasm-plugins-hostile-pack``), over the default.
    :param mode: ``refuse`` (the default) or ``clamp``, for entries that do not say.
    """

    def __init__(
        self,
        default: Grant | None = None,
        *,
        plugins: Mapping[str, Grant] | None = None,
        distributions: Mapping[str, Grant] | None = None,
        mode: str = "refuse",
        source: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise _policy_error("mode", f"{mode!r} is not one of {', '.join(MODES)}", source)
        self.default = (default or Grant()).over(attrs.evolve(DEFAULT_GRANT, mode=mode))
        self.plugins = dict(plugins or {})
        self.distributions = {
            _normalized_distribution(name): grant for name, grant in (distributions or {}).items()
        }
        self.mode = mode
        self.source = source
        """Where the policy was read from (a file), for messages."""

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"<TrustPolicy{where}: {len(self.plugins)} plugins, mode={self.mode!r}>"

    # -- sources ------------------------------------------------------------------------------

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] | None = None) -> TrustPolicy:
        """The policy file named by ``WASM_PLUGINS_TRUST``, else the default policy."""
        path = (environment if environment is not None else os.environ).get(
            TRUST_ENVIRONMENT_VARIABLE, ""
        )
        return cls.from_file(path) if path.strip() else cls()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        """Read a TOML policy; relative host paths in it resolve against its folder.

        :raises ConfigurationError: naming the file and the field that is wrong.
        """
        target = Path(path)
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _policy_error("trust", f"cannot read {target}: {exc}", str(target)) from None
        return cls.from_toml(text, base=target.resolve().parent, source=str(target))

    @classmethod
    def from_toml(
        cls, text: str, *, base: Path | None = None, source: str | None = None
    ) -> TrustPolicy:
        """Parse a TOML policy (see the module's documentation for its shape)."""
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
            raise _policy_error("trust", f"not valid TOML: {exc}", source) from None
        return cls.from_dict(data, base=base, source=source)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: Path | None = None, source: str | None = None
    ) -> TrustPolicy:
        """A policy from plain data shaped like the TOML file."""
        known = {"mode", "default", "plugins", "distributions"}
        _no_unknown(data, known, "", source)
        mode = data.get("mode", "refuse")
        if not isinstance(mode, str):
            raise _policy_error("mode", f"expected a string, got {mode!r}", source)
        default = _grant(data.get("default", {}), "default", base, source)
        tables: dict[str, dict[str, Grant]] = {}
        for section in ("plugins", "distributions"):
            entries = data.get(section, {})
            if not isinstance(entries, Mapping):
                raise _policy_error(section, "expected a table of entries", source)
            tables[section] = {
                str(name): _grant(entry, f"{section}.{name}", base, source)
                for name, entry in entries.items()
            }
        return cls(
            default,
            plugins=tables["plugins"],
            distributions=tables["distributions"],
            mode=mode,
            source=source,
        )

    def granting(
        self,
        plugin: str,
        *,
        capabilities: Iterable[str] = (),
        preopens: Iterable[GrantedDirectory] = (),
        env: Iterable[str] = (),
        http: Iterable[str] = (),
    ) -> TrustPolicy:
        """A copy of this policy that grants ``plugin`` more (what the CLI's ``--allow``,
        ``--preopen`` and ``--allow-http`` add)."""
        current = self.plugins.get(plugin, Grant())
        base = current.over(self._below_plugin(plugin, None))
        added = attrs.evolve(
            current,
            capabilities=base.capabilities,
            preopens=base.preopens,
            env=base.env,
            http=base.http,
        ).adding(capabilities, preopens, env, http)
        policy = TrustPolicy.__new__(TrustPolicy)
        policy.__dict__.update(self.__dict__)
        policy.plugins = {**self.plugins, plugin: added}
        return policy

    # -- decisions ----------------------------------------------------------------------------

    def _below_plugin(self, plugin: str, distribution: str | None) -> Grant:
        if distribution is not None:
            entry = self.distributions.get(_normalized_distribution(distribution))
            if entry is not None:
                return entry.over(self.default)
        return self.default

    def grant_for(self, plugin: str, distribution: str | None = None) -> Grant:
        """The effective entry of a plugin: its own over its distribution's over the default."""
        below = self._below_plugin(plugin, distribution)
        entry = self.plugins.get(plugin)
        return below if entry is None else entry.over(below)

    def review(
        self,
        manifest: Manifest,
        distribution: str | None = None,
        digest: str | None = None,
        grant: Grant | None = None,
    ) -> Review:
        """Compare a manifest with its grant (``grant``: a hook's answer, over the default)."""
        effective = (
            grant.over(self.default)
            if grant is not None
            else self.grant_for(manifest.name, distribution)
        )
        if effective.sha256 is not None and digest is None:
            digest = module_digest(manifest)
        pinned = None if effective.sha256 is None else digest == effective.sha256.lower()
        granted, excess = _apply(manifest, effective)
        return Review(
            requested=manifest,
            granted=granted,
            grant=effective,
            excess=tuple(excess),
            mode=effective.mode or self.mode,
            pinned=pinned,
            digest=digest,
            distribution=distribution,
        )

    def apply(
        self,
        manifest: Manifest,
        distribution: str | None = None,
        digest: str | None = None,
        grant: Grant | None = None,
    ) -> Manifest:
        """The manifest the plugin may run with.

        :raises SecurityViolation: when it asks for more than its grant (``refuse`` mode), or its
            module does not match the digest the policy pins; the suggestion holds the policy
            entry that would grant it.
        """
        review = self.review(manifest, distribution, digest, grant)
        if not review.allowed:
            raise review.refusal()
        return review.granted


# -- applying a grant ---------------------------------------------------------------------------


def _apply(manifest: Manifest, grant: Grant) -> tuple[Manifest, list[Excess]]:
    excess: list[Excess] = []
    capabilities = grant.capabilities or frozenset()
    for capability in sorted(manifest.capabilities - capabilities):
        excess.append(Excess("capabilities", repr(capability), _listed(capabilities)))
    granted_capabilities = manifest.capabilities & capabilities

    preopens, preopen_excess = _preopens(manifest.wasi.preopens, grant.preopens or ())
    excess.extend(preopen_excess)
    env_granted = grant.env or frozenset()
    for name in manifest.wasi.env:
        if name not in env_granted:
            excess.append(Excess("wasi.env", repr(name), _listed(env_granted)))
    env = tuple(name for name in manifest.wasi.env if name in env_granted)
    hosts_granted = grant.http or frozenset()
    for host in manifest.http:
        if host not in hosts_granted:
            excess.append(Excess("http", repr(host), _listed(hosts_granted)))
    http = tuple(host for host in manifest.http if host in hosts_granted)

    limits, limit_excess = _limits(manifest.limits, grant.limits)
    excess.extend(limit_excess)
    ceilings, ceiling_excess = _ceilings(manifest, grant)
    excess.extend(ceiling_excess)

    isolation = manifest.isolation
    if grant.isolation == "process":
        isolation = "process"
    granted = attrs.evolve(
        manifest,
        capabilities=granted_capabilities,
        wasi=attrs.evolve(manifest.wasi, preopens=preopens, env=env),
        http=http,
        limits=limits,
        policy=attrs.evolve(manifest.policy, **ceilings),
        isolation=isolation,
    )
    return granted, excess


def _listed(names: Iterable[str]) -> str:
    items = sorted(names)
    return ", ".join(repr(name) for name in items) if items else "none"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _preopens(
    requested: tuple[WasiPreopen, ...], granted: tuple[GrantedDirectory, ...]
) -> tuple[tuple[WasiPreopen, ...], list[Excess]]:
    """Each requested directory is granted when an entry maps the same guest path to a host
    folder that holds it, writable only if the entry says so; clamped, a request becomes its
    entry (the entry's host folder, read-only if either says so) or is dropped."""
    kept: list[WasiPreopen] = []
    excess: list[Excess] = []
    for preopen in requested:
        host = Path(preopen.host).resolve()
        shown = f"{preopen.guest} = {host} ({'read-only' if preopen.read_only else 'read-write'})"
        matches = [g for g in granted if g.guest in (preopen.guest, None)]
        entry = next((g for g in matches if _inside(host, Path(g.host).resolve())), None)
        if entry is None:
            offered = ", ".join(f"{g.guest or preopen.guest} = {g.host}" for g in matches) or "none"
            excess.append(Excess("wasi.preopens", shown, offered))
            if matches:
                kept.append(WasiPreopen(str(Path(matches[0].host).resolve()), preopen.guest, True))
            continue
        if not preopen.read_only and entry.read_only:
            excess.append(Excess("wasi.preopens", shown, f"{preopen.guest} read-only"))
            kept.append(WasiPreopen(str(host), preopen.guest, True))
            continue
        kept.append(WasiPreopen(str(host), preopen.guest, preopen.read_only))
    return tuple(kept), excess


def _limits(requested: Limits, caps: Mapping[str, Any]) -> tuple[Limits, list[Excess]]:
    """A limit above its cap is asking for more (clamped, it becomes the cap); a limit the
    manifest leaves at the framework's default takes the cap, when there is one."""
    defaults = Limits()
    changes: dict[str, Any] = {}
    excess: list[Excess] = []
    for name in _limit_names():
        cap = caps.get(name)
        if cap is None:
            continue
        value = getattr(requested, name)
        if value == getattr(defaults, name):
            changes[name] = cap
        elif value is None or value > cap:
            excess.append(
                Excess(f"limits.{name}", _show_limit(name, value), _show_limit(name, cap))
            )
            changes[name] = cap
    return requested.replace(**changes) if changes else requested, excess


def _ceilings(manifest: Manifest, grant: Grant) -> tuple[dict[str, Any], list[Excess]]:
    changes: dict[str, Any] = {}
    excess: list[Excess] = []
    for limit, field in CEILINGS.items():
        cap = grant.ceilings.get(limit, grant.limits.get(limit))
        value = getattr(manifest.policy, field)
        if cap is None or value is None or value <= cap:
            continue
        excess.append(Excess(f"policy.{field}", _show_limit(limit, value), _show_limit(limit, cap)))
        changes[field] = cap
    return changes, excess


# -- reading a policy ---------------------------------------------------------------------------

_ENTRY_KEYS = {
    "capabilities",
    "preopens",
    "env",
    "http",
    "limits",
    "ceilings",
    "isolation",
    "sha256",
    "mode",
}


def _policy_error(field: str, problem: str, source: str | None) -> ConfigurationError:
    where = f" ({source})" if source else ""
    return ConfigurationError(
        field=f"trust.{field}" if field != "trust" else "trust",
        message=f"Invalid configuration: trust policy{where} - {field}: {problem}",
        suggestion="see docs/security.md for the trust policy's settings",
    )


def _no_unknown(data: Any, known: set[str], where: str, source: str | None) -> None:
    if not isinstance(data, Mapping):
        raise _policy_error(where or "trust", "expected a table", source)
    unknown = sorted(set(data) - known)
    if unknown:
        field = f"{where}.{unknown[0]}" if where else unknown[0]
        raise _policy_error(field, f"unknown key; known keys: {', '.join(sorted(known))}", source)


def _strings(value: Any, field: str, source: str | None) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _policy_error(field, f"expected a list of strings, got {value!r}", source)
    return frozenset(value)


def _grant(data: Any, where: str, base: Path | None, source: str | None) -> Grant:
    _no_unknown(data, _ENTRY_KEYS, where, source)
    fields: dict[str, Any] = {}
    for key in ("capabilities", "env", "http"):
        if key in data:
            fields[key] = _strings(data[key], f"{where}.{key}", source)
    if "preopens" in data:
        fields["preopens"] = _directories(data["preopens"], f"{where}.preopens", base, source)
    for key in ("limits", "ceilings"):
        if key in data:
            known = set(_limit_names()) if key == "limits" else set(CEILINGS)
            table = data[key]
            _no_unknown(table, known, f"{where}.{key}", source)
            caps = {}
            for name, value in table.items():
                try:
                    caps[name] = _parse_limit(name, value)
                except (TypeError, ValueError, OverflowError, ConfigurationError) as exc:
                    raise _policy_error(f"{where}.{key}.{name}", str(exc), source) from None
            fields[key] = caps
    for key, options in (("isolation", ISOLATION_FLOORS), ("mode", MODES)):
        if key in data:
            value = data[key]
            if value not in options:
                raise _policy_error(
                    f"{where}.{key}", f"{value!r} is not one of {', '.join(options)}", source
                )
            fields[key] = value
    if "sha256" in data:
        digest = data["sha256"]
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise _policy_error(
                f"{where}.sha256", "expected 64 hexadecimal digits (a SHA-256 digest)", source
            )
        fields["sha256"] = digest.lower()
    return Grant(**fields)


def _directories(
    value: Any, where: str, base: Path | None, source: str | None
) -> tuple[GrantedDirectory, ...]:
    if not isinstance(value, list):
        raise _policy_error(where, "expected a list of { host, guest, read_only } tables", source)
    directories = []
    for index, item in enumerate(value):
        _no_unknown(item, {"host", "guest", "read_only"}, f"{where}.{index}", source)
        host, guest = item.get("host"), item.get("guest")
        read_only = item.get("read_only", True)
        if (
            not isinstance(host, str)
            or not isinstance(guest, str)
            or not isinstance(read_only, bool)
        ):
            raise _policy_error(
                f"{where}.{index}",
                "host and guest are strings (both required), read_only is true or false",
                source,
            )
        directories.append(GrantedDirectory(_resolved(host, base), guest, read_only))
    return tuple(directories)


def _resolved(host: str, base: Path | None) -> str:
    path = Path(host).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve())
