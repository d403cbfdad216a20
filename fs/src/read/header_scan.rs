//! Header scans. ComfyUI's asset scan (on by default) opens every model file of a folder and
//! reads its safetensors header, one file after the other, so each header costs a GET's
//! first-byte latency in turn. The second header learned in one folder within
//! [`SCAN_WINDOW`] marks the folder as being scanned: the headers of its other safetensors
//! files are then learned in the background, [`SCAN_CONCURRENCY`] at a time, exactly as an
//! open and a header read of each would (the same probe, the same bytes), and the scan finds
//! them in memory. A folder is prefetched at most once per window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How close together two header reads in one folder must be to count as a scan.
pub const SCAN_WINDOW: Duration = Duration::from_secs(30);

/// Headers learned at once for a folder being scanned.
pub const SCAN_CONCURRENCY: usize = 16;

/// Per folder: when its last header was learned, and when its prefetch started.
#[derive(Debug, Default)]
pub struct HeaderScans {
    folders: Mutex<HashMap<u64, (Instant, Option<Instant>)>>,
}

impl HeaderScans {
    /// Notes that a header is being learned in folder `dir`; true when the folder should now
    /// have its other headers prefetched.
    pub fn note(&self, dir: u64) -> bool {
        let now = Instant::now();
        let mut folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
        folders.retain(|_, (last, _)| now.duration_since(*last) < SCAN_WINDOW);
        match folders.get_mut(&dir) {
            None => {
                folders.insert(dir, (now, None));
                false
            }
            Some((last, started)) => {
                *last = now;
                let due = started.is_none_or(|at| now.duration_since(at) >= SCAN_WINDOW);
                if due {
                    *started = Some(now);
                }
                due
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_header_in_a_folder_starts_one_prefetch() {
        let scans = HeaderScans::default();
        assert!(!scans.note(7), "one header is not a scan");
        assert!(!scans.note(8), "another folder counts on its own");
        assert!(scans.note(7), "the second header in the folder is");
        assert!(!scans.note(7), "and its prefetch runs once");
        assert!(scans.note(8));
    }
}
