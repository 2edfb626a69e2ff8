"""The installed distribution's version, read once from its metadata."""

from importlib import metadata

try:
    __version__ = metadata.version("wasm-plugins")
except metadata.PackageNotFoundError:  # a checkout on sys.path, never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
