//! Counters a host keeps from its start: how its migrations ended and what they moved, and
//! what it wrote to disk for its SM's store member. `status --json` carries them under `metrics`, and
//! `godwit metrics` prints them in the Prometheus text format. This is the host's own
//! bookkeeping of what its SM reported; nothing here is trusted.

use std::collections::BTreeMap;
use std::time::Duration;

use godwit_monitor::Event;
use serde_json::{Value, json};

/// The outcome name of a migration that committed (the others are abort codes).
const COMMITTED: &str = "committed";

/// The counters (see the module's documentation).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Outgoing migrations that ended, by outcome: `committed` or the abort code.
    out: BTreeMap<&'static str, u64>,
    /// Incoming migrations that ended, by outcome.
    incoming: BTreeMap<&'static str, u64>,
    /// Data bytes moved by committed outgoing migrations.
    out_bytes: u64,
    /// Committed outgoing migrations' total time and downtime, summed.
    out_total: Duration,
    out_downtime: Duration,
    /// Peers refused (failed attestation or a broken channel).
    peers_refused: u64,
    /// Store records made durable for the SM, their bytes, and the syncs that did it.
    store_records: u64,
    store_record_bytes: u64,
    store_syncs: u64,
    /// Time spent writing and syncing them, summed.
    store_sync_time: Duration,
}

impl Metrics {
    /// Counts what an SM event reports.
    pub(crate) fn observe(&mut self, event: &Event) {
        match event {
            Event::MigrationFinished { outcome, .. } => {
                let name = match outcome {
                    Ok(report) => {
                        self.out_bytes += report.bytes;
                        self.out_total += report.total;
                        self.out_downtime += report.downtime;
                        COMMITTED
                    }
                    Err(reason) => reason.code(),
                };
                *self.out.entry(name).or_default() += 1;
            }
            Event::IncomingFinished { outcome, .. } => {
                let name = outcome.as_ref().map_or_else(|r| r.code(), |_| COMMITTED);
                *self.incoming.entry(name).or_default() += 1;
            }
            Event::PeerRefused { .. } => self.peers_refused += 1,
            _ => {}
        }
    }

    /// Counts one sync of `records` store records of `bytes` bytes, which took `took`.
    pub(crate) fn observe_store_sync(&mut self, records: usize, bytes: usize, took: Duration) {
        self.store_records += records as u64;
        self.store_record_bytes += bytes as u64;
        self.store_syncs += 1;
        self.store_sync_time += took;
    }

    /// The counters as JSON (durations in seconds).
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "migrations_out": self.out,
            "migrations_in": self.incoming,
            "migration_out_bytes": self.out_bytes,
            "migration_out_seconds": self.out_total.as_secs_f64(),
            "migration_out_downtime_seconds": self.out_downtime.as_secs_f64(),
            "peers_refused": self.peers_refused,
            "store_records": self.store_records,
            "store_record_bytes": self.store_record_bytes,
            "store_syncs": self.store_syncs,
            "store_sync_seconds": self.store_sync_time.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_proto::{AbortReason, MigrationId};
    use godwit_wire::EnclaveId;

    #[test]
    fn outcomes_are_counted_by_name() {
        let mut m = Metrics::default();
        let (migration, enclave) = (MigrationId([1; 16]), EnclaveId([2; 16]));
        for reason in [AbortReason::ConnectionLost, AbortReason::ConnectionLost] {
            m.observe(&Event::MigrationFinished {
                migration,
                enclave,
                outcome: Err(reason),
            });
        }
        m.observe(&Event::IncomingFinished {
            migration,
            enclave,
            outcome: Ok(1),
        });
        m.observe_store_sync(3, 300, Duration::from_millis(1500));
        let v = m.to_json();
        assert_eq!(v["migrations_out"]["connection_lost"], 2);
        assert_eq!(v["migrations_in"]["committed"], 1);
        assert_eq!(v["store_records"], 3);
        assert_eq!(v["store_syncs"], 1);
        assert_eq!(v["store_sync_seconds"], 1.5);
        assert_eq!(v["peers_refused"], 0);
    }
}
