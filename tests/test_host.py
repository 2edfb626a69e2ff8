"""PluginHost: discovery through entry points, third-party hookimpls, blocking, broken
distributions, the call API (sync, outcome, async), closing."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, ROOT
from wasm_plugins import (
    ConfigurationError,
    ContextualError,
    ExecutionError,
    Manifest,
    PluginHost,
    hookimpl,
)
from wasm_plugins.engine import Engine
from wasm_plugins.trust import Grant, TrustPolicy

GREETER_WAT = """(module
  (import "wasm_plugins" "greet" (func $greet (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "wp_free") (param i32 i32))
  (func (export "hello") (param i32 i32) (result i64)
    (i64.extend_i32_u (call $greet (i32.const 1024) (i32.const 256)))
    (i64.or (i64.const 0x40000000000))))"""

GREETER = '''
"""A third party's distribution: a host function and a plugin that uses it."""
from wasm_plugins import HostFunction, hookimpl
from wasm_plugins.engine import FuncSignature
from wasm_plugins.sandbox import u32

WAT = {wat!r}


def greet(call, out_ptr, out_cap):
    text = b'"hello from a third party"'
    if len(text) <= u32(out_cap):
        call.memory.write(u32(out_ptr), text)
    return len(text)


@hookimpl
def wasm_plugins_register_host_functions(register):
    register(HostFunction(
        module="wasm_plugins", name="greet", signature=FuncSignature(("i32", "i32"), ("i32",)),
        implementation=greet, capability="greeting",
    ))


@hookimpl
def wasm_plugins_register_plugins(register):
    register({{"name": "greeter", "module": {{"wat": WAT}}, "capabilities": ["greeting"],
              "functions": {{"hello": {{"description": "Say hello."}}}}}})
'''

BROKEN_IMPORT = '''
"""A distribution that cannot even be imported."""
raise ImportError("this distribution is broken on purpose")
'''

MISSPELT = '''
"""A distribution whose hookimpl has a misspelt name."""
from wasm_plugins import hookimpl


@hookimpl
def wasm_plugins_register_plugin(register):
    register({"name": "never-registered", "module": {"wat": "(module)"}})
'''

RAISING = '''
"""A distribution whose register hook raises."""
from wasm_plugins import hookimpl


@hookimpl
def wasm_plugins_register_plugins(register):
    raise RuntimeError("registration exploded")
'''


def make_distribution(site: Path, name: str, source: str) -> None:
    """Write a module and a dist-info with a wasm_plugins entry point into ``site``."""
    module = name.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[wasm_plugins]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path where tests install fake distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("WASM_PLUGINS_DISABLE", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("thirdparty_"):
            del sys.modules[name]


GREETING_GRANTED = TrustPolicy(
    distributions={"thirdparty-greeter": Grant(capabilities=frozenset({"log", "greeting"}))}
)


class TestDiscovery:
    def test_example_distributions_are_found(self, site: Path) -> None:
        """The installed example distributions are discovered through their entry points; the
        one that asks for WASI is refused by the default trust policy and listed as a problem."""
        with PluginHost.discover() as host:
            assert {"text-tools", "trapper", "memory-bomb"} <= set(host.plugins)
            assert "wasi-escape" not in host.plugins
            assert any("'wasi-escape'" in p.reason and p.stage == "trust" for p in host.problems)
            info = host.plugins["text-tools"]
            assert info.distribution is not None
            assert info.distribution.startswith("wasm-plugins-text-tools")
            assert host.call("text-tools", "word_count", {"text": "one two three"})["words"] == 3

    def test_third_party_host_function(self, site: Path) -> None:
        """A third party adds a host function and a plugin that uses it, without our code; the
        host's trust policy grants the capability (the default policy does not)."""
        make_distribution(site, "thirdparty-greeter", GREETER.format(wat=GREETER_WAT))
        with PluginHost.discover() as host:
            assert "greeter" not in host.plugins
        with PluginHost.discover(trust=GREETING_GRANTED) as host:
            assert ("wasm_plugins", "greet") in host.host_functions
            assert host.call("greeter", "hello") == "hello from a third party"
            assert host.plugins["greeter"].distribution == "thirdparty-greeter 1.0"

    def test_broken_distributions_are_reported(self, site: Path) -> None:
        """Distributions that fail to import, misspell a hook or raise are reported by name;
        the others still load."""
        make_distribution(site, "thirdparty-broken", BROKEN_IMPORT)
        make_distribution(site, "thirdparty-misspelt", MISSPELT)
        make_distribution(site, "thirdparty-raising", RAISING)
        make_distribution(site, "thirdparty-greeter", GREETER.format(wat=GREETER_WAT))
        with PluginHost.discover(trust=GREETING_GRANTED) as host:
            problems = {p.source.split(" = ")[0]: p for p in host.problems}
            assert problems["thirdparty-broken"].stage == "import"
            assert "broken on purpose" in problems["thirdparty-broken"].reason
            assert problems["thirdparty-broken"].distribution == "thirdparty-broken 1.0"
            assert problems["thirdparty-misspelt"].stage == "hookimpl"
            assert "wasm_plugins_register_plugin" in problems["thirdparty-misspelt"].reason
            assert problems["thirdparty-raising"].stage == "register"
            assert "registration exploded" in problems["thirdparty-raising"].reason
            assert "never-registered" not in host.plugins
            assert host.call("greeter", "hello") == "hello from a third party"

    def test_disable_blocks_by_name(self, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """WASM_PLUGINS_DISABLE blocks entry points and WASM plugins by name."""
        make_distribution(site, "thirdparty-greeter", GREETER.format(wat=GREETER_WAT))
        monkeypatch.setenv("WASM_PLUGINS_DISABLE", "thirdparty-greeter, trapper")
        with PluginHost.discover() as host:
            assert "greeter" not in host.plugins
            assert "trapper" not in host.plugins
            assert "text-tools" in host.plugins
            assert ("wasm_plugins", "greet") not in host.host_functions

    def test_register_policy_checks_hook_names(self) -> None:
        """Registering an object with a misspelt hookimpl by hand fails loudly."""

        class Misspelt:
            @hookimpl
            def wasm_plugins_atempt(self, attempt: Any) -> None:
                """Misspelt on purpose."""

        with PluginHost() as host, pytest.raises(ConfigurationError) as caught:
            host.register_policy(Misspelt())
        assert "wasm_plugins_atempt" in caught.value.message


class TestCalls:
    @pytest.fixture
    def host(self, engine: Engine) -> Iterator[PluginHost]:
        with PluginHost(engine=engine.name, blocked=()) as made:
            made.load({"name": "echo", "module": {"path": str(EXAMPLES / "echo.wat")}})
            yield made

    def test_call_and_invoke(self, host: PluginHost, engine: Engine) -> None:
        """call returns the value; invoke returns it with how it was obtained."""
        assert host.call("echo", "echo", {"a": 1}) == {"a": 1}
        outcome = host.invoke("echo", "echo", [1, 2])
        assert (outcome.value, outcome.attempts, outcome.fallback, outcome.quality) == (
            [1, 2],
            1,
            None,
            1.0,
        )
        assert outcome.duration >= 0
        assert host.sandbox("echo").engine.name == engine.name

    def test_failure_is_contextual(self, host: PluginHost, engine: Engine) -> None:
        """A failing call raises a ContextualError carrying the typed error and its context."""
        with pytest.raises(ContextualError) as caught:
            host.call("echo", "missing_function", 1)
        error = caught.value
        assert error.error_kind == "module"
        assert (error.plugin, error.function) == ("echo", "missing_function")
        assert error.context is not None
        assert error.context.environment.engine == engine.name
        assert error.context.environment.attempt == 1

    def test_unknown_plugin_suggests(self, host: PluginHost) -> None:
        """An unknown plugin name is a configuration error suggesting the closest name."""
        with pytest.raises(ContextualError) as caught:
            host.call("ecko", "echo", 1)
        assert caught.value.error_kind == "configuration"
        assert "'echo'" in (caught.value.suggestion or "")

    def test_acall(self, host: PluginHost) -> None:
        """acall answers from a worker thread, concurrently, without blocking the loop."""

        async def main() -> list[Any]:
            return await asyncio.gather(*(host.acall("echo", "echo", i) for i in range(20)))

        assert asyncio.run(main()) == list(range(20))

    def test_gathered_acalls_make_no_task_each(self, host: PluginHost) -> None:
        """``asyncio.gather`` takes an awaited call as the future it is: no task per call (a
        task and its steps cost about as much as a tiny call)."""
        tasks: list[Any] = []

        async def main() -> list[Any]:
            loop = asyncio.get_running_loop()

            def counted(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
                tasks.append(coro)
                return asyncio.Task(coro, loop=loop, **kwargs)

            loop.set_task_factory(counted)
            try:
                return await asyncio.gather(*(host.acall("echo", "echo", i) for i in range(20)))
            finally:
                loop.set_task_factory(None)

        assert asyncio.run(main()) == list(range(20))
        assert tasks == []

    def test_acall_in_every_form_asyncio_takes(self, host: PluginHost) -> None:
        """What a coroutine function's result serves for, an awaited call serves for: awaited,
        made a task, given to ``wait_for``, run by ``asyncio.run`` from outside any loop."""
        made = host.acall("echo", "echo", "outside")
        assert asyncio.iscoroutine(made)
        assert asyncio.run(made) == "outside"

        async def main() -> list[Any]:
            task = asyncio.create_task(host.acall("echo", "echo", "task"))
            results = [
                await task,
                await host.acall("echo", "echo", "awaited"),
                await asyncio.wait_for(host.acall("echo", "echo", "wait_for"), 60),
                await asyncio.ensure_future(host.acall("echo", "echo", "future")),
                (await host.ainvoke("echo", "echo", "outcome")).value,
            ]
            if sys.version_info >= (3, 11):
                async with asyncio.TaskGroup() as group:
                    grouped = group.create_task(host.acall("echo", "echo", "group"))
                results.append(grouped.result())
            return results

        expected = ["task", "awaited", "wait_for", "future", "outcome"]
        if sys.version_info >= (3, 11):
            expected.append("group")
        assert asyncio.run(main()) == expected

    def test_duplicate_name_refused(self, host: PluginHost) -> None:
        """Two plugins may not share a name."""
        with pytest.raises(ConfigurationError) as caught:
            host.load({"name": "echo", "module": {"wat": "(module)"}})
        assert caught.value.field == "name"

    def test_closed_host(self, host: PluginHost) -> None:
        """After close, calls fail with a typed error and closing twice is harmless."""
        host.call("echo", "echo", 1)
        host.close()
        host.close()
        with pytest.raises(ContextualError) as caught:
            host.call("echo", "echo", 1)
        assert caught.value.error_kind == "configuration"

    def test_attempt_wrapper_sees_attempts(self, host: PluginHost) -> None:
        """A new-style wrapper around the attempt hook observes values and errors."""
        seen: list[tuple[str, Any]] = []

        class Tracer:
            @hookimpl(wrapper=True)
            def wasm_plugins_attempt(self, attempt: Any) -> Any:
                try:
                    value = yield
                except Exception as exc:
                    seen.append((attempt.function, type(exc).__name__))
                    raise
                seen.append((attempt.function, value))
                return value

        host.register_policy(Tracer(), name="tracer")
        host.call("echo", "echo", "hi")
        with pytest.raises(ContextualError):
            host.call("echo", "nope", 1)
        assert seen == [("echo", "hi"), ("nope", "ModuleError")]

    def test_hooks_that_change_while_a_route_is_made(self, host: PluginHost) -> None:
        """A route made while the hooks change is not kept: the next call makes it again, with
        the hooks as they are (here a reporter registers another while the first call's route
        asks it whether it wants the route)."""
        seen: list[str] = []

        class Late:
            @hookimpl
            def wasm_plugins_report(self, record: Any) -> None:
                seen.append(record.name)

        class Registering:
            def hook_wants_route(self, hook: str, plugin: str, function: str) -> bool:
                if not host.manager.has_plugin("late"):
                    host.register_policy(Late(), name="late")
                return False

            @hookimpl
            def wasm_plugins_report(self, record: Any) -> None:
                """Wants no route."""

        host.register_policy(Registering(), name="registering")
        host.call("echo", "echo", "first")
        assert host.manager.has_plugin("late")
        seen.clear()
        host.call("echo", "echo", "second")
        assert seen == ["attempt_succeeded", "call_finished"]

    def test_attempt_hook_bug_is_typed(self, host: PluginHost) -> None:
        """A third-party attempt hook that raises a plain exception still ends typed."""

        class Buggy:
            @hookimpl(tryfirst=True)
            def wasm_plugins_attempt(self, attempt: Any) -> Any:
                raise KeyError("oops")

        host.register_policy(Buggy())
        with pytest.raises(ContextualError) as caught:
            host.call("echo", "echo", 1)
        assert isinstance(caught.value.error, ExecutionError)
        assert caught.value.error.trap == "host_error"

    def test_engine_per_plugin(self, engine: Engine) -> None:
        """A manifest's engine wins over the host's."""
        other = "wasmtime" if engine.name == "wasmer" else "wasmer"
        with PluginHost(engine=other, blocked=()) as host:
            host.load(
                {
                    "name": "echo",
                    "engine": engine.name,
                    "module": {"path": str(EXAMPLES / "echo.wat")},
                }
            )
            assert host.sandbox("echo").engine.name == engine.name

    def test_isolation_per_plugin(self, engine: Engine) -> None:
        """A manifest's isolation wins over the host's: a worker process, or this process."""
        with PluginHost(isolation="in-process", blocked=()) as host:
            echo = {"path": str(EXAMPLES / "echo.wat")}
            host.load(
                {"name": "apart", "engine": engine.name, "isolation": "process", "module": echo}
            )
            host.load({"name": "here", "engine": engine.name, "module": echo})
            assert host.call("apart", "echo", [1]) == [1]
            assert host.call("here", "echo", [2]) == [2]
            assert host.sandbox("apart").isolation == "process"
            assert not hasattr(host.sandbox("here"), "pool")

    def test_auto_keeps_a_timeout_on_wasmer_in_process(self, wasmer_engine: Engine) -> None:
        """On wasmer, a timeout is enforced in this process by metering the module."""
        with PluginHost(blocked=()) as host:
            host.load(
                {
                    "name": "loop",
                    "engine": "wasmer",
                    "module": {"path": str(ROOT / "hostapi" / "conformance" / "abi.wat")},
                    "limits": {"timeout": "200 ms"},
                    "policy": {"fallbacks": []},
                }
            )
            with pytest.raises(ContextualError) as caught:
                host.call("loop", "loop_forever")
            assert caught.value.error_kind == "timeout"
            assert host.call("loop", "upper", "ok") == "OK"
            assert host.sandbox("loop").isolation == "in-process"


class TestManifestFiles:
    def test_resource_next_to_manifest(self, tmp_path: Path) -> None:
        """A manifest file's module resource resolves next to the manifest."""
        (tmp_path / "echo.wat").write_text((EXAMPLES / "echo.wat").read_text())
        (tmp_path / "plugin.toml").write_text(
            'name = "echo"\n[module]\nresource = "echo.wat"\n[functions.echo]\nidempotent = true\n'
        )
        with PluginHost(blocked=()) as host:
            info = host.load(tmp_path / "plugin.toml")
            assert isinstance(info.manifest, Manifest)
            assert info.manifest.functions["echo"].idempotent
            assert host.call("echo", "echo", "x") == "x"
