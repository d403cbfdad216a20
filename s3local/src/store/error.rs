//! Errors of the object store.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a [`FileStore`](super::FileStore) operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bucket does not exist.
    #[error("no such bucket: {bucket:?}")]
    NoSuchBucket {
        /// The bucket asked for.
        bucket: String,
    },
    /// The key does not exist in the bucket.
    #[error("no such key {key:?} in bucket {bucket:?}")]
    NoSuchKey {
        /// The bucket asked for.
        bucket: String,
        /// The key asked for.
        key: String,
    },
    /// The bucket name cannot be used (it must be one safe path component).
    #[error("invalid bucket name {bucket:?}: {reason}")]
    InvalidBucketName {
        /// The rejected name.
        bucket: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The bucket still holds objects.
    #[error("bucket {bucket:?} is not empty")]
    BucketNotEmpty {
        /// The bucket asked for.
        bucket: String,
    },
    /// A file-system operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The content does not match the checksum the uploader sent with it (S3's `BadDigest`);
    /// nothing was stored.
    #[error("the content of {key:?} does not match its {algorithm} checksum")]
    BadDigest {
        /// The key being written.
        key: String,
        /// The checksum's algorithm (`crc64nvme`, `crc32c`, `crc32`).
        algorithm: &'static str,
    },
    /// The reader (or request body) supplying an object's bytes failed.
    #[error("reading the content of {key:?}: {source}")]
    Body {
        /// The key being written.
        key: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// A closure turning an [`io::Error`] into [`StoreError::Io`] with context.
    pub(crate) fn io(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            context,
            path,
            source,
        }
    }
}

impl From<StoreError> for io::Error {
    fn from(err: StoreError) -> io::Error {
        let kind = match &err {
            StoreError::NoSuchBucket { .. } | StoreError::NoSuchKey { .. } => {
                io::ErrorKind::NotFound
            }
            StoreError::InvalidBucketName { .. } | StoreError::BadDigest { .. } => {
                io::ErrorKind::InvalidInput
            }
            StoreError::BucketNotEmpty { .. } => io::ErrorKind::DirectoryNotEmpty,
            StoreError::Io { source, .. } | StoreError::Body { source, .. } => source.kind(),
        };
        io::Error::new(kind, err)
    }
}
