"""A fake clock and a fixed random source for the policy (also importable from
:mod:`wasm_plugins.testing`)."""

from wasm_plugins.testing import FakeClock, FixedRandom

__all__ = ["FakeClock", "FixedRandom"]
