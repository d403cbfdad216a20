//! When each file was last loaded in this process: what admission needs to tell a working set
//! larger than the cache (models taking turns, each pushing out the next one to be loaded)
//! from a working set that moved on.

use std::collections::HashMap;
use std::time::SystemTime;

/// Files remembered; beyond this the oldest load is forgotten (a file never loaded again
/// costs nothing, and one loaded again is admitted as if new).
const REMEMBERED: usize = 4096;

/// The last load of each recently loaded file, by entry stem.
#[derive(Debug, Default)]
pub struct LoadHistory {
    last_load: HashMap<String, SystemTime>,
}

impl LoadHistory {
    /// Records a load of `stem` at `now`; returns the time of its previous load, if
    /// remembered.
    pub fn record(&mut self, stem: &str, now: SystemTime) -> Option<SystemTime> {
        if self.last_load.len() >= REMEMBERED && !self.last_load.contains_key(stem) {
            let oldest = self
                .last_load
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(stem, _)| stem.clone());
            if let Some(oldest) = oldest {
                self.last_load.remove(&oldest);
            }
        }
        self.last_load.insert(stem.to_owned(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gives_each_files_previous_load() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        let mut history = LoadHistory::default();
        assert_eq!(history.record("a", at(1)), None);
        assert_eq!(history.record("b", at(2)), None);
        assert_eq!(history.record("a", at(3)), Some(at(1)));
        assert_eq!(history.record("a", at(4)), Some(at(3)));
        assert_eq!(history.record("b", at(5)), Some(at(2)));
    }

    #[test]
    fn forgets_the_oldest_load_beyond_its_bound() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut history = LoadHistory::default();
        for n in 0..REMEMBERED as u64 {
            history.record(&format!("f{n}"), t0 + Duration::from_secs(n + 1));
        }
        // "f0" is the oldest: one more file pushes it out, and nothing else (its own return
        // pushes out "f1", the next oldest).
        history.record("new", t0 + Duration::from_secs(1 << 20));
        assert_eq!(history.last_load.len(), REMEMBERED);
        assert_eq!(history.record("f0", t0), None);
        assert_eq!(history.record("f2", t0), Some(t0 + Duration::from_secs(3)));
    }
}
