//! Verification of complete entries in the background: every block's CRC checked (except
//! those this process wrote or checked already) on a blocking thread, then the entry sealed
//! for passthrough ([`DiskCache::verify_complete`]). One verification per entry at a time;
//! an unmount waits for the running ones so entries completed just before it are sealed for
//! the next mount.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CacheEntry, DiskCache};

/// Starts verifications and counts those running. Clones share the count.
#[derive(Clone, Debug, Default)]
pub struct VerifyScheduler {
    running: Arc<AtomicUsize>,
}

impl VerifyScheduler {
    /// If `entry` is complete but not verified, checks it on a blocking thread and seals it;
    /// nothing when it is verified or a verification of it runs already. Needs a tokio
    /// runtime.
    pub fn verify_in_background(&self, disk: &Arc<DiskCache>, entry: &Arc<CacheEntry>) {
        if entry.is_verified() || !entry.start_verification() {
            return;
        }
        let (disk, entry, running) = (disk.clone(), entry.clone(), self.pending());
        tokio::task::spawn_blocking(move || {
            let complete = entry.entry.is_complete().unwrap_or(false);
            let verified = complete && disk.verify_complete(&entry);
            tracing::debug!(key = %entry.entry.id.key, complete, verified, "cache entry checked");
            entry.end_verification();
            drop(running);
        });
    }

    /// Counts a verification (running, or about to start once the question it waits for is
    /// answered) until the returned guard is dropped; [`VerifyScheduler::wait`] waits for it.
    pub fn pending(&self) -> PendingVerification {
        self.running.fetch_add(1, Ordering::AcqRel);
        PendingVerification {
            running: self.running.clone(),
        }
    }

    /// Waits (blocking, at most `limit`) for running verifications to finish.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.running.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A verification counted as running ([`VerifyScheduler::pending`]).
#[derive(Debug)]
pub struct PendingVerification {
    running: Arc<AtomicUsize>,
}

impl Drop for PendingVerification {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::EntryId;
    use crate::cache::{CacheSize, DiskCacheConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_complete_entry_is_verified_in_the_background_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(&DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            size: CacheSize::Bytes(1 << 30),
        })
        .unwrap();
        let entry = disk
            .entry(&EntryId {
                origin: "o".into(),
                bucket: "b".into(),
                key: "k".into(),
                etag: "\"e\"".into(),
                size: 3000,
                block_size: 1024,
            })
            .unwrap();
        let scheduler = VerifyScheduler::default();
        // Incomplete: checked, not sealed.
        entry.entry.write_block(0, &[1u8; 1024]).unwrap();
        scheduler.verify_in_background(&disk, &entry);
        tokio::task::block_in_place(|| scheduler.wait(Duration::from_secs(10)));
        assert!(!entry.is_verified());
        // Written by another process (unchecked here), then complete: verified and sealed.
        entry.entry.write_block(1, &[2u8; 1024]).unwrap();
        entry.entry.write_block(2, &[3u8; 952]).unwrap();
        scheduler.verify_in_background(&disk, &entry);
        tokio::task::block_in_place(|| scheduler.wait(Duration::from_secs(10)));
        assert!(entry.is_verified());
        assert_eq!(scheduler.running.load(Ordering::Acquire), 0);
    }
}
