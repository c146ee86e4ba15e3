use std::sync::Arc;

use godwit_enclave::examples::Example;
use godwit_hw::{Manufacturer, SimClock, SimHardware};
use godwit_monitor::{MemoryBlobStore, Monitor, sm_measurement};
use godwit_wire::{EnclaveId, HostId};

pub struct Host {
    pub sm: Monitor,
    pub blobs: Arc<MemoryBlobStore>,
    #[allow(dead_code)]
    pub clock: SimClock,
}

pub fn host(name: &str, secret: u8) -> Host {
    let m = Manufacturer::from_seed([9; 32]);
    let id = m.provision_from_secret(HostId::new(name).unwrap(), [secret; 32].into());
    let (hw, clock) = SimHardware::new(id, sm_measurement(), u64::from(secret));
    let blobs = Arc::new(MemoryBlobStore::default());
    let sm = Monitor::new(Arc::new(hw), blobs.clone()).unwrap();
    Host { sm, blobs, clock }
}

pub fn deploy(h: &mut Host, ex: Example) -> EnclaveId {
    h.sm.create(&ex.module(), ex.manifest()).unwrap()
}

pub fn call(h: &mut Host, id: EnclaveId, f: &str) -> String {
    String::from_utf8(h.sm.call(id, f, b"").unwrap()).unwrap()
}
