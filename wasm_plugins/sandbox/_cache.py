"""The compiled-module cache: an engine's compiled code on disk, so that a module is compiled once.

An entry is the engine's serialized module (``EngineModule.serialize``), stored under a key that
hashes everything the compiled code depends on: the module as given (before the sandbox's
rewrite), what the rewrite bakes in (the memory limit, whether ``memory.grow`` is instrumented,
the rewriter's version), the engine's name and version, whether fuel is metered, this file format,
and the machine. So a module seen before is loaded without reading it further than its digest: no
rewrite, no validation (the entry was made from a validated module). The digest of a module file
is remembered beside the file's identity and status (``known_digest``): while they stay the same,
a warm load does not read the file at all. Loading an entry is
deserializing it, which is cheap next to compiling, and **unsafe** for data that is not the
engine's own output (wasmtime maps it as executable code). So an entry is never trusted as found:

- the directories the cache makes are private (mode 0700); an existing directory is used only if
  it belongs to the user and others cannot write to it, and its mode is never changed (it may be
  a shared folder someone gave by mistake); the entries' directory and the entries may not be
  symlinks, and an entry owned by another user is never read;
- every entry is the engine's payload followed by a header (the payload comes first, so that an
  engine can map the file as it is, and reading it is one read from offset 0) that names its
  key, engine, version and fuel setting, the payload's size, the SHA-256 digest of samples of the
  payload (its first and last 4 KiB and 4 KiB at every MiB) and of the whole payload; the header
  is followed by its HMAC-SHA256 under a random key kept in the entries' directory (mode 0600),
  so an entry this cache did not write (copied from another cache or machine, or a header
  corrupted on disk) is refused before anything else is read. A header whose digest or fields do
  not match what is looked up (a foreign entry), a payload of another size (truncated), other
  samples (corrupt, or another entry's payload), or an entry the engine then refuses (stale) is
  compiled again and replaced. An entry file that passed these checks is not checked again
  while its identity and status (device, inode, size, modification and change times, from an
  ``fstat`` of the descriptor the engine then loads) stay the same, once it has settled
  (``SETTLED_AFTER_NS``). The module deserialized from an entry is kept (a bounded number):
  it is used again when an ``lstat`` of the entry gives the identity and status that passed the
  checks (nothing is then opened nor deserialized), or when the entry passes its checks again
  naming the same payload digest. With ``verify="full"`` every load checks everything, the
  whole-payload digest too, and deserializes (see ``docs/performance.md`` for why sampling is
  the default);
- an entry is written to a new temporary file (created exclusively, never through a link) in
  the same directory and renamed into place, so readers see a whole entry or none, and
  concurrent writers of the same entry do not mix;
- ``clear()`` deletes only files named like its own entries, never what a link points to;
- the cache is bounded (``max_size``, ``WASM_PLUGINS_CACHE_MAX_SIZE``, 512 MiB by default): past
  the bound, entries made by another version of an engine go first, then the least recently
  used.

A digest is no signature: someone who can write to the directory can write a valid entry. That is
why the directory must be private to the user running the host.

Where (``default_directory``): ``$WASM_PLUGINS_CACHE_DIR`` if set; else the platform's cache
location: ``$XDG_CACHE_HOME/wasm-plugins`` or ``~/.cache/wasm-plugins`` on Linux and other
Unix systems, ``~/Library/Caches/wasm-plugins`` on macOS, ``%LOCALAPPDATA%\\wasm-plugins\\Cache``
on Windows. ``WASM_PLUGINS_CACHE=off`` (or ``0``, ``false``, ``no``) turns the default cache off.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import hashlib
import hmac
import json
import os
import platform
import re
import secrets
import stat
import struct
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import attrs

from wasm_plugins._log import logger
from wasm_plugins._units import parse_size
from wasm_plugins.engine import Engine, EngineModule
from wasm_plugins.errors import PluginError

__all__ = [
    "CACHE_DIR_VARIABLE",
    "CACHE_FORMAT",
    "CACHE_SIZE_VARIABLE",
    "CACHE_SWITCH_VARIABLE",
    "DEFAULT_MAX_SIZE",
    "CacheStats",
    "CompiledModule",
    "ModuleCache",
    "default_directory",
]

CACHE_FORMAT = 3
"""The entry format; part of every key, so that a new format never reads an old entry."""
CACHE_DIR_VARIABLE = "WASM_PLUGINS_CACHE_DIR"
CACHE_SWITCH_VARIABLE = "WASM_PLUGINS_CACHE"
CACHE_SIZE_VARIABLE = "WASM_PLUGINS_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 512 * 1024 * 1024
"""Bytes of entries the default cache keeps at most."""
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}$")
_TEMPORARY_PREFIX = ".tmp-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_OFF = frozenset({"0", "off", "false", "no"})
_MAGIC = b"WPMCACHE"
_HEADER_LENGTH = struct.Struct(">I")
_MAC_SIZE = hashlib.sha256().digest_size
_TRAILER = _MAC_SIZE + _HEADER_LENGTH.size + len(_MAGIC)
_MAX_HEADER = 64 * 1024
_TAIL_READ = 4096
"""Bytes read from the end of an entry at once: the trailer and the header of most entries."""
_SECRET_NAME = ".hmac-key"
_SECRET_SIZE = 32
_KEY_PREFIXES: dict[tuple[Any, ...], bytes] = {}
_SAMPLE = 4096
_SAMPLE_STRIDE = 1 << 20
_SUBDIRECTORY = f"compiled-v{CACHE_FORMAT}"
SETTLED_AFTER_NS = 2_000_000_000
"""How long after its last change a module file's digest, or an entry file's checks, may be
remembered: a file changed again within the same tick of the file system's clock keeps its time
stamps, so a file changed that recently is hashed or checked on every load."""
_DIGESTS_KEPT = 1024
_HEADERS_KEPT = 256
_MODULES_KEPT = 32
"""Deserialized modules a cache keeps at most (the least recently loaded goes first)."""
_KEPT_MODULE_SIZE = 16 * 1024 * 1024
"""The largest entry payload whose deserialized module is kept."""
_KEPT_BYTES = 64 * 1024 * 1024
"""Bytes of entry payloads whose modules a cache keeps at most."""
_RENEW_AFTER_NS = 60 * 10**9
_UTIME_BY_DESCRIPTOR = os.utime in os.supports_fd
wall_clock_ns = time.time_ns
"""The clock the file system's time stamps are compared with."""


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
    evicted: int = 0
    """Entries removed to keep the cache within its size bound."""


@attrs.frozen
class CompiledModule:
    """A compiled module and, when known without asking the engine, its serialized form."""

    module: EngineModule
    serialized: bytes | None = None
    hit: bool = False
    """Whether it was loaded from the cache."""
    metadata: dict[str, Any] = attrs.field(factory=dict)
    """What the maker of the entry stored beside it (how the module was prepared)."""


class ModuleCache:
    """Compiled modules on disk (see the module's documentation for the rules).

    :param directory: where the entries go (``None``: :func:`default_directory`).
    :param enabled: ``False`` makes a cache that compiles every time and touches no file.
    :param max_size: bytes of entries to keep at most (``None``: no bound).
    :param verify: ``"sampled"`` checks an entry's size and samples of its payload before it is
        deserialized, and not again while the entry file stays the same; ``"full"`` also
        hashes the whole payload, on every load, and remembers neither entries nor module
        digests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        enabled: bool = True,
        max_size: int | None = DEFAULT_MAX_SIZE,
        verify: str = "sampled",
    ):
        if verify not in ("sampled", "full"):
            raise ValueError(f"verify must be 'sampled' or 'full', not {verify!r}")
        self.directory = Path(directory) if directory is not None else default_directory()
        self.enabled = enabled
        self.max_size = max_size
        self.verify = verify
        self._lock = threading.Lock()
        self._counts = {
            "hits": 0,
            "misses": 0,
            "rejected": 0,
            "writes": 0,
            "errors": 0,
            "evicted": 0,
        }
        self._ready: bool | None = None
        self._secret = b""
        self._entries_prefix = ""
        self._digests: dict[tuple[str, str, str], tuple[tuple[int, ...], str]] = {}
        self._authenticated: dict[bytes, dict[str, Any]] = {}
        self._checked: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {}
        self._kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self._kept_bytes = 0
        _CACHES.add(self)

    @classmethod
    def from_environment(cls) -> ModuleCache:
        """The default cache: in :func:`default_directory`, off when ``WASM_PLUGINS_CACHE`` says
        ``off``, ``0``, ``false`` or ``no``, bounded by ``WASM_PLUGINS_CACHE_MAX_SIZE`` (a size
        such as ``1 GiB``) when set."""
        switch = os.environ.get(CACHE_SWITCH_VARIABLE, "").strip().lower()
        bound = os.environ.get(CACHE_SIZE_VARIABLE, "").strip()
        max_size = DEFAULT_MAX_SIZE
        if bound:
            try:
                max_size = parse_size(bound)
            except ValueError as exc:
                logger.bind(variable=CACHE_SIZE_VARIABLE).warning(
                    "ignored (using {} bytes): {}", DEFAULT_MAX_SIZE, exc
                )
        return cls(enabled=switch not in _OFF, max_size=max_size)

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
    def key(
        engine: Engine,
        wasm: bytes,
        *,
        fuel: bool,
        preparation: dict[str, Any] | None = None,
        module_digest: str | None = None,
    ) -> str:
        """The key of the code ``engine`` compiles from ``wasm`` prepared as ``preparation``
        says (what the sandbox's rewrite bakes in; ``None``: compiled as it is): a hex SHA-256
        digest. ``module_digest``, when given, is ``wasm``'s hex SHA-256 digest (``wasm`` is then
        not read)."""
        if module_digest is None:
            module_digest = hashlib.sha256(wasm).hexdigest()
        return hashlib.sha256(
            _key_prefix(engine, fuel, preparation) + module_digest.encode()
        ).hexdigest()

    def known_digest(self, path: str, engine: Engine) -> str | None:
        """The hex SHA-256 digest of the module last read from the file at ``path`` (by
        ``engine``, which compiles WAT text), if the file has not changed since: the same
        device, inode, size, modification and change times. ``None`` when the file must be
        read, and always with ``verify="full"``. See ``docs/performance.md`` for why this is
        safe enough."""
        remembered = self._digests.get((path, engine.name, engine.version))
        if remembered is None:
            return None
        try:
            status = os.stat(path)
        except OSError:
            return None
        identity, digest = remembered
        return digest if _identity(status) == identity else None

    def remember_digest(
        self, path: str, engine: Engine, status: os.stat_result, digest: str
    ) -> None:
        """Remember ``digest`` for the module read from ``path`` by ``engine``, the file having
        had ``status`` (taken before it was read) then; not when the file changed less than
        ``SETTLED_AFTER_NS`` ago, nor with ``verify="full"``."""
        if not self.enabled or self.verify == "full":
            return
        changed = max(status.st_mtime_ns, status.st_ctime_ns)
        if wall_clock_ns() - changed < SETTLED_AFTER_NS:
            return
        if len(self._digests) >= _DIGESTS_KEPT:  # a bound: hosts load a bounded set of files
            self._digests.clear()
        self._digests[(path, engine.name, engine.version)] = (_identity(status), digest)

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
        found = self.lookup(engine, key, fuel=fuel, keep_payload=True, refresh=refresh)
        if found is not None:
            return found
        module = engine.compile(wasm, fuel=fuel)
        serialized = self.store(engine, key, module, fuel=fuel)
        return CompiledModule(module, serialized)

    def lookup(
        self,
        engine: Engine,
        key: str,
        *,
        fuel: bool,
        keep_payload: bool = False,
        refresh: bool = False,
    ) -> CompiledModule | None:
        """The module of a good entry under ``key``, deserialized; ``None`` (a miss, counted)
        when there is none or ``refresh`` asks to compile anyway. ``keep_payload`` reads the
        payload into memory and returns it too (otherwise the engine may map the file without
        Python reading it)."""
        if not self.enabled:
            return None
        found = None if refresh else self._load(engine, key, fuel, keep_payload)
        if found is None:
            self._count("misses")
        return found

    def store(
        self,
        engine: Engine,
        key: str,
        module: EngineModule,
        *,
        fuel: bool,
        metadata: dict[str, Any] | None = None,
    ) -> bytes | None:
        """Write the entry of ``key``: ``module`` serialized, with ``metadata`` (JSON) beside
        it; the payload written, or ``None`` when nothing was."""
        if not self.enabled:
            return None
        self._checked.pop(key, None)
        self._forget_module(key)
        return self._store(engine, key, fuel, module, metadata or {})

    def clear(self) -> int:
        """Remove every entry of this format; how many were removed.

        Only the cache's own files go: regular files named like an entry (or a temporary
        entry), owned by the user, in an entries directory that is not a link.
        """
        removed = 0
        self._checked.clear()
        self._forget_modules()
        for path, _ in self._own_entries(temporary=True):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    def _own_entries(self, *, temporary: bool = False) -> list[tuple[Path, os.stat_result]]:
        """The cache's own entry files with their status (none when the directory is not the
        cache's to use)."""
        try:
            if not _real_directory(self.entries):
                return []
            names = os.listdir(self.entries)
        except OSError:
            return []
        found = []
        for name in names:
            if not (_ENTRY_NAME.match(name) or (temporary and name.startswith(_TEMPORARY_PREFIX))):
                continue
            path = self.entries / name
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and _owned_by_user(info):
                found.append((path, info))
        return found

    # -- the directory ------------------------------------------------------------------------

    def _usable_directory(self) -> bool:
        """Make the entries' directory (private) once; whether it can be used."""
        if self._ready is not None:
            return self._ready
        try:
            ready = _private_directory(self.directory) and _private_directory(
                self.entries, follow=False
            )
            if ready:
                self._secret = _secret(self.entries)
                self._authenticated = {}
                self._entries_prefix = os.path.join(self.entries, "")
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

    def _load(
        self, engine: Engine, key: str, fuel: bool, keep_payload: bool
    ) -> CompiledModule | None:
        if not self._usable_directory():
            return None
        path = self._entries_prefix + key
        if not keep_payload:
            settled = self._settled_module(key, path)
            if settled is not None:
                return settled
        try:
            descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._reject(path, "it is a symbolic link")
                return None
            self._count("errors")
            logger.bind(cache=path).warning("cannot read a cache entry: {}", exc)
            return None
        try:
            info = os.fstat(descriptor)
            identity = _identity(info)
            checked = self._checked.get(key)
            if checked is not None and checked[0] == identity and self.verify != "full":
                # The very file that passed the checks, unchanged since (see known_digest).
                header = checked[1]
                size = header["payload_size"]
                payload = os.pread(descriptor, size, 0) if keep_payload else None
            else:
                checked = None
                verified = self._verified_entry(
                    descriptor, path, info, engine, key, fuel, keep_payload
                )
                if verified is None:
                    return None
                header, payload = verified
                size = header["payload_size"]
            renewed = _mark_used(descriptor, info)
            # The module kept from an earlier load of the very payload these checks passed, if
            # any; else the engine is given the descriptor's own file where the system names
            # it, so it reads the very file checked above, whatever the name points to by now.
            module = self._kept_module(key, header)
            deserialized = module is None
            if module is None:
                module = _deserialized(engine, descriptor, path, size, payload, fuel)
        except PluginError as error:
            self._checked.pop(key, None)
            self._forget_module(key)
            self._reject(path, f"the engine refused it: {error.message}")
            return None
        except OSError as exc:
            self._count("errors")
            logger.bind(cache=path).warning("cannot read a cache entry: {}", exc)
            return None
        finally:
            os.close(descriptor)
        if checked is None and not renewed:
            self._remember_checked(key, info, identity, header)
        if deserialized:
            self._keep_module(key, header, module)
        return self._hit(module, payload, header)

    def _hit(
        self, module: EngineModule, payload: bytes | None, header: dict[str, Any]
    ) -> CompiledModule:
        """A hit, counted: the module, with the metadata its entry's header holds."""
        self._count("hits")
        metadata = header.get("metadata")
        return CompiledModule(
            module, payload, hit=True, metadata=dict(metadata) if isinstance(metadata, dict) else {}
        )

    def _settled_module(self, key: str, path: str) -> CompiledModule | None:
        """The kept module of the entry under ``key`` when the entry file is the very file that
        passed the checks, settled and unchanged since (its ``lstat``: a link or another file in
        its place has another identity), and needs no renewal of its time; else ``None``."""
        checked = self._checked.get(key)
        if checked is None or key not in self._kept:
            return None
        identity, header = checked
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if (
            _identity(info) != identity
            or not stat.S_ISREG(info.st_mode)
            or wall_clock_ns() - info.st_mtime_ns >= _RENEW_AFTER_NS
        ):
            return None
        module = self._kept_module(key, header)
        return None if module is None else self._hit(module, None, header)

    def _kept_module(self, key: str, header: dict[str, Any]) -> EngineModule | None:
        """The module kept for ``key`` if it was deserialized from the payload ``header``
        describes (the same digest of the whole payload), else ``None``."""
        kept = self._kept.get(key)
        if kept is None or self.verify == "full":
            return None
        if kept.digest != header.get("payload_sha256"):
            return None
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
        return kept.module

    def _keep_module(self, key: str, header: dict[str, Any], module: EngineModule) -> None:
        """Keep ``module``, deserialized from the payload ``header`` describes: not with
        ``verify="full"``, nor for a payload larger than ``_KEPT_MODULE_SIZE``. The least
        recently loaded go past ``_MODULES_KEPT`` modules or ``_KEPT_BYTES`` bytes."""
        size = int(header.get("payload_size", 0))
        digest = header.get("payload_sha256")
        if self.verify == "full" or size > _KEPT_MODULE_SIZE or not isinstance(digest, str):
            return
        with self._lock:
            previous = self._kept.pop(key, None)
            if previous is not None:
                self._kept_bytes -= previous.size
            self._kept[key] = _Kept(digest, module, size)
            self._kept_bytes += size
            while len(self._kept) > _MODULES_KEPT or self._kept_bytes > _KEPT_BYTES:
                _, dropped = self._kept.popitem(last=False)
                self._kept_bytes -= dropped.size

    def _forget_module(self, key: str) -> None:
        with self._lock:
            dropped = self._kept.pop(key, None)
            if dropped is not None:
                self._kept_bytes -= dropped.size

    def _forget_modules(self) -> None:
        with self._lock:
            self._kept.clear()
            self._kept_bytes = 0

    def _verified_entry(
        self,
        descriptor: int,
        path: str,
        info: os.stat_result,
        engine: Engine,
        key: str,
        fuel: bool,
        keep_payload: bool,
    ) -> tuple[dict[str, Any], bytes | None] | None:
        """The header of the open entry and its payload when it had to be read, once every
        check passed; ``None`` when one failed (the entry is then refused)."""
        if not stat.S_ISREG(info.st_mode):
            self._reject(path, "it is not a regular file")
            return None
        if not _owned_by_user(info):
            self._reject(path, "it belongs to another user")
            return None
        header, problem = _read_header(
            descriptor,
            info.st_size,
            self._header(engine, key, fuel),
            self._secret,
            self._authenticated,
        )
        if header is None:
            self._reject(path, problem)
            return None
        size = int(header["payload_size"])
        payload = None
        if keep_payload or self.verify == "full":
            payload = os.pread(descriptor, size, 0)
        problem = _check_payload(descriptor, size, header, payload)
        if problem:
            self._reject(path, problem)
            return None
        return header, payload

    def _remember_checked(
        self, key: str, info: os.stat_result, identity: tuple[int, ...], header: dict[str, Any]
    ) -> None:
        """Remember that the entry file with ``info`` passed its checks, with its header: not
        when it changed less than ``SETTLED_AFTER_NS`` ago, nor with ``verify="full"``."""
        if self.verify == "full":
            return
        if wall_clock_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < SETTLED_AFTER_NS:
            return
        if len(self._checked) >= _DIGESTS_KEPT:  # a bound: hosts load a bounded set of modules
            self._checked.clear()
        self._checked[key] = (identity, header)

    def _reject(self, path: str, problem: str) -> None:
        self._count("rejected")
        logger.bind(cache=path).warning(
            "compiled-module cache entry not used ({}); compiling again", problem
        )

    def _store(
        self,
        engine: Engine,
        key: str,
        fuel: bool,
        module: EngineModule,
        metadata: dict[str, Any],
    ) -> bytes | None:
        if not self._usable_directory():
            return None
        try:
            payload = module.serialize()
        except Exception as exc:  # an engine that cannot serialize: nothing to cache
            self._count("errors")
            logger.bind(cache=str(self.directory)).debug("module not serializable: {}", exc)
            return None
        if self.max_size is not None and len(payload) > self.max_size:
            return payload
        header = self._header(engine, key, fuel)
        header["payload_size"] = len(payload)
        header["payload_samples"] = _samples_digest(payload, len(payload))
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        header["metadata"] = metadata
        encoded = json.dumps(header, sort_keys=True).encode()
        mac = hmac.digest(self._secret, encoded, "sha256")
        temporary = None
        try:
            # mkstemp creates the file exclusively (O_EXCL), mode 0600, never through a link.
            descriptor, temporary = tempfile.mkstemp(dir=self.entries, prefix=_TEMPORARY_PREFIX)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.write(encoded)
                handle.write(mac)
                handle.write(_HEADER_LENGTH.pack(len(encoded)))
                handle.write(_MAGIC)
            os.replace(temporary, self.path(key))
            temporary = None
        except OSError as exc:
            self._count("errors")
            if isinstance(exc, FileNotFoundError):
                self._ready = None  # the directory went away: make it again next time
            logger.bind(cache=str(self.directory)).warning("cannot write a cache entry: {}", exc)
        else:
            self._count("writes")
            self._evict(engine, keep=key)
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
        return payload

    def _evict(self, engine: Engine, keep: str) -> None:
        """Remove entries until the cache is within its bound: entries of another version of
        this engine first, then the least recently used (an entry's modification time is
        renewed each time it is loaded)."""
        if self.max_size is None:
            return
        entries = self._own_entries()
        total = sum(info.st_size for _, info in entries)
        if total <= self.max_size:
            return
        ranked = sorted(
            ((self._is_current(path, engine), info.st_mtime_ns, path, info.st_size))
            for path, info in entries
            if path.name != keep
        )
        for _, _, path, size in ranked:
            if total <= self.max_size:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                self._count("evicted")

    @staticmethod
    def _is_current(path: Path, engine: Engine) -> bool:
        """Whether an entry was made by this engine's version, or by another engine (which may
        still be in use); an entry of an older version of this engine can never be used again."""
        try:
            descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)
        except OSError:
            return False
        try:
            header, _ = _read_header(descriptor, os.fstat(descriptor).st_size, {}, None)
        except (OSError, ValueError):
            return False
        finally:
            os.close(descriptor)
        if header is None:
            return False
        if header.get("engine") != engine.name:
            return True
        return header.get("engine_version") == engine.version


_CACHES: weakref.WeakSet[ModuleCache] = weakref.WeakSet()


@atexit.register
def _forget_kept_modules() -> None:
    """Drop the kept modules before the interpreter tears its modules down (the engines'
    finalizers need theirs)."""
    for cache in list(_CACHES):
        cache._forget_modules()


def _deserialized(
    engine: Engine, descriptor: int, path: str, size: int, payload: bytes | None, fuel: bool
) -> EngineModule:
    """The module of the open entry: from ``payload`` when it was read, else from the file."""
    if payload is not None:
        return engine.deserialize(payload, fuel=fuel)
    return engine.deserialize_file(_descriptor_path(descriptor, path), size, fuel=fuel)


@attrs.frozen
class _Kept:
    """A deserialized module kept by a cache, with the digest and size of its payload."""

    digest: str
    module: EngineModule
    size: int


def _read_header(
    descriptor: int,
    file_size: int,
    expected: dict[str, Any],
    secret: bytes | None,
    authenticated: dict[bytes, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """The header at the end of an entry, checked against its HMAC under ``secret`` (``None``:
    not checked), against what was looked up and against the file's size; or None and what is
    wrong. One read for most entries. ``authenticated`` holds the headers (with their HMAC, as
    read) already checked under ``secret`` and parsed: the same bytes are not checked again."""
    if file_size < _TRAILER:
        return None, "not a cache entry"
    tail_size = min(file_size, _TAIL_READ)
    tail = os.pread(descriptor, tail_size, file_size - tail_size)
    if len(tail) != tail_size or not tail.endswith(_MAGIC):
        return None, "not a cache entry"
    (length,) = _HEADER_LENGTH.unpack_from(tail, tail_size - _HEADER_LENGTH.size - len(_MAGIC))
    if length > _MAX_HEADER or length > file_size - _TRAILER:
        return None, "truncated header"
    mac = tail[tail_size - _TRAILER : tail_size - _TRAILER + _MAC_SIZE]
    if length <= tail_size - _TRAILER:
        encoded = tail[tail_size - _TRAILER - length : tail_size - _TRAILER]
    else:
        encoded = os.pread(descriptor, length, file_size - _TRAILER - length)
        if len(encoded) != length:
            return None, "truncated header"
    signed = encoded + mac
    header = None if authenticated is None else authenticated.get(signed)
    if header is None:
        if secret is not None and not hmac.compare_digest(
            hmac.digest(secret, encoded, "sha256"), mac
        ):
            return None, "header digest mismatch (corrupt, or not written by this cache)"
        try:
            header = json.loads(encoded)
        except ValueError:
            return None, "unreadable header"
        if not isinstance(header, dict):
            return None, "unreadable header"
        if authenticated is not None and secret is not None:
            if len(authenticated) >= _HEADERS_KEPT:
                authenticated.clear()
            authenticated[signed] = header
    for field, value in expected.items():
        if header.get(field) != value:
            return None, f"made for another {field} ({header.get(field)!r}, not {value!r})"
    payload_size = file_size - _TRAILER - length
    if header.get("payload_size") != payload_size:
        return None, f"truncated payload ({payload_size} of {header.get('payload_size')} bytes)"
    return header, ""


def _check_payload(
    descriptor: int, size: int, header: dict[str, Any], payload: bytes | None
) -> str:
    """What is wrong with the payload (its samples, and all of it when it was read), or ``""``."""
    if payload is not None:
        if len(payload) != size:
            return "truncated payload"
        if not hmac.compare_digest(
            hashlib.sha256(payload).hexdigest(), str(header.get("payload_sha256"))
        ):
            return "corrupt payload (digest mismatch)"
    samples = _samples_digest(payload if payload is not None else descriptor, size)
    if not hmac.compare_digest(samples, str(header.get("payload_samples"))):
        return "corrupt payload (samples mismatch)"
    return ""


def _sample_offsets(size: int) -> list[int]:
    offsets = list(range(0, size, _SAMPLE_STRIDE))
    if size > _SAMPLE:
        offsets.append(size - _SAMPLE)
    return offsets


def _samples_digest(source: bytes | int, size: int) -> str:
    """SHA-256 of the payload's size and of 4 KiB read at its start, end and every MiB, from
    bytes or from an open file descriptor."""
    digest = hashlib.sha256(str(size).encode())
    for offset in _sample_offsets(size):
        length = min(_SAMPLE, size - offset)
        if isinstance(source, bytes):
            digest.update(source[offset : offset + length])
        else:
            digest.update(os.pread(source, length, offset))
    return digest.hexdigest()


def _key_prefix(engine: Engine, fuel: bool, preparation: dict[str, Any] | None) -> bytes:
    """Everything in a key but the module's digest, encoded once per engine and preparation."""
    memo = (
        engine.name,
        engine.version,
        bool(fuel),
        None if preparation is None else tuple(sorted(preparation.items())),
    )
    prefix = _KEY_PREFIXES.get(memo)
    if prefix is None:
        material = {
            "format": CACHE_FORMAT,
            "preparation": preparation,
            "engine": engine.name,
            "engine_version": engine.version,
            "fuel": bool(fuel),
            "machine": platform.machine(),
            "system": sys.platform,
        }
        prefix = json.dumps(material, sort_keys=True).encode() + b"\0"
        if len(_KEY_PREFIXES) < 256:  # a bound: hosts use a handful of preparations
            _KEY_PREFIXES[memo] = prefix
    return prefix


def _secret(entries: Path) -> bytes:
    """The cache's HMAC key, made (random, mode 0600) the first time: written to a temporary
    file and linked into place, so that concurrent makers agree on one key and a reader never
    sees a partial one."""
    path = entries / _SECRET_NAME
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)
        except FileNotFoundError:
            _make_secret(entries, path)
            continue
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode) or not _owned_by_user(info):
                raise PermissionError(f"{path} is not a file of this user")
            secret = os.read(descriptor, _SECRET_SIZE + 1)
        finally:
            os.close(descriptor)
        if len(secret) != _SECRET_SIZE:
            raise OSError(errno.EINVAL, f"{path} is not a key of {_SECRET_SIZE} bytes")
        return secret
    raise FileNotFoundError(f"{path} could not be made")


def _make_secret(entries: Path, path: Path) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=entries, prefix=_TEMPORARY_PREFIX)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(_SECRET_SIZE))
        with contextlib.suppress(FileExistsError):  # another maker was first: its key holds
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


_FD_DIRECTORY = "/proc/self/fd"
_fd_paths: list[bool] = []


def _descriptor_path(descriptor: int, path: str) -> str:
    """A name of the open file ``descriptor`` (Linux's ``/proc/self/fd``), else ``path``."""
    if not _fd_paths:
        _fd_paths.append(os.path.isdir(_FD_DIRECTORY))
    return f"{_FD_DIRECTORY}/{descriptor}" if _fd_paths[0] else path


def _identity(status: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written: the change time moves with every write
    and every change of status, and no one but the system's clock sets it."""
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def _owned_by_user(info: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or info.st_uid == getuid()


def _mark_used(descriptor: int, info: os.stat_result) -> bool:
    """Renew an entry's modification time, at most once a minute (eviction removes the least
    recently used first, and needs no finer order than that); whether it was renewed."""
    if _UTIME_BY_DESCRIPTOR and wall_clock_ns() - info.st_mtime_ns >= _RENEW_AFTER_NS:
        with contextlib.suppress(OSError):
            os.utime(descriptor)
            return True
    return False


def _real_directory(path: Path) -> bool:
    info = os.lstat(path)
    return stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode)


def _private_directory(path: Path, *, follow: bool = True) -> bool:
    """Make ``path`` (mode 0700), or check an existing one: a directory (not a link, unless
    ``follow``), owned by this user, that others cannot write to. An existing directory's mode
    is never changed: it is not the cache's to change."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        # mkdir applies the umask; a directory the cache made is its own to make private.
        os.chmod(path, 0o700)
    info = path.stat() if follow else os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        logger.bind(cache=str(path)).warning(
            "compiled-module cache not used: {} is a symbolic link", path
        )
        return False
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    if not hasattr(os, "getuid"):
        return True  # Windows: the per-user LOCALAPPDATA is private already
    if info.st_uid != os.getuid():
        logger.bind(cache=str(path)).warning(
            "compiled-module cache not used: {} belongs to another user", path
        )
        return False
    if stat.S_IMODE(info.st_mode) & 0o022:
        logger.bind(cache=str(path)).warning(
            "compiled-module cache not used: others may write to {} (make it private: chmod 700)",
            path,
        )
        return False
    return True
