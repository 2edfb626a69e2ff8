"""text-tools: word counts, slugs and text statistics, as a WebAssembly plugin."""

from importlib.resources import files

from wasm_plugins import hookimpl


@hookimpl
def wasm_plugins_register_plugins(register):
    """Contribute the text-tools plugin, described by its manifest."""
    register(files(__name__) / "plugin.toml")
