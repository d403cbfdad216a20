//! [`BlockSet`]: a fixed-size set of block indexes that many threads update without a lock.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

/// A set of block indexes below a fixed bound, one bit each.
#[derive(Debug)]
pub struct BlockSet {
    words: Box<[AtomicU64]>,
}

impl BlockSet {
    /// An empty set for indexes `0..blocks`.
    pub fn new(blocks: u64) -> BlockSet {
        BlockSet {
            words: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn word(&self, index: u64) -> Option<(&AtomicU64, u64)> {
        let word = self.words.get(usize::try_from(index / 64).ok()?)?;
        Some((word, 1 << (index % 64)))
    }

    /// Adds `index` (ignored when out of bounds).
    pub fn insert(&self, index: u64) {
        if let Some((word, bit)) = self.word(index) {
            word.fetch_or(bit, Ordering::Release);
        }
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        self.word(index)
            .is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }

    /// Whether every index of `range` is in the set.
    pub fn contains_all(&self, range: RangeInclusive<u64>) -> bool {
        range.into_iter().all(|index| self.contains(index))
    }

    /// Removes every index.
    pub fn clear(&self) {
        for word in self.words.iter() {
            word.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_and_bounds() {
        let set = BlockSet::new(130);
        assert!(!set.contains(0));
        for index in [0, 63, 64, 129] {
            set.insert(index);
        }
        assert!(set.contains(63) && set.contains(64) && set.contains(129));
        assert!(!set.contains(1) && !set.contains(65));
        assert!(set.contains_all(63..=64));
        assert!(!set.contains_all(62..=64));
        set.insert(500);
        assert!(!set.contains(500), "out of bounds is never a member");
        set.clear();
        assert!(!set.contains(0) && !set.contains(129));
    }
}
