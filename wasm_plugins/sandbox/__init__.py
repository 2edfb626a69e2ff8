"""The sandbox: one module under enforced limits and capabilities, speaking the guest ABI."""

from wasm_plugins.sandbox._abi import ABI_VERSION, IMPORT_MODULE
from wasm_plugins.sandbox._codec import Codec, get_codec
from wasm_plugins.sandbox._host_functions import HostCall, HostFunction, u32
from wasm_plugins.sandbox._limits import Limits
from wasm_plugins.sandbox._sandbox import ModuleSource, Sandbox, load_module_bytes

__all__ = [
    "ABI_VERSION",
    "IMPORT_MODULE",
    "Codec",
    "HostCall",
    "HostFunction",
    "Limits",
    "ModuleSource",
    "Sandbox",
    "get_codec",
    "load_module_bytes",
    "u32",
]
