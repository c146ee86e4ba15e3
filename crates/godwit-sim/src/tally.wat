;; tally: the simulator's enclave. A monotonic counter, sealed together with a secret the
;; simulator plants (the canary) and a random mark of the instance's life, so that the
;; simulator can watch for rollbacks, forks and plaintext on the wire.
;;
;; ecalls:
;;   init(canary: 32 bytes)  keep the canary in memory, draw a fresh 8-byte life mark,
;;                           create counter "n"; returns nothing
;;   tick                    n += 1; seal (n, canary, life) into slot "s"; returns
;;                           (n (8 bytes LE), life)
;;   tick_fail               as tick, then fails with status -(1000 + n): a call that
;;                           changed durable state and failed
;;   check                   returns n (8 bytes LE) ++ the slot's content (48 bytes), or
;;                           just n if nothing was sealed yet
;;
;; The life mark is drawn again whenever an instance starts (an adopted one included), so
;; two seals of the same count by different lives differ: a blob of a lost life put back
;; in place of a later one is visible to the simulator.
(module
  (import "godwit" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "unseal" (func $unseal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "counter_create" (func $counter_create (param i32 i32) (result i32)))
  (import "godwit" "counter_increment" (func $counter_increment (param i32 i32) (result i64)))
  (import "godwit" "counter_read" (func $counter_read (param i32 i32) (result i64)))
  (import "godwit" "random" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: counter name "n"; 8: slot name "s"; 64..96: canary; 96..104: life mark;
  ;; 128..176: sealing buffer; 512..568: result; 4096: argument
  (data (i32.const 0) "n")
  (data (i32.const 8) "s")

  (func (export "godwit_alloc") (param i32) (result i32)
    (i32.const 4096))

  (func (export "init") (param $arg i32) (param $len i32) (result i64)
    (local $status i32)
    (if (i32.ne (local.get $len) (i32.const 32))
      (then (return (i64.const -101))))
    (memory.copy (i32.const 64) (local.get $arg) (i32.const 32))
    (drop (call $random (i32.const 96) (i32.const 8)))
    (local.set $status (call $counter_create (i32.const 0) (i32.const 1)))
    ;; -2: the counter exists already (init ran before)
    (if (i32.and (i32.lt_s (local.get $status) (i32.const 0))
                 (i32.ne (local.get $status) (i32.const -2)))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (i64.shl (i64.const 512) (i64.const 32)))

  ;; n += 1 and seal (n, canary, life); returns n, or a negative status.
  (func $advance (result i64)
    (local $n i64)
    (local $status i32)
    (local.set $n (call $counter_increment (i32.const 0) (i32.const 1)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.store (i32.const 128) (local.get $n))
    (memory.copy (i32.const 136) (i32.const 64) (i32.const 40))
    (local.set $status
      (call $seal (i32.const 8) (i32.const 1) (i32.const 128) (i32.const 48)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (local.get $n))

  (func (export "tick") (param i32 i32) (result i64)
    (local $n i64)
    (local.set $n (call $advance))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.store (i32.const 512) (local.get $n))
    (i64.store (i32.const 520) (i64.load (i32.const 96)))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 16)))

  (func (export "tick_fail") (param i32 i32) (result i64)
    (local $n i64)
    (local.set $n (call $advance))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.sub (i64.const -1000) (local.get $n)))

  (func (export "check") (param i32 i32) (result i64)
    (local $n i64)
    (local $status i32)
    (local.set $n (call $counter_read (i32.const 0) (i32.const 1)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (local.get $n))))
    (i64.store (i32.const 512) (local.get $n))
    (local.set $status
      (call $unseal (i32.const 8) (i32.const 1) (i32.const 520) (i32.const 48)))
    ;; -1: nothing sealed yet
    (if (i32.eq (local.get $status) (i32.const -1))
      (then (local.set $status (i32.const 0))))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (i64.or (i64.shl (i64.const 512) (i64.const 32))
            (i64.extend_i32_u (i32.add (i32.const 8) (local.get $status))))))
