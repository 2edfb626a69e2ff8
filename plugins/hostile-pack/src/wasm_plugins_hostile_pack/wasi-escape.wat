;; wasi-escape: tries to get out of a read-only WASI preopen (guest path /data, file descriptor 3).
;;
;; Every function opens one path relative to fd 3 with WASI preview 1 `path_open` and returns what
;; happened, so a test can tell a refused escape from a successful one:
;;   {"errno": n}                       path_open (or the read or write after it) failed with n
;;   {"ok": true, "content": "..."}     the file was opened and read (at most 4096 bytes)
;;   {"ok": true, "written": n}         the file was opened for writing and n bytes were written
;;   {"errno": n, "opened": true}       opened for writing, but the write failed (the file may exist)
;; Only read_inside should succeed. Content is escaped as JSON: bytes outside printable ASCII
;; become \u00XX, so the output is valid JSON whatever the file holds.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Layout: 16 opened fd, 24 iovec {buf, len}, 32 bytes read or written, 40..63 digit scratch,
  ;; 64.. paths and JSON pieces, 4096..8191 read buffer, 8192.. output (at most 6 bytes per byte
  ;; read, plus the frame), 32768.. the wp_alloc heap.
  (data (i32.const 64) "../secret.txt")
  (data (i32.const 96) "/etc/passwd")
  (data (i32.const 128) "link-to-outside")
  (data (i32.const 160) "new.txt")
  (data (i32.const 176) "inside.txt")
  (data (i32.const 192) "written by wasi-escape\n")
  (data (i32.const 224) "{\"errno\":")
  (data (i32.const 240) "{\"ok\":true,\"content\":\"")
  (data (i32.const 272) "{\"ok\":true,\"written\":")
  (data (i32.const 304) ",\"opened\":true}")
  (data (i32.const 320) "0123456789abcdef")

  (global $heap (mut i32) (i32.const 32768))
  (func (export "wp_alloc") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
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
  (func (export "wp_free") (param i32 i32))

  ;; WASI preview 1 constants.
  (global $PREOPEN i32 (i32.const 3))
  (global $SYMLINK_FOLLOW i32 (i32.const 1))
  (global $O_CREAT i32 (i32.const 1))
  (global $RIGHT_FD_READ i64 (i64.const 2))
  (global $RIGHT_FD_WRITE i64 (i64.const 64))

  ;; -- output --------------------------------------------------------------------------------
  (global $out (mut i32) (i32.const 8192))

  (func $put (param $src i32) (param $len i32)
    (memory.copy (global.get $out) (local.get $src) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  (func $put_byte (param $byte i32)
    (i32.store8 (global.get $out) (local.get $byte))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))

  (func $put_uint (param $value i32)
    (local $digits i32)
    (local.set $digits (i32.const 64))
    (loop $next
      (local.set $digits (i32.sub (local.get $digits) (i32.const 1)))
      (i32.store8 (local.get $digits)
        (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $next (local.get $value)))
    (call $put (local.get $digits) (i32.sub (i32.const 64) (local.get $digits))))

  ;; The bytes as the body of a JSON string: quote and backslash escaped, and every byte outside
  ;; printable ASCII as \u00XX (a UTF-8 file comes out as Latin-1, but always as valid JSON).
  (func $put_escaped (param $src i32) (param $len i32)
    (local $i i32) (local $byte i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $byte (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (if (i32.or (i32.eq (local.get $byte) (i32.const 34)) (i32.eq (local.get $byte) (i32.const 92)))
          (then
            (call $put_byte (i32.const 92))
            (call $put_byte (local.get $byte)))
          (else
            (if (i32.or (i32.lt_u (local.get $byte) (i32.const 32)) (i32.ge_u (local.get $byte) (i32.const 127)))
              (then
                (call $put_byte (i32.const 92))
                (call $put_byte (i32.const 117))
                (call $put_byte (i32.const 48))
                (call $put_byte (i32.const 48))
                (call $put_byte (i32.load8_u (i32.add (i32.const 320) (i32.shr_u (local.get $byte) (i32.const 4)))))
                (call $put_byte (i32.load8_u (i32.add (i32.const 320) (i32.and (local.get $byte) (i32.const 15))))))
              (else (call $put_byte (local.get $byte))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))

  (func $result (result i64)
    (i64.or
      (i64.shl (i64.const 8192) (i64.const 32))
      (i64.extend_i32_u (i32.sub (global.get $out) (i32.const 8192)))))

  (func $errno (param $errno i32) (result i64)
    (global.set $out (i32.const 8192))
    (call $put (i32.const 224) (i32.const 9))
    (call $put_uint (local.get $errno))
    (call $put_byte (i32.const 125))
    (call $result))

  ;; -- the attempts --------------------------------------------------------------------------

  ;; Open a path under the preopen for reading and return its content, or the errno.
  (func $read (param $path i32) (param $len i32) (param $dirflags i32) (result i64)
    (local $errno i32) (local $fd i32)
    (local.set $errno
      (call $path_open (global.get $PREOPEN) (local.get $dirflags) (local.get $path) (local.get $len)
        (i32.const 0) (global.get $RIGHT_FD_READ) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (local.get $errno) (then (return (call $errno (local.get $errno)))))
    (local.set $fd (i32.load (i32.const 16)))
    (i32.store (i32.const 24) (i32.const 4096))
    (i32.store (i32.const 28) (i32.const 4096))
    (local.set $errno (call $fd_read (local.get $fd) (i32.const 24) (i32.const 1) (i32.const 32)))
    (drop (call $fd_close (local.get $fd)))
    (if (local.get $errno) (then (return (call $errno (local.get $errno)))))
    (global.set $out (i32.const 8192))
    (call $put (i32.const 240) (i32.const 22))
    (call $put_escaped (i32.const 4096) (i32.load (i32.const 32)))
    (call $put_byte (i32.const 34))
    (call $put_byte (i32.const 125))
    (call $result))

  (func (export "read_parent") (param i32 i32) (result i64)
    (call $read (i32.const 64) (i32.const 13) (i32.const 0)))

  (func (export "read_absolute") (param i32 i32) (result i64)
    (call $read (i32.const 96) (i32.const 11) (i32.const 0)))

  ;; Follows symlinks on purpose: the link's target is outside the preopen.
  (func (export "read_symlink") (param i32 i32) (result i64)
    (call $read (i32.const 128) (i32.const 15) (global.get $SYMLINK_FOLLOW)))

  (func (export "read_inside") (param i32 i32) (result i64)
    (call $read (i32.const 176) (i32.const 10) (i32.const 0)))

  ;; Create a file in a read-only preopen and write to it.
  (func (export "write_readonly") (param i32 i32) (result i64)
    (local $errno i32) (local $fd i32)
    (local.set $errno
      (call $path_open (global.get $PREOPEN) (i32.const 0) (i32.const 160) (i32.const 7)
        (global.get $O_CREAT) (global.get $RIGHT_FD_WRITE) (i64.const 0) (i32.const 0)
        (i32.const 16)))
    (if (local.get $errno) (then (return (call $errno (local.get $errno)))))
    (local.set $fd (i32.load (i32.const 16)))
    (i32.store (i32.const 24) (i32.const 192))
    (i32.store (i32.const 28) (i32.const 23))
    (local.set $errno (call $fd_write (local.get $fd) (i32.const 24) (i32.const 1) (i32.const 32)))
    (drop (call $fd_close (local.get $fd)))
    (global.set $out (i32.const 8192))
    (if (local.get $errno)
      (then
        (call $put (i32.const 224) (i32.const 9))
        (call $put_uint (local.get $errno))
        (call $put (i32.const 304) (i32.const 15))
        (return (call $result))))
    (call $put (i32.const 272) (i32.const 21))
    (call $put_uint (i32.load (i32.const 32)))
    (call $put_byte (i32.const 125))
    (call $result))
)
