//! [`SpanWriter`]: consecutive blocks of one entry stored while their download arrives.
//!
//! A sweep's 8 MiB GET used to be collected in memory and written when complete; by then its
//! bytes had left the CPU's caches, and writing them cost three times what copying them did
//! while they were fresh. The writer takes each piece of the body as it arrives, writes it at
//! its offset and folds it into its block's CRC. Only when every block of the span is written
//! do the records that make them visible follow, so a torn or abandoned download leaves
//! bytes that no reader will ever see (the sparse file's holes, or stale bytes, unnamed).

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::{CacheEntry, DiskCache};

/// Stores the blocks `blocks` of one entry from the pieces of their download.
#[derive(Debug)]
pub struct SpanWriter {
    cache: Arc<DiskCache>,
    entry: Arc<CacheEntry>,
    blocks: Range<u64>,
    /// Offsets of the span's bytes in the object.
    start: u64,
    end: u64,
    /// Bytes written so far, from `start`.
    written: u64,
    /// CRCs of the blocks completed so far, and the running CRC of the current block.
    crcs: Vec<u32>,
    crc: u32,
}

impl SpanWriter {
    pub(super) fn new(
        cache: Arc<DiskCache>,
        entry: Arc<CacheEntry>,
        blocks: Range<u64>,
    ) -> SpanWriter {
        let id = &entry.entry.id;
        let start = blocks.start * id.block_size;
        let end = (blocks.end * id.block_size).min(id.size);
        SpanWriter {
            crcs: Vec::with_capacity((blocks.end - blocks.start) as usize),
            cache,
            entry,
            blocks,
            start,
            end,
            written: 0,
            crc: 0,
        }
    }

    /// The object offsets the span covers.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    /// Writes `bytes`, the piece of the span at object offset `at`. Pieces come in order; a
    /// piece at the span's start begins the span again (a retried download).
    pub fn push(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if at == self.start {
            self.written = 0;
            self.crcs.clear();
            self.crc = 0;
        }
        if at != self.start + self.written || at + bytes.len() as u64 > self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "piece at {at} (+{}) does not continue the span {}..{} written to {}",
                    bytes.len(),
                    self.start,
                    self.end,
                    self.start + self.written
                ),
            ));
        }
        self.entry.entry.write_data(at, bytes)?;
        let bs = self.entry.entry.id.block_size;
        let mut rest = bytes;
        while !rest.is_empty() {
            let pos = self.start + self.written;
            let block_end = ((pos / bs + 1) * bs).min(self.end);
            let take = rest.len().min((block_end - pos) as usize);
            self.crc = crc32c::crc32c_append(self.crc, &rest[..take]);
            self.written += take as u64;
            rest = &rest[take..];
            if self.start + self.written == block_end {
                self.crcs.push(std::mem::take(&mut self.crc));
            }
        }
        Ok(())
    }

    /// Makes the blocks visible once every byte of the span is written. Returns whether they
    /// are on disk now; an incomplete span stores nothing.
    pub fn finish(self) -> bool {
        if self.start + self.written != self.end {
            return false;
        }
        let result = self
            .entry
            .entry
            .write_records(self.blocks.start, &self.crcs);
        self.cache.written(&self.entry, self.blocks.clone(), result)
    }
}
