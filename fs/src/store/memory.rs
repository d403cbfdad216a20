//! An in-memory [`ObjectStore`] for unit tests: a sorted map of keys to bytes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{FullObjectChecksum, ListPage, ObjectInfo, ObjectStore, ObjectVersion, StoreError};

/// A bucket held in memory. ETags are a per-store counter, so every put makes a new version.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (ObjectInfo, Bytes)>>,
    next_version: AtomicU64,
    /// The ranges asked of `get_range`, in order (tests assert on them).
    ranges: Mutex<Vec<Range<u64>>>,
    /// Number of `list_page` calls served.
    pub lists: AtomicU64,
    /// Keys per listing page (small values exercise pagination).
    pub page_size: usize,
}

impl MemoryStore {
    /// An empty store with listing pages of 1000 entries.
    pub fn new() -> Self {
        MemoryStore {
            page_size: 1000,
            ..Default::default()
        }
    }

    /// Stores `data` under `key`, replacing any previous version.
    pub fn put(&self, key: &str, data: impl Into<Bytes>) -> ObjectInfo {
        let data = data.into();
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let info = ObjectInfo {
            key: key.to_string(),
            size: data.len() as u64,
            etag: format!("\"v{version}\""),
            last_modified: SystemTime::now(),
            checksum: None,
        };
        self.lock().insert(key.to_string(), (info.clone(), data));
        info
    }

    /// Gives `key`'s current version the full-object checksum `checksum` (what its HEAD then
    /// answers), whether or not it matches the bytes: tests of the checks use both.
    pub fn set_checksum(&self, key: &str, checksum: Option<FullObjectChecksum>) {
        if let Some((info, _)) = self.lock().get_mut(key) {
            info.checksum = checksum;
        }
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The ranges asked of [`ObjectStore::get_range`] so far, in order.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (ObjectInfo, Bytes)>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn list_page(
        &self,
        prefix: &str,
        continuation_token: Option<String>,
    ) -> Result<ListPage, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let objects = self.lock();
        let mut page = ListPage::default();
        let mut count = 0;
        for (key, (info, _)) in objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(after) = &continuation_token {
                // The token is the last key or common prefix handed out.
                if key <= after || (after.ends_with('/') && key.starts_with(after.as_str())) {
                    continue;
                }
            }
            let rest = &key[prefix.len()..];
            let emitted = match rest.find('/') {
                Some(i) => {
                    let cp = format!("{prefix}{}", &rest[..=i]);
                    if page.common_prefixes.last() == Some(&cp) {
                        continue;
                    }
                    page.common_prefixes.push(cp.clone());
                    cp
                }
                None => {
                    page.objects.push(info.clone());
                    key.clone()
                }
            };
            count += 1;
            if count == self.page_size.max(1) {
                page.next_continuation_token = Some(emitted);
                break;
            }
        }
        Ok(page)
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.lock()
            .get(key)
            .map(|(info, _)| info.clone())
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }

    async fn get_range(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(range.clone());
        let (key, if_match) = (&*version.key, &*version.etag);
        let objects = self.lock();
        let (info, data) = objects.get(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        if info.etag != if_match {
            return Err(StoreError::PreconditionFailed {
                key: key.to_string(),
                etag: if_match.to_string(),
            });
        }
        let end = range.end.min(info.size);
        if range.start > end {
            return Err(StoreError::ShortBody {
                key: key.to_string(),
                expected: range.end - range.start,
                received: 0,
            });
        }
        let bytes = data.slice(range.start as usize..end as usize);
        if bytes.len() as u64 != range.end - range.start {
            return Err(StoreError::ShortBody {
                key: key.to_string(),
                expected: range.end - range.start,
                received: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    fn describe(&self) -> String {
        "memory store".to_string()
    }

    fn origin(&self) -> super::StoreOrigin {
        super::StoreOrigin::new("memory://local", true, "memory")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(store: &MemoryStore, prefix: &str) -> (Vec<String>, Vec<String>) {
        let (mut keys, mut prefixes, mut token) = (vec![], vec![], None);
        loop {
            let page = store.list_page(prefix, token).await.unwrap();
            keys.extend(page.objects.into_iter().map(|o| o.key));
            prefixes.extend(page.common_prefixes);
            token = page.next_continuation_token;
            if token.is_none() {
                return (keys, prefixes);
            }
        }
    }

    #[tokio::test]
    async fn paginated_listing_groups_prefixes_once() {
        let mut store = MemoryStore::new();
        store.page_size = 2;
        for k in ["a", "b/1", "b/2", "b/3", "c", "d/1", "e"] {
            store.put(k, vec![0u8; 3]);
        }
        let (keys, prefixes) = list_all(&store, "").await;
        assert_eq!(keys, ["a", "c", "e"]);
        assert_eq!(prefixes, ["b/", "d/"]);
        let (keys, prefixes) = list_all(&store, "b/").await;
        assert_eq!(keys, ["b/1", "b/2", "b/3"]);
        assert!(prefixes.is_empty());
    }

    #[tokio::test]
    async fn get_range_checks_etag_and_length() {
        let store = MemoryStore::new();
        let version = store.put("k", b"hello world".to_vec()).version();
        let got = store.get_range(&version, 6..11).await.unwrap();
        assert_eq!(&got[..], b"world");
        let other = ObjectVersion {
            etag: "\"other\"".into(),
            ..version.clone()
        };
        assert!(matches!(
            store.get_range(&other, 0..1).await,
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert!(matches!(
            store.get_range(&version, 6..20).await,
            Err(StoreError::ShortBody { .. })
        ));
        assert_eq!(
            store.ranges(),
            [6..11, 0..1, 6..20],
            "every range asked, in order"
        );
    }
}
