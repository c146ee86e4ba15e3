;; pin: a PIN that locks after ten attempts, however the host restarts or replays it.
;;
;; ecalls:
;;   set       argument: the PIN (1-16 bytes). Seals it into slot "pin" and creates the
;;             monotonic counter "attempts" (if it does not exist yet). Returns "ok".
;;   try       argument: a guess. Counts one attempt first (the counter moves before the
;;             guess is looked at), then returns "ok" if the guess is the PIN, or fails with
;;             status -100 if it is not. After ten attempts every try fails with -101.
;;   attempts  the attempts counted so far, in decimal.
;;
;; The counter is the SM's: it travels with the enclave, survives restarts, never goes
;; back, and a try's answer, right or wrong, is released only once the store recorded
;; the attempt (docs/enclave-abi.md, output commit). So a host cannot learn an answer and
;; then roll the attempt back.
(module
  (import "godwit" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "unseal" (func $unseal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "counter_create" (func $counter_create (param i32 i32) (result i32)))
  (import "godwit" "counter_increment" (func $counter_increment (param i32 i32) (result i64)))
  (import "godwit" "counter_read" (func $counter_read (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  ;; 0: slot name "pin"; 16: counter name "attempts"; 64..80: the PIN unsealed;
  ;; 128..160: decimal output; 256: "ok"; 4096..8192: argument
  (data (i32.const 0) "pin")
  (data (i32.const 16) "attempts")
  (data (i32.const 256) "ok")

  (func (export "godwit_alloc") (param $len i32) (result i32)
    (i32.const 4096))

  (func $ok (result i64)
    (i64.or (i64.shl (i64.const 256) (i64.const 32)) (i64.const 2)))

  (func (export "set") (param $ptr i32) (param $len i32) (result i64)
    (local $status i32)
    (if (i32.or (i32.eqz (local.get $len)) (i32.gt_u (local.get $len) (i32.const 16)))
      (then (return (i64.const -3))))
    (local.set $status (call $seal (i32.const 0) (i32.const 3) (local.get $ptr) (local.get $len)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    ;; -2: the counter exists already (a new PIN keeps the attempts counted)
    (local.set $status (call $counter_create (i32.const 16) (i32.const 8)))
    (if (i32.and (i32.lt_s (local.get $status) (i32.const 0))
                 (i32.ne (local.get $status) (i32.const -2)))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (call $ok))

  (func (export "try") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64) (local $pin i32) (local $i i32)
    (local.set $n (call $counter_increment (i32.const 16) (i32.const 8)))
    (if (i64.lt_s (local.get $n) (i64.const 0)) (then (return (local.get $n))))
    (if (i64.gt_u (local.get $n) (i64.const 10)) (then (return (i64.const -101))))
    (local.set $pin (call $unseal (i32.const 0) (i32.const 3) (i32.const 64) (i32.const 16)))
    (if (i32.lt_s (local.get $pin) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $pin)))))
    (if (i32.ne (local.get $pin) (local.get $len)) (then (return (i64.const -100))))
    (block $done
      (loop $byte
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.ne (i32.load8_u (i32.add (i32.const 64) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
          (then (return (i64.const -100))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $byte)))
    (call $ok))

  (func (export "attempts") (param i32 i32) (result i64)
    (local $v i64) (local $p i32)
    (local.set $v (call $counter_read (i32.const 16) (i32.const 8)))
    (if (i64.lt_s (local.get $v) (i64.const 0)) (then (return (local.get $v))))
    (local.set $p (i32.const 160))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 160) (local.get $p))))))
