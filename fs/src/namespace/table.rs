//! The inode table: which inodes exist, under which numbers, and who keeps them alive.
//!
//! A daemon that serves a bucket for weeks must not keep every name it ever saw, so an inode
//! lives only while something holds it strongly:
//! - the kernel, from the reply that handed it out (a lookup) until `forget` brings its
//!   lookup count back to 0 ([`InodeTable::remember`], [`InodeTable::forget`]);
//! - an open file ([`super::InodeHold`]), until release;
//! - the cached listing of the directory that lists it (see `DirListing`).
//!
//! The table indexes inodes weakly, so an inode nobody holds is freed at once; its index
//! entries are purged in batches ([`InodeTable::insert`]), amortised O(1) per insert. Numbers
//! come from a counter and are never reused, so a name looked up again after its inode was
//! freed gets a new number that no live inode has.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{Inode, NodeKind};

/// Fewest index entries before dead ones are purged (purging a tiny table is not worth it).
const MIN_PURGE_AT: usize = 1024;

/// Inodes by number and by (parent, name), and the kernel's lookup counts.
#[derive(Debug)]
pub(super) struct InodeTable {
    by_ino: HashMap<u64, Weak<Inode>>,
    by_name: HashMap<(u64, String), u64>,
    /// Inodes the kernel knows, with its lookup count (never 0: at 0 the entry goes).
    kernel: HashMap<u64, (Arc<Inode>, u64)>,
    next_ino: u64,
    /// Index size at which dead entries are purged next.
    purge_at: usize,
}

impl InodeTable {
    /// A table holding `root`; numbers after the root's are handed out from there.
    pub(super) fn new(root: &Arc<Inode>) -> InodeTable {
        InodeTable {
            by_ino: HashMap::from([(root.ino, Arc::downgrade(root))]),
            by_name: HashMap::new(),
            kernel: HashMap::new(),
            next_ino: root.ino + 1,
            purge_at: MIN_PURGE_AT,
        }
    }

    /// The live inode numbered `ino`.
    pub(super) fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.by_ino.get(&ino).and_then(Weak::upgrade)
    }

    /// The live inode named `name` in `parent`, if it is of `kind`.
    pub(super) fn child(&self, parent: u64, name: &str, kind: NodeKind) -> Option<Arc<Inode>> {
        let ino = self.by_name.get(&(parent, name.to_string()))?;
        self.get(*ino).filter(|node| node.kind == kind)
    }

    /// A number no inode ever had.
    pub(super) fn allocate(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Indexes `node` as `name` in its parent (replacing whatever had that name).
    pub(super) fn insert(&mut self, name: &str, node: &Arc<Inode>) {
        self.by_ino.insert(node.ino, Arc::downgrade(node));
        self.by_name
            .insert((node.parent, name.to_string()), node.ino);
        if self.by_ino.len() >= self.purge_at {
            self.purge();
        }
    }

    /// Counts one reply that handed `node` to the kernel.
    pub(super) fn remember(&mut self, node: &Arc<Inode>) {
        self.kernel
            .entry(node.ino)
            .or_insert_with(|| (node.clone(), 0))
            .1 += 1;
    }

    /// Takes `nlookup` off the kernel's count of `ino`; at 0 returns the inode, which the
    /// kernel no longer holds (the caller drops it outside the table's lock).
    pub(super) fn forget(&mut self, ino: u64, nlookup: u64) -> Option<Arc<Inode>> {
        let count = &mut self.kernel.get_mut(&ino)?.1;
        *count = count.saturating_sub(nlookup);
        if *count > 0 {
            return None;
        }
        self.kernel.remove(&ino).map(|(node, _)| node)
    }

    /// Inodes alive now (dead index entries are purged first).
    pub(super) fn live(&mut self) -> usize {
        self.purge();
        self.by_ino.len()
    }

    /// Drops the index entries of freed inodes.
    fn purge(&mut self) {
        self.by_ino.retain(|_, node| node.strong_count() > 0);
        let by_ino = &self.by_ino;
        self.by_name.retain(|_, ino| by_ino.contains_key(ino));
        self.purge_at = (2 * self.by_ino.len()).max(MIN_PURGE_AT);
    }
}
