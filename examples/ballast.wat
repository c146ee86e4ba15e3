;; ballast: bulk memory for benchmarks and tests.
;;
;; ecalls:
;;   fill      argument: a size in MiB, decimal (1-4095). Grows memory to that size (never
;;             shrinks it), then fills every byte after the first 4 KiB with deterministic
;;             non-zero content that depends on the generation (how many fills so far).
;;             Returns the memory size in bytes, decimal.
;;   checksum  a 64-bit FNV-1a-style hash over all memory after the first 4 KiB (which
;;             holds this module's scratch buffers), as 16 hex digits.
;;   size      the memory size in bytes, decimal.
;;   spin      argument: a count N, decimal (1-4095). Computes for a while without touching
;;             memory (N times 2^21 rounds of a multiply-add, about 2 ms each here),
;;             returns N: a long call, for tests and benchmarks of what a busy enclave does
;;             to its neighbours.
(module
  (memory (export "memory") 1)
  (global $generation (mut i64) (i64.const 0))
  ;; 0..32: decimal output; 64..80: hex output; 1024..1088: argument
  (func (export "godwit_alloc") (param $len i32) (result i32)
    (i32.const 1024))

  (func $decimal (param $v i64) (result i64)
    (local $p i32)
    (local.set $p (i32.const 32))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 32) (local.get $p)))))

  ;; Parses a decimal argument; -1 if empty, not decimal, or over 4095.
  (func $parse (param $ptr i32) (param $len i32) (result i64)
    (local $v i64) (local $c i32)
    (if (i32.or (i32.eqz (local.get $len)) (i32.gt_u (local.get $len) (i32.const 4)))
      (then (return (i64.const -1))))
    (loop $char
      (local.set $c (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))
      (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i64.const -1))))
      (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
                             (i64.extend_i32_u (local.get $c))))
      (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
      (local.set $len (i32.sub (local.get $len) (i32.const 1)))
      (br_if $char (local.get $len)))
    (if (i64.gt_u (local.get $v) (i64.const 4095)) (then (return (i64.const -1))))
    (local.get $v))

  (func $size (result i64)
    (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))

  (func (export "fill") (param $ptr i32) (param $len i32) (result i64)
    (local $mib i64) (local $want i32) (local $addr i32) (local $end i32) (local $x i64)
    (local.set $mib (call $parse (local.get $ptr) (local.get $len)))
    (if (i64.lt_s (local.get $mib) (i64.const 1)) (then (return (i64.const -4))))
    ;; 16 wasm pages of 64 KiB per MiB
    (local.set $want (i32.wrap_i64 (i64.mul (local.get $mib) (i64.const 16))))
    (if (i32.gt_u (local.get $want) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $want) (memory.size))) (i32.const -1))
          (then (return (i64.const -3))))))
    (global.set $generation (i64.add (global.get $generation) (i64.const 1)))
    (local.set $addr (i32.const 4096))
    (local.set $end (i32.wrap_i64 (call $size)))
    ;; the end is a multiple of 64 KiB, at most 4 GiB - 64 KiB: fits an i32
    (local.set $x (i64.mul (global.get $generation) (i64.const 0x9E3779B97F4A7C15)))
    (loop $word
      (local.set $x (i64.add (local.get $x) (i64.const 0x9E3779B97F4A7C15)))
      ;; every byte odd, hence non-zero
      (i64.store (local.get $addr)
        (i64.or
          (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 29)))
          (i64.const 0x0101010101010101)))
      (local.set $addr (i32.add (local.get $addr) (i32.const 8)))
      (br_if $word (i32.lt_u (local.get $addr) (local.get $end))))
    (call $decimal (call $size)))

  (func (export "checksum") (param i32 i32) (result i64)
    (local $addr i32) (local $end i32) (local $h i64) (local $i i32) (local $n i32)
    (local.set $addr (i32.const 4096))
    (local.set $end (i32.wrap_i64 (call $size)))
    (local.set $h (i64.const 0xcbf29ce484222325))
    (loop $word
      (local.set $h
        (i64.mul (i64.xor (local.get $h) (i64.load (local.get $addr)))
                 (i64.const 0x100000001b3)))
      (local.set $addr (i32.add (local.get $addr) (i32.const 8)))
      (br_if $word (i32.lt_u (local.get $addr) (local.get $end))))
    ;; 16 hex digits at 64..80
    (loop $digit
      (local.set $n (i32.wrap_i64 (i64.and
        (i64.shr_u (local.get $h) (i64.extend_i32_u (i32.sub (i32.const 60)
                                                    (i32.shl (local.get $i) (i32.const 2)))))
        (i64.const 15))))
      (i32.store8 (i32.add (i32.const 64) (local.get $i))
        (if (result i32) (i32.lt_u (local.get $n) (i32.const 10))
          (then (i32.add (local.get $n) (i32.const 48)))
          (else (i32.add (local.get $n) (i32.const 87)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $i) (i32.const 16))))
    (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.const 16)))

  (func (export "size") (param i32 i32) (result i64)
    (call $decimal (call $size)))

  (func (export "spin") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64) (local $rounds i64) (local $x i64)
    (local.set $n (call $parse (local.get $ptr) (local.get $len)))
    (if (i64.lt_s (local.get $n) (i64.const 1)) (then (return (i64.const -4))))
    (local.set $rounds (i64.shl (local.get $n) (i64.const 21)))
    (loop $round
      (local.set $x (i64.add (i64.mul (local.get $x) (i64.const 6364136223846793005))
                             (i64.const 1442695040888963407)))
      (local.set $rounds (i64.sub (local.get $rounds) (i64.const 1)))
      (br_if $round (i64.ne (local.get $rounds) (i64.const 0))))
    ;; $x keeps the loop from being optimised away: it is never zero here
    (if (i64.eqz (local.get $x)) (then (return (i64.const -1))))
    (call $decimal (local.get $n))))
