use std::sync::Arc;

use godwit_attest::Policy;
use godwit_enclave::examples::Example;
use godwit_hw::{Manufacturer, SimHardware};
use godwit_monitor::{Action, MemoryBlobStore, Monitor, MonitorConfig, sm_measurement};
use godwit_proto::{Ledger, StoreReply, TimeoutConfig};
use godwit_wire::{EnclaveId, HostId};

/// One SM with a private ledger answering its store writes at once.
pub struct Host {
    pub sm: Monitor,
    pub blobs: Arc<MemoryBlobStore>,
    ledger: Ledger,
}

impl Host {
    /// Answers every pending store write.
    pub fn settle(&mut self) {
        while let Some(action) = self.sm.poll_action() {
            if let Action::Store { request, op } = action {
                let outcome = self.ledger.apply(&op);
                self.sm
                    .handle_store_reply(request, StoreReply::Outcome(outcome));
            }
        }
    }
}

pub fn host(name: &str, secret: u8) -> Host {
    let m = Manufacturer::from_seed([9; 32]);
    let id = m.provision_from_secret(HostId::new(name).unwrap(), [secret; 32].into());
    let (hw, _clock) = SimHardware::new(id, sm_measurement(), u64::from(secret));
    let blobs = Arc::new(MemoryBlobStore::default());
    let config = MonitorConfig {
        policy: Policy {
            roots: vec![m.root()],
            allowed_sm: vec![sm_measurement()],
            allowed_hosts: None,
        },
        timeouts: TimeoutConfig::default(),
        memory_budget_bytes: u64::MAX,
    };
    let sm = Monitor::new(Arc::new(hw), blobs.clone(), config).unwrap();
    Host {
        sm,
        blobs,
        ledger: Ledger::new(),
    }
}

pub fn deploy(h: &mut Host, ex: Example) -> EnclaveId {
    let id = h.sm.create(&ex.module(), ex.manifest()).unwrap();
    h.settle();
    id
}

pub fn call(h: &mut Host, id: EnclaveId, f: &str) -> String {
    String::from_utf8(h.sm.call(id, f, b"").unwrap()).unwrap()
}
