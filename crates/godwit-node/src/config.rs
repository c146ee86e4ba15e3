//! A host's configuration: plain TOML an operator may edit; every error names its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use godwit_attest::Policy;
use godwit_hw::ManufacturerRoot;
use godwit_proto::TimeoutConfig;
use godwit_wire::{HostId, Measurement};
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, a missing or unknown field, or a value of the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the field and line.
        message: String,
    },
    /// A field's value is not acceptable.
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// One other host of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its host id (as certified in its device certificate).
    pub id: HostId,
    /// The address its SM listens on.
    pub addr: String,
}

/// Who may use the control API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// A Unix socket, created with mode 0600.
    pub socket: PathBuf,
    /// A file (mode 0600) holding the token every request must carry.
    pub token_file: PathBuf,
}

/// Which peer SMs this host trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Trusted manufacturer root keys, hex.
    pub manufacturer_roots: Vec<String>,
    /// Allowed SM measurements, hex.
    pub allowed_sm: Vec<String>,
    /// Allowed host ids; absent: any host a trusted root certified.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<HostId>>,
}

/// How this host's SM takes part in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The hosts that found the store together (`cluster init` lists them all, this one
    /// among them). Their SMs write the same first configuration, so the store starts
    /// without anyone adding anyone. Empty (a host added later): the SM joins the store
    /// once a member adds it. Only an SM that never wrote a store record founds.
    #[serde(default)]
    pub founders: Vec<HostId>,
    /// The store's lease, ms, if this host founds it (every member then uses the one
    /// written into the store's first entries): an SM releases results only within this
    /// long of a store majority confirming it, and an adopted enclave waits it out (plus a
    /// tenth for timer drift). Absent: 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

impl StoreConfig {
    /// The lease a founder writes into the store.
    pub fn lease(&self) -> std::time::Duration {
        self.lease_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(godwit_store::LEASE)
    }
}

/// A host's configuration file (`hostK.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This host's id; must match its device certificate.
    pub id: HostId,
    /// The address other SMs dial.
    pub listen: String,
    /// Where identity, sealed blobs and the store live.
    pub data_dir: PathBuf,
    /// Memory granted to enclaves on this host, MiB (incoming migrations past it are
    /// refused).
    #[serde(default = "NodeConfig::default_memory_budget_mib")]
    pub memory_budget_mib: u64,
    /// The control API.
    pub control: ControlConfig,
    /// The trust policy.
    pub policy: PolicyConfig,
    /// Deadline terms.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// The store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The other hosts.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

impl NodeConfig {
    /// Largest configuration file read.
    pub const FILE_BYTES_MAX: u64 = 1024 * 1024;

    fn default_memory_budget_mib() -> u64 {
        8192
    }

    /// Reads, parses and checks a configuration file. Relative paths in it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > Self::FILE_BYTES_MAX {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                message: "file too large".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of the configuration file at `path` (which names it in
    /// errors, and against whose directory relative paths are taken).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.control.socket,
            &mut cfg.control.token_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.check().map_err(|(field, reason)| ConfigError::Field {
            path: path.to_owned(),
            field,
            reason,
        })?;
        Ok(cfg)
    }

    /// Writes the configuration as TOML.
    pub fn to_toml(&self) -> String {
        // Invariant: every field is a plain TOML value.
        toml::to_string(self).expect("a configuration always serialises")
    }

    fn check(&self) -> Result<(), (String, String)> {
        let field = |f: &str, r: String| Err((f.to_owned(), r));
        if self.listen.parse::<SocketAddr>().is_err() {
            return field(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:7101", self.listen),
            );
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.addr.parse::<SocketAddr>().is_err() {
                return field(
                    &format!("peers[{i}].addr"),
                    format!("{:?} is not an address", p.addr),
                );
            }
            if p.id == self.id || self.peers[..i].iter().any(|q| q.id == p.id) {
                return field(&format!("peers[{i}].id"), format!("{} appears twice", p.id));
            }
        }
        for (i, f) in self.store.founders.iter().enumerate() {
            if self.store.founders[..i].contains(f) {
                return field(
                    &format!("store.founders[{i}]"),
                    format!("{f} appears twice"),
                );
            }
            if *f != self.id && self.peer(f).is_none() {
                return field(
                    &format!("store.founders[{i}]"),
                    format!("{f} is not this host nor one of its peers (its address is needed)"),
                );
            }
        }
        if !self.store.founders.is_empty() && !self.store.founders.contains(&self.id) {
            return field(
                "store.founders",
                format!(
                    "lists founders but not this host ({}); leave it empty to join a store",
                    self.id
                ),
            );
        }
        if let Some(ms) = self.store.lease_ms {
            let (min, max) = (godwit_store::LEASE_MIN, godwit_store::LEASE_MAX);
            if !(min.as_millis()..=max.as_millis()).contains(&u128::from(ms)) {
                return field(
                    "store.lease_ms",
                    format!(
                        "{ms} is outside {}..={} ms",
                        min.as_millis(),
                        max.as_millis()
                    ),
                );
            }
        }
        self.policy().map_err(|(f, r)| (format!("policy.{f}"), r))?;
        if self.memory_budget_mib == 0 {
            return field("memory_budget_mib", "must be at least 1".into());
        }
        Ok(())
    }

    /// The trust policy, parsed.
    pub fn policy(&self) -> Result<Policy, (String, String)> {
        let roots = self
            .policy
            .manufacturer_roots
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ManufacturerRoot::from_hex(r).map_err(|_| {
                    (
                        format!("manufacturer_roots[{i}]"),
                        "not a 64-hex-digit Ed25519 key".to_owned(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allowed_sm = self
            .policy
            .allowed_sm
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.parse::<Measurement>().map_err(|_| {
                    (
                        format!("allowed_sm[{i}]"),
                        "not a 64-hex-digit measurement".to_owned(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if roots.is_empty() {
            return Err((
                "manufacturer_roots".into(),
                "at least one root is needed".into(),
            ));
        }
        Ok(Policy {
            roots,
            allowed_sm,
            allowed_hosts: self.policy.allowed_hosts.clone(),
        })
    }

    /// The peer with id `host`.
    pub fn peer(&self, host: &HostId) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == *host)
    }

    /// Where the device identity is kept.
    pub fn identity_dir(&self) -> PathBuf {
        self.data_dir.join("identity")
    }

    /// Where sealed blobs are kept.
    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }

    /// Where the SM's store records are kept.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let root = godwit_hw::Manufacturer::from_seed([1; 32]).root().to_hex();
        format!(
            r#"
id = "host1"
listen = "127.0.0.1:7101"
data_dir = "host1"
[control]
socket = "host1/control.sock"
token_file = "host1/control.token"
[policy]
manufacturer_roots = ["{root}"]
allowed_sm = ["{}"]
[[peers]]
id = "host2"
addr = "127.0.0.1:7102"
[store]
founders = ["host1", "host2"]
"#,
            Measurement([2; 32])
        )
    }

    fn load(text: &str) -> Result<NodeConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host1.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::load(&path)
    }

    #[test]
    fn a_valid_file_loads_with_paths_relative_to_it() {
        let cfg = load(&sample()).unwrap();
        assert_eq!(cfg.id.as_str(), "host1");
        assert!(cfg.data_dir.is_absolute());
        assert_eq!(cfg.timeouts, TimeoutConfig::default());
        assert_eq!(
            cfg.peer(&HostId::new("host2").unwrap()).unwrap().addr,
            "127.0.0.1:7102"
        );
        assert_eq!(cfg.store.founders.len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (sample().replace("127.0.0.1:7101", "nowhere"), "`listen`"),
            (sample().replace("127.0.0.1:7102", "x"), "`peers[0].addr`"),
            (
                sample().replace("id = \"host2\"\naddr", "id = \"host1\"\naddr"),
                "`peers[0].id`",
            ),
            (
                sample().replace("[\"host1\", \"host2\"]", "[\"host1\", \"host3\"]"),
                "`store.founders[1]`",
            ),
            (
                sample().replace("[\"host1\", \"host2\"]", "[\"host2\"]"),
                "`store.founders`",
            ),
            (
                sample().replace("manufacturer_roots = [\"", "manufacturer_roots = [\"zz"),
                "policy.manufacturer_roots[0]",
            ),
            (
                sample().replace("founders = [", "lease_ms = 50\nfounders = ["),
                "`store.lease_ms`",
            ),
            (sample().replace("listen =", "lissen ="), "lissen"),
            (
                sample().replace("listen = \"127.0.0.1:7101\"", "listen = 7101"),
                "listen",
            ),
            (sample().replace("id = \"host1\"", "id = \"host/1\""), "id"),
        ];
        for (text, field) in cases {
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{field} not named in: {err}");
        }
    }
}
