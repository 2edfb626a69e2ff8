;; spin: a guest doing a given amount of work. `spin` reads a decimal number N from its input
;; (a JSON integer), counts down from N * 1000, and returns its input: the benchmarks calibrate
;; N for a call that takes about 1 ms, or 300 µs.
(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $number (param $ptr i32) (param $len i32) (result i32)
    (local $i i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
        (i32.sub (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "spin") (param $ptr i32) (param $len i32) (result i64)
    (local $left i32)
    (local.set $left (i32.mul (call $number (local.get $ptr) (local.get $len)) (i32.const 1000)))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $left)))
      (local.set $left (i32.sub (local.get $left) (i32.const 1)))
      (br $next)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
