//! The one owner of the tier order. A block is looked for in memory, then on disk, then,
//! holding its cross-process download lock, on disk again (another process may have just
//! stored it); only then is it a [`Miss`], which keeps the lock until the caller has fetched
//! the block and stored it with [`Miss::store`]. Where a block is kept follows who wanted it
//! ([`Priority`]): a reader's blocks, and blocks the disk turned away, stay in memory; a
//! background block stored on disk is read from there later and does not push readers'
//! blocks out of memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::disk::verify_scheduler::{PendingVerification, VerifyScheduler};
use super::disk::{BlockLock, CacheEntry};
use super::{BlockKey, DiskCache, MemoryTier};

/// Longest wait for another process's download of a block before fetching it ourselves.
pub const PEER_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);

/// Who wants a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A reader is waiting for it.
    Demand,
    /// Readahead or a whole-file sweep; waits for a background slot.
    Background,
}

impl Priority {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Priority::Demand => "demand",
            Priority::Background => "background",
        }
    }
}

/// The memory tier over an optional disk tier. Clones share the same tiers.
#[derive(Clone, Debug)]
pub struct Tiers {
    memory: MemoryTier,
    disk: Option<Arc<DiskCache>>,
    verifications: VerifyScheduler,
}

/// What the tiers hold of a block.
#[derive(Debug)]
pub enum Lookup {
    /// The block, from memory or disk.
    Hit(Bytes),
    /// No tier holds it: fetch it and [`Miss::store`] it.
    Miss(Miss),
}

/// A block no tier holds. While it exists this process holds the block's download lock
/// (with a disk tier), so other processes wait for this download and read it from disk.
#[derive(Debug)]
#[must_use = "a miss holds the block's download lock until the block is stored"]
pub struct Miss {
    tiers: Tiers,
    key: BlockKey,
    entry: Option<Arc<CacheEntry>>,
    priority: Priority,
    _download: Option<BlockLock>,
}

impl Miss {
    /// Stores the fetched block: on disk when the disk takes it, in memory as the block's
    /// [`Priority`] says; then lets other processes go on. Returns whether it is on disk.
    pub async fn store(self, block: &Bytes) -> bool {
        let on_disk = match (&self.tiers.disk, &self.entry) {
            (Some(disk), Some(entry)) => write_to_disk(disk, entry, self.key.index, block).await,
            _ => false,
        };
        self.tiers
            .settle(self.key, block.clone(), self.priority, on_disk)
            .await;
        on_disk
    }
}

impl Tiers {
    /// `memory` over `disk`.
    pub fn new(memory: MemoryTier, disk: Option<Arc<DiskCache>>) -> Tiers {
        Tiers {
            memory,
            disk,
            verifications: VerifyScheduler::default(),
        }
    }

    /// The memory tier.
    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    /// The disk tier.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// Block `key` (of `entry` on disk) from memory, else from disk, else a [`Miss`] that
    /// holds its download lock. A block found on disk joins memory as `priority` says.
    pub async fn look_up(
        &self,
        key: &BlockKey,
        entry: Option<&Arc<CacheEntry>>,
        priority: Priority,
    ) -> Lookup {
        if let Some(block) = self.memory.get(key).await {
            return Lookup::Hit(block);
        }
        self.look_up_below_memory(key, entry, priority).await
    }

    /// [`Tiers::look_up`] for a caller that looked in memory just before (the fetch engine
    /// looks there before its table of blocks in flight).
    pub async fn look_up_below_memory(
        &self,
        key: &BlockKey,
        entry: Option<&Arc<CacheEntry>>,
        priority: Priority,
    ) -> Lookup {
        let (Some(disk), Some(entry)) = (&self.disk, entry) else {
            return Lookup::Miss(self.miss(key, None, priority, None));
        };
        if let Some(block) = self.read_disk(disk, entry, key, priority).await {
            return Lookup::Hit(block);
        }
        let download = disk.lock_block(entry, key.index, PEER_DOWNLOAD_WAIT).await;
        if let Some(block) = self.read_disk(disk, entry, key, priority).await {
            return Lookup::Hit(block);
        }
        Lookup::Miss(self.miss(key, Some(entry), priority, Some(download)))
    }

    fn miss(
        &self,
        key: &BlockKey,
        entry: Option<&Arc<CacheEntry>>,
        priority: Priority,
        download: Option<BlockLock>,
    ) -> Miss {
        Miss {
            tiers: self.clone(),
            key: key.clone(),
            entry: entry.cloned(),
            priority,
            _download: download,
        }
    }

    /// Block `key` of `entry` from disk (CRC checked on its first read by this process).
    async fn read_disk(
        &self,
        disk: &Arc<DiskCache>,
        entry: &Arc<CacheEntry>,
        key: &BlockKey,
        priority: Priority,
    ) -> Option<Bytes> {
        let (disk, entry, index) = (disk.clone(), entry.clone(), key.index);
        let block = tokio::task::spawn_blocking(move || disk.read_block(&entry, index))
            .await
            .ok()
            .flatten()
            .map(Bytes::from)?;
        self.settle(key.clone(), block.clone(), priority, true)
            .await;
        Some(block)
    }

    /// Keeps `block` in memory unless it is a background block that is on disk.
    async fn settle(&self, key: BlockKey, block: Bytes, priority: Priority, on_disk: bool) {
        if priority == Priority::Demand || !on_disk {
            self.memory.insert(key, block).await;
        }
    }

    /// Keeps `block` in memory whatever its priority (a block held outside the tiers until
    /// read, or part of a span the disk turned away).
    pub async fn keep_in_memory(&self, key: BlockKey, block: Bytes) {
        self.memory.insert(key, block).await;
    }

    /// Whether block `key` is in memory or known intact on disk (of `entry`) to this
    /// process: nothing to fetch. Reads nothing and counts no hit or miss.
    pub fn holds(&self, key: &BlockKey, entry: Option<&Arc<CacheEntry>>) -> bool {
        entry.is_some_and(|entry| entry.is_checked(key.index)) || self.memory.contains(key)
    }

    /// Bytes `offset..end` of `entry` in one read, when every block they touch is known
    /// intact on disk to this process ([`CacheEntry::all_checked`]): no checksum, no
    /// per-block buffers, no copy to join blocks. A read within one block (`first`, the key
    /// of the block at `offset`) that memory holds is answered from memory. `None` otherwise.
    pub async fn read_known(
        &self,
        entry: &Arc<CacheEntry>,
        first: &BlockKey,
        offset: u64,
        end: u64,
    ) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let bs = entry.entry.id.block_size;
        let last = (end - 1) / bs;
        if !entry.all_checked(first.index..=last) {
            return None;
        }
        if first.index == last {
            if let Some(block) = self.memory.peek(first).await {
                let from = (offset - first.index * bs) as usize;
                return Some(block.slice(from..from + (end - offset) as usize));
            }
        }
        // Most reads of a file being loaded find its pages resident (written moments ago):
        // served here, without the hop to a blocking thread.
        if let Some(bytes) = disk.read_resident(entry, offset, end - offset) {
            return Some(bytes);
        }
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || disk.read_range(&entry, offset, end - offset))
            .await
            .ok()
            .flatten()
    }

    /// Notes that bytes `offset..end` of `entry`'s file were copied into a FUSE reply,
    /// whichever tier they came from: the reader has them, so the data file's pages of them
    /// may go ([`DiskCache::served`]).
    pub fn served(&self, entry: &Arc<CacheEntry>, offset: u64, end: u64) {
        if let Some(disk) = &self.disk {
            disk.served(entry, offset, end - offset);
        }
    }

    /// Writes those of `blocks` that have no record in `entry` but are in memory (fetched
    /// while the disk could not take them, before the cache made room for the file) to disk
    /// from there, instead of fetching them again.
    pub async fn store_from_memory(
        &self,
        entry: &Arc<CacheEntry>,
        blocks: impl IntoIterator<Item = BlockKey>,
    ) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let mut found = Vec::new();
        for key in blocks {
            if entry.is_checked(key.index) {
                continue;
            }
            if let Some(bytes) = self.memory.peek(&key).await {
                found.push((key.index, bytes));
            }
        }
        if found.is_empty() {
            return;
        }
        let entry = entry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (index, bytes) in found {
                // Present blocks are never written over (readers may have them mapped).
                if matches!(entry.entry.record(index), Ok(None)) {
                    disk.write_block(&entry, index, &bytes);
                }
            }
        })
        .await;
    }

    /// If `entry` is complete but not verified, checks every block's CRC in the background
    /// and seals it for passthrough (see [`VerifyScheduler`]).
    pub fn verify_in_background(&self, entry: &Arc<CacheEntry>) {
        if let Some(disk) = &self.disk {
            self.verifications.verify_in_background(disk, entry);
        }
    }

    /// Counts a verification about to start as running until the guard is dropped (see
    /// [`VerifyScheduler::pending`]).
    pub fn verification_pending(&self) -> PendingVerification {
        self.verifications.pending()
    }

    /// Waits (blocking, at most `limit`) for running verifications to finish.
    pub fn wait_for_verifications(&self, limit: Duration) {
        self.verifications.wait(limit);
    }
}

/// Stores block `index` of `entry` on a blocking thread; true when it is on disk.
async fn write_to_disk(
    disk: &Arc<DiskCache>,
    entry: &Arc<CacheEntry>,
    index: u64,
    block: &Bytes,
) -> bool {
    let (disk, entry, block) = (disk.clone(), entry.clone(), block.clone());
    tokio::task::spawn_blocking(move || disk.write_block(&entry, index, &block))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::EntryId;
    use crate::cache::{CacheSize, DiskCacheConfig};

    const BLOCK: u64 = 1 << 16;

    fn disk_at(dir: &std::path::Path, limit: u64) -> Arc<DiskCache> {
        DiskCache::open(&DiskCacheConfig {
            dir: dir.to_path_buf(),
            size: CacheSize::Bytes(limit),
        })
        .unwrap()
    }

    fn entry_of(disk: &DiskCache) -> Arc<CacheEntry> {
        disk.entry(&EntryId {
            origin: "memory://local".into(),
            bucket: "b".into(),
            key: "k".into(),
            etag: "\"e\"".into(),
            size: 4 * BLOCK,
            block_size: BLOCK,
        })
        .unwrap()
    }

    fn key(index: u64) -> BlockKey {
        BlockKey {
            origin: "memory://local".into(),
            key: "k".into(),
            etag: "\"e\"".into(),
            index,
        }
    }

    fn block(index: u64) -> Bytes {
        Bytes::from(vec![index as u8 + 1; BLOCK as usize])
    }

    /// Tiers over a disk cache in a fresh directory (kept alive by the returned guard).
    fn tiers(limit: u64) -> (Tiers, Arc<CacheEntry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_at(dir.path(), limit);
        let entry = entry_of(&disk);
        (Tiers::new(MemoryTier::new(1 << 30), Some(disk)), entry, dir)
    }

    fn hit(lookup: Lookup) -> Bytes {
        match lookup {
            Lookup::Hit(block) => block,
            Lookup::Miss(_) => panic!("expected a hit"),
        }
    }

    fn miss(lookup: Lookup) -> Miss {
        match lookup {
            Lookup::Miss(miss) => miss,
            Lookup::Hit(_) => panic!("expected a miss"),
        }
    }

    #[tokio::test]
    async fn memory_answers_first_without_touching_the_disk() {
        let (tiers, entry, _dir) = tiers(1 << 30);
        // On disk with other bytes: the answer shows which tier it came from.
        tiers.disk().unwrap().write_block(&entry, 0, &block(9));
        tiers.keep_in_memory(key(0), block(0)).await;
        let disk_before = tiers.disk().unwrap().stats.snapshot();
        let got = hit(tiers.look_up(&key(0), Some(&entry), Priority::Demand).await);
        assert_eq!(got, block(0));
        assert_eq!(tiers.disk().unwrap().stats.snapshot(), disk_before);
    }

    #[tokio::test]
    async fn a_block_on_disk_is_read_once_and_joins_memory_only_for_a_reader() {
        let (tiers, entry, _dir) = tiers(1 << 30);
        // Written by another process: on disk, not yet checked by this one.
        entry.entry.write_block(1, &block(1)).unwrap();
        entry.entry.write_block(2, &block(2)).unwrap();
        let disk = tiers.disk().unwrap().clone();
        let got = hit(tiers
            .look_up(&key(1), Some(&entry), Priority::Background)
            .await);
        assert_eq!(got, block(1));
        assert_eq!(disk.stats.snapshot().hits, 1, "one disk read");
        assert_eq!(disk.stats.snapshot().misses, 0);
        assert!(entry.is_checked(1), "checked on its first read");
        assert!(
            !tiers.memory().contains(&key(1)),
            "a background block stays on disk"
        );
        let got = hit(tiers.look_up(&key(2), Some(&entry), Priority::Demand).await);
        assert_eq!(got, block(2));
        assert_eq!(disk.stats.snapshot().hits, 2);
        assert!(
            tiers.memory().contains(&key(2)),
            "a reader's block joins memory"
        );
    }

    #[tokio::test]
    async fn a_fetched_block_goes_to_disk_and_to_memory_as_its_priority_says() {
        let (tiers, entry, _dir) = tiers(1 << 30);
        let m = miss(
            tiers
                .look_up(&key(0), Some(&entry), Priority::Background)
                .await,
        );
        assert!(m.store(&block(0)).await, "on disk");
        assert!(entry.is_checked(0) && !tiers.memory().contains(&key(0)));
        let m = miss(tiers.look_up(&key(1), Some(&entry), Priority::Demand).await);
        assert!(m.store(&block(1)).await, "on disk");
        assert!(entry.is_checked(1) && tiers.memory().contains(&key(1)));
        assert!(tiers.holds(&key(0), Some(&entry)) && !tiers.holds(&key(2), Some(&entry)));
    }

    #[tokio::test]
    async fn a_block_the_disk_turns_away_stays_in_memory() {
        // A limit below one block: every write is turned away.
        let (tiers, entry, _dir) = tiers(BLOCK / 2);
        let m = miss(
            tiers
                .look_up(&key(0), Some(&entry), Priority::Background)
                .await,
        );
        assert!(!m.store(&block(0)).await, "not on disk");
        assert!(!entry.is_checked(0));
        let got = hit(tiers
            .look_up(&key(0), Some(&entry), Priority::Background)
            .await);
        assert_eq!(got, block(0));
    }

    #[tokio::test]
    async fn without_a_disk_entry_a_miss_is_kept_in_memory() {
        let tiers = Tiers::new(MemoryTier::new(1 << 30), None);
        let m = miss(tiers.look_up(&key(0), None, Priority::Background).await);
        assert!(!m.store(&block(0)).await);
        assert_eq!(
            hit(tiers.look_up(&key(0), None, Priority::Demand).await),
            block(0)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_waits_for_the_download_and_reads_it_from_disk() {
        let (ours, entry, dir) = tiers(1 << 30);
        // A second cache over the same directory: its own open files, as in another process.
        let peer_disk = disk_at(dir.path(), 1 << 30);
        let peer_entry = entry_of(&peer_disk);
        let peer = Tiers::new(MemoryTier::new(1 << 30), Some(peer_disk.clone()));
        let m = miss(ours.look_up(&key(3), Some(&entry), Priority::Demand).await);
        let waiting = tokio::spawn(async move {
            peer.look_up(&key(3), Some(&peer_entry), Priority::Demand)
                .await
        });
        // The peer looked on disk and now waits for the lock.
        for _ in 0..500 {
            if peer_disk.stats.snapshot().misses > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the peer waits for our download");
        assert!(m.store(&block(3)).await);
        let got = hit(waiting.await.unwrap());
        assert_eq!(got, block(3));
        assert_eq!(peer_disk.stats.snapshot().misses, 1, "found after the lock");
    }
}
