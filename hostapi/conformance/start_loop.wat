;; A module whose start function never returns: a timeout must stop its instantiation.
(module
  (memory (export "memory") 1)
  (func (export "wp_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "wp_free") (param i32 i32))
  (func $start (loop $spin (br $spin)))
  (start $start)
)
