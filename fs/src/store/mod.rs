//! The seam between the filesystem and S3: the [`ObjectStore`] trait and its implementations.
//!
//! Everything above this module talks to the trait only, so the namespace and the read path
//! can be tested against [`MemoryStore`], and end-to-end tests use [`S3Store`] against a real
//! S3 protocol server.

mod checksum;
mod credentials;
mod error;
#[cfg(any(test, feature = "test-util"))]
mod memory;
mod origin;
mod proof;
mod s3;
mod throttle;

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use checksum::{ChecksumDigest, ChecksumHeaders, FullObjectChecksum};
pub use credentials::{ReplaceableCredentials, SessionCredentials};
pub use error::StoreError;
#[cfg(any(test, feature = "test-util"))]
pub use memory::MemoryStore;
pub use origin::{normalize_endpoint, StoreOrigin};
pub use proof::ProvingStore;
pub use s3::{S3Config, S3Store};

/// What a listing or a HEAD says about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full object key.
    pub key: String,
    /// The object's size in bytes.
    pub size: u64,
    /// The object's ETag as S3 returns it (with its quotes).
    pub etag: String,
    /// When the object was last written.
    pub last_modified: SystemTime,
    /// The object's full-object checksum, when a HeadObject brought one (listings never do).
    pub checksum: Option<FullObjectChecksum>,
}

impl ObjectInfo {
    /// The version this answer describes, to pin and read.
    pub fn version(&self) -> ObjectVersion {
        ObjectVersion {
            key: self.key.as_str().into(),
            etag: self.etag.as_str().into(),
            size: self.size,
            checksum: self.checksum,
        }
    }
}

/// One version of one object, pinned by an open: every read of the handle asks for exactly
/// this ETag, so a handle never mixes bytes of two versions.
///
/// Two values are the same version when key, ETag and size agree: the checksum is what is
/// known about the version (an open that pinned it from a listing knows none), not part of it.
#[derive(Clone, Debug)]
pub struct ObjectVersion {
    /// The full object key.
    pub key: Arc<str>,
    /// The ETag pinned at open.
    pub etag: Arc<str>,
    /// The size of this version in bytes.
    pub size: u64,
    /// S3's full-object checksum of this version, when the HeadObject that pinned it gave one.
    pub checksum: Option<FullObjectChecksum>,
}

impl PartialEq for ObjectVersion {
    fn eq(&self, other: &Self) -> bool {
        (&self.key, &self.etag, self.size) == (&other.key, &other.etag, other.size)
    }
}

impl Eq for ObjectVersion {}

impl std::hash::Hash for ObjectVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.key, &self.etag, self.size).hash(state);
    }
}

/// One page of a `ListObjectsV2` with a delimiter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects directly under the prefix.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (each ends with the delimiter).
    pub common_prefixes: Vec<String>,
    /// The token for the next page, if the listing is truncated.
    pub next_continuation_token: Option<String>,
}

/// Where [`ObjectStore::get_range_into`] hands a body: each piece with its offset in the
/// object.
pub type RangeSink<'a> = dyn for<'b> FnMut(u64, &'b [u8]) -> Result<(), StoreError> + Send + 'a;

/// A read-only view of one bucket.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Lists one page of keys under `prefix`, grouped by `/` into common prefixes.
    async fn list_page(
        &self,
        prefix: &str,
        continuation_token: Option<String>,
    ) -> Result<ListPage, StoreError>;

    /// Reads the metadata of one object.
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;

    /// Reads `range` of `version`'s object, but only if its ETag still equals the pinned one.
    /// The returned buffer always holds exactly `range.end - range.start` bytes.
    async fn get_range(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError>;

    /// Reads `range` like [`ObjectStore::get_range`], handing the body to `sink` piece by
    /// piece as it arrives, each with its offset in the object, so a caller can store the
    /// bytes while they are still in the CPU's cache instead of collecting them first. An
    /// attempt that fails part-way is retried from `range.start`: `sink` then sees that offset
    /// again and must start over. An error from `sink` ends the read (not retried).
    async fn get_range_into(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
        sink: &mut RangeSink<'_>,
    ) -> Result<(), StoreError> {
        let bytes = self.get_range(version, range.clone()).await?;
        sink(range.start, &bytes)
    }

    /// A short human description (`s3://bucket at https://endpoint`) for messages.
    fn describe(&self) -> String;

    /// Whether this store's own credentials were allowed to read version `etag` of `key`
    /// recently (see [`ProvingStore`]); stores that keep no record say no, and an open then
    /// asks S3 with a HeadObject.
    fn proves_read(&self, _key: &str, _etag: &str) -> bool {
        false
    }

    /// Throttling answers (`503`, `429`) this store's requests have had so far, every attempt
    /// counted: sweeps ask for larger spans while it grows (see `read::span_size`). Stores
    /// that are never throttled keep the default.
    fn throttles(&self) -> u64 {
        0
    }

    /// Where the bytes come from, normalized: caches key blocks by it, so stores reading
    /// through different endpoints (or addressing styles) never share cached bytes. A store
    /// that talks to a network endpoint must override this; the default, for stores in
    /// tests, takes the description as the endpoint.
    fn origin(&self) -> StoreOrigin {
        StoreOrigin {
            endpoint: self.describe(),
            path_style: true,
            bucket: String::new(),
        }
    }
}
