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
    /// The endpoint could not be reached: connection refused or reset, no such host, TLS.
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable {
        /// The endpoint URL or description.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The endpoint did not answer in time: no connection within the connect timeout, or no
    /// response headers within the first-byte timeout, on the last of the client's attempts.
    #[error("no answer from {endpoint} to {operation}: {message}")]
    NoAnswer {
        /// The endpoint URL or description.
        endpoint: String,
        /// The operation (`GetObject key`, `ListObjectsV2 prefix`…).
        operation: String,
        /// Which timeout expired, after how long.
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
    /// The service answered with an error worth retrying: a 5xx (`InternalError`,
    /// `ServiceUnavailable`), throttling (`503 SlowDown`, 429) or `RequestTimeout`.
    #[error("{operation}: HTTP {status}: {message}")]
    ServerError {
        /// The operation (`GetObject key`, `ListObjectsV2 prefix`…).
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The S3 error code and message (`SlowDown: Please reduce your request rate.`;
        /// empty when the answer had no body, as for HEAD).
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
    /// Whether trying again may succeed (the network or the service failed, not the request).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. }
                | StoreError::NoAnswer { .. }
                | StoreError::ShortBody { .. }
                | StoreError::Interrupted { .. }
                | StoreError::ServerError { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_transfers_and_retryable_answers_are_transient_the_rest_is_not() {
        let transient = [
            StoreError::Unreachable {
                endpoint: "http://x".into(),
                message: "refused".into(),
            },
            StoreError::NoAnswer {
                endpoint: "http://x".into(),
                operation: "GetObject k".into(),
                message: "no response headers within 5s".into(),
            },
            StoreError::ShortBody {
                key: "k".into(),
                expected: 2,
                received: 1,
            },
            StoreError::Interrupted {
                key: "k".into(),
                range: (0, 2),
                message: "reset".into(),
            },
            StoreError::ServerError {
                operation: "GetObject k".into(),
                status: 503,
                message: "SlowDown: Please reduce your request rate.".into(),
            },
        ];
        assert!(transient.iter().all(StoreError::is_transient));
        let lasting = [
            StoreError::NotFound { key: "k".into() },
            StoreError::PreconditionFailed {
                key: "k".into(),
                etag: "\"e\"".into(),
            },
            StoreError::AccessDenied {
                code: "AccessDenied".into(),
                message: "no".into(),
            },
            StoreError::Other {
                operation: "GetObject k".into(),
                message: "bad request".into(),
            },
        ];
        assert!(!lasting.iter().any(StoreError::is_transient));
        assert_eq!(
            transient[4].to_string(),
            "GetObject k: HTTP 503: SlowDown: Please reduce your request rate."
        );
    }
}
