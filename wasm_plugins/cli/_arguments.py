"""Values on the command line: sizes, durations and counts with their checks, ``--input``, and the
usage error a bad one is."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from wasm_plugins._units import parse_count, parse_duration, parse_size

if TYPE_CHECKING:
    from wasm_plugins.trust import Grant, GrantedDirectory, TrustPolicy

__all__ = [
    "UsageError",
    "count",
    "duration",
    "fuel",
    "granted_by_flags",
    "rate",
    "read_input",
    "seed",
    "size",
    "trust_options",
    "trust_policy",
]


class UsageError(Exception):
    """A bad command line: printed argparse-style (with the usage when known), exit status 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


def size(text: str) -> int:
    """``--memory``: a positive size with a unit (``16 MiB``)."""
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def duration(text: str) -> float:
    """``--timeout``: a duration with a unit (``200 ms``)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fuel(text: str) -> int:
    """``--fuel``: a positive whole number of units."""
    try:
        return parse_count(int(text.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"fuel: {exc}") from None


def rate(text: str) -> float:
    """A share of attempts, from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the rate is a share of attempts, 0 to 1; got {text!r}")
    return value


def count(text: str) -> int:
    """A positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def seed(text: str) -> int:
    """A whole number, not negative."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is not negative, got {text!r}")
    return value


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def read_input(spec: str | None, raw: bool) -> Any:
    """``--input``: JSON text, or ``@path`` (``@-``: standard input) to read it from a file.

    :raises UsageError: when the file cannot be read or the text is not JSON.
    """
    if spec is None:
        return b"" if raw else None
    if spec.startswith("@"):
        where = spec[1:]
        try:
            data = sys.stdin.buffer.read() if where == "-" else Path(where).read_bytes()
        except OSError as exc:
            raise UsageError(f"--input: cannot read {where!r}: {exc.strerror or exc}") from None
    else:
        data = spec.encode("utf-8", "surrogateescape")
    if raw:
        return data
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise UsageError(f"--input is not UTF-8 text: {exc}") from None
    except ValueError as exc:
        shown = spec if len(spec) <= 60 else spec[:57] + "..."
        raise UsageError(
            f"--input {shown!r} is not valid JSON ({exc}); quote strings, for example "
            "--input '\"text\"', or use --raw to send the text as bytes"
        ) from None


def _preopen(text: str) -> GrantedDirectory:
    from wasm_plugins.trust import parse_preopen_flag  # noqa: PLC0415 - keeps --help fast

    try:
        return parse_preopen_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def trust_options(parser: argparse.ArgumentParser, *, flags: bool = True) -> None:
    """``--trust FILE``; with ``flags``, what the command line grants the plugin it names:
    ``--allow CAPABILITY``, ``--preopen DIR[:rw]``, ``--allow-http HOST``."""
    parser.add_argument(
        "--trust",
        metavar="FILE",
        help="the trust policy (default: $WASM_PLUGINS_TRUST, else only 'log' and capped limits)",
    )
    if not flags:
        return
    parser.add_argument(
        "--allow",
        metavar="CAPABILITY",
        action="append",
        default=[],
        help="grant the plugin a capability (repeat for more), such as kv or wasi",
    )
    parser.add_argument(
        "--preopen",
        metavar="DIR[:rw]",
        type=_preopen,
        action="append",
        default=[],
        help="let the plugin open DIR where its manifest asks (read-only unless :rw)",
    )
    parser.add_argument(
        "--allow-http",
        metavar="HOST",
        action="append",
        default=[],
        help="let the plugin's http capability reach HOST",
    )


def trust_policy(arguments: argparse.Namespace) -> TrustPolicy | None:
    """The policy ``--trust`` names (``None``: the host reads ``WASM_PLUGINS_TRUST``), with what
    the flags grant the plugin named by the command line's TARGET."""
    path = getattr(arguments, "trust", None)
    extra = granted_by_flags(arguments)
    if path is None and extra is None:
        return None
    from wasm_plugins.trust import TrustPolicy  # noqa: PLC0415 - keeps --help fast

    policy = TrustPolicy.from_file(path) if path is not None else TrustPolicy.from_environment()
    target = getattr(arguments, "target", None)
    if extra is None or target is None:
        return policy
    return policy.granting(
        target,
        capabilities=extra.capabilities or (),
        preopens=extra.preopens or (),
        http=extra.http or (),
    )


def granted_by_flags(arguments: argparse.Namespace) -> Grant | None:
    """What ``--allow``, ``--preopen`` and ``--allow-http`` grant (``None``: none given)."""
    allowed = getattr(arguments, "allow", [])
    preopens = getattr(arguments, "preopen", [])
    hosts = getattr(arguments, "allow_http", [])
    if not (allowed or preopens or hosts):
        return None
    from wasm_plugins.trust import Grant  # noqa: PLC0415 - keeps --help fast

    return Grant(capabilities=frozenset(allowed), preopens=tuple(preopens), http=frozenset(hosts))
