use std::collections::HashMap;
use std::sync::Arc;

use godwit_enclave::examples::Example;
use godwit_enclave::{AbiError, Enclave, LoadedModule, Runtime, Services};
use godwit_wire::Manifest;

/// Plain in-memory services: enough to exercise the ABI from the enclave's side.
#[derive(Default, Clone)]
pub struct PlainServices {
    pub slots: HashMap<Vec<u8>, Vec<u8>>,
    pub counters: HashMap<Vec<u8>, u64>,
    pub log: Vec<Vec<u8>>,
}

impl Services for PlainServices {
    fn seal(&mut self, slot: &[u8], data: &[u8]) -> Result<(), AbiError> {
        self.slots.insert(slot.to_vec(), data.to_vec());
        Ok(())
    }
    fn unseal(&mut self, slot: &[u8]) -> Result<Vec<u8>, AbiError> {
        self.slots.get(slot).cloned().ok_or(AbiError::NotFound)
    }
    fn counter_create(&mut self, name: &[u8]) -> Result<(), AbiError> {
        if self.counters.contains_key(name) {
            return Err(AbiError::Exists);
        }
        self.counters.insert(name.to_vec(), 0);
        Ok(())
    }
    fn counter_increment(&mut self, name: &[u8]) -> Result<u64, AbiError> {
        let c = self.counters.get_mut(name).ok_or(AbiError::NotFound)?;
        *c += 1;
        Ok(*c)
    }
    fn counter_read(&mut self, name: &[u8]) -> Result<u64, AbiError> {
        self.counters.get(name).copied().ok_or(AbiError::NotFound)
    }
    fn time_ms(&mut self) -> u64 {
        0
    }
    fn random(&mut self, out: &mut [u8]) {
        out.fill(4);
    }
    fn log(&mut self, line: &[u8]) {
        self.log.push(line.to_vec());
    }
}

pub fn runtime() -> Runtime {
    Runtime::new().unwrap()
}

pub fn load(rt: &Runtime, example: Example) -> Arc<LoadedModule> {
    rt.load(&example.module(), example.manifest()).unwrap()
}

pub fn load_wat(
    rt: &Runtime,
    wat: &str,
    manifest: Manifest,
) -> Result<Arc<LoadedModule>, godwit_enclave::EnclaveError> {
    rt.load(&wat::parse_str(wat).unwrap(), manifest)
}

pub fn start(rt: &Runtime, example: Example) -> Enclave<PlainServices> {
    rt.instantiate(&load(rt, example), PlainServices::default())
        .unwrap()
}

pub fn manifest(fuel: u64) -> Manifest {
    Manifest::from_toml(&format!(
        "name = \"t\"\nversion = \"1\"\nmax_instances_per_host = 1\nmemory_max_mib = 2\nmigratable = true\nfuel_per_call = {fuel}\n"
    ))
    .unwrap()
}

pub fn call(e: &mut Enclave<PlainServices>, f: &str, arg: &str) -> String {
    String::from_utf8(e.call(f, arg.as_bytes()).unwrap()).unwrap()
}
