//! Header scans. ComfyUI's asset scan (on by default) opens every model file of a folder and
//! reads its safetensors header, one file after the other, so each header costs a GET's
//! first-byte latency in turn. A second safetensors open in one folder within [`SCAN_WINDOW`]
//! marks the folder as being scanned: from then on each open there learns, in the
//! background, the headers of the next [`SCAN_AHEAD`] safetensors files after it (name
//! order, as directory listings come), [`SCAN_CONCURRENCY`] at a time, exactly as an open and
//! a header read of each would (the same probe, the same bytes). The scan finds them in
//! memory, and what is fetched ahead stays bounded by how far the scan has got: two models
//! opened from a folder of 500 cost at most [`SCAN_AHEAD`] headers more, not 500.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::ObjectVersion;

/// How close together two header reads in one folder must be to count as a scan.
pub const SCAN_WINDOW: Duration = Duration::from_secs(30);

/// Headers learned ahead of the scan.
pub const SCAN_AHEAD: usize = 32;

/// Headers learned at once for a folder being scanned.
pub const SCAN_CONCURRENCY: usize = 16;

/// Folders with recent safetensors opens, and the headers being learned right now.
#[derive(Debug, Default)]
pub struct HeaderScans {
    /// Per folder: when a safetensors file was last opened there.
    folders: Mutex<HashMap<u64, Instant>>,
    learning: Mutex<HashSet<(Arc<str>, Arc<str>)>>,
}

impl HeaderScans {
    /// Notes a safetensors open in folder `dir`; true when the folder is being scanned (an
    /// open there before, within [`SCAN_WINDOW`]).
    pub fn note(&self, dir: u64) -> bool {
        let now = Instant::now();
        let mut folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
        folders.retain(|_, last| now.duration_since(*last) < SCAN_WINDOW);
        folders.insert(dir, now).is_some()
    }

    /// Claims the learning of `version`'s header; false if it is being learned already.
    pub fn claim(&self, version: &ObjectVersion) -> bool {
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        learning.insert((version.key.clone(), version.etag.clone()))
    }

    /// Ends a [`HeaderScans::claim`].
    pub fn release(&self, version: &ObjectVersion) {
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        learning.remove(&(version.key.clone(), version.etag.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_in_a_folder_makes_it_a_scan_and_claims_are_exclusive() {
        let scans = HeaderScans::default();
        assert!(!scans.note(7), "one open is not a scan");
        assert!(!scans.note(8), "another folder counts on its own");
        assert!(scans.note(7), "the second open in the folder is");
        assert!(scans.note(7), "and every open after it");
        let v = ObjectVersion {
            key: "a.safetensors".into(),
            etag: "\"e\"".into(),
            size: 10,
            checksum: None,
        };
        assert!(scans.claim(&v));
        assert!(!scans.claim(&v), "one learning per header");
        scans.release(&v);
        assert!(scans.claim(&v));
    }
}
