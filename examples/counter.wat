;; counter: an in-memory count that can be sealed and restored.
;;
;; ecalls (argument ignored; results are decimal ASCII):
;;   incr     add one to the count, return the new value
;;   get      return the count
;;   persist  seal the count into slot "count", return it
;;   restore  unseal slot "count" into the count, return it
;;
;; The count lives in a mutable, non-exported global: the SM's loader exports it so that
;; snapshots and migrations capture it.
(module
  (import "godwit" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "unseal" (func $unseal (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $count (mut i64) (i64.const 0))
  ;; 0: slot name; 1024..1056: decimal output; 2048: 8-byte sealing buffer; 4096: argument
  (data (i32.const 0) "count")

  (func (export "godwit_alloc") (param $len i32) (result i32)
    (i32.const 4096))

  ;; Formats $v as decimal at the end of 1024..1056; returns (ptr << 32) | len.
  (func $decimal (param $v i64) (result i64)
    (local $p i32)
    (local.set $p (i32.const 1056))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 1056) (local.get $p)))))

  (func (export "incr") (param i32 i32) (result i64)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (call $decimal (global.get $count)))

  (func (export "get") (param i32 i32) (result i64)
    (call $decimal (global.get $count)))

  (func (export "persist") (param i32 i32) (result i64)
    (local $status i32)
    (i64.store (i32.const 2048) (global.get $count))
    (local.set $status
      (call $seal (i32.const 0) (i32.const 5) (i32.const 2048) (i32.const 8)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (call $decimal (global.get $count)))

  (func (export "restore") (param i32 i32) (result i64)
    (local $status i32)
    (local.set $status
      (call $unseal (i32.const 0) (i32.const 5) (i32.const 2048) (i32.const 8)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (if (i32.ne (local.get $status) (i32.const 8))
      (then (return (i64.const -100))))
    (global.set $count (i64.load (i32.const 2048)))
    (call $decimal (global.get $count))))
