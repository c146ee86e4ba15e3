//! Enclave manifests: the application's configuration, measured together with its code.

use serde::{Deserialize, Serialize};

use crate::Measurement;

/// An enclave application's manifest (claim 8). Written by its author as TOML; measured in
/// its canonical encoding together with the module, so a host that edits it changes the
/// enclave's identity and therefore its sealing keys.
///
/// ```toml
/// name = "counter"
/// version = "1.0.0"
/// max_instances_per_host = 2
/// memory_max_mib = 4
/// migratable = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Application name: 1–64 of `[a-z0-9._-]`.
    pub name: String,
    /// Application version, free text of 1–32 printable ASCII characters.
    pub version: String,
    /// Most instances of this application that may exist at once on one host (claim 15).
    pub max_instances_per_host: u32,
    /// Upper bound on the enclave's linear memory, in MiB (at most 4096: wasm32's limit).
    pub memory_max_mib: u32,
    /// Whether the SMs may migrate instances of this application.
    pub migratable: bool,
    /// Most cluster-wide instances, enforced by the store where one exists.
    #[serde(default)]
    pub max_instances_cluster: Option<u32>,
    /// Fuel (roughly, WebAssembly instructions) one ecall may burn before it is stopped.
    #[serde(default = "Manifest::default_fuel_per_call")]
    pub fuel_per_call: u64,
    /// Largest ecall argument accepted, in bytes.
    #[serde(default = "Manifest::default_io_bytes")]
    pub max_arg_bytes: u32,
    /// Largest ecall result accepted, in bytes.
    #[serde(default = "Manifest::default_io_bytes")]
    pub max_result_bytes: u32,
}

/// Why a manifest was rejected. Names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not valid TOML for a manifest (syntax, a missing or unknown field, a wrong type).
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// A field has a value outside its allowed range.
    #[error("manifest field `{field}`: {reason}")]
    Field {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// Largest manifest text accepted, in bytes.
    pub const TEXT_BYTES_MAX: usize = 16 * 1024;
    /// Largest memory a wasm32 module can address.
    pub const MEMORY_MIB_MAX: u32 = 4096;
    /// Ceiling on the per-call argument and result sizes a manifest may request.
    pub const IO_BYTES_MAX: u32 = 16 * 1024 * 1024;
    /// Ceiling on the per-call fuel a manifest may request.
    pub const FUEL_PER_CALL_MAX: u64 = 1 << 40;

    fn default_fuel_per_call() -> u64 {
        1_000_000_000
    }

    fn default_io_bytes() -> u32 {
        64 * 1024
    }

    /// Parses and validates a TOML manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        if text.len() > Self::TEXT_BYTES_MAX {
            return Err(ManifestError::Syntax(format!(
                "{} bytes exceeds the limit of {} bytes",
                text.len(),
                Self::TEXT_BYTES_MAX
            )));
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Renders the manifest as TOML (every field explicit).
    pub fn to_toml(&self) -> String {
        // Invariant: a struct of strings, integers, booleans and an optional integer
        // always serialises to TOML.
        toml::to_string(self).expect("a manifest always serialises to TOML")
    }

    /// Checks every field's range. Called by every constructor that reads outside input.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let field = |field, reason: &str| {
            Err(ManifestError::Field {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
        {
            return field("name", "must be 1-64 characters of [a-z0-9._-]");
        }
        if self.version.is_empty()
            || self.version.len() > 32
            || !self.version.bytes().all(|b| b.is_ascii_graphic())
        {
            return field("version", "must be 1-32 printable ASCII characters");
        }
        if self.max_instances_per_host == 0 {
            return field("max_instances_per_host", "must be at least 1");
        }
        if self.max_instances_cluster == Some(0) {
            return field("max_instances_cluster", "must be at least 1 when given");
        }
        if self.memory_max_mib == 0 || self.memory_max_mib > Self::MEMORY_MIB_MAX {
            return field("memory_max_mib", "must be between 1 and 4096");
        }
        if self.fuel_per_call == 0 || self.fuel_per_call > Self::FUEL_PER_CALL_MAX {
            return field("fuel_per_call", "must be between 1 and 2^40");
        }
        if self.max_arg_bytes > Self::IO_BYTES_MAX {
            return field("max_arg_bytes", "must be at most 16 MiB");
        }
        if self.max_result_bytes > Self::IO_BYTES_MAX {
            return field("max_result_bytes", "must be at most 16 MiB");
        }
        Ok(())
    }

    /// The canonical encoding measured into the enclave's identity: every field, defaults
    /// filled in, in declaration order. Two TOML texts that mean the same manifest (field
    /// order, comments, an omitted default) have the same canonical encoding.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        crate::encode(self)
    }

    /// The memory limit in bytes.
    pub fn memory_max_bytes(&self) -> u64 {
        u64::from(self.memory_max_mib) * 1024 * 1024
    }

    /// The enclave measurement: SHA-256 over the module bytes and this manifest's canonical
    /// encoding, domain-separated.
    pub fn measure(&self, module: &[u8]) -> Measurement {
        Measurement::of_parts(
            "godwit enclave measurement v1",
            &[module, &self.canonical_bytes()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTER: &str = r#"
        name = "counter"
        version = "1.0.0"
        max_instances_per_host = 2
        memory_max_mib = 4
        migratable = true
    "#;

    #[test]
    fn parses_with_defaults_and_measures_canonically() {
        let m = Manifest::from_toml(COUNTER).unwrap();
        assert_eq!(m.max_instances_per_host, 2);
        assert_eq!(m.max_arg_bytes, 64 * 1024);
        // Reordered, commented, defaults spelt out: same manifest, same measurement.
        let same = r#"
            # the same, written differently
            migratable = true
            memory_max_mib = 4
            max_instances_per_host = 2
            version = "1.0.0"
            name = "counter"
            max_arg_bytes = 65536
        "#;
        let m2 = Manifest::from_toml(same).unwrap();
        assert_eq!(m.measure(b"code"), m2.measure(b"code"));
        assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn editing_manifest_or_module_changes_the_measurement() {
        let m = Manifest::from_toml(COUNTER).unwrap();
        let mut edited = m.clone();
        edited.max_instances_per_host = 3;
        assert_ne!(m.measure(b"code"), edited.measure(b"code"));
        assert_ne!(m.measure(b"code"), m.measure(b"codf"));
    }

    #[test]
    fn rejects_unknown_missing_and_out_of_range_fields() {
        let unknown = format!("{COUNTER}\nextra = 1\n");
        assert!(matches!(
            Manifest::from_toml(&unknown),
            Err(ManifestError::Syntax(msg)) if msg.contains("extra")
        ));
        let missing = COUNTER.replace("migratable = true", "");
        assert!(matches!(
            Manifest::from_toml(&missing),
            Err(ManifestError::Syntax(msg)) if msg.contains("migratable")
        ));
        let zero = COUNTER.replace("max_instances_per_host = 2", "max_instances_per_host = 0");
        assert_eq!(
            Manifest::from_toml(&zero).unwrap_err(),
            ManifestError::Field {
                field: "max_instances_per_host",
                reason: "must be at least 1".into()
            }
        );
        let big = COUNTER.replace("memory_max_mib = 4", "memory_max_mib = 5000");
        assert!(matches!(
            Manifest::from_toml(&big),
            Err(ManifestError::Field {
                field: "memory_max_mib",
                ..
            })
        ));
        let name = COUNTER.replace("\"counter\"", "\"Counter!\"");
        assert!(matches!(
            Manifest::from_toml(&name),
            Err(ManifestError::Field { field: "name", .. })
        ));
        assert!(matches!(
            Manifest::from_toml("not toml at all ["),
            Err(ManifestError::Syntax(_))
        ));
    }
}
