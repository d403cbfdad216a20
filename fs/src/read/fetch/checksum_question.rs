//! S3's full-object checksum of a version opened without one, asked for before its cache
//! entry is sealed.
//!
//! An open proven readable by a GET (a header scan ahead) sends no HeadObject, so it brings
//! no checksum, and an entry sealed without one is served by passthrough unchecked against
//! what was uploaded. So this process asks once per version, with the volume's credentials:
//! when a load of the file starts (blocks stored after the answer fold their parts of the
//! checksum as they are written, so sealing reads little back), or else when the entry is
//! complete; its verification waits for the answer, and an unmount waits for both.

use std::sync::Arc;

use super::Fetcher;
use crate::cache::disk::{CacheEntry, ChecksumQuestion, DiskCache};
use crate::store::ObjectStore;

impl Fetcher {
    /// If `entry` is complete but not verified, checks every block's CRC on a blocking thread
    /// and seals it (see [`DiskCache::verify_complete`]); one verification at a time. When
    /// the version's checksum is unknown, S3 is asked for it first (see the module doc).
    pub fn verify_in_background(&self, entry: &Arc<CacheEntry>) {
        let Some(disk) = self.tiers.disk() else {
            return;
        };
        match disk.checksum_question(entry) {
            ChecksumQuestion::Answered => self.tiers.cache.verify_in_background(entry),
            // The asker verifies once the answer is in.
            ChecksumQuestion::Asking => {}
            ChecksumQuestion::NotAsked => self.ask_then_verify(disk, entry, true),
        }
    }

    /// Asks for the checksum of `entry`'s version now, if it is unknown and not asked for
    /// yet: a load of the whole file starts.
    pub fn ask_checksum_for_load(&self, entry: &Arc<CacheEntry>) {
        if let Some(disk) = self.tiers.disk() {
            self.ask_then_verify(disk, entry, false);
        }
    }

    /// On a task of its own (an unmount waits for it): claims the question of `entry`'s
    /// version (`only_if_complete`: once the entry is complete), asks it, then verifies the
    /// entry if it is complete. Nothing when another caller claimed the question first.
    fn ask_then_verify(
        &self,
        disk: &Arc<DiskCache>,
        entry: &Arc<CacheEntry>,
        only_if_complete: bool,
    ) {
        let pending = self.tiers.cache.verification_pending();
        let (store, tiers) = (self.store.clone(), self.tiers.clone());
        let (disk, entry) = (disk.clone(), entry.clone());
        tokio::spawn(async move {
            let ready = !only_if_complete || {
                let entry = entry.clone();
                tokio::task::spawn_blocking(move || entry.entry.is_complete())
                    .await
                    .is_ok_and(|complete| complete.unwrap_or(false))
            };
            if ready && disk.claim_checksum_question(&entry) {
                ask(store.as_ref(), &disk, &entry).await;
                tiers.cache.verify_in_background(&entry);
            }
            drop(pending);
        });
    }
}

/// Sends the HeadObject claimed for `entry` and records its answer. A version replaced
/// since its open, or an error, leaves the entry to be verified without the checksum.
async fn ask(store: &dyn ObjectStore, disk: &DiskCache, entry: &CacheEntry) {
    let id = &entry.entry.id;
    let checksum = match store.head(&id.key).await {
        Ok(info) if info.etag == id.etag => info.checksum,
        Ok(_) => {
            tracing::debug!(key = %id.key, "object replaced since its open: no checksum for the cached version");
            None
        }
        Err(e) => {
            tracing::debug!(key = %id.key, error = %e, "cannot ask for the full-object checksum");
            None
        }
    };
    disk.checksum_answered(entry, checksum);
}
