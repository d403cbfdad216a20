//! Per-inode I/O mode. The kernel refuses a passthrough open of an inode that has files open
//! in cached mode, and the reverse, until every fd and mapping is closed; so the mode of a
//! new open follows the opens already there.
//!
//! Cached opens also decide `FOPEN_KEEP_CACHE`: the kernel's pages are kept only when the
//! version being opened is the one last opened for the inode; otherwise the open drops them,
//! so a new object version never reads stale pages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How a file handle is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// Reads come to the daemon; the kernel drops its cached pages at open.
    Cached,
    /// Reads come to the daemon; the kernel keeps its cached pages (same version as before).
    CachedKeep,
    /// The kernel reads the cache file directly; no read reaches the daemon.
    Passthrough,
}

#[derive(Debug, Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    last_etag: Option<Arc<str>>,
}

/// The I/O state of every inode with open files.
#[derive(Debug, Default)]
pub struct IoModes(Mutex<HashMap<u64, InodeIo>>);

/// Locked access to [`IoModes`].
#[derive(Debug)]
pub struct IoModesGuard<'a>(MutexGuard<'a, HashMap<u64, InodeIo>>);

impl IoModes {
    /// Locks the table (choose, then acquire, under one lock).
    pub fn lock(&self) -> IoModesGuard<'_> {
        IoModesGuard(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl IoModesGuard<'_> {
    /// The mode for a new open of `ino` at `etag`, given whether passthrough is possible.
    pub fn choose(&mut self, ino: u64, etag: &Arc<str>, can_passthrough: bool) -> IoMode {
        let io = self.0.entry(ino).or_default();
        let keep = io.last_etag.as_ref() == Some(etag);
        io.last_etag = Some(etag.clone());
        if io.passthrough > 0 || (can_passthrough && io.cached == 0) {
            IoMode::Passthrough
        } else if keep {
            IoMode::CachedKeep
        } else {
            IoMode::Cached
        }
    }

    /// Records an open in `mode`.
    pub fn acquire(&mut self, ino: u64, mode: IoMode) {
        let io = self.0.entry(ino).or_default();
        match mode {
            IoMode::Passthrough => io.passthrough += 1,
            _ => io.cached += 1,
        }
    }

    /// Records a release of an open in `mode`.
    pub fn release(&mut self, ino: u64, mode: IoMode) {
        if let Some(io) = self.0.get_mut(&ino) {
            match mode {
                IoMode::Passthrough => io.passthrough = io.passthrough.saturating_sub(1),
                _ => io.cached = io.cached.saturating_sub(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_open_files_and_versions() {
        let modes = IoModes::default();
        let (v1, v2): (Arc<str>, Arc<str>) = ("\"1\"".into(), "\"2\"".into());
        let mut m = modes.lock();
        assert_eq!(
            m.choose(5, &v1, false),
            IoMode::Cached,
            "first open drops pages"
        );
        m.acquire(5, IoMode::Cached);
        assert_eq!(
            m.choose(5, &v1, true),
            IoMode::CachedKeep,
            "cached open blocks passthrough"
        );
        m.acquire(5, IoMode::CachedKeep);
        m.release(5, IoMode::Cached);
        m.release(5, IoMode::CachedKeep);
        assert_eq!(m.choose(5, &v1, true), IoMode::Passthrough);
        m.acquire(5, IoMode::Passthrough);
        assert_eq!(
            m.choose(5, &v1, false),
            IoMode::Passthrough,
            "joins passthrough"
        );
        m.release(5, IoMode::Passthrough);
        assert_eq!(
            m.choose(5, &v2, false),
            IoMode::Cached,
            "new version drops pages"
        );
    }
}
