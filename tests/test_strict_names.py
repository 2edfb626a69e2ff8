"""Names checked everywhere the host is given one: a misspelt hookimpl, ``blocked=``,
``WASM_PLUGINS_DISABLE``, ``config=`` and metric queries say what they meant; ``doctor --json``
and ``list --strict`` report them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from tests.test_host import GREETER, GREETER_WAT, GREETING_GRANTED, make_distribution, site
from wasm_plugins import ConfigurationError, PluginHost, hookimpl
from wasm_plugins.cli import main

__all__ = ["site"]  # the fixture, used here under its own name

HALF_MISSPELT = '''
"""A distribution with one good hookimpl and one misspelt."""
from wasm_plugins import hookimpl

WAT = """(module (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 8))
  (func (export "wp_free") (param i32 i32)))"""


@hookimpl
def wasm_plugins_register_plugins(register):
    register({"name": "half-good", "module": {"wat": WAT}})


@hookimpl
def wasm_plugins_reprot(record):
    pass
'''


class TestHookNames:
    def test_a_misspelt_hookimpl_is_left_out_alone(self, site: Path) -> None:
        """The distribution's good hookimpl works; the misspelt one is a problem that names the
        distribution and the hook it meant."""
        make_distribution(site, "thirdparty-half", HALF_MISSPELT)
        with PluginHost.discover() as host:
            assert "half-good" in host.plugins
            (problem,) = [p for p in host.problems if p.source.startswith("thirdparty-half")]
        assert problem.stage == "hookimpl"
        assert problem.distribution == "thirdparty-half 1.0"
        assert "'wasm_plugins_reprot'" in problem.reason
        assert "did you mean 'wasm_plugins_report'?" in problem.reason

    def test_register_policy_suggests_the_hook(self) -> None:
        """By hand, a misspelt hookimpl is refused with the hook it meant."""

        class Misspelt:
            @hookimpl
            def wasm_plugins_fallbak(self) -> None:
                """Misspelt on purpose."""

        with PluginHost() as host, pytest.raises(ConfigurationError) as caught:
            host.register_policy(Misspelt(), name="misspelt")
        assert "did you mean 'wasm_plugins_fallback'?" in (caught.value.suggestion or "")
        with PluginHost() as host:
            assert not host.manager.has_plugin("misspelt")


class TestGivenNames:
    def test_blocked_names_that_name_nothing(self, site: Path) -> None:
        """A name in ``blocked=`` that is no plugin, entry point or distribution is a problem
        with the closest known name; a known one is not."""
        make_distribution(site, "thirdparty-greeter", GREETER.format(wat=GREETER_WAT))
        with PluginHost.discover(
            blocked=["thirdparty-greter", "builtin-recovery", "trapper"], trust=GREETING_GRANTED
        ) as host:
            blocked = [p for p in host.problems if p.stage == "blocked"]
        assert [p.source for p in blocked] == ["thirdparty-greter"]
        assert "did you mean 'thirdparty-greeter'?" in blocked[0].reason

    def test_disable_variable_is_checked_too(
        self, site: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``WASM_PLUGINS_DISABLE`` is held to the same rule."""
        monkeypatch.setenv("WASM_PLUGINS_DISABLE", "text-tool")
        with PluginHost.discover() as host:
            (problem,) = [p for p in host.problems if p.stage == "blocked"]
        assert "WASM_PLUGINS_DISABLE" in problem.reason
        assert "did you mean 'text-tools'?" in problem.reason

    def test_config_for_a_plugin_that_is_not_loaded(self, site: Path) -> None:
        """``config=`` naming a plugin that is not loaded is a problem with the closest name."""
        with PluginHost.discover(config={"text-tool": {"x": 1}, "text-tools": {"y": 2}}) as host:
            (problem,) = [p for p in host.problems if p.stage == "config"]
        assert problem.source == "text-tool"
        assert "did you mean 'text-tools'?" in problem.reason


class TestMetricQueries:
    def test_unknown_counter(self) -> None:
        """A counter that does not exist is an error naming the closest, not a silent 0."""
        with PluginHost(blocked=()) as host, pytest.raises(ConfigurationError) as caught:
            host.metrics.count("callz", "p", "f", outcome="value")
        assert "did you mean 'calls'?" in (caught.value.suggestion or "")

    def test_wrong_label(self) -> None:
        """A counter asked with another label than its own is an error."""
        with PluginHost(blocked=()) as host, pytest.raises(ConfigurationError) as caught:
            host.metrics.count("calls", "p", "f", outcom="value")
        assert "outcome" in caught.value.message

    def test_known_counter_still_counts(self) -> None:
        """A known counter with its label answers as before."""
        with PluginHost(blocked=()) as host:
            host.load({"name": "echo", "module": {"path": str(EXAMPLES / "echo.wat")}})
            host.call("echo", "echo", 1)
            assert host.metrics.count("calls", "echo", "echo", outcome="value") == 1
            assert host.metrics.count("retries", "echo", "echo") == 0


class TestCommands:
    def test_doctor_json(
        self, site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``doctor --json`` is one JSON document with the engines, the plugins and the
        problems (an unknown disabled name among them)."""
        monkeypatch.setenv("WASM_PLUGINS_DISABLE", "trapperr")
        status = main(["doctor", "--json"])
        document: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert status == 0
        assert any(engine["available"] for engine in document["engines"])
        assert "text-tools" in document["plugins"]
        stages = {problem["stage"]: problem for problem in document["problems"]}
        assert "did you mean 'trapper'?" in stages["blocked"]["reason"]
        assert document["environment"]["WASM_PLUGINS_DISABLE"] == "trapperr"

    def test_list_strict_fails_on_problems(
        self, site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``list --strict`` exits 1 when discovery found a problem; plain ``list`` exits 0."""
        make_distribution(site, "thirdparty-half", HALF_MISSPELT)
        assert main(["list"]) == 0
        capsys.readouterr()
        assert main(["list", "--strict"]) == 1
        assert "wasm_plugins_reprot" in capsys.readouterr().out
