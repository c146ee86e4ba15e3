//! Trusted time: readings of the hardware timer, tagged with the boot epoch they belong to.

use std::fmt;
use std::time::Duration;

/// A value the hardware component makes at every power cycle and holds only in its
/// runtime memory (claims 7 and 14): its boot count (8 bytes, big-endian, so that later
/// boots order after earlier ones) and 8 random bytes (so that no two boots share an
/// epoch, even if the count was lost). Two readings of the trusted timer are comparable
/// only if they carry the same epoch: a reboot voids every earlier reading.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootEpoch(pub(crate) [u8; 16]);

impl BootEpoch {
    pub(crate) fn new(count: u64, random: [u8; 8]) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&count.to_be_bytes());
        b[8..].copy_from_slice(&random);
        Self(b)
    }

    /// The boot count of an epoch's bytes (0 where the component kept no count).
    pub fn count_of(bytes: &[u8; 16]) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&bytes[..8]);
        u64::from_be_bytes(c)
    }

    /// This epoch's boot count.
    pub fn count(&self) -> u64 {
        Self::count_of(&self.0)
    }

    /// The epoch's bytes, for records that must name it (the store's ledger).
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A short form for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for BootEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootEpoch({})", self.short())
    }
}

impl fmt::Display for BootEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A reading of the trusted timer (claims 6 and 13). Only the hardware component creates
/// these; there is no constructor from a number, and no ordering across boot epochs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustedInstant {
    epoch: BootEpoch,
    nanos: u64,
}

/// Why two trusted instants cannot be combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// The instants come from different power cycles; the earlier reading is void.
    #[error("timestamps from different boot epochs ({0:?} vs {1:?}) cannot be compared")]
    EpochMismatch(BootEpoch, BootEpoch),
    /// The instant claimed to be earlier is later.
    #[error("the earlier timestamp is after the later one")]
    Backwards,
}

impl TrustedInstant {
    pub(crate) fn new(epoch: BootEpoch, nanos: u64) -> Self {
        Self { epoch, nanos }
    }

    /// The boot epoch this reading belongs to.
    pub fn epoch(&self) -> BootEpoch {
        self.epoch
    }

    /// Nanoseconds since the start of this boot epoch (for logs; not comparable across
    /// epochs, which is why comparisons go through the methods below).
    pub fn nanos_since_boot(&self) -> u64 {
        self.nanos
    }

    /// Time elapsed from `earlier` to `self`.
    pub fn duration_since(&self, earlier: TrustedInstant) -> Result<Duration, TimeError> {
        self.same_epoch(earlier)?;
        self.nanos
            .checked_sub(earlier.nanos)
            .map(Duration::from_nanos)
            .ok_or(TimeError::Backwards)
    }

    /// Whether `self` is at or after `other`.
    pub fn is_at_or_after(&self, other: TrustedInstant) -> Result<bool, TimeError> {
        self.same_epoch(other)?;
        Ok(self.nanos >= other.nanos)
    }

    /// The instant `d` after this one, in the same epoch (saturating at the far future).
    pub fn saturating_add(&self, d: Duration) -> TrustedInstant {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self::new(self.epoch, self.nanos.saturating_add(add))
    }

    fn same_epoch(&self, other: TrustedInstant) -> Result<(), TimeError> {
        if self.epoch == other.epoch {
            Ok(())
        } else {
            Err(TimeError::EpochMismatch(self.epoch, other.epoch))
        }
    }
}

impl fmt::Debug for TrustedInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}ns", self.epoch.short(), self.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_of_different_epochs_are_not_comparable() {
        let a = TrustedInstant::new(BootEpoch([1; 16]), 100);
        let b = TrustedInstant::new(BootEpoch([2; 16]), 500);
        assert!(matches!(
            b.duration_since(a),
            Err(TimeError::EpochMismatch(..))
        ));
        assert!(matches!(
            b.is_at_or_after(a),
            Err(TimeError::EpochMismatch(..))
        ));
    }

    #[test]
    fn arithmetic_within_an_epoch() {
        let e = BootEpoch([1; 16]);
        let a = TrustedInstant::new(e, 100);
        let b = a.saturating_add(Duration::from_nanos(50));
        assert_eq!(b.duration_since(a), Ok(Duration::from_nanos(50)));
        assert_eq!(a.duration_since(b), Err(TimeError::Backwards));
        assert_eq!(b.is_at_or_after(a), Ok(true));
        assert_eq!(a.is_at_or_after(b), Ok(false));
        let far = a.saturating_add(Duration::MAX);
        assert_eq!(far.nanos_since_boot(), u64::MAX);
    }
}
