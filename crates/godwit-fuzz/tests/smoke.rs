//! The fuzz targets on stable: each runs over its seed inputs, seeded mutations of them,
//! and seeded random bytes. A short, deterministic version of what `cargo fuzz run` does
//! for hours; a failure prints the input that caused it.

use godwit_fuzz::corpus::{TARGETS, run, seeds};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Flips, inserts, deletes and truncates a few bytes.
fn mutate(rng: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..6) {
        let at = if out.is_empty() {
            0
        } else {
            rng.random_range(0..out.len())
        };
        match rng.random_range(0..5) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.random_range(0..8),
            1 if !out.is_empty() => out[at] = rng.random(),
            2 => out.insert(at, rng.random()),
            3 if !out.is_empty() => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn smoke(target: &str, runs: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ target.len() as u64);
    let seeds = seeds(target);
    for s in &seeds {
        run(target, s);
    }
    for i in 0..runs {
        let input = if seeds.is_empty() || i % 4 == 0 {
            let mut v = vec![0u8; rng.random_range(0..512)];
            rng.fill_bytes(&mut v);
            v
        } else {
            mutate(&mut rng, &seeds[i % seeds.len()])
        };
        let caught = std::panic::catch_unwind(|| run(target, &input));
        if caught.is_err() {
            panic!("fuzz target {target} failed on input {}", hex(&input));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn every_target_has_seeds() {
    for t in TARGETS {
        assert!(!seeds(t).is_empty(), "{t}");
    }
}

#[test]
fn wire() {
    smoke("wire", 3000);
}

#[test]
fn handshake() {
    smoke("handshake", 300);
}

#[test]
fn records() {
    smoke("records", 300);
}

#[test]
fn manifest() {
    smoke("manifest", 2000);
}

#[test]
fn config() {
    smoke("config", 1000);
}

#[test]
fn sealed_blob() {
    smoke("sealed_blob", 2000);
}

#[test]
fn module() {
    smoke("module", 300);
}
