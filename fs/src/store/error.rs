//! Errors from the object store, classified by what the caller can do about them.

/// An object-store failure, with the key or endpoint it concerns.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// The bucket does not exist.
    #[error("bucket {bucket} does not exist")]
    NoSuchBucket {
        /// The bucket name.
        bucket: String,
    },
    /// `If-Match` failed: the object has a new version.
    #[error("object {key} no longer has ETag {etag}")]
    PreconditionFailed {
        /// The key asked for.
        key: String,
        /// The ETag that no longer matches.
        etag: String,
    },
    /// The request was refused: bad or missing credentials, or no permission.
    #[error("access denied ({code}): {message}")]
    AccessDenied {
        /// The S3 error code (`AccessDenied`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`…).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The endpoint could not be reached or timed out.
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable {
        /// The endpoint URL or description.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The response body was shorter or longer than the range asked for.
    #[error("object {key}: expected {expected} bytes, received {received}")]
    ShortBody {
        /// The key read.
        key: String,
        /// Bytes asked for.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The response body broke off: connection reset, stalled, or an I/O error mid-body.
    #[error("object {key} bytes {}-{}: transfer interrupted: {message}", range.0, range.1)]
    Interrupted {
        /// The key read.
        key: String,
        /// The byte range asked for.
        range: (u64, u64),
        /// What happened.
        message: String,
    },
    /// Anything else, with the operation and the server's words.
    #[error("{operation} failed: {message}")]
    Other {
        /// The operation (`GetObject key`, `ListObjectsV2 prefix`…).
        operation: String,
        /// The error message.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again may succeed (the network, not the request, failed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. }
                | StoreError::ShortBody { .. }
                | StoreError::Interrupted { .. }
        )
    }
}
