;; bad-output: functions that return normally but hand back results the host must refuse.
;;
;; The host must check a result's place and size before it reads a byte, and the codec must refuse
;; bytes that are not JSON; none of these may crash the host or leak memory outside the guest's.
(module
  (memory (export "memory") 1)

  (data (i32.const 16) "<html>this is not JSON</html>")

  (global $heap (mut i32) (i32.const 1024))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))
  (func (export "wp_free") (param i32 i32))

  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  ;; A well-placed result that the JSON codec refuses.
  (func (export "not_json") (param i32 i32) (result i64)
    (call $pack (i32.const 16) (i32.const 29)))

  ;; 16 bytes at 0xFFFF0000, far beyond the single page this module has.
  (func (export "pointer_out_of_bounds") (param i32 i32) (result i64)
    (call $pack (i32.const 0xFFFF0000) (i32.const 16)))

  ;; A length of 4 GiB - 1 from address 0: over any output limit, and past the end of memory.
  (func (export "huge_length") (param i32 i32) (result i64)
    (call $pack (i32.const 0) (i32.const 0xFFFFFFFF)))
)
