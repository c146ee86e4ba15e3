//! Compiled modules the SM keeps, by measurement (module bytes + manifest).
//!
//! Compiling is the largest fixed cost of a migration's receiving side, and of a deploy.
//! A PREPARE whose measurement is here is answered with READY `module_cached`: the sender
//! skips the MODULE messages and the instance to restore into is made before READY. The
//! measurement binds module and manifest, so a hit is the very application the sender
//! describes; the module was validated when it was first loaded.

use std::collections::VecDeque;
use std::sync::Arc;

use godwit_enclave::{EnclaveError, LoadedModule, Runtime};
use godwit_wire::{Manifest, Measurement};

/// Modules kept at most.
const ENTRIES_MAX: usize = 32;
/// Module bytes kept at most (the compiled code is of the same order).
const BYTES_MAX: usize = 64 * 1024 * 1024;

/// Recently used modules, least recently used first.
#[derive(Default)]
pub(crate) struct ModuleCache {
    recent: VecDeque<Arc<LoadedModule>>,
}

impl ModuleCache {
    /// The module measured `app`, if kept; it becomes the most recently used.
    pub(crate) fn get(&mut self, app: &Measurement) -> Option<Arc<LoadedModule>> {
        let at = self.recent.iter().position(|m| m.measurement() == *app)?;
        let module = self.recent.remove(at)?;
        self.recent.push_back(Arc::clone(&module));
        Some(module)
    }

    /// The module for these bytes and manifest: kept, or validated, compiled and kept.
    pub(crate) fn load(
        &mut self,
        runtime: &Runtime,
        module: &[u8],
        manifest: Manifest,
    ) -> Result<Arc<LoadedModule>, EnclaveError> {
        if let Some(hit) = self.get(&manifest.measure(module)) {
            return Ok(hit);
        }
        let loaded = runtime.load(module, manifest)?;
        self.recent.push_back(Arc::clone(&loaded));
        while self.recent.len() > ENTRIES_MAX
            || self
                .recent
                .iter()
                .map(|m| m.module_bytes().len())
                .sum::<usize>()
                > BYTES_MAX
        {
            if self.recent.pop_front().is_none() {
                break;
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_enclave::examples::{BALLAST, COUNTER};

    #[test]
    fn a_module_is_compiled_once_and_found_by_measurement() {
        let runtime = Runtime::new().unwrap();
        let mut cache = ModuleCache::default();
        let first = cache
            .load(&runtime, &COUNTER.module(), COUNTER.manifest())
            .unwrap();
        let again = cache
            .load(&runtime, &COUNTER.module(), COUNTER.manifest())
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(
            &cache.get(&first.measurement()).unwrap(),
            &first
        ));
        let other = cache
            .load(&runtime, &BALLAST.module(), BALLAST.manifest())
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        let mut manifest = COUNTER.manifest();
        manifest.max_instances_per_host += 1;
        let changed = cache.load(&runtime, &COUNTER.module(), manifest).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &changed),
            "another manifest is another application"
        );
    }

    #[test]
    fn the_least_recently_used_module_goes_first() {
        let runtime = Runtime::new().unwrap();
        let mut cache = ModuleCache::default();
        let counter = cache
            .load(&runtime, &COUNTER.module(), COUNTER.manifest())
            .unwrap();
        let mut ballasts = Vec::new();
        for n in 0..ENTRIES_MAX {
            let mut manifest = BALLAST.manifest();
            manifest.max_instances_per_host = 1 + n as u32;
            ballasts.push(cache.load(&runtime, &BALLAST.module(), manifest).unwrap());
            if n == 0 {
                assert!(cache.get(&counter.measurement()).is_some(), "used again");
            }
        }
        assert_eq!(cache.recent.len(), ENTRIES_MAX);
        assert!(
            cache.get(&ballasts[0].measurement()).is_none(),
            "least recent"
        );
        assert!(cache.get(&counter.measurement()).is_some());
        assert!(cache.get(&ballasts[1].measurement()).is_some());
    }
}
