"""Extism's ABI: unmodified Extism plugins, every kernel import, bad input, limits, HTTP."""

from __future__ import annotations

import contextlib
import http.server
import json
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from tests.conftest import (
    ALL_ENGINE_NAMES,
    ENGINE_NAMES,
    ROOT,
    engine_named,
    required_engines,
)
from wasm_plugins import PluginHost, cli
from wasm_plugins.engine import Engine, FuncSignature
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    ContextualError,
    ExecutionError,
    ModuleError,
    ResourceLimitExceeded,
    SecurityViolation,
)
from wasm_plugins.isolation import ProcessSandbox, WorkerPool
from wasm_plugins.manifest import Manifest
from wasm_plugins.sandbox import HostCall, HostFunction, Limits, Sandbox
from wasm_plugins.services import HostServices
from wasm_plugins.trust import Grant, TrustPolicy

EXTISM = Path(__file__).parent / "extism"
KITCHEN = EXTISM / "kitchen.wat"
HTTP = EXTISM / "http.wat"
ECHO_ABI_1 = ROOT / "hostapi" / "examples" / "echo.wat"


@pytest.fixture(params=ALL_ENGINE_NAMES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn, wasmer-sdk among them (its Extism kernel runs in-process on
    wasmtime, the plugin in an SDK process)."""
    return engine_named(request.param)


@pytest.fixture(params=ENGINE_NAMES)
def in_process_engine(request: pytest.FixtureRequest) -> Engine:
    """The in-process engines only: for tests moving megabytes through per-byte or per-word
    kernel calls, which on wasmer-sdk are one pipe round trip each (about 0.3 ms; hundreds of
    thousands of them a call)."""
    return engine_named(request.param)


@contextlib.contextmanager
def _only_sink(level: str | None) -> Iterator[None]:
    """loguru with one sink at ``level`` (``None``: no sink at all) while open; the handlers it
    had before (the default stderr one among them) are set aside and put back."""
    core: Any = logger._core  # type: ignore[attr-defined]
    saved, saved_min = dict(core.handlers), core.min_level
    core.handlers.clear()
    core.min_level = float("inf")
    sink = None if level is None else logger.add(lambda message: None, level=level)
    try:
        yield
    finally:
        if sink is not None:
            logger.remove(sink)
        core.handlers.update(saved)
        core.min_level = saved_min


def _kitchen(engine: Engine, **options: Any) -> Sandbox:
    options.setdefault("codec", "raw")
    return Sandbox(KITCHEN, engine=engine, name="kitchen", **options)


class TestSelection:
    def test_auto_detects_extism_from_the_imports(self, engine: Engine) -> None:
        """With abi="auto" (the default) a module importing extism:host/env runs as Extism."""
        sandbox = _kitchen(engine)
        assert sandbox.abi == "extism"
        assert "count_vowels" in sandbox.functions
        assert "_initialize" not in sandbox.functions
        assert sandbox.call_bytes("count_vowels", b"Hello, World!") == b'{"count": 3}'

    def test_explicit_extism(self, engine: Engine) -> None:
        """abi="extism" and the raw codec, as a host app would write it."""
        sandbox = Sandbox(KITCHEN, codec="raw", abi="extism", capabilities=["wasi"], engine=engine)
        assert sandbox.call_bytes("count_vowels", b"aeiou") == b'{"count": 5}'

    @pytest.mark.parametrize("abi", [1, "1", "wasm-plugins", "auto"])
    def test_abi_1_spellings(self, engine: Engine, abi: Any) -> None:
        """abi = 1, as every existing manifest says, still means the wasm-plugins ABI."""
        sandbox = Sandbox(ECHO_ABI_1, engine=engine, abi=abi)
        assert sandbox.abi == "wasm-plugins"
        assert sandbox.call("echo", {"a": 1}) == {"a": 1}

    def test_unknown_abi_is_a_configuration_error(self, engine: Engine) -> None:
        """Any other ABI value names the field and the valid values."""
        with pytest.raises(ConfigurationError) as caught:
            Sandbox(ECHO_ABI_1, engine=engine, abi="wasi-p2")
        assert caught.value.field == "abi"

    def test_extism_module_under_the_other_abi_is_refused(self, engine: Engine) -> None:
        """An Extism plugin forced to the wasm-plugins ABI fails at load, not at call."""
        with pytest.raises(ModuleError):
            _kitchen(engine, abi="wasm-plugins")

    def test_initialize_runs_once_per_instance(self, engine: Engine) -> None:
        """A WASI reactor's _initialize runs before the first call."""
        assert _kitchen(engine).call_bytes("initialized", b"") == b"1"

    def test_declared_function_must_be_an_entry_point(self, engine: Engine) -> None:
        """A manifest function that is not exported as () -> i32 is refused at load."""
        with pytest.raises(ModuleError) as caught:
            _kitchen(engine, functions=["missing"])
        assert caught.value.missing_export == "missing"


class TestKernel:
    def test_error_set_is_a_typed_guest_error(self, engine: Engine) -> None:
        """error_set plus a non-zero return is a runtime error carrying the guest's message."""
        sandbox = _kitchen(engine)
        with pytest.raises(ExecutionError) as caught:
            sandbox.call_bytes("fail", b"")
        assert caught.value.trap == "guest_error"
        assert caught.value.details["message"] == "the input was refused"
        assert caught.value.details["exit_code"] == 1
        assert sandbox.call_bytes("count_vowels", b"a") == b'{"count": 1}'

    def test_non_zero_return_without_message(self, engine: Engine) -> None:
        """A non-zero return alone is a guest error naming the code."""
        with pytest.raises(ExecutionError) as caught:
            _kitchen(engine).call_bytes("exit_code", b"")
        assert caught.value.details["exit_code"] == 3

    def test_config_from_the_caller(self, engine: Engine) -> None:
        """config_get reads the values given to the sandbox; a missing key returns 0."""
        assert _kitchen(engine, config={"greeting": "hi"}).call_bytes("config", b"") == b"hi"
        assert _kitchen(engine, config={}).call_bytes("config", b"") == b"none"

    def test_config_from_the_host_services(self, engine: Engine) -> None:
        """Without config=, the host's configuration of the plugin (manifest merged) is used."""
        services = HostServices(config=lambda plugin: {"greeting": {"plugin": plugin}})
        output = _kitchen(engine, services=services).call_bytes("config", b"")
        assert json.loads(output) == {"plugin": "kitchen"}

    def test_vars_persist_across_calls(self, engine: Engine) -> None:
        """var_set and var_get keep state per instance between calls; a 0 value deletes."""
        sandbox = _kitchen(engine)
        counts = [struct.unpack("<q", sandbox.call_bytes("counter", b""))[0] for _ in range(3)]
        assert counts == [1, 2, 3]
        sandbox.call_bytes("counter_reset", b"")
        assert struct.unpack("<q", sandbox.call_bytes("counter", b""))[0] == 1

    def test_vars_have_a_quota(self, in_process_engine: Engine) -> None:
        """A var larger than the quota is a resource limit, and the plugin stays usable: the
        refusal unwound the plugin halfway, so the next call runs on a fresh instance, with no
        vars."""
        sandbox = _kitchen(in_process_engine)
        sandbox.call_bytes("var_input", struct.pack("<q", 41) + b"x" * 1000)
        assert struct.unpack("<q", sandbox.call_bytes("counter", b"")) == (42,)
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("var_input", b"x" * (2 * 1024 * 1024))
        assert caught.value.resource == "vars"
        assert sandbox.call_bytes("count_vowels", b"e") == b'{"count": 1}'
        assert struct.unpack("<q", sandbox.call_bytes("counter", b"")) == (1,)

    def test_logs_reach_loguru_at_their_levels(self, engine: Engine) -> None:
        """Each log_* import is a loguru record at its level, bound to the plugin's name."""
        records: list[Any] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda m: records.append(m.record), level="TRACE", format="{message}")
        try:
            level = _kitchen(engine).call_bytes("logs", b"{not a format}")
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        assert level == b"0"
        seen = [(r["level"].name, r["message"], r["extra"]["plugin"]) for r in records]
        assert seen == [
            (name, "{not a format}", "kitchen")
            for name in ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
        ]
        assert {r["extra"]["source"] for r in records} == {"guest"}

    def test_log_lines_are_escaped(self, engine: Engine) -> None:
        """A guest cannot forge a second log line or send a terminal escape."""
        records: list[Any] = []
        logger.enable("wasm_plugins")
        sink = logger.add(lambda m: records.append(m.record), level="TRACE", format="{message}")
        try:
            _kitchen(engine).call_bytes("logs", b"one\nFORGED \x1b[31m")
        finally:
            logger.remove(sink)
            logger.disable("wasm_plugins")
        assert all("\n" not in r["message"] and "\x1b" not in r["message"] for r in records)

    @pytest.mark.parametrize(
        ("sink_level", "enabled", "expected"),
        [
            ("TRACE", True, 0),
            ("DEBUG", True, 1),
            ("INFO", True, 2),
            ("SUCCESS", True, 3),
            ("WARNING", True, 3),
            ("ERROR", True, 4),
            ("CRITICAL", True, 2**31 - 1),
            ("TRACE", False, 2**31 - 1),
            (None, True, 2**31 - 1),
        ],
    )
    def test_get_log_level_follows_the_host(
        self, engine: Engine, sink_level: str | None, enabled: bool, expected: int
    ) -> None:
        """get_log_level answers the least severe level the host keeps, in Extism's numbers
        (0 trace, 1 debug, 2 info, 3 warn, 4 error), and i32::MAX when the host keeps no guest
        line: no sink, every sink above error, or the framework's logging disabled (its
        default)."""
        sandbox = _kitchen(engine)
        with _only_sink(sink_level):
            if enabled:
                logger.enable("wasm_plugins")
            try:
                level = sandbox.call_bytes("log_level", b"")
            finally:
                logger.disable("wasm_plugins")
        assert struct.unpack("<i", level) == (expected,)

    def test_blocks_alloc_free_length_load_store(self, engine: Engine) -> None:
        """alloc, free, length, length_unsafe, load_u8/u64 and store_u8/u64 agree."""
        output = _kitchen(engine).call_bytes("blocks", b"")
        assert output == bytes([13, 8, 0xAB, 0x08, 0, 0, 0, 0])

    def test_memory_grows_in_the_kernel(self, in_process_engine: Engine) -> None:
        """Blocks larger than the kernel's first page grow its memory."""
        output = _kitchen(in_process_engine).call_bytes("grow", b"x" * 2000)
        assert output == b"z" * 2_048_000

    def test_large_input_and_output_round_trip(self, in_process_engine: Engine) -> None:
        """Inputs far larger than a page arrive whole, call after call."""
        sandbox = Sandbox(
            ROOT / "benchmarks" / "extism_echo.wat",
            engine=in_process_engine,
            codec="raw",
        )
        for size in (0, 7, 8, 65_536 * 3 + 5, 10):
            data = bytes(range(256)) * (size // 256) + bytes(size % 256)
            assert sandbox.call_bytes("echo", data) == data


class TestLimits:
    def test_output_over_the_limit(self, in_process_engine: Engine) -> None:
        """An output larger than limits.max_output is refused before it is copied."""
        sandbox = _kitchen(in_process_engine, limits=Limits(max_output=1024 * 1024))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("grow", b"x" * 1025)
        assert (caught.value.resource, caught.value.used) == ("output", 1025 * 1024)

    def test_input_over_the_limit(self, engine: Engine) -> None:
        """An input larger than limits.max_input never reaches the kernel."""
        sandbox = _kitchen(engine, limits=Limits(max_input=100))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("count_vowels", b"a" * 101)
        assert caught.value.resource == "input"

    def test_kernel_memory_is_under_the_memory_limit(self, engine: Engine) -> None:
        """Blocks count against limits.memory: a plugin asking for more gets a memory error."""
        sandbox = _kitchen(engine, limits=Limits(memory="2 MiB"))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("grow", b"x" * 3000)
        assert caught.value.resource == "memory"
        assert sandbox.call_bytes("count_vowels", b"o") == b'{"count": 1}'

    def test_input_larger_than_the_kernel_may_hold(self, engine: Engine) -> None:
        """An input the kernel's memory cannot hold is a memory error, not a crash."""
        sandbox = _kitchen(engine, limits=Limits(memory="1 MiB", max_input="8 MiB"))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("count_vowels", b"a" * (2 * 1024 * 1024))
        assert caught.value.resource == "memory"

    @pytest.mark.parametrize("function", ["huge_alloc", "huge_alloc_checked"])
    def test_huge_alloc(self, engine: Engine, function: str) -> None:
        """A huge alloc is a memory error, whether the plugin checks alloc's 0 or not."""
        sandbox = _kitchen(engine)
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes(function, b"")
        assert caught.value.resource == "memory"
        assert sandbox.call_bytes("count_vowels", b"u") == b'{"count": 1}'

    def test_fuel_covers_the_kernel(self, wasmtime_engine: Engine) -> None:
        """Work done through kernel calls is metered like the plugin's own."""
        sandbox = _kitchen(wasmtime_engine, limits=Limits(fuel=100_000))
        with pytest.raises(ResourceLimitExceeded) as caught:
            sandbox.call_bytes("grow", b"x" * 1000)
        assert caught.value.resource == "fuel"
        assert sandbox.call_bytes("count_vowels", b"i") == b'{"count": 1}'


BAD_INPUT = {
    "read_past_input": "read past the end of its input",
    "read_past_input_u8": "read past the end of its input",
    "load_outside": "loaded from an offset outside",
    "load_past_block": "loaded from an offset outside",
    "store_header": "stored to an offset outside",
    "store_freed": "stored to an offset outside",
    "stale_block": "stored to an offset outside",
    "double_free": "freed a block it does not own",
    "free_inside": "freed a block it does not own",
    "foreign_output": "set as output a range outside",
    "output_past_block": "set as output a range outside",
    "foreign_error": "set as error a block it does not own",
}


class TestBadInput:
    @pytest.mark.parametrize("function", sorted(BAD_INPUT))
    def test_kernel_misuse_is_a_communication_error(self, engine: Engine, function: str) -> None:
        """Every misuse of the kernel stops the plugin with a typed communication error."""
        sandbox = _kitchen(engine)
        with pytest.raises(CommunicationError) as caught:
            sandbox.call_bytes(function, b"abc")
        assert caught.value.channel == "extism-kernel"
        assert BAD_INPUT[function] in caught.value.message
        assert caught.value.plugin == "kitchen"
        # The plugin stopped halfway: its instance is replaced, and the next call works.
        assert sandbox.instances == 0
        assert sandbox.call_bytes("count_vowels", b"aa") == b'{"count": 2}'

    def test_a_trap_stays_a_runtime_error(self, engine: Engine) -> None:
        """A trap in the plugin's own code is not blamed on the kernel."""
        with pytest.raises(ExecutionError) as caught:
            _kitchen(engine).call_bytes("trap", b"")
        assert caught.value.trap == "unreachable"

    @pytest.mark.parametrize("name", ["memory", "wp_reserve", "reset", "input_offset"])
    def test_kernel_internals_cannot_be_imported(self, engine: Engine, name: str) -> None:
        """Only the documented functions of extism:host/env link; the kernel's own do not."""
        kind = "(memory 1)" if name == "memory" else "(func (param i64) (result i32))"
        # A memory export of its own, or wasmer-sdk's wrapper refuses the module first.
        memory = "" if name == "memory" else ' (memory (export "memory") 1)'
        wat = (
            f'(module (import "extism:host/env" "{name}" {kind}){memory}'
            ' (func (export "f") (result i32) i32.const 0))'
        )
        with pytest.raises(ModuleError) as caught:
            Sandbox(wat, engine=engine)
        assert name in caught.value.message


_USER_WAT = """
(module
  (import "extism:host/user" "answer" (func $answer (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (func (export "ask") (result i32)
    (local $out i64)
    (local.set $out (call $alloc (i64.const 8)))
    (call $store_u64 (local.get $out) (call $answer))
    (call $output_set (local.get $out) (i64.const 8))
    (i32.const 0)))
"""


def _answer(call: HostCall) -> int:
    return 42


ANSWER = HostFunction(
    module="wasm_plugins",
    name="answer",
    signature=FuncSignature((), ("i64",)),
    implementation=_answer,
    capability="answers",
)


class TestUserFunctions:
    def test_mapped_by_name_under_its_capability(self, engine: Engine) -> None:
        """extism:host/user functions are the host's functions of the same name."""
        sandbox = Sandbox(
            _USER_WAT, engine=engine, codec="raw", host_functions=[ANSWER], capabilities=["answers"]
        )
        assert struct.unpack("<q", sandbox.call_bytes("ask", b"")) == (42,)

    def test_a_call_back_runs_on_its_own_instance(self, engine: Engine) -> None:
        """A host function that calls back into the plugin gets an answer from another instance;
        the outer call's kernel header and output are untouched."""
        sandboxes: list[Sandbox] = []

        def answer_via_a_call_back(call: HostCall) -> int:
            if len(sandboxes) == 1:
                sandboxes.append(sandboxes[0])
                return int(struct.unpack("<q", sandboxes[0].call_bytes("ask", b""))[0]) + 1
            return 42

        function = HostFunction(
            module="wasm_plugins",
            name="answer",
            signature=FuncSignature((), ("i64",)),
            implementation=answer_via_a_call_back,
            capability="answers",
        )
        sandboxes.append(
            Sandbox(
                _USER_WAT,
                engine=engine,
                codec="raw",
                host_functions=[function],
                capabilities=["answers"],
            )
        )
        assert struct.unpack("<q", sandboxes[0].call_bytes("ask", b"")) == (43,)
        assert struct.unpack("<q", sandboxes[0].call_bytes("ask", b"")) == (42,)

    def test_refused_without_the_capability(self, engine: Engine) -> None:
        """Deny by default: the capability is named at load."""
        with pytest.raises(SecurityViolation) as caught:
            Sandbox(_USER_WAT, engine=engine, host_functions=[ANSWER])
        assert caught.value.capability == "answers"

    def test_unknown_user_function_is_refused(self, engine: Engine) -> None:
        """A user function the host does not offer fails at load."""
        with pytest.raises(ModuleError) as caught:
            Sandbox(_USER_WAT, engine=engine)
        assert "extism:host/user.answer" in caught.value.message


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}".encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("X-Test", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 only; yields its host:port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _request(url: str) -> bytes:
    return json.dumps({"url": url, "method": "GET", "headers": {"Accept": "text/plain"}}).encode()


class TestHttp:
    def test_refused_at_load_without_the_grant(self, engine: Engine) -> None:
        """Importing http_request without the http grant is a security violation naming http."""
        with pytest.raises(SecurityViolation) as caught:
            Sandbox(HTTP, engine=engine)
        assert caught.value.capability == "http"
        assert caught.value.violation_type == "capability_denied"

    def test_allowed_host(self, engine: Engine, server: str) -> None:
        """With the grant, a listed host is reached through a real HTTP client."""
        sandbox = Sandbox(
            HTTP, engine=engine, codec="raw", capabilities=["http"], http_hosts=[server]
        )
        assert sandbox.call_bytes("fetch", _request(f"http://{server}/a")) == b"hello from /a"
        assert sandbox.call_bytes("status", _request(f"http://{server}/missing")) == b"404 "
        headers = json.loads(sandbox.call_bytes("headers", _request(f"http://{server}/h")))
        assert headers["X-Test"] == "yes"

    def test_unlisted_host_is_refused(self, engine: Engine, server: str) -> None:
        """A host missing from the allow-list (here: the same server by another name) is refused
        before any connection."""
        port = server.rsplit(":", 1)[1]
        sandbox = Sandbox(
            HTTP, engine=engine, codec="raw", capabilities=["http"], http_hosts=["127.0.0.1:1"]
        )
        for url in (f"http://{server}/a", f"http://localhost:{port}/a", "file:///etc/passwd"):
            with pytest.raises(SecurityViolation) as caught:
                sandbox.call_bytes("fetch", _request(url))
            assert (caught.value.capability, caught.value.violation_type) == (
                "http",
                "host_not_allowed",
            )

    def test_host_reaches_only_the_hosts_the_trust_policy_grants(self, server: str) -> None:
        """Through a host, the plugin reaches the hosts its grant lets through; a host its
        manifest asks for but the (clamping) policy leaves out is refused at the call."""
        port = server.rsplit(":", 1)[1]
        manifest = Manifest.from_dict(
            {
                "name": "fetcher",
                "module": {"path": str(HTTP)},
                "abi": "extism",
                "codec": "raw",
                "capabilities": ["http"],
                "http": [server, f"localhost:{port}"],
            }
        )
        policy = TrustPolicy(
            plugins={"fetcher": Grant(capabilities=frozenset({"http"}), http=frozenset({server}))},
            mode="clamp",
        )
        with PluginHost(isolation="in-process", blocked=(), trust=policy) as host:
            host.load(manifest, check=True)
            assert host.call("fetcher", "fetch", _request(f"http://{server}/a")) == b"hello from /a"
            with pytest.raises(ContextualError) as caught:
                host.call("fetcher", "fetch", _request(f"http://localhost:{port}/a"))
            refusal = caught.value.error
            assert isinstance(refusal, SecurityViolation)
            assert (refusal.capability, refusal.violation_type) == ("http", "host_not_allowed")

    def test_malformed_request_is_a_communication_error(self, engine: Engine) -> None:
        """A request that is not JSON with a url is the plugin's fault, typed."""
        sandbox = Sandbox(HTTP, engine=engine, codec="raw", capabilities=["http"])
        with pytest.raises(CommunicationError):
            sandbox.call_bytes("fetch", b"not json")


def build_c_plugin(source: Path, output: Path) -> Path:
    """Compile a freestanding Extism plugin with zig's C compiler (ziglang from PyPI)."""
    pytest.importorskip("ziglang", reason="the ziglang package (test extra) builds C plugins")
    command = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-freestanding"]
    command += ["-nostdlib", "-O2", "-Wl,--no-entry", "-o", str(output), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return output


@pytest.fixture(scope="module")
def c_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/extism/plugin.c, built once."""
    return build_c_plugin(EXTISM / "plugin.c", tmp_path_factory.mktemp("c") / "plugin.wasm")


class TestCPlugin:
    def test_input_output_vars_and_logs(self, engine: Engine, c_plugin: Path) -> None:
        """A C plugin built the way Extism's C PDK builds one runs unmodified."""
        sandbox = Sandbox(c_plugin, engine=engine, codec="raw")
        assert sandbox.abi == "extism"
        assert sandbox.functions == ("count", "count_vowels", "greet", "reject")
        first = sandbox.call_bytes("count_vowels", b"Hello, World! aeiou")
        second = sandbox.call_bytes("count_vowels", b"A")
        assert json.loads(first) == {"count": 8, "total": 8}
        assert json.loads(second) == {"count": 1, "total": 9}

    def test_config_and_error(self, engine: Engine, c_plugin: Path) -> None:
        """config_get reaches the configured value; error_set is a guest error."""
        assert Sandbox(c_plugin, engine=engine, codec="raw", config={"name": "Ada"}).call_bytes(
            "greet", b""
        ) == (b"Hello, Ada!")
        with pytest.raises(ExecutionError) as caught:
            Sandbox(c_plugin, engine=engine, codec="raw").call_bytes("greet", b"")
        assert caught.value.details["message"] == "no name configured"


class TestSideBySide:
    """The same plugin through the Extism Python SDK and through wasm-plugins, byte for byte."""

    INPUTS = (b"", b"a", b"Hello, World!", bytes(range(256)) * 40, b"aeiou" * 200_001)

    @pytest.fixture
    def extism_sdk(self) -> Any:
        return pytest.importorskip("extism", reason="the extism package (test extra)")

    def _both(self, extism_sdk: Any, engine: Engine, wasm: bytes, **config: str) -> Any:
        theirs = extism_sdk.Plugin(wasm, wasi=False, config=config or None)
        ours = Sandbox(wasm, engine=engine, codec="raw", config=config)
        return theirs, ours

    @pytest.mark.parametrize(
        ("source", "function"),
        [(ROOT / "benchmarks" / "extism_echo.wat", "echo"), (KITCHEN, "count_vowels")],
    )
    def test_wat_plugins(
        self, extism_sdk: Any, in_process_engine: Engine, source: Path, function: str
    ) -> None:
        """Outputs are identical for every input size."""
        wasm = in_process_engine.wat_to_wasm(source.read_text())
        theirs, ours = self._both(extism_sdk, in_process_engine, wasm)
        for data in self.INPUTS:
            assert ours.call_bytes(function, data) == bytes(theirs.call(function, data))

    def test_c_plugin(self, extism_sdk: Any, in_process_engine: Engine, c_plugin: Path) -> None:
        """Outputs and config read the same, errors carry the same text."""
        theirs, ours = self._both(
            extism_sdk, in_process_engine, c_plugin.read_bytes(), name="Grace"
        )
        for data in self.INPUTS:
            assert ours.call_bytes("count", data) == bytes(theirs.call("count", data))
        assert ours.call_bytes("greet", b"") == bytes(theirs.call("greet", b""))
        with pytest.raises(extism_sdk.Error) as their_error:
            theirs.call("reject", b"")
        with pytest.raises(ExecutionError) as our_error:
            ours.call_bytes("reject", b"")
        assert our_error.value.details["message"] == str(their_error.value)


class TestCommandLine:
    def test_call_detects_the_abi(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`call FILE FUNCTION --raw --input TEXT` prints the output text and one newline."""
        status = cli.main(["call", str(KITCHEN), "count_vowels", "--raw", "--input", "hello"])
        assert (status, capsys.readouterr().out) == (0, '{"count": 2}\n')

    def test_inspect_shows_the_abi_and_imports(self, capsys: pytest.CaptureFixture[str]) -> None:
        """inspect names the detected ABI, the entry points and what each import needs."""
        assert cli.main(["inspect", str(HTTP), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["abi"] == "extism"
        assert [f["name"] for f in data["functions"]] == ["fetch", "status", "headers"]
        imports = {item["name"]: item for item in data["imports"]}
        assert imports["alloc"]["status"] == "ok"
        assert imports["http_request"]["capability"] == "http"
        assert data["missing_capabilities"] == ["http"]


class TestManifest:
    @pytest.mark.parametrize(
        ("written", "meant"),
        [(1, "wasm-plugins"), ("wasm-plugins", "wasm-plugins"), ("extism", "extism")],
    )
    def test_abi_field(self, written: Any, meant: str) -> None:
        """abi = 1 (every existing manifest) still means wasm-plugins; a string names the ABI."""
        manifest = Manifest.from_dict({"name": "p", "module": {"path": "p.wasm"}, "abi": written})
        assert manifest.abi == meant

    def test_default_is_auto(self) -> None:
        """Without abi, the ABI is detected from the module's imports."""
        assert Manifest.from_dict({"name": "p", "module": {"path": "p.wasm"}}).abi == "auto"

    def test_unknown_abi(self) -> None:
        """Another value is a configuration error on the abi field."""
        with pytest.raises(ConfigurationError) as caught:
            Manifest.from_dict({"name": "p", "module": {"path": "p.wasm"}, "abi": 2})
        assert caught.value.field == "abi"

    def test_host_runs_an_extism_manifest(self) -> None:
        """A manifest with abi = "extism" and [config] runs through the host's policy."""
        manifest = Manifest.from_dict(
            {
                "name": "kitchen",
                "module": {"path": str(KITCHEN)},
                "abi": "extism",
                "codec": "raw",
                "config": {"greeting": "from the manifest"},
            }
        )
        with PluginHost(isolation="in-process", blocked=()) as host:
            host.load(manifest)
            assert host.call("kitchen", "config", b"") == b"from the manifest"
            assert host.call("kitchen", "count_vowels", b"aei") == b'{"count": 3}'


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    """One worker pool for the worker-isolation tests."""
    with WorkerPool(1, name="extism-test") as made:
        yield made


def _in_worker(pool: WorkerPool, source: Path, engine: Engine, **options: Any) -> ProcessSandbox:
    options.setdefault("codec", "raw")
    return ProcessSandbox(source, pool=pool, engine=engine, name="kitchen", **options)


class TestIsolation:
    """An Extism plugin in a worker process runs as it does in this one."""

    def test_kernel_config_and_vars(self, engine: Engine, pool: WorkerPool) -> None:
        """The kernel, the caller's config and vars across calls work in the worker."""
        with _in_worker(pool, KITCHEN, engine, config={"greeting": "hi"}) as sandbox:
            assert sandbox.abi == "extism"
            assert sandbox.call_bytes("count_vowels", b"Hello, World!") == b'{"count": 3}'
            assert sandbox.call_bytes("config", b"") == b"hi"
            counts = [struct.unpack("<q", sandbox.call_bytes("counter", b""))[0] for _ in range(3)]
            assert counts == [1, 2, 3]
            with pytest.raises(ExecutionError) as caught:
                sandbox.call_bytes("fail", b"")
            assert caught.value.details["message"] == "the input was refused"

    def test_config_from_the_host_services(self, engine: Engine, pool: WorkerPool) -> None:
        """Without config=, the host's configuration of the plugin reaches the worker."""
        services = HostServices(config=lambda plugin: {"greeting": {"plugin": plugin}})
        with _in_worker(pool, KITCHEN, engine, services=services) as sandbox:
            assert json.loads(sandbox.call_bytes("config", b"")) == {"plugin": "kitchen"}

    def test_logs_reach_the_host(self, engine: Engine, pool: WorkerPool) -> None:
        """Log lines go to the host's loguru, bound to the plugin and escaped, and get_log_level
        answers the host's level."""
        records: list[Any] = []
        with _in_worker(pool, KITCHEN, engine) as sandbox, _only_sink("INFO"):
            sink = logger.add(lambda m: records.append(m.record), level="INFO", format="{message}")
            logger.enable("wasm_plugins")
            try:
                level = sandbox.call_bytes("logs", b"line\nforged")
            finally:
                logger.disable("wasm_plugins")
                logger.remove(sink)
        assert level == b"2"
        seen = [(r["level"].name, r["extra"]["plugin"], r["extra"]["source"]) for r in records]
        assert seen == [(name, "kitchen", "guest") for name in ("INFO", "WARNING", "ERROR")]
        assert all("\n" not in r["message"] for r in records)

    def test_http_grant(self, engine: Engine, pool: WorkerPool, server: str) -> None:
        """With the grant, the listed host is reached from the worker; others are refused."""
        with pytest.raises(SecurityViolation) as refused:
            _in_worker(pool, HTTP, engine)
        assert refused.value.capability == "http"
        with _in_worker(pool, HTTP, engine, capabilities=["http"], http_hosts=[server]) as sandbox:
            assert sandbox.call_bytes("fetch", _request(f"http://{server}/a")) == b"hello from /a"
            with pytest.raises(SecurityViolation) as caught:
                sandbox.call_bytes("fetch", _request("http://127.0.0.1:1/a"))
            assert caught.value.violation_type == "host_not_allowed"

    def test_host_runs_an_extism_manifest_in_a_worker(self) -> None:
        """Through a host with worker isolation: the manifest's config and the policy apply."""
        manifest = Manifest.from_dict(
            {
                "name": "kitchen",
                "module": {"path": str(KITCHEN)},
                "abi": "extism",
                "codec": "raw",
                "isolation": "process",
                "config": {"greeting": "from the manifest"},
            }
        )
        with PluginHost(isolation="process", blocked=()) as host:
            host.load(manifest)
            assert host.call("kitchen", "config", b"") == b"from the manifest"
            assert host.call("kitchen", "count_vowels", b"aei") == b'{"count": 3}'


OPS = EXTISM / "ops.wat"
_SMALL = st.integers(0, 300)
_OFFSET = st.one_of(
    st.integers(0, 400), st.integers(0, 2**32 + 16), st.integers(2**64 - 16, 2**64 - 1)
)
_INSTRUCTION = st.one_of(
    st.tuples(st.just(0), st.one_of(_SMALL, st.integers(0, 2**33)), st.integers(0, 15)),
    st.tuples(st.sampled_from([1, 7, 11]), st.integers(0, 15), st.just(0)),
    st.tuples(st.sampled_from([2, 3, 4, 5, 6]), st.integers(0, 15), _SMALL),
    st.tuples(st.sampled_from([8, 9, 10]), _OFFSET, _SMALL),
)


def _program(instructions: list[tuple[int, int, int]]) -> bytes:
    return b"".join(struct.pack("<QQQ", *instruction) for instruction in instructions)


def _outcome(sandbox: Sandbox, program: bytes) -> tuple[str, Any]:
    try:
        return ("value", sandbox.call_bytes("run", program))
    except (CommunicationError, ResourceLimitExceeded, ExecutionError) as error:
        return (error.kind, error.message)


@pytest.fixture(scope="module")
def fuzz_sandboxes() -> Iterator[tuple[Sandbox, ...]]:
    """The ops plugin on every engine required here, under a 4 MiB memory limit."""
    available = [name for name in ENGINE_NAMES if name in required_engines()]
    limits = Limits(memory="4 MiB")
    made = tuple(Sandbox(OPS, engine=name, codec="raw", limits=limits) for name in available)
    yield made
    for sandbox in made:
        sandbox.close()


class TestKernelFuzz:
    @settings(max_examples=150, deadline=None)
    @given(instructions=st.lists(_INSTRUCTION, max_size=40))
    def test_any_sequence_of_kernel_calls(
        self, fuzz_sandboxes: tuple[Sandbox, ...], instructions: list[tuple[int, int, int]]
    ) -> None:
        """Whatever a plugin asks of the kernel, the result is a value or a typed error, the
        same on both engines, and the sandbox answers the next call."""
        program = _program(instructions)
        outcomes = []
        for sandbox in fuzz_sandboxes:
            outcomes.append(_outcome(sandbox, program))
            assert sandbox.call_bytes("run", b"") == bytes(8)
        assert all(outcome == outcomes[0] for outcome in outcomes)
