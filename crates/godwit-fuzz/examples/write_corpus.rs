//! Writes each fuzz target's seed inputs under DIR/<target>/, to start cargo-fuzz from:
//! `cargo run -p godwit-fuzz --example write_corpus -- fuzz/corpus`.

use std::path::PathBuf;

use godwit_fuzz::corpus::{TARGETS, seeds};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    for t in TARGETS {
        let d = dir.join(t);
        std::fs::create_dir_all(&d)?;
        for (i, s) in seeds(t).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s)?;
        }
    }
    Ok(())
}
