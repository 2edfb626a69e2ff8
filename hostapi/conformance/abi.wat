;; The conformance module: one export per behaviour every engine must map to the same result.
;; tests/test_engine_conformance.py calls each of them on every available engine.
(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "{not json")
  (data (i32.const 32) "{\"message\":\"input rejected\",\"details\":{\"field\":\"text\"}}")
  (data (i32.const 128) "\"stale\"")

  (global $heap (mut i32) (i32.const 4096))
  (global $out (mut i32) (i32.const 0))
  (global $out_capacity (mut i32) (i32.const 0))
  (global $zero (mut i32) (i32.const 0))

  (func $alloc (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.lt_u (local.get $end) (local.get $ptr)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add
                    (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16)))
                    (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "wp_free") (param i32 i32))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; Good calls.
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (local.get $ptr) (local.get $len)))

  ;; Copies the input to a guest-owned output buffer, upper-casing ASCII letters.
  (func (export "upper") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $c i32)
    (if (i32.gt_u (local.get $len) (global.get $out_capacity))
      (then
        (global.set $out (call $alloc (local.get $len)))
        (global.set $out_capacity (local.get $len))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $c (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
        (i32.store8 (i32.add (global.get $out) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pack (global.get $out) (local.get $len)))

  ;; Traps.
  (func (export "trap_unreachable") (param i32 i32) (result i64)
    unreachable)
  (func (export "trap_divide_by_zero") (param i32 i32) (result i64)
    (i64.extend_i32_s (i32.div_s (i32.const 1) (global.get $zero))))
  (func (export "trap_out_of_bounds") (param i32 i32) (result i64)
    (i64.extend_i32_u (i32.load (i32.const 0xFFFFFFF0))))
  (func $recurse (param $depth i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $depth) (i32.const 1))) (i32.const 1)))
  (func (export "trap_stack_overflow") (param i32 i32) (result i64)
    (i64.extend_i32_u (call $recurse (i32.const 0))))

  ;; Limits.
  (func (export "memory_bomb") (param i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable)
  (func (export "loop_forever") (param i32 i32) (result i64)
    (loop $spin (br $spin))
    (i64.const 0))
  (func (export "whole_memory") (param i32 i32) (result i64)
    (call $pack (i32.const 0) (i32.shl (memory.size) (i32.const 16))))

  ;; Broken results.
  (func (export "bad_pointer") (param i32 i32) (result i64)
    (call $pack (i32.const 0xFFFF0000) (i32.const 16)))
  (func (export "pointer_past_end") (param i32 i32) (result i64)
    (call $pack (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 4)) (i32.const 64)))
  (func (export "bad_json") (param i32 i32) (result i64)
    (call $pack (i32.const 16) (i32.const 9)))
  (func (export "guest_error") (param i32 i32) (result i64)
    (call $error (i32.const 32) (i32.const 55))
    (call $pack (i32.const 128) (i32.const 7)))
  (func (export "error_out_of_bounds") (param i32 i32) (result i64)
    (call $error (i32.const 0xFFFFFF00) (i32.const 200))
    (i64.const 0))

  ;; Not a plugin function: wrong type.
  (func (export "not_a_plugin_function") (param i32) (result i32) (local.get 0))
)
