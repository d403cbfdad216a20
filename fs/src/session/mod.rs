//! The filesystem's state and policy under the FUSE adapter: the namespace and the reader,
//! the tables of open files and directories, each inode's I/O mode and the passthrough
//! decision, and the warm read-ahead of files opened for loading. Each kernel request is
//! one call here that returns a value or an [`FsError`]; `fuse/` only replies. Registering
//! a backing file, the one step that needs the FUSE connection, goes through
//! [`BackingRegistrar`], so the open policy is tested without a kernel.

mod backing;
mod handles;
mod io_mode;
#[cfg(test)]
mod tests;
pub mod warm_read_ahead;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::error::FsError;
use crate::namespace::{DirListing, InodeHold, Namespace, NodeAttr};
use crate::read::{BlockReader, OpenObject};
pub use backing::BackingRegistrar;
pub use handles::HandleTable;
pub use io_mode::IoMode;
use io_mode::{Choice, IoModes};
pub use warm_read_ahead::WarmLimit;
use warm_read_ahead::WarmReadAhead;

/// Ownership and permission bits shown for every node.
#[derive(Clone, Copy, Debug)]
pub struct Ownership {
    /// Owner uid of every file and directory.
    pub uid: u32,
    /// Owner gid of every file and directory.
    pub gid: u32,
    /// Permission bits of files (e.g. `0o444`).
    pub file_mode: u16,
    /// Permission bits of directories (e.g. `0o555`).
    pub dir_mode: u16,
}

/// One open file handle; `B` is the kernel's backing-file handle.
#[derive(Debug)]
pub struct OpenFile<B> {
    ino: u64,
    object: Arc<OpenObject>,
    mode: IoMode,
    /// Keeps the kernel's reference to the backing file alive until release (shared by
    /// every passthrough open of the inode).
    _backing: Option<Arc<B>>,
    /// Keeps the inode in the namespace until release, whatever the kernel forgets.
    _inode: Option<InodeHold>,
}

/// A successful open: the handle and how the kernel is to serve it.
#[derive(Debug)]
pub struct Opened<B> {
    /// The new file handle.
    pub fh: u64,
    /// How its reads are served.
    pub mode: IoMode,
    /// The backing file, for a passthrough open.
    pub backing: Option<Arc<B>>,
}

/// What a session is set up with besides its namespace and reader.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Owner and permission bits shown for every node.
    pub ownership: Ownership,
    /// Block size reported in attributes and `statfs`.
    pub block_size: u32,
    /// Serve complete, verified cache entries by passthrough once the kernel agrees.
    pub passthrough: bool,
    /// How much a file opened for loading may have read ahead into the page cache.
    pub warm_read_ahead: WarmLimit,
}

/// The state of one mounted volume; `B` is the kernel's backing-file handle.
#[derive(Debug)]
pub struct Session<B> {
    namespace: Arc<Namespace>,
    reader: Arc<BlockReader>,
    config: SessionConfig,
    files: HandleTable<OpenFile<B>>,
    dirs: HandleTable<Arc<DirListing>>,
    modes: IoModes<B>,
    /// Passthrough agreed with the kernel and not disabled since (a registration failed).
    passthrough: AtomicBool,
    warm: Arc<WarmReadAhead>,
    reads: AtomicU64,
}

/// Whether `object`'s disk entry is complete and verified, so it can back a passthrough
/// open. A complete entry not yet verified starts its verification in the background and is
/// served in cached mode meanwhile.
fn passthrough_ready(reader: &BlockReader, object: &OpenObject) -> bool {
    match object.disk.as_ref() {
        Some(entry) if entry.is_verified() => true,
        Some(_) => {
            reader.verify_in_background(object);
            false
        }
        None => false,
    }
}

/// Whether open `flags` (`open(2)`'s) ask for anything but reading.
fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl<B: Send + Sync + std::fmt::Debug + 'static> Session<B> {
    /// A session over `namespace` and `reader`; passthrough stays off until
    /// [`Session::enable_passthrough`].
    pub fn new(
        namespace: Arc<Namespace>,
        reader: Arc<BlockReader>,
        config: SessionConfig,
    ) -> Session<B> {
        Session {
            namespace,
            reader,
            config,
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            modes: IoModes::default(),
            passthrough: AtomicBool::new(false),
            warm: Arc::new(WarmReadAhead::new(config.warm_read_ahead)),
            reads: AtomicU64::new(0),
        }
    }

    /// The reader (for its tiers and counters).
    pub fn reader(&self) -> &Arc<BlockReader> {
        &self.reader
    }

    /// How long the kernel may trust entries and attributes.
    pub fn ttl(&self) -> Duration {
        self.namespace.ttl()
    }

    /// Owner and permission bits of every node.
    pub fn ownership(&self) -> Ownership {
        self.config.ownership
    }

    /// The block size reported to the kernel.
    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// Whether passthrough should be negotiated with the kernel: wanted, and there is a
    /// disk cache whose files could back it.
    pub fn wants_passthrough(&self) -> bool {
        self.config.passthrough && self.reader.disk().is_some()
    }

    /// Records that the kernel agreed to passthrough.
    pub fn enable_passthrough(&self) {
        self.passthrough.store(true, Ordering::Release);
    }

    /// Whether complete, verified entries are served by passthrough now.
    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Acquire)
    }

    /// Bytes of files opened for loading asked of the disk ahead of the reader.
    pub fn warm_read_ahead_bytes(&self) -> u64 {
        self.warm.bytes()
    }

    /// The attributes of `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<NodeAttr, FsError> {
        self.namespace.lookup(parent, name).await
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.namespace.forget(ino, nlookup);
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<NodeAttr, FsError> {
        self.namespace.attr(ino)
    }

    /// Whether `ino` may be accessed for writing (`write`) or only reading.
    pub fn access(&self, write: bool) -> Result<(), FsError> {
        if write {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Opens file `ino` with `open(2)` `flags`: pins its version, opens its cache entry and
    /// picks the I/O mode (see `io_mode`); a passthrough open that is the inode's first
    /// registers the cache file through `registrar`. A registration that fails disables
    /// passthrough for the session and serves the open cached. A passthrough open of a large
    /// file may start its warm read-ahead ([`warm_read_ahead`]). Must run on the runtime.
    pub async fn open<R>(
        self: &Arc<Self>,
        ino: u64,
        flags: i32,
        registrar: &R,
    ) -> Result<Opened<B>, FsError>
    where
        R: BackingRegistrar<Backing = B> + ?Sized,
    {
        if wants_write(flags) {
            return Err(FsError::ReadOnly);
        }
        let version = self.namespace.open(ino).await?;
        let object = Arc::new(self.reader.open(version).await);
        if let Some(dir) = self.namespace.parent(ino) {
            let ns = &self.namespace;
            self.reader
                .opened_in(&object, dir, || ns.files_after(ino))
                .await;
        }
        let can_pass = self.passthrough_enabled() && passthrough_ready(&self.reader, &object);
        let (mode, backing) = self.choose_mode(ino, &object, can_pass, registrar)?;
        tracing::debug!(
            ino,
            key = %object.version.key,
            ?mode,
            reads_so_far = self.reads.load(Ordering::Relaxed),
            "open"
        );
        if mode == IoMode::Passthrough && self.warm.wanted(object.version.size) {
            if let Some(entry) = object.disk.clone() {
                let session = Arc::downgrade(self);
                self.warm
                    .schedule(ino, entry, move || still_passthrough(&session, ino));
            }
        }
        let fh = self.files.insert(OpenFile {
            ino,
            object,
            mode,
            _backing: backing.clone(),
            _inode: self.namespace.hold(ino).ok(),
        });
        Ok(Opened { fh, mode, backing })
    }

    /// Picks and records the mode of a new open of `ino` under one lock of the modes.
    fn choose_mode<R>(
        &self,
        ino: u64,
        object: &OpenObject,
        can_pass: bool,
        registrar: &R,
    ) -> Result<(IoMode, Option<Arc<B>>), FsError>
    where
        R: BackingRegistrar<Backing = B> + ?Sized,
    {
        let etag = object.version.etag.clone();
        let mut modes = self.modes.lock();
        let (mode, backing) = match modes.choose(ino, &etag, can_pass) {
            Choice::Cached(mode) => (mode, None),
            Choice::JoinPassthrough(backing) => (IoMode::Passthrough, Some(backing)),
            Choice::NewPassthrough => {
                let registered = object
                    .disk
                    .as_ref()
                    .map(|e| registrar.register(&e.entry.data));
                match registered {
                    Some(Ok(id)) => (IoMode::Passthrough, Some(Arc::new(id))),
                    failed => {
                        if let Some(Err(e)) = failed {
                            if self.passthrough.swap(false, Ordering::AcqRel) {
                                tracing::warn!(
                                    "FUSE passthrough disabled: cannot register a backing file ({e})"
                                );
                            }
                        }
                        match modes.choose(ino, &etag, false) {
                            Choice::Cached(mode) => (mode, None),
                            _ => (IoMode::Cached, None),
                        }
                    }
                }
            }
            Choice::Conflict => {
                drop(modes);
                let busy = FsError::VersionBusy {
                    key: object.version.key.to_string(),
                };
                tracing::warn!("open refused: {busy}");
                return Err(busy);
            }
        };
        modes.acquire(ino, mode, &etag, backing.as_ref());
        Ok((mode, backing))
    }

    /// Reads up to `size` bytes at `offset` of handle `fh`.
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let file = self.files.get(fh).ok_or(FsError::BadHandle(fh))?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.reader.read(&file.object, offset, size.into()).await;
        if let Err(e) = &result {
            tracing::warn!(key = %file.object.version.key, offset, size, "read failed: {e}");
        }
        result
    }

    /// Closes handle `fh` and returns the mode it was served in (`None` for an unknown
    /// handle). A file just read to the end is verified in the background, so that its next
    /// open can use passthrough. Must run on the runtime.
    pub fn release(&self, fh: u64) -> Option<IoMode> {
        let file = self.files.get(fh)?;
        self.modes.lock().release(file.ino, file.mode);
        self.reader.verify_in_background(&file.object);
        self.files.remove(fh);
        Some(file.mode)
    }

    /// Opens directory `ino`: its listing, taken now, is what `readdir` of the handle serves.
    pub async fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let listing = self.namespace.listing(ino).await?;
        Ok(self.dirs.insert(listing))
    }

    /// The listing behind directory handle `fh`.
    pub fn readdir(&self, fh: u64) -> Result<Arc<DirListing>, FsError> {
        self.dirs
            .get(fh)
            .map(|listing| Arc::clone(&*listing))
            .ok_or(FsError::BadHandle(fh))
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    /// Open file handles.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// At unmount: lets verifications of entries completed just before finish (so the next
    /// mount can use passthrough), and logs what the session served.
    pub fn shutdown(&self) {
        self.reader
            .fetcher()
            .wait_for_verifications(Duration::from_secs(30));
        tracing::info!(
            "fuse: {} read requests served by the daemon",
            self.reads.load(Ordering::Relaxed)
        );
        tracing::info!(
            "warm read-ahead: {} MiB asked of the disk for loads",
            self.warm.bytes() >> 20
        );
        tracing::info!("memory cache: {}", self.reader.memory().stats.snapshot());
        if let Some(disk) = self.reader.disk() {
            tracing::info!("disk cache: {}", disk.stats.snapshot());
        }
    }
}

/// Whether the session behind `session` still has `ino` open in passthrough mode.
fn still_passthrough<B>(session: &Weak<Session<B>>, ino: u64) -> bool {
    session
        .upgrade()
        .is_some_and(|s| s.modes.lock().passthrough_opens(ino) > 0)
}
