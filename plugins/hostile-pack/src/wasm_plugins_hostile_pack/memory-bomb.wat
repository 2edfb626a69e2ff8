;; memory-bomb: a plugin that asks for memory until the host refuses, then traps.
;;
;; `explode` grows linear memory 16 pages (1 MiB) at a time. Under the manifest's 8 MiB limit the
;; host clamps the memory's maximum, so a grow fails, and the trap that follows must be reported as
;; a memory limit error naming the size that was asked for, not as a bare `unreachable`.
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

  (func (export "explode") (param i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    ;; Growth was refused: a careless guest would now write past its memory; this one just traps.
    unreachable)
)
