//! Space accounting: bytes charged against the limit before they are written, and the
//! limit itself, measured from the filesystem.

use super::*;

impl DiskCache {
    /// Adds `len` bytes to the usage if they fit under the limit, in one atomic step: writers
    /// reserving at once (a sweep's spans, readers' demand spans) must not all pass the check
    /// against the same old usage.
    pub(super) fn charge(&self, len: u64) -> bool {
        let limit = self.limit();
        self.usage
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + len <= limit).then_some(used + len)
            })
            .is_ok()
    }

    /// Counts `len` bytes about to be written to `entry` against the limit, until the returned
    /// reservation is dropped after the write; `None` (and an eviction pass started) when
    /// they would cross the limit. Nothing is counted for an entry allocated whole, and
    /// nothing is written to one the cache cannot hold (no eviction either: it would only
    /// push out entries that fit).
    pub(super) fn reserve(self: &Arc<Self>, entry: &CacheEntry, len: u64) -> Option<Reservation> {
        if entry.no_room.get().is_some() || entry.mismatched.load(Ordering::Acquire) {
            return None;
        }
        if entry.allocated.load(Ordering::Acquire) {
            return Some(Reservation {
                unwritten: self.unwritten.clone(),
                len: 0,
            });
        }
        // The filesystem allocates whole 4 KiB blocks: a file's short last block costs one.
        let len = len.next_multiple_of(4096);
        if !self.charge(len) {
            TierStats::bump(&self.stats.errors);
            self.trigger_eviction();
            return None;
        }
        self.unwritten.fetch_add(len, Ordering::AcqRel);
        let reservation = Reservation {
            unwritten: self.unwritten.clone(),
            len,
        };
        let written = self.written_since_scan.fetch_add(len, Ordering::Relaxed) + len;
        // Other processes write too: re-measure the truth regularly.
        if written > (self.limit() / 20).max(64 << 20) {
            self.trigger_eviction();
        }
        Some(reservation)
    }

    /// Accounts for the write of `blocks` of `entry` (reserved before): counted and known
    /// intact when it succeeded, warned about when not. Returns whether it succeeded.
    pub(super) fn written(
        &self,
        entry: &CacheEntry,
        blocks: std::ops::Range<u64>,
        result: io::Result<()>,
    ) -> bool {
        match result {
            Ok(()) => {
                self.stats
                    .writes
                    .fetch_add(blocks.end - blocks.start, Ordering::Relaxed);
                for index in blocks {
                    entry.checked.insert(index);
                }
                true
            }
            Err(e) => {
                self.warn_once("write", &e);
                false
            }
        }
    }

    pub(super) fn uncharge(&self, len: u64) {
        let _ = self
            .usage
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(len))
            });
    }

    pub(super) fn compute_limit(&self, usage: u64) -> io::Result<u64> {
        let (total, free) = self.objects.fs_space()?;
        Ok(match self.size {
            CacheSize::Bytes(n) => n,
            CacheSize::PercentOfDisk(p) => (total as f64 * p / 100.0) as u64,
            CacheSize::LeaveFree(p) => {
                let keep_free = (total as f64 * p / 100.0) as u64;
                usage + free.saturating_sub(keep_free)
            }
        })
    }
}

/// Bytes counted against the limit for a write in progress; the count of unwritten bytes
/// drops when the write is over (the bytes stay in the usage: on disk now, or, for a failed
/// write, until the next scan).
#[derive(Debug)]
pub(crate) struct Reservation {
    unwritten: Arc<AtomicU64>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.unwritten.fetch_sub(self.len, Ordering::AcqRel);
    }
}
