;; vault: keeps a secret it never returns and answers HMAC challenges with it.
;;
;; ecalls:
;;   put    argument: the secret (1-64 bytes). Keeps it in memory and seals it into slot
;;          "secret". Returns "ok".
;;   load   unseals slot "secret" into memory. Returns "ok".
;;   hmac   argument: a challenge (up to 4096 bytes). Returns HMAC-SHA-256(secret,
;;          challenge) as 64 lowercase hex digits. Fails with -1 if no secret is set.
;;   count  returns how many challenges were answered, in decimal.
(module
  (import "godwit" "seal" (func $seal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "unseal" (func $unseal (param i32 i32 i32 i32) (result i32)))
  (import "godwit" "hmac_sha256" (func $hmac (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $secret_len (mut i32) (i32.const 0))
  (global $answered (mut i64) (i64.const 0))
  ;; 0: slot name; 64..128: the secret; 128..160: raw mac; 160..224: hex; 256: "ok";
  ;; 288..320: decimal output; 4096..8192: argument
  (data (i32.const 0) "secret")
  (data (i32.const 256) "ok")

  (func (export "godwit_alloc") (param $len i32) (result i32)
    (i32.const 4096))

  (func $ok (result i64)
    (i64.or (i64.shl (i64.const 256) (i64.const 32)) (i64.const 2)))

  (func (export "put") (param $ptr i32) (param $len i32) (result i64)
    (local $status i32)
    (if (i32.or (i32.eqz (local.get $len)) (i32.gt_u (local.get $len) (i32.const 64)))
      (then (return (i64.const -3))))
    (memory.copy (i32.const 64) (local.get $ptr) (local.get $len))
    (global.set $secret_len (local.get $len))
    (local.set $status
      (call $seal (i32.const 0) (i32.const 6) (i32.const 64) (local.get $len)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (call $ok))

  (func (export "load") (param i32 i32) (result i64)
    (local $status i32)
    (local.set $status
      (call $unseal (i32.const 0) (i32.const 6) (i32.const 64) (i32.const 64)))
    (if (i32.lt_s (local.get $status) (i32.const 0))
      (then (return (i64.extend_i32_s (local.get $status)))))
    (global.set $secret_len (local.get $status))
    (call $ok))

  (func (export "hmac") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $b i32)
    (if (i32.eqz (global.get $secret_len)) (then (return (i64.const -1))))
    (drop (call $hmac (i32.const 64) (global.get $secret_len)
                      (local.get $ptr) (local.get $len) (i32.const 128)))
    ;; hex-encode 32 bytes at 128 into 160..224
    (loop $byte
      (local.set $b (i32.load8_u (i32.add (i32.const 128) (local.get $i))))
      (i32.store8 (i32.add (i32.const 160) (i32.shl (local.get $i) (i32.const 1)))
        (call $nibble (i32.shr_u (local.get $b) (i32.const 4))))
      (i32.store8 (i32.add (i32.const 161) (i32.shl (local.get $i) (i32.const 1)))
        (call $nibble (i32.and (local.get $b) (i32.const 15))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $byte (i32.lt_u (local.get $i) (i32.const 32))))
    (global.set $answered (i64.add (global.get $answered) (i64.const 1)))
    (i64.or (i64.shl (i64.const 160) (i64.const 32)) (i64.const 64)))

  (func $nibble (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 10))
      (then (i32.add (local.get $n) (i32.const 48)))
      (else (i32.add (local.get $n) (i32.const 87)))))

  (func (export "count") (param i32 i32) (result i64)
    (local $v i64) (local $p i32)
    (local.set $v (global.get $answered))
    (local.set $p (i32.const 320))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 320) (local.get $p))))))
