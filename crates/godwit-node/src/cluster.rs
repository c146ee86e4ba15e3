//! `godwit cluster init`: a manufacturer root, one provisioned hardware identity per host,
//! and one configuration per host.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use godwit_hw::{IdentityError, Manufacturer};
use godwit_proto::TimeoutConfig;
use godwit_wire::HostId;

use crate::config::{ControlConfig, NodeConfig, PeerConfig, PolicyConfig, StoreConfig};

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
/// Creates `dir` (and its parents) so that only its owner may enter the directories it
/// creates, whatever the umask.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ClusterError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

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
/// small race remains: another process may take one before the node binds it). Bases lie
/// in 20000..32000, below Linux's default range for outgoing connections' ports (32768 and
/// up), so that another connection's local port is unlikely to take one in that window.
pub fn free_base_port(hosts: usize) -> Option<u16> {
    for _ in 0..200 {
        let mut r = [0u8; 2];
        crate::node::host_random(&mut r).ok()?;
        let base = 20_000 + u16::from_le_bytes(r) % 12_000;
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

/// K of a host named `hostK` (others sort last).
fn host_number(id: &HostId) -> (usize, String) {
    let k = id
        .as_str()
        .strip_prefix("host")
        .and_then(|k| k.parse().ok())
        .unwrap_or(usize::MAX);
    (k, id.to_string())
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
    private_dir(dir)?;
    let manufacturer = Manufacturer::generate();
    manufacturer.save(&dir.join("manufacturer"))?;
    let addr = |k: usize| format!("127.0.0.1:{}", usize::from(base_port) + k);
    let all: Vec<PeerConfig> = (1..=hosts)
        .map(|k| PeerConfig {
            id: HostId::new(host_name(k)).expect("valid host name"),
            addr: addr(k),
        })
        .collect();
    let mut files = Vec::new();
    for me in &all {
        let name = me.id.as_str();
        let host_dir = dir.join(name);
        private_dir(&host_dir)?;
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
            store: StoreConfig {
                founders: all.iter().map(|p| p.id.clone()).collect(),
                lease_ms: Some(godwit_store::LEASE.as_millis() as u64),
            },
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
            (cfg.id.as_str(), cfg.listen.as_str()),
            ("host2", "127.0.0.1:7202")
        );
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.store.founders.len(), 3);
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

/// A host provisioned by [`add`].
#[derive(Debug, Clone)]
pub struct NewHost {
    /// Its configuration file.
    pub config: PathBuf,
    /// Its host id.
    pub id: HostId,
    /// Its listen address.
    pub addr: String,
}

/// The configurations `init` (and `add`) wrote in `dir`, in host order.
pub fn configs(dir: &Path) -> Result<Vec<(PathBuf, NodeConfig)>, ClusterError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_host = path.extension().is_some_and(|e| e == "toml")
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.starts_with("host"));
        if is_host {
            let cfg = NodeConfig::load(&path).map_err(|e| ClusterError::Invalid(e.to_string()))?;
            out.push((path, cfg));
        }
    }
    out.sort_by_key(|(_, c)| host_number(&c.id));
    Ok(out)
}

/// Provisions one more host in a cluster directory laid out by [`init`]: an identity from
/// the directory's manufacturer, a token, a configuration listing every existing host; and
/// adds the new host as a peer to every existing configuration (for their next start:
/// running members learn its address from the store's membership). Membership itself is
/// changed by asking the running cluster (`godwit cluster add` does both).
pub fn add(dir: &Path) -> Result<NewHost, ClusterError> {
    let existing = configs(dir)?;
    let Some((_, first)) = existing.first() else {
        return Err(ClusterError::Invalid(format!(
            "{}: no hostK.toml here; run cluster init first",
            dir.display()
        )));
    };
    let k = existing
        .iter()
        .map(|(_, c)| host_number(&c.id).0)
        .filter(|&k| k != usize::MAX)
        .max()
        .unwrap_or(0)
        + 1;
    let port = existing
        .iter()
        .filter_map(|(_, c)| c.listen.rsplit_once(':')?.1.parse::<u16>().ok())
        .max()
        .and_then(|p| p.checked_add(1))
        .ok_or_else(|| ClusterError::Invalid("no port left".into()))?;
    let id = HostId::new(host_name(k)).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let addr = format!("127.0.0.1:{port}");
    let manufacturer = Manufacturer::load(&dir.join("manufacturer"))?;
    let name = id.as_str();
    let host_dir = dir.join(name);
    private_dir(&host_dir)?;
    manufacturer
        .provision(id.clone())
        .save(&host_dir.join("identity"))?;
    let mut token = [0u8; 32];
    crate::node::host_random(&mut token)
        .map_err(|e| ClusterError::Invalid(format!("random source: {e}")))?;
    write_private(
        &host_dir.join("control.token"),
        hex::encode(token).as_bytes(),
    )?;
    let config = NodeConfig {
        id: id.clone(),
        listen: addr.clone(),
        data_dir: PathBuf::from(name),
        memory_budget_mib: first.memory_budget_mib,
        control: ControlConfig {
            socket: PathBuf::from(format!("{name}/control.sock")),
            token_file: PathBuf::from(format!("{name}/control.token")),
        },
        policy: first.policy.clone(),
        timeouts: first.timeouts.clone(),
        // It joins the store that exists: a member adds it.
        store: StoreConfig::default(),
        peers: existing
            .iter()
            .map(|(_, c)| PeerConfig {
                id: c.id.clone(),
                addr: c.listen.clone(),
            })
            .collect(),
    };
    let path = dir.join(format!("{name}.toml"));
    write_private(&path, config.to_toml().as_bytes())?;
    for (other, _) in &existing {
        let before = fs::read_to_string(other).map_err(io(other))?;
        let entry = format!("\n[[peers]]\nid = \"{id}\"\naddr = \"{addr}\"\n");
        fs::write(other, format!("{before}{entry}")).map_err(io(other))?;
        if let Err(e) = NodeConfig::load(other) {
            fs::write(other, before).map_err(io(other))?;
            return Err(ClusterError::Invalid(format!(
                "{}: could not add the peer: {e}",
                other.display()
            )));
        }
    }
    Ok(NewHost {
        config: path,
        id,
        addr,
    })
}
