;; The {{name}} plugin (codec "raw"): upper(bytes) -> the same bytes, ASCII letters upper-cased;
;; an empty input is refused. Guest ABI 1: memory, wp_alloc, wp_free, (ptr, len) -> i64.
(module
  (import "wasm_plugins" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 0) "{\22message\22:\22an empty input is refused\22}")

  ;; A bump allocator: the host asks for one input buffer and gives it back only to get a
  ;; larger one, so a freed buffer is simply left behind.
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $pointer i32) (local $end i32)
    (local.set $pointer (global.get $heap))
    (local.set $end (i32.add (local.get $pointer) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.sub (i32.add (local.get $end) (i32.const 0xFFFF))
                           (i32.shl (memory.size) (i32.const 16)))
                  (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.and (i32.add (local.get $end) (i32.const 7)) (i32.const -8)))
    (local.get $pointer))

  (func (export "wp_free") (param $pointer i32) (param $size i32))

  ;; The output is the input buffer, upper-cased in place (ABI.md allows it).
  (func (export "upper") (param $input i32) (param $length i32) (result i64)
    (local $i i32) (local $c i32)
    (if (i32.eqz (local.get $length))
      (then (call $error (i32.const 0) (i32.const 39)) (return (i64.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $length)))
        (local.set $c (i32.load8_u (i32.add (local.get $input) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (local.get $input) (local.get $i))
                            (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $input)) (i64.const 32))
      (i64.extend_i32_u (local.get $length))))
)
