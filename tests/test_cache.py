"""The compiled-module cache: hits, misses, and every bad entry compiled again, never trusted.

Each test points the cache at its own temporary directory; the engine fixture runs each test on
every engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, ROOT
from wasm_plugins import PluginHost
from wasm_plugins.builtin.host_functions import builtin_host_functions
from wasm_plugins.engine import Engine
from wasm_plugins.errors import CompilationError, ModuleError, SecurityViolation
from wasm_plugins.hookspecs import hookimpl
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from wasm_plugins.policy import Retry
from wasm_plugins.sandbox import ModuleCache, Sandbox, default_directory
from wasm_plugins.sandbox._cache import CACHE_DIR_VARIABLE, CACHE_SWITCH_VARIABLE

ECHO = EXAMPLES / "echo.wat"
PAYLOAD = {"text": "hello", "n": [1, 2]}
CLOCK = """(module
  (import "wasm_plugins" "clock_now" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "run") (param i32 i32) (result i64)
    (i64.store (i32.const 4096) (call $now))
    (i64.store (i32.const 4104) (call $now))
    (i64.or (i64.shl (i64.const 4096) (i64.const 32)) (i64.const 16))))
"""
"""A plugin that imports a host function gated by the ``clock`` capability."""


def echo_wasm(engine: Engine) -> bytes:
    return engine.wat_to_wasm(ECHO.read_text())


def only_entry(cache: ModuleCache) -> Path:
    (entry,) = [p for p in cache.entries.iterdir() if not p.name.startswith(".")]
    return entry


class OtherVersion:
    """The same engine under another version number (an upgrade, as the cache sees it)."""

    def __init__(self, engine: Engine, version: str) -> None:
        self._engine = engine
        self.name = engine.name
        self.version = version
        self.features = engine.features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class TestHitsAndMisses:
    def test_miss_then_hit(self, engine: Engine, tmp_path: Path) -> None:
        """The first load compiles and writes an entry; the second loads the entry."""
        cache = ModuleCache(tmp_path)
        first = Sandbox(ECHO, engine=engine, cache=cache)
        assert not first.compiled_from_cache
        assert (cache.stats.misses, cache.stats.writes, cache.stats.hits) == (1, 1, 0)
        second = Sandbox(ECHO, engine=engine, cache=cache)
        assert second.compiled_from_cache
        assert cache.stats.hits == 1
        assert second.call("echo", PAYLOAD) == PAYLOAD

    def test_a_new_cache_object_finds_the_entry(self, engine: Engine, tmp_path: Path) -> None:
        """Entries outlive the cache object (and the process): only the directory matters."""
        Sandbox(ECHO, engine=engine, cache=ModuleCache(tmp_path))
        again = ModuleCache(tmp_path)
        sandbox = Sandbox(ECHO, engine=engine, cache=again)
        assert sandbox.compiled_from_cache and again.stats.hits == 1

    def test_key_covers_what_the_code_depends_on(self, engine: Engine) -> None:
        """Other bytes, another fuel setting, another engine version: another key."""
        wasm = echo_wasm(engine)
        key = ModuleCache.key(engine, wasm, fuel=False)
        assert key == ModuleCache.key(engine, bytes(wasm), fuel=False)
        assert key != ModuleCache.key(engine, wasm, fuel=True)
        assert key != ModuleCache.key(engine, wasm + b"\0", fuel=False)
        assert key != ModuleCache.key(OtherVersion(engine, "0.0.0"), wasm, fuel=False)

    def test_memory_limit_is_part_of_the_compiled_bytes(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        """The sandbox's rewrite clamps the memory maximum to the limit, so another limit is
        another module, compiled and cached on its own."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache, limits=None)
        other = Sandbox(ECHO, engine=engine, cache=cache, limits=_limits(memory="1 MiB"))
        assert not other.compiled_from_cache
        assert cache.stats.misses == 2

    def test_refresh_compiles_and_replaces(self, engine: Engine, tmp_path: Path) -> None:
        """refresh_cache compiles although an entry exists, and writes the entry again."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        entry = only_entry(cache)
        before = entry.stat().st_ino
        again = Sandbox(ECHO, engine=engine, cache=cache, refresh_cache=True)
        assert not again.compiled_from_cache
        assert cache.stats.writes == 2 and cache.stats.hits == 0
        assert only_entry(cache).stat().st_ino != before  # a new file renamed into place


class TestWarmLoad:
    """A module seen before is deserialized as it was prepared: no rewrite, no validation."""

    def test_warm_load_neither_rewrites_nor_validates(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = ModuleCache(tmp_path)
        cold = Sandbox(ECHO, engine=engine, cache=cache)
        assert cold.loaded.grow_probe is not None  # echo.wat grows its memory

        def forbidden(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a warm load must not do this")

        monkeypatch.setattr(engine, "validate", forbidden)
        monkeypatch.setattr(engine, "compile", forbidden)
        monkeypatch.setattr("wasm_plugins.sandbox._loaded.check_module_bytes", forbidden)
        monkeypatch.setattr("wasm_plugins.sandbox._loaded.prepare_within_limits", forbidden)
        warm = Sandbox(ECHO, engine=engine, cache=cache)
        assert warm.compiled_from_cache
        assert warm.loaded.grow_probe == cold.loaded.grow_probe
        assert warm.call("echo", PAYLOAD) == PAYLOAD

    def test_compiled_code_starts_the_entry(self, engine: Engine, tmp_path: Path) -> None:
        """The engine's own compiled code is the entry's first bytes, the module's types and
        the header after it: an engine can map the entry as it is (wasmtime does)."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        data = only_entry(cache).read_bytes()
        module = engine.compile(engine.wat_to_wasm(ECHO.read_text()))
        raw = module._module.serialize() if engine.name == "wasmtime" else module._serialized  # type: ignore[attr-defined]
        assert data[:16] == bytes(raw)[:16]

    def test_wasmtime_maps_the_entry_without_python_reading_it(
        self, wasmtime_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On a warm load the compiled code goes from the file to wasmtime: Python reads only
        the header, the types and the samples, never the whole payload."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=wasmtime_engine, cache=cache)
        size = only_entry(cache).stat().st_size
        reads: list[int] = []
        pread = os.pread

        def counting(descriptor: int, length: int, offset: int) -> bytes:
            reads.append(length)
            return pread(descriptor, length, offset)

        monkeypatch.setattr(os, "pread", counting)
        warm = Sandbox(ECHO, engine=wasmtime_engine, cache=cache)
        assert warm.compiled_from_cache and warm.call("echo", PAYLOAD) == PAYLOAD
        assert reads and max(reads) < size // 2

    def test_a_module_file_read_before_is_not_read_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The cache remembers the digest of a module file it read, by the file's identity and
        status: a warm load of the unchanged file finds its entry without opening the file."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        module = tmp_path / "echo.wat"
        module.write_text(ECHO.read_text())
        cache = ModuleCache(tmp_path / "cache")
        Sandbox(module, engine=engine, cache=cache)
        opened = _opened_paths(monkeypatch)
        warm = Sandbox(module, engine=engine, cache=cache)
        assert warm.compiled_from_cache and warm.call("echo", PAYLOAD) == PAYLOAD
        assert str(module) not in opened

    def test_a_cold_load_reads_the_module_file_once(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        module = tmp_path / "echo.wasm"
        module.write_bytes(echo_wasm(engine))
        opened = _opened_paths(monkeypatch)
        cold = Sandbox(module, engine=engine, cache=ModuleCache(tmp_path / "cache"))
        assert not cold.compiled_from_cache
        assert opened.count(str(module)) == 1

    def test_full_verification_reads_the_module_file_every_time(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        module = tmp_path / "echo.wat"
        module.write_text(ECHO.read_text())
        cache = ModuleCache(tmp_path / "cache", verify="full")
        Sandbox(module, engine=engine, cache=cache)
        opened = _opened_paths(monkeypatch)
        assert Sandbox(module, engine=engine, cache=cache).compiled_from_cache
        assert opened.count(str(module)) == 1

    def test_a_module_file_changed_since_is_read_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file rewritten with as many bytes, whatever its modification time says (its change
        time moves with every write, and no one can set it), is read again."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        module = tmp_path / "plugin.wat"
        module.write_text(_variant(1))
        before = module.stat()
        cache = ModuleCache(tmp_path / "cache")
        Sandbox(module, engine=engine, cache=cache)
        assert Sandbox(module, engine=engine, cache=cache).compiled_from_cache
        with module.open("r+") as handle:
            handle.write(_variant(2))
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert module.stat().st_size == before.st_size
        assert not Sandbox(module, engine=engine, cache=cache).compiled_from_cache

    def test_the_digest_of_a_file_changed_moments_ago_is_not_remembered(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file written again within one tick of the file system's clock keeps its time
        stamps: a file changed less than SETTLED_AFTER_NS before it is read is read on every
        load, until it has settled."""
        from wasm_plugins.sandbox import _cache

        module = tmp_path / "echo.wat"
        module.write_text(ECHO.read_text())
        status = module.stat()
        changed = max(status.st_mtime_ns, status.st_ctime_ns)
        now = [changed + _cache.SETTLED_AFTER_NS - 1]
        monkeypatch.setattr(_cache, "wall_clock_ns", lambda: now[0])
        cache = ModuleCache(tmp_path / "cache")
        Sandbox(module, engine=engine, cache=cache)
        assert cache.known_digest(str(module), engine) is None
        now[0] += 1
        assert Sandbox(module, engine=engine, cache=cache).compiled_from_cache
        digest = hashlib.sha256(engine.wat_to_wasm(ECHO.read_text())).hexdigest()
        assert cache.known_digest(str(module), engine) == digest

    def test_a_settled_entry_checked_before_is_not_checked_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once an entry file has passed its checks, the cache remembers its identity and
        status: a warm load of the unchanged file checks neither its header nor its samples."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        checks = _entry_checks(monkeypatch)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert checks == ["header", "samples"]
        checks.clear()
        for _ in range(3):
            warm = Sandbox(ECHO, engine=engine, cache=cache)
            assert warm.compiled_from_cache and warm.call("echo", PAYLOAD) == PAYLOAD
        assert checks == []

    def test_an_entry_changed_since_its_check_is_checked_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry rewritten in place with as many bytes and its modification time put back
        (its change time moves all the same) is checked again, and refused when tampered."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        entry = only_entry(cache)
        before = entry.stat()
        data = bytearray(entry.read_bytes())
        data[100] ^= 0xFF
        with entry.open("r+b") as handle:
            handle.write(bytes(data))
        os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert entry.stat().st_size == before.st_size
        checks = _entry_checks(monkeypatch)
        refused = Sandbox(ECHO, engine=engine, cache=cache)
        assert not refused.compiled_from_cache and refused.call("echo", PAYLOAD) == PAYLOAD
        assert "samples" in checks and cache.stats.rejected == 1

    def test_full_verification_checks_every_load(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        cache = ModuleCache(tmp_path, verify="full")
        Sandbox(ECHO, engine=engine, cache=cache)
        checks = _entry_checks(monkeypatch)
        for _ in range(3):
            assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert checks == ["header", "samples"] * 3

    def test_an_entry_changed_moments_ago_is_checked_on_every_load(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry written less than SETTLED_AFTER_NS before it is loaded could be written
        again within the same tick of the file system's clock: it is checked on every load
        until it has settled."""
        from wasm_plugins.sandbox import _cache

        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        status = only_entry(cache).stat()
        changed = max(status.st_mtime_ns, status.st_ctime_ns)
        now = [changed + _cache.SETTLED_AFTER_NS - 1]
        monkeypatch.setattr(_cache, "wall_clock_ns", lambda: now[0])
        checks = _entry_checks(monkeypatch)
        for _ in range(2):
            assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert checks == ["header", "samples"] * 2
        now[0] += 1
        for _ in range(2):
            assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert checks == ["header", "samples"] * 3

    def test_a_warm_load_reuses_the_link_of_the_same_module_and_grants(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Loaded from its entry again with the same grants and the same host functions, a
        module is linked as it was the last time: its imports and exports are not checked
        again."""
        from wasm_plugins.sandbox import _loaded

        offered = builtin_host_functions()
        cache = ModuleCache(tmp_path)
        Sandbox(CLOCK, engine=engine, cache=cache, host_functions=offered, capabilities={"clock"})
        first = Sandbox(
            CLOCK, engine=engine, cache=cache, host_functions=offered, capabilities={"clock"}
        )
        links: list[object] = []
        link_imports = _loaded.link_imports

        def counting(*args: Any, **kwargs: Any) -> Any:
            links.append(args)
            return link_imports(*args, **kwargs)

        monkeypatch.setattr(_loaded, "link_imports", counting)
        warm = Sandbox(
            CLOCK, engine=engine, cache=cache, host_functions=offered, capabilities={"clock"}
        )
        assert warm.compiled_from_cache and links == []
        assert warm.link_plan == first.link_plan
        assert warm.functions == first.functions == ("run",)

    def test_a_warm_load_checks_other_grants_again(self, engine: Engine, tmp_path: Path) -> None:
        """The link of a module is reused only for the same grants: a grant taken away is
        refused as on a cold load, however often the module was loaded with it."""
        offered = builtin_host_functions()
        cache = ModuleCache(tmp_path)
        for _ in range(2):
            Sandbox(
                CLOCK, engine=engine, cache=cache, host_functions=offered, capabilities={"clock"}
            )
        with pytest.raises(SecurityViolation) as denied:
            Sandbox(CLOCK, engine=engine, cache=cache, host_functions=offered)
        assert denied.value.capability == "clock"
        with pytest.raises(ModuleError):
            Sandbox(CLOCK, engine=engine, cache=cache, capabilities={"clock"})

    def test_cold_load_validates_the_original_once(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """The original module is validated once, before the rewrite; the rewritten module only
        as the engine compiles it; a warm load not at all."""
        calls: list[bytes] = []
        validate = engine.validate
        monkeypatch.setattr(engine, "validate", lambda wasm: calls.append(wasm) or validate(wasm))
        cache = ModuleCache(tmp_path)
        for _ in range(2):
            assert Sandbox(ECHO, engine=engine, cache=cache).call("echo", PAYLOAD) == PAYLOAD
        assert len(calls) == 1


class TestKeptModules:
    """A settled entry's module is kept (a bounded number of them): loading it again neither
    opens the entry nor deserializes it, while the entry file stays the very same file."""

    @staticmethod
    def _deserializations(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """Every deserialization by ``engine`` from now on."""
        return _spied(monkeypatch, engine, {"deserialize": "bytes", "deserialize_file": "file"})

    def _settled(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
    ) -> ModuleCache:
        """A cache whose entry of the echo module was loaded once since it was written."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        cache = ModuleCache(tmp_path / "cache", **options)
        Sandbox(ECHO, engine=engine, cache=cache)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        return cache

    def test_a_settled_entry_is_neither_opened_nor_deserialized_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = self._settled(engine, tmp_path, monkeypatch)
        calls = self._deserializations(engine, monkeypatch)
        checks = _entry_checks(monkeypatch)
        opened = _opened_paths(monkeypatch)
        for _ in range(3):
            warm = Sandbox(ECHO, engine=engine, cache=cache)
            assert warm.compiled_from_cache and warm.call("echo", PAYLOAD) == PAYLOAD
        assert calls == [] and checks == []
        assert not [path for path in opened if path.startswith(str(cache.entries))]
        assert cache.stats.hits == 4

    def test_a_kept_module_runs_in_another_thread(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = self._settled(engine, tmp_path, monkeypatch)
        results: list[Any] = []

        def load_and_call() -> None:
            warm = Sandbox(ECHO, engine=engine, cache=cache)
            results.append((warm.compiled_from_cache, warm.call("echo", PAYLOAD)))
            warm.close()

        thread = threading.Thread(target=load_and_call)
        thread.start()
        thread.join()
        assert results == [(True, PAYLOAD)]

    def test_full_verification_keeps_no_module(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = self._settled(engine, tmp_path, monkeypatch, verify="full")
        calls = self._deserializations(engine, monkeypatch)
        for _ in range(2):
            assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert len(calls) == 2

    def test_an_entry_replaced_by_a_link_is_refused(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The kept module is not used when its entry became a symbolic link, even to a copy
        of the very same entry: the link is refused as on any load."""
        cache = self._settled(engine, tmp_path, monkeypatch)
        entry = only_entry(cache)
        copy = tmp_path / "copy"
        copy.write_bytes(entry.read_bytes())
        entry.unlink()
        entry.symlink_to(copy)
        calls = self._deserializations(engine, monkeypatch)
        refused = Sandbox(ECHO, engine=engine, cache=cache)
        assert not refused.compiled_from_cache and refused.call("echo", PAYLOAD) == PAYLOAD
        assert cache.stats.rejected == 1 and calls == []
        assert not entry.is_symlink()

    def test_an_entry_replaced_by_another_file_is_checked_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A good copy put in the entry's place is checked before it is used; a tampered one
        of the same size is refused and never deserialized."""
        cache = self._settled(engine, tmp_path, monkeypatch)
        entry = only_entry(cache)
        good = entry.read_bytes()
        replacement = tmp_path / "replacement"
        replacement.write_bytes(good)
        os.replace(replacement, entry)
        checks = _entry_checks(monkeypatch)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert checks == ["header", "samples"]
        tampered = bytearray(good)
        tampered[100] ^= 0xFF
        replacement.write_bytes(bytes(tampered))
        os.replace(replacement, entry)
        calls = self._deserializations(engine, monkeypatch)
        refused = Sandbox(ECHO, engine=engine, cache=cache)
        assert not refused.compiled_from_cache and refused.call("echo", PAYLOAD) == PAYLOAD
        assert cache.stats.rejected == 1 and calls == []

    def test_an_entry_removed_is_compiled_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        cache = self._settled(engine, tmp_path, monkeypatch)
        only_entry(cache).unlink()
        again = Sandbox(ECHO, engine=engine, cache=cache)
        assert not again.compiled_from_cache and again.call("echo", PAYLOAD) == PAYLOAD
        assert cache.clear() == 1
        assert not Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache

    def test_the_modules_kept_are_bounded(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the bound, the module loaded longest ago is no longer kept: loading it again
        deserializes its entry (without checking it again)."""
        monkeypatch.setattr("wasm_plugins.sandbox._cache.SETTLED_AFTER_NS", 0)
        monkeypatch.setattr("wasm_plugins.sandbox._cache._MODULES_KEPT", 2)
        cache = ModuleCache(tmp_path / "cache")
        for number in range(3):
            for _ in range(2):
                Sandbox(_variant(number), engine=engine, cache=cache)
        calls = self._deserializations(engine, monkeypatch)
        checks = _entry_checks(monkeypatch)
        for number in (2, 1):
            assert Sandbox(_variant(number), engine=engine, cache=cache).compiled_from_cache
        assert calls == []
        assert Sandbox(_variant(0), engine=engine, cache=cache).compiled_from_cache
        assert len(calls) == 1 and checks == []

    def test_a_large_entry_is_not_kept(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("wasm_plugins.sandbox._cache._KEPT_MODULE_SIZE", 16)
        cache = self._settled(engine, tmp_path, monkeypatch)
        calls = self._deserializations(engine, monkeypatch)
        checks = _entry_checks(monkeypatch)
        for _ in range(2):
            assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert len(calls) == 2 and checks == []

    def test_a_process_exits_quietly_with_modules_kept(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        """Kept modules go before the interpreter tears its modules down: no finalizer of an
        engine's object fails at exit."""
        script = (
            "import sys\n"
            "from wasm_plugins.engine import get_engine\n"
            "from wasm_plugins.sandbox import Sandbox, ModuleCache, _cache\n"
            "_cache.SETTLED_AFTER_NS = 0\n"
            "cache = ModuleCache(sys.argv[2])\n"
            "for _ in range(3):\n"
            "    Sandbox(open(sys.argv[3]).read(), engine=get_engine(sys.argv[1]), cache=cache)\n"
            "assert cache._kept\n"
        )
        done = _child(script, engine.name, str(tmp_path), str(ECHO))
        assert done.returncode == 0, done.stderr
        assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr

    def test_warm_loads_map_no_more_memory(self, wasmer_engine: Engine, tmp_path: Path) -> None:
        """wasmer 1.1 never unmaps the code of a module it deserialized (two mappings a load,
        and a process has some 65,000): loading a settled entry again and again adds none."""
        script = (
            "import sys\n"
            "from pathlib import Path\n"
            "from wasm_plugins.engine import get_engine\n"
            "from wasm_plugins.sandbox import Limits, LoadedModule, ModuleCache, _cache\n"
            "_cache.SETTLED_AFTER_NS = 0\n"
            "engine = get_engine('wasmer')\n"
            "cache = ModuleCache(sys.argv[1])\n"
            "def load():\n"
            "    loaded = LoadedModule.load(\n"
            "        Path(sys.argv[2]), engine=engine, limits=Limits(memory='1 MiB'), cache=cache\n"
            "    )\n"
            "    assert loaded.compiled_from_cache or cache.stats.misses == 1\n"
            "for _ in range(3):\n"
            "    load()\n"
            "def mappings():\n"
            "    with open('/proc/self/maps') as maps:\n"
            "        return len(maps.readlines())\n"
            "before = mappings()\n"
            "for _ in range(500):\n"
            "    load()\n"
            "print(mappings() - before)\n"
        )
        if not Path("/proc/self/maps").exists():
            pytest.skip("counts the mappings /proc/self/maps lists")
        module = tmp_path / "echo.wat"
        module.write_text(ECHO.read_text())
        done = _child(script, str(tmp_path / "cache"), str(module))
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) < 50


def _child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with these arguments (a crash fails the test, not the
    run); its output as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class TestBadEntries:
    """Every bad entry is compiled again and replaced; the sandbox works all the same."""

    def _cached(self, engine: Engine, tmp_path: Path) -> tuple[ModuleCache, Path]:
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        return cache, only_entry(cache)

    def _reload(self, engine: Engine, cache: ModuleCache) -> Sandbox:
        sandbox = Sandbox(ECHO, engine=engine, cache=cache)
        assert not sandbox.compiled_from_cache
        assert sandbox.call("echo", PAYLOAD) == PAYLOAD
        return sandbox

    def _replaced(self, engine: Engine, cache: ModuleCache) -> None:
        """The entry written in place of the bad one is good: the next load hits."""
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache

    def test_corrupt_payload(self, engine: Engine, tmp_path: Path) -> None:
        """A flipped byte in the sampled parts of the compiled code fails the samples' digest:
        never deserialized."""
        cache, entry = self._cached(engine, tmp_path)
        data = bytearray(entry.read_bytes())
        for offset in (100, len(_payload(bytes(data))) - 100):
            corrupt = bytearray(data)
            corrupt[offset] ^= 0xFF
            entry.write_bytes(bytes(corrupt))
            self._reload(engine, cache)
        assert cache.stats.rejected == 2
        self._replaced(engine, cache)

    def test_full_verification(self, engine: Engine, tmp_path: Path) -> None:
        """With verify="full", a flipped byte anywhere in the payload fails the whole payload's
        digest (the samples' too when they cover it)."""
        _, entry = self._cached(engine, tmp_path)
        data = bytearray(entry.read_bytes())
        data[len(_payload(bytes(data))) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
        full = ModuleCache(tmp_path, verify="full")
        self._reload(engine, full)
        assert full.stats.rejected == 1
        self._replaced(engine, full)

    def test_corrupt_header(self, engine: Engine, tmp_path: Path) -> None:
        """A flipped byte in the header makes it unreadable or names something else."""
        cache, entry = self._cached(engine, tmp_path)
        data = bytearray(entry.read_bytes())
        data[-100] ^= 0xFF
        entry.write_bytes(bytes(data))
        self._reload(engine, cache)
        assert cache.stats.rejected == 1
        self._replaced(engine, cache)

    def test_truncated_entry(self, engine: Engine, tmp_path: Path) -> None:
        """An entry cut short (a crash while writing, a full disk) is not used."""
        cache, entry = self._cached(engine, tmp_path)
        data = entry.read_bytes()
        for size in (len(data) - 1, len(data) // 2, 20, 3, 0):
            entry.write_bytes(data[:size])
            self._reload(engine, cache)
        assert cache.stats.rejected == 5
        self._replaced(engine, cache)

    def test_tampered_payload_with_a_matching_size(self, engine: Engine, tmp_path: Path) -> None:
        """Code replaced by other bytes of the same size fails the digest."""
        cache, entry = self._cached(engine, tmp_path)
        data = entry.read_bytes()
        header_end = len(data) - json.loads(_header(data))["payload_size"]
        entry.write_bytes(data[:header_end] + bytes(len(data) - header_end))
        self._reload(engine, cache)
        assert cache.stats.rejected == 1

    def test_garbage_with_a_valid_digest(self, engine: Engine, tmp_path: Path) -> None:
        """An entry whose digest matches but which the engine refuses is compiled again."""
        cache, entry = self._cached(engine, tmp_path)
        _rewrite_payload(entry, b"not compiled code at all" * 10)
        self._reload(engine, cache)
        assert cache.stats.rejected == 1
        self._replaced(engine, cache)

    def test_foreign_entry(self, engine: Engine, tmp_path: Path) -> None:
        """An entry of another module put under this module's name is refused by its header."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        echo_entry = only_entry(cache)
        other = Sandbox(EXAMPLES.parent / "conformance" / "abi.wat", engine=engine, cache=cache)
        other_key = _key(other, engine, EXAMPLES.parent / "conformance" / "abi.wat")
        cache.path(other_key).write_bytes(echo_entry.read_bytes())
        reloaded = Sandbox(EXAMPLES.parent / "conformance" / "abi.wat", engine=engine, cache=cache)
        assert not reloaded.compiled_from_cache
        assert reloaded.call("upper", "abc") == "ABC"
        assert cache.stats.rejected == 1

    def test_entry_of_another_cache(self, engine: Engine, tmp_path: Path) -> None:
        """An entry copied from another cache directory (another key signed its header) is
        refused before its payload is read, and compiled again."""
        first = ModuleCache(tmp_path / "first")
        second = ModuleCache(tmp_path / "second")
        Sandbox(ECHO, engine=engine, cache=first)
        Sandbox(ECHO, engine=engine, cache=second)
        entry = only_entry(first)
        (second.entries / entry.name).write_bytes(entry.read_bytes())
        copied = Sandbox(ECHO, engine=engine, cache=second)
        assert not copied.compiled_from_cache
        assert second.stats.rejected == 1
        self._replaced(engine, second)

    def test_engine_version_change(self, engine: Engine, tmp_path: Path) -> None:
        """After an engine upgrade the old entry is not used: the key changes, the module is
        compiled again; an entry left under the new key by the old version is refused."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        old_entry = only_entry(cache)
        upgraded = OtherVersion(engine, engine.version + "+upgrade")
        sandbox = Sandbox(ECHO, engine=upgraded, cache=cache)
        assert not sandbox.compiled_from_cache
        assert cache.stats.misses == 2
        new_key = _key(sandbox, upgraded, ECHO)
        cache.path(new_key).write_bytes(old_entry.read_bytes())  # stale: made by the old one
        stale = Sandbox(ECHO, engine=upgraded, cache=cache)
        assert not stale.compiled_from_cache
        assert cache.stats.rejected == 1
        assert Sandbox(ECHO, engine=upgraded, cache=cache).compiled_from_cache

    def test_fuel_setting_is_checked(self, wasmtime_engine: Engine, tmp_path: Path) -> None:
        """Code compiled with fuel metering is never loaded for a module without it."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=wasmtime_engine, cache=cache, limits=_limits(fuel=10_000))
        metered = only_entry(cache)
        plain = Sandbox(ECHO, engine=wasmtime_engine, cache=cache)
        plain_key = _key(plain, wasmtime_engine, ECHO)
        cache.path(plain_key).write_bytes(metered.read_bytes())
        again = Sandbox(ECHO, engine=wasmtime_engine, cache=cache)
        assert not again.compiled_from_cache and cache.stats.rejected == 1


class TestDirectory:
    def test_private_directory(self, engine: Engine, tmp_path: Path) -> None:
        """The directories the cache makes have mode 0700."""
        made = ModuleCache(tmp_path / "new" / "cache")
        Sandbox(ECHO, engine=engine, cache=made)
        assert stat.S_IMODE(made.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(made.entries.stat().st_mode) == 0o700

    @pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
    def test_a_shared_directory_is_not_used_nor_changed(
        self, engine: Engine, tmp_path: Path, mode: int
    ) -> None:
        """An existing directory others may write to (a shared folder given by mistake) keeps
        its mode, and the cache does not use it: the module is compiled all the same."""
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, mode)
        cache = ModuleCache(shared)
        assert Sandbox(ECHO, engine=engine, cache=cache).call("echo", PAYLOAD) == PAYLOAD
        assert stat.S_IMODE(shared.stat().st_mode) == mode
        assert list(shared.iterdir()) == []
        assert cache.stats.writes == 0

    def test_entries_are_private_files(self, engine: Engine, tmp_path: Path) -> None:
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        assert stat.S_IMODE(only_entry(cache).stat().st_mode) & 0o077 == 0
        assert not [p for p in cache.entries.iterdir() if p.name.startswith(".tmp-")]

    def test_unusable_directory_compiles_anyway(self, engine: Engine, tmp_path: Path) -> None:
        """A cache path that is a file: the cache is skipped, the sandbox loads."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        cache = ModuleCache(blocker)
        sandbox = Sandbox(ECHO, engine=engine, cache=cache)
        assert sandbox.call("echo", PAYLOAD) == PAYLOAD
        assert cache.stats.writes == 0

    def test_directory_removed_while_in_use(self, engine: Engine, tmp_path: Path) -> None:
        """A cache directory removed under a running host (a user clearing ~/.cache) costs one
        entry: the module is compiled anyway, and the directory is made again."""
        import shutil

        cache = ModuleCache(tmp_path / "cache")
        Sandbox(ECHO, engine=engine, cache=cache)
        shutil.rmtree(tmp_path / "cache")
        assert Sandbox(ECHO, engine=engine, cache=cache).call("echo", PAYLOAD) == PAYLOAD
        assert cache.stats.errors == 1
        Sandbox(ECHO, engine=engine, cache=cache)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700

    def test_disabled_cache(self, engine: Engine, tmp_path: Path) -> None:
        """A disabled cache compiles every time and writes nothing."""
        cache = ModuleCache(tmp_path / "never", enabled=False)
        for _ in range(2):
            assert not Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert not (tmp_path / "never").exists()
        assert cache.stats.hits == cache.stats.writes == 0

    def test_clear(self, engine: Engine, tmp_path: Path) -> None:
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        assert cache.clear() == 1
        assert not Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache


class TestPlantedFiles:
    """Links and files someone else put in the cache are never followed, used or deleted."""

    def test_a_planted_entries_link(self, engine: Engine, tmp_path: Path) -> None:
        """compiled-v1 as a symlink to another folder: the cache is not used, the target's mode
        and files stay as they are, and clear() deletes nothing there."""
        target = tmp_path / "victim"
        target.mkdir()
        os.chmod(target, 0o755)
        keep = target / ("a" * 64)
        keep.write_text("precious")
        cache = ModuleCache(tmp_path / "cache")
        cache.directory.mkdir(mode=0o700)
        cache.entries.symlink_to(target)
        assert Sandbox(ECHO, engine=engine, cache=cache).call("echo", PAYLOAD) == PAYLOAD
        assert cache.stats.writes == 0
        assert cache.clear() == 0
        assert keep.read_text() == "precious"
        assert sorted(p.name for p in target.iterdir()) == [keep.name]
        assert stat.S_IMODE(target.stat().st_mode) == 0o755

    def test_a_planted_entry_link(self, engine: Engine, tmp_path: Path) -> None:
        """An entry that is a symlink (to a valid entry elsewhere) is not read; writing the
        entry replaces the link and leaves its target alone."""
        source = ModuleCache(tmp_path / "elsewhere")
        Sandbox(ECHO, engine=engine, cache=source)
        elsewhere = only_entry(source)
        before = elsewhere.read_bytes()
        cache = ModuleCache(tmp_path / "cache")
        cache.entries.mkdir(parents=True, mode=0o700)
        os.chmod(cache.directory, 0o700)
        (cache.entries / elsewhere.name).symlink_to(elsewhere)
        sandbox = Sandbox(ECHO, engine=engine, cache=cache)
        assert not sandbox.compiled_from_cache
        assert cache.stats.rejected == 1
        assert not (cache.entries / elsewhere.name).is_symlink()
        assert elsewhere.read_bytes() == before

    def test_clear_deletes_only_its_entries(self, engine: Engine, tmp_path: Path) -> None:
        """Files that are not entries, and links, survive clear()."""
        cache = ModuleCache(tmp_path / "cache")
        Sandbox(ECHO, engine=engine, cache=cache)
        notes = cache.entries / "notes.txt"
        notes.write_text("mine")
        outside = tmp_path / "outside.txt"
        outside.write_text("not the cache's")
        (cache.entries / ("b" * 64)).symlink_to(outside)
        assert cache.clear() == 1
        assert notes.exists() and outside.read_text() == "not the cache's"
        assert (cache.entries / ("b" * 64)).is_symlink()


class TestSizeBound:
    """The cache keeps at most max_size bytes: old engine versions go first, then the least
    recently used."""

    @staticmethod
    def variant(number: int) -> str:
        """The echo module made different by one global (so that it has an entry of its own)."""
        return ECHO.read_text().replace("(module", f"(module (global i32 (i32.const {number}))", 1)

    def fill(self, engine: Engine, cache: ModuleCache, count: int) -> list[Path]:
        """Entries for the first ``count`` variants; their paths, in order."""
        paths = []
        for number in range(count):
            before = set(cache.entries.iterdir()) if cache.entries.exists() else set()
            Sandbox(self.variant(number), engine=engine, cache=cache)
            paths.extend(p for p in set(cache.entries.iterdir()) - before if p.name[0] != ".")
        return paths

    def test_least_recently_used_goes_first(self, engine: Engine, tmp_path: Path) -> None:
        """Past the bound, the entry used longest ago is evicted; one just used is kept."""
        cache = ModuleCache(tmp_path / "cache", max_size=None)
        first, second, third = self.fill(engine, cache, 3)
        for age, path in enumerate((first, second, third)):
            os.utime(path, ns=(10**18 + age, 10**18 + age))
        size = first.stat().st_size
        bounded = ModuleCache(tmp_path / "cache", max_size=int(size * 3.5))
        assert Sandbox(self.variant(0), engine=engine, cache=bounded).compiled_from_cache
        Sandbox(self.variant(3), engine=engine, cache=bounded)
        assert first.exists() and not second.exists()
        assert bounded.stats.evicted >= 1
        total = sum(p.stat().st_size for p in bounded.entries.iterdir())
        assert total <= bounded.max_size

    def test_an_entry_used_in_the_last_minute_is_not_marked_again(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Least recently used is told apart by the minute: an entry's time is renewed when it
        is loaded at least a minute after the last renewal, not on every load."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        entry = only_entry(cache)
        marked: list[object] = []
        utime = os.utime

        def counting(path: Any, *args: Any, **kwargs: Any) -> None:
            marked.append(path)
            utime(path, *args, **kwargs)

        monkeypatch.setattr(os, "utime", counting)
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert marked == []
        minute_ago = entry.stat().st_mtime_ns - 60 * 10**9
        utime(entry, ns=(minute_ago, minute_ago))
        assert Sandbox(ECHO, engine=engine, cache=cache).compiled_from_cache
        assert len(marked) == 1 and entry.stat().st_mtime_ns > minute_ago

    def test_old_engine_versions_go_first(self, engine: Engine, tmp_path: Path) -> None:
        """An entry an older version of the engine made is evicted before any current one,
        even a less recently used one."""
        cache = ModuleCache(tmp_path / "cache", max_size=None)
        (current,) = self.fill(engine, cache, 1)
        Sandbox(ECHO, engine=OtherVersion(engine, "0.0.1-old"), cache=cache)  # type: ignore[arg-type]
        (old,) = [p for p in cache.entries.iterdir() if p != current and p.name[0] != "."]
        os.utime(current, ns=(10**18, 10**18))
        os.utime(old, ns=(2 * 10**18, 2 * 10**18))
        bounded = ModuleCache(tmp_path / "cache", max_size=current.stat().st_size * 2 + 10)
        Sandbox(ECHO, engine=engine, cache=bounded)
        assert current.exists() and not old.exists()

    def test_the_bound_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WASM_PLUGINS_CACHE_MAX_SIZE sets the default cache's bound."""
        monkeypatch.setenv("WASM_PLUGINS_CACHE_MAX_SIZE", "2 MiB")
        assert ModuleCache.from_environment().max_size == 2 * 1024 * 1024


class TestLocation:
    def test_override_and_switch(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "here"))
        assert default_directory() == tmp_path / "here"
        assert ModuleCache.from_environment().enabled
        for off in ("off", "0", "false", "NO"):
            monkeypatch.setenv(CACHE_SWITCH_VARIABLE, off)
            assert not ModuleCache.from_environment().enabled
            assert PluginHost(blocked=()).module_cache is None

    @pytest.mark.skipif(sys.platform != "linux", reason="the Linux locations")
    def test_linux_locations(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv(CACHE_DIR_VARIABLE, raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert default_directory() == tmp_path / "wasm-plugins"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")
        assert default_directory() == Path.home() / ".cache" / "wasm-plugins"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert default_directory() == Path.home() / ".cache" / "wasm-plugins"


class TestConcurrentWriters:
    def test_threads(self, engine: Engine, tmp_path: Path) -> None:
        """Threads that compile and write the same entry at once, each with its own cache
        object, never leave a bad entry nor a temporary file, and readers meanwhile see a
        good entry or none."""
        wasm = echo_wasm(engine)
        start = threading.Barrier(6)
        failures: list[BaseException] = []
        caches = [ModuleCache(tmp_path) for _ in range(6)]

        def write(cache: ModuleCache) -> None:
            try:
                start.wait()
                for _ in range(5):
                    cache.compile(engine, wasm, refresh=True)
                    found = cache.compile(engine, wasm)
                    assert found.module.exports
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(cache,)) for cache in caches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        assert sum(cache.stats.rejected for cache in caches) == 0
        assert not [p for p in caches[0].entries.iterdir() if p.name.startswith(".tmp-")]
        assert ModuleCache(tmp_path).compile(engine, wasm).hit

    def test_processes(self, engine: Engine, tmp_path: Path) -> None:
        """Processes that fill the same cache at once all succeed and leave one good entry."""
        script = (
            "import sys\n"
            "from wasm_plugins import ModuleCache\n"
            "from wasm_plugins.engine import get_engine\n"
            "engine = get_engine(sys.argv[1])\n"
            "wasm = engine.wat_to_wasm(open(sys.argv[3]).read())\n"
            "cache = ModuleCache(sys.argv[2])\n"
            "for _ in range(5):\n"
            "    cache.compile(engine, wasm, refresh=True)\n"
            "    assert cache.compile(engine, wasm).module.exports\n"
            "assert cache.stats.rejected == 0, cache.stats\n"
        )
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, engine.name, str(tmp_path), str(ECHO)],
                env=environment,
            )
            for _ in range(4)
        ]
        assert [process.wait(timeout=120) for process in processes] == [0] * 4
        cache = ModuleCache(tmp_path)
        assert len([p for p in cache.entries.iterdir() if p.name[0] != "."]) == 1
        assert cache.compile(engine, echo_wasm(engine)).hit


class TestHost:
    def _host(self, engine: Engine, cache: Any) -> PluginHost:
        host = PluginHost(engine=engine.name, blocked=(), module_cache=cache)
        host.load({"name": "echo", "module": {"path": str(ECHO)}})
        return host

    def test_host_uses_its_cache(self, engine: Engine, tmp_path: Path) -> None:
        with self._host(engine, tmp_path) as host:
            assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
            assert host.module_cache is not None and host.module_cache.directory == tmp_path
            assert host.module_cache.stats.writes == 1
        with self._host(engine, ModuleCache(tmp_path)) as host:
            assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
            assert host.sandbox("echo").compiled_from_cache

    def test_host_without_cache(self, engine: Engine, tmp_path: Path) -> None:
        for setting in (False, None, ModuleCache(tmp_path, enabled=False)):
            with self._host(engine, setting) as host:
                assert host.module_cache is None
                assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
        assert not any(tmp_path.iterdir())

    def test_retry_recompile_bypasses_the_entry(self, engine: Engine, tmp_path: Path) -> None:
        """Retry(recompile=True): the next sandbox compiles, ignoring and replacing the entry."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)  # an entry exists before the host starts

        class CompileOnce:
            failed = False

            @hookimpl(wrapper=True, tryfirst=True)
            def wasm_plugins_attempt(self, attempt: Any) -> Any:
                if not self.failed:
                    self.failed = True
                    yield
                    raise CompilationError(message="compiled code was bad")
                return (yield)

            @hookimpl(tryfirst=True)
            def wasm_plugins_recovery_action(self, error: Any, call: Any) -> Any:
                return Retry(recompile=True, delay=0.0, reason="test")

        with self._host(engine, cache) as host:
            host.register_policy(CompileOnce())
            outcome = host.invoke("echo", "echo", PAYLOAD)
            assert (outcome.value, outcome.attempts) == (PAYLOAD, 2)
            assert not host.sandbox("echo").compiled_from_cache
        assert cache.stats.hits == 1  # the first attempt's sandbox
        assert cache.stats.writes == 2  # the entry replaced by the second
        with self._host(engine, cache) as host:
            assert host.call("echo", "echo", PAYLOAD) == PAYLOAD
            assert host.sandbox("echo").compiled_from_cache


class TestProcessSandbox:
    def test_ships_the_cached_code(self, engine: Engine, tmp_path: Path) -> None:
        """A worker gets the cached entry's code as is: loaded, not compiled, not re-serialized."""
        cache = ModuleCache(tmp_path)
        Sandbox(ECHO, engine=engine, cache=cache)
        payload = _payload(only_entry(cache).read_bytes())
        with WorkerPool(1, name="cache-test") as pool:
            remote = ProcessSandbox(ECHO, engine=engine, cache=cache, pool=pool)
            assert remote.compiled_from_cache
            assert remote.loaded.serialized == payload
            assert remote.call("echo", PAYLOAD) == PAYLOAD
            remote.close()


def _variant(number: int) -> str:
    """The echo module made different by one global (the same size for one-digit numbers)."""
    return ECHO.read_text().replace("(module", f"(module (global i32 (i32.const {number}))", 1)


def _opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened from now on, by ``open`` or ``os.open``."""
    import builtins

    opened: list[str] = []
    open_file, open_descriptor = builtins.open, os.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file) if isinstance(file, str | os.PathLike) else repr(file))
        return open_file(file, *args, **kwargs)

    def spy_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return open_descriptor(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return opened


def _entry_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The checks of entries' headers and samples made from now on, in order."""
    from wasm_plugins.sandbox import _cache

    return _spied(monkeypatch, _cache, {"_read_header": "header", "_check_payload": "samples"})


def _spied(monkeypatch: pytest.MonkeyPatch, owner: Any, labels: dict[str, str]) -> list[str]:
    """The calls of ``owner``'s functions named in ``labels`` from now on, each by its label,
    in order (the functions still run)."""
    calls: list[str] = []
    for name, label in labels.items():
        original = getattr(owner, name)

        def spy(*args: Any, original: Any = original, label: str = label, **kwargs: Any) -> Any:
            calls.append(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    return calls


def _limits(**changes: Any) -> Any:
    from wasm_plugins.sandbox import Limits

    return Limits(**changes)


_TRAILER = 32 + 4 + 8
"""After the header: its HMAC-SHA256, its length, the magic."""


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[-12:-8], "big")


def _header(data: bytes) -> bytes:
    """The JSON header, which follows the payload (then its HMAC, its length and the magic)."""
    return data[-_TRAILER - _header_length(data) : -_TRAILER]


def _payload(data: bytes) -> bytes:
    return data[: -_TRAILER - _header_length(data)]


def _rewrite_payload(entry: Path, payload: bytes) -> None:
    """Replace an entry's payload and fix its header to match, signed with the cache's own key
    (a well-formed lie by someone who can read the cache)."""
    import hashlib
    import hmac

    from wasm_plugins.sandbox._cache import _samples_digest

    data = entry.read_bytes()
    header = json.loads(_header(data))
    header["payload_size"] = len(payload)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    header["payload_samples"] = _samples_digest(payload, len(payload))
    encoded = json.dumps(header, sort_keys=True).encode()
    mac = hmac.new((entry.parent / ".hmac-key").read_bytes(), encoded, hashlib.sha256).digest()
    entry.write_bytes(payload + encoded + mac + len(encoded).to_bytes(4, "big") + data[-8:])


def _key(sandbox: Sandbox, engine: Engine, source: Path, **limits: Any) -> str:
    """The key a sandbox looks up for ``source`` with these limits."""
    from wasm_plugins.sandbox._loaded import _preparation

    wasm = engine.wat_to_wasm(source.read_text())
    fuel = sandbox.loaded.limits.fuel is not None
    preparation = _preparation(engine, sandbox.loaded.limits)
    return ModuleCache.key(engine, wasm, fuel=fuel, preparation=preparation)
