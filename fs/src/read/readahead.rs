//! Sequential-read detection for one open file: decides *which* blocks to fetch ahead.
//!
//! Reads that continue where the previous ones ended (with some slack, because the kernel
//! delivers asynchronous reads slightly out of order) double the readahead window up to a
//! maximum; a read elsewhere resets it. Blocks already handed out for prefetch are not handed
//! out again.

use std::ops::Range;

/// Readahead state of one open file. The first read never prefetches: a file read once at
/// its start (a header, a magic number) costs no more than the blocks it touched.
#[derive(Debug)]
pub struct Readahead {
    next_offset: u64,
    window_blocks: u64,
    issued_until: u64,
}

impl Default for Readahead {
    fn default() -> Self {
        Readahead {
            next_offset: u64::MAX,
            window_blocks: 0,
            issued_until: 0,
        }
    }
}

impl Readahead {
    /// Records a read of `offset..end` and returns the block indices to prefetch.
    /// `total_blocks` bounds the result; `max_window` is the largest window in blocks.
    pub fn observe(
        &mut self,
        offset: u64,
        end: u64,
        block_size: u64,
        max_window: u64,
        total_blocks: u64,
    ) -> Range<u64> {
        let slack = block_size.max(self.window_blocks * block_size);
        let sequential = self.next_offset != u64::MAX
            && offset.saturating_add(slack) >= self.next_offset
            && offset <= self.next_offset.saturating_add(slack);
        if sequential {
            self.window_blocks = (self.window_blocks * 2).clamp(1, max_window.max(1));
            self.next_offset = self.next_offset.max(end);
        } else {
            self.window_blocks = 0;
            self.issued_until = 0;
            self.next_offset = end;
            return 0..0;
        }
        let after_read = end.div_ceil(block_size);
        let from = after_read.max(self.issued_until);
        let to = (after_read + self.window_blocks).min(total_blocks);
        if from >= to {
            return 0..0;
        }
        self.issued_until = to;
        from..to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_grow_the_window_without_reissuing_blocks() {
        let mut ra = Readahead::default();
        let mut issued = vec![];
        for i in 0..64 {
            let r = ra.observe(i * 128 * 1024, (i + 1) * 128 * 1024, MIB, 8, 1000);
            issued.extend(r);
        }
        let mut sorted = issued.clone();
        sorted.dedup();
        assert_eq!(issued, sorted, "no block is prefetched twice");
        assert_eq!(issued.first(), Some(&1));
        assert!(ra_first_read_prefetches_nothing());
        assert!(issued.len() >= 8, "window grew: {issued:?}");
    }

    fn ra_first_read_prefetches_nothing() -> bool {
        Readahead::default()
            .observe(0, 128 * 1024, MIB, 8, 1000)
            .is_empty()
    }

    #[test]
    fn a_random_read_resets_and_the_end_of_file_bounds() {
        let mut ra = Readahead::default();
        assert_eq!(ra.observe(0, MIB, MIB, 4, 3), 0..0);
        assert_eq!(ra.observe(MIB, 2 * MIB, MIB, 4, 3), 2..3);
        assert_eq!(ra.observe(2 * MIB, 3 * MIB, MIB, 4, 3), 0..0, "end of file");
        assert_eq!(ra.observe(500 * MIB, 501 * MIB, MIB, 4, 1000), 0..0);
    }

    #[test]
    fn slightly_out_of_order_reads_still_count_as_sequential() {
        let mut ra = Readahead::default();
        ra.observe(0, 128 * 1024, MIB, 8, 100);
        ra.observe(128 * 1024, 256 * 1024, MIB, 8, 100);
        ra.observe(384 * 1024, 512 * 1024, MIB, 8, 100);
        let r = ra.observe(256 * 1024, 384 * 1024, MIB, 8, 100);
        assert!(ra.window_blocks >= 4, "{r:?}");
    }
}
