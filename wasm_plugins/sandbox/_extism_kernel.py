"""The Extism kernel: a small WebAssembly module, linked beside each Extism plugin, that owns
the plugin's input, output, error and memory blocks, and forwards config, vars, logs and HTTP to
the host.

It runs in the plugin's store, so the hot imports (``load_u64``, ``store_u64``, ``input_load_u64``)
are guest-to-guest calls that never enter Python. Its memory is separate from the plugin's; the
host reads and writes it directly (the header below), so a call costs one engine call.

Memory layout (little-endian):

====== ======================================================================================
offset field
====== ======================================================================================
0      input offset (i64)
8      input length (i64)
16     output offset (i64; 0: no output)
24     output length (i64)
32     error block offset (i64; 0: no error)
40     fault code (i64; 0: none) - why the kernel stopped the plugin
48     fault offset (i64) - the offset the plugin passed
56     top: the end of the allocated region (i64)
64     size of an allocation that memory could not hold (i64; 0: none)
72     cache of the last block checked: start (i32), end (i32)
80     blocks: an 8-byte header (length: i32, state: i32, 1 live, 2 freed), then the data
====== ======================================================================================

Every block is 8-byte aligned. Loads, stores, output and error must fall inside a live block;
anything else stops the plugin with a fault code, which the host turns into a typed error.
The host starts each call by writing the header and the input block, so every block of the
previous call is gone (as in Extism, where memory is reset between calls).
"""

from __future__ import annotations

__all__ = [
    "FAULTS",
    "HEADER",
    "HOST_NAMESPACE",
    "KERNEL_FUNCTIONS",
    "kernel_wat",
]

HOST_NAMESPACE = "wasm-plugins:extism"
"""The import module of the host functions the kernel calls (never visible to plugins)."""

HEADER = 80
"""Bytes before the first block header; the input block's header follows."""

KERNEL_FUNCTIONS = (
    "alloc",
    "free",
    "length",
    "length_unsafe",
    "load_u8",
    "load_u64",
    "store_u8",
    "store_u64",
    "input_length",
    "input_load_u8",
    "input_load_u64",
    "output_set",
    "error_set",
    "config_get",
    "var_get",
    "var_set",
    "log_trace",
    "log_debug",
    "log_info",
    "log_warn",
    "log_error",
    "get_log_level",
    "http_request",
    "http_status_code",
    "http_headers",
)
"""What a plugin may import from ``extism:host/env`` (the kernel's other exports are private)."""

FAULTS = {
    1: "read past the end of its input",
    2: "loaded from an offset outside every block it owns",
    3: "stored to an offset outside every block it owns",
    4: "freed a block it does not own, or freed it twice",
    5: "set as output a range outside every block it owns",
    6: "set as error a block it does not own",
    7: "passed an offset that is not the start of a block it owns",
}
"""Fault codes the kernel records before it stops the plugin."""

_TEMPLATE = """
(module
  (import "{host}" "config_length" (func $config_length (param i64 i64) (result i64)))
  (import "{host}" "var_length" (func $var_length (param i64 i64) (result i64)))
  (import "{host}" "var_set" (func $host_var_set (param i64 i64 i64 i64)))
  (import "{host}" "take" (func $take (param i64 i64)))
  (import "{host}" "log" (func $log (param i32 i64 i64)))
  (import "{host}" "log_level" (func $log_level (result i32)))
  (import "{host}" "http_request" (func $host_http_request (param i64 i64 i64 i64) (result i64)))
  (import "{host}" "http_status_code" (func $host_http_status (result i32)))
  (import "{host}" "http_headers_length" (func $http_headers_length (result i64)))

  (memory (export "memory") 1 {maximum})

  ;; Record why the plugin is stopped; the caller traps right after.
  (func $fault (param $code i64) (param $at i64)
    (i64.store (i32.const 40) (local.get $code))
    (i64.store (i32.const 48) (local.get $at)))

  ;; The data address of the live block that starts at $offs, or 0.
  (func $block (param $offs i64) (result i32)
    (local $header i32) (local $top i32) (local $data i32)
    (if (i64.gt_u (local.get $offs) (i64.const 0xFFFFFFFF)) (then (return (i32.const 0))))
    (local.set $header (i32.const {heap}))
    (local.set $top (i32.wrap_i64 (i64.load (i32.const 56))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $header) (local.get $top)))
        (local.set $data (i32.add (local.get $header) (i32.const 8)))
        (if (i32.eq (local.get $data) (i32.wrap_i64 (local.get $offs)))
          (then
            (return (select (local.get $data) (i32.const 0)
              (i32.eq (i32.load offset=4 (local.get $header)) (i32.const 1))))))
        (local.set $header
          (i32.and
            (i32.add (i32.add (local.get $data) (i32.load (local.get $header))) (i32.const 7))
            (i32.const -8)))
        (br $next)))
    (i32.const 0))

  ;; The data address of the live block holding [offs, offs + width), or 0.
  (func $find (param $offs i64) (param $width i64) (result i32)
    (local $header i32) (local $top i32) (local $data i32) (local $length i64)
    (local.set $header (i32.const {heap}))
    (local.set $top (i32.wrap_i64 (i64.load (i32.const 56))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $header) (local.get $top)))
        (local.set $data (i32.add (local.get $header) (i32.const 8)))
        (local.set $length (i64.extend_i32_u (i32.load (local.get $header))))
        (if (i32.and
              (i32.eq (i32.load offset=4 (local.get $header)) (i32.const 1))
              (i32.and
                (i64.ge_u (local.get $length) (local.get $width))
                (i64.le_u
                  (i64.sub (local.get $offs) (i64.extend_i32_u (local.get $data)))
                  (i64.sub (local.get $length) (local.get $width)))))
          (then
            (i32.store (i32.const 72) (local.get $data))
            (i32.store (i32.const 76)
              (i32.add (local.get $data) (i32.wrap_i64 (local.get $length))))
            (return (local.get $data))))
        (local.set $header
          (i32.and
            (i32.add (i32.add (local.get $data) (i32.wrap_i64 (local.get $length))) (i32.const 7))
            (i32.const -8)))
        (br $next)))
    (i32.const 0))

  ;; The address of [offs, offs + width) inside a live block, or a fault.
  (func $check (param $offs i64) (param $width i64) (param $code i64) (result i32)
    (local $low i64) (local $span i64)
    (local.set $low (i64.load32_u (i32.const 72)))
    (local.set $span (i64.sub (i64.load32_u (i32.const 76)) (local.get $low)))
    (if (i32.and
          (i64.ge_u (local.get $span) (local.get $width))
          (i64.le_u
            (i64.sub (local.get $offs) (local.get $low))
            (i64.sub (local.get $span) (local.get $width))))
      (then (return (i32.wrap_i64 (local.get $offs)))))
    (if (i32.eqz (call $find (local.get $offs) (local.get $width)))
      (then (call $fault (local.get $code) (local.get $offs)) (unreachable)))
    (i32.wrap_i64 (local.get $offs)))

  ;; The data address of the live block at $offs, or a fault (code 7).
  (func $owned (param $offs i64) (result i32)
    (local $data i32)
    (local.set $data (call $block (local.get $offs)))
    (if (i32.eqz (local.get $data))
      (then (call $fault (i64.const 7) (local.get $offs)) (unreachable)))
    (local.get $data))

  (func $block_length (param $data i32) (result i64)
    (i64.load32_u (i32.sub (local.get $data) (i32.const 8))))

  (func $grow_to (param $end i64) (result i32)
    (local $have i64)
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.le_u (local.get $end) (local.get $have)) (then (return (i32.const 1))))
    (i32.ne
      (memory.grow
        (i32.wrap_i64
          (i64.shr_u
            (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 0xFFFF))
            (i64.const 16))))
      (i32.const -1)))

  (func (export "wp_reserve") (param $end i64) (result i32)
    (call $grow_to (local.get $end)))

  (func $alloc (export "alloc") (param $length i64) (result i64)
    (local $top i64) (local $end i64)
    (local.set $top (i64.load (i32.const 56)))
    (local.set $end
      (i64.and
        (i64.add
          (i64.add (local.get $top) (i64.const 8))
          (i64.add (local.get $length) (i64.const 7)))
        (i64.const -8)))
    (if (i32.or
          (i64.gt_u (local.get $length) (i64.const 0xFFFF0000))
          (i32.eqz (call $grow_to (local.get $end))))
      (then
        (i64.store (i32.const 64) (local.get $length))
        (return (i64.const 0))))
    (i32.store (i32.wrap_i64 (local.get $top)) (i32.wrap_i64 (local.get $length)))
    (i32.store offset=4 (i32.wrap_i64 (local.get $top)) (i32.const 1))
    (i64.store (i32.const 56) (local.get $end))
    (i64.add (local.get $top) (i64.const 8)))

  (func (export "free") (param $offs i64)
    (local $data i32) (local $end i32)
    (if (i64.eqz (local.get $offs)) (then (return)))
    (local.set $data (call $block (local.get $offs)))
    (if (i32.eqz (local.get $data))
      (then (call $fault (i64.const 4) (local.get $offs)) (unreachable)))
    (i32.store (i32.sub (local.get $data) (i32.const 4)) (i32.const 2))
    (i64.store (i32.const 72) (i64.const 0))
    (local.set $end
      (i32.and
        (i32.add
          (i32.add (local.get $data) (i32.load (i32.sub (local.get $data) (i32.const 8))))
          (i32.const 7))
        (i32.const -8)))
    (if (i64.eq (i64.extend_i32_u (local.get $end)) (i64.load (i32.const 56)))
      (then
        (i64.store (i32.const 56)
          (i64.extend_i32_u (i32.sub (local.get $data) (i32.const 8)))))))

  (func $length (export "length") (param $offs i64) (result i64)
    (local $data i32)
    (local.set $data (call $block (local.get $offs)))
    (if (i32.eqz (local.get $data)) (then (return (i64.const 0))))
    (call $block_length (local.get $data)))

  (func (export "length_unsafe") (param $offs i64) (result i64)
    (call $length (local.get $offs)))

  (func (export "load_u8") (param $offs i64) (result i32)
    (i32.load8_u (call $check (local.get $offs) (i64.const 1) (i64.const 2))))

  (func (export "load_u64") (param $offs i64) (result i64)
    (i64.load (call $check (local.get $offs) (i64.const 8) (i64.const 2))))

  (func (export "store_u8") (param $offs i64) (param $value i32)
    (i32.store8 (call $check (local.get $offs) (i64.const 1) (i64.const 3)) (local.get $value)))

  (func (export "store_u64") (param $offs i64) (param $value i64)
    (i64.store (call $check (local.get $offs) (i64.const 8) (i64.const 3)) (local.get $value)))

  (func (export "input_length") (result i64)
    (i64.load (i32.const 8)))

  (func (export "input_load_u8") (param $at i64) (result i32)
    (if (i64.ge_u (local.get $at) (i64.load (i32.const 8)))
      (then (call $fault (i64.const 1) (local.get $at)) (unreachable)))
    (i32.load8_u (i32.wrap_i64 (i64.add (i64.load (i32.const 0)) (local.get $at)))))

  (func (export "input_load_u64") (param $at i64) (result i64)
    (local $length i64)
    (local.set $length (i64.load (i32.const 8)))
    (if (i32.or
          (i64.lt_u (local.get $length) (i64.const 8))
          (i64.gt_u (local.get $at) (i64.sub (local.get $length) (i64.const 8))))
      (then (call $fault (i64.const 1) (local.get $at)) (unreachable)))
    (i64.load (i32.wrap_i64 (i64.add (i64.load (i32.const 0)) (local.get $at)))))

  (func (export "output_set") (param $offs i64) (param $length i64)
    (if (i64.eqz (local.get $length))
      (then
        (i64.store (i32.const 16) (i64.const 0))
        (i64.store (i32.const 24) (i64.const 0))
        (return)))
    (if (i32.eqz (call $find (local.get $offs) (local.get $length)))
      (then (call $fault (i64.const 5) (local.get $offs)) (unreachable)))
    (i64.store (i32.const 16) (local.get $offs))
    (i64.store (i32.const 24) (local.get $length)))

  (func (export "error_set") (param $offs i64)
    (if (i64.eqz (local.get $offs))
      (then (i64.store (i32.const 32) (i64.const 0)) (return)))
    (if (i32.eqz (call $block (local.get $offs)))
      (then (call $fault (i64.const 6) (local.get $offs)) (unreachable)))
    (i64.store (i32.const 32) (local.get $offs)))

  ;; A host value of $length bytes (or none, when negative) copied into a new block.
  (func $receive (param $length i64) (result i64)
    (local $offs i64)
    (if (i64.lt_s (local.get $length) (i64.const 0)) (then (return (i64.const 0))))
    (local.set $offs (call $alloc (local.get $length)))
    (if (i64.eqz (local.get $offs)) (then (return (i64.const 0))))
    (call $take (local.get $offs) (local.get $length))
    (local.get $offs))

  (func (export "config_get") (param $key i64) (result i64)
    (call $receive
      (call $config_length (local.get $key) (call $block_length (call $owned (local.get $key))))))

  (func (export "var_get") (param $key i64) (result i64)
    (call $receive
      (call $var_length (local.get $key) (call $block_length (call $owned (local.get $key))))))

  (func (export "var_set") (param $key i64) (param $value i64)
    (local $key_length i64)
    (local.set $key_length (call $block_length (call $owned (local.get $key))))
    (if (i64.eqz (local.get $value))
      (then
        (call $host_var_set (local.get $key) (local.get $key_length) (i64.const 0) (i64.const -1))
        (return)))
    (call $host_var_set
      (local.get $key) (local.get $key_length)
      (local.get $value) (call $block_length (call $owned (local.get $value)))))

  (func $log_at (param $level i32) (param $offs i64)
    (call $log
      (local.get $level) (local.get $offs)
      (call $block_length (call $owned (local.get $offs)))))

  (func (export "log_trace") (param $offs i64) (call $log_at (i32.const 0) (local.get $offs)))
  (func (export "log_debug") (param $offs i64) (call $log_at (i32.const 1) (local.get $offs)))
  (func (export "log_info") (param $offs i64) (call $log_at (i32.const 2) (local.get $offs)))
  (func (export "log_warn") (param $offs i64) (call $log_at (i32.const 3) (local.get $offs)))
  (func (export "log_error") (param $offs i64) (call $log_at (i32.const 4) (local.get $offs)))

  (func (export "get_log_level") (result i32)
    (call $log_level))

  (func (export "http_request") (param $request i64) (param $body i64) (result i64)
    (local $request_length i64) (local $body_length i64)
    (local.set $request_length (call $block_length (call $owned (local.get $request))))
    (if (i64.ne (local.get $body) (i64.const 0))
      (then (local.set $body_length (call $block_length (call $owned (local.get $body))))))
    (call $receive
      (call $host_http_request
        (local.get $request) (local.get $request_length)
        (local.get $body) (local.get $body_length))))

  (func (export "http_status_code") (result i32)
    (call $host_http_status))

  (func (export "http_headers") (result i64)
    (call $receive (call $http_headers_length)))
)
"""


def kernel_wat(maximum_pages: int | None) -> str:
    """The kernel's WAT text, its memory capped at ``maximum_pages`` (``None``: 4 GiB)."""
    return _TEMPLATE.format(
        host=HOST_NAMESPACE,
        heap=HEADER,
        maximum="" if maximum_pages is None else str(maximum_pages),
    )
