"""``wasm-plugins trust``: the trust policy entry that would grant what a plugin asks for, with
its module's digest, for a person to review before adding it to the policy file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TextIO

from wasm_plugins.cli._arguments import trust_options
from wasm_plugins.host import PluginHost
from wasm_plugins.targets import resolve_target

__all__ = ["print_entry", "trust_command_options"]


def trust_command_options(parser: argparse.ArgumentParser) -> None:
    """TARGET and ``--trust``."""
    parser.add_argument("target", metavar="TARGET", help="plugin name, or a .toml path")
    trust_options(parser, flags=False)


def print_entry(
    arguments: argparse.Namespace, out: TextIO, discover: Callable[[], PluginHost]
) -> int:
    """Print the entry (TOML) that grants TARGET's whole request, pinned to its module."""
    with discover() as host:
        target = resolve_target(host, arguments.target, refused=True)
        distribution = target.review.distribution if target.review is not None else None
        requested = target.review.requested if target.review is not None else target.manifest
        review = host.review(requested, distribution)
    out.write(review.entry() + "\n")
    return 0
