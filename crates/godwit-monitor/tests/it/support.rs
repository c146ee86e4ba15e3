use std::sync::Arc;

use godwit_attest::Policy;
use godwit_enclave::examples::Example;
use godwit_hw::{Manufacturer, SimHardware};
use godwit_monitor::{
    Action, CallOutcome, Event, MemoryBlobStore, Monitor, MonitorConfig, MonitorError,
    sm_measurement,
};
use godwit_proto::{Ledger, StoreReply, TimeoutConfig};
use godwit_wire::{EnclaveId, HostId};

/// One SM with a private ledger answering its store writes at once.
pub struct Host {
    pub sm: Monitor,
    pub blobs: Arc<MemoryBlobStore>,
    pub ledger: Ledger,
    pub events: Vec<Event>,
}

impl Host {
    /// Answers every pending store write; keeps the events.
    pub fn settle(&mut self) {
        while let Some(action) = self.sm.poll_action() {
            match action {
                Action::Store { request, op } => {
                    let outcome = self.ledger.apply(&op);
                    self.sm
                        .handle_store_reply(request, StoreReply::Outcome(outcome));
                }
                Action::Event(e) => self.events.push(e),
                _ => {}
            }
        }
    }

    /// An ecall's result, waiting (by settling the store) for a withheld one.
    pub fn call_raw(
        &mut self,
        id: EnclaveId,
        f: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, MonitorError> {
        match self.sm.call(id, f, arg)? {
            CallOutcome::Done(out) => Ok(out),
            CallOutcome::Pending(call) => {
                self.settle();
                let found = self.events.iter().find_map(|e| match e {
                    Event::CallCompleted {
                        call: c, result, ..
                    } if *c == call => Some(result.clone()),
                    _ => None,
                });
                Ok(found
                    .expect("the withheld result is released")
                    .expect("the store recorded the state"))
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
    let mut h = Host {
        sm,
        blobs,
        ledger: Ledger::new(),
        events: Vec::new(),
    };
    h.settle();
    h
}

pub fn deploy(h: &mut Host, ex: Example) -> EnclaveId {
    let id = h.sm.create(&ex.module(), ex.manifest()).unwrap();
    h.settle();
    id
}

pub fn call(h: &mut Host, id: EnclaveId, f: &str) -> String {
    String::from_utf8(h.call_raw(id, f, b"").unwrap()).unwrap()
}
