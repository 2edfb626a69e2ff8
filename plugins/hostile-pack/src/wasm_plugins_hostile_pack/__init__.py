"""hostile-pack: deliberately misbehaving WebAssembly plugins, to test a host's defences."""

from importlib.resources import files

from wasm_plugins import hookimpl

MANIFESTS = (
    "endless-loop",
    "memory-bomb",
    "trapper",
    "bad-output",
    "capability-thief",
    "wasi-escape",
)
"""One manifest per hostile plugin, each next to the WAT module it names."""


@hookimpl
def wasm_plugins_register_plugins(register):
    """Contribute every hostile plugin, each described by its manifest."""
    for name in MANIFESTS:
        register(files(__name__) / f"{name}.toml")
