"""What a command line names as a plugin: an installed plugin's name, or the path of a manifest
(``.toml``) or of a module (``.wasm``, ``.wat``), and a host that runs it.

Shared by the ``wasm-plugins`` commands and by :mod:`wasm_plugins.testing.fuzz`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path

import attrs

from wasm_plugins.engine import Engine, EngineRegistry
from wasm_plugins.errors import ConfigurationError
from wasm_plugins.host import PluginHost
from wasm_plugins.manifest import Manifest
from wasm_plugins.policy import Clock, RandomSource
from wasm_plugins.trust import Grant, Review

__all__ = [
    "MANIFEST_SUFFIX",
    "MODULE_SUFFIXES",
    "Target",
    "engine_factory",
    "resolve_target",
    "scratch_host",
]

MODULE_SUFFIXES = (".wasm", ".wat")
MANIFEST_SUFFIX = ".toml"
_NOT_NAME = re.compile(r"[^a-z0-9_.-]+")


@attrs.frozen
class Target:
    """What TARGET named: the manifest, and whether it is an installed plugin of the host."""

    manifest: Manifest
    """The manifest it runs with (what the trust policy granted), or the request when refused."""
    installed: bool
    source: str
    """Where it came from, for people: a distribution or a file path."""
    review: Review | None = None
    """The trust policy's decision, when one was made (not for a bare module: the person running
    it decides, with the command line's flags)."""


def _unknown_plugin(host: PluginHost, name: str) -> ConfigurationError:
    close = difflib.get_close_matches(name, list(host.plugins), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigurationError(
        field="plugin",
        plugin=name,
        message=f"Invalid configuration: plugin - no plugin named {name!r}",
        suggestion=hint
        + "'wasm-plugins list' shows the installed plugins; a path to a .toml, .wasm or .wat file "
        "works too",
    )


def _module_name(path: Path) -> str:
    """A valid plugin name from a file name: ``My Module.wat`` -> ``my-module``."""
    name = _NOT_NAME.sub("-", path.stem.lower()).lstrip("-_.")[:64].rstrip("-_.")
    return name or "module"


def _is_module_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in MODULE_SUFFIXES:
        return True
    if suffix == MANIFEST_SUFFIX:
        return False
    try:
        with path.open("rb") as file:
            head = file.read(256)
    except OSError:
        return False
    return head.startswith(b"\0asm") or head.lstrip().startswith((b"(module", b";;", b"(;"))


def resolve_target(
    host: PluginHost,
    target: str,
    *,
    raw: bool = False,
    extra: Grant | None = None,
    refused: bool = False,
) -> Target:
    """The manifest TARGET stands for, as the host's trust policy grants it.

    An installed plugin is as discovery granted it; a manifest file is a request the trust
    policy decides (with ``extra`` granted on top); a bare module gets the capabilities of
    ``extra`` and nothing else.

    :param raw: a bare module gets the raw codec instead of JSON.
    :param refused: give a plugin the policy refuses as its request (to show it), instead of
        raising the refusal.
    :raises ConfigurationError: for an unknown plugin (with a "did you mean"), a missing file or an
        invalid manifest.
    :raises SecurityViolation: for a plugin that asks for more than its grant.
    """
    info = host.plugins.get(target)
    if info is not None:
        return Target(
            info.manifest, True, info.distribution or "registered by the host", info.review
        )
    denied = host.refused.get(target)
    if denied is not None:
        if not refused:
            raise denied.refusal()
        return Target(denied.requested, True, denied.distribution or "discovered", denied)
    path = Path(target)
    looks_like_path = (
        path.suffix.lower() in (*MODULE_SUFFIXES, MANIFEST_SUFFIX)
        or os.sep in target
        or "/" in target
        or path.exists()
    )
    if not looks_like_path:
        raise _unknown_plugin(host, target)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "no such file"
        raise ConfigurationError(
            field="target",
            message=f"Invalid configuration: target - {problem}: {target}",
            suggestion="give an installed plugin's name, or the path of a plugin manifest (.toml) "
            "or of a module (.wasm, .wat)",
        )
    if not _is_module_file(path):
        review = host.review(Manifest.from_file(path), extra=extra)
        if review.allowed:
            return Target(review.granted, False, str(path), review)
        if not refused:
            raise review.refusal()
        return Target(review.requested, False, str(path), review)
    manifest = Manifest.from_dict(
        {
            "name": _module_name(path),
            "module": {"path": str(path.resolve())},
            "description": f"The module {path.name}, not packaged as a plugin.",
            "codec": "raw" if raw else "json",
            "capabilities": sorted(extra.capabilities or ()) if extra is not None else [],
        }
    )
    return Target(manifest, False, str(path))


def engine_factory(registry: EngineRegistry, name: str) -> Callable[[], Engine]:
    """A factory for another host's registry that takes engine ``name`` from ``registry``.

    An engine that cannot load there raises ImportError with the reason, which is how a
    registry learns that a factory's engine is unavailable.
    """

    def factory() -> Engine:
        try:
            return registry.get(name)
        except ConfigurationError as exc:
            raise ImportError(registry.availability().get(name) or exc.message) from None

    return factory


def scratch_host(
    base: PluginHost,
    manifest: Manifest,
    *,
    clock: Clock | None = None,
    random: RandomSource | None = None,
    review: Review | None = None,
) -> PluginHost:
    """A host that runs ``manifest`` alone, with the engines, host functions, engine choice and
    isolation of ``base`` (and the policy's ``clock`` and ``random``, when given).

    Used for module and manifest files, and for installed plugins whose manifest the command line
    changes (``--engine``, ``--memory``...): a host cannot register a second plugin of one name.
    ``base`` may be closed already: only its registries are read. With the ``review`` that
    granted it, capabilities a clamping policy left out are refused when called.
    """
    host = PluginHost(engine=base.engine_name, isolation=base.isolation, clock=clock, random=random)
    for name in base.engines.names():
        host.engines.register(name, engine_factory(base.engines, name))
    host.host_functions.update(base.host_functions)
    if review is not None:
        host.admit(attrs.evolve(review, granted=manifest))
    else:
        host.load(manifest)
    return host
