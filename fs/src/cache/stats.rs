//! Counters per cache tier (hits, misses, writes, evictions, failures), readable at any time
//! and logged at unmount; the metrics endpoint exports the same counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one tier.
#[derive(Debug, Default)]
pub struct TierStats {
    /// Blocks served from this tier.
    pub hits: AtomicU64,
    /// Blocks asked for and not found.
    pub misses: AtomicU64,
    /// Blocks stored.
    pub writes: AtomicU64,
    /// Entries (disk) or blocks (memory) evicted.
    pub evictions: AtomicU64,
    /// Blocks found damaged (bad checksum) and dropped.
    pub corrupt: AtomicU64,
    /// Failed or skipped disk operations (full, read-only, I/O error): served from S3 instead.
    pub errors: AtomicU64,
    /// Complete entries whose content did not match S3's full-object checksum: not sealed,
    /// dropped and fetched again (disk).
    pub checksum_mismatch: AtomicU64,
}

/// A point-in-time copy of [`TierStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierSnapshot {
    /// See [`TierStats::hits`].
    pub hits: u64,
    /// See [`TierStats::misses`].
    pub misses: u64,
    /// See [`TierStats::writes`].
    pub writes: u64,
    /// See [`TierStats::evictions`].
    pub evictions: u64,
    /// See [`TierStats::corrupt`].
    pub corrupt: u64,
    /// See [`TierStats::errors`].
    pub errors: u64,
    /// See [`TierStats::checksum_mismatch`].
    pub checksum_mismatch: u64,
}

impl TierStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> TierSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            writes: get(&self.writes),
            evictions: get(&self.evictions),
            corrupt: get(&self.corrupt),
            errors: get(&self.errors),
            checksum_mismatch: get(&self.checksum_mismatch),
        }
    }
}

impl std::fmt::Display for TierSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hits={} misses={} writes={} evictions={} corrupt={} errors={} checksum_mismatch={}",
            self.hits,
            self.misses,
            self.writes,
            self.evictions,
            self.corrupt,
            self.errors,
            self.checksum_mismatch
        )
    }
}
