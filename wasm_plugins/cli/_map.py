"""``wasm-plugins map``: call a plugin function once per line of a JSON Lines file, writing one
line per input (its value or its error's dict), in order."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from wasm_plugins.errors import CommunicationError, PluginError
from wasm_plugins.host import MapExecutor, PluginHost

__all__ = ["map_file", "map_options"]


def map_options(parser: argparse.ArgumentParser) -> None:
    """PLUGIN, FUNCTION, ``--input-file``, ``--output-file``, ``--concurrency``,
    ``--scheduler``."""
    parser.add_argument("plugin", metavar="PLUGIN")
    parser.add_argument("function", metavar="FUNCTION")
    parser.add_argument("--input-file", required=True, type=Path, help="JSON Lines, one input each")
    parser.add_argument("--output-file", required=True, type=Path, help="JSON Lines written")
    parser.add_argument("--concurrency", type=int, default=None, help="threads (default: CPUs)")
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run the inputs on the Dask cluster of this scheduler (the dask extra)",
    )


class _Unreadable:
    """An input line that is not JSON: its error is reported on its output line."""

    def __init__(self, error: PluginError) -> None:
        self.error = error


def _parse(number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        return _Unreadable(
            CommunicationError(
                channel="input-file",
                direction="host-to-guest",
                message=f"Communication failed: line {number} is not JSON: {exc}",
                suggestion="write one JSON value per line",
            )
        )


def map_file(arguments: argparse.Namespace, out: TextIO, discover: Callable[[], PluginHost]) -> int:
    """Run the map; exit 0 when every input gave a value, 1 when some failed."""
    lines = arguments.input_file.read_text(encoding="utf-8").splitlines()
    parsed = [_parse(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    good = [value for value in parsed if not isinstance(value, _Unreadable)]
    total = len(good)

    def progress(done: int) -> None:
        if done == total or done % 100 == 0:
            sys.stderr.write(f"\r{done}/{total} ({100 * done // max(total, 1)}%)")
            sys.stderr.flush()

    with discover() as host, contextlib.ExitStack() as stack:
        executor: MapExecutor | None = None
        if arguments.scheduler is not None:
            import distributed  # noqa: PLC0415 - the optional dask extra

            from wasm_plugins.cluster import DaskExecutor  # noqa: PLC0415 - needs the dask extra

            connect: Any = distributed.Client  # untyped
            executor = DaskExecutor(stack.enter_context(connect(arguments.scheduler)))
        results = iter(
            host.map(
                arguments.plugin,
                arguments.function,
                good,
                concurrency=arguments.concurrency,
                progress=progress if sys.stderr.isatty() else None,
                executor=executor,
            )
        )
    failed = 0
    with arguments.output_file.open("w", encoding="utf-8") as output:
        for value in parsed:
            if isinstance(value, _Unreadable):
                record: dict[str, Any] = {"error": value.error.to_dict()}
            else:
                result = next(results)
                if result.error is None:
                    record = {"value": result.value}
                else:
                    record = {"error": result.error.to_dict()}
            failed += "error" in record
            output.write(json.dumps(record) + "\n")
    out.write(f"{len(parsed)} inputs, {len(parsed) - failed} values, {failed} errors\n")
    return 1 if failed else 0
