;; count_vowels for Extism's ABI, the classic Extism demo plugin: reads its input 8 bytes at a time
;; (`input_load_u64`, then `input_load_u8` for the tail, as the PDKs' load_input does), counts
;; a e i o u in either case, and outputs {"count": N} through a block from `alloc`.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))

  (memory (export "memory") 1)
  (data (i32.const 0) "{\22count\22: ")

  (func $vowel (param $c i32) (result i32)
    (local.set $c (i32.or (local.get $c) (i32.const 0x20)))
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 97)) (i32.eq (local.get $c) (i32.const 101)))
      (i32.or
        (i32.or (i32.eq (local.get $c) (i32.const 105)) (i32.eq (local.get $c) (i32.const 111)))
        (i32.eq (local.get $c) (i32.const 117)))))

  (func (export "count_vowels") (result i32)
    (local $length i64) (local $at i64) (local $word i64) (local $b i32) (local $count i32)
    (local $digits i32) (local $end i32) (local $out i64) (local $i i32)
    (local.set $length (call $input_length))
    (block $words_done
      (loop $next_word
        (br_if $words_done (i64.gt_u (i64.add (local.get $at) (i64.const 8)) (local.get $length)))
        (local.set $word (call $input_load_u64 (local.get $at)))
        (local.set $b (i32.const 0))
        (loop $next_byte
          (local.set $count
            (i32.add (local.get $count) (call $vowel (i32.wrap_i64 (local.get $word)))))
          (local.set $word (i64.shr_u (local.get $word) (i64.const 8)))
          (local.set $b (i32.add (local.get $b) (i32.const 1)))
          (br_if $next_byte (i32.lt_u (local.get $b) (i32.const 8))))
        (local.set $at (i64.add (local.get $at) (i64.const 8)))
        (br $next_word)))
    (block $tail_done
      (loop $next
        (br_if $tail_done (i64.ge_u (local.get $at) (local.get $length)))
        (local.set $count
          (i32.add (local.get $count) (call $vowel (call $input_load_u8 (local.get $at)))))
        (local.set $at (i64.add (local.get $at) (i64.const 1)))
        (br $next)))
    ;; the digits, backwards from 40, then after the prefix, then the closing brace
    (local.set $end (i32.const 40))
    (loop $digit
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (i32.store8 (local.get $end)
        (i32.add (i32.const 48) (i32.rem_u (local.get $count) (i32.const 10))))
      (local.set $count (i32.div_u (local.get $count) (i32.const 10)))
      (br_if $digit (local.get $count)))
    (local.set $digits (i32.sub (i32.const 40) (local.get $end)))
    (memory.copy (i32.const 10) (local.get $end) (local.get $digits))
    (local.set $end (i32.add (i32.const 10) (local.get $digits)))
    (i32.store8 (local.get $end) (i32.const 125))
    (local.set $end (i32.add (local.get $end) (i32.const 1)))
    (local.set $out (call $alloc (i64.extend_i32_u (local.get $end))))
    (loop $copy
      (call $store_u8
        (i64.add (local.get $out) (i64.extend_i32_u (local.get $i)))
        (i32.load8_u (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $copy (i32.lt_u (local.get $i) (local.get $end))))
    (call $output_set (local.get $out) (i64.extend_i32_u (local.get $end)))
    (i32.const 0))
)
