//! The header probe's fetch: the first bytes of a block for a reader that needs only those
//! now (a safetensors header), answered from a small GET while a second GET, made at the
//! same time, brings the rest of the block; the two are joined and stored like any block
//! (the same bytes in total as one GET of the block).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::Fetcher;
use crate::cache::disk::CacheEntry;
use crate::cache::{Lookup, Priority};
use crate::error::FsError;
use crate::store::{ObjectVersion, StoreError};

impl Fetcher {
    /// The first `prefix_len` bytes of block `index` of `version`, from the tiers when they
    /// hold it, else from the first of two ranged GETs made at once (see the module doc).
    /// Readers of the whole block meanwhile wait for the joined block.
    pub async fn block_prefix(
        self: &Arc<Self>,
        version: &ObjectVersion,
        entry: Option<&Arc<CacheEntry>>,
        index: u64,
        prefix_len: u64,
    ) -> Result<Bytes, FsError> {
        let bs = self.tiers.block_size;
        let block_len = version.size.saturating_sub(index * bs).min(bs);
        let prefix_len = prefix_len.min(block_len) as usize;
        if prefix_len as u64 == block_len {
            return self.block(version, entry, index, Priority::Demand).await;
        }
        let key = self.block_key(version, index);
        if let Some(hit) = self.tiers.cache.memory().get(&key).await {
            return Ok(hit.slice(..prefix_len.min(hit.len())));
        }
        let (prefix_tx, prefix_rx) = oneshot::channel();
        let (block, started) = self.tiers.in_flight.join_or_start(&key, || {
            let (this, version, entry, key) =
                (self.clone(), version.clone(), entry.cloned(), key.clone());
            async move {
                let found = this
                    .tiers
                    .cache
                    .look_up_below_memory(&key, entry.as_ref(), Priority::Demand)
                    .await;
                match found {
                    Lookup::Hit(block) => {
                        let _ = prefix_tx.send(Ok(block.slice(..prefix_len.min(block.len()))));
                        Ok(block)
                    }
                    Lookup::Miss(miss) => {
                        let block = this
                            .load_in_two(&version, index, prefix_len as u64, prefix_tx)
                            .await?;
                        miss.store(&block).await;
                        Ok(block)
                    }
                }
            }
        });
        if !started {
            let block = block.await?;
            return Ok(block.slice(..prefix_len.min(block.len())));
        }
        prefix_rx.await.unwrap_or_else(|_| {
            Err(FsError::Store(StoreError::Other {
                operation: "block fetch".into(),
                message: "the fetch ended before its first bytes arrived".into(),
            }))
        })
    }

    /// Block `index` of `version` as two ranged GETs made at once: the prefix (sent to
    /// `prefix_tx` as soon as it arrives) and the rest; returns them joined.
    async fn load_in_two(
        &self,
        version: &ObjectVersion,
        index: u64,
        prefix_len: u64,
        prefix_tx: oneshot::Sender<Result<Bytes, FsError>>,
    ) -> Result<Bytes, FsError> {
        let bs = self.tiers.block_size;
        let start = index * bs;
        let end = ((index + 1) * bs).min(version.size);
        crate::metrics::metrics().fetched_block(Priority::Demand.label());
        // Both GETs at once: the rest costs no more latency than the prefix.
        let prefix = async {
            let prefix = self
                .store
                .get_range(version, start..start + prefix_len)
                .await
                .map_err(FsError::from);
            let _ = prefix_tx.send(prefix.clone());
            prefix
        };
        let rest = self.store.get_range(version, start + prefix_len..end);
        let (prefix, rest) = tokio::join!(prefix, rest);
        let (prefix, rest) = (prefix?, rest?);
        let mut block = BytesMut::with_capacity((end - start) as usize);
        block.extend_from_slice(&prefix);
        block.extend_from_slice(&rest);
        Ok(block.freeze())
    }
}
