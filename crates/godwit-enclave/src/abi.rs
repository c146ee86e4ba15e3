//! The enclave ABI: the functions the SM provides to enclaves (module `godwit`), and the
//! [`Services`] trait through which the SM implements them.
//!
//! Every import returns a status: a non-negative value on success, a negative
//! [`AbiError`] code on failure. Pointers and lengths are checked against the enclave's
//! memory; a bad one is an error code, never a host crash. See docs/enclave-abi.md.

use std::ops::Range;

use hmac::{KeyInit, Mac};
use wasmtime::{Caller, Extern, Linker, StoreLimits, ValType};

use crate::module::MEMORY_EXPORT;

/// Longest slot or counter name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// Largest payload one `seal` call accepts, in bytes.
pub const SEAL_BYTES_MAX: usize = 1024 * 1024;
/// Largest buffer one `random` call fills, in bytes.
pub const RANDOM_BYTES_MAX: usize = 64 * 1024;
/// Longest log line kept, in bytes.
pub const LOG_BYTES_MAX: usize = 1024;

/// Why an ABI call failed, as the enclave sees it (a negative status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbiError {
    /// No such sealed slot or counter. Code -1.
    #[error("not found")]
    NotFound,
    /// The counter already exists. Code -2.
    #[error("already exists")]
    Exists,
    /// A size exceeds an ABI or manifest limit. Code -3.
    #[error("too large")]
    TooLarge,
    /// A pointer/length outside memory, or a malformed name. Code -4.
    #[error("invalid argument")]
    Invalid,
    /// A count limit (slots, counters, counter value) is reached. Code -5.
    #[error("limit reached")]
    Limit,
    /// Stored data failed its integrity or freshness check (altered, foreign, rolled
    /// back). Code -6.
    #[error("integrity check failed")]
    Integrity,
    /// The output buffer is too small. Code -7.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The host failed to store or fetch data. Code -8.
    #[error("host storage unavailable")]
    HostUnavailable,
}

impl AbiError {
    /// The status code the enclave receives.
    pub fn code(self) -> i32 {
        match self {
            Self::NotFound => -1,
            Self::Exists => -2,
            Self::TooLarge => -3,
            Self::Invalid => -4,
            Self::Limit => -5,
            Self::Integrity => -6,
            Self::BufferTooSmall => -7,
            Self::HostUnavailable => -8,
        }
    }
}

/// What the SM provides behind the ABI, for one enclave instance. The SM implements it with
/// the instance's sealing key, counters and the host's (untrusted) blob storage.
pub trait Services: Send + 'static {
    /// Seals `data` into the named slot, replacing its previous content.
    fn seal(&mut self, slot: &[u8], data: &[u8]) -> Result<(), AbiError>;
    /// Returns the newest content sealed into the slot.
    fn unseal(&mut self, slot: &[u8]) -> Result<Vec<u8>, AbiError>;
    /// Creates a monotonic counter at 0.
    fn counter_create(&mut self, name: &[u8]) -> Result<(), AbiError>;
    /// Increments a counter and returns its new value.
    fn counter_increment(&mut self, name: &[u8]) -> Result<u64, AbiError>;
    /// Reads a counter.
    fn counter_read(&mut self, name: &[u8]) -> Result<u64, AbiError>;
    /// Milliseconds on the trusted timer since this SM's boot.
    fn time_ms(&mut self) -> u64;
    /// Fills `out` with random bytes from the hardware component.
    fn random(&mut self, out: &mut [u8]);
    /// Records a log line from the enclave.
    fn log(&mut self, line: &[u8]);
}

/// A store's data: the SM's services for this instance and its resource limits.
pub(crate) struct StoreData<S> {
    pub(crate) services: S,
    pub(crate) limits: StoreLimits,
}

/// The signature of each import the ABI provides, or `None` for an unknown import.
pub(crate) fn import_signature(
    module: &str,
    name: &str,
) -> Option<(&'static [ValType], &'static [ValType])> {
    use ValType::{I32, I64};
    if module != "godwit" {
        return None;
    }
    Some(match name {
        "seal" | "unseal" => (&[I32, I32, I32, I32], &[I32]),
        "counter_create" => (&[I32, I32], &[I32]),
        "counter_increment" | "counter_read" => (&[I32, I32], &[I64]),
        "time_ms" => (&[], &[I64]),
        "random" | "log" => (&[I32, I32], &[I32]),
        "hmac_sha256" => (&[I32, I32, I32, I32, I32], &[I32]),
        _ => return None,
    })
}

fn range(ptr: i32, len: i32, memory_len: usize) -> Result<Range<usize>, AbiError> {
    // Pointers and lengths are unsigned 32-bit values in wasm32.
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(AbiError::Invalid)?;
    if end > memory_len {
        return Err(AbiError::Invalid);
    }
    Ok(start..end)
}

fn name(ptr: i32, len: i32, mem: &[u8]) -> Result<Range<usize>, AbiError> {
    if len as u32 as usize > NAME_BYTES_MAX {
        return Err(AbiError::TooLarge);
    }
    range(ptr, len, mem.len())
}

/// Runs `f` with the enclave's memory and the SM's services borrowed together.
fn with_memory<S: Services, R>(
    caller: &mut Caller<'_, StoreData<S>>,
    f: impl FnOnce(&mut [u8], &mut S) -> Result<R, AbiError>,
) -> Result<R, AbiError> {
    let Some(Extern::Memory(memory)) = caller.get_export(MEMORY_EXPORT) else {
        return Err(AbiError::Invalid);
    };
    let (mem, data) = memory.data_and_store_mut(caller);
    f(mem, &mut data.services)
}

fn status(r: Result<i32, AbiError>) -> i32 {
    r.unwrap_or_else(AbiError::code)
}

fn status64(r: Result<u64, AbiError>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::from(AbiError::Limit.code())),
        Err(e) => i64::from(e.code()),
    }
}

/// Adds the ABI's imports to a linker.
pub(crate) fn link<S: Services>(linker: &mut Linker<StoreData<S>>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "godwit",
        "seal",
        |mut c: Caller<'_, StoreData<S>>, sp: i32, sl: i32, dp: i32, dl: i32| {
            status(with_memory(&mut c, |mem, s| {
                if dl as u32 as usize > SEAL_BYTES_MAX {
                    return Err(AbiError::TooLarge);
                }
                let (slot, data) = (name(sp, sl, mem)?, range(dp, dl, mem.len())?);
                s.seal(&mem[slot], &mem[data]).map(|()| 0)
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "unseal",
        |mut c: Caller<'_, StoreData<S>>, sp: i32, sl: i32, op: i32, ol: i32| {
            status(with_memory(&mut c, |mem, s| {
                let (slot, out) = (name(sp, sl, mem)?, range(op, ol, mem.len())?);
                let data = s.unseal(&mem[slot])?;
                if data.len() > out.len() {
                    return Err(AbiError::BufferTooSmall);
                }
                mem[out.start..out.start + data.len()].copy_from_slice(&data);
                i32::try_from(data.len()).map_err(|_| AbiError::TooLarge)
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "counter_create",
        |mut c: Caller<'_, StoreData<S>>, p: i32, l: i32| {
            status(with_memory(&mut c, |mem, s| {
                s.counter_create(&mem[name(p, l, mem)?]).map(|()| 0)
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "counter_increment",
        |mut c: Caller<'_, StoreData<S>>, p: i32, l: i32| {
            status64(with_memory(&mut c, |mem, s| {
                s.counter_increment(&mem[name(p, l, mem)?])
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "counter_read",
        |mut c: Caller<'_, StoreData<S>>, p: i32, l: i32| {
            status64(with_memory(&mut c, |mem, s| {
                s.counter_read(&mem[name(p, l, mem)?])
            }))
        },
    )?;
    linker.func_wrap("godwit", "time_ms", |mut c: Caller<'_, StoreData<S>>| {
        status64(Ok(c.data_mut().services.time_ms()))
    })?;
    linker.func_wrap(
        "godwit",
        "random",
        |mut c: Caller<'_, StoreData<S>>, p: i32, l: i32| {
            status(with_memory(&mut c, |mem, s| {
                if l as u32 as usize > RANDOM_BYTES_MAX {
                    return Err(AbiError::TooLarge);
                }
                let r = range(p, l, mem.len())?;
                s.random(&mut mem[r]);
                Ok(0)
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "log",
        |mut c: Caller<'_, StoreData<S>>, p: i32, l: i32| {
            status(with_memory(&mut c, |mem, s| {
                let r = range(p, l, mem.len())?;
                let end = r.start + r.len().min(LOG_BYTES_MAX);
                s.log(&mem[r.start..end]);
                Ok(0)
            }))
        },
    )?;
    linker.func_wrap(
        "godwit",
        "hmac_sha256",
        |mut c: Caller<'_, StoreData<S>>, kp: i32, kl: i32, mp: i32, ml: i32, op: i32| {
            status(with_memory(&mut c, |mem, _| {
                let (k, m) = (range(kp, kl, mem.len())?, range(mp, ml, mem.len())?);
                let out = range(op, 32, mem.len())?;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&mem[k])
                    .map_err(|_| AbiError::Invalid)?;
                mac.update(&mem[m]);
                mem[out].copy_from_slice(&mac.finalize().into_bytes());
                Ok(0)
            }))
        },
    )?;
    Ok(())
}
