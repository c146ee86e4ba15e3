use std::sync::Arc;

use godwit_attest::Policy;
use godwit_enclave::examples::Example;
use godwit_hw::{Manufacturer, SimClock, SimHardware};
use godwit_monitor::{
    Action, CallOutcome, Event, MemberConfig, MemoryBlobStore, Monitor, MonitorConfig,
    MonitorError, sm_measurement,
};
use godwit_proto::TimeoutConfig;
use godwit_wire::{EnclaveId, HostId};

/// One SM that is the whole store by itself (a single member, records durable at once),
/// on a virtual clock.
pub struct Host {
    pub sm: Monitor,
    pub blobs: Arc<MemoryBlobStore>,
    pub clock: SimClock,
    pub events: Vec<Event>,
}

impl Host {
    /// Carries out what the SM asks (records durable at once), keeping the events, and
    /// lets virtual time pass until the SM asks for nothing more and holds its lease.
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(action) = self.sm.poll_action() {
                moved = true;
                match action {
                    Action::Persist(w) => self.sm.persisted(w.number),
                    Action::Event(e) => self.events.push(e),
                    _ => {}
                }
            }
            if !moved && self.sm.store_status().lease {
                return;
            }
            self.clock.advance(std::time::Duration::from_millis(10));
            self.sm.handle_timeout();
        }
        panic!("the single-member store did not settle within 10 virtual seconds");
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
    let (hw, clock) = SimHardware::new(id, sm_measurement(), u64::from(secret));
    let blobs = Arc::new(MemoryBlobStore::default());
    let config = MonitorConfig {
        policy: Policy {
            roots: vec![m.root()],
            allowed_sm: vec![sm_measurement()],
            allowed_hosts: None,
        },
        timeouts: TimeoutConfig::default(),
        memory_budget_bytes: u64::MAX,
        store: MemberConfig {
            founders: vec![HostId::new(name).unwrap()],
            ..MemberConfig::default()
        },
    };
    let (sm, _) = Monitor::new(Arc::new(hw), blobs.clone(), config, &[]).unwrap();
    let mut h = Host {
        sm,
        blobs,
        clock,
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
