//! Where a bucket's files live. Keys never become paths: an object's bytes are stored under
//! the hex SHA-256 of its key, so any S3 key (`a//b`, `../x`, 1024-byte segments, a key that
//! is also a "directory" of other keys) maps to one flat, safe file name.
//!
//! ```text
//! <root>/<bucket>/data/<sha256(key)>       object bytes
//! <root>/<bucket>/data/<sha256(key)>.meta  JSON sidecar (key, size, etag, last modified)
//! <root>/<bucket>/tmp/                     writes in progress, renamed into data/
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::error::{Result, StoreError};
use crate::encoding::hex;

/// Extension of sidecar files.
pub(crate) const SIDECAR_EXT: &str = "meta";

/// The directories of one bucket.
#[derive(Clone, Debug)]
pub(crate) struct BucketLayout {
    /// `<root>/<bucket>`.
    pub dir: PathBuf,
    /// `<root>/<bucket>/data`.
    pub data: PathBuf,
    /// `<root>/<bucket>/tmp`.
    pub tmp: PathBuf,
}

impl BucketLayout {
    /// The layout of bucket `name` under `root` (creates nothing).
    pub fn new(root: &Path, name: &str) -> BucketLayout {
        let dir = root.join(name);
        BucketLayout {
            data: dir.join("data"),
            tmp: dir.join("tmp"),
            dir,
        }
    }

    /// File name (in `data/`) of the object at `key`.
    pub fn object_name(key: &str) -> String {
        hex(&Sha256::digest(key.as_bytes()))
    }

    /// Path of the bytes of `key`.
    pub fn data_path(&self, key: &str) -> PathBuf {
        self.data.join(Self::object_name(key))
    }

    /// Path of the sidecar of `key`.
    pub fn sidecar_path(&self, key: &str) -> PathBuf {
        self.data
            .join(format!("{}.{SIDECAR_EXT}", Self::object_name(key)))
    }

    /// A fresh, unique path in `tmp/` with extension `ext`.
    pub fn temp_path(&self, ext: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let salt: u32 = rand::random();
        self.tmp
            .join(format!("{}-{n}-{salt:08x}.{ext}", std::process::id()))
    }
}

/// Checks that `name` can be a bucket directory: one plain path component.
///
/// This is looser than S3's own rules (s3s checks those for requests over HTTP); it only
/// guarantees the name cannot escape the store's root.
pub(crate) fn validate_bucket_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidBucketName {
            bucket: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_flat_and_distinct() {
        let layout = BucketLayout::new(Path::new("/r"), "b");
        let a = layout.data_path("a");
        let ab = layout.data_path("a/b");
        assert_ne!(a, ab);
        assert_eq!(a.parent(), Some(Path::new("/r/b/data")));
        assert_eq!(ab.parent(), Some(Path::new("/r/b/data")));
        assert_eq!(
            layout.data_path("../x").parent(),
            Some(Path::new("/r/b/data"))
        );
        assert!(layout
            .sidecar_path("a")
            .to_string_lossy()
            .ends_with(".meta"));
        assert_ne!(layout.temp_path("part"), layout.temp_path("part"));
    }

    #[test]
    fn bucket_names() {
        assert!(validate_bucket_name("models").is_ok());
        assert!(validate_bucket_name("my-bucket.v2").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "sp ace"] {
            assert!(validate_bucket_name(bad).is_err(), "{bad:?}");
        }
    }
}
