"""The error policy cannot be gamed by a plugin: errors it reports itself count for its circuit
breaker, and while a function's breaker is open no code of that function runs, fallbacks
included."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wasm_plugins import ContextualError, HostFunction, PluginError, PluginHost, hookimpl
from wasm_plugins.engine import Engine, FuncSignature
from wasm_plugins.policy import BreakerState, Classification
from wasm_plugins.testing.clock import FakeClock, FixedRandom

# `blame` ticks counter 0 and reports a guest error that blames its input; `rough` (its
# simplified stand-in) ticks counter 1 and answers, or traps when the host says so; `fine` ticks
# counter 2 and answers.
PLUGIN = """(module
  (import "wasm_plugins" "tick" (func $tick (param i32) (result i32)))
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{\\"message\\": \\"your input is bad\\"}")
  (data (i32.const 512) "\\"rough\\"")
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func (export "blame") (param i32 i32) (result i64)
    (drop (call $tick (i32.const 0)))
    (call $error (i32.const 256) (i32.const 32))
    (i64.const 0))
  (func (export "rough") (param i32 i32) (result i64)
    (if (call $tick (i32.const 1)) (then unreachable))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 7)))
  (func (export "fine") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $tick (i32.const 2)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len)))))"""


class Ticks:
    """The host function the plugin calls at the start of each function: counts the runs of
    each, and tells ``rough`` whether to trap."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.rough_traps = False

    def __call__(self, call: Any, which: int) -> int:
        self.runs[which] += 1
        return 1 if which == 1 and self.rough_traps else 0

    @hookimpl
    def wasm_plugins_register_host_functions(
        self, register: Callable[[HostFunction], None]
    ) -> None:
        register(
            HostFunction(
                module="wasm_plugins",
                name="tick",
                signature=FuncSignature(("i32",), ("i32",)),
                implementation=self,
            )
        )


class World:
    def __init__(self, engine: Engine, **policy: Any) -> None:
        self.ticks = Ticks()
        self.host = PluginHost(clock=FakeClock(), random=FixedRandom(1.0), blocked=())
        self.host.register_policy(self.ticks, name="ticks")
        policy.setdefault("max_attempts", 1)
        policy.setdefault("breaker", {"failure_threshold": 2, "recovery_time": "30 s"})
        self.host.load(
            {
                "name": "gamer",
                "engine": engine.name,
                "module": {"wat": PLUGIN},
                "functions": {
                    "blame": {"simplified": "rough", "default": "default answer"},
                    "rough": {},
                    "fine": {},
                },
                "policy": policy,
            }
        )

    def state(self, function: str) -> BreakerState:
        return self.host.breaker("gamer", function).state


@pytest.fixture
def world(engine: Engine) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(**policy: Any) -> World:
        made.append(World(engine, **policy))
        return made[-1]

    yield make
    for item in made:
        item.host.close()


class TestGuestReportedErrors:
    """A guest that reports an error (its error import) cannot keep its breaker closed by
    blaming the input."""

    def test_they_count_for_the_breaker(self, world: Callable[..., World]) -> None:
        """Reported errors open the breaker like traps; then the plugin's code stops running."""
        subject = world(fallbacks=[])
        for _ in range(2):
            with pytest.raises(ContextualError) as caught:
                subject.host.call("gamer", "blame", "x")
            assert caught.value.error.kind == "runtime"
        assert subject.state("blame") is BreakerState.OPEN
        with pytest.raises(ContextualError):
            subject.host.call("gamer", "blame", "x")
        assert subject.ticks.runs[0] == 2

    def test_a_classification_on_host_evidence_may_blame_the_caller(
        self, world: Callable[..., World]
    ) -> None:
        """A classification hook that checks the input itself (host evidence) may say the
        caller caused the error: then the breaker ignores it."""

        class InputChecker:
            @hookimpl
            def wasm_plugins_classify_error(self, error: PluginError, call: Any) -> Any:
                if call.function == "blame" and call.input == "known bad":
                    return Classification(caused_by_caller=True)
                return None

        subject = world(fallbacks=[])
        subject.host.register_policy(InputChecker(), name="input-checker")
        for _ in range(4):
            with pytest.raises(ContextualError):
                subject.host.call("gamer", "blame", "known bad")
        assert subject.state("blame") is BreakerState.CLOSED
        for _ in range(2):
            with pytest.raises(ContextualError):
                subject.host.call("gamer", "blame", "anything else")
        assert subject.state("blame") is BreakerState.OPEN


class TestOpenBreaker:
    """While a function's breaker is open, none of its code runs, fallbacks included."""

    def test_simplified_runs_only_while_its_own_breaker_is_closed(
        self, world: Callable[..., World]
    ) -> None:
        """The simplified stand-in is another function with its own breaker: once it fails
        often enough, its breaker opens too and it stops running; a fallback that runs no plugin
        code (the default value) still answers."""
        subject = world(fallbacks=["simplified", "default"])
        subject.ticks.rough_traps = True
        answers = [subject.host.invoke("gamer", "blame", "x") for _ in range(6)]
        assert {outcome.fallback for outcome in answers} == {"default"}
        assert subject.state("blame") is BreakerState.OPEN
        assert subject.state("rough") is BreakerState.OPEN
        assert subject.ticks.runs[1] == 2, "rough stopped running once its breaker opened"
        assert subject.ticks.runs[0] == 2, "blame stopped running once its breaker opened"

    def test_simplified_answers_while_it_is_healthy(self, world: Callable[..., World]) -> None:
        """With blame's breaker open and rough's closed, rough answers (it is other code)."""
        subject = world(fallbacks=["simplified", "default"])
        subject.host.breaker("gamer", "blame").force_open()
        outcome = subject.host.invoke("gamer", "blame", "x")
        assert (outcome.value, outcome.fallback) == ("rough", "simplified")
        assert subject.ticks.runs == [0, 1, 0]

    def test_an_open_stand_in_is_not_run(self, world: Callable[..., World]) -> None:
        """With rough's breaker open by hand, blame's fallback skips it."""
        subject = world(fallbacks=["simplified", "default"])
        subject.host.breaker("gamer", "rough").force_open()
        subject.host.breaker("gamer", "blame").force_open()
        outcome = subject.host.invoke("gamer", "blame", "x")
        assert (outcome.value, outcome.fallback) == ("default answer", "default")
        assert subject.ticks.runs == [0, 0, 0]
