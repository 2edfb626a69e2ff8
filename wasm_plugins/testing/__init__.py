"""The testing toolkit (docs/testing.md): for host-app, policy and plugin authors.

- :class:`FakeClock` and :class:`FixedRandom`: a fake clock and a fixed random source for the
  policy (importable from here, or from :mod:`~wasm_plugins.testing.clock`);
- :data:`ECHO` and :data:`FAILING` (from :mod:`~wasm_plugins.testing.plugins`): manifests of a
  tiny plugin that echoes its input and of one that fails, with their modules inline;
- :mod:`~wasm_plugins.testing.faults`: the fault injector, a pluggy plugin around the attempt hook;
- :mod:`~wasm_plugins.testing.pytest_plugin`: fixtures ``plugin_host``, ``fault_injector``,
  ``fake_clock`` and the ``wasm_faults`` marker (loaded by pytest through its entry point);
- :mod:`~wasm_plugins.testing.modules`: small valid modules in WAT, and mutations of module bytes;
- :mod:`~wasm_plugins.testing.harness`: steps against a host, and the invariants they keep;
- :mod:`~wasm_plugins.testing.strategies`, :mod:`~wasm_plugins.testing.stateful` and
  :mod:`~wasm_plugins.testing.fuzz` (``wasm-plugins fuzz``): Hypothesis strategies and stateful
  fault fuzzing; these need Hypothesis (``pip install 'wasm-plugins[testing]'``).

Only the standard-library-only parts are imported here, so that importing one module of the
toolkit never needs what another does.
"""

from wasm_plugins.policy import FakeClock, FixedRandom
from wasm_plugins.testing.plugins import ECHO, FAILING

__all__ = ["ECHO", "FAILING", "FakeClock", "FixedRandom"]
