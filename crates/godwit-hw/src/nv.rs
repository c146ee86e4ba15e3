//! The component's non-volatile monotonic counter: the role a TPM NV counter plays. It
//! only moves forward, and it lives in the component, not on the host's disk, so a host
//! that hands the SM an older copy of its files cannot move it back with them.
//!
//! The emulation keeps it in the provisioned identity's directory (which stands for the
//! component's own storage, as the device secret does), written in place. The write is not
//! synced: it survives the process (SIGKILL included), and after a power cut the counter can
//! only lag what was written under it, which makes the SM accept its files as ahead, never
//! refuse them. A sync would cost 0.3 ms per store write and buy nothing against the host,
//! which could edit the emulated counter's file as it can the device secret's. (A real
//! part's counter is synchronous; see docs/architecture.md.)

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::IdentityError;

const NV_COUNTER_FILE: &str = "nv-counter";

/// Why the counter could not move.
#[derive(Debug, thiserror::Error)]
#[error("the component's monotonic counter could not be written: {0}")]
pub struct NvError(String);

struct State {
    value: u64,
    file: Option<File>,
}

/// A monotonic counter in the component's non-volatile memory. Clones share the counter.
#[derive(Clone)]
pub struct NvCounter {
    state: Arc<Mutex<State>>,
}

impl NvCounter {
    /// A counter held in memory only: for simulated components, and for software
    /// components without a provisioned directory.
    pub fn volatile() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                value: 0,
                file: None,
            })),
        }
    }

    /// The counter of the component provisioned in `dir` (created at zero).
    pub fn open(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(NV_COUNTER_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let value = match bytes.len() {
            0 => 0,
            8 => u64::from_be_bytes(bytes.try_into().unwrap_or_default()),
            n => {
                return Err(IdentityError::Malformed {
                    path,
                    reason: format!("{n} bytes; a counter is 8"),
                });
            }
        };
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                value,
                file: Some(file),
            })),
        })
    }

    /// The counter's value.
    pub fn get(&self) -> u64 {
        self.lock().value
    }

    /// Moves the counter to `to` if that is forward; never back. It survives the process
    /// once this returns (see the module's note on power cuts).
    pub fn advance(&self, to: u64) -> Result<(), NvError> {
        let mut s = self.lock();
        if to <= s.value {
            return Ok(());
        }
        if let Some(f) = s.file.as_mut() {
            // One 8-byte write within a sector: it lands whole or not at all.
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.write_all(&to.to_be_bytes()))
                .map_err(|e| NvError(e.to_string()))?;
        }
        s.value = to;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a valid value (it is set last).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for NvCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NvCounter({})", self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_only_moves_forward_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let c = NvCounter::open(dir.path()).unwrap();
        assert_eq!(c.get(), 0);
        c.advance(5).unwrap();
        c.advance(3).unwrap();
        assert_eq!(c.get(), 5);
        drop(c);
        assert_eq!(NvCounter::open(dir.path()).unwrap().get(), 5);
        std::fs::write(dir.path().join(NV_COUNTER_FILE), b"xyz").unwrap();
        assert!(matches!(
            NvCounter::open(dir.path()),
            Err(IdentityError::Malformed { .. })
        ));
    }
}
