//! Reusable buffers for blocks collected in memory (a streamed load's blocks).
//!
//! A block copied into freshly allocated memory pays a page fault and a zeroed page per
//! 4 KiB before the copy; a buffer that held an earlier block is resident already. A buffer
//! comes back when the last [`Bytes`] of its block is dropped, and the pool keeps up to a
//! fixed number of them for the next blocks.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam::queue::ArrayQueue;

/// Blocks' buffers kept for reuse. At most its capacity of them wait in the pool; the others
/// are freed when their block goes.
#[derive(Debug)]
pub struct BlockBuffers {
    spare: ArrayQueue<Vec<u8>>,
    block_size: usize,
}

impl BlockBuffers {
    /// A pool of buffers of `block_size` bytes that keeps up to `spare` unused ones.
    pub fn new(block_size: u64, spare: usize) -> Arc<BlockBuffers> {
        Arc::new(BlockBuffers {
            spare: ArrayQueue::new(spare.max(1)),
            block_size: block_size as usize,
        })
    }

    /// An empty buffer for one block: a spare one when the pool has it.
    pub fn take(self: &Arc<Self>) -> BlockBuffer {
        let bytes = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.block_size));
        BlockBuffer {
            bytes,
            pool: self.clone(),
        }
    }

    /// Unused buffers waiting in the pool.
    #[cfg(test)]
    pub fn spare(&self) -> usize {
        self.spare.len()
    }

    fn give_back(&self, mut bytes: Vec<u8>) {
        if bytes.capacity() == self.block_size {
            bytes.clear();
            // A full pool frees the buffer.
            let _ = self.spare.push(bytes);
        }
    }
}

/// A block's buffer being filled; [`BlockBuffer::freeze`] makes it the block's [`Bytes`],
/// which give the buffer back to its pool when the last of them is dropped.
#[derive(Debug)]
pub struct BlockBuffer {
    bytes: Vec<u8>,
    pool: Arc<BlockBuffers>,
}

impl BlockBuffer {
    /// Appends `piece`.
    pub fn extend_from_slice(&mut self, piece: &[u8]) {
        self.bytes.extend_from_slice(piece);
    }

    /// The block's bytes.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for BlockBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for BlockBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_dropped_gives_its_buffer_to_the_next_one() {
        let pool = BlockBuffers::new(4096, 1);
        let mut first = pool.take();
        first.extend_from_slice(&[7u8; 4096]);
        let address = first.as_ref().as_ptr();
        let bytes = first.freeze();
        let copy = bytes.slice(100..200);
        drop(bytes);
        assert_eq!(
            pool.spare(),
            0,
            "a slice of the block still holds the buffer"
        );
        assert_eq!(&copy[..], &[7u8; 100][..]);
        drop(copy);
        assert_eq!(pool.spare(), 1);
        let mut next = pool.take();
        assert!(next.as_ref().is_empty(), "a reused buffer starts empty");
        next.extend_from_slice(&[1u8; 10]);
        assert_eq!(next.as_ref().as_ptr(), address, "the same memory, reused");
        assert_eq!(next.freeze().len(), 10);
    }

    #[test]
    fn a_full_pool_frees_what_it_cannot_keep() {
        let pool = BlockBuffers::new(1024, 1);
        let (a, b) = (pool.take(), pool.take());
        drop(a);
        drop(b);
        assert_eq!(pool.spare(), 1);
    }
}
