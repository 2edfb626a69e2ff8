"""The compiled-module cache: an engine's compiled code on disk, so that a module is compiled once.

An entry is the engine's serialized module (``EngineModule.serialize``), stored under a key that
hashes everything the compiled code depends on: the bytes the engine compiled (the module after
the sandbox's rewrite), the engine's name and version, whether fuel is metered, this file format
and the rewriter's version, and the machine. Loading an entry is deserializing it, which is cheap
next to compiling, and **unsafe** for data that is not the engine's own output (wasmtime maps it
as executable code). So an entry is never trusted as found:

- the cache directory is made private (mode 0700); one that belongs to another user, or that
  others may write to and cannot be made private, is not used at all;
- every entry starts with a header that names its key, engine, version and fuel setting, and the
  SHA-256 digest and size of its payload; a header that does not match what is looked up (a
  foreign entry), a payload of another size (truncated) or digest (corrupt), or an entry the
  engine then refuses (stale) is compiled again and replaced;
- an entry is written to a temporary file in the same directory and renamed into place, so
  readers see a whole entry or none, and concurrent writers of the same entry do not mix.

A digest is no signature: someone who can write to the directory can write a valid entry. That is
why the directory must be private to the user running the host.

Where (``default_directory``): ``$WASM_PLUGINS_CACHE_DIR`` if set; else the platform's cache
location: ``$XDG_CACHE_HOME/wasm-plugins`` or ``~/.cache/wasm-plugins`` on Linux and other
Unix systems, ``~/Library/Caches/wasm-plugins`` on macOS, ``%LOCALAPPDATA%\\wasm-plugins\\Cache``
on Windows. ``WASM_PLUGINS_CACHE=off`` (or ``0``, ``false``, ``no``) turns the default cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import stat
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from wasm_plugins.engine import Engine, EngineModule
from wasm_plugins.errors import PluginError
from wasm_plugins.sandbox._binary import REWRITER_VERSION

__all__ = [
    "CACHE_DIR_VARIABLE",
    "CACHE_FORMAT",
    "CACHE_SWITCH_VARIABLE",
    "CacheStats",
    "CompiledModule",
    "ModuleCache",
    "default_directory",
]

CACHE_FORMAT = 1
"""The entry format; part of every key, so that a new format never reads an old entry."""
CACHE_DIR_VARIABLE = "WASM_PLUGINS_CACHE_DIR"
CACHE_SWITCH_VARIABLE = "WASM_PLUGINS_CACHE"
_OFF = frozenset({"0", "off", "false", "no"})
_MAGIC = b"WPMCACHE"
_HEADER_LENGTH = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
_SUBDIRECTORY = f"compiled-v{CACHE_FORMAT}"


def default_directory() -> Path:
    """The cache directory: ``$WASM_PLUGINS_CACHE_DIR``, else the platform's usual place."""
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else home / "AppData" / "Local"
        return base / "wasm-plugins" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "wasm-plugins"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG specification ignores a relative path.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache"
    return base / "wasm-plugins"


@attrs.frozen
class CacheStats:
    """What a cache did since it was made."""

    hits: int = 0
    """Modules loaded from an entry."""
    misses: int = 0
    """Modules compiled because there was no entry (or a refresh was asked)."""
    rejected: int = 0
    """Entries found unusable (foreign, truncated, corrupt, stale), compiled again and replaced."""
    writes: int = 0
    """Entries written."""
    errors: int = 0
    """Entries that could not be read or written (the module was compiled all the same)."""


@attrs.frozen
class CompiledModule:
    """A compiled module and, when known without asking the engine, its serialized form."""

    module: EngineModule
    serialized: bytes | None = None
    hit: bool = False
    """Whether it was loaded from the cache."""


class ModuleCache:
    """Compiled modules on disk (see the module's documentation for the rules).

    :param directory: where the entries go (``None``: :func:`default_directory`).
    :param enabled: ``False`` makes a cache that compiles every time and touches no file.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, enabled: bool = True):
        self.directory = Path(directory) if directory is not None else default_directory()
        self.enabled = enabled
        self._lock = threading.Lock()
        self._counts = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0, "errors": 0}
        self._ready: bool | None = None

    @classmethod
    def from_environment(cls) -> ModuleCache:
        """The default cache: in :func:`default_directory`, off when ``WASM_PLUGINS_CACHE`` says
        ``off``, ``0``, ``false`` or ``no``."""
        switch = os.environ.get(CACHE_SWITCH_VARIABLE, "").strip().lower()
        return cls(enabled=switch not in _OFF)

    @classmethod
    def disabled(cls) -> ModuleCache:
        """A cache that never stores anything."""
        return cls(enabled=False)

    @property
    def entries(self) -> Path:
        """The directory that holds the entries of this format."""
        return self.directory / _SUBDIRECTORY

    @property
    def stats(self) -> CacheStats:
        """Hits, misses, rejected entries, writes and errors so far."""
        with self._lock:
            return CacheStats(**self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def __repr__(self) -> str:
        state = str(self.directory) if self.enabled else "disabled"
        return f"<ModuleCache {state}>"

    # -- keys ---------------------------------------------------------------------------------

    @staticmethod
    def key(engine: Engine, wasm: bytes, *, fuel: bool) -> str:
        """The key of the code ``engine`` compiles from ``wasm``: a hex SHA-256 digest."""
        material = {
            "format": CACHE_FORMAT,
            "rewriter": REWRITER_VERSION,
            "engine": engine.name,
            "engine_version": engine.version,
            "fuel": bool(fuel),
            "machine": platform.machine(),
            "system": sys.platform,
            "module": hashlib.sha256(wasm).hexdigest(),
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` is stored."""
        return self.entries / key

    # -- use ----------------------------------------------------------------------------------

    def compile(
        self, engine: Engine, wasm: bytes, *, fuel: bool = False, refresh: bool = False
    ) -> CompiledModule:
        """The module ``engine`` compiles from ``wasm``: loaded from its entry when there is a
        good one, else compiled and stored. ``refresh`` compiles anyway and replaces the entry.

        :raises PluginError: what ``engine.compile`` raises; a cache problem never fails this.
        """
        if not self.enabled:
            return CompiledModule(engine.compile(wasm, fuel=fuel))
        key = self.key(engine, wasm, fuel=fuel)
        if not refresh:
            found = self._load(engine, key, fuel)
            if found is not None:
                return found
        self._count("misses")
        module = engine.compile(wasm, fuel=fuel)
        serialized = self._store(engine, key, fuel, module)
        return CompiledModule(module, serialized)

    def clear(self) -> int:
        """Remove every entry of this format; how many were removed."""
        removed = 0
        if not self.entries.is_dir():
            return 0
        for entry in self.entries.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
        return removed

    # -- the directory ------------------------------------------------------------------------

    def _usable_directory(self) -> bool:
        """Make the entries' directory (private) once; whether it can be used."""
        if self._ready is not None:
            return self._ready
        try:
            ready = _private_directory(self.directory) and _private_directory(self.entries)
        except OSError as exc:
            logger.bind(cache=str(self.directory)).warning(
                "compiled-module cache not used: {}", exc
            )
            ready = False
        self._ready = ready
        return ready

    # -- entries ------------------------------------------------------------------------------

    def _header(self, engine: Engine, key: str, fuel: bool) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "key": key,
            "engine": engine.name,
            "engine_version": engine.version,
            "fuel": bool(fuel),
        }

    def _load(self, engine: Engine, key: str, fuel: bool) -> CompiledModule | None:
        if not self._usable_directory():
            return None
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not _owned_by_user(info):
                    self._reject(path, "it belongs to another user")
                    return None
                data = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._count("errors")
            logger.bind(cache=str(path)).warning("cannot read a cache entry: {}", exc)
            return None
        payload, problem = _unpack(data, self._header(engine, key, fuel))
        if payload is None:
            self._reject(path, problem)
            return None
        try:
            module = engine.deserialize(payload, fuel=fuel)
        except PluginError as error:
            self._reject(path, f"the engine refused it: {error.message}")
            return None
        self._count("hits")
        return CompiledModule(module, payload, hit=True)

    def _reject(self, path: Path, problem: str) -> None:
        self._count("rejected")
        logger.bind(cache=str(path)).warning(
            "compiled-module cache entry not used ({}); compiling again", problem
        )

    def _store(self, engine: Engine, key: str, fuel: bool, module: EngineModule) -> bytes | None:
        if not self._usable_directory():
            return None
        try:
            payload = module.serialize()
        except Exception as exc:  # an engine that cannot serialize: nothing to cache
            self._count("errors")
            logger.bind(cache=str(self.directory)).debug("module not serializable: {}", exc)
            return None
        header = self._header(engine, key, fuel)
        header["payload_size"] = len(payload)
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        encoded = json.dumps(header, sort_keys=True).encode()
        temporary = None
        try:
            descriptor, temporary = tempfile.mkstemp(dir=self.entries, prefix=".tmp-")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(_MAGIC)
                handle.write(_HEADER_LENGTH.pack(len(encoded)))
                handle.write(encoded)
                handle.write(payload)
            os.replace(temporary, self.path(key))
            temporary = None
        except OSError as exc:
            self._count("errors")
            if isinstance(exc, FileNotFoundError):
                self._ready = None  # the directory went away: make it again next time
            logger.bind(cache=str(self.directory)).warning("cannot write a cache entry: {}", exc)
        else:
            self._count("writes")
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        return payload


def _unpack(data: bytes, expected: dict[str, Any]) -> tuple[bytes | None, str]:
    """The payload of an entry, checked against its header and the header against what was
    looked up; or None and what is wrong."""
    start = len(_MAGIC) + _HEADER_LENGTH.size
    if len(data) < start or not data.startswith(_MAGIC):
        return None, "not a cache entry"
    (length,) = _HEADER_LENGTH.unpack_from(data, len(_MAGIC))
    if length > _MAX_HEADER or start + length > len(data):
        return None, "truncated header"
    try:
        header = json.loads(data[start : start + length])
    except ValueError:
        return None, "unreadable header"
    if not isinstance(header, dict):
        return None, "unreadable header"
    for field, value in expected.items():
        if header.get(field) != value:
            return None, f"made for another {field} ({header.get(field)!r}, not {value!r})"
    payload = data[start + length :]
    if len(payload) != header.get("payload_size"):
        return None, f"truncated payload ({len(payload)} of {header.get('payload_size')} bytes)"
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        return None, "corrupt payload (digest mismatch)"
    return payload, ""


def _owned_by_user(info: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or info.st_uid == getuid()


def _private_directory(path: Path) -> bool:
    """Make ``path`` (mode 0700) or check it: owned by this user and not open to others."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    if not hasattr(os, "getuid"):
        return True  # Windows: the per-user LOCALAPPDATA is private already
    if info.st_uid != os.getuid():
        logger.bind(cache=str(path)).warning(
            "compiled-module cache not used: {} belongs to another user", path
        )
        return False
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return True
