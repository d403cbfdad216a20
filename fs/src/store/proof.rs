//! Read proofs: which object versions a volume's own credentials have been allowed to read
//! (a HeadObject or ranged GetObject answered), remembered for the metadata TTL.
//!
//! Bytes in the shared tiers (memory and disk) may have been fetched with another volume's
//! credentials; a volume opens a version only once its own credentials have proven they may
//! read it ([`crate::namespace::Namespace::open`] asks [`ObjectStore::proves_read`] and sends
//! a HeadObject otherwise). A GET of the volume's own (a header probe, a scan ahead) proves as
//! much as a HEAD, so the common path costs no extra request.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ObjectInfo, ObjectStore, ObjectVersion, RangeSink, StoreError, StoreOrigin};

/// Most proofs one volume remembers (about 100 bytes each).
const MAX_PROOFS: u64 = 100_000;

/// An [`ObjectStore`] that remembers which versions it was allowed to read.
pub struct ProvingStore {
    inner: Arc<dyn ObjectStore>,
    proofs: moka::sync::Cache<(String, String), ()>,
}

impl ProvingStore {
    /// Wraps `inner`; a proof holds for `ttl`.
    pub fn new(inner: Arc<dyn ObjectStore>, ttl: Duration) -> ProvingStore {
        ProvingStore {
            inner,
            proofs: moka::sync::Cache::builder()
                .max_capacity(MAX_PROOFS)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Forgets every proof: the volume's credentials were replaced, and what the old ones
    /// could read says nothing about the new ones.
    pub fn forget_proofs(&self) {
        self.proofs.invalidate_all();
    }

    fn proved(&self, key: &str, etag: &str) {
        self.proofs.insert((key.to_string(), etag.to_string()), ());
    }
}

#[async_trait]
impl ObjectStore for ProvingStore {
    async fn list_page(
        &self,
        prefix: &str,
        continuation_token: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.inner.list_page(prefix, continuation_token).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let info = self.inner.head(key).await?;
        self.proved(key, &info.etag);
        Ok(info)
    }

    async fn get_range(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let bytes = self.inner.get_range(version, range).await?;
        self.proved(&version.key, &version.etag);
        Ok(bytes)
    }

    async fn get_range_into(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), StoreError> {
        self.inner.get_range_into(version, range, sink).await?;
        self.proved(&version.key, &version.etag);
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn origin(&self) -> StoreOrigin {
        self.inner.origin()
    }

    fn throttles(&self) -> u64 {
        self.inner.throttles()
    }

    fn proves_read(&self, key: &str, etag: &str) -> bool {
        self.proofs
            .contains_key(&(key.to_string(), etag.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_head_or_a_get_proves_that_version_only() {
        let memory = Arc::new(MemoryStore::new());
        let a = memory.put("m/a.safetensors", vec![7u8; 100]).version();
        let etag = a.etag.to_string();
        memory.put("m/b.safetensors", vec![8u8; 100]);
        let store = ProvingStore::new(memory.clone(), Duration::from_secs(60));
        assert!(!store.proves_read("m/a.safetensors", &etag));
        store.get_range(&a, 0..10).await.unwrap();
        assert!(store.proves_read("m/a.safetensors", &etag));
        assert!(!store.proves_read("m/a.safetensors", "\"other-version\""));
        assert!(!store.proves_read("m/b.safetensors", &etag));
        let info = store.head("m/b.safetensors").await.unwrap();
        assert!(store.proves_read("m/b.safetensors", &info.etag));
        store.forget_proofs();
        assert!(!store.proves_read("m/a.safetensors", &etag));
        assert!(!store.proves_read("m/b.safetensors", &info.etag));
    }

    #[tokio::test]
    async fn a_refused_read_proves_nothing_and_proofs_expire() {
        let memory = Arc::new(MemoryStore::new());
        let current = memory.put("k", vec![1u8; 10]).version();
        let etag = current.etag.to_string();
        let store = ProvingStore::new(memory.clone(), Duration::from_millis(50));
        let stale = ObjectVersion {
            etag: "\"stale\"".into(),
            ..current
        };
        assert!(store.get_range(&stale, 0..1).await.is_err());
        assert!(!store.proves_read("k", &etag));
        store.head("k").await.unwrap();
        assert!(store.proves_read("k", &etag));
        std::thread::sleep(Duration::from_millis(120));
        assert!(!store.proves_read("k", &etag));
    }
}
