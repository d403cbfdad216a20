//! [`FoldedChecksums`]: each block's part of the version's full-object checksum, computed
//! from the bytes as this process wrote them, so sealing a file this process downloaded
//! needs no second pass over it (see `verification`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::block_set::BlockSet;

/// Raw per-block checksums, in the algorithm of the entry's expected full-object checksum,
/// of the blocks this process wrote.
#[derive(Debug)]
pub(super) struct FoldedChecksums {
    values: Box<[AtomicU64]>,
    known: BlockSet,
}

impl FoldedChecksums {
    /// None known, for an entry of `blocks` blocks.
    pub(super) fn new(blocks: u64) -> FoldedChecksums {
        FoldedChecksums {
            values: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
            known: BlockSet::new(blocks),
        }
    }

    /// Records `part` as block `index`'s checksum (ignored when out of bounds).
    pub(super) fn record(&self, index: u64, part: u64) {
        let Some(value) = usize::try_from(index).ok().and_then(|i| self.values.get(i)) else {
            return;
        };
        value.store(part, Ordering::Relaxed);
        // Released after the value: a reader that sees the bit sees the value.
        self.known.insert(index);
    }

    /// Block `index`'s checksum, if recorded.
    pub(super) fn get(&self, index: u64) -> Option<u64> {
        if !self.known.contains(index) {
            return None;
        }
        let value = self.values.get(usize::try_from(index).ok()?)?;
        Some(value.load(Ordering::Relaxed))
    }

    /// Forgets every block's checksum.
    pub(super) fn clear(&self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_part_is_known_until_cleared() {
        let folded = FoldedChecksums::new(3);
        assert_eq!(folded.get(1), None);
        folded.record(1, 0);
        folded.record(2, u64::MAX);
        folded.record(7, 5);
        assert_eq!(folded.get(1), Some(0), "zero is a value, not absence");
        assert_eq!(folded.get(2), Some(u64::MAX));
        assert_eq!(folded.get(0), None);
        assert_eq!(folded.get(7), None);
        folded.clear();
        assert_eq!(folded.get(1), None);
    }
}
