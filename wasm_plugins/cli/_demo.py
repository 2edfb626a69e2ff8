"""``wasm-plugins demo``: a host at work, good calls and typed failures (the show itself is
:mod:`wasm_plugins._demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

__all__ = ["demo_options", "show_demo"]


def demo_options(parser: argparse.ArgumentParser) -> None:
    """``--hostapi``."""
    parser.add_argument("--hostapi", type=Path, default=None, help="path of the hostapi/ folder")


def show_demo(out: TextIO, hostapi: Path | None) -> int:
    """Run the demo; its exit status."""
    from wasm_plugins._demo import run_demo  # noqa: PLC0415 lazy: keeps --help fast

    return run_demo(out, hostapi)
