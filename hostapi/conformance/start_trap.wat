;; A module whose start function traps: loading it must fail with an instance error.
(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $start unreachable)
  (start $start)
)
