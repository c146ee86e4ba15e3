//! The security monitor (SM): manages enclaves on one host — creates them after checking
//! their manifest and the per-application instance limit (claim 15), runs their ecalls,
//! pauses, resumes and destroys them, seals their data with rollback protection, and keeps
//! their monotonic counters.
//!
//! Contract (sans-IO): the SM opens no socket, file or thread and never reads the OS clock.
//! The host hands it requests and bytes; the SM reads time and randomness only from its
//! [`Hardware`], and stores sealed blobs only through the host's [`BlobStore`], treating
//! whatever comes back as hostile.

mod host;
pub mod seal;
mod services;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use godwit_enclave::{Enclave, EnclaveError, Runtime};
use godwit_hw::Hardware;
use godwit_wire::{EnclaveId, Manifest, Measurement};

pub use host::{BlobStore, HostError, MemoryBlobStore};
pub use seal::SealError;
pub use services::{COUNTERS_MAX, InstanceServices, SLOTS_MAX};

/// The version of the SM, part of its measurement.
pub const SM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The measurement of this security monitor, which the hardware certifies at boot.
///
/// A real part measures the SM's code as it loads it; the emulation measures the SM's
/// identity (name and version), so that every build of one release attests alike and a
/// different release is a different SM to the verifier's policy.
pub fn sm_measurement() -> Measurement {
    Measurement::of_parts("godwit security monitor", &[SM_VERSION.as_bytes()])
}

/// Where an enclave is in its life on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EnclaveState {
    /// Accepting ecalls.
    Running,
    /// Paused at the host's request; resumable by the host.
    Paused,
    /// Paused by the SM for a migration; only the migration's outcome moves it on.
    Migrating,
}

impl fmt::Display for EnclaveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Migrating => "migrating",
        })
    }
}

/// What the SM tells the host about an enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveInfo {
    /// The instance.
    pub id: EnclaveId,
    /// The application's name.
    pub app: String,
    /// The application's measurement.
    pub measurement: Measurement,
    /// Its state.
    pub state: EnclaveState,
    /// Its linear memory size.
    pub memory_bytes: usize,
    /// Sealed slots it has written.
    pub sealed_slots: usize,
}

/// Why the SM refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// Loading or running the enclave failed.
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
    /// No enclave with that id runs on this host.
    #[error("no enclave {0} on this host")]
    UnknownEnclave(EnclaveId),
    /// The application's manifest limit on instances per host is reached (claim 15).
    #[error(
        "application {app:?} may run at most {limit} instance(s) per host; {present} already present"
    )]
    InstanceLimit {
        /// The application's name.
        app: String,
        /// The manifest's `max_instances_per_host`.
        limit: u32,
        /// Instances present (running, paused, migrating or reserved).
        present: u32,
    },
    /// The request needs a state the enclave is not in.
    #[error("enclave {id} is {state}, not {expected}")]
    WrongState {
        /// The enclave.
        id: EnclaveId,
        /// Its state.
        state: EnclaveState,
        /// The state the request needs.
        expected: EnclaveState,
    },
    /// A sealed blob the host handed back was refused.
    #[error(transparent)]
    Seal(#[from] SealError),
}

struct Resident {
    enclave: Enclave<InstanceServices>,
    state: EnclaveState,
}

/// The security monitor of one host. See the crate documentation for its contract.
pub struct Monitor {
    hw: Arc<dyn Hardware>,
    runtime: Runtime,
    blobs: Arc<dyn BlobStore>,
    enclaves: BTreeMap<EnclaveId, Resident>,
}

impl Monitor {
    /// Starts an SM on `hw`, storing sealed blobs through the host's `blobs`.
    pub fn new(hw: Arc<dyn Hardware>, blobs: Arc<dyn BlobStore>) -> Result<Self, MonitorError> {
        Ok(Self {
            hw,
            runtime: Runtime::new()?,
            blobs,
            enclaves: BTreeMap::new(),
        })
    }

    /// The hardware component this SM runs on.
    pub fn hardware(&self) -> &Arc<dyn Hardware> {
        &self.hw
    }

    /// Instances of the application `app` present on this host, in any state.
    pub fn instances_of(&self, app: &Measurement) -> u32 {
        let n = self
            .enclaves
            .values()
            .filter(|r| r.enclave.module().measurement() == *app)
            .count();
        // Invariant: each instance needs memory; far fewer than 2^32 fit on a host.
        u32::try_from(n).expect("instance count fits u32")
    }

    /// Creates an enclave at the host's request: loads and measures the module, checks the
    /// manifest's instance limit for this application, instantiates it running.
    pub fn create(&mut self, module: &[u8], manifest: Manifest) -> Result<EnclaveId, MonitorError> {
        let loaded = self.runtime.load(module, manifest)?;
        let (app, limit) = (
            loaded.measurement(),
            loaded.manifest().max_instances_per_host,
        );
        let present = self.instances_of(&app);
        if present >= limit {
            return Err(MonitorError::InstanceLimit {
                app: loaded.manifest().name.clone(),
                limit,
                present,
            });
        }
        let id = self.fresh_id();
        let services =
            InstanceServices::new(id, app, Arc::clone(&self.hw), Arc::clone(&self.blobs));
        let enclave = self.runtime.instantiate(&loaded, services)?;
        tracing::info!(enclave = %id, app = %loaded.manifest().name, measurement = %app.short(), "enclave created");
        self.enclaves.insert(
            id,
            Resident {
                enclave,
                state: EnclaveState::Running,
            },
        );
        self.check_invariants();
        Ok(id)
    }

    fn fresh_id(&self) -> EnclaveId {
        loop {
            let mut id = [0u8; 16];
            self.hw.fill_random(&mut id);
            let id = EnclaveId(id);
            if !self.enclaves.contains_key(&id) {
                return id;
            }
        }
    }

    fn resident(&mut self, id: EnclaveId) -> Result<&mut Resident, MonitorError> {
        self.enclaves
            .get_mut(&id)
            .ok_or(MonitorError::UnknownEnclave(id))
    }

    fn in_state(
        &mut self,
        id: EnclaveId,
        expected: EnclaveState,
    ) -> Result<&mut Resident, MonitorError> {
        let r = self.resident(id)?;
        if r.state != expected {
            return Err(MonitorError::WrongState {
                id,
                state: r.state,
                expected,
            });
        }
        Ok(r)
    }

    /// Runs an ecall on a running enclave.
    pub fn call(
        &mut self,
        id: EnclaveId,
        ecall: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, MonitorError> {
        let r = self.in_state(id, EnclaveState::Running)?;
        Ok(r.enclave.call(ecall, arg)?)
    }

    /// Pauses a running enclave at the host's request.
    pub fn pause(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        self.in_state(id, EnclaveState::Running)?.state = EnclaveState::Paused;
        Ok(())
    }

    /// Resumes an enclave the host paused. An enclave the SM paused for a migration is not
    /// the host's to resume.
    pub fn resume(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        self.in_state(id, EnclaveState::Paused)?.state = EnclaveState::Running;
        Ok(())
    }

    /// Destroys an enclave: wipes its memory and its keys, deletes its sealed blobs.
    /// Refused while a migration holds it.
    pub fn destroy(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        let state = self.resident(id)?.state;
        if state == EnclaveState::Migrating {
            return Err(MonitorError::WrongState {
                id,
                state,
                expected: EnclaveState::Running,
            });
        }
        // Invariant: `resident` just found it.
        let r = self.enclaves.remove(&id).expect("present");
        let services = r.enclave.wipe();
        for slot in services.versions.keys() {
            if let Err(e) = self.blobs.delete(id, slot) {
                tracing::warn!(enclave = %id, slot, error = %e, "host failed to delete a sealed blob");
            }
        }
        tracing::info!(enclave = %id, "enclave destroyed");
        self.check_invariants();
        Ok(())
    }

    /// What the SM tells the host about one enclave.
    pub fn info(&self, id: EnclaveId) -> Result<EnclaveInfo, MonitorError> {
        let r = self
            .enclaves
            .get(&id)
            .ok_or(MonitorError::UnknownEnclave(id))?;
        Ok(Self::describe(id, r))
    }

    /// Every enclave on this host.
    pub fn list(&self) -> Vec<EnclaveInfo> {
        self.enclaves
            .iter()
            .map(|(&id, r)| Self::describe(id, r))
            .collect()
    }

    fn describe(id: EnclaveId, r: &Resident) -> EnclaveInfo {
        let module = r.enclave.module();
        EnclaveInfo {
            id,
            app: module.manifest().name.clone(),
            measurement: module.measurement(),
            state: r.state,
            memory_bytes: r.enclave.memory_bytes(),
            sealed_slots: r.enclave.services().versions.len(),
        }
    }

    /// The last sealed blob from the host that this enclave's SM refused, if any.
    pub fn last_refusal(&self, id: EnclaveId) -> Result<Option<SealError>, MonitorError> {
        let r = self
            .enclaves
            .get(&id)
            .ok_or(MonitorError::UnknownEnclave(id))?;
        Ok(r.enclave.services().last_refusal.clone())
    }

    /// Asserts the SM's invariants; stays on in release builds (cheap: one pass over the
    /// table). Called after every transition.
    pub fn check_invariants(&self) {
        let mut per_app: BTreeMap<Measurement, (u32, u32)> = BTreeMap::new();
        for (id, r) in &self.enclaves {
            let s = r.enclave.services();
            assert_eq!(s.id, *id, "instance services bound to another id");
            assert_eq!(
                s.app,
                r.enclave.module().measurement(),
                "services bound to another app"
            );
            let e = per_app
                .entry(s.app)
                .or_insert((0, r.enclave.module().manifest().max_instances_per_host));
            e.0 += 1;
        }
        for (app, (present, limit)) in per_app {
            assert!(
                present <= limit,
                "instances of {app:?}: {present} > limit {limit}"
            );
        }
    }
}
