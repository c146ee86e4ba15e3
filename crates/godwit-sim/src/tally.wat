;; tally: the simulator's enclave. A monotonic counter, sealed together with a secret the
;; simulator plants (the canary), so that the simulator can watch for rollbacks, forks and
;; plaintext on the wire.
;;
;; ecalls:
;;   init(canary: 32 bytes)  keep the canary in memory, create counter "n"; returns nothing
;;   tick                    n += 1; seal (n, canary) into slot "s"; returns n (8 bytes LE)
;;   check                   returns n (8 bytes LE) ++ the slot's content (40 bytes), or
;;                           just n if nothing was sealed yet
(module
  (import "godwit" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "unseal" (func $unseal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "counter_create" (func $counter_create (param i32 i32) (result i32)))
  (import "godwit" "counter_increment" (func $counter_increment (param i32 i32) (result i64)))
  (import "godwit" "counter_read" (func $counter_read (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  ;; 0: counter name "n"; 8: slot name "s"; 64..96: canary; 128..168: sealing buffer;
  ;; 512..560: result; 4096: argument
  (data (i32.const 0) "n")
  (data (i32.const 8) "s")

  (func (export "godwit_alloc") (param i32) (result i32)
    (i32.const 4096))

  (func (export "init") (param $arg i32) (param $len i32) (result i64)
    (local $status i32)
    (if (i32.ne (local.get $len) (i32.const 32))
      (then (return (i64.const -101))))
    (memory.copy (i32.const 64) (local.get $arg) (i32.const 32))
    (local.set $status (call $counter_create (i32.const 0) (i32.const 1)))
    ;; -2: the counter exists already (init ran before)
    (if (i32.and (i32.lt_s (local.get $status) (i32.const 0))
                 (i32.ne (local.get $status) (i32.const -2)))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (i64.shl (i64.const 512) (i64.const 32)))

  (func (export "tick") (param i32 i32) (result i64)
    (local $n i64)
    (local $status i32)
    (local.set $n (call $counter_increment (i32.const 0) (i32.const 1)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.store (i32.const 128) (local.get $n))
    (memory.copy (i32.const 136) (i32.const 64) (i32.const 32))
    (local.set $status
      (call $seal (i32.const 8) (i32.const 1) (i32.const 128) (i32.const 40)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (i64.store (i32.const 512) (local.get $n))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 8)))

  (func (export "check") (param i32 i32) (result i64)
    (local $n i64)
    (local $status i32)
    (local.set $n (call $counter_read (i32.const 0) (i32.const 1)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.store (i32.const 512) (local.get $n))
    (local.set $status
      (call $unseal (i32.const 8) (i32.const 1) (i32.const 520) (i32.const 40)))
    ;; -1: nothing sealed yet
    (if (i32.eq (local.get $status) (i32.const -1))
      (then (local.set $status (i32.const 0))))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (i64.or (i64.shl (i64.const 512) (i64.const 32))
            (i64.extend_i32_u (i32.add (i32.const 8) (local.get $status))))))
