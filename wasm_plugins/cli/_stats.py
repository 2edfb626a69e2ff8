"""``wasm-plugins stats``: run the demo or a fuzz run, then print the statistics of every host it
made (calls, errors by kind, error rates, latency percentiles, fallbacks, breakers) as a table."""

from __future__ import annotations

import argparse
import io
from typing import TextIO

from wasm_plugins._tables import table
from wasm_plugins.builtin.stats import Stats, combined
from wasm_plugins.cli._demo import demo_options
from wasm_plugins.cli._format import dump, emit
from wasm_plugins.cli._fuzz import fuzz_options, fuzz_plugin
from wasm_plugins.host import PluginHost

__all__ = ["host_stats", "print_stats", "stats_options"]


def stats_options(parser: argparse.ArgumentParser) -> None:
    """RUN (``demo`` or ``fuzz`` with fuzz's arguments) and ``--json``."""
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    runs = parser.add_subparsers(dest="run", required=True, metavar="RUN")
    demo = runs.add_parser("demo", help="the demo's hosts")
    demo_options(demo)
    fuzz = runs.add_parser("fuzz", help="the hosts of a fuzz run (one per example)")
    fuzz_options(fuzz)


def host_stats(hosts: list[PluginHost]) -> Stats:
    """The statistics of several hosts as one (each host's windows on its own clock)."""
    return combined(
        (
            host.metrics.tally,
            host.clock.monotonic(),
            {key: breaker.state.value for key, breaker in host.pipeline.breakers().items()},
        )
        for host in hosts
    )


def print_stats(arguments: argparse.Namespace, out: TextIO) -> int:
    """Run what ``arguments.run`` names with its output set aside, then print the statistics;
    the run's exit status."""
    hosts: list[PluginHost] = []
    aside = io.StringIO()
    if arguments.run == "demo":
        from wasm_plugins._demo import run_demo  # noqa: PLC0415 lazy: keeps --help fast

        status = run_demo(aside, arguments.hostapi, on_host=hosts.append)
    else:
        status = fuzz_plugin(arguments, aside, on_host=hosts.append)
    stats = host_stats(hosts)
    if arguments.json:
        dump(stats.to_dict(), out, pretty=True)
        return status
    rows = stats.rows()
    noun = "host" if len(hosts) == 1 else "hosts"
    out.write(f"{arguments.run}: {len(hosts)} {noun}, {len(rows) - 1} plugin functions\n\n")
    emit(out, table(rows[0], rows[1:]))
    return status
