"""The guest kit: what a plugin author builds against, shipped in the wheel.

- ``ABI.md``: the guest ABI (the text of ``hostapi/ABI.md``, normative there);
- ``c/``: ``wasm_plugins.h`` (the ABI's declarations), ``wp_kit.h`` (an allocator that serves
  ``wp_alloc``/``wp_free``, an output buffer, ``wp_fail``) and ``wp_json.h`` (a small JSON reader
  and writer), all header-only and freestanding;
- ``zig/wasm_plugins.zig``: the same for Zig; ``assemblyscript/wasm-plugins.ts``: for
  AssemblyScript;
- ``templates/``: what :func:`new_plugin` writes (``wasm-plugins new``), built by
  :func:`build_plugin` (``wasm-plugins build``).

Unmodified Extism plugins need none of this: their PDKs target the ``extism`` ABI, which the
sandbox runs as well (``docs/writing-a-plugin.md``).
"""

from __future__ import annotations

from pathlib import Path

from wasm_plugins.guest._build import build_plugin
from wasm_plugins.guest._scaffold import LANGUAGES, default_requirement, new_plugin

__all__ = ["LANGUAGES", "build_plugin", "default_requirement", "kit_path", "new_plugin"]


def kit_path() -> Path:
    """The folder of the guest kit (headers, libraries, ABI text, templates)."""
    return Path(__file__).resolve().parent
