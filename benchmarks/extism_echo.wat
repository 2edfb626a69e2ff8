;; echo for Extism's ABI: the same work as hostapi/examples/echo.wat, through the Extism kernel.
;;
;; An Extism plugin function takes no parameters and returns 0 on success. Its input and output
;; live in the kernel's memory, reached through the host imports of `extism:host/env` (offsets and
;; lengths are u64): the input is read 8 bytes at a time (`input_load_u64`, then `input_load_u8` for
;; the tail), copied into a block from `alloc` (`store_u64`, `store_u8`), and that block becomes the
;; output (`output_set`). This is what the Rust and Go PDKs do for `load_input` and `output`.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))

  (memory (export "memory") 1)

  (func (export "echo") (result i32)
    (local $length i64) (local $output i64) (local $at i64) (local $words i64)
    (local.set $length (call $input_length))
    (local.set $output (call $alloc (local.get $length)))
    (local.set $words (i64.and (local.get $length) (i64.const -8)))
    (block $words_done
      (loop $next_word
        (br_if $words_done (i64.ge_u (local.get $at) (local.get $words)))
        (call $store_u64
          (i64.add (local.get $output) (local.get $at))
          (call $input_load_u64 (local.get $at)))
        (local.set $at (i64.add (local.get $at) (i64.const 8)))
        (br $next_word)))
    (block $bytes_done
      (loop $next_byte
        (br_if $bytes_done (i64.ge_u (local.get $at) (local.get $length)))
        (call $store_u8
          (i64.add (local.get $output) (local.get $at))
          (call $input_load_u8 (local.get $at)))
        (local.set $at (i64.add (local.get $at) (i64.const 1)))
        (br $next_byte)))
    (call $output_set (local.get $output) (local.get $length))
    (i32.const 0))
)
