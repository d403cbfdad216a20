//! Filesystem errors and their one mapping to errno.

use crate::store::StoreError;

/// An error seen by a filesystem operation. [`FsError::errno`] is the only place where
/// errors become errno values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// No entry of that name (or inode number) exists.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// A directory operation on a file.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// A file operation on a directory.
    #[error("is a directory: {0}")]
    IsADirectory(String),
    /// The filesystem is read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// The object changed in the bucket after it was opened; the open handle is stale.
    #[error("object {key} changed since it was opened (pinned ETag {etag})")]
    Stale {
        /// The object key.
        key: String,
        /// The ETag pinned at open time.
        etag: String,
    },
    /// Another version of the object is still open by passthrough; this one opens once
    /// those files close.
    #[error(
        "another version of {key} is still open (passthrough); it opens once those files close"
    )]
    VersionBusy {
        /// The object key.
        key: String,
    },
    /// No extended attribute of that name (modelfs has none).
    #[error("no such extended attribute")]
    NoAttribute,
    /// An unknown file or directory handle.
    #[error("bad file handle {0}")]
    BadHandle(u64),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::Stale { .. } | FsError::VersionBusy { .. } => libc::ESTALE,
            FsError::NoAttribute => libc::ENODATA,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Store(e) => match e {
                StoreError::NotFound { .. } => libc::ENOENT,
                StoreError::PreconditionFailed { .. } => libc::ESTALE,
                StoreError::AccessDenied { .. } => libc::EACCES,
                _ => libc::EIO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_objects_map_to_estale_and_store_failures_to_eio() {
        let stale = FsError::Store(StoreError::PreconditionFailed {
            key: "k".into(),
            etag: "\"e\"".into(),
        });
        assert_eq!(stale.errno(), libc::ESTALE);
        let io = FsError::Store(StoreError::Unreachable {
            endpoint: "http://x".into(),
            message: "refused".into(),
        });
        assert_eq!(io.errno(), libc::EIO);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
    }
}
