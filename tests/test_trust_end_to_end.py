"""A greedy plugin installed as a distribution, found through real entry-point discovery, under the
default trust policy, under an explicit grant, and clamped to a smaller grant.

Its manifest asks for a writable WASI preopen of the test's temporary root (where a secret file
lies), the ``kv`` capability and 1 GiB of memory. The host's policy decides what it gets.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from tests._distributions import install_distribution
from tests.conftest import ROOT
from wasm_plugins import ContextualError, PluginError, PluginHost
from wasm_plugins._units import GiB, MiB
from wasm_plugins.engine import Engine

GREEDY_WAT = r"""(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasm_plugins" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "wasm_plugins" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "secret.txt")
  (data (i32.const 80) "planted.txt")
  (data (i32.const 96) "key")
  (data (i32.const 112) "value")
  (data (i32.const 128) "ENG")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 16384))
  (func (export "wp_free") (param i32 i32))
  (func $out (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  ;; The content of secret.txt in the first preopen, or "E".
  (func (export "read_secret") (param i32 i32) (result i64)
    (local $fd i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (return (call $out (i32.const 128) (i32.const 1)))))
    (local.set $fd (i32.load (i32.const 16)))
    (i32.store (i32.const 24) (i32.const 4096))
    (i32.store (i32.const 28) (i32.const 1024))
    (if (call $fd_read (local.get $fd) (i32.const 24) (i32.const 1) (i32.const 32))
      (then (return (call $out (i32.const 128) (i32.const 1)))))
    (drop (call $fd_close (local.get $fd)))
    (call $out (i32.const 4096) (i32.load (i32.const 32))))
  ;; Creates planted.txt beside it and writes "value": "value", or "E".
  (func (export "plant") (param i32 i32) (result i64)
    (local $fd i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 80) (i32.const 11)
          (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (return (call $out (i32.const 128) (i32.const 1)))))
    (local.set $fd (i32.load (i32.const 16)))
    (i32.store (i32.const 24) (i32.const 112))
    (i32.store (i32.const 28) (i32.const 5))
    (if (call $fd_write (local.get $fd) (i32.const 24) (i32.const 1) (i32.const 32))
      (then
        (drop (call $fd_close (local.get $fd)))
        (return (call $out (i32.const 128) (i32.const 1)))))
    (drop (call $fd_close (local.get $fd)))
    (call $out (i32.const 112) (i32.const 5)))
  ;; Stores key = value in the plugin's store and reads it back.
  (func (export "kv") (param i32 i32) (result i64)
    (drop (call $kv_set (i32.const 96) (i32.const 3) (i32.const 112) (i32.const 5)))
    (call $out (i32.const 4096)
      (call $kv_get (i32.const 96) (i32.const 3) (i32.const 4096) (i32.const 64))))
  ;; Grows memory by 100 MiB: "G" when granted, "N" when refused.
  (func (export "grow") (param i32 i32) (result i64)
    (if (result i64) (i32.eq (memory.grow (i32.const 1600)) (i32.const -1))
      (then (call $out (i32.const 129) (i32.const 1)))
      (else (call $out (i32.const 130) (i32.const 1))))))
"""

REGISTER = """from importlib.resources import files

from wasm_plugins import hookimpl


@hookimpl
def wasm_plugins_register_plugins(register):
    register(files(__name__) / "plugin.toml")
"""

SECRET = "top secret\n"


class Installed:
    """The temporary root (with its secret), and the installed greedy distribution."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.secret = self.root / "secret.txt"
        self.secret.write_text(SECRET)
        os.utime(self.secret, ns=(10**18, 10**18))
        self.public = self.root / "public"
        self.public.mkdir()
        self.site = tmp_path / "site"
        manifest = f"""name = "greedy"
version = "1.0.0"
description = "Asks for far more than it needs."
engine = "wasmtime"
codec = "raw"
capabilities = ["log", "kv", "wasi"]

[module]
resource = "greedy.wat"

[limits]
memory = "1 GiB"

[wasi]
preopens = [{{ host = {str(self.root)!r}, guest = "/root", read_only = false }}]
""".replace("'", '"')
        install_distribution(
            self.site,
            monkeypatch,
            name="greedy-plugin",
            package="greedy_plugin",
            files={"__init__.py": REGISTER, "plugin.toml": manifest, "greedy.wat": GREEDY_WAT},
            entry_points={"greedy": "greedy_plugin"},
        )
        monkeypatch.delenv("WASM_PLUGINS_TRUST", raising=False)
        monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)

    def untouched(self) -> None:
        """The secret is as it was, and nothing was planted anywhere."""
        info = self.secret.stat()
        assert (info.st_atime_ns, info.st_mtime_ns) == (10**18, 10**18), "the secret was read"
        assert self.secret.read_text() == SECRET
        os.utime(self.secret, ns=(10**18, 10**18))
        assert sorted(p.name for p in self.root.iterdir()) == ["public", "secret.txt"]
        assert list(self.public.iterdir()) == []

    def policy(self, text: str) -> Path:
        path = self.site.parent / "trust.toml"
        path.write_text(text)
        return path


@pytest.fixture
def installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wasmtime_engine: Engine
) -> Installed:
    return Installed(tmp_path, monkeypatch)


class TestDefaultPolicy:
    """Under the default policy the plugin is reported and never runs."""

    def test_reported_and_not_callable(self, installed: Installed) -> None:
        """discover() lists a problem naming each thing to grant, with the TOML to add; the
        plugin is not registered, cannot be called, and never touched the secret."""
        with PluginHost.discover(module_cache=False) as host:
            assert "greedy" not in host.plugins
            (problem,) = [p for p in host.problems if "greedy" in p.source]
            assert problem.stage == "trust"
            assert problem.distribution == "greedy-plugin 1.0.0"
            for needed in ("'kv'", "'wasi'", "limits.memory", "wasi.preopens", "1 GiB"):
                assert needed in problem.reason, needed
            assert '[plugins."greedy"]' in problem.reason
            assert 'capabilities = ["kv", "log", "wasi"]' in problem.reason
            for function in ("read_secret", "plant", "kv", "grow"):
                with pytest.raises((PluginError, ContextualError)):
                    host.call("greedy", function, b"")
            assert host.sandboxes() == {}
        installed.untouched()

    def test_the_cli_refuses_it_too(self, installed: Installed) -> None:
        """wasm-plugins call greedy read_secret: a refusal that names the grant, exit 1, no
        secret on the output."""
        environment = {**os.environ, "PYTHONPATH": f"{installed.site}{os.pathsep}{ROOT}"}
        environment.pop("WASM_PLUGINS_TRUST", None)
        result = subprocess.run(
            [sys.executable, "-m", "wasm_plugins.cli", "call", "greedy", "read_secret", "--raw"],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
            timeout=120,
        )
        assert result.returncode != 0
        assert "top secret" not in result.stdout + result.stderr
        assert "kv" in result.stderr and "Traceback" not in result.stderr
        installed.untouched()


class TestExplicitGrant:
    """A policy that grants what it asks lets it run, with exactly that."""

    def test_granted_as_asked(self, installed: Installed) -> None:
        """The full grant: it reads and writes in the root, uses kv and grows past 64 MiB."""
        policy = installed.policy(
            f"""
[plugins.greedy]
capabilities = ["log", "kv", "wasi"]
preopens = [{{ host = "{installed.root}", guest = "/root", read_only = false }}]
limits = {{ memory = "1 GiB" }}
"""
        )
        with PluginHost.discover(trust=str(policy), module_cache=False) as host:
            assert not [p for p in host.problems if "greedy" in p.source]
            granted = host.plugins["greedy"].manifest
            assert granted.capabilities == {"log", "kv", "wasi"}
            assert granted.limits.memory == GiB
            assert host.call("greedy", "read_secret", b"") == SECRET.encode()
            assert host.call("greedy", "plant", b"") == b"value"
            assert host.call("greedy", "kv", b"") == b"value"
            assert host.call("greedy", "grow", b"") == b"G"
        assert (installed.root / "planted.txt").read_text() == "value"

    @pytest.mark.parametrize("isolation", ["auto", "process"])
    def test_clamped_to_a_smaller_grant(self, installed: Installed, isolation: str) -> None:
        """mode = "clamp": it runs with its grant only: a read-only public folder at /root,
        no kv (refused when called), 64 MiB of memory; in this process, or in a worker process
        when the policy sets that isolation floor. The difference is logged once."""
        policy = installed.policy(
            f"""
[plugins.greedy]
mode = "clamp"
isolation = "{isolation}"
capabilities = ["log", "wasi"]
preopens = [{{ host = "{installed.public}", guest = "/root", read_only = true }}]
"""
        )
        records: list[dict[str, Any]] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda message: records.append(message.record), level="WARNING")
        try:
            with PluginHost.discover(trust=policy, module_cache=False) as host:
                granted = host.plugins["greedy"].manifest
                assert granted.isolation == isolation
                assert granted.capabilities == {"log", "wasi"}
                assert granted.limits.memory == 64 * MiB
                assert [(p.host, p.guest, p.read_only) for p in granted.wasi.preopens] == [
                    (str(installed.public), "/root", True)
                ]
                assert host.call("greedy", "read_secret", b"") == b"E"
                assert host.call("greedy", "plant", b"") == b"E"
                assert host.call("greedy", "grow", b"") == b"N"
                with pytest.raises(ContextualError) as caught:
                    host.call("greedy", "kv", b"")
                assert caught.value.error.kind == "security_violation"
                assert caught.value.error.capability == "kv"
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        clamped = [
            r for r in records if r["extra"].get("plugin") == "greedy" and "clamp" in r["message"]
        ]
        assert len(clamped) == 1
        assert "kv" in clamped[0]["message"] and "limits.memory" in clamped[0]["message"]
        installed.untouched()


class TestTrustedLoad:
    """A manifest the host's own code passes to load() is the host's decision."""

    def test_granted_as_written_unless_checked(self, installed: Installed) -> None:
        """host.load(path) grants what the manifest says; check=True applies the policy."""
        manifest_path = installed.site / "greedy_plugin" / "plugin.toml"
        with PluginHost(module_cache=False) as host:
            assert host.load(manifest_path).manifest.limits.memory == GiB
        with PluginHost(module_cache=False) as host, pytest.raises(PluginError) as caught:
            host.load(manifest_path, check=True)
        assert caught.value.kind == "security_violation"
        installed.untouched()


GRANTOR = """from wasm_plugins import hookimpl
from wasm_plugins.trust import Grant, GrantedDirectory

REVIEWED = {DIGEST!r}


@hookimpl
def wasm_plugins_grant(manifest, distribution, digest):
    if manifest.name != "greedy":
        return None
    if digest != REVIEWED:
        raise RuntimeError("not a reviewed build")
    return Grant(
        capabilities=frozenset({{"log", "kv", "wasi"}}),
        preopens=(GrantedDirectory({root!r}, "/root", read_only=False),),
        limits={{"memory": 1 << 30}},
        sha256=digest,
    )
"""


class TestGrantHook:
    """A third party decides through wasm_plugins_grant (here, an allow-list of digests)."""

    def install_grantor(
        self, installed: Installed, monkeypatch: pytest.MonkeyPatch, digest: str
    ) -> None:
        install_distribution(
            installed.site,
            monkeypatch,
            name="grant-service",
            package="grant_service",
            files={"__init__.py": GRANTOR.format(DIGEST=digest, root=str(installed.root))},
            entry_points={"grant-service": "grant_service"},
        )

    def test_the_hook_grants(self, installed: Installed, monkeypatch: pytest.MonkeyPatch) -> None:
        """The hook's Grant replaces the policy's entry: the reviewed module runs as asked."""
        digest = hashlib.sha256(GREEDY_WAT.encode()).hexdigest()
        self.install_grantor(installed, monkeypatch, digest)
        with PluginHost.discover(module_cache=False) as host:
            assert host.plugins["greedy"].review is not None
            assert host.plugins["greedy"].review.digest == digest
            assert host.call("greedy", "kv", b"") == b"value"

    def test_a_failing_hook_refuses(
        self, installed: Installed, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A hook that raises refuses the plugin, with the reason among the problems."""
        self.install_grantor(installed, monkeypatch, "0" * 64)
        with PluginHost.discover(module_cache=False) as host:
            assert "greedy" not in host.plugins
            (problem,) = [p for p in host.problems if p.stage == "trust" and "greedy" in p.reason]
            assert "not a reviewed build" in problem.reason
        installed.untouched()


class TestPinning:
    """A policy that pins a digest refuses any other module, clamp mode or not."""

    @pytest.mark.parametrize("mode", ["refuse", "clamp"])
    def test_another_module_is_refused(self, installed: Installed, mode: str) -> None:
        """The installed module changed since it was pinned: refused, naming both digests."""
        policy = installed.policy(
            f"""
[plugins.greedy]
mode = "{mode}"
capabilities = ["log", "kv", "wasi"]
preopens = [{{ host = "{installed.root}", guest = "/root", read_only = false }}]
limits = {{ memory = "1 GiB" }}
sha256 = "{"ab" * 32}"
"""
        )
        with PluginHost.discover(trust=policy, module_cache=False) as host:
            assert "greedy" not in host.plugins
            (problem,) = [p for p in host.problems if p.stage == "trust" and "greedy" in p.reason]
            assert "ab" * 32 in problem.reason
            assert hashlib.sha256(GREEDY_WAT.encode()).hexdigest() in problem.reason
        installed.untouched()
