//! The memory tier: blocks in a `moka` cache bounded in bytes.

use std::sync::Arc;

use bytes::Bytes;

use super::TierStats;

/// Identifies one block of one object version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Where the object lives (endpoint and bucket).
    pub origin: Arc<str>,
    /// Object key.
    pub key: Arc<str>,
    /// Object ETag.
    pub etag: Arc<str>,
    /// Block index.
    pub index: u64,
}

/// Hot blocks in memory. Clones share the same blocks.
#[derive(Clone)]
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
        // LRU, not moka's default TinyLFU admission: a model load streams blocks through
        // once, and the block just read is the one the next (unaligned) read needs; TinyLFU
        // rejects new blocks once the tier is full, so each such read went to disk again.
        let cache = moka::future::Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
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

    /// The block for `key`, if in memory (counted as a hit or a miss).
    pub async fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let hit = self.cache.get(key).await;
        TierStats::bump(if hit.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        });
        hit
    }

    /// The block for `key`, if in memory, without counting a hit or a miss (for a caller
    /// that has somewhere else to go first).
    pub async fn peek(&self, key: &BlockKey) -> Option<Bytes> {
        self.cache.get(key).await
    }

    /// Whether `key` is in memory (not counted as a hit or a miss).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.cache.contains_key(key)
    }

    /// Keeps `block` in memory.
    pub async fn insert(&self, key: BlockKey, block: Bytes) {
        TierStats::bump(&self.stats.writes);
        self.cache.insert(key, block).await;
    }
}
