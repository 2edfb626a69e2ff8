;; endless-loop: a plugin whose only function never returns.
;;
;; Nothing in the module itself stops `spin`: only the host can, with a wall-clock timeout (the
;; manifest asks for 200 ms) or a fuel limit. A host that enforces neither hangs the calling thread.
(module
  (memory (export "memory") 1)

  ;; A bump allocator: the host asks for one input buffer per instance, so nothing needs reuse.
  (global $heap (mut i32) (i32.const 1024))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))

  ;; A counter keeps the loop doing work, so no engine could prove it idle and skip it.
  (global $turns (mut i64) (i64.const 0))
  (func (export "spin") (param i32 i32) (result i64)
    (loop $forever
      (global.set $turns (i64.add (global.get $turns) (i64.const 1)))
      (br $forever))
    (i64.const 0))
)
