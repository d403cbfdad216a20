//! Per-inode I/O mode. The kernel refuses a passthrough open of an inode that has files open
//! in cached mode, and the reverse, until every fd and mapping is closed; and every
//! passthrough open of one inode must name the same backing file. So the mode of a new open
//! follows the opens already there, and passthrough opens of an inode share one backing id.
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

/// What a new open of an inode may do, given the opens already there.
#[derive(Debug)]
pub enum Choice<B> {
    /// Serve it in this cached mode.
    Cached(IoMode),
    /// Passthrough, with the backing file the inode's other passthrough opens use.
    JoinPassthrough(Arc<B>),
    /// Passthrough with a backing file this open registers (no other passthrough open).
    NewPassthrough,
    /// The inode is open in passthrough for another version of the object: the kernel
    /// allows neither a second backing file nor a cached open until those opens close.
    Conflict,
}

#[derive(Debug)]
struct InodeIo<B> {
    cached: u32,
    passthrough: u32,
    last_etag: Option<Arc<str>>,
    /// The backing file of the passthrough opens, and the version it holds.
    backing: Option<(Arc<str>, Arc<B>)>,
}

impl<B> Default for InodeIo<B> {
    fn default() -> Self {
        InodeIo {
            cached: 0,
            passthrough: 0,
            last_etag: None,
            backing: None,
        }
    }
}

/// The I/O state of every inode with open files; `B` is the kernel's backing-file handle.
#[derive(Debug)]
pub struct IoModes<B>(Mutex<HashMap<u64, InodeIo<B>>>);

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes(Mutex::new(HashMap::new()))
    }
}

/// Locked access to [`IoModes`].
#[derive(Debug)]
pub struct IoModesGuard<'a, B>(MutexGuard<'a, HashMap<u64, InodeIo<B>>>);

impl<B> IoModes<B> {
    /// Locks the table (choose, then acquire, under one lock).
    pub fn lock(&self) -> IoModesGuard<'_, B> {
        IoModesGuard(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<B> IoModesGuard<'_, B> {
    /// What a new open of `ino` at `etag` may do, given whether passthrough is possible
    /// for it on its own (a complete, verified cache entry).
    pub fn choose(&mut self, ino: u64, etag: &Arc<str>, can_passthrough: bool) -> Choice<B> {
        let io = self.0.entry(ino).or_default();
        if io.passthrough > 0 {
            // A refused open leaves no trace: the kernel's pages are as they were.
            return match &io.backing {
                Some((held, backing)) if held == etag => Choice::JoinPassthrough(backing.clone()),
                _ => Choice::Conflict,
            };
        }
        let keep = io.last_etag.as_ref() == Some(etag);
        io.last_etag = Some(etag.clone());
        if can_passthrough && io.cached == 0 {
            Choice::NewPassthrough
        } else if keep {
            Choice::Cached(IoMode::CachedKeep)
        } else {
            Choice::Cached(IoMode::Cached)
        }
    }

    /// Records an open in `mode`; a passthrough open passes the backing file it uses.
    pub fn acquire(&mut self, ino: u64, mode: IoMode, etag: &Arc<str>, backing: Option<&Arc<B>>) {
        let io = self.0.entry(ino).or_default();
        match mode {
            IoMode::Passthrough => {
                io.passthrough += 1;
                if io.backing.is_none() {
                    io.backing = backing.map(|b| (etag.clone(), b.clone()));
                }
            }
            _ => io.cached += 1,
        }
    }

    /// How many passthrough opens `ino` has.
    pub fn passthrough_opens(&self, ino: u64) -> u32 {
        self.0.get(&ino).map_or(0, |io| io.passthrough)
    }

    /// Records a release of an open in `mode`; the last passthrough release lets the
    /// inode's backing file go.
    pub fn release(&mut self, ino: u64, mode: IoMode) {
        if let Some(io) = self.0.get_mut(&ino) {
            match mode {
                IoMode::Passthrough => {
                    io.passthrough = io.passthrough.saturating_sub(1);
                    if io.passthrough == 0 {
                        io.backing = None;
                    }
                }
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
        let modes = IoModes::<&str>::default();
        let (v1, v2): (Arc<str>, Arc<str>) = ("\"1\"".into(), "\"2\"".into());
        let mut m = modes.lock();
        assert!(
            matches!(m.choose(5, &v1, false), Choice::Cached(IoMode::Cached)),
            "first open drops pages"
        );
        m.acquire(5, IoMode::Cached, &v1, None);
        assert!(
            matches!(m.choose(5, &v1, true), Choice::Cached(IoMode::CachedKeep)),
            "cached open blocks passthrough"
        );
        m.acquire(5, IoMode::CachedKeep, &v1, None);
        m.release(5, IoMode::Cached);
        m.release(5, IoMode::CachedKeep);
        assert!(matches!(m.choose(5, &v1, true), Choice::NewPassthrough));
        let backing = Arc::new("data file of v1");
        m.acquire(5, IoMode::Passthrough, &v1, Some(&backing));
        match m.choose(5, &v1, false) {
            Choice::JoinPassthrough(b) => assert!(Arc::ptr_eq(&b, &backing), "one backing"),
            other => panic!("expected to join passthrough, got {other:?}"),
        }
        m.acquire(5, IoMode::Passthrough, &v1, None);
        assert!(
            matches!(m.choose(5, &v2, true), Choice::Conflict),
            "another version cannot share the backing file"
        );
        m.release(5, IoMode::Passthrough);
        m.release(5, IoMode::Passthrough);
        assert_eq!(Arc::strong_count(&backing), 1, "backing let go");
        assert!(
            matches!(m.choose(5, &v2, false), Choice::Cached(IoMode::Cached)),
            "new version drops pages"
        );
    }
}
