//! The host's storage of sealed blobs: one file per (enclave, slot, version), written atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use godwit_monitor::{BlobStore, HostError};
use godwit_wire::EnclaveId;

/// Sealed blobs under a directory: `DIR/<enclave>/<slot>@<version>`. The SM checks everything read
/// back; this only has to be durable (write, fsync, rename).
pub struct DirBlobStore {
    dir: PathBuf,
}

fn err(e: impl std::fmt::Display) -> HostError {
    HostError(e.to_string())
}

impl DirBlobStore {
    /// Blobs under `dir` (created 0700 if missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, enclave: EnclaveId, slot: &str) -> Result<PathBuf, HostError> {
        // The SM validates slot names; refuse anything else rather than trust that here.
        if slot.is_empty()
            || !slot
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
            || slot.starts_with('.')
        {
            return Err(HostError(format!(
                "slot name {slot:?} is not a safe file name"
            )));
        }
        Ok(self.dir.join(enclave.to_string()).join(slot))
    }
}

impl BlobStore for DirBlobStore {
    fn put(&self, enclave: EnclaveId, slot: &str, blob: &[u8]) -> Result<(), HostError> {
        let path = self.path(enclave, slot)?;
        let parent = path.parent().ok_or_else(|| err("no parent"))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
        let tmp = parent.join(format!(".{slot}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(blob).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    fn get(&self, enclave: EnclaveId, slot: &str) -> Result<Option<Vec<u8>>, HostError> {
        match fs::read(self.path(enclave, slot)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    fn delete(&self, enclave: EnclaveId, slot: &str) -> Result<(), HostError> {
        let path = self.path(enclave, slot)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        // Remove the enclave's directory once empty; a failure here only leaves an empty
        // directory behind.
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobStore::open(dir.path()).unwrap();
        let e = EnclaveId([1; 16]);
        assert_eq!(store.get(e, "count").unwrap(), None);
        store.put(e, "count", b"sealed").unwrap();
        store.put(e, "count", b"sealed2").unwrap();
        assert_eq!(store.get(e, "count").unwrap().unwrap(), b"sealed2");
        store.delete(e, "count").unwrap();
        assert_eq!(store.get(e, "count").unwrap(), None);
        assert!(store.put(e, "../escape", b"x").is_err());
        assert!(store.put(e, ".hidden", b"x").is_err());
    }
}
