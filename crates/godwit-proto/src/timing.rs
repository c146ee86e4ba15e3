//! The timeout model (claims 2, 3, 6, 7): every wait has a deadline on the trusted timer,
//! computed as network delay + the time the peer needs to prepare its answer + a margin.
//!
//! Deadlines are [`TrustedInstant`]s and carry the boot epoch: after a reboot the old
//! deadline cannot be compared with the new clock, and counts as expired.

use std::fmt;
use std::time::Duration;

use godwit_hw::TrustedInstant;
use serde::{Deserialize, Serialize};

/// The configurable terms of the timeout formula. Milliseconds, except throughput.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// The whole attestation handshake.
    pub handshake_ms: u64,
    /// Network delay assumed until one is measured (on the trusted timer, during
    /// PREPARE/READY).
    pub network_delay_ms: u64,
    /// The peer's fixed cost to prepare an answer (checks, loading, its store write).
    pub prepare_fixed_ms: u64,
    /// Throughput assumed for moving and restoring enclave state, MiB/s.
    pub throughput_mib_s: u64,
    /// Tolerance added to every deadline.
    pub margin_ms: u64,
    /// One request to the store.
    pub store_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            handshake_ms: 5_000,
            network_delay_ms: 20,
            prepare_fixed_ms: 250,
            throughput_mib_s: 100,
            margin_ms: 2_000,
            store_ms: 3_000,
        }
    }
}

/// The three terms of a deadline, kept so that logs and abort reasons can show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineTerms {
    /// Measured (or assumed) network delay, µs.
    pub network_delay_us: u64,
    /// The peer's preparation time: fixed cost + bytes / throughput, µs.
    pub peer_prepare_us: u64,
    /// Tolerance, µs.
    pub margin_us: u64,
}

impl DeadlineTerms {
    /// The sum of the terms.
    pub fn total(&self) -> Duration {
        Duration::from_micros(
            self.network_delay_us
                .saturating_add(self.peer_prepare_us)
                .saturating_add(self.margin_us),
        )
    }
}

impl fmt::Display for DeadlineTerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "{:.1} ms = network {:.1} ms + peer prepare {:.1} ms + margin {:.1} ms",
            ms(self.network_delay_us + self.peer_prepare_us + self.margin_us),
            ms(self.network_delay_us),
            ms(self.peer_prepare_us),
            ms(self.margin_us)
        )
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl TimeoutConfig {
    /// Terms for a wait on a peer that must handle `bytes` before answering, over a
    /// network whose delay is `network`.
    pub fn terms(&self, network: Duration, bytes: u64) -> DeadlineTerms {
        let throughput = self.throughput_mib_s.max(1) as f64 * 1024.0 * 1024.0;
        let transfer = Duration::from_secs_f64(bytes as f64 / throughput);
        DeadlineTerms {
            network_delay_us: us(network),
            peer_prepare_us: us(Duration::from_millis(self.prepare_fixed_ms) + transfer),
            margin_us: us(Duration::from_millis(self.margin_ms)),
        }
    }

    /// Terms for the wait after the last data message: the receiver finishes the restore,
    /// re-seals `sealed_bytes` and writes COMMIT to the store.
    pub fn decision_terms(&self, network: Duration, sealed_bytes: u64) -> DeadlineTerms {
        let mut t = self.terms(network, sealed_bytes);
        t.peer_prepare_us = t
            .peer_prepare_us
            .saturating_add(self.store_ms.saturating_mul(1000));
        t
    }

    /// The network delay to assume before one is measured.
    pub fn assumed_network_delay(&self) -> Duration {
        Duration::from_millis(self.network_delay_ms)
    }

    /// Terms for a store request: its own timeout, no peer preparation.
    pub fn store_terms(&self) -> DeadlineTerms {
        DeadlineTerms {
            network_delay_us: 0,
            peer_prepare_us: us(Duration::from_millis(self.store_ms)),
            margin_us: 0,
        }
    }

    /// Terms for the whole handshake.
    pub fn handshake_terms(&self) -> DeadlineTerms {
        DeadlineTerms {
            network_delay_us: 0,
            peer_prepare_us: us(Duration::from_millis(self.handshake_ms)),
            margin_us: 0,
        }
    }
}

/// A point on the trusted timer by which a wait must end, with the terms it was made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: TrustedInstant,
    terms: DeadlineTerms,
}

impl Deadline {
    /// The deadline `terms.total()` after `now`.
    pub fn after(now: TrustedInstant, terms: DeadlineTerms) -> Self {
        Self {
            at: now.saturating_add(terms.total()),
            terms,
        }
    }

    /// When it falls.
    pub fn at(&self) -> TrustedInstant {
        self.at
    }

    /// What it was made of.
    pub fn terms(&self) -> DeadlineTerms {
        self.terms
    }

    /// Whether it has passed at `now`. A reading from another boot epoch voids the deadline,
    /// which then counts as passed (claim 7).
    pub fn expired(&self, now: TrustedInstant) -> bool {
        now.is_at_or_after(self.at).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_hw::{Hardware, Manufacturer, SimHardware};
    use godwit_wire::{HostId, Measurement};

    #[test]
    fn the_formula_adds_network_preparation_and_margin() {
        let c = TimeoutConfig {
            prepare_fixed_ms: 10,
            throughput_mib_s: 100,
            margin_ms: 50,
            ..TimeoutConfig::default()
        };
        let t = c.terms(Duration::from_millis(3), 200 * 1024 * 1024);
        assert_eq!(t.network_delay_us, 3_000);
        assert_eq!(t.peer_prepare_us, 2_010_000);
        assert_eq!(t.margin_us, 50_000);
        assert_eq!(t.total(), Duration::from_micros(2_063_000));
        assert_eq!(
            t.to_string(),
            "2063.0 ms = network 3.0 ms + peer prepare 2010.0 ms + margin 50.0 ms"
        );
    }

    #[test]
    fn deadlines_expire_on_the_trusted_clock_and_a_reboot_voids_them() {
        let m = Manufacturer::from_seed([1; 32]);
        let id = m.provision_from_secret(HostId::new("h").unwrap(), [2; 32].into());
        let (hw, clock) = SimHardware::new(id.clone(), Measurement([0; 32]), 1);
        let d = Deadline::after(hw.now(), TimeoutConfig::default().terms(Duration::ZERO, 0));
        clock.advance(d.terms().total() - Duration::from_micros(1));
        assert!(!d.expired(hw.now()));
        clock.advance(Duration::from_micros(1));
        assert!(d.expired(hw.now()));
        let (rebooted, _) = SimHardware::new(id, Measurement([0; 32]), 2);
        let d = Deadline::after(
            hw.now(),
            TimeoutConfig::default().terms(Duration::from_secs(100), 0),
        );
        assert!(
            d.expired(rebooted.now()),
            "a deadline from before a reboot is void"
        );
    }
}
