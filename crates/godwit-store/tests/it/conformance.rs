use std::sync::Arc;

use godwit_hw::{Manufacturer, SimHardware};
use godwit_store::{LogStore, NodeId, Sealer, StateMachine, TypeConfig};
use godwit_wire::{HostId, Measurement};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SealedBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SealedBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let m = Manufacturer::from_seed([1; 32]);
        let id = m.provision_from_secret(HostId::new("h").unwrap(), [2; 32].into());
        let (hw, _) = SimHardware::new(id, Measurement([3; 32]), 4);
        let (log, sm) =
            godwit_store::open(&dir.path().join("raft.redb"), Sealer::new(Arc::new(hw)))
                .expect("open");
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite on the sealed redb storage.
#[test]
fn openraft_storage_conformance_suite_passes() {
    if let Err(e) = Suite::test_all(SealedBuilder) {
        panic!("conformance suite failed: {e}");
    }
}
