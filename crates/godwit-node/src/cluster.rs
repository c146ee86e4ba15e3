//! `godwit cluster init`: a manufacturer root, one provisioned hardware identity per host,
//! and one configuration per host.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use godwit_hw::{IdentityError, Manufacturer};
use godwit_proto::TimeoutConfig;
use godwit_wire::HostId;

use crate::config::{ControlConfig, NodeConfig, PeerConfig, PolicyConfig};

/// Why a cluster could not be laid out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The directory exists and is not empty.
    #[error("{0}: exists and is not empty; refusing to overwrite a cluster")]
    NotEmpty(PathBuf),
    /// Too few or too many hosts, or ports out of range.
    #[error("{0}")]
    Invalid(String),
    /// Provisioning an identity failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// A base port such that `base + 1 ..= base + hosts` are free on loopback right now (a
/// small race remains: another process may take one before the node binds it).
pub fn free_base_port(hosts: usize) -> Option<u16> {
    for _ in 0..200 {
        let mut r = [0u8; 2];
        crate::node::host_random(&mut r).ok()?;
        let base = 20_000 + u16::from_le_bytes(r) % 40_000;
        let free = (1..=hosts).all(|k| {
            u16::try_from(usize::from(base) + k)
                .ok()
                .and_then(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
                .is_some()
        });
        if free {
            return Some(base);
        }
    }
    None
}

/// The name of the K-th host (1-based).
pub fn host_name(k: usize) -> String {
    format!("host{k}")
}

/// Lays out a cluster of `hosts` hosts in `dir`; host K listens on `127.0.0.1:(base_port +
/// K)`. Returns the configuration files, `dir/hostK.toml`.
pub fn init(dir: &Path, hosts: usize, base_port: u16) -> Result<Vec<PathBuf>, ClusterError> {
    if !(1..=64).contains(&hosts) {
        return Err(ClusterError::Invalid(format!(
            "--hosts must be 1 to 64, got {hosts}"
        )));
    }
    if usize::from(base_port) + hosts > usize::from(u16::MAX) {
        return Err(ClusterError::Invalid(
            "--base-port too high for that many hosts".into(),
        ));
    }
    if dir.exists() && fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(ClusterError::NotEmpty(dir.to_owned()));
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let manufacturer = Manufacturer::generate();
    manufacturer.save(&dir.join("manufacturer"))?;
    let addr = |k: usize| format!("127.0.0.1:{}", usize::from(base_port) + k);
    let all: Vec<PeerConfig> = (1..=hosts)
        .map(|k| PeerConfig {
            id: HostId::new(host_name(k)).expect("valid host name"),
            node_id: k as u64,
            addr: addr(k),
        })
        .collect();
    let mut files = Vec::new();
    for me in &all {
        let name = me.id.as_str();
        let host_dir = dir.join(name);
        manufacturer
            .provision(me.id.clone())
            .save(&host_dir.join("identity"))?;
        let mut token = [0u8; 32];
        crate::node::host_random(&mut token)
            .map_err(|e| ClusterError::Invalid(format!("random source: {e}")))?;
        write_private(
            &host_dir.join("control.token"),
            hex::encode(token).as_bytes(),
        )?;
        let config = NodeConfig {
            id: me.id.clone(),
            node_id: me.node_id,
            listen: me.addr.clone(),
            data_dir: PathBuf::from(name),
            memory_budget_mib: 8192,
            control: ControlConfig {
                socket: PathBuf::from(format!("{name}/control.sock")),
                token_file: PathBuf::from(format!("{name}/control.token")),
            },
            policy: PolicyConfig {
                manufacturer_roots: vec![manufacturer.root().to_hex()],
                allowed_sm: vec![godwit_monitor::sm_measurement().to_string()],
                allowed_hosts: None,
            },
            timeouts: TimeoutConfig::default(),
            peers: all.iter().filter(|p| p.id != me.id).cloned().collect(),
        };
        let path = dir.join(format!("{name}.toml"));
        write_private(&path, config.to_toml().as_bytes())?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_loadable_configs_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let files = init(&dir, 3, 7200).unwrap();
        assert_eq!(files.len(), 3);
        let cfg = NodeConfig::load(&files[1]).unwrap();
        assert_eq!(
            (cfg.id.as_str(), cfg.node_id, cfg.listen.as_str()),
            ("host2", 2, "127.0.0.1:7202")
        );
        assert_eq!(cfg.peers.len(), 2);
        godwit_hw::DeviceIdentity::load(&cfg.identity_dir()).unwrap();
        assert!(matches!(
            init(&dir, 3, 7200),
            Err(ClusterError::NotEmpty(_))
        ));
        assert!(matches!(
            init(&tmp.path().join("d"), 0, 7200),
            Err(ClusterError::Invalid(_))
        ));
    }
}
