"""Two tiny plugins shipped with the package, so that tests run in any project: one that echoes its
input and one that fails.

Each is a manifest (a read-only mapping, as :meth:`~wasm_plugins.PluginHost.load` takes) with its
module inline as WAT text, so nothing has to be found on disk::

    from wasm_plugins.testing import ECHO, FAILING

    host.load(ECHO)
    host.load({**FAILING, "functions": {"trap": {"default": None}}})

- :data:`ECHO`, plugin ``echo``: its function ``echo`` returns its input unchanged.
- :data:`FAILING`, plugin ``failing``: ``trap`` traps (a ``runtime`` error with trap
  ``unreachable``) and ``refuse`` reports a handled error, ``{"message": "refused"}`` (a ``runtime``
  error with trap ``guest_error``). Neither needs a capability.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["ECHO", "ECHO_WAT", "FAILING", "FAILING_WAT"]


def bump_allocator_wat(heap: int) -> str:
    """WAT for ``wp_alloc`` (as ``$alloc``) and ``wp_free``: a bump allocator whose heap starts at
    ``heap``, for a module that declares its own memory."""
    return _BUMP_ALLOCATOR.format(heap=heap)


_BUMP_ALLOCATOR = """
  (global $heap (mut i32) (i32.const {heap}))
  ;; A bump allocator: the host allocates one input buffer per instance, and a new one only
  ;; when an input is larger. Returns 0 when memory cannot grow.
  (func $alloc (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.lt_u (local.get $end) (local.get $ptr)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add
                    (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16)))
                    (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))
  (func (export "wp_free") (param $ptr i32) (param $size i32))
"""

_ALLOCATOR = '  (memory (export "memory") 1)\n' + bump_allocator_wat(1024)

ECHO_WAT = f"""(module
{_ALLOCATOR}
  ;; The output is the input buffer itself: the host leaves it alone until the next call.
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
"""
"""The echo module: guest ABI 1, one function ``echo``."""

_REFUSAL = '{"message": "refused"}'
_REFUSAL_WAT = _REFUSAL.replace('"', '\\"')

FAILING_WAT = f"""(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
{_ALLOCATOR}
  (data (i32.const 16) "{_REFUSAL_WAT}")
  (func (export "trap") (param $ptr i32) (param $len i32) (result i64)
    unreachable)
  (func (export "refuse") (param $ptr i32) (param $len i32) (result i64)
    (call $error (i32.const 16) (i32.const {len(_REFUSAL)}))
    (i64.const 0))
)
"""
"""The failing module: guest ABI 1, functions ``trap`` and ``refuse``."""


def _manifest(name: str, wat: str) -> Mapping[str, Any]:
    return MappingProxyType({"name": name, "version": "1.0.0", "module": {"wat": wat}})


ECHO = _manifest("echo", ECHO_WAT)
"""The manifest of plugin ``echo``; ``{**ECHO, "functions": {...}}`` adds per-function settings."""

FAILING = _manifest("failing", FAILING_WAT)
"""The manifest of plugin ``failing``, whose functions ``trap`` and ``refuse`` always fail."""
