//! [`ObjectWriter`]: streams one object's bytes into a temporary file, hashing them as they
//! pass, then publishes the object atomically.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use md5::{Digest, Md5};

use super::checksum::{ChecksumWriter, ObjectChecksum};
use super::error::{Result, StoreError};
use super::meta::ObjectMeta;
use super::Bucket;
use crate::encoding::hex;

/// Size of the write buffer in front of the temporary file.
const WRITE_BUFFER: usize = 1 << 20;

/// A write in progress: bytes go to a temporary file in the bucket's `tmp/` directory and the
/// MD5 (the future ETag) is updated as they are written.
///
/// Nothing is visible to readers until [`ObjectWriter::commit`]; dropping the writer without
/// committing discards the temporary file.
pub struct ObjectWriter {
    bucket: Arc<Bucket>,
    key: String,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    md5: Md5,
    /// The full-object checksum: of the uploader's algorithm when it sent one, else CRC64NVME.
    checksum: ChecksumWriter,
    /// What the uploader said the checksum is.
    claimed: Option<ObjectChecksum>,
    size: u64,
    committed: bool,
}

impl ObjectWriter {
    /// Starts a write of `key` into `bucket`, checked against `claimed` at the commit.
    pub(crate) fn create(
        bucket: Arc<Bucket>,
        key: &str,
        claimed: Option<ObjectChecksum>,
    ) -> Result<ObjectWriter> {
        let checksum = ChecksumWriter::new(claimed);
        let tmp = bucket.layout.temp_path("part");
        let file =
            File::create(&tmp).map_err(StoreError::io("creating a temporary object file", &tmp))?;
        Ok(ObjectWriter {
            bucket,
            key: key.to_string(),
            tmp,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            md5: Md5::new(),
            checksum,
            claimed,
            size: 0,
            committed: false,
        })
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.size
    }

    /// Appends `data`, with a [`StoreError`] naming the temporary file on failure.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.write_all(data)
            .map_err(StoreError::io("writing a temporary object file", &self.tmp))
    }

    /// Publishes the object: renames the bytes, then the sidecar, into place and updates the
    /// index, all under the bucket's index lock so readers see either the old or the new
    /// object, whole.
    pub fn commit(mut self) -> Result<ObjectMeta> {
        let file = self.file.take().ok_or_else(|| StoreError::Io {
            context: "committing an object writer that already failed",
            path: self.tmp.clone(),
            source: io::Error::other("writer closed"),
        })?;
        let file = file.into_inner().map_err(|e| StoreError::Io {
            context: "flushing a temporary object file",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        drop(file);
        let checksum = self.checksum.finish();
        if let Some(claimed) = self.claimed.filter(|claimed| *claimed != checksum) {
            // Dropping the writer removes the temporary file.
            return Err(StoreError::BadDigest {
                key: self.key.clone(),
                algorithm: claimed.algorithm(),
            });
        }
        let digest = std::mem::take(&mut self.md5).finalize();
        let meta = ObjectMeta {
            key: self.key.clone(),
            size: self.size,
            etag: format!("\"{}\"", hex(&digest)),
            last_modified: SystemTime::now(),
            checksum: Some(checksum),
        };
        self.bucket.install(&meta, &self.tmp)?;
        self.committed = true;
        Ok(meta)
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("object writer is closed"))?;
        let n = file.write(buf)?;
        self.md5.update(&buf[..n]);
        self.checksum.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            // Best effort: a leftover is also removed when the store is next opened.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("bucket", &self.bucket.name)
            .field("key", &self.key)
            .field("tmp", &self.tmp)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}
