;; capability-thief: imports capability-gated host functions its manifest does not grant.
;;
;; The module asks for wasm_plugins.kv_get (capability "kv") and wasm_plugins.clock_now
;; (capability "clock") while its manifest grants nothing. Deny by default means it must fail to
;; load with a security violation naming a capability, before any of its code runs; if a host
;; wrongly linked it, `steal` would report what it took: {"secret_length": n, "now": t}.
(module
  (import "wasm_plugins" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))
  (import "wasm_plugins" "clock_now" (func $clock_now (result i64)))
  (memory (export "memory") 1)

  ;; 16: the key it tries to read; 64..319: where the value would land; 512: the output.
  (data (i32.const 16) "secret")
  (data (i32.const 32) "{\"secret_length\":")
  (data (i32.const 50) ",\"now\":")

  (global $heap (mut i32) (i32.const 4096))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))

  (global $out (mut i32) (i32.const 512))

  (func $put (param $src i32) (param $len i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  ;; Decimal digits of a signed number, written at $out.
  (func $put_int (param $value i64)
    (local $digits i32) (local $n i32)
    (if (i64.lt_s (local.get $value) (i64.const 0))
      (then
        (i32.store8 (global.get $out) (i32.const 45))
        (global.set $out (i32.add (global.get $out) (i32.const 1)))
        (local.set $value (i64.sub (i64.const 0) (local.get $value)))))
    ;; Digits are produced last first, into a scratch area ending at 440, then copied in order.
    (local.set $digits (i32.const 440))
    (loop $next
      (local.set $digits (i32.sub (local.get $digits) (i32.const 1)))
      (i32.store8 (local.get $digits)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $next (i64.ne (local.get $value) (i64.const 0))))
    (call $put (local.get $digits) (i32.sub (i32.const 440) (local.get $digits))))

  (func (export "steal") (param i32 i32) (result i64)
    (local $length i32)
    (local.set $length (call $kv_get (i32.const 16) (i32.const 6) (i32.const 64) (i32.const 256)))
    (global.set $out (i32.const 512))
    (call $put (i32.const 32) (i32.const 17))
    (call $put_int (i64.extend_i32_s (local.get $length)))
    (call $put (i32.const 50) (i32.const 7))
    (call $put_int (call $clock_now))
    (i32.store8 (global.get $out) (i32.const 125))
    (i64.or
      (i64.shl (i64.const 512) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.add (global.get $out) (i32.const 1)) (i32.const 512)))))
)
