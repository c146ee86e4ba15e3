//! Provisioning: the manufacturer's root, and device identities written to disk.
//!
//! In a real part the device secret is fused at the factory and never leaves the chip; the
//! manufacturer certifies the device's public key. Here a [`DeviceIdentity`] is written to
//! a directory readable only by its owner (0700 directory, 0600 files) and reloaded at the
//! next start: same identity, new boot epoch. The manufacturer's private key is used only
//! while provisioning.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use godwit_wire::HostId;
use zeroize::Zeroizing;

use crate::cert::{DeviceCertificate, ManufacturerRoot};
use crate::kdf::{Secret32, derive};

const MANUFACTURER_KEY_FILE: &str = "manufacturer.key";
const MANUFACTURER_ROOT_FILE: &str = "manufacturer.pub";
const DEVICE_SECRET_FILE: &str = "device.secret";
const DEVICE_CERT_FILE: &str = "device.cert";

/// Why an identity could not be provisioned, saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file system refused an operation.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Provisioning would overwrite an existing identity.
    #[error("{0}: an identity is already provisioned here; refusing to overwrite it")]
    AlreadyProvisioned(PathBuf),
    /// A file's content is not what it should be.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A secret file is readable by others than its owner.
    #[error("{path}: permissions {mode:o} let others read a secret; expected 600")]
    InsecurePermissions {
        /// The file concerned.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn os_random_32() -> Secret32 {
    let mut out = Zeroizing::new([0u8; 32]);
    crate::os_random(out.as_mut());
    out
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::AlreadyProvisioned(path.to_owned()),
            _ => IdentityError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The file in a device directory that keeps the component's boot count.
const BOOT_COUNT_FILE: &str = "boot-count";

/// Counts one more boot of the component whose directory is `dir` and returns the new
/// count. This emulates a hardware monotonic counter: the ledger uses it only to order a
/// host's boot announcements, so a host that rolled the file back harms only its own
/// liveness (its SM's writes would look stale).
pub fn advance_boot_count(dir: &Path) -> Result<u64, IdentityError> {
    let path = dir.join(BOOT_COUNT_FILE);
    let count = match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| IdentityError::Malformed {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err(&path)(e)),
    };
    let next = count
        .checked_add(1)
        .ok_or_else(|| IdentityError::Malformed {
            path: path.clone(),
            reason: "boot count exhausted".into(),
        })?;
    let tmp = dir.join(format!("{BOOT_COUNT_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(next.to_string().as_bytes())
        .map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(next)
}

fn read_private(path: &Path, max_bytes: u64) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > max_bytes {
        return Err(IdentityError::Malformed {
            path: path.to_owned(),
            reason: format!("{} bytes is more than the expected {max_bytes}", meta.len()),
        });
    }
    fs::read(path).map(Zeroizing::new).map_err(io_err(path))
}

fn decode_hex32(path: &Path, text: &[u8]) -> Result<Secret32, IdentityError> {
    let mut out = Zeroizing::new([0u8; 32]);
    let text = std::str::from_utf8(text).map(str::trim).unwrap_or("");
    hex::decode_to_slice(text, out.as_mut()).map_err(|_| IdentityError::Malformed {
        path: path.to_owned(),
        reason: "expected 64 hex digits".into(),
    })?;
    Ok(out)
}

/// The manufacturer: holds the root signing key and certifies devices.
pub struct Manufacturer {
    key: SigningKey,
}

impl Manufacturer {
    /// A new manufacturer root from the OS random source.
    pub fn generate() -> Self {
        Self::from_seed(*os_random_32())
    }

    /// A manufacturer root from a fixed seed (simulator and tests).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The root public key verifiers trust.
    pub fn root(&self) -> ManufacturerRoot {
        ManufacturerRoot(self.key.verifying_key())
    }

    /// Fuses a fresh device secret for `host` and certifies the device key derived from it.
    pub fn provision(&self, host: HostId) -> DeviceIdentity {
        self.provision_from_secret(host, os_random_32())
    }

    /// As [`Manufacturer::provision`] with a given device secret (simulator and tests).
    pub fn provision_from_secret(&self, host: HostId, secret: Secret32) -> DeviceIdentity {
        let device_key = device_signing_key(&secret);
        let cert = DeviceCertificate::issue(&self.key, host, device_key.verifying_key());
        DeviceIdentity { secret, cert }
    }

    /// Writes the root key pair into `dir` (the private key 0600).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        create_private_dir(dir)?;
        let secret = Zeroizing::new(hex::encode(self.key.to_bytes()));
        write_private(&dir.join(MANUFACTURER_KEY_FILE), secret.as_bytes())?;
        write_private(
            &dir.join(MANUFACTURER_ROOT_FILE),
            self.root().to_hex().as_bytes(),
        )
    }

    /// Loads a root key pair written by [`Manufacturer::save`].
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(MANUFACTURER_KEY_FILE);
        let text = read_private(&path, 128)?;
        Ok(Self::from_seed(*decode_hex32(&path, &text)?))
    }
}

pub(crate) fn device_signing_key(secret: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&derive(secret, "device identity", &[]))
}

/// A provisioned device: its secret (which stays inside the hardware component) and its
/// manufacturer-signed certificate.
#[derive(Clone)]
pub struct DeviceIdentity {
    pub(crate) secret: Secret32,
    pub(crate) cert: DeviceCertificate,
}

impl DeviceIdentity {
    /// The device certificate (public).
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.cert
    }

    /// The host this device was provisioned as.
    pub fn host(&self) -> &HostId {
        &self.cert.host
    }

    /// Writes the identity into `dir` (0700) as two 0600 files. Refuses to overwrite.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        create_private_dir(dir)?;
        let secret = Zeroizing::new(hex::encode(self.secret.as_ref()));
        write_private(&dir.join(DEVICE_SECRET_FILE), secret.as_bytes())?;
        write_private(
            &dir.join(DEVICE_CERT_FILE),
            &godwit_wire::encode(&self.cert),
        )
    }

    /// Loads an identity written by [`DeviceIdentity::save`], checking that the secret and
    /// the certificate belong together.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let secret_path = dir.join(DEVICE_SECRET_FILE);
        let secret = decode_hex32(&secret_path, &read_private(&secret_path, 128)?)?;
        let cert_path = dir.join(DEVICE_CERT_FILE);
        let cert_bytes = read_private(&cert_path, 4096)?;
        let cert: DeviceCertificate =
            godwit_wire::decode(&cert_bytes, 4096).map_err(|e| IdentityError::Malformed {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        if device_signing_key(&secret).verifying_key() != cert.device_key {
            return Err(IdentityError::Malformed {
                path: cert_path,
                reason: "certificate does not match the device secret".into(),
            });
        }
        Ok(Self { secret, cert })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("id");
        let m = Manufacturer::generate();
        let id = m.provision(HostId::new("host1").unwrap());
        id.save(&dir).unwrap();
        for f in [DEVICE_SECRET_FILE, DEVICE_CERT_FILE] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let back = DeviceIdentity::load(&dir).unwrap();
        assert_eq!(back.certificate(), id.certificate());
        assert_eq!(*back.secret, *id.secret);
        assert!(matches!(
            id.save(&dir),
            Err(IdentityError::AlreadyProvisioned(_))
        ));
    }

    #[test]
    fn load_refuses_readable_secret_and_mismatched_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manufacturer::generate();
        let a = tmp.path().join("a");
        m.provision(HostId::new("a").unwrap()).save(&a).unwrap();
        fs::set_permissions(
            a.join(DEVICE_SECRET_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            DeviceIdentity::load(&a),
            Err(IdentityError::InsecurePermissions { mode: 0o644, .. })
        ));
        // A certificate swapped in from another device.
        let b = tmp.path().join("b");
        m.provision(HostId::new("b").unwrap()).save(&b).unwrap();
        fs::set_permissions(
            a.join(DEVICE_SECRET_FILE),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::remove_file(a.join(DEVICE_CERT_FILE)).unwrap();
        fs::copy(b.join(DEVICE_CERT_FILE), a.join(DEVICE_CERT_FILE)).unwrap();
        assert!(matches!(
            DeviceIdentity::load(&a),
            Err(IdentityError::Malformed { .. })
        ));
    }

    #[test]
    fn manufacturer_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manufacturer::generate();
        m.save(tmp.path()).unwrap();
        assert_eq!(Manufacturer::load(tmp.path()).unwrap().root(), m.root());
    }
}
