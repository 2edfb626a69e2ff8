"""Extism's guest ABI: unmodified Extism plugins under our limits, grants and typed errors.

An Extism plugin imports its kernel from ``extism:host/env`` and exports each function as
``() -> i32`` (0: success). The kernel (:mod:`wasm_plugins.sandbox._extism_kernel`, written
here from Extism's documentation) is a WebAssembly module linked beside the plugin in the same
store; this module is its host side: the session that writes the input and reads the output,
error and faults from the kernel's memory, and the host functions the kernel forwards to
(config, vars with a quota, logs into loguru, HTTP through an allow-list).

Config, vars and logs are the plugin's own business and need no capability (like ``log`` in
ABI 1); ``http_request`` needs the ``http`` grant and reaches only the listed hosts. Functions a
plugin imports from ``extism:host/user`` are the host's functions of the same name from the
``wasm_plugins`` import module, under their own capabilities.
"""

from __future__ import annotations

import atexit
import functools
import json
import struct
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from wasm_plugins._escape import escape
from wasm_plugins._log import logger
from wasm_plugins._units import KiB, MiB
from wasm_plugins.engine import (
    Engine,
    EngineInstance,
    EngineModule,
    ExportFunction,
    ExternInfo,
    FuncSignature,
    GuestMemory,
    LinkedModule,
)
from wasm_plugins.errors import (
    CommunicationError,
    ConfigurationError,
    ExecutionError,
    ModuleError,
    NetworkError,
    ResourceLimitExceeded,
    SecurityViolation,
)
from wasm_plugins.sandbox._abi import IMPORT_MODULE
from wasm_plugins.sandbox._extism_kernel import (
    FAULTS,
    HEADER,
    HOST_NAMESPACE,
    KERNEL_FUNCTIONS,
    kernel_wat,
)
from wasm_plugins.sandbox._host_functions import HostCall, HostFunction, LinkPlan

__all__ = [
    "ABIS",
    "ENTRY_SIGNATURE",
    "EXTISM_MODULE",
    "EXTISM_USER_MODULE",
    "LOG_DISABLED",
    "LOG_LEVELS",
    "ExtismSession",
    "check_extism_module",
    "detect_abi",
    "effective_log_level",
    "extism_host_functions",
    "extism_plugin_functions",
    "guest_log_record",
    "kernel_module",
    "kernel_plan",
    "normalize_abi",
    "worker_served_functions",
]

EXTISM_MODULE = "extism:host/env"
EXTISM_USER_MODULE = "extism:host/user"
ABIS = ("auto", "wasm-plugins", "extism")
ENTRY_SIGNATURE = FuncSignature((), ("i32",))
INITIALIZE = "_initialize"
HTTP_CAPABILITY = "http"

DEFAULT_VAR_QUOTA = 1 * MiB
"""Bytes of keys and values one instance may keep in its vars (Extism's own default)."""
DEFAULT_HTTP_TIMEOUT = 30.0
"""Seconds an HTTP request may take when the plugin has no timeout limit."""
MAX_KEY = 4 * KiB
MAX_LOG = 64 * KiB
MAX_ERROR = 64 * KiB
MAX_HTTP_REQUEST = 64 * KiB

_LOG_LEVELS = LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
"""loguru's levels by Extism's numbers (0 trace ... 4 error)."""
LOG_DISABLED = 2**31 - 1
"""What ``get_log_level`` answers when no guest log line is kept (Extism's ``i32::MAX``)."""
_U64 = 0xFFFFFFFFFFFFFFFF
_CALL_HEADER = struct.Struct("<9q4I")
"""The kernel header and the input block's header, written before every call."""
_RESULT_HEADER = struct.Struct("<9q")

_I64 = "i64"
_SIGNATURES: dict[str, FuncSignature] = {
    "alloc": FuncSignature((_I64,), (_I64,)),
    "free": FuncSignature((_I64,), ()),
    "length": FuncSignature((_I64,), (_I64,)),
    "length_unsafe": FuncSignature((_I64,), (_I64,)),
    "load_u8": FuncSignature((_I64,), ("i32",)),
    "load_u64": FuncSignature((_I64,), (_I64,)),
    "store_u8": FuncSignature((_I64, "i32"), ()),
    "store_u64": FuncSignature((_I64, _I64), ()),
    "input_length": FuncSignature((), (_I64,)),
    "input_load_u8": FuncSignature((_I64,), ("i32",)),
    "input_load_u64": FuncSignature((_I64,), (_I64,)),
    "output_set": FuncSignature((_I64, _I64), ()),
    "error_set": FuncSignature((_I64,), ()),
    "config_get": FuncSignature((_I64,), (_I64,)),
    "var_get": FuncSignature((_I64,), (_I64,)),
    "var_set": FuncSignature((_I64, _I64), ()),
    "log_trace": FuncSignature((_I64,), ()),
    "log_debug": FuncSignature((_I64,), ()),
    "log_info": FuncSignature((_I64,), ()),
    "log_warn": FuncSignature((_I64,), ()),
    "log_error": FuncSignature((_I64,), ()),
    "get_log_level": FuncSignature((), ("i32",)),
    "http_request": FuncSignature((_I64, _I64), (_I64,)),
    "http_status_code": FuncSignature((), ("i32",)),
    "http_headers": FuncSignature((), (_I64,)),
}
assert set(_SIGNATURES) == set(KERNEL_FUNCTIONS)


def normalize_abi(value: object) -> str:
    """``auto``, ``wasm-plugins`` or ``extism`` from what a manifest or a caller gives
    (``1``, as every ABI-1 manifest says, means ``wasm-plugins``).

    :raises ConfigurationError: for anything else.
    """
    if value in (1, "1"):
        return "wasm-plugins"
    if isinstance(value, str) and value in ABIS:
        return value
    raise ConfigurationError(
        field="abi",
        message=f"Invalid configuration: abi - {value!r} is not a guest ABI",
        suggestion='use abi = "auto" (detect from the imports), "wasm-plugins" (or 1), or "extism"',
    )


def detect_abi(imports: Sequence[ExternInfo]) -> str:
    """``extism`` when the module imports from Extism's namespaces, else ``wasm-plugins``."""
    if any(item.module in (EXTISM_MODULE, EXTISM_USER_MODULE) for item in imports):
        return "extism"
    return "wasm-plugins"


def extism_plugin_functions(exports: Sequence[ExternInfo]) -> tuple[str, ...]:
    """The exports with an Extism entry point's type, the reactor's ``_``-names excepted."""
    return tuple(
        e.name
        for e in exports
        if e.kind == "func" and e.signature == ENTRY_SIGNATURE and not e.name.startswith("_")
    )


def check_extism_module(
    exports: Sequence[ExternInfo], functions: Sequence[str] | None, plugin: str
) -> None:
    """Check that every declared function is exported with the type ``() -> i32``.

    :raises ModuleError: naming the first missing or mistyped export.
    """
    by_name = {e.name: e for e in exports}
    for name in functions or ():
        export = by_name.get(name)
        if export is None or export.kind != "func" or export.signature != ENTRY_SIGNATURE:
            raise ModuleError(
                missing_export=name,
                message=(
                    f"Invalid module: an Extism plugin function {name!r} must be exported "
                    f"with type {ENTRY_SIGNATURE}"
                ),
                suggestion=f"export {name} from the plugin (an Extism PDK's plugin_fn does)",
                plugin=plugin,
            )


# -- linking ---------------------------------------------------------------------------------


def _served_by_kernel(call: HostCall, *args: Any) -> None:  # pragma: no cover - never linked
    raise AssertionError("kernel functions are linked to the kernel instance")


def extism_host_functions(host_functions: Iterable[HostFunction]) -> tuple[HostFunction, ...]:
    """What an Extism plugin may import: the kernel's functions (the HTTP ones gated by the
    ``http`` capability), and the host's ``wasm_plugins`` functions under ``extism:host/user``."""
    kernel = tuple(
        HostFunction(
            module=EXTISM_MODULE,
            name=name,
            signature=signature,
            implementation=_served_by_kernel,
            capability=HTTP_CAPABILITY if name.startswith("http_") else None,
            description="served by the Extism kernel",
        )
        for name, signature in _SIGNATURES.items()
    )
    user = tuple(
        HostFunction(
            module=EXTISM_USER_MODULE,
            name=function.name,
            signature=function.signature,
            implementation=function.implementation,
            capability=function.capability,
            description=function.description,
        )
        for function in host_functions
        if function.module == IMPORT_MODULE
    )
    return kernel + user


def kernel_plan(plan: LinkPlan) -> LinkPlan:
    """The plan for instantiation: the kernel's functions come from the linked kernel instance,
    so they leave the host imports, and the host functions the kernel itself imports join."""
    return LinkPlan(
        functions=(
            *(f for f in plan.functions if f.module != EXTISM_MODULE),
            *_KERNEL_HOST_FUNCTIONS,
        ),
        memory=plan.memory,
    )


# Keyed by the engine object itself (not its id): the key keeps the engine alive, so an id can
# never be reused by another engine while a module it compiled is cached.
_kernels: dict[tuple[Engine, int | None, bool], EngineModule] = {}
_kernels_lock = threading.Lock()
# Released before the interpreter tears modules down: the engines' destructors need theirs.
atexit.register(_kernels.clear)


def kernel_module(engine: Engine, maximum_pages: int | None, fuel: bool) -> LinkedModule:
    """The kernel compiled by ``engine`` (once per process and memory cap), ready to link."""
    key = (engine, maximum_pages, fuel)
    with _kernels_lock:
        module = _kernels.get(key)
        if module is None:
            module = engine.compile(engine.wat_to_wasm(kernel_wat(maximum_pages)), fuel=fuel)
            _kernels[key] = module
    return LinkedModule(module=module, namespace=EXTISM_MODULE)


# -- the session -----------------------------------------------------------------------------


def _config_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class ExtismSession:
    """The ABI state of one instance: the kernel's memory, vars, and the value being handed over.

    Each call writes the kernel header and the input block in one go, calls the entry point
    once, and reads the header back: output, error, and the fault that stopped the plugin.
    """

    def __init__(
        self,
        *,
        plugin: str,
        config: Mapping[str, Any],
        capabilities: frozenset[str],
        http_hosts: Sequence[str] = (),
        http_timeout: float | None = None,
        max_output: int = 4 * MiB,
        var_quota: int = DEFAULT_VAR_QUOTA,
        guest_log: Callable[[str, str], None] | None = None,
    ) -> None:
        self.plugin = plugin
        self.guest_log = guest_log
        """Where the plugin's log lines go (loguru level name, text) when not into this
        process's loguru: a worker process hands them to the host."""
        self.config = {key: _config_bytes(value) for key, value in config.items()}
        self.capabilities = capabilities
        self.http_hosts = tuple(host.lower() for host in http_hosts)
        self.http_timeout = http_timeout or DEFAULT_HTTP_TIMEOUT
        self.max_output = max_output
        self.var_quota = var_quota
        self.vars: dict[bytes, bytes] = {}
        self.var_bytes = 0
        self.pending = b""
        self.http_status = 0
        self.http_headers: bytes | None = None
        self.guest_error: bytes | None = None
        self._instance: EngineInstance | None = None
        self._functions: dict[str, ExportFunction] = {}
        self._capacity = 0
        self._budget_open = False
        """Whether the budget armed at instantiation is still unclaimed by a call."""
        self.in_call = False
        """Whether a call started and has not returned: the plugin is running (a host function
        called back into the host) or an exception unwound it halfway, so its state is torn."""

    def attach(self, instance: EngineInstance) -> None:
        """Bind to the instance and its kernel, and run the plugin's ``_initialize`` once."""
        linked = instance.linked
        assert linked is not None, "an Extism plugin is instantiated with its kernel"
        self._instance = instance
        self.kernel_memory: GuestMemory = linked.memory
        self._reserve = linked.export_function("wp_reserve")
        self._call_unit = instance.call_unit
        self._size = self.kernel_memory.size
        memory = self.kernel_memory
        self._read = getattr(memory, "read_unchecked", None) or memory.read
        self._write = getattr(memory, "write_unchecked", None) or memory.write
        self._capacity = self._size()
        self._arm = instance.arm
        self._budget_open = True
        try:
            initialize = instance.export_function(INITIALIZE)
        except ModuleError:
            return
        if initialize.signature == FuncSignature():
            instance.call(initialize)

    def end_budget(self) -> None:
        """Close the budget armed at instantiation (which ``_initialize`` used): the instance
        was made outside a call, so the next call arms its own."""
        self._budget_open = False

    @property
    def instance(self) -> EngineInstance:
        """The instance this session calls."""
        assert self._instance is not None, "session used before attach()"
        return self._instance

    def function(self, name: str) -> ExportFunction:
        """The export handle of a plugin function, looked up once per instance."""
        handle = self._functions.get(name)
        if handle is None:
            handle = self.instance.export_function(name)
            if handle.signature != ENTRY_SIGNATURE or name.startswith("_"):
                raise ModuleError(
                    missing_export=name,
                    message=(
                        f"Invalid module: export {name!r} has type {handle.signature}, an "
                        f"Extism plugin function has type {ENTRY_SIGNATURE}"
                    ),
                    suggestion=f"export {name} with the type {ENTRY_SIGNATURE}",
                )
            self._functions[name] = handle
        return handle

    def _grow(self, end: int) -> None:
        if not self.instance.call(self._reserve, end):
            raise ResourceLimitExceeded(
                resource="memory",
                used=end,
                suggestion="raise limits.memory (the Extism kernel holds the input), or send "
                "a smaller input",
            )
        self._capacity = self._size()

    def invoke(self, function: ExportFunction, data: bytes, max_output: int) -> bytes:
        """One call: write the header and the input, call once, read the result back.

        One budget (fuel, deadline) covers the whole call: growing the kernel's memory for the
        input, the function, and ``_initialize`` when the instance was made for this call.
        """
        if self._budget_open:
            self._budget_open = False
        else:
            self._arm()
        self.in_call = True
        length = len(data)
        start = HEADER + 8
        top = start + ((length + 7) & ~7)
        if top > self._capacity:
            self._grow(top)
        self._size()  # the kernel's memory may have moved since the guest last ran
        write = self._write
        write(0, _CALL_HEADER.pack(start, length, 0, 0, 0, 0, 0, top, 0, 0, 0, length, 1))
        if length:
            write(start, data)
        try:
            code = self._call_unit(function)
        except ExecutionError:
            fault = self._fault()
            if fault is None:
                raise
            failure = fault
        else:
            self.in_call = False
            return self._result(code, max_output)
        raise failure from None

    def _header(self) -> tuple[int, ...]:
        self._capacity = self._size()
        return _RESULT_HEADER.unpack(self._read(0, _RESULT_HEADER.size))

    def _fault(self) -> CommunicationError | ResourceLimitExceeded | None:
        """Why the kernel stopped the plugin, if it did; a failed allocation explains a trap."""
        _, _, _, _, _, fault, signed_at, _, failed = self._header()
        at = signed_at & _U64
        if failed:
            # PDKs use what alloc returns unchecked: the fault that follows is a consequence.
            return _memory_exhausted(failed)
        if fault:
            return CommunicationError(
                message=f"Extism plugin {FAULTS.get(fault, 'broke the kernel')} (offset {at})",
                channel="extism-kernel",
                direction="guest-to-host",
                suggestion="a bug in the plugin: it used the Extism kernel outside what it owns",
            )
        return None

    def _result(self, code: int, max_output: int) -> bytes:
        _, _, output, output_length, error, _, _, _, failed = self._header()
        if error or code:
            raise self._guest_error(error, code, failed)
        if output_length > max_output:
            raise ResourceLimitExceeded(
                resource="output",
                used=output_length,
                limit=max_output,
                suggestion="raise limits.max_output, or make the plugin return less",
            )
        if not output_length:
            return b""
        if output + output_length <= self._capacity:
            # The size was read just now with the header, so the unchecked copy is current.
            return self._read(output, output_length)
        return self.kernel_memory.read(output, output_length)

    def _guest_error(
        self, error: int, code: int, failed: int
    ) -> ExecutionError | ResourceLimitExceeded:
        if not error and failed:
            return _memory_exhausted(failed)
        text = ""
        if error:
            length = int.from_bytes(self.kernel_memory.read(error - 8, 4), "little")
            payload = self.kernel_memory.read(error, min(length, MAX_ERROR))
            text = payload.decode("utf-8", "replace")
        message = text or f"the function returned {code}"
        return ExecutionError(
            message=f"Guest reported an error: {message}",
            trap="guest_error",
            details={"message": text, "details": None, "exit_code": code},
            suggestion="the plugin refused this input; see the message",
        )


def _memory_exhausted(requested: int) -> ResourceLimitExceeded:
    return ResourceLimitExceeded(
        resource="memory",
        used=requested & _U64,
        message=(
            f"Resource limit exceeded: memory - the plugin asked the Extism kernel for "
            f"{requested & _U64} bytes, more than its memory limit allows"
        ),
        suggestion="raise limits.memory, or give the plugin smaller inputs",
    )


# -- the host functions the kernel imports ------------------------------------------------


def _session(call: HostCall) -> ExtismSession:
    session = call.session
    assert isinstance(session, ExtismSession)
    return session


def _read(session: ExtismSession, offset: int, length: int, limit: int) -> bytes:
    return session.kernel_memory.read(offset & _U64, min(length & _U64, limit))


def _hand_over(session: ExtismSession, value: bytes | None) -> int:
    if value is None:
        return -1
    session.pending = value
    return len(value)


def _config_length(call: HostCall, key: int, key_length: int) -> int:
    session = _session(call)
    name = _read(session, key, key_length, MAX_KEY).decode("utf-8", "replace")
    return _hand_over(session, session.config.get(name))


def _var_length(call: HostCall, key: int, key_length: int) -> int:
    session = _session(call)
    return _hand_over(session, session.vars.get(_read(session, key, key_length, MAX_KEY)))


def _var_set(call: HostCall, key: int, key_length: int, value: int, value_length: int) -> None:
    session = _session(call)
    name = _read(session, key, key_length, MAX_KEY)
    old = session.vars.get(name)
    kept = session.var_bytes - (len(name) + len(old) if old is not None else 0)
    if value_length < 0:
        session.vars.pop(name, None)
        session.var_bytes = kept
        return
    used = kept + len(name) + (value_length & _U64)
    if used > session.var_quota:
        raise ResourceLimitExceeded(
            resource="vars",
            used=used,
            limit=session.var_quota,
            suggestion="the plugin keeps too much in its vars; raise the quota or fix the plugin",
        )
    session.vars[name] = _read(session, value, value_length, session.var_quota)
    session.var_bytes = used


def _take(call: HostCall, offset: int, length: int) -> None:
    session = _session(call)
    session.kernel_memory.write(offset & _U64, session.pending[: length & _U64])
    session.pending = b""


def _log(call: HostCall, level: int, offset: int, length: int) -> None:
    session = _session(call)
    text = _read(session, offset, length, MAX_LOG).decode("utf-8", "replace")
    name = _LOG_LEVELS[level] if 0 <= level < len(_LOG_LEVELS) else "INFO"
    if session.guest_log is not None:
        session.guest_log(name, text)
        return
    guest_log_record(call.plugin, name, text)


def guest_log_record(plugin: str, level: str, text: str) -> None:
    """A plugin's log line into loguru, bound to the plugin's name and marked as the guest's."""
    # Escaped: a guest must not forge log lines (newlines) or reach a terminal (escapes).
    logger.bind(plugin=plugin, source="guest").log(level, "{}", escape(text))


def _log_level(call: HostCall) -> int:
    return effective_log_level()


def effective_log_level() -> int:
    """The least severe level, in Extism's numbering, at which a plugin's log line is kept:
    0 trace, 1 debug, 2 info, 3 warn, 4 error, and :data:`LOG_DISABLED` when loguru drops every
    guest line (no sink, every sink above ``ERROR``, or logging disabled for the framework, its
    default). An Extism PDK logs only at this level and above, so a plugin does not even format
    the lines nobody keeps. Sinks' own filters are not consulted: the answer may be lower than
    what a filtering sink keeps, never higher.

    Read from loguru's state (``add``, ``remove``, ``enable`` and ``disable`` update it); where
    that state cannot be read, every level is kept (0).
    """
    try:
        core: Any = getattr(logger, "_core", None)
        if not core.handlers or not _logging_enabled(core, __name__):
            return LOG_DISABLED
        lowest = core.min_level
    except Exception:
        return 0
    for extism_level, name in enumerate(_LOG_LEVELS):
        if logger.level(name).no >= lowest:
            return extism_level
    return LOG_DISABLED


def _logging_enabled(core: Any, name: str) -> bool:
    """Whether loguru would log from module ``name``: its cached answer, else the longest
    prefix ``enable``/``disable`` was given, as loguru decides."""
    cached = core.enabled.get(name)
    if cached is not None:
        return bool(cached)
    dotted = name + "."
    for prefix, status in core.activation_list:
        if dotted.startswith(prefix):
            return bool(status)
    return True


def _host_allowed(session: ExtismSession, host: str, port: int | None) -> bool:
    with_port = f"{host}:{port}" if port is not None else host
    for allowed in session.http_hosts:
        if allowed in (host, with_port):
            return True
        if allowed.startswith("*.") and host.endswith(allowed[1:]):
            return True
    return False


@functools.cache
def _no_redirect() -> type[Any]:
    """A redirect handler that follows none (a redirect would leave the allow-list's control:
    the plugin sees the 3xx instead), made with urllib.request's first use: it imports
    http.client and ssl, which a plugin that makes no request does without."""
    import urllib.request  # noqa: PLC0415 lazy: http.client and ssl, for HTTP requests only

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return NoRedirect


def _http_request(
    call: HostCall, request: int, request_length: int, body: int, body_length: int
) -> int:
    session = _session(call)
    if HTTP_CAPABILITY not in session.capabilities:
        raise SecurityViolation(
            violation_type="capability_denied",
            capability=HTTP_CAPABILITY,
            resource=f"{EXTISM_MODULE}.http_request",
            message=(
                "Security violation: capability 'http' denied - the plugin made an HTTP request"
            ),
            suggestion="grant the 'http' capability and list the hosts the plugin may reach",
        )
    raw = _read(session, request, request_length, MAX_HTTP_REQUEST)
    try:
        described = json.loads(raw)
        url = str(described["url"])
        method = str(described.get("method") or "GET").upper()
        headers = {str(k): str(v) for k, v in (described.get("headers") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CommunicationError(
            message="Extism plugin sent an HTTP request that is not a JSON object with a url",
            channel="extism-http",
            direction="guest-to-host",
        ) from None
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not _host_allowed(session, host, parts.port):
        raise SecurityViolation(
            violation_type="host_not_allowed",
            capability=HTTP_CAPABILITY,
            resource=url[:200],
            message=f"Security violation: HTTP request to {host or url[:80]!r} is not allowed",
            suggestion="add the host to the plugin's http allow-list in the trust policy",
        )
    data = _read(session, body, body_length, session.max_output) if body_length else None
    from urllib.error import HTTPError, URLError  # noqa: PLC0415 lazy: see _no_redirect
    from urllib.request import (  # noqa: PLC0415 lazy: see _no_redirect
        ProxyHandler,
        Request,
        build_opener,
    )

    opener = build_opener(ProxyHandler({}), _no_redirect()())
    limit = session.max_output
    try:
        with opener.open(
            Request(url, data=data, method=method, headers=headers),
            timeout=session.http_timeout,
        ) as response:
            status, payload, received = response.status, response.read(limit + 1), response.headers
    except HTTPError as exc:
        status, payload, received = exc.code, exc.read(limit + 1), exc.headers
    except (URLError, OSError) as exc:
        raise NetworkError(
            operation="http_request",
            host=host,
            message=f"Network error: HTTP request to {host} failed: {exc}",
            suggestion="check that the host is reachable; the call may be retried",
        ) from None
    if len(payload) > limit:
        raise ResourceLimitExceeded(
            resource="http_response",
            used=len(payload),
            limit=limit,
            suggestion="raise limits.max_output, or request less",
        )
    session.http_status = status
    session.http_headers = json.dumps(dict(received.items())).encode()
    return _hand_over(session, payload)


def _http_status_code(call: HostCall) -> int:
    return _session(call).http_status


def _http_headers_length(call: HostCall) -> int:
    session = _session(call)
    return _hand_over(session, session.http_headers)


_KERNEL_HOST_FUNCTIONS = tuple(
    HostFunction(module=HOST_NAMESPACE, name=name, signature=signature, implementation=function)
    for name, signature, function in (
        ("config_length", FuncSignature((_I64, _I64), (_I64,)), _config_length),
        ("var_length", FuncSignature((_I64, _I64), (_I64,)), _var_length),
        ("var_set", FuncSignature((_I64, _I64, _I64, _I64), ()), _var_set),
        ("take", FuncSignature((_I64, _I64), ()), _take),
        ("log", FuncSignature(("i32", _I64, _I64), ()), _log),
        ("log_level", FuncSignature((), ("i32",)), _log_level),
        ("http_request", FuncSignature((_I64, _I64, _I64, _I64), (_I64,)), _http_request),
        ("http_status_code", FuncSignature((), ("i32",)), _http_status_code),
        ("http_headers_length", FuncSignature((), (_I64,)), _http_headers_length),
    )
)


def worker_served_functions() -> tuple[HostFunction, ...]:
    """The kernel's host functions a worker process serves itself, beside the instance whose
    kernel memory and vars they use; ``log_level`` is the host's to answer (its logging)."""
    return tuple(f for f in _KERNEL_HOST_FUNCTIONS if f.name != "log_level")
