;; A module that lacks wp_alloc: loading it must name the missing export.
(module
  (memory (export "memory") 1)
  (func (export "wp_free") (param i32 i32))
  (func (export "run") (param i32 i32) (result i64) (i64.const 0))
)
