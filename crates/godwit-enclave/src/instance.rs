//! Running instances: bounded ecalls, page-granular snapshot and restore.

use std::collections::HashMap;
use std::sync::Arc;

use godwit_wire::GlobalValue;
use wasmtime::{Global, Instance, Linker, Memory, Store, StoreLimitsBuilder, Trap, TypedFunc, Val};

use crate::abi::{self, Services, StoreData};
use crate::module::{ALLOC_EXPORT, LoadedModule, MEMORY_EXPORT, global_export_name};
use crate::{EnclaveError, Runtime};

/// Granularity at which memory is read and written for snapshots and migration.
pub const PAGE_BYTES: usize = 4096;
/// WebAssembly's own page size (memory grows in these).
pub const WASM_PAGE_BYTES: usize = 65536;
const _: () = assert!(WASM_PAGE_BYTES.is_multiple_of(PAGE_BYTES));

type Ecall = TypedFunc<(i32, i32), i64>;

/// A running enclave instance: its store, its memory, its captured globals.
///
/// Snapshots are taken between ecalls (`&self` methods cannot run during a call), so a
/// snapshot is always a consistent state from which the instance could continue.
pub struct Enclave<S: Services> {
    module: Arc<LoadedModule>,
    store: Store<StoreData<S>>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    ecalls: HashMap<String, Ecall>,
    globals: Vec<Global>,
}

/// A complete copy of an instance's execution state: its linear memory and every mutable
/// global (in module order). Sealed data and counters live with the SM, not here.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The whole linear memory.
    pub memory: Vec<u8>,
    /// The mutable globals, in index order.
    pub globals: Vec<GlobalValue>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("memory_bytes", &self.memory.len())
            .field("globals", &self.globals.len())
            .finish()
    }
}

/// An instance being rebuilt from streamed pages; becomes an [`Enclave`] when the globals
/// arrive. Pages never written are zero.
pub struct Restoring<S: Services> {
    enclave: Enclave<S>,
}

impl Runtime {
    /// Creates a fresh instance of a loaded module.
    pub fn instantiate<S: Services>(
        &self,
        module: &Arc<LoadedModule>,
        services: S,
    ) -> Result<Enclave<S>, EnclaveError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(module.manifest.memory_max_bytes()).unwrap_or(usize::MAX))
            .instances(1)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .build();
        let mut store = Store::new(&self.engine, StoreData { services, limits });
        store.limiter(|d| &mut d.limits);
        let mut linker = Linker::new(&self.engine);
        abi::link(&mut linker).map_err(|e| EnclaveError::Instantiate(format!("{e:#}")))?;
        let instance = linker
            .instantiate(&mut store, &module.module)
            .map_err(|e| EnclaveError::Instantiate(format!("{e:#}")))?;
        Enclave::bind(Arc::clone(module), store, instance)
    }

    /// Rebuilds an instance from a snapshot.
    pub fn restore<S: Services>(
        &self,
        module: &Arc<LoadedModule>,
        services: S,
        snapshot: &Snapshot,
    ) -> Result<Enclave<S>, EnclaveError> {
        let mut r = self.begin_restore(module, services, snapshot.memory.len())?;
        r.write(0, &snapshot.memory)?;
        r.finish(&snapshot.globals)
    }

    /// Starts rebuilding an instance whose memory is `memory_bytes` long; pages are then
    /// written with [`Restoring::write`] in any order.
    pub fn begin_restore<S: Services>(
        &self,
        module: &Arc<LoadedModule>,
        services: S,
        memory_bytes: usize,
    ) -> Result<Restoring<S>, EnclaveError> {
        if !memory_bytes.is_multiple_of(WASM_PAGE_BYTES) {
            return Err(EnclaveError::SnapshotMismatch(format!(
                "memory of {memory_bytes} bytes is not a whole number of wasm pages"
            )));
        }
        let max = module.manifest.memory_max_bytes();
        if memory_bytes as u64 > max {
            return Err(EnclaveError::MemoryLimit {
                requested: memory_bytes as u64,
                max,
            });
        }
        let mut enclave = self.instantiate(module, services)?;
        // Data segments initialised the first pages; a restored instance must hold exactly
        // the snapshot's bytes, so clear them before pages arrive.
        let initial = enclave.memory.data_size(&enclave.store);
        if memory_bytes < initial {
            return Err(EnclaveError::SnapshotMismatch(format!(
                "memory of {memory_bytes} bytes is smaller than the module's minimum {initial}"
            )));
        }
        enclave.memory.data_mut(&mut enclave.store).fill(0);
        let grow = ((memory_bytes - initial) / WASM_PAGE_BYTES) as u64;
        if grow > 0 {
            enclave.memory.grow(&mut enclave.store, grow).map_err(|_| {
                EnclaveError::MemoryLimit {
                    requested: memory_bytes as u64,
                    max,
                }
            })?;
        }
        Ok(Restoring { enclave })
    }
}

impl<S: Services> Restoring<S> {
    /// The memory size being rebuilt.
    pub fn memory_bytes(&self) -> usize {
        self.enclave.memory_bytes()
    }

    /// Writes `bytes` at `offset` of the instance's memory.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), EnclaveError> {
        let mem = self.enclave.memory.data_mut(&mut self.enclave.store);
        let end = offset
            .checked_add(bytes.len())
            .filter(|&end| end <= mem.len())
            .ok_or_else(|| {
                EnclaveError::SnapshotMismatch(format!(
                    "write of {} bytes at {offset} exceeds the memory of {} bytes",
                    bytes.len(),
                    mem.len()
                ))
            })?;
        mem[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    /// The memory being rebuilt, for callers that decrypt straight into it.
    pub fn memory_mut(&mut self) -> &mut [u8] {
        self.enclave.memory.data_mut(&mut self.enclave.store)
    }

    /// Sets the globals and returns the rebuilt instance.
    pub fn finish(mut self, globals: &[GlobalValue]) -> Result<Enclave<S>, EnclaveError> {
        self.enclave.set_globals(globals)?;
        Ok(self.enclave)
    }
}

impl<S: Services> Enclave<S> {
    fn bind(
        module: Arc<LoadedModule>,
        mut store: Store<StoreData<S>>,
        instance: Instance,
    ) -> Result<Self, EnclaveError> {
        let missing = |what: &str| EnclaveError::MissingExport(what.to_owned());
        let memory = instance
            .get_memory(&mut store, MEMORY_EXPORT)
            .ok_or_else(|| missing(MEMORY_EXPORT))?;
        let alloc = instance
            .get_typed_func(&mut store, ALLOC_EXPORT)
            .map_err(|_| missing(ALLOC_EXPORT))?;
        let mut ecalls = HashMap::new();
        for name in &module.ecalls {
            let f = instance
                .get_typed_func(&mut store, name)
                .map_err(|_| missing(name))?;
            ecalls.insert(name.clone(), f);
        }
        let mut globals = Vec::with_capacity(module.mutable_globals.len());
        for &(index, _) in &module.mutable_globals {
            let name = global_export_name(index);
            globals.push(
                instance
                    .get_global(&mut store, &name)
                    .ok_or_else(|| missing(&name))?,
            );
        }
        Ok(Self {
            module,
            store,
            memory,
            alloc,
            ecalls,
            globals,
        })
    }

    /// The application this instance runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    /// The SM's services for this instance.
    pub fn services(&self) -> &S {
        &self.store.data().services
    }

    /// The SM's services for this instance, mutably.
    pub fn services_mut(&mut self) -> &mut S {
        &mut self.store.data_mut().services
    }

    /// Runs one ecall: the argument is copied into a buffer the enclave allocates, the
    /// result copied out. Bounded by the manifest's fuel and size limits.
    pub fn call(&mut self, ecall: &str, arg: &[u8]) -> Result<Vec<u8>, EnclaveError> {
        let manifest = &self.module.manifest;
        let (max_arg, max_result) = (
            manifest.max_arg_bytes as usize,
            manifest.max_result_bytes as usize,
        );
        let fuel = manifest.fuel_per_call;
        let f = self
            .ecalls
            .get(ecall)
            .ok_or_else(|| EnclaveError::NoSuchEcall(ecall.to_owned()))?
            .clone();
        if arg.len() > max_arg {
            return Err(EnclaveError::ArgumentTooLarge {
                len: arg.len(),
                max: max_arg,
            });
        }
        self.store
            .set_fuel(fuel)
            .map_err(|e| EnclaveError::Trap(format!("{e:#}")))?;
        // Invariant: `max_arg_bytes` is at most 16 MiB, so the length fits an i32.
        let len = i32::try_from(arg.len()).expect("argument length bounded by the manifest");
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(|e| trap(e, fuel))?;
        let mem = self.memory.data_mut(&mut self.store);
        let r = guest_range(ptr as u32, arg.len(), mem.len())?;
        mem[r].copy_from_slice(arg);
        let ret = f
            .call(&mut self.store, (ptr, len))
            .map_err(|e| trap(e, fuel))?;
        if ret < 0 {
            return Err(EnclaveError::Failed { code: ret });
        }
        let (out_ptr, out_len) = ((ret >> 32) as u32, (ret & 0xffff_ffff) as usize);
        if out_len > max_result {
            return Err(EnclaveError::ResultTooLarge {
                len: out_len,
                max: max_result,
            });
        }
        let mem = self.memory.data(&self.store);
        Ok(mem[guest_range(out_ptr, out_len, mem.len())?].to_vec())
    }

    /// The size of the linear memory in bytes (a multiple of [`PAGE_BYTES`]).
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// The whole linear memory; `chunks(PAGE_BYTES)` gives its pages.
    pub fn memory(&self) -> &[u8] {
        self.memory.data(&self.store)
    }

    /// One 4 KiB page, or `None` past the end of memory.
    pub fn page(&self, index: usize) -> Option<&[u8]> {
        let start = index.checked_mul(PAGE_BYTES)?;
        self.memory().get(start..start + PAGE_BYTES)
    }

    /// The current values of every mutable global, in module order.
    pub fn globals(&mut self) -> Vec<GlobalValue> {
        let store = &mut self.store;
        self.globals
            .iter()
            .map(|g| match g.get(&mut *store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                // Invariant: the loader refuses mutable globals of reference types.
                other => unreachable!("loader admitted a mutable global of type {other:?}"),
            })
            .collect()
    }

    /// A full copy of the execution state.
    pub fn snapshot(&mut self) -> Snapshot {
        let globals = self.globals();
        Snapshot {
            memory: self.memory().to_vec(),
            globals,
        }
    }

    fn set_globals(&mut self, values: &[GlobalValue]) -> Result<(), EnclaveError> {
        if values.len() != self.globals.len() {
            return Err(EnclaveError::SnapshotMismatch(format!(
                "{} globals given, the module has {}",
                values.len(),
                self.globals.len()
            )));
        }
        for (g, v) in self.globals.iter().zip(values) {
            let val = match *v {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            g.set(&mut self.store, val)
                .map_err(|e| EnclaveError::SnapshotMismatch(format!("global: {e:#}")))?;
        }
        Ok(())
    }

    /// Zeroes the instance's memory and drops it, returning the services so the SM can
    /// wipe what it holds for the instance.
    pub fn wipe(mut self) -> S {
        self.memory.data_mut(&mut self.store).fill(0);
        self.store.into_data().services
    }
}

fn guest_range(
    ptr: u32,
    len: usize,
    memory_len: usize,
) -> Result<std::ops::Range<usize>, EnclaveError> {
    let start = ptr as usize;
    start
        .checked_add(len)
        .filter(|&end| end <= memory_len)
        .map(|end| start..end)
        .ok_or(EnclaveError::BadPointer)
}

fn trap(e: wasmtime::Error, fuel: u64) -> EnclaveError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => EnclaveError::OutOfFuel { fuel },
        Some(t) => EnclaveError::Trap(t.to_string()),
        None => EnclaveError::Trap(format!("{e:#}")),
    }
}
