"""The sandbox: one module under enforced limits and capabilities, speaking the guest ABI."""

from wasm_plugins.sandbox._abi import (
    ABI_VERSION,
    IMPORT_MODULE,
    Session,
    abi_host_functions,
    plugin_functions,
)
from wasm_plugins.sandbox._api import PluginSandbox
from wasm_plugins.sandbox._binary import PAGE_SIZE
from wasm_plugins.sandbox._cache import CacheStats, CompiledModule, ModuleCache, default_directory
from wasm_plugins.sandbox._codec import Codec, get_codec
from wasm_plugins.sandbox._command import wrap_command
from wasm_plugins.sandbox._extism import (
    EXTISM_MODULE,
    EXTISM_USER_MODULE,
    LOG_LEVELS,
    ExtismSession,
    detect_abi,
    extism_host_functions,
    extism_plugin_functions,
    guest_log_record,
    kernel_module,
    worker_served_functions,
)
from wasm_plugins.sandbox._failures import (
    annotate,
    closed_sandbox,
    error_from_report,
    error_report,
    grow_may_explain,
    host_failure,
    input_too_large,
    instance_is_suspect,
    refused_grow,
)
from wasm_plugins.sandbox._host_functions import HostCall, HostFunction, LinkPlan, u32
from wasm_plugins.sandbox._limits import Limits
from wasm_plugins.sandbox._loaded import (
    WASI_MODULE,
    LoadedModule,
    ModuleSource,
    compiled_with_fuel,
    kernel_fuel,
    linked_kernel,
    load_module_bytes,
)
from wasm_plugins.sandbox._metering import meter_module
from wasm_plugins.sandbox._sandbox import Sandbox
from wasm_plugins.sandbox._stack import on_roomy_stack

__all__ = [
    "ABI_VERSION",
    "EXTISM_MODULE",
    "EXTISM_USER_MODULE",
    "IMPORT_MODULE",
    "LOG_LEVELS",
    "PAGE_SIZE",
    "WASI_MODULE",
    "CacheStats",
    "Codec",
    "CompiledModule",
    "ExtismSession",
    "HostCall",
    "HostFunction",
    "Limits",
    "LinkPlan",
    "LoadedModule",
    "ModuleCache",
    "ModuleSource",
    "PluginSandbox",
    "Sandbox",
    "Session",
    "abi_host_functions",
    "annotate",
    "closed_sandbox",
    "compiled_with_fuel",
    "default_directory",
    "detect_abi",
    "error_from_report",
    "error_report",
    "extism_host_functions",
    "extism_plugin_functions",
    "get_codec",
    "grow_may_explain",
    "guest_log_record",
    "host_failure",
    "input_too_large",
    "instance_is_suspect",
    "kernel_fuel",
    "kernel_module",
    "linked_kernel",
    "load_module_bytes",
    "meter_module",
    "on_roomy_stack",
    "plugin_functions",
    "refused_grow",
    "u32",
    "worker_served_functions",
    "wrap_command",
]
