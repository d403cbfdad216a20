//! *How* blocks arrive: the fetch engine. Memory, then disk, then one ranged GET with
//! `If-Match`; one request per block however many readers (and prefetchers) want it at once
//! (in-flight futures are shared); background fetches wait for a slot of a bounded pool while
//! demand reads never wait behind them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use super::stream::{BlockCollector, Lease, Stream};
use crate::cache::disk::CacheEntry;
use crate::cache::{BlockKey, DiskCache, MemoryTier};
use crate::error::FsError;
use crate::store::{ObjectStore, ObjectVersion, StoreError};

/// Longest wait for another process's download of a block before fetching it ourselves.
const PEER_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);

fn join_error(e: &tokio::task::JoinError) -> FsError {
    FsError::Store(crate::store::StoreError::Other {
        operation: "block fetch".into(),
        message: e.to_string(),
    })
}

/// The smallest range of blocks within `first..last` that holds every block of `entry` not
/// on disk yet; `None` when all are there.
async fn missing_range(entry: &Arc<CacheEntry>, first: u64, last: u64) -> Option<(u64, u64)> {
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || {
        let missing: Vec<u64> = (first..last)
            .filter(|&i| !matches!(entry.entry.record(i), Ok(Some(_))))
            .collect();
        Some((*missing.first()?, *missing.last()? + 1))
    })
    .await
    .ok()
    .flatten()
}

/// Block `index` of `entry` from the disk tier (CRC checked), on a blocking thread.
async fn read_from_disk(
    cache: &Arc<DiskCache>,
    entry: &Arc<CacheEntry>,
    index: u64,
) -> Option<Bytes> {
    let (cache, entry) = (cache.clone(), entry.clone());
    tokio::task::spawn_blocking(move || cache.read_block(&entry, index))
        .await
        .ok()
        .flatten()
        .map(Bytes::from)
}

/// The cache key of block `index` of `version` from `origin`.
fn block_key(origin: &Arc<str>, version: &ObjectVersion, index: u64) -> BlockKey {
    BlockKey {
        origin: origin.clone(),
        key: version.key.clone(),
        etag: version.etag.clone(),
        index,
    }
}

/// The runs `(start, end)` of consecutive blocks to fetch for a reader of blocks up to `last`:
/// every candidate up to `last` that is not `present`, and after `last` the candidates that
/// continue the last run, until one is present, `stop_ahead`, or not next in line.
fn runs_to_fetch(
    candidates: impl IntoIterator<Item = u64>,
    last: u64,
    mut present: impl FnMut(u64) -> bool,
    mut stop_ahead: impl FnMut(u64) -> bool,
) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for index in candidates {
        let ahead = index > last;
        let here = present(index);
        if ahead && (here || stop_ahead(index)) {
            break;
        }
        if here {
            continue;
        }
        match runs.last_mut() {
            Some((_, end)) if *end == index => *end += 1,
            _ if ahead => break,
            _ => runs.push((index, index + 1)),
        }
    }
    runs
}

/// One object version from one origin: `(origin, key, etag)`.
type VersionKey = (Arc<str>, Arc<str>, Arc<str>);

/// Where a span's blocks go as they arrive.
#[derive(Clone)]
enum Landing {
    /// Into the file's disk entry (into the memory tier when the disk turns them away).
    Disk(Arc<CacheEntry>),
    /// Held by a streamed load until read (see `stream`); `entry` is the file's disk entry,
    /// read from (never written to) when a span fails.
    Stream {
        stream: Weak<Stream>,
        lease: Arc<Lease>,
        entry: Option<Arc<CacheEntry>>,
    },
}

impl Landing {
    fn entry(&self) -> Option<&Arc<CacheEntry>> {
        match self {
            Landing::Disk(entry) => Some(entry),
            Landing::Stream { entry, .. } => entry.as_ref(),
        }
    }

    fn stream(&self) -> Option<&Weak<Stream>> {
        match self {
            Landing::Disk(_) => None,
            Landing::Stream { stream, .. } => Some(stream),
        }
    }
}

/// Who wants a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A reader is waiting for it.
    Demand,
    /// Readahead or a whole-file sweep; waits for a background slot.
    Background,
}

impl Priority {
    /// The metrics label.
    fn label(self) -> &'static str {
        match self {
            Priority::Demand => "demand",
            Priority::Background => "background",
        }
    }
}

type BlockFuture = Shared<BoxFuture<'static, Result<Bytes, FsError>>>;

/// How far a span's download has got: the number of its blocks stored, from its first.
type SpanProgress = tokio::sync::watch::Receiver<u64>;

/// A block being fetched: its future (the block's bytes, from whichever tier it landed in)
/// and, for a block of a span, the span's progress, which says when it is on disk without
/// reading it back.
#[derive(Clone)]
struct InFlight {
    block: BlockFuture,
    span: Option<(SpanProgress, u64)>,
}

impl InFlight {
    /// A block fetched on its own.
    fn single(block: BlockFuture) -> InFlight {
        InFlight { block, span: None }
    }

    /// Waits until the fetch has stored the block or given up on it; which of the two is
    /// for the caller to find out from the tiers.
    async fn landed(self) {
        match self.span {
            Some((mut stored, position)) => {
                let _ = stored.wait_for(|&done| done > position).await;
            }
            None => {
                let _ = self.block.await;
            }
        }
    }
}

/// What every volume served by one process shares: one memory budget, one disk cache, one
/// table of downloads in flight and one pool of background slots, so two volumes reading the
/// same object version from the same origin share one download.
#[derive(Clone)]
pub struct SharedTiers {
    memory: MemoryTier,
    disk: Option<Arc<DiskCache>>,
    block_size: u64,
    background_slots: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashMap<BlockKey, InFlight>>>,
    verifications: Arc<AtomicUsize>,
    /// Streamed loads (files the disk cache cannot hold) in progress, one per version.
    streams: Arc<Mutex<HashMap<VersionKey, Weak<Stream>>>>,
    /// Versions whose streamed load has been warned about (once each).
    warned_too_small: Arc<Mutex<HashSet<VersionKey>>>,
}

impl std::fmt::Debug for SharedTiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTiers")
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl SharedTiers {
    /// Tiers sized by `config` (memory budget, block size, background slots) over an optional
    /// disk cache; their counters are registered with the process's metrics.
    pub fn new(config: &super::ReadConfig, disk: Option<Arc<DiskCache>>) -> SharedTiers {
        let memory = MemoryTier::new(config.memory_tier_bytes());
        let registry = crate::metrics::metrics();
        registry.register_tier("memory", memory.stats.clone());
        if let Some(disk) = &disk {
            registry.register_tier("disk", disk.stats.clone());
        }
        SharedTiers {
            memory,
            disk,
            block_size: config.block_size,
            background_slots: Arc::new(Semaphore::new(config.prefetch_concurrency.max(1))),
            in_flight: Arc::default(),
            verifications: Arc::default(),
            streams: Arc::default(),
            warned_too_small: Arc::default(),
        }
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The disk tier.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }
}

/// The fetch engine of one volume: its own store over the process's [`SharedTiers`].
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    /// The store's normalized origin: part of every block key, so volumes of different
    /// origins never share blocks.
    origin: Arc<str>,
    tiers: SharedTiers,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// An engine reading `store` through `tiers`.
    pub fn new(store: Arc<dyn ObjectStore>, tiers: &SharedTiers) -> Fetcher {
        Fetcher {
            origin: store.origin().to_string().into(),
            store,
            tiers: tiers.clone(),
        }
    }

    /// The tiers this engine reads through.
    pub fn tiers(&self) -> &SharedTiers {
        &self.tiers
    }

    fn version_key(&self, version: &ObjectVersion) -> VersionKey {
        (
            self.origin.clone(),
            version.key.clone(),
            version.etag.clone(),
        )
    }

    /// The streamed load of `version` in progress, if any.
    pub(super) fn stream(&self, version: &ObjectVersion) -> Option<Arc<Stream>> {
        let streams = self.tiers.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.get(&self.version_key(version))?.upgrade()
    }

    /// The streamed load of `version`, started with `start` if none is in progress; true
    /// when it was started here.
    pub(super) fn stream_of(
        &self,
        version: &ObjectVersion,
        start: impl FnOnce() -> Stream,
    ) -> (Arc<Stream>, bool) {
        let mut streams = self.tiers.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = self.version_key(version);
        if let Some(running) = streams.get(&key).and_then(Weak::upgrade) {
            return (running, false);
        }
        streams.retain(|_, weak| weak.strong_count() > 0);
        let stream = Arc::new(start());
        streams.insert(key, Arc::downgrade(&stream));
        (stream, true)
    }

    /// True the first time it is asked for `version`: its streamed load is warned about once.
    pub(super) fn first_too_small(&self, version: &ObjectVersion) -> bool {
        self.tiers
            .warned_too_small
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.version_key(version))
    }

    /// Keeps block `index` of `version` in the memory tier.
    pub(super) async fn keep_in_memory(&self, version: &ObjectVersion, index: u64, bytes: Bytes) {
        let key = block_key(&self.origin, version, index);
        self.tiers.memory.insert(key, bytes).await;
    }

    /// Fetches blocks `blocks` of `version` ahead of `stream`'s readers, as spans that hold
    /// `lease` until their blocks have been read. Blocks a reader asked for, held already, in
    /// flight, in memory or on disk are left out.
    pub(super) fn stream_span(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: &Arc<Stream>,
        blocks: std::ops::Range<u64>,
        lease: Lease,
    ) {
        let landing = Landing::Stream {
            stream: Arc::downgrade(stream),
            lease: Arc::new(lease),
            entry: entry.cloned(),
        };
        let mut in_flight = self
            .tiers
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for index in blocks {
            let key = block_key(&self.origin, version, index);
            if in_flight.contains_key(&key)
                || stream.has_or_was_read(index)
                || self.tiers.memory.contains(&key)
                || entry.is_some_and(|e| e.is_checked(index))
            {
                continue;
            }
            match runs.last_mut() {
                Some((_, end)) if *end == index => *end += 1,
                _ => runs.push((index, index + 1)),
            }
        }
        for (a, b) in runs {
            drop(self.start_span(
                &mut in_flight,
                version,
                landing.clone(),
                a..b,
                Priority::Background,
            ));
        }
    }

    /// Gets blocks `first..=last` of `version` held by `stream`, for its reader: the missing
    /// ones are fetched as one span, run on towards `until` while the blocks after them are
    /// missing too (as [`Fetcher::fetch_to_disk`] does), held until read, when the stream's
    /// lead has room right away; otherwise the caller's block path fetches them. Blocks in
    /// flight are waited for. Returns once `first..=last` have landed or their fetch gave up.
    pub(super) async fn fetch_to_stream(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: &Arc<Stream>,
        blocks: std::ops::RangeInclusive<u64>,
        until: u64,
    ) {
        let (first, last) = (*blocks.start(), *blocks.end());
        let until = until
            .max(last + 1)
            .min(version.size.div_ceil(self.tiers.block_size));
        let waits: Vec<InFlight> = {
            let mut in_flight = self
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let runs = runs_to_fetch(
                first..until,
                last,
                |index| {
                    let key = block_key(&self.origin, version, index);
                    in_flight.contains_key(&key)
                        || stream.holds(index)
                        || self.tiers.memory.contains(&key)
                        || entry.is_some_and(|e| e.is_checked(index))
                },
                // Blocks ahead run on only while nobody reads them.
                |index| stream.has_or_was_read(index),
            );
            let lease = (!runs.is_empty())
                .then(|| stream.try_lease(&self.tiers.background_slots))
                .flatten();
            if let Some(lease) = lease {
                let landing = Landing::Stream {
                    stream: Arc::downgrade(stream),
                    lease: Arc::new(lease),
                    entry: entry.cloned(),
                };
                for (a, b) in runs {
                    // The span runs as its own task; its blocks are in the table from here on.
                    drop(self.start_span(
                        &mut in_flight,
                        version,
                        landing.clone(),
                        a..b,
                        Priority::Demand,
                    ));
                }
            }
            self.in_flight_of(&in_flight, version, blocks)
        };
        futures::future::join_all(waits.into_iter().map(InFlight::landed)).await;
    }

    /// The downloads in flight of `blocks` of `version`.
    fn in_flight_of(
        &self,
        in_flight: &HashMap<BlockKey, InFlight>,
        version: &ObjectVersion,
        blocks: std::ops::RangeInclusive<u64>,
    ) -> Vec<InFlight> {
        blocks
            .filter_map(|index| {
                in_flight
                    .get(&block_key(&self.origin, version, index))
                    .cloned()
            })
            .collect()
    }

    /// A background slot, for a caller that holds it itself (a streamed span).
    pub(super) async fn background_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slot(Priority::Background).await
    }

    /// If `entry` is complete but not verified, checks every block's CRC on a blocking thread
    /// and seals it (see [`DiskCache::verify_complete`]); one verification at a time.
    pub fn verify_in_background(&self, entry: &Arc<CacheEntry>) {
        let Some(disk) = self.tiers.disk.clone() else {
            return;
        };
        if entry.is_verified() || !entry.start_verification() {
            return;
        }
        let entry = entry.clone();
        let running = self.tiers.verifications.clone();
        running.fetch_add(1, Ordering::AcqRel);
        tokio::task::spawn_blocking(move || {
            let complete = entry.entry.is_complete().unwrap_or(false);
            let verified = complete && disk.verify_complete(&entry);
            tracing::debug!(key = %entry.entry.id.key, complete, verified, "cache entry checked");
            entry.end_verification();
            running.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Waits (blocking, at most `limit`) for running verifications to finish, so entries
    /// completed just before an unmount are sealed for the next mount.
    pub fn wait_for_verifications(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.tiers.verifications.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Bytes `offset..end` of `file` straight from its disk entry in one read, when every
    /// block they touch is known intact there ([`CacheEntry::all_checked`]): no checksum, no
    /// per-block buffers, no copy to join blocks. `None` (use the block path) otherwise, and
    /// for a read within one block that the memory tier holds.
    pub async fn read_known_range(
        &self,
        file: &super::OpenObject,
        offset: u64,
        end: u64,
    ) -> Option<Bytes> {
        let (cache, entry) = (self.tiers.disk.clone()?, file.disk.clone()?);
        let bs = self.tiers.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);
        if !entry.all_checked(first..=last) {
            return None;
        }
        if first == last {
            if let Some(block) = self
                .tiers
                .memory
                .peek(&block_key(&self.origin, &file.version, first))
                .await
            {
                let from = (offset - first * bs) as usize;
                return Some(block.slice(from..from + (end - offset) as usize));
            }
        }
        // Most reads of a file being loaded find its pages resident (written moments ago):
        // served here, without the hop to a blocking thread.
        if let Some(bytes) = cache.read_resident(&entry, offset, end - offset) {
            return Some(bytes);
        }
        tokio::task::spawn_blocking(move || cache.read_range(&entry, offset, end - offset))
            .await
            .ok()
            .flatten()
    }

    /// Fetches blocks `first..first + count` of `version` with ONE ranged GET and stores them
    /// on disk as the body arrives (a background sweep: fewer, larger requests cost less per
    /// byte than one per block). Returns once the span is stored.
    pub async fn span(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: &Arc<CacheEntry>,
        first: u64,
        count: u64,
    ) -> Result<(), FsError> {
        let bs = self.tiers.block_size;
        let last = (first + count).min(version.size.div_ceil(bs));
        // Blocks that readers fetched since the sweep planned this span are not fetched again.
        let Some((first, last)) = missing_range(entry, first, last).await else {
            return Ok(());
        };
        self.store_from_memory(version, entry, first..last).await;
        // Blocks already in flight (a reader's, another sweep's) are waited for, not fetched
        // again, nor are blocks stored meanwhile; the runs between are spans of their own.
        let (spans, waits) = {
            let mut in_flight = self
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut runs: Vec<(u64, u64)> = Vec::new();
            let mut waits = Vec::new();
            for index in first..last {
                if let Some(existing) = in_flight.get(&block_key(&self.origin, version, index)) {
                    waits.push(existing.clone());
                    continue;
                }
                // Stored by a fetch that ended since `missing_range` looked (a block leaves
                // the table only once it is stored, and is known intact from then on).
                if entry.is_checked(index) {
                    continue;
                }
                match runs.last_mut() {
                    Some((_, end)) if *end == index => *end += 1,
                    _ => runs.push((index, index + 1)),
                }
            }
            let spans: Vec<_> = runs
                .into_iter()
                .map(|(a, b)| {
                    let landing = Landing::Disk(entry.clone());
                    self.start_span(&mut in_flight, version, landing, a..b, Priority::Background)
                })
                .collect();
            (spans, waits)
        };
        let results = futures::future::join_all(spans).await;
        for existing in waits {
            existing.landed().await;
        }
        results.into_iter().collect()
    }

    /// Writes the blocks of `blocks` that have no record in `entry` but are in the memory tier
    /// (fetched while the disk could not take them, before the cache made room for the file)
    /// to disk from there, instead of fetching them again.
    async fn store_from_memory(
        &self,
        version: &ObjectVersion,
        entry: &Arc<CacheEntry>,
        blocks: std::ops::Range<u64>,
    ) {
        let Some(cache) = self.tiers.disk.clone() else {
            return;
        };
        let mut found = Vec::new();
        for index in blocks.filter(|&index| !entry.is_checked(index)) {
            let key = block_key(&self.origin, version, index);
            if let Some(bytes) = self.tiers.memory.peek(&key).await {
                found.push((index, bytes));
            }
        }
        if found.is_empty() {
            return;
        }
        let entry = entry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (index, bytes) in found {
                // Present blocks are never written over (readers may have them mapped).
                if matches!(entry.entry.record(index), Ok(None)) {
                    cache.write_block(&entry, index, &bytes);
                }
            }
        })
        .await;
    }

    /// Gets blocks `first..=last` of `entry` onto disk for a reader of a file being loaded.
    /// The missing ones are fetched as spans at demand priority (no background slot), run on
    /// towards `until` while the blocks after them are missing too, so the reader's next reads
    /// find their blocks on the way (a loader's thread reads a tensor in 2 MiB steps: one GET
    /// serves four of them); blocks in flight are waited for, not fetched again. Returns once
    /// each of `first..=last` is stored or its fetch has given up; the caller reads them from
    /// the disk tier, or falls back to the block path.
    pub async fn fetch_to_disk(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: &Arc<CacheEntry>,
        first: u64,
        last: u64,
        until: u64,
    ) {
        let until = until
            .max(last + 1)
            .min(version.size.div_ceil(self.tiers.block_size));
        // Blocks on disk but not checked by this process are left to the block path, which
        // reads and checks them; only blocks without a record are fetched.
        let unrecorded = {
            let entry = entry.clone();
            tokio::task::spawn_blocking(move || {
                (first..until)
                    .filter(|&i| !entry.is_checked(i) && matches!(entry.entry.record(i), Ok(None)))
                    .collect::<Vec<u64>>()
            })
            .await
            .unwrap_or_default()
        };
        let waits: Vec<InFlight> = {
            let mut in_flight = self
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Blocks in memory (the disk turned them away) are read from there; a sweep
            // writes them to disk without fetching them again.
            let runs = runs_to_fetch(
                unrecorded,
                last,
                |index| {
                    let key = block_key(&self.origin, version, index);
                    in_flight.contains_key(&key)
                        || entry.is_checked(index)
                        || self.tiers.memory.contains(&key)
                },
                |_| false,
            );
            for (a, b) in runs {
                // The span runs as its own task; its blocks are in the table from here on.
                let landing = Landing::Disk(entry.clone());
                drop(self.start_span(&mut in_flight, version, landing, a..b, Priority::Demand));
            }
            self.in_flight_of(&in_flight, version, first..=last)
        };
        futures::future::join_all(waits.into_iter().map(InFlight::landed)).await;
    }

    /// Starts the download of blocks `first..last` as one span (its own task) and registers
    /// each block in the in-flight table, where readers wait for the span and then read the
    /// block from where it landed.
    fn start_span(
        self: &Arc<Self>,
        in_flight: &mut HashMap<BlockKey, InFlight>,
        version: &ObjectVersion,
        landing: Landing,
        blocks: std::ops::Range<u64>,
        priority: Priority,
    ) -> Shared<BoxFuture<'static, Result<(), FsError>>> {
        let (first, last) = (blocks.start, blocks.end);
        let (this, version2, landing2) = (self.clone(), version.clone(), landing.clone());
        // How many blocks of the span are stored: a reader waits for its own block, not for
        // the whole span (a sequential reader at the sweep's front waits half as long).
        let (progress, stored) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let result = this
                .load_span(&version2, &landing2, first..last, priority, &progress)
                .await;
            let mut in_flight = this
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for index in first..last {
                in_flight.remove(&block_key(&this.origin, &version2, index));
            }
            result
        });
        let span = async move { task.await.unwrap_or_else(|e| Err(join_error(&e))) }
            .boxed()
            .shared();
        for index in first..last {
            let position = index - first;
            let (progress, this) = (stored.clone(), self.clone());
            let mut stored = stored.clone();
            // Not the landing itself: a streamed span's lease is the span's to let go.
            let (pinned, entry) = (version.clone(), landing.entry().cloned());
            let held_by = landing.stream().cloned();
            let block = async move {
                // Landed, or the span failed (it dropped its sender): the block path finds
                // out which.
                let _ = stored.wait_for(|&done| done > position).await;
                this.load_after_span(&pinned, entry.as_ref(), held_by.as_ref(), index)
                    .await
            }
            .boxed()
            .shared();
            let span = Some((progress, position));
            in_flight.insert(
                block_key(&self.origin, version, index),
                InFlight { block, span },
            );
        }
        span
    }

    /// Block `index` for a reader that waited for the span holding it: from its stream (a
    /// streamed load's), from memory (where a span the disk could not take is kept), from
    /// disk, or (the span failed) fetched now.
    async fn load_after_span(
        &self,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        stream: Option<&Weak<Stream>>,
        index: u64,
    ) -> Result<Bytes, FsError> {
        let held = stream
            .and_then(Weak::upgrade)
            .and_then(|stream| stream.peek(index));
        if let Some(block) = held {
            return Ok(block);
        }
        let key = block_key(&self.origin, version, index);
        if let Some(block) = self.tiers.memory.get(&key).await {
            return Ok(block);
        }
        let (bytes, _) = self.load(version, entry, index, Priority::Demand).await?;
        self.tiers.memory.insert(key, bytes.clone()).await;
        Ok(bytes)
    }

    async fn load_span(
        &self,
        version: &ObjectVersion,
        landing: &Landing,
        blocks: std::ops::Range<u64>,
        priority: Priority,
        progress: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), FsError> {
        let entry = match landing {
            Landing::Disk(entry) => entry,
            Landing::Stream { stream, lease, .. } => {
                return self
                    .stream_into(version, blocks, priority, stream, lease, progress)
                    .await;
            }
        };
        let _slot = self.slot(priority).await;
        let (first, last) = (blocks.start, blocks.end);
        tracing::trace!(first, last, priority = priority.label(), "span start");
        for _ in blocks.clone() {
            crate::metrics::metrics().fetched_block(priority.label());
        }
        let writer = self
            .tiers
            .disk
            .as_ref()
            .and_then(|cache| cache.span_writer(entry, blocks));
        if let Some(mut writer) = writer {
            let range = writer.range();
            // Pieces are written as they arrive, on this task: page-cache writes of a few
            // hundred KiB, cheaper here than the hop to a blocking thread.
            let mut sink = |at: u64, piece: &[u8]| {
                writer.push(at, piece).map_err(|e| StoreError::Other {
                    operation: "cache write".into(),
                    message: e.to_string(),
                })?;
                let stored = writer.blocks_stored();
                progress.send_if_modified(|done| std::mem::replace(done, stored) != stored);
                Ok(())
            };
            self.store
                .get_range_into(&version.key, range, &version.etag, &mut sink)
                .await?;
            writer.finish();
            tracing::trace!(first, last, "span end");
            return Ok(());
        }
        // No room on disk: one GET, kept in memory rather than fetched again per block.
        let bs = self.tiers.block_size;
        let range = first * bs..(last * bs).min(version.size);
        let bytes = self
            .store
            .get_range(&version.key, range, &version.etag)
            .await?;
        for index in first..last {
            let from = ((index - first) * bs) as usize;
            let key = block_key(&self.origin, version, index);
            let block = bytes.slice(from..(from + bs as usize).min(bytes.len()));
            self.tiers.memory.insert(key, block).await;
        }
        Ok(())
    }

    /// Fetches `blocks` of `version` with one GET for `stream`, which holds each block (and
    /// with it `lease`) as soon as it is complete, until it has been read.
    async fn stream_into(
        &self,
        version: &ObjectVersion,
        blocks: std::ops::Range<u64>,
        priority: Priority,
        stream: &Weak<Stream>,
        lease: &Arc<Lease>,
        progress: &tokio::sync::watch::Sender<u64>,
    ) -> Result<(), FsError> {
        let (first, last) = (blocks.start, blocks.end);
        tracing::trace!(
            first,
            last,
            priority = priority.label(),
            "stream span start"
        );
        for _ in blocks.clone() {
            crate::metrics::metrics().fetched_block(priority.label());
        }
        let mut blocks = BlockCollector::new(blocks, self.tiers.block_size, version.size);
        let range = blocks.range();
        let mut sink = |at: u64, piece: &[u8]| {
            let done = blocks
                .push(at, piece)
                .map_err(|message| StoreError::Other {
                    operation: "stream span".into(),
                    message,
                })?;
            for (index, bytes) in done {
                // Every open of the file is closed: nobody is left to read it.
                if let Some(stream) = stream.upgrade() {
                    stream.hold(index, bytes, lease);
                }
                progress.send_replace(index - first + 1);
            }
            Ok(())
        };
        self.store
            .get_range_into(&version.key, range, &version.etag, &mut sink)
            .await?;
        super::stream::span_fetched(stream, first, last);
        Ok(())
    }

    /// The first `prefix_len` bytes of block `index` of `version`, for a reader that needs
    /// only those now (a safetensors header probe). A block that must come from S3 is fetched
    /// as two ranged GETs made at once: the prefix, answered as soon as it arrives, and the
    /// rest, joined with it and stored like any block (the same bytes in total as one GET for
    /// the block). Readers of the whole block meanwhile wait for the joined block.
    pub async fn block_prefix(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        prefix_len: u64,
    ) -> Result<Bytes, FsError> {
        let bs = self.tiers.block_size;
        let start = index * bs;
        let block_len = version.size.saturating_sub(start).min(bs);
        let prefix_len = prefix_len.min(block_len) as usize;
        let key = block_key(&self.origin, version, index);
        if let Some(hit) = self.tiers.memory.get(&key).await {
            return Ok(hit.slice(..prefix_len.min(hit.len())));
        }
        if let (Some(cache), Some(entry)) = (&self.tiers.disk, entry) {
            if let Some(block) = read_from_disk(cache, entry, index).await {
                self.tiers.memory.insert(key, block.clone()).await;
                return Ok(block.slice(..prefix_len.min(block.len())));
            }
        }
        if prefix_len as u64 == block_len {
            return self.block(version, entry, index, Priority::Demand).await;
        }
        let (prefix_tx, prefix_rx) = tokio::sync::oneshot::channel();
        let existing = {
            let mut in_flight = self
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&key) {
                Some(existing) => Some(existing.block.clone()),
                None => {
                    let this = self.clone();
                    let (version, entry, key2) = (version.clone(), entry.cloned(), key.clone());
                    let shared = self.spawn_shared(key.clone(), async move {
                        let result = this
                            .load_in_two(&version, entry, index, prefix_len as u64, prefix_tx)
                            .await;
                        if let Ok(block) = &result {
                            this.tiers.memory.insert(key2, block.clone()).await;
                        }
                        result
                    });
                    in_flight.insert(key, InFlight::single(shared));
                    None
                }
            }
        };
        match existing {
            Some(block) => {
                let block = block.await?;
                Ok(block.slice(..prefix_len.min(block.len())))
            }
            None => prefix_rx.await.unwrap_or_else(|_| {
                Err(FsError::Store(crate::store::StoreError::Other {
                    operation: "block fetch".into(),
                    message: "the fetch ended before its first bytes arrived".into(),
                }))
            }),
        }
    }

    /// [`Fetcher::block_prefix`]'s download: the prefix (sent to `prefix_tx` as soon as it
    /// arrives) and the rest of the block, fetched at once, joined and written to disk.
    async fn load_in_two(
        &self,
        version: &ObjectVersion,
        entry: Option<Arc<CacheEntry>>,
        index: u64,
        prefix_len: u64,
        prefix_tx: tokio::sync::oneshot::Sender<Result<Bytes, FsError>>,
    ) -> Result<Bytes, FsError> {
        let bs = self.tiers.block_size;
        let start = index * bs;
        let end = ((index + 1) * bs).min(version.size);
        crate::metrics::metrics().fetched_block("demand");
        // Both GETs at once: the rest costs no more latency than the prefix.
        let prefix = async {
            let prefix = self
                .store
                .get_range(&version.key, start..start + prefix_len, &version.etag)
                .await
                .map_err(FsError::from);
            let _ = prefix_tx.send(prefix.clone());
            prefix
        };
        let rest = self
            .store
            .get_range(&version.key, start + prefix_len..end, &version.etag);
        let (prefix, rest) = tokio::join!(prefix, rest);
        let (prefix, rest) = (prefix?, rest?);
        let mut block = bytes::BytesMut::with_capacity((end - start) as usize);
        block.extend_from_slice(&prefix);
        block.extend_from_slice(&rest);
        let block = block.freeze();
        if let (Some(cache), Some(entry)) = (self.tiers.disk.clone(), entry) {
            let stored = block.clone();
            let _ = tokio::task::spawn_blocking(move || cache.write_block(&entry, index, &stored))
                .await;
        }
        Ok(block)
    }

    /// Runs the fetch of block `key` as its own task, so it completes (and lands in the
    /// caches) even if every reader waiting for it goes away, and leaves the in-flight table
    /// when done. The caller inserts the returned future into the table.
    fn spawn_shared(
        self: &Arc<Self>,
        key: BlockKey,
        fetch: impl std::future::Future<Output = Result<Bytes, FsError>> + Send + 'static,
    ) -> BlockFuture {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let result = fetch.await;
            this.tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(join_error(&e))) }
            .boxed()
            .shared()
    }

    /// A background slot for a background fetch; demand fetches never wait for one.
    async fn slot(&self, priority: Priority) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match priority {
            Priority::Background => self
                .tiers
                .background_slots
                .clone()
                .acquire_owned()
                .await
                .ok(),
            Priority::Demand => None,
        }
    }

    /// Block `index` of `version`, from the fastest tier that has it.
    pub async fn block(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        let key = block_key(&self.origin, version, index);
        if let Some(hit) = self.tiers.memory.get(&key).await {
            return Ok(hit);
        }
        let shared = {
            let mut in_flight = self
                .tiers
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&key) {
                Some(existing) => existing.block.clone(),
                None => {
                    let this = self.clone();
                    let (version, entry, key2) = (version.clone(), entry.cloned(), key.clone());
                    let shared = self.spawn_shared(key.clone(), async move {
                        let result = this.load(&version, entry.as_ref(), index, priority).await;
                        if let Ok((bytes, on_disk)) = &result {
                            // Background blocks on disk are read from there later; blocks a
                            // reader asked for, or that the disk could not take, stay in memory.
                            if priority == Priority::Demand || !on_disk {
                                this.tiers.memory.insert(key2, bytes.clone()).await;
                            }
                        }
                        result.map(|(bytes, _)| bytes)
                    });
                    in_flight.insert(key, InFlight::single(shared.clone()));
                    shared
                }
            }
        };
        shared.await
    }

    async fn load(
        &self,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        priority: Priority,
    ) -> Result<(Bytes, bool), FsError> {
        let _slot = self.slot(priority).await;
        let (Some(cache), Some(entry)) = (&self.tiers.disk, entry) else {
            return Ok((self.fetch(version, index, priority).await?, false));
        };
        if let Some(bytes) = read_from_disk(cache, entry, index).await {
            return Ok((bytes, true));
        }
        let _download = cache.lock_block(entry, index, PEER_DOWNLOAD_WAIT).await;
        if let Some(bytes) = read_from_disk(cache, entry, index).await {
            return Ok((bytes, true));
        }
        let bytes = self.fetch(version, index, priority).await?;
        let (cache, entry, stored) = (cache.clone(), entry.clone(), bytes.clone());
        let on_disk =
            tokio::task::spawn_blocking(move || cache.write_block(&entry, index, &stored))
                .await
                .unwrap_or(false);
        Ok((bytes, on_disk))
    }

    async fn fetch(
        &self,
        version: &ObjectVersion,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        crate::metrics::metrics().fetched_block(priority.label());
        let bs = self.tiers.block_size;
        let range = index * bs..((index + 1) * bs).min(version.size);
        Ok(self
            .store
            .get_range(&version.key, range, &version.etag)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::runs_to_fetch;

    #[test]
    fn runs_cover_the_missing_blocks_and_run_on_only_while_the_next_ones_are_missing() {
        let present = |i: u64| i == 2 || i == 9;
        // Up to 4: 0..2 and 3..5 (2 is there); on past 4 while 5, 6… are missing, stopped at 9.
        assert_eq!(
            runs_to_fetch(0..12, 4, present, |_| false),
            [(0, 2), (3, 9)]
        );
        // A block ahead someone else reads stops the run.
        assert_eq!(
            runs_to_fetch(0..12, 4, present, |i| i == 6),
            [(0, 2), (3, 6)]
        );
        // Ahead of a gap in the candidates: no new run starts.
        assert_eq!(
            runs_to_fetch([0, 1, 7, 8], 1, |_| false, |_| false),
            [(0, 2)]
        );
        assert!(runs_to_fetch(0..4, 3, |_| true, |_| false).is_empty());
    }
}
