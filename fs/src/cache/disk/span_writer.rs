//! [`SpanWriter`]: consecutive blocks of one entry stored while their download arrives.
//!
//! A sweep's 8 MiB GET used to be collected in memory and written when complete; by then its
//! bytes had left the CPU's caches, and writing them cost three times what copying them did
//! while they were fresh. The writer takes each piece of the body as it arrives, writes it at
//! its offset and folds it into its block's CRC (and its part of the version's full-object
//! checksum, so sealing reads nothing back). As each block is complete its record follows,
//! which makes it visible (readers waiting for the span may take it then); a torn or
//! abandoned download leaves bytes of its unfinished block that no reader will ever see.
//! The writes go through the page cache on purpose: `O_DIRECT` needs an aligned copy of each
//! block and page pinning, and cost the daemon more CPU per GiB than these writes save.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::{CacheEntry, DiskCache, Reservation};
use crate::store::ChecksumDigest;

/// Stores the blocks `blocks` of one entry from the pieces of their download.
#[derive(Debug)]
pub struct SpanWriter {
    cache: Arc<DiskCache>,
    entry: Arc<CacheEntry>,
    blocks: Range<u64>,
    /// Offsets of the span's bytes in the object.
    start: u64,
    end: u64,
    /// Bytes written so far, from `start`, by the current attempt.
    written: u64,
    /// The running CRC of the block being written.
    crc: crc_fast::Digest,
    /// The running part of the full-object checksum of the block being written, when the
    /// entry expects one to fold (see `folded`).
    part: Option<ChecksumDigest>,
    /// Blocks from the span's first stored so far (a retried download does not store them
    /// again).
    stored: u64,
    /// The span's bytes counted against the cache limit while it is being written.
    _reservation: Reservation,
}

impl SpanWriter {
    pub(super) fn new(
        cache: Arc<DiskCache>,
        entry: Arc<CacheEntry>,
        blocks: Range<u64>,
        reservation: Reservation,
    ) -> SpanWriter {
        let id = &entry.entry.id;
        let start = blocks.start * id.block_size;
        let end = (blocks.end * id.block_size).min(id.size);
        let part = entry.to_fold().map(|like| like.digest());
        SpanWriter {
            cache,
            entry,
            blocks,
            start,
            end,
            written: 0,
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            part,
            stored: 0,
            _reservation: reservation,
        }
    }

    /// The object offsets the span covers.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    /// How many of the span's blocks, from its first, are stored (visible to readers).
    pub fn blocks_stored(&self) -> u64 {
        self.stored
    }

    /// Writes `bytes`, the piece of the span at object offset `at`, and stores each block it
    /// completes. Pieces come in order; a piece at the span's start begins the span again (a
    /// retried download).
    pub fn push(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if at == self.start {
            self.written = 0;
            self.crc.reset();
            self.restart_part();
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
            self.crc.update(&rest[..take]);
            if let Some(part) = &mut self.part {
                part.update(&rest[..take]);
            }
            self.written += take as u64;
            rest = &rest[take..];
            if self.start + self.written == block_end {
                let crc = self.crc.finalize_reset() as u32;
                let part = self.part.as_ref().map(|part| part.finish().value());
                self.restart_part();
                let index = (block_end - 1) / bs;
                if index >= self.blocks.start + self.stored {
                    let result = self.entry.entry.write_records(index, &[crc]);
                    if !self.cache.written(&self.entry, index..index + 1, result) {
                        return Err(io::Error::other("cannot store a block's record"));
                    }
                    if let Some(part) = part {
                        self.entry.folded.record(index, part);
                    }
                    self.stored += 1;
                }
            }
        }
        Ok(())
    }

    /// Starts the next block's part of the full-object checksum.
    fn restart_part(&mut self) {
        if let Some(part) = &mut self.part {
            part.reset();
        }
    }

    /// Whether every block of the span is stored.
    pub fn finish(self) -> bool {
        self.stored == self.blocks.end - self.blocks.start
    }
}
