//! Making room: admission of whole files for loads, and eviction of least recently used
//! entries nobody has open.

use super::*;

impl DiskCache {
    /// Decides, before a load's sweep, whether `entry` is stored whole or not at all, so a
    /// load never downloads blocks the cache then turns away (a full cache used to serve them
    /// "not stored", and the readers fetched them again). The file is stored when it fits
    /// beside the entries in use by any process: least recently used entries nobody has open
    /// are evicted first if needed, and the data file is allocated in one go (its blocks,
    /// written out of order, then lie contiguously, and writing them takes no more room).
    /// Otherwise, or when the filesystem cannot allocate it (other files share it), the entry
    /// is marked [`CacheEntry::no_room`] and nothing of it is written. Blocking (scans the
    /// cache when it must make room).
    pub fn admit(&self, entry: &CacheEntry) -> Admission {
        let previous_load = self
            .loads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(entry.entry.stem(), SystemTime::now());
        if let Some(no_room) = entry.no_room() {
            return Admission::TooSmall(no_room);
        }
        if let Some(stored) = self.try_allocate(entry) {
            return stored;
        }
        let _pass = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        // Decided, or room made, by another load while this one waited.
        if let Some(no_room) = entry.no_room() {
            return Admission::TooSmall(no_room);
        }
        if let Some(stored) = self.try_allocate(entry) {
            return stored;
        }
        let refused = match self.make_room(entry, previous_load) {
            Ok(Ok(())) => match self.try_allocate(entry) {
                Some(stored) => return stored,
                // Others wrote into the room meanwhile: counted as held by them.
                None => self.no_room_now(entry),
            },
            Ok(Err(no_room)) => no_room,
            Err(e) => {
                self.warn_once("eviction", &e);
                self.no_room_now(entry)
            }
        };
        Admission::TooSmall(*entry.no_room.get_or_init(|| refused))
    }

    /// Why `entry` finds no room, by the usage and limit as they stand (no scan): every
    /// byte in use counted as held by others.
    fn no_room_now(&self, entry: &CacheEntry) -> NoRoom {
        NoRoom {
            needed: entry.entry.id.size,
            limit: self.limit(),
            pinned: self.usage(),
            kept: 0,
        }
    }

    /// Charges and allocates what `entry`'s data file lacks, if it fits under the limit now.
    /// Measured at each try: the file's readers write blocks meanwhile.
    pub(super) fn try_allocate(&self, entry: &CacheEntry) -> Option<Admission> {
        let missing = unallocated(entry);
        (missing == 0 || self.charge(missing)).then(|| self.allocate(entry, missing))
    }

    /// Allocates the `missing` bytes of `entry`'s data file, already charged to the usage.
    pub(super) fn allocate(&self, entry: &CacheEntry, missing: u64) -> Admission {
        use std::os::fd::AsRawFd;
        if missing > 0 {
            let size = libc::off_t::try_from(entry.entry.id.size).unwrap_or(libc::off_t::MAX);
            // SAFETY: a valid fd for the life of `entry`; mode 0 only allocates blocks.
            if unsafe { libc::fallocate(entry.entry.data.as_raw_fd(), 0, 0, size) } != 0 {
                let full = io::Error::last_os_error().raw_os_error() == Some(libc::ENOSPC);
                self.uncharge(missing);
                if full {
                    // The filesystem holds less than the limit says (other files share it).
                    let refused = self.no_room_now(entry);
                    return Admission::TooSmall(*entry.no_room.get_or_init(|| refused));
                }
                // Not supported here: the room is there; its blocks are counted as written.
                return Admission::Stored;
            }
        }
        entry.allocated.store(true, Ordering::Release);
        Admission::Stored
    }

    /// Removes `candidates` that no process has open, least recently used first, until
    /// `enough` holds for the usage left (starting from `usage`); returns that usage.
    pub(super) fn evict_lru(
        &self,
        mut candidates: Vec<ScannedEntry>,
        mut usage: u64,
        enough: impl Fn(u64) -> bool,
    ) -> u64 {
        candidates.sort_by_key(|e| e.last_used);
        for candidate in candidates {
            if enough(usage) {
                break;
            }
            match remove_if_unused(&candidate) {
                Ok(true) => {
                    usage = usage.saturating_sub(candidate.bytes);
                    TierStats::bump(&self.stats.evictions);
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(dir = %candidate.dir.display(), "evict: {e}"),
            }
        }
        usage
    }

    /// Measures the cache and evicts least recently used entries nobody has open until the
    /// rest of `entry`'s data file fits under the limit; `Err` (and nothing evicted) when it
    /// cannot, even with every such entry gone, or when it would evict an entry used since
    /// `entry`'s own previous load (`previous_load`): the models in use then take turns and
    /// each would push out the next one loaded, so this one is streamed and they stay.
    /// Called with `passes` held.
    pub(super) fn make_room(
        &self,
        entry: &CacheEntry,
        previous_load: Option<SystemTime>,
    ) -> io::Result<Result<(), NoRoom>> {
        self.measure_and_evict(|measured| {
            let Measured {
                entries,
                usage,
                limit,
                unwritten,
            } = measured;
            let missing = unallocated(entry);
            let own = entry.entry.stem();
            let mut needed = missing;
            let (mut pinned, mut candidates) = (0, Vec::new());
            for scanned in entries {
                if scanned.name == own {
                    needed += scanned.bytes;
                } else if is_in_use(&scanned) {
                    pinned += scanned.bytes;
                } else {
                    candidates.push(scanned);
                }
            }
            // Writes in flight land too: room for them as well.
            let enough = |usage| usage + missing + unwritten <= limit;
            candidates.sort_by_key(|e| e.last_used);
            let kept = victims_used_since(&candidates, usage, enough, previous_load);
            if pinned + needed + 4096 > limit || kept > 0 {
                let no_room = NoRoom {
                    needed,
                    limit,
                    pinned,
                    kept,
                };
                (usage, Err(no_room))
            } else {
                (self.evict_lru(candidates, usage, enough), Ok(()))
            }
        })
    }

    /// One measured pass, with `passes` held: scans the cache and its limit, lets `evict`
    /// remove entries and return the usage left, then records that usage.
    fn measure_and_evict<R>(&self, evict: impl FnOnce(Measured) -> (u64, R)) -> io::Result<R> {
        let before = self.usage();
        // Bytes reserved but not written yet are not on disk for the scan to find.
        let unwritten = self.unwritten.load(Ordering::Acquire);
        let entries = scan(&self.objects)?;
        // The usage record itself takes a block.
        let usage: u64 = entries.iter().map(|e| e.bytes).sum::<u64>() + 4096;
        let limit = self.compute_limit(usage)?;
        self.written_since_scan.store(0, Ordering::Relaxed);
        let (usage, result) = evict(Measured {
            entries,
            usage,
            limit,
            unwritten,
        });
        // Blocks this process wrote while the pass ran may be missing from the scan, and so
        // may those reserved before it: count them again rather than risk crossing the limit
        // (the next pass corrects the excess).
        let during = self.usage().saturating_sub(before);
        let usage = usage + during + unwritten;
        self.usage.store(usage, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
        write_usage_record(&self.v1, usage);
        Ok(result)
    }

    pub(super) fn trigger_eviction(self: &Arc<Self>) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("modelfs-evict".into())
            .spawn(move || {
                if let Err(e) = this.evict_pass() {
                    this.warn_once("eviction", &e);
                }
                this.evicting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.evicting.store(false, Ordering::Release);
            self.warn_once("eviction thread", &e);
        }
    }

    /// Measures the cache and, if it is near or over its limit, removes least-recently-used entries
    /// that no process has open until usage is below 90% of the limit.
    pub fn evict_pass(&self) -> io::Result<()> {
        let _pass = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        self.measure_and_evict(|m| {
            if m.usage > m.limit || m.usage + (64 << 20) > m.limit {
                let target = m.limit / 10 * 9;
                (
                    self.evict_lru(m.entries, m.usage, |usage| usage <= target),
                    (),
                )
            } else {
                (m.usage, ())
            }
        })
    }
}

/// What a pass measured: the cache's entries and their usage (the usage record included),
/// its limit, and the bytes reserved but not yet written (not on disk for the scan).
struct Measured {
    entries: Vec<ScannedEntry>,
    usage: u64,
    limit: u64,
    unwritten: u64,
}

/// Bytes of the entries an eviction until `enough` would remove (`candidates` least recently
/// used first) that were used after `previous_load`.
fn victims_used_since(
    candidates: &[ScannedEntry],
    mut usage: u64,
    enough: impl Fn(u64) -> bool,
    previous_load: Option<SystemTime>,
) -> u64 {
    let Some(previous_load) = previous_load else {
        return 0;
    };
    let mut used_since = 0;
    for candidate in candidates {
        if enough(usage) {
            break;
        }
        usage = usage.saturating_sub(candidate.bytes);
        if candidate.last_used > previous_load {
            used_since += candidate.bytes;
        }
    }
    used_since
}
