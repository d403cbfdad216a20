//! The persistent block cache on local disk (on EKS: the Karpenter RAID0 instance store).
//!
//! Layout under `--cache-dir`: `v1/objects/<2 hex>/<40 hex>/{data,map}`, one directory per
//! object version from one origin (see [`entry`]). Directories 0700, files 0600.
//!
//! - **Scoped by origin**: an entry's name and header include the normalized endpoint and
//!   addressing style as well as bucket, key, ETag, size and block size, so bytes served by
//!   one endpoint are never read back for a mount of another. (Entries written before the
//!   origin was part of the identity are never looked up again; they age out by eviction, or
//!   `modelfs cache clear` removes them.)
//! - **Safe as root**: the cache directory must be owned by this process's user and writable
//!   by no one else (it is refused otherwise, never chmodded; a directory modelfs creates is
//!   created 0700). Everything inside is reached through directory descriptors with
//!   `O_NOFOLLOW` ([`safe_dir`]): a link planted in the cache is never followed, written
//!   through or deleted through; new files are created with `O_EXCL`.
//! - **Persistent and shared**: nothing is wiped at start or exit; any number of modelfs
//!   processes use one directory at once. Entries appear atomically (rename of a complete
//!   directory); block downloads are coordinated by byte-range locks ([`lock`]), so two
//!   processes reading the same object fetch each block once between them.
//! - **Crash-safe**: CRC32C per block, checked when a process first reads the block from disk;
//!   blocks it wrote or checked itself (and whole sealed entries) are read without checking
//!   again, straight into the reply's buffer, however many blocks a read spans.
//! - **What was uploaded**: when the open's HeadObject gave S3's full-object checksum
//!   ([`FullObjectChecksum`]), a complete entry is sealed for passthrough only once its content
//!   matches it (our CRCs only prove the bytes are what we received); an entry that does not
//!   is dropped whole, logged as an error and counted (`checksum_mismatch`).
//! - **Bounded**: usage is kept under the limit ([`CacheSize`]): a write that would cross it
//!   is skipped and starts an eviction pass that removes least-recently-opened entries not in
//!   use by any process (a shared `flock` marks entries in use) until usage is below 90% of
//!   the limit (data and map files both count). Start-up reads no data and scans nothing:
//!   it starts from the usage the last scan recorded (`v1/usage`) and re-measures in the
//!   background.
//! - **Whole files or nothing for loads**: a file being loaded is admitted
//!   ([`DiskCache::admit`]) before its sweep starts: its data file is allocated whole, after
//!   evicting least recently used entries nobody has open if needed; a file that cannot fit
//!   beside the entries in use is not written at all (the read path streams it), so a load
//!   never downloads bytes the cache then declines to store. Nor is a file whose room would
//!   come from evicting an entry used since its own previous load: models that take turns
//!   and do not fit together would each push out the next one loaded (every load a
//!   download, plus the disk writes); instead the ones stored stay and this one streams.
//! - **Degrades, never fails**: every disk error (full, read-only, I/O) is counted, warned
//!   about once, and the read is served from S3 instead.

mod block_set;
mod drop_behind;
pub mod entry;
mod eviction;
mod folded;
mod load_history;
pub mod lock;
pub mod safe_dir;
mod space;
mod span_writer;
mod trusted_path;
mod verification;
pub mod verify_scheduler;

pub(crate) use space::Reservation;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use std::os::unix::fs::MetadataExt;

pub use block_set::BlockSet;
pub use entry::{Entry, EntryId, ReadBlockError};
pub use safe_dir::Dir;
pub use span_writer::SpanWriter;

use super::TierStats;
use crate::store::FullObjectChecksum;

/// How large the disk cache may grow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CacheSize {
    /// At most this many bytes.
    Bytes(u64),
    /// At most this percentage of the cache filesystem's size.
    PercentOfDisk(f64),
    /// Grow while the filesystem keeps this percentage free (the default: 10).
    LeaveFree(f64),
}

impl std::str::FromStr for CacheSize {
    type Err = String;

    /// `50GiB`, `80%` (of the disk), or `free:10%` (leave 10% of the disk free).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let percent = |p: &str| -> Result<f64, String> {
            let v: f64 = p
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("invalid percentage {p:?}"))?;
            if (0.0..=100.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("percentage {p:?} is not between 0 and 100"))
            }
        };
        if let Some(p) = s.strip_prefix("free:") {
            return Ok(CacheSize::LeaveFree(percent(p)?));
        }
        if s.ends_with('%') {
            return Ok(CacheSize::PercentOfDisk(percent(s)?));
        }
        crate::units::parse_size(s).map(CacheSize::Bytes)
    }
}

/// Where and how big the disk cache is.
#[derive(Clone, Debug)]
pub struct DiskCacheConfig {
    /// The cache directory (created 0700 if missing; refused if another user owns it or
    /// others may write in it).
    pub dir: PathBuf,
    /// The size limit.
    pub size: CacheSize,
}

/// What the disk cache does with a file being loaded ([`DiskCache::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Stored whole: its data file is allocated (room made first if needed), so none of its
    /// blocks is turned away.
    Stored,
    /// Not stored at all: it cannot fit beside the entries in use.
    TooSmall(NoRoom),
}

/// Why a file being loaded is not stored: the sizes an operator needs to size the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes the file takes on disk once stored.
    pub needed: u64,
    /// The cache's limit in bytes.
    pub limit: u64,
    /// Bytes of other entries in use (open in any process), which no eviction may remove.
    pub pinned: u64,
    /// Bytes of entries that making room would have evicted but that were used since this
    /// file's previous load (kept: the models in use take turns and do not fit together).
    pub kept: u64,
}

/// One cache entry in use by this process. While it exists the process holds a shared lock
/// on it, so no eviction removes it.
#[derive(Debug)]
pub struct CacheEntry {
    /// The entry's files.
    pub entry: Entry,
    verified: AtomicBool,
    verifying: AtomicBool,
    /// Blocks this process wrote, or read and found intact: their bytes on disk (in the page
    /// cache) are known good, so reading them again needs no checksum.
    checked: BlockSet,
    /// Set when a load found that the cache cannot hold the file: from then on its blocks
    /// are not written (they would only push out other entries, then be turned away).
    no_room: std::sync::OnceLock<NoRoom>,
    /// The data file is allocated whole ([`DiskCache::admit`]): writing its blocks takes no
    /// more room.
    allocated: AtomicBool,
    /// S3's full-object checksum of the version, once an open that pinned it with a HEAD
    /// brought it: checked before the entry is sealed. Not part of the entry's identity (the
    /// ETag is), so opens that pinned the version from a listing share the entry.
    expected: std::sync::OnceLock<FullObjectChecksum>,
    /// Each block's part of the expected checksum, from the bytes this process wrote.
    folded: folded::FoldedChecksums,
    /// Set when the content failed S3's full-object checksum: this process stores none of
    /// its blocks again (what it fetches now would be stored with CRCs of its own and served
    /// to the next process as if intact); the next process starts over.
    mismatched: AtomicBool,
}

impl CacheEntry {
    /// Whether block `index` is known intact to this process (so it may be read unchecked).
    pub fn is_checked(&self, index: u64) -> bool {
        self.is_verified() || self.checked.contains(index)
    }

    /// Whether every block of `blocks` is known intact to this process.
    pub fn all_checked(&self, blocks: std::ops::RangeInclusive<u64>) -> bool {
        self.is_verified() || self.checked.contains_all(blocks)
    }

    /// Claims the right to run a verification; false if one is already running.
    pub fn start_verification(&self) -> bool {
        !self.verifying.swap(true, Ordering::AcqRel)
    }

    /// Ends a verification started with [`CacheEntry::start_verification`].
    pub fn end_verification(&self) {
        self.verifying.store(false, Ordering::Release);
    }

    /// Whether every block's checksum has been verified (by any process) and the data file is
    /// unchanged since.
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    /// Why the file is not stored, once a load found that the cache cannot hold it; its
    /// blocks are then never written.
    pub fn no_room(&self) -> Option<NoRoom> {
        self.no_room.get().copied()
    }

    /// The full-object checksum the entry is checked against before it is sealed, if known.
    pub fn expected_checksum(&self) -> Option<FullObjectChecksum> {
        self.expected.get().copied()
    }

    /// The checksum whose per-block parts writers compute as they store blocks: the expected
    /// one, unless it is CRC32C, which sealing combines from the block records.
    fn to_fold(&self) -> Option<FullObjectChecksum> {
        self.expected_checksum()
            .filter(|c| !matches!(c, FullObjectChecksum::Crc32c(_)))
    }

    /// Learns the version's full-object checksum from a later open. An entry verified without
    /// it counts as unverified again, unless its seal records that very checksum, so the next
    /// open checks it before passthrough.
    fn learn_checksum(&self, checksum: FullObjectChecksum) {
        if self.expected.set(checksum).is_ok()
            && self.is_verified()
            && !self.entry.is_sealed_for(Some(checksum))
        {
            self.verified.store(false, Ordering::Release);
        }
    }
}

/// The disk tier. Cheap to share (`Arc`); all methods are blocking file I/O and are called
/// from blocking threads.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    /// `v1`, holding the usage record.
    v1: Dir,
    /// `v1/objects`, holding the entries.
    objects: Dir,
    size: CacheSize,
    usage: AtomicU64,
    limit: AtomicU64,
    written_since_scan: AtomicU64,
    /// Bytes reserved for writes that have not finished (see [`Reservation`]).
    unwritten: Arc<AtomicU64>,
    evicting: AtomicBool,
    /// Held by each measuring pass (eviction, admission), so two never count the same
    /// entries away at once.
    passes: Mutex<()>,
    open: Mutex<HashMap<String, Weak<CacheEntry>>>,
    /// What this process learned of versions, by entry stem, kept past their entries (an
    /// entry goes when its last open closes, and the next open may not bring the checksum).
    learned: moka::sync::Cache<String, Learned>,
    /// When each file was last loaded ([`DiskCache::admit`]).
    loads: Mutex<load_history::LoadHistory>,
    warned: Mutex<std::collections::HashSet<&'static str>>,
    /// Lets go of the pages of bytes served to readers, once they are further on.
    drop_behind: drop_behind::DropBehind,
    /// Files at least this large have their served pages let go (see [`DiskCache::served`]).
    drop_behind_from: u64,
    /// Counters of this tier.
    pub stats: Arc<TierStats>,
}

/// The size from which a file's served pages are let go: a quarter of this process's memory.
fn drop_behind_from() -> u64 {
    let limit = crate::memory::limit();
    tracing::debug!(?limit, "cache: memory limit");
    limit.map_or(u64::MAX, |limit| limit / 4)
}

/// One entry as found by a scan.
#[derive(Clone, Debug)]
pub struct ScannedEntry {
    /// The entry directory (for messages).
    pub dir: PathBuf,
    /// The shard directory holding it.
    pub shard: Arc<Dir>,
    /// Its name in the shard.
    pub name: String,
    /// Bytes allocated on disk (data + map).
    pub bytes: u64,
    /// Last time a process opened it.
    pub last_used: SystemTime,
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `config.dir`. Never scans data; usage is
    /// measured in the background.
    pub fn open(config: &DiskCacheConfig) -> io::Result<Arc<DiskCache>> {
        let root = Dir::open_cache_root(&config.dir)?;
        let v1 = private_subdir(&root, "v1", true)?;
        let objects = private_subdir(&v1, "objects", true)?;
        let cache = Arc::new(DiskCache {
            root: config.dir.clone(),
            v1,
            objects,
            size: config.size,
            usage: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            written_since_scan: AtomicU64::new(0),
            unwritten: Arc::default(),
            evicting: AtomicBool::new(false),
            passes: Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            learned: moka::sync::Cache::new(MAX_LEARNED),
            loads: Mutex::default(),
            warned: Mutex::new(Default::default()),
            drop_behind: Default::default(),
            drop_behind_from: drop_behind_from(),
            stats: Arc::new(TierStats::default()),
        });
        // Start from the usage the last scan recorded, and re-measure in the background; with
        // no record (a new cache directory) measure now: there is little to measure.
        match read_usage_record(&cache.v1) {
            Some(recorded) => {
                cache.usage.store(recorded, Ordering::Relaxed);
                let limit = cache.compute_limit(recorded)?;
                cache.limit.store(limit, Ordering::Relaxed);
                cache.trigger_eviction();
            }
            None => cache.evict_pass()?,
        }
        Ok(cache)
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes in the cache as of the last scan plus writes since.
    pub fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    /// The current effective limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    fn warn_once(&self, what: &'static str, err: &dyn std::fmt::Display) {
        TierStats::bump(&self.stats.errors);
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(what);
        if first {
            tracing::warn!(
                cache = %self.root.display(),
                "disk cache {what} failed ({err}); serving from S3 instead (further failures of this kind are counted, not logged)"
            );
        }
    }

    /// The entry for `id`, opened or created, locked as in use; `None` (after a warning) if
    /// the disk cannot hold it.
    pub fn entry(&self, id: &EntryId) -> Option<Arc<CacheEntry>> {
        self.entry_for(id, None)
    }

    /// [`DiskCache::entry`] for a version whose full-object checksum S3 gave (`checksum`):
    /// the entry is sealed for passthrough only once its content matches it.
    pub fn entry_for(
        &self,
        id: &EntryId,
        checksum: Option<FullObjectChecksum>,
    ) -> Option<Arc<CacheEntry>> {
        let stem = id.stem();
        let learned = match checksum {
            Some(checksum) => {
                self.update_learned(&stem, |learned| learned.checksum = Some(checksum))
            }
            None => self.learned.get(&stem).unwrap_or_default(),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = open.get(&stem).and_then(Weak::upgrade) {
            if let Some(checksum) = checksum {
                existing.learn_checksum(checksum);
            }
            return Some(existing);
        }
        let checksum = learned.checksum;
        let entry = match self.open_locked(id) {
            Ok(entry) => entry,
            Err(e) => {
                self.warn_once("open entry", &e);
                return None;
            }
        };
        let already_verified = entry.is_sealed_for(checksum);
        let expected = std::sync::OnceLock::new();
        if let Some(checksum) = checksum {
            let _ = expected.set(checksum);
        }
        let entry = Arc::new(CacheEntry {
            entry,
            verified: AtomicBool::new(already_verified),
            verifying: AtomicBool::new(false),
            checked: BlockSet::new(id.blocks()),
            no_room: std::sync::OnceLock::new(),
            allocated: AtomicBool::new(false),
            expected,
            folded: folded::FoldedChecksums::new(id.blocks()),
            mismatched: AtomicBool::new(learned.mismatched),
        });
        // Count the entry's map (and the directory) until the next scan measures it.
        let overhead =
            (entry::HEADER_LEN + id.blocks() * entry::RECORD_LEN).next_multiple_of(4096) + 4096;
        self.usage.fetch_add(overhead, Ordering::Relaxed);
        open.retain(|_, weak| weak.strong_count() > 0);
        open.insert(stem, Arc::downgrade(&entry));
        Some(entry)
    }

    fn open_locked(&self, id: &EntryId) -> io::Result<Entry> {
        for _ in 0..4 {
            let entry = Entry::open_or_create(&self.objects, id)?;
            lock::flock_shared(&entry.map)?;
            // An eviction may have removed it between open and lock.
            if entry.is_current() {
                let _ = entry.map.set_modified(SystemTime::now());
                return Ok(entry);
            }
        }
        Err(io::Error::other(
            "cache entry evicted repeatedly while opening",
        ))
    }

    /// Block `index` of `entry` if present and intact.
    pub fn read_block(&self, entry: &CacheEntry, index: u64) -> Option<Vec<u8>> {
        if entry.is_checked(index) {
            let id = &entry.entry.id;
            return self.read_checked(entry, index * id.block_size, id.block_len(index));
        }
        match entry.entry.read_block(index) {
            Ok(Some(bytes)) => {
                TierStats::bump(&self.stats.hits);
                entry.checked.insert(index);
                Some(bytes)
            }
            Ok(None) => {
                TierStats::bump(&self.stats.misses);
                None
            }
            Err(ReadBlockError::Corrupt) => {
                TierStats::bump(&self.stats.corrupt);
                TierStats::bump(&self.stats.misses);
                self.set_verified(entry, false, None);
                tracing::warn!(
                    key = %entry.entry.id.key,
                    index,
                    "disk cache block failed the checksum check; dropped and fetched again"
                );
                None
            }
            Err(ReadBlockError::Io(e)) => {
                self.warn_once("read", &e);
                None
            }
        }
    }

    /// The bytes `offset..offset + len` of `entry` in one read, if every block they touch is
    /// known intact to this process ([`CacheEntry::all_checked`]); `None` otherwise.
    pub fn read_range(&self, entry: &CacheEntry, offset: u64, len: u64) -> Option<bytes::Bytes> {
        if !Self::known_range(entry, offset, len) {
            return None;
        }
        self.read_checked(entry, offset, len)
            .map(bytes::Bytes::from)
    }

    /// [`DiskCache::read_range`] when it needs no disk read: `Some` only if every page of the
    /// range is in the page cache already. Never blocks, so async tasks call it directly.
    pub fn read_resident(&self, entry: &CacheEntry, offset: u64, len: u64) -> Option<bytes::Bytes> {
        if !Self::known_range(entry, offset, len) {
            return None;
        }
        let bytes = entry.entry.read_resident(offset, len)?;
        TierStats::bump(&self.stats.hits);
        Some(bytes.into())
    }

    /// Notes that bytes `offset..offset + len` of `entry` were copied into a FUSE reply: the
    /// reader has them (a mapping keeps them in its mount's page cache), so the data file's
    /// pages of them are dropped once the readers are further on ([`drop_behind`]), for files
    /// of a quarter of this process's memory ([`crate::memory::limit`]) or more. Two copies of
    /// a smaller file fit in half of it, and keeping them defers the write-back until after
    /// the load.
    pub fn served(&self, entry: &Arc<CacheEntry>, offset: u64, len: u64) {
        if entry.entry.id.size < self.drop_behind_from {
            return;
        }
        self.drop_behind
            .served(drop_behind::Served::new(entry, offset, len));
    }

    /// Whether `offset..offset + len` is a non-empty range of `entry` whose blocks are all
    /// known intact to this process.
    fn known_range(entry: &CacheEntry, offset: u64, len: u64) -> bool {
        let bs = entry.entry.id.block_size;
        len > 0
            && offset + len <= entry.entry.id.size
            && entry.all_checked(offset / bs..=(offset + len - 1) / bs)
    }

    fn read_checked(&self, entry: &CacheEntry, offset: u64, len: u64) -> Option<Vec<u8>> {
        match entry.entry.read_range(offset, len) {
            Ok(bytes) => {
                TierStats::bump(&self.stats.hits);
                Some(bytes)
            }
            Err(e) => {
                self.warn_once("read", &e);
                None
            }
        }
    }

    /// Stores block `index` of `entry`, unless that would cross the size limit (then an
    /// eviction pass starts and the block is only served, not stored).
    /// Returns whether the block is now on disk.
    pub fn write_block(self: &Arc<Self>, entry: &CacheEntry, index: u64, bytes: &[u8]) -> bool {
        let Some(_reservation) = self.reserve(entry, bytes.len() as u64) else {
            return false;
        };
        let written = entry.entry.write_block(index, bytes);
        let stored = self.written(entry, index..index + 1, written);
        if let Some(like) = entry.to_fold().filter(|_| stored) {
            entry.folded.record(index, like.of(bytes));
        }
        stored
    }

    /// Starts storing the blocks `blocks` of `entry` as their bytes arrive (see
    /// [`SpanWriter`]); `None` when they would cross the size limit.
    pub fn span_writer(
        self: &Arc<Self>,
        entry: &Arc<CacheEntry>,
        blocks: std::ops::Range<u64>,
    ) -> Option<SpanWriter> {
        let id = &entry.entry.id;
        let len: u64 = blocks.clone().map(|i| id.block_len(i)).sum();
        let reservation = self.reserve(entry, len)?;
        Some(SpanWriter::new(
            self.clone(),
            entry.clone(),
            blocks,
            reservation,
        ))
    }

    /// Waits until this process holds the download lock of block `index` (or `max_wait`
    /// passed). While held, other processes wanting the block wait, then find it on disk.
    pub async fn lock_block(
        &self,
        entry: &Arc<CacheEntry>,
        index: u64,
        max_wait: Duration,
    ) -> BlockLock {
        let start = entry::HEADER_LEN + index * entry::RECORD_LEN;
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            match lock::try_lock_range(&entry.entry.map, start, entry::RECORD_LEN) {
                Ok(true) => {
                    return BlockLock {
                        entry: Some(entry.clone()),
                        start,
                    }
                }
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(false) => {
                    tracing::debug!(index, "block lock wait timed out; fetching anyway");
                    return BlockLock { entry: None, start };
                }
                Err(e) => {
                    self.warn_once("lock", &e);
                    return BlockLock { entry: None, start };
                }
            }
        }
    }
}

/// A held block download lock; released on drop.
#[derive(Debug)]
pub struct BlockLock {
    entry: Option<Arc<CacheEntry>>,
    start: u64,
}

impl Drop for BlockLock {
    fn drop(&mut self) {
        if let Some(entry) = &self.entry {
            let _ = lock::unlock_range(&entry.entry.map, self.start, entry::RECORD_LEN);
        }
    }
}

/// The usage record's name in `v1`.
const USAGE_RECORD: &str = "usage";

/// Opens (with `create`: creating 0700) the subdirectory `name` of a verified cache
/// directory and checks it the same way.
fn private_subdir(parent: &Dir, name: &str, create: bool) -> io::Result<Dir> {
    let dir = if create {
        parent.ensure_dir(name)?
    } else {
        parent.open_dir(name)?
    };
    dir.check_private()?;
    Ok(dir)
}

/// The entries directory of the existing cache at `root`, checked like
/// [`DiskCache::open`] checks it (for `modelfs cache` commands, which create nothing).
pub fn open_objects(root: &Path) -> io::Result<Dir> {
    let root_dir = trusted_path::open_checked_path(root, false)?;
    root_dir.check_private()?;
    let v1 = private_subdir(&root_dir, "v1", false)?;
    private_subdir(&v1, "objects", false)
}

/// The usage measured by the last scan of any process, so start-up needs no scan.
fn read_usage_record(v1: &Dir) -> Option<u64> {
    v1.read_to_string(USAGE_RECORD).ok()?.trim().parse().ok()
}

fn write_usage_record(v1: &Dir, usage: u64) {
    let tmp = format!("{USAGE_RECORD}.{}", entry::unique());
    if write_usage_file(v1, &tmp, usage).is_ok() {
        let _ = v1.rename(&tmp, USAGE_RECORD);
    }
    // Leftovers of processes that died between creating and renaming theirs.
    if let Ok(names) = v1.names() {
        for name in names.iter().filter(|n| n.starts_with("usage.")) {
            if is_stale(v1, name) {
                let _ = v1.unlink(name);
            }
        }
    }
}

/// Writes `usage` to a new file `name` in `v1`. A file of that name left by a dead process
/// (or planted, as a link) is removed first, never opened: the new one is created with
/// `O_EXCL`, so no link is followed.
fn write_usage_file(v1: &Dir, name: &str, usage: u64) -> io::Result<()> {
    match v1.unlink(name) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = v1
        .open_file(name, safe_dir::Open::CreateNew)
        .and_then(|mut f| std::io::Write::write_all(&mut f, usage.to_string().as_bytes()));
    if written.is_err() {
        let _ = v1.unlink(name);
    }
    written
}

/// Whether `name` in `dir` was last changed over an hour ago (a leftover, not work in
/// progress).
fn is_stale(dir: &Dir, name: &str) -> bool {
    dir.stat(name)
        .ok()
        .and_then(|st| st.mtime.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(3600))
}

/// Lists every entry under `objects` with its size and last use; removes leftovers of
/// interrupted creations and evictions older than an hour. Nothing is followed: a shard or
/// entry that is a link, or an entry whose files are not regular files, is skipped.
pub fn scan(objects: &Dir) -> io::Result<Vec<ScannedEntry>> {
    let mut found = Vec::new();
    for shard_name in objects.names()? {
        let Ok(shard) = objects.open_dir(&shard_name) else {
            continue;
        };
        let shard = Arc::new(shard);
        let Ok(names) = shard.names() else {
            continue;
        };
        for name in names {
            if name.starts_with('.') {
                if is_stale(&shard, &name) {
                    let _ = shard.remove_tree(&name);
                }
                continue;
            }
            let Ok(dir) = shard.open_dir(&name) else {
                continue;
            };
            let (Ok(map), Ok(data)) = (dir.stat("map"), dir.stat("data")) else {
                continue;
            };
            if !map.is_file() || !data.is_file() {
                continue;
            }
            let seal = dir
                .stat("verified")
                .ok()
                .filter(|s| s.is_file())
                .map_or(0, |s| s.blocks);
            found.push(ScannedEntry {
                bytes: (map.blocks + data.blocks + seal) * 512,
                last_used: map.mtime,
                dir: dir.path().to_path_buf(),
                shard: shard.clone(),
                name,
            });
        }
    }
    Ok(found)
}

/// Most versions whose checksum or mismatch this process remembers (about 200 bytes each).
const MAX_LEARNED: u64 = 100_000;

/// What a process learned of one version ([`DiskCache::entry_for`]).
#[derive(Clone, Copy, Debug, Default)]
struct Learned {
    /// S3's full-object checksum, from an open that brought it or the question below.
    checksum: Option<FullObjectChecksum>,
    /// The content this process received failed that checksum ([`CacheEntry`]'s
    /// `mismatched`).
    mismatched: bool,
    /// Whether this process asked S3 for the checksum ([`DiskCache::checksum_question`]).
    question: ChecksumQuestion,
}

/// Where a process stands on asking S3 for a version's full-object checksum before sealing
/// its entry: an open proven readable by a GET (a header scan ahead) brought none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChecksumQuestion {
    /// Not asked yet.
    #[default]
    NotAsked,
    /// A HeadObject is on its way: the entry waits for its answer to be verified.
    Asking,
    /// Answered, or nothing to ask.
    Answered,
}

/// Bytes of `entry`'s data file not allocated on disk yet.
fn unallocated(entry: &CacheEntry) -> u64 {
    match entry.entry.data.metadata() {
        Ok(meta) => meta
            .size()
            .next_multiple_of(4096)
            .saturating_sub(meta.blocks() * 512),
        Err(_) => entry.entry.id.size.next_multiple_of(4096),
    }
}

/// Whether a process holds the entry found by a scan (an entry that cannot be checked counts
/// as held: it is not evicted either).
fn is_in_use(entry: &ScannedEntry) -> bool {
    let map = entry
        .shard
        .open_dir(&entry.name)
        .and_then(|dir| dir.open_file("map", safe_dir::Open::Read));
    // Closing the file drops the lock taken to test it.
    !matches!(map.and_then(|map| lock::try_flock(&map, true)), Ok(true))
}

/// Removes the entry found by a scan unless a process holds it; true if removed.
pub fn remove_if_unused(entry: &ScannedEntry) -> io::Result<bool> {
    let dir = entry.shard.open_dir(&entry.name)?;
    let map = dir.open_file("map", safe_dir::Open::Read)?;
    if !lock::try_flock(&map, true)? {
        return Ok(false);
    }
    // Still the directory that was locked (not replaced since)?
    let (now, locked) = (entry.shard.stat(&entry.name)?, dir.metadata()?);
    if (now.dev, now.ino) != (locked.dev, locked.ino) {
        return Ok(false);
    }
    let trash = format!(".trash-{}-{}", entry.name, entry::unique());
    entry.shard.rename(&entry.name, &trash)?;
    entry.shard.remove_tree(&trash)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
