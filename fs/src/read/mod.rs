//! The read path: fixed-size blocks of a pinned object version, fetched by ranged GETs with
//! `If-Match`, kept in a byte-bounded memory cache.
//!
//! A FUSE read of `offset..offset+len` is split into block indices. Each block is looked up in
//! the cache; a miss fetches exactly that block's byte range. Concurrent readers of one block
//! share one request (the cache's `try_get_with` is single-flight). A [`Readahead`] per open
//! file decides which following blocks to fetch in the background, bounded by a semaphore.
//!
//! Cache keys include the ETag, so a block of one version is never served for another.

mod readahead;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use tokio::sync::Semaphore;

pub use readahead::Readahead;

use crate::cache::disk::{CacheEntry, EntryId};
use crate::cache::{BlockKey, DiskCache, MemoryTier};
use crate::error::FsError;
use crate::store::{ObjectStore, ObjectVersion};

/// Longest wait for another process's download of a block before fetching it ourselves.
const PEER_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);

/// Tunables of the read path.
#[derive(Clone, Debug)]
pub struct ReadConfig {
    /// Bytes per block: the unit of fetching and caching.
    pub block_size: u64,
    /// Memory cache budget in bytes.
    pub memory_cache_bytes: u64,
    /// Largest readahead window, in blocks.
    pub max_readahead_blocks: u64,
    /// Most background block fetches in flight at once (across all files).
    pub prefetch_concurrency: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            block_size: 1 << 20,
            memory_cache_bytes: 512 << 20,
            max_readahead_blocks: 32,
            prefetch_concurrency: 16,
        }
    }
}

/// One open file: its pinned version, its disk cache entry (if any) and its access pattern.
#[derive(Debug)]
pub struct OpenObject {
    /// The version every read of this handle returns.
    pub version: ObjectVersion,
    /// The version's disk cache entry, held (and so protected from eviction) while open.
    pub disk: Option<Arc<CacheEntry>>,
    readahead: Mutex<Readahead>,
}

/// Reads byte ranges of pinned object versions through the cache tiers: memory, then disk,
/// then S3.
pub struct BlockReader {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    memory: MemoryTier,
    disk: Option<Arc<DiskCache>>,
    config: ReadConfig,
    prefetch_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for BlockReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockReader")
            .field("config", &self.config)
            .field("disk", &self.disk.as_ref().map(|d| d.root().to_path_buf()))
            .finish_non_exhaustive()
    }
}

impl BlockReader {
    /// A reader over `bucket` in `store`, with an optional disk tier.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        bucket: &str,
        config: ReadConfig,
        disk: Option<Arc<DiskCache>>,
    ) -> Arc<BlockReader> {
        Arc::new(BlockReader {
            store,
            bucket: bucket.to_string(),
            memory: MemoryTier::new(config.memory_cache_bytes),
            disk,
            prefetch_slots: Arc::new(Semaphore::new(config.prefetch_concurrency.max(1))),
            config,
        })
    }

    /// The memory tier (for its counters).
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The disk tier, if configured.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }

    /// Starts reading `version`: opens (or creates) its disk cache entry.
    pub async fn open(&self, version: ObjectVersion) -> OpenObject {
        let disk = match &self.disk {
            Some(cache) if version.size > 0 => {
                let cache = cache.clone();
                let id = EntryId {
                    bucket: self.bucket.clone(),
                    key: version.key.to_string(),
                    etag: version.etag.to_string(),
                    size: version.size,
                    block_size: self.config.block_size,
                };
                tokio::task::spawn_blocking(move || cache.entry(&id))
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        OpenObject {
            version,
            disk,
            readahead: Mutex::new(Readahead::default()),
        }
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(
        self: &Arc<Self>,
        file: &Arc<OpenObject>,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, FsError> {
        let size = file.version.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(len).min(size);
        let bs = self.config.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);

        let ahead = file
            .readahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(
                offset,
                end,
                bs,
                self.config.max_readahead_blocks,
                size.div_ceil(bs),
            );
        for index in ahead {
            self.spawn_prefetch(file.clone(), index);
        }

        let blocks = try_join_all((first..=last).map(|index| self.block(file, index))).await?;
        if let [block] = blocks.as_slice() {
            let start = (offset - first * bs) as usize;
            return Ok(block.slice(start..start + (end - offset) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (index, block) in (first..=last).zip(blocks) {
            let block_start = index * bs;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// One block: memory, else disk, else S3 (stored on disk on the way back). One request
    /// per block however many readers in this process wait for it; other processes sharing
    /// the disk cache wait for our download instead of making their own.
    async fn block(self: &Arc<Self>, file: &Arc<OpenObject>, index: u64) -> Result<Bytes, FsError> {
        let key = BlockKey {
            key: file.version.key.clone(),
            etag: file.version.etag.clone(),
            index,
        };
        let this = self.clone();
        let file = file.clone();
        self.memory
            .get_or_load(key, async move { this.load(&file, index).await })
            .await
    }

    async fn load(&self, file: &OpenObject, index: u64) -> Result<Bytes, FsError> {
        let (Some(cache), Some(entry)) = (&self.disk, &file.disk) else {
            return self.fetch(&file.version, index).await;
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
        let bytes = self.fetch(&file.version, index).await?;
        let (cache, entry, stored) = (cache.clone(), entry.clone(), bytes.clone());
        let _ =
            tokio::task::spawn_blocking(move || cache.write_block(&entry, index, &stored)).await;
        Ok(bytes)
    }

    async fn fetch(&self, version: &ObjectVersion, index: u64) -> Result<Bytes, FsError> {
        let bs = self.config.block_size;
        let range = index * bs..((index + 1) * bs).min(version.size);
        Ok(self
            .store
            .get_range(&version.key, range, &version.etag)
            .await?)
    }

    fn spawn_prefetch(self: &Arc<Self>, file: Arc<OpenObject>, index: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_slot) = this.prefetch_slots.clone().acquire_owned().await else {
                return;
            };
            if let Err(e) = this.block(&file, index).await {
                tracing::debug!(key = %file.version.key, index, "prefetch failed: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::Ordering;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn reader(store: Arc<MemoryStore>, block_size: u64) -> Arc<BlockReader> {
        BlockReader::new(
            store,
            "bucket",
            ReadConfig {
                block_size,
                memory_cache_bytes: 1 << 20,
                max_readahead_blocks: 4,
                prefetch_concurrency: 4,
            },
            None,
        )
    }

    fn version(info: &crate::store::ObjectInfo) -> ObjectVersion {
        ObjectVersion {
            key: info.key.as_str().into(),
            etag: info.etag.as_str().into(),
            size: info.size,
        }
    }

    #[tokio::test]
    async fn reads_across_block_boundaries_are_byte_exact() {
        let store = Arc::new(MemoryStore::new());
        let data = pattern(10_000);
        let info = store.put("obj", data.clone());
        let reader = reader(store, 1000);
        let file = Arc::new(reader.open(version(&info)).await);
        for (offset, len) in [(0, 10), (995, 10), (0, 10_000), (2500, 3333), (9990, 100)] {
            let got = reader.read(&file, offset, len).await.unwrap();
            let end = (offset + len).min(10_000) as usize;
            assert_eq!(&got[..], &data[offset as usize..end], "{offset}+{len}");
        }
        assert!(reader.read(&file, 10_000, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn cached_blocks_are_not_fetched_twice() {
        let store = Arc::new(MemoryStore::new());
        let info = store.put("obj", pattern(4000));
        let reader = reader(store.clone(), 1000);
        let file = Arc::new(reader.open(version(&info)).await);
        reader.read(&file, 3000, 500).await.unwrap(); // a jump: no readahead
        let gets = store.gets.load(Ordering::Relaxed);
        reader.read(&file, 3100, 100).await.unwrap();
        assert_eq!(store.gets.load(Ordering::Relaxed), gets);
    }

    #[tokio::test]
    async fn a_new_version_fails_reads_of_the_pinned_one() {
        let store = Arc::new(MemoryStore::new());
        let info = store.put("obj", pattern(4000));
        let reader = reader(store.clone(), 1000);
        let file = Arc::new(reader.open(version(&info)).await);
        reader.read(&file, 3000, 10).await.unwrap();
        store.put("obj", vec![1u8; 4000]);
        let err = reader.read(&file, 0, 10).await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE);
        // Blocks already read from the pinned version stay consistent with it.
        let again = reader.read(&file, 3000, 10).await.unwrap();
        assert_eq!(&again[..], &pattern(4000)[3000..3010]);
    }
}
