"""``wasm-plugins fuzz``: generated inputs and injected faults against a plugin, checking the
error policy's invariants (the work is :mod:`wasm_plugins.testing.fuzz`, which needs Hypothesis)."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from wasm_plugins.cli._arguments import UsageError, count, rate, read_input, seed

if TYPE_CHECKING:
    from wasm_plugins.host import PluginHost

__all__ = ["FUZZ_DESCRIPTION", "fault_kinds", "fuzz_options", "fuzz_plugin"]

FUZZ_DESCRIPTION = (
    "Run random sequences of calls (generated inputs, faults injected into their "
    "attempts, outages, clock moves) against a plugin on fresh hosts, and check the "
    "invariants of the error policy after each step. Typed errors are fine outcomes. "
    "Exit status: 0 every invariant held, 3 one broke (the shortest sequence that breaks "
    "it is printed as Python), 1 a plugin error, 2 a usage error. Needs Hypothesis "
    "(pip install 'wasm-plugins[testing]')."
)
FUZZ_NEEDS = (
    "wasm-plugins fuzz needs Hypothesis, which is not installed here: "
    "pip install 'wasm-plugins[testing]'"
)


def fault_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: comma-separated fault names, ``all``, ``none`` or ``default``."""
    from wasm_plugins.testing.faults import (  # noqa: PLC0415 lazy: keeps --help fast
        DEFAULT_FAULT_KINDS,
        FAULT_LABELS,
    )

    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        return FAULT_LABELS
    if names == ["default"]:
        return DEFAULT_FAULT_KINDS
    unknown = [name for name in names if name not in FAULT_LABELS]
    if unknown or not names:
        close = difflib.get_close_matches(unknown[0], FAULT_LABELS, n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise argparse.ArgumentTypeError(
            f"unknown fault {unknown[0] if unknown else text!r}{hint}; choose from "
            f"{', '.join(FAULT_LABELS)}, or all, none, default"
        )
    return tuple(dict.fromkeys(names))


def fuzz_options(parser: argparse.ArgumentParser) -> None:
    """TARGET, FUNCTION, and how many examples, which faults, how often."""
    from wasm_plugins.testing.faults import DEFAULT_FAULT_KINDS  # noqa: PLC0415 lazy: keeps --help fast

    parser.add_argument("target", metavar="TARGET", help="plugin name, or a .toml/.wasm/.wat path")
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument(
        "--examples",
        metavar="N",
        type=count,
        default=100,
        help="examples, each on a fresh host (100)",
    )
    parser.add_argument(
        "--seed", metavar="S", type=seed, default=None, help="repeat a run (default: random)"
    )
    parser.add_argument(
        "--faults",
        metavar="KINDS",
        type=fault_kinds,
        default=DEFAULT_FAULT_KINDS,
        help="comma-separated: error kinds (network, timeout, runtime...), latency, value, "
        "exception; all; none (default: " + ", ".join(DEFAULT_FAULT_KINDS) + ")",
    )
    parser.add_argument(
        "--rate", metavar="R", type=rate, default=0.3, help="share of attempts with a fault (0.3)"
    )
    parser.add_argument(
        "--input",
        metavar="JSON|@FILE",
        help="an example input: half the inputs are shaped like it (default: any JSON)",
    )
    parser.add_argument(
        "--steps", metavar="N", type=count, default=50, help="steps per example at most (50)"
    )


def fuzz_plugin(
    arguments: argparse.Namespace,
    out: TextIO,
    on_host: Callable[[PluginHost], None] | None = None,
) -> int:
    """Fuzz TARGET's FUNCTION: 0 every invariant held, 3 one broke. ``on_host`` is given every
    host the run makes.

    :raises UsageError: when Hypothesis is not installed.
    """
    try:
        from wasm_plugins.testing.fuzz import run_fuzz  # noqa: PLC0415 optional dependency
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("hypothesis"):
            raise
        raise UsageError(FUZZ_NEEDS) from None
    example = None
    if arguments.input is not None:
        example = read_input(arguments.input, raw=False)
    return run_fuzz(
        arguments.target,
        arguments.function,
        examples=arguments.examples,
        seed=arguments.seed,
        kinds=arguments.faults,
        rate=arguments.rate,
        example_input=example,
        has_example=arguments.input is not None,
        steps=arguments.steps,
        out=out,
        err=sys.stderr,
        on_host=on_host,
    )
