;; An Extism plugin written against the kernel's documented imports only: one export per import
;; (and per misuse) that the tests exercise.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "length_unsafe" (func $length_unsafe (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
  (import "extism:host/env" "log_trace" (func $log_trace (param i64)))
  (import "extism:host/env" "log_debug" (func $log_debug (param i64)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))
  (import "extism:host/env" "log_warn" (func $log_warn (param i64)))
  (import "extism:host/env" "log_error" (func $log_error (param i64)))
  (import "extism:host/env" "get_log_level" (func $get_log_level (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "{\22count\22: ")       ;; 10 bytes
  (data (i32.const 32) "greeting")            ;; 8 bytes
  (data (i32.const 48) "counter")             ;; 7 bytes
  (data (i32.const 64) "the input was refused")  ;; 21 bytes
  (data (i32.const 96) "none")                ;; 4 bytes
  (global $initialized (mut i32) (i32.const 0))

  ;; A new kernel block holding plugin memory [ptr, ptr + len).
  (func $block (param $ptr i32) (param $len i32) (result i64)
    (local $offs i64) (local $i i32)
    (local.set $offs (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8
          (i64.add (local.get $offs) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $offs))

  (func $output (param $ptr i32) (param $len i32)
    (call $output_set (call $block (local.get $ptr) (local.get $len)) (i64.extend_i32_u (local.get $len))))

  ;; The input as a kernel block.
  (func $input_block (result i64)
    (local $length i64) (local $offs i64) (local $i i64)
    (local.set $length (call $input_length))
    (local.set $offs (call $alloc (local.get $length)))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $length)))
        (call $store_u8 (i64.add (local.get $offs) (local.get $i)) (call $input_load_u8 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.get $offs))

  (func (export "_initialize") (global.set $initialized (i32.const 1)))

  (func (export "initialized") (result i32)
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (global.get $initialized)))
    (call $output (i32.const 200) (i32.const 1))
    (i32.const 0))

  (func (export "count_vowels") (result i32)
    (local $length i64) (local $i i64) (local $c i32) (local $count i32) (local $end i32)
    (local $digits i32) (local $at i32)
    (local.set $length (call $input_length))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $length)))
        (local.set $c (i32.or (call $input_load_u8 (local.get $i)) (i32.const 0x20)))
        (if (i32.or (i32.or (i32.eq (local.get $c) (i32.const 97)) (i32.eq (local.get $c) (i32.const 101)))
                    (i32.or (i32.or (i32.eq (local.get $c) (i32.const 105)) (i32.eq (local.get $c) (i32.const 111)))
                            (i32.eq (local.get $c) (i32.const 117))))
          (then (local.set $count (i32.add (local.get $count) (i32.const 1)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    ;; digits, written backwards from 30, then copied after the prefix
    (local.set $at (i32.const 30))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $count) (i32.const 10))))
      (local.set $count (i32.div_u (local.get $count) (i32.const 10)))
      (br_if $digit (local.get $count)))
    (local.set $digits (i32.sub (i32.const 30) (local.get $at)))
    (memory.copy (i32.const 10) (local.get $at) (local.get $digits))
    (local.set $end (i32.add (i32.const 10) (local.get $digits)))
    (i32.store8 (local.get $end) (i32.const 125))
    (call $output (i32.const 0) (i32.add (local.get $end) (i32.const 1)))
    (i32.const 0))

  (func (export "fail") (result i32)
    (call $error_set (call $block (i32.const 64) (i32.const 21)))
    (i32.const 1))

  (func (export "exit_code") (result i32)
    (i32.const 3))

  (func (export "config") (result i32)
    (local $value i64)
    (local.set $value (call $config_get (call $block (i32.const 32) (i32.const 8))))
    (if (i64.eqz (local.get $value))
      (then (call $output (i32.const 96) (i32.const 4)))
      (else (call $output_set (local.get $value) (call $length (local.get $value)))))
    (i32.const 0))

  ;; counter: an 8-byte var, incremented on every call, returned as output.
  (func (export "counter") (result i32)
    (local $key i64) (local $old i64) (local $new i64) (local $n i64)
    (local.set $key (call $block (i32.const 48) (i32.const 7)))
    (local.set $old (call $var_get (local.get $key)))
    (if (i64.ne (local.get $old) (i64.const 0))
      (then (local.set $n (call $load_u64 (local.get $old)))))
    (local.set $new (call $alloc (i64.const 8)))
    (call $store_u64 (local.get $new) (i64.add (local.get $n) (i64.const 1)))
    (call $var_set (local.get $key) (local.get $new))
    (call $output_set (local.get $new) (i64.const 8))
    (i32.const 0))

  (func (export "counter_reset") (result i32)
    (call $var_set (call $block (i32.const 48) (i32.const 7)) (i64.const 0))
    (i32.const 0))

  ;; store the input as a var named by the first byte (to fill the quota)
  (func (export "var_input") (result i32)
    (call $var_set (call $block (i32.const 48) (i32.const 7)) (call $input_block))
    (i32.const 0))

  (func (export "logs") (result i32)
    (local $message i64)
    (local.set $message (call $input_block))
    (call $log_trace (local.get $message))
    (call $log_debug (local.get $message))
    (call $log_info (local.get $message))
    (call $log_warn (local.get $message))
    (call $log_error (local.get $message))
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (call $get_log_level)))
    (call $output (i32.const 200) (i32.const 1))
    (i32.const 0))

  ;; get_log_level as 4 bytes, little-endian
  (func (export "log_level") (result i32)
    (i32.store (i32.const 200) (call $get_log_level))
    (call $output (i32.const 200) (i32.const 4))
    (i32.const 0))

  ;; blocks: alloc, free, length, load and store round trips; outputs 8 bytes
  (func (export "blocks") (result i32)
    (local $a i64) (local $b i64) (local $c i64)
    (local.set $a (call $alloc (i64.const 13)))
    (local.set $b (call $alloc (i64.const 3)))
    (call $store_u64 (local.get $a) (i64.const 0x0102030405060708))
    (call $store_u8 (i64.add (local.get $a) (i64.const 12)) (i32.const 0xAB))
    (call $free (local.get $b))
    (local.set $c (call $alloc (i64.const 8)))
    (call $store_u64 (local.get $c)
      (i64.or
        (i64.or (call $length (local.get $a)) (i64.shl (call $length_unsafe (local.get $c)) (i64.const 8)))
        (i64.or
          (i64.shl (i64.extend_i32_u (call $load_u8 (i64.add (local.get $a) (i64.const 12)))) (i64.const 16))
          (i64.shl (i64.and (call $load_u64 (local.get $a)) (i64.const 0xFF)) (i64.const 24)))))
    (call $free (i64.const 0))
    (call $output_set (local.get $c) (i64.const 8))
    (i32.const 0))

  ;; grow: an output of input_length * 1024 bytes of 'z', built in the kernel's memory
  (func (export "grow") (result i32)
    (local $size i64) (local $offs i64) (local $i i64)
    (local.set $size (i64.mul (call $input_length) (i64.const 1024)))
    (local.set $offs (call $alloc (local.get $size)))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $i) (local.get $size)))
        (call $store_u64 (i64.add (local.get $offs) (local.get $i)) (i64.const 0x7a7a7a7a7a7a7a7a))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $next)))
    (call $output_set (local.get $offs) (local.get $size))
    (i32.const 0))

  (func (export "huge_alloc") (result i32)
    (call $store_u8 (call $alloc (i64.const 0x7FFFFFFF)) (i32.const 1))
    (i32.const 0))

  (func (export "huge_alloc_checked") (result i32)
    (if (i64.eqz (call $alloc (i64.const 0x7FFFFFFF))) (then (return (i32.const 1))))
    (i32.const 0))

  (func (export "read_past_input") (result i32)
    (drop (call $input_load_u64 (call $input_length)))
    (i32.const 0))

  (func (export "read_past_input_u8") (result i32)
    (drop (call $input_load_u8 (call $input_length)))
    (i32.const 0))

  (func (export "load_outside") (result i32)
    (drop (call $load_u64 (i64.const 0x10000000)))
    (i32.const 0))

  (func (export "load_past_block") (result i32)
    (drop (call $load_u64 (i64.add (call $alloc (i64.const 4)) (i64.const 0))))
    (i32.const 0))

  (func (export "store_header") (result i32)
    (call $store_u64 (i64.const 16) (i64.const 0))
    (i32.const 0))

  (func (export "store_freed") (result i32)
    (local $a i64)
    (local.set $a (call $alloc (i64.const 16)))
    (drop (call $alloc (i64.const 16)))
    (call $free (local.get $a))
    (call $store_u64 (local.get $a) (i64.const 1))
    (i32.const 0))

  (func (export "double_free") (result i32)
    (local $a i64)
    (local.set $a (call $alloc (i64.const 16)))
    (call $free (local.get $a))
    (call $free (local.get $a))
    (i32.const 0))

  (func (export "free_inside") (result i32)
    (call $free (i64.add (call $alloc (i64.const 16)) (i64.const 8)))
    (i32.const 0))

  (func (export "foreign_output") (result i32)
    (call $output_set (i64.const 16) (i64.const 8))
    (i32.const 0))

  (func (export "output_past_block") (result i32)
    (call $output_set (call $alloc (i64.const 4)) (i64.const 64))
    (i32.const 0))

  (func (export "foreign_error") (result i32)
    (call $error_set (i64.const 40))
    (i32.const 1))

  (func (export "stale_block") (result i32)
    ;; a block offset from an earlier call is gone: every call starts with fresh blocks
    (call $store_u64 (i64.const 0x100) (i64.const 1))
    (i32.const 0))

  (func (export "trap") (result i32)
    unreachable)
)
