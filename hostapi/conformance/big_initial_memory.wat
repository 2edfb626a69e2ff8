;; A module whose initial memory (100 MiB) is over the default 64 MiB limit.
(module
  (memory (export "memory") 1600)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
)
