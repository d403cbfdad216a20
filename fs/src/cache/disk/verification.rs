//! Verification before an entry is sealed for passthrough: every block not yet checked by
//! this process, and S3's full-object checksum when the open learned one.

use super::*;

impl DiskCache {
    /// Records a verification's outcome; a good one seals the entry, naming the full-object
    /// checksum it was `checked` against, if any.
    pub(super) fn set_verified(
        &self,
        entry: &CacheEntry,
        ok: bool,
        checked: Option<FullObjectChecksum>,
    ) {
        entry.verified.store(ok, Ordering::Release);
        if ok && self.usage() + 4096 <= self.limit() {
            match entry.entry.seal_checked(checked) {
                // The seal takes a block until the next scan measures it.
                Ok(()) => {
                    self.usage.fetch_add(4096, Ordering::Relaxed);
                }
                Err(e) => self.warn_once("seal", &e),
            }
        } else if !ok {
            entry.entry.unseal();
        }
    }

    /// Where this process stands on asking S3 for the full-object checksum of `entry`'s
    /// version before sealing it. Nothing is asked ([`ChecksumQuestion::Answered`]) when the
    /// entry knows its checksum or is verified already.
    pub fn checksum_question(&self, entry: &CacheEntry) -> ChecksumQuestion {
        if entry.expected_checksum().is_some() || entry.is_verified() {
            return ChecksumQuestion::Answered;
        }
        self.learned
            .get(entry.entry.stem())
            .map_or(ChecksumQuestion::NotAsked, |learned| learned.question)
    }

    /// Claims the one HeadObject this process sends to learn the checksum of `entry`'s
    /// version: true for the first caller, who must report with
    /// [`DiskCache::checksum_answered`].
    pub fn claim_checksum_question(&self, entry: &CacheEntry) -> bool {
        if self.checksum_question(entry) != ChecksumQuestion::NotAsked {
            return false;
        }
        let mut first = false;
        self.update_learned(entry.entry.stem(), |learned| {
            first = learned.question == ChecksumQuestion::NotAsked;
            learned.question = ChecksumQuestion::Asking;
        });
        first
    }

    /// Records the answer to the question claimed for `entry`: the version's checksum, or
    /// `None` when S3 keeps none (or could not say), for this entry and its later ones.
    pub fn checksum_answered(&self, entry: &CacheEntry, checksum: Option<FullObjectChecksum>) {
        self.update_learned(entry.entry.stem(), |learned| {
            learned.question = ChecksumQuestion::Answered;
            if checksum.is_some() {
                learned.checksum = checksum;
            }
        });
        if let Some(checksum) = checksum {
            entry.learn_checksum(checksum);
        }
    }

    /// Changes, in one step, what this process remembers of the version of entry stem
    /// `stem`; returns the result.
    pub(super) fn update_learned(&self, stem: &str, change: impl FnOnce(&mut Learned)) -> Learned {
        self.learned
            .entry(stem.to_string())
            .and_upsert_with(|old| {
                let mut learned = old.map(|old| old.into_value()).unwrap_or_default();
                change(&mut learned);
                learned
            })
            .into_value()
    }

    /// Verifies every present block of `entry` (dropping damaged ones) and records the
    /// result; true if the entry is complete and intact. Blocks this process wrote or checked
    /// already are not read again: a load that downloaded the whole file seals it for free.
    /// When the version carries S3's full-object checksum, the content must match it too:
    /// combined from each block's part (CRC32C's from the block records, the others' from
    /// the parts computed as this process wrote the blocks, or from the blocks read in the
    /// same pass); an entry that does not match is dropped whole.
    pub fn verify_complete(&self, entry: &CacheEntry) -> bool {
        let expected = entry.expected_checksum();
        let known_good = |index| entry.checked.contains(index);
        let verified = match expected {
            None => entry
                .entry
                .verify_except(known_good)
                .map(|(present, corrupt)| (present, corrupt, None)),
            Some(expected) => {
                let folded = |index| entry.folded.get(index);
                entry
                    .entry
                    .verify_with_checksum(known_good, folded, expected)
            }
        };
        let (present, corrupt, computed) = match verified {
            Ok(verified) => verified,
            Err(e) => {
                self.warn_once("verify", &e);
                return false;
            }
        };
        if corrupt > 0 {
            self.stats.corrupt.fetch_add(corrupt, Ordering::Relaxed);
            tracing::warn!(key = %entry.entry.id.key, corrupt, "disk cache blocks failed the checksum check; dropped");
        }
        let mut ok = corrupt == 0 && present == entry.entry.id.blocks();
        if let (true, Some(expected), Some(computed)) = (ok, expected, computed) {
            if computed != expected {
                self.drop_mismatched(entry, expected, computed);
                return false;
            }
        }
        // A checksum learned while this ran was not checked: the next open checks it.
        ok &= entry.expected_checksum() == expected;
        self.set_verified(entry, ok, expected);
        ok
    }

    /// Drops every block of `entry`, whose content is not what S3 says was uploaded: the
    /// bytes we received were whole by our own CRCs but not the object's, so none of them is
    /// trusted. The next reads fetch them again, and this process no longer stores them.
    pub(super) fn drop_mismatched(
        &self,
        entry: &CacheEntry,
        expected: FullObjectChecksum,
        computed: FullObjectChecksum,
    ) {
        TierStats::bump(&self.stats.checksum_mismatch);
        tracing::error!(
            key = %entry.entry.id.key,
            etag = %entry.entry.id.etag,
            %expected,
            %computed,
            "disk cache entry does not match S3's full-object checksum; not sealed, dropped and fetched again"
        );
        entry.mismatched.store(true, Ordering::Release);
        self.update_learned(entry.entry.stem(), |learned| {
            learned.checksum = Some(expected);
            learned.mismatched = true;
        });
        entry.verified.store(false, Ordering::Release);
        entry.entry.unseal();
        entry.checked.clear();
        entry.folded.clear();
        for index in 0..entry.entry.id.blocks() {
            if let Err(e) = entry.entry.clear(index) {
                self.warn_once("drop", &e);
                return;
            }
        }
    }
}
