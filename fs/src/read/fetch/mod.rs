//! *How* blocks arrive: the fetch engine. Each block comes from the tiers
//! ([`Tiers`](crate::cache::Tiers): memory, then disk, then the cross-process download lock)
//! or from one ranged GET with `If-Match`; one request per block however many readers (and
//! prefetchers) want it at once ([`in_flight`]); background fetches wait for a slot of a
//! bounded pool while demand reads never wait behind them. Around the single block:
//!
//! - [`span`]: several blocks in one GET, to the disk entry as the body arrives, or held by
//!   a streamed load until read;
//! - [`header_probe`]: the first bytes of a block answered from a small GET while the rest
//!   of the block arrives in a second one.

mod checksum_question;
mod header_probe;
mod in_flight;
mod span;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::cache::disk::CacheEntry;
pub use crate::cache::Priority;
use crate::cache::{BlockKey, DiskCache, Lookup, MemoryTier, Tiers};
use crate::error::FsError;
use crate::read::block_buffers::BlockBuffers;
use crate::read::span_size::SpanSize;
use crate::read::stream::Stream;
use crate::read::SPARE_BLOCK_BUFFERS;
use crate::store::{ObjectStore, ObjectVersion};
use in_flight::InFlightTable;

/// One object version from one origin: `(origin, key, etag)`.
type VersionKey = (Arc<str>, Arc<str>, Arc<str>);

/// What every volume served by one process shares: the tiers (one memory budget, one disk
/// cache), one table of downloads in flight and one pool of background slots, so two volumes
/// reading the same object version from the same origin share one download.
#[derive(Clone)]
pub struct SharedTiers {
    cache: Tiers,
    block_size: u64,
    background_slots: Arc<Semaphore>,
    in_flight: InFlightTable,
    /// Buffers for the blocks streamed loads collect.
    buffers: Arc<BlockBuffers>,
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
    pub fn new(config: &crate::read::ReadConfig, disk: Option<Arc<DiskCache>>) -> SharedTiers {
        let memory = MemoryTier::new(config.memory_tier_bytes());
        let registry = crate::metrics::metrics();
        registry.register_tier("memory", memory.stats.clone());
        if let Some(disk) = &disk {
            registry.register_tier("disk", disk.stats.clone());
        }
        SharedTiers {
            cache: Tiers::new(memory, disk),
            block_size: config.block_size,
            background_slots: Arc::new(Semaphore::new(config.prefetch_concurrency.max(1))),
            in_flight: InFlightTable::default(),
            buffers: BlockBuffers::new(config.block_size, SPARE_BLOCK_BUFFERS as usize),
            streams: Arc::default(),
            warned_too_small: Arc::default(),
        }
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The cache tiers.
    pub fn cache(&self) -> &Tiers {
        &self.cache
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        self.cache.memory()
    }

    /// The disk tier.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.cache.disk()
    }
}

/// The fetch engine of one volume: its own store over the process's [`SharedTiers`].
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    /// The store's normalized origin: part of every block key, so volumes of different
    /// origins never share blocks.
    origin: Arc<str>,
    tiers: SharedTiers,
    /// How many blocks a sweep GET asks for, adapted to the store's throttling.
    span_size: SpanSize,
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
            span_size: SpanSize::new(store.throttles(), Instant::now()),
            store,
            tiers: tiers.clone(),
        }
    }

    /// Blocks the next sweep GET asks for: more while S3 throttles this store's requests.
    pub(in crate::read) fn span_blocks(&self) -> u64 {
        self.span_size
            .blocks(self.store.throttles(), Instant::now())
    }

    /// The store blocks are fetched from (the volume's own credentials).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The tiers this engine reads through.
    pub fn tiers(&self) -> &SharedTiers {
        &self.tiers
    }

    /// The cache key of block `index` of `version`.
    fn block_key(&self, version: &ObjectVersion, index: u64) -> BlockKey {
        BlockKey {
            origin: self.origin.clone(),
            key: version.key.clone(),
            etag: version.etag.clone(),
            index,
        }
    }

    fn version_key(&self, version: &ObjectVersion) -> VersionKey {
        (
            self.origin.clone(),
            version.key.clone(),
            version.etag.clone(),
        )
    }

    /// The streamed load of `version` in progress, if any.
    pub(in crate::read) fn stream(&self, version: &ObjectVersion) -> Option<Arc<Stream>> {
        let streams = self.tiers.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.get(&self.version_key(version))?.upgrade()
    }

    /// The streamed load of `version`, started with `start` if none is in progress; true
    /// when it was started here.
    pub(in crate::read) fn stream_of(
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
    pub(in crate::read) fn first_too_small(&self, version: &ObjectVersion) -> bool {
        self.tiers
            .warned_too_small
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.version_key(version))
    }

    /// Keeps block `index` of `version` in the memory tier.
    pub(in crate::read) async fn keep_in_memory(
        &self,
        version: &ObjectVersion,
        index: u64,
        bytes: Bytes,
    ) {
        let key = self.block_key(version, index);
        self.tiers.cache.keep_in_memory(key, bytes).await;
    }

    /// A background slot, for a caller that holds it itself (a streamed span).
    pub(in crate::read) async fn background_slot(
        &self,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slot(Priority::Background).await
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

    /// Waits (blocking, at most `limit`) for running verifications to finish, so entries
    /// completed just before an unmount are sealed for the next mount.
    pub fn wait_for_verifications(&self, limit: Duration) {
        self.tiers.cache.wait_for_verifications(limit);
    }

    /// Bytes `offset..end` of `file` straight from its disk entry in one read, when every
    /// block they touch is known intact there ([`CacheEntry::all_checked`]): no checksum, no
    /// per-block buffers, no copy to join blocks. `None` (use the block path) otherwise, and
    /// for a read within one block that the memory tier holds.
    pub async fn read_known_range(
        &self,
        file: &crate::read::OpenObject,
        offset: u64,
        end: u64,
    ) -> Option<Bytes> {
        let entry = file.disk.as_ref()?;
        let first = self.block_key(&file.version, offset / self.tiers.block_size);
        self.tiers
            .cache
            .read_known(entry, &first, offset, end)
            .await
    }

    /// Notes that bytes `offset..end` of `file` were copied into a FUSE reply
    /// ([`crate::cache::Tiers::served`]).
    pub fn served(&self, file: &crate::read::OpenObject, offset: u64, end: u64) {
        if let Some(entry) = &file.disk {
            self.tiers.cache.served(entry, offset, end);
        }
    }

    /// Block `index` of `version`, from the fastest tier that has it, else fetched (once,
    /// however many callers want it at once) and stored.
    pub async fn block(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        let key = self.block_key(version, index);
        // Memory first: a hit needs neither the table nor a task.
        if let Some(hit) = self.tiers.cache.memory().get(&key).await {
            return Ok(hit);
        }
        let (block, _) = self.tiers.in_flight.join_or_start(&key, || {
            let (this, version, entry, key) =
                (self.clone(), version.clone(), entry.cloned(), key.clone());
            async move {
                let _slot = this.slot(priority).await;
                let found = this
                    .tiers
                    .cache
                    .look_up_below_memory(&key, entry.as_ref(), priority)
                    .await;
                this.or_fetch(&version, index, found, priority).await
            }
        });
        block.await
    }

    /// The block `found` in the tiers, or, on a miss, block `index` of `version` fetched and
    /// stored.
    async fn or_fetch(
        &self,
        version: &ObjectVersion,
        index: u64,
        found: Lookup,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        match found {
            Lookup::Hit(block) => Ok(block),
            Lookup::Miss(miss) => {
                let block = self.fetch(version, index, priority).await?;
                miss.store(&block).await;
                Ok(block)
            }
        }
    }

    /// Block `index` of `version` from S3, one ranged GET.
    async fn fetch(
        &self,
        version: &ObjectVersion,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        crate::metrics::metrics().fetched_block(priority.label());
        let bs = self.tiers.block_size;
        let range = index * bs..((index + 1) * bs).min(version.size);
        Ok(self.store.get_range(version, range).await?)
    }
}
