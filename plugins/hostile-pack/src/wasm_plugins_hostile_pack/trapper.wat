;; trapper: one function per kind of WebAssembly trap.
;;
;; Each must reach the host as a runtime error with the trap's canonical name and the guest's
;; frames (named, so a stack trace reads well), and the next call must get a fresh instance.
(module
  (memory (export "memory") 1)

  (global $heap (mut i32) (i32.const 1024))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))

  ;; A mutable global, so the division cannot be refused or folded at compile time.
  (global $zero (mut i32) (i32.const 0))

  (func $unreachable (export "unreachable") (param i32 i32) (result i64)
    unreachable)

  (func $divide_by_zero (export "divide_by_zero") (param i32 i32) (result i64)
    (i64.extend_i32_s (i32.div_s (i32.const 1) (global.get $zero))))

  ;; 16 bytes below 4 GiB: outside any memory a 32-bit module can have.
  (func $out_of_bounds (export "out_of_bounds") (param i32 i32) (result i64)
    (i64.extend_i32_u (i32.load (i32.const 0xFFFFFFF0))))

  ;; Not a tail call: every level keeps a frame, so the engine's stack runs out.
  (func $recurse (param $depth i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $depth) (i32.const 1))) (i32.const 1)))
  (func $stack_overflow (export "stack_overflow") (param i32 i32) (result i64)
    (i64.extend_i32_u (call $recurse (i32.const 0))))
)
