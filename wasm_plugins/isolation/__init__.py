"""Isolation: run a plugin in this process or in worker processes.

- :func:`choose_isolation` decides where a plugin runs: ``auto`` picks a worker process when the
  engine cannot enforce a configured limit in-process (a timeout on an engine that can neither
  interrupt a call nor run a metered module; wasmer 1.1 runs metered modules); fuel on an engine
  that cannot meter it is a ConfigurationError whatever the isolation.
- :class:`ProcessSandbox` has the API of :class:`~wasm_plugins.sandbox.Sandbox` (both are a
  :class:`~wasm_plugins.sandbox.PluginSandbox`) and runs the plugin in the workers of a
  :class:`WorkerPool`: it wraps the host's :class:`~wasm_plugins.sandbox.LoadedModule` and a
  :class:`WorkerClient`, which enforces deadlines by killing the worker, reports a dead worker as
  an InstanceError (the pool replaces it), serves host functions in the host over the channel, and
  holds a per-plugin bulkhead.

Memory of a worker: the limit applied is ``RLIMIT_DATA`` (``WorkerPool(memory_limit=...)``, default
2 GiB), not ``RLIMIT_AS``. Measured here (Linux 6.18, CPython 3.10, wasmer 1.1, wasmtime 50):

- Every linear memory reserves address space for its whole 32-bit range plus guard pages, whatever
  its limit: 6 GiB per instance on wasmer, 4 GiB + 64 MiB on wasmtime (VmSize of a process with 1
  instance: 6.2 / 4.2 GiB; with 10: 60 / 41 GiB). Only the pages in use are committed.
- ``RLIMIT_AS`` counts those reservations: at 4.5 GiB no wasmer instance can be made (one
  wasmtime instance), at 8 GiB one instance of either engine, at 16 GiB two (wasmer) or three
  (wasmtime). A worker holds one instance per plugin it serves, so ``RLIMIT_AS`` cannot bound
  memory unless the engines reserve less, and that is a compile setting (host and worker would
  both need it, and the adapters do not expose it). It stays available as
  ``address_space_limit``, off by default.
- ``RLIMIT_DATA`` counts private writable mappings (Linux 4.7 and later), and the engines make
  linear memory writable range by range as it grows (``mprotect``), so it counts what guests
  really use, plus the Python heap and thread stacks: VmData was 24 MiB with 10 idle instances,
  88 MiB after one grew to 64 MiB, 3 GiB after one grew to 2.9 GiB. At the limit ``memory.grow``
  returns -1 on both engines, which the guest sees as a refused grow (reported as
  ``ResourceLimitExceeded(resource="memory")``); Python raises MemoryError (the worker reports an
  InstanceError with state ``out_of_memory`` and exits, and is replaced); an engine that cannot
  map a new memory fails the instantiation (an InstanceError), and one that aborts on a failed
  allocation is reported as an InstanceError naming the signal. Under a 256 MiB data limit a
  worker runs both engines, and a memory bomb allowed 1 GiB by its plugin limit stops at ~235 MiB
  with a memory error (the test suite checks this).

Each plugin's own memory limit is still enforced inside the worker by the module rewrite (and
wasmtime's store limits); the data limit bounds a whole worker, whatever it holds.
"""

from wasm_plugins.isolation._bulkhead import Bulkhead
from wasm_plugins.isolation._choose import (
    IN_PROCESS,
    ISOLATIONS,
    PROCESS,
    choose_isolation,
    limits_needing_worker,
)
from wasm_plugins.isolation._client import TIMEOUT_GRACE, RemoteMemory, WorkerClient
from wasm_plugins.isolation._pool import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_POOL_SIZE,
    DEFAULT_SPIN,
    RemoteSession,
    WorkerPool,
    close_all_pools,
)
from wasm_plugins.isolation._process import DEFAULT_QUEUE_TIMEOUT, ProcessSandbox

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_QUEUE_TIMEOUT",
    "DEFAULT_SPIN",
    "IN_PROCESS",
    "ISOLATIONS",
    "PROCESS",
    "TIMEOUT_GRACE",
    "Bulkhead",
    "ProcessSandbox",
    "RemoteMemory",
    "RemoteSession",
    "WorkerClient",
    "WorkerPool",
    "choose_isolation",
    "close_all_pools",
    "limits_needing_worker",
]
