//! Enclave execution state that crosses the wire during a migration.

use serde::{Deserialize, Serialize};

/// The value of one mutable WebAssembly global, as captured between ecalls. Floats are
/// carried as their bit patterns so that NaN payloads survive exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalValue {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, as bits.
    F32(u32),
    /// An `f64`, as bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
}
