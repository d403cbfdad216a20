//! The memory tier: blocks in a `moka` cache bounded in bytes.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::TierStats;
use crate::error::FsError;

/// Identifies one block of one object version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Object key.
    pub key: Arc<str>,
    /// Object ETag.
    pub etag: Arc<str>,
    /// Block index.
    pub index: u64,
}

/// Hot blocks in memory, with single-flight loading.
pub struct MemoryTier {
    cache: moka::future::Cache<BlockKey, Bytes>,
    /// Counters of this tier.
    pub stats: Arc<TierStats>,
}

impl std::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("weighted_size", &self.cache.weighted_size())
            .finish_non_exhaustive()
    }
}

impl MemoryTier {
    /// A tier holding at most `capacity_bytes` of blocks.
    pub fn new(capacity_bytes: u64) -> MemoryTier {
        let stats = Arc::new(TierStats::default());
        let evictions = stats.clone();
        let cache = moka::future::Cache::builder()
            .weigher(|_key: &BlockKey, block: &Bytes| block.len().try_into().unwrap_or(u32::MAX))
            .max_capacity(capacity_bytes)
            .eviction_listener(move |_k, _v, cause| {
                if cause.was_evicted() {
                    TierStats::bump(&evictions.evictions);
                }
            })
            .build();
        MemoryTier { cache, stats }
    }

    /// The block for `key`: from memory, or from `load` (run once however many callers ask
    /// for the same block at the same time; failures are not cached).
    pub async fn get_or_load<F>(&self, key: BlockKey, load: F) -> Result<Bytes, FsError>
    where
        F: Future<Output = Result<Bytes, FsError>>,
    {
        if let Some(hit) = self.cache.get(&key).await {
            TierStats::bump(&self.stats.hits);
            return Ok(hit);
        }
        TierStats::bump(&self.stats.misses);
        self.cache
            .try_get_with(key, async {
                let bytes = load.await?;
                TierStats::bump(&self.stats.writes);
                Ok(bytes)
            })
            .await
            .map_err(|e: Arc<FsError>| (*e).clone())
    }
}
