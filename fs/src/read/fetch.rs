//! *How* blocks arrive: the fetch engine. Memory, then disk, then one ranged GET with
//! `If-Match`; one request per block however many readers (and prefetchers) want it at once
//! (in-flight futures are shared); background fetches wait for a slot of a bounded pool while
//! demand reads never wait behind them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Semaphore;

use crate::cache::disk::CacheEntry;
use crate::cache::{BlockKey, DiskCache, MemoryTier};
use crate::error::FsError;
use crate::store::{ObjectStore, ObjectVersion};

/// Longest wait for another process's download of a block before fetching it ourselves.
const PEER_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);

/// Who wants a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A reader is waiting for it.
    Demand,
    /// Readahead or a whole-file sweep; waits for a background slot.
    Background,
}

type BlockFuture = Shared<BoxFuture<'static, Result<Bytes, FsError>>>;

/// The fetch engine shared by every open file of a mount.
pub struct Fetcher {
    store: Arc<dyn ObjectStore>,
    memory: MemoryTier,
    disk: Option<Arc<DiskCache>>,
    block_size: u64,
    background_slots: Arc<Semaphore>,
    in_flight: Mutex<HashMap<BlockKey, BlockFuture>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// An engine over `store` with the given tiers; at most `background` background fetches
    /// run at once.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        memory: MemoryTier,
        disk: Option<Arc<DiskCache>>,
        block_size: u64,
        background: usize,
    ) -> Fetcher {
        Fetcher {
            store,
            memory,
            disk,
            block_size,
            background_slots: Arc::new(Semaphore::new(background.max(1))),
            in_flight: Mutex::new(HashMap::new()),
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

    /// If `entry` is complete but not verified, checks every block's CRC on a blocking thread
    /// and seals it (see [`DiskCache::verify_complete`]); one verification at a time.
    pub fn verify_in_background(&self, entry: &Arc<CacheEntry>) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        if entry.is_verified() || !entry.start_verification() {
            return;
        }
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || {
            let complete = entry.entry.is_complete().unwrap_or(false);
            let verified = complete && disk.verify_complete(&entry);
            tracing::debug!(key = %entry.entry.id.key, complete, verified, "cache entry checked");
            entry.end_verification();
        });
    }

    /// Block `index` of `version`, from the fastest tier that has it.
    pub async fn block(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        let key = BlockKey {
            key: version.key.clone(),
            etag: version.etag.clone(),
            index,
        };
        if let Some(hit) = self.memory.get(&key).await {
            return Ok(hit);
        }
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match in_flight.get(&key) {
                Some(existing) => existing.clone(),
                None => {
                    let this = self.clone();
                    let (version, entry, key2) = (version.clone(), entry.cloned(), key.clone());
                    // Spawned: the fetch completes (and lands in the caches) even if every
                    // reader waiting for it goes away.
                    let task = tokio::spawn(async move {
                        let result = this.load(&version, entry.as_ref(), index, priority).await;
                        if let Ok(bytes) = &result {
                            // With a disk tier, background blocks are read from disk later;
                            // only blocks a reader asked for take memory.
                            if priority == Priority::Demand
                                || this.disk.is_none()
                                || entry.is_none()
                            {
                                this.memory.insert(key2.clone(), bytes.clone()).await;
                            }
                        }
                        this.in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key2);
                        result
                    });
                    let fut: BoxFuture<'static, Result<Bytes, FsError>> = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(FsError::Store(crate::store::StoreError::Other {
                                operation: "block fetch".into(),
                                message: e.to_string(),
                            }))
                        })
                    }
                    .boxed();
                    let shared = fut.shared();
                    in_flight.insert(key, shared.clone());
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
    ) -> Result<Bytes, FsError> {
        let _slot = match priority {
            Priority::Background => self.background_slots.clone().acquire_owned().await.ok(),
            Priority::Demand => None,
        };
        let (Some(cache), Some(entry)) = (&self.disk, entry) else {
            return self.fetch(version, index, priority).await;
        };
        let from_disk = |cache: Arc<DiskCache>, entry: Arc<CacheEntry>| async move {
            tokio::task::spawn_blocking(move || cache.read_block(&entry, index))
                .await
                .ok()
                .flatten()
        };
        if let Some(bytes) = from_disk(cache.clone(), entry.clone()).await {
            return Ok(Bytes::from(bytes));
        }
        let _download = cache.lock_block(entry, index, PEER_DOWNLOAD_WAIT).await;
        if let Some(bytes) = from_disk(cache.clone(), entry.clone()).await {
            return Ok(Bytes::from(bytes));
        }
        let bytes = self.fetch(version, index, priority).await?;
        let (cache, entry, stored) = (cache.clone(), entry.clone(), bytes.clone());
        let _ =
            tokio::task::spawn_blocking(move || cache.write_block(&entry, index, &stored)).await;
        Ok(bytes)
    }

    async fn fetch(
        &self,
        version: &ObjectVersion,
        index: u64,
        priority: Priority,
    ) -> Result<Bytes, FsError> {
        crate::metrics::metrics().fetched_block(match priority {
            Priority::Demand => "demand",
            Priority::Background => "background",
        });
        let bs = self.block_size;
        let range = index * bs..((index + 1) * bs).min(version.size);
        Ok(self
            .store
            .get_range(&version.key, range, &version.etag)
            .await?)
    }
}
