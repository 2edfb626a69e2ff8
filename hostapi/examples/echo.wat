;; echo: the smallest complete plugin for guest ABI 1 (see ../ABI.md).
;;
;; Exports what every ABI-1 module exports (memory, wp_alloc, wp_free) and one plugin function,
;; `echo`, that returns its input unchanged. The output may alias the input buffer: the host does
;; not touch that buffer again before the next call, and the output only has to stay valid until
;; then.
(module
  (memory (export "memory") 1)

  ;; A bump allocator: enough for a host that allocates one input buffer per instance and
  ;; replaces it only when an input is larger. Returns 0 when memory cannot grow.
  (global $heap (mut i32) (i32.const 1024))
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

  ;; The host frees only buffers it allocated; a bump allocator has nothing to do.
  (func (export "wp_free") (param $ptr i32) (param $size i32))

  ;; (ptr, len) -> (out_ptr << 32) | out_len
  (func (export "echo") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
