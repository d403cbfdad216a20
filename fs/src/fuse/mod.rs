//! The FUSE adapter: translates kernel requests into calls on the [`Namespace`] and the
//! [`BlockReader`], and errors into errnos (through [`FsError::errno`]). Requests that may
//! reach S3 run as tasks on the tokio runtime and reply from there, so a slow GET never
//! blocks the FUSE worker threads. Every mutating operation answers `EROFS`.

mod handles;
mod io_mode;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::metrics::metrics;
use crate::namespace::{DirListing, InodeHold, Namespace, NodeAttr, NodeKind};
use crate::read::{BlockReader, OpenObject};
pub use handles::HandleTable;
use io_mode::{Choice, IoMode, IoModes};

/// One open file handle.
#[derive(Debug)]
struct OpenFile {
    ino: u64,
    object: Arc<OpenObject>,
    mode: IoMode,
    /// Keeps the kernel's reference to the backing file alive until release (shared by
    /// every passthrough open of the inode).
    backing: Option<Arc<BackingId>>,
    /// Keeps the inode in the namespace until release, whatever the kernel forgets.
    _inode: Option<InodeHold>,
}

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

/// The `fuser::Filesystem` implementation of modelfs.
#[derive(Debug)]
pub struct ModelFs {
    namespace: Arc<Namespace>,
    reader: Arc<BlockReader>,
    runtime: Handle,
    ownership: Ownership,
    block_size: u32,
    files: Arc<HandleTable<OpenFile>>,
    dirs: Arc<HandleTable<Arc<DirListing>>>,
    modes: Arc<IoModes<BackingId>>,
    passthrough_wanted: bool,
    passthrough: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// `fuser::Filesystem` methods that change something: each answers [`FsError::ReadOnly`].
/// Written `fn name(args) -> ReplyType;`, without `&self`, the request and the reply.
macro_rules! read_only {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $reply:ty;)*) => {
        $(
            fn $name(&self, _req: &Request, $($arg: $ty,)* reply: $reply) {
                reply.error(errno(&FsError::ReadOnly));
            }
        )*
    };
}

impl ModelFs {
    /// An adapter over `namespace` and `reader`, running S3 work on `runtime`.
    pub fn new(
        namespace: Arc<Namespace>,
        reader: Arc<BlockReader>,
        runtime: Handle,
        ownership: Ownership,
        block_size: u32,
        passthrough: bool,
    ) -> ModelFs {
        ModelFs {
            namespace,
            reader,
            runtime,
            ownership,
            block_size,
            files: Arc::default(),
            dirs: Arc::default(),
            modes: Arc::default(),
            passthrough_wanted: passthrough,
            passthrough: Arc::new(AtomicBool::new(false)),
            reads: Arc::default(),
        }
    }

    fn ttl(&self) -> Duration {
        self.namespace.ttl()
    }

    fn file_attr(&self, attr: &NodeAttr) -> FileAttr {
        file_attr(attr, &self.ownership, self.block_size)
    }
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

fn file_attr(attr: &NodeAttr, own: &Ownership, block_size: u32) -> FileAttr {
    let (kind, perm, nlink) = match attr.kind {
        NodeKind::Directory => (FileType::Directory, own.dir_mode, 2),
        NodeKind::File => (FileType::RegularFile, own.file_mode, 1),
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm,
        nlink,
        uid: own.uid,
        gid: own.gid,
        rdev: 0,
        blksize: block_size,
        flags: 0,
    }
}

impl Filesystem for ModelFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Many reads in flight (the kernel's default is 16) and 1 MiB requests.
        let _ = config.set_max_background(crate::read::MAX_READS_IN_FLIGHT as u16);
        let _ = config.set_congestion_threshold(48);
        let _ = config.set_max_write(1 << 20);
        if self.passthrough_wanted && self.reader.disk().is_some() {
            let negotiated = config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .map_err(|_| "the kernel does not offer FUSE passthrough (needs Linux 6.9+)")
                .and_then(|()| {
                    config
                        .set_max_stack_depth(1)
                        .map(drop)
                        .map_err(|_| "the kernel refused max_stack_depth 1")
                });
            match negotiated {
                Ok(()) => {
                    self.passthrough.store(true, Ordering::Release);
                    tracing::info!("FUSE passthrough enabled for complete cache entries");
                }
                Err(why) => tracing::info!("FUSE passthrough unavailable: {why}"),
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.reader
            .fetcher()
            .wait_for_verifications(std::time::Duration::from_secs(30));
        tracing::info!(
            "fuse: {} read requests served by the daemon",
            self.reads.load(Ordering::Relaxed)
        );
        tracing::info!("memory cache: {}", self.reader.memory().stats.snapshot());
        if let Some(disk) = self.reader.disk() {
            tracing::info!("disk cache: {}", disk.stats.snapshot());
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            // Every name comes from a UTF-8 key: this one cannot exist.
            return reply.error(errno(&FsError::NotFound(
                name.to_string_lossy().into_owned(),
            )));
        };
        let (ns, own, bs, ttl) = (
            self.namespace.clone(),
            self.ownership,
            self.block_size,
            self.ttl(),
        );
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = ns.lookup(parent.0, &name).await;
            metrics().fuse_request("lookup", started.elapsed());
            match result {
                Ok(attr) => reply.entry(&ttl, &file_attr(&attr, &own, bs), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    // fuser's default `batch_forget` calls this per node (fuser 0.18 does not export
    // `ForgetOne`, so it cannot be overridden).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.namespace.forget(ino.0, nlookup);
        metrics().fuse_request("forget", Duration::ZERO);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.namespace.attr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl(), &self.file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(errno(&FsError::ReadOnly));
        }
        let (ns, reader, files, modes) = (
            self.namespace.clone(),
            self.reader.clone(),
            self.files.clone(),
            self.modes.clone(),
        );
        let (passthrough, reads) = (self.passthrough.clone(), self.reads.clone());
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let version = match ns.open(ino.0).await {
                Ok(version) => version,
                Err(e) => return reply.error(errno(&e)),
            };
            let object = Arc::new(reader.open(version).await);
            if let Some(dir) = ns.parent(ino.0) {
                reader
                    .opened_in(&object, dir, || ns.files_after(ino.0))
                    .await;
            }
            let can_pass = passthrough.load(Ordering::Acquire)
                && passthrough_ready(&reader, &object);
            let etag = object.version.etag.clone();
            let mut modes = modes.lock();
            let (mode, backing) = match modes.choose(ino.0, &etag, can_pass) {
                Choice::Cached(mode) => (mode, None),
                Choice::JoinPassthrough(backing) => (IoMode::Passthrough, Some(backing)),
                Choice::NewPassthrough => {
                    let registered = object.disk.as_ref().map(|e| reply.open_backing(&e.entry.data));
                    match registered {
                        Some(Ok(id)) => (IoMode::Passthrough, Some(Arc::new(id))),
                        failed => {
                            if let Some(Err(e)) = failed {
                                if passthrough.swap(false, Ordering::AcqRel) {
                                    tracing::warn!("FUSE passthrough disabled: cannot register a backing file ({e})");
                                }
                            }
                            match modes.choose(ino.0, &etag, false) {
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
                    return reply.error(errno(&busy));
                }
            };
            modes.acquire(ino.0, mode, &etag, backing.as_ref());
            drop(modes);
            tracing::debug!(
                ino = ino.0,
                key = %object.version.key,
                ?mode,
                reads_so_far = reads.load(Ordering::Relaxed),
                "open"
            );
            let fh = files.insert(OpenFile {
                ino: ino.0,
                object,
                mode,
                backing,
                _inode: ns.hold(ino.0).ok(),
            });
            let file = files.get(fh);
            metrics().fuse_request("open", started.elapsed());
            match (mode, file.as_ref().and_then(|f| f.backing.as_ref())) {
                (IoMode::Passthrough, Some(id)) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id)
                }
                (IoMode::CachedKeep, _) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                _ => reply.opened(FileHandle(fh), FopenFlags::empty()),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.files.get(fh.0) else {
            return reply.error(errno(&FsError::BadHandle(fh.0)));
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let reader = self.reader.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = reader.read(&file.object, offset, size.into()).await;
            metrics().fuse_request("read", started.elapsed());
            tracing::trace!(offset, size, us = started.elapsed().as_micros() as u64, "fuse read");
            match result {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => {
                    tracing::warn!(key = %file.object.version.key, offset, size, "read failed: {e}");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(file) = self.files.get(fh.0) {
            self.modes.lock().release(file.ino, file.mode);
            // A file just read to the end can back the next open with passthrough.
            let _guard = self.runtime.enter();
            self.reader.verify_in_background(&file.object);
        }
        self.files.remove(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (ns, dirs) = (self.namespace.clone(), self.dirs.clone());
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = ns.listing(ino.0).await;
            metrics().fuse_request("opendir", started.elapsed());
            match result {
                Ok(listing) => reply.opened(FileHandle(dirs.insert(listing)), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = self.dirs.get(fh.0) else {
            return reply.error(errno(&FsError::BadHandle(fh.0)));
        };
        // Offsets: 1 is ".", 2 is "..", 3.. are the listing's entries.
        let dots = [
            (ino, FileType::Directory, "."),
            (ino, FileType::Directory, ".."),
        ];
        let entries = dots.into_iter().chain(listing.entries.iter().map(|e| {
            let kind = match e.kind {
                NodeKind::Directory => FileType::Directory,
                NodeKind::File => FileType::RegularFile,
            };
            (INodeNo(e.ino), kind, e.name.as_str())
        }));
        for (i, (entry_ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(entry_ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A bucket has no capacity; report a large, full-looking read-only filesystem.
        reply.statfs(0, 0, 0, 0, 0, self.block_size, 255, self.block_size);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(errno(&FsError::ReadOnly));
        } else {
            reply.ok();
        }
    }

    read_only! {
        fn setattr(
            _ino: INodeNo, _mode: Option<u32>, _uid: Option<u32>, _gid: Option<u32>,
            _size: Option<u64>, _atime: Option<TimeOrNow>, _mtime: Option<TimeOrNow>,
            _ctime: Option<SystemTime>, _fh: Option<FileHandle>, _crtime: Option<SystemTime>,
            _chgtime: Option<SystemTime>, _bkuptime: Option<SystemTime>,
            _flags: Option<fuser::BsdFileFlags>
        ) -> ReplyAttr;
        fn mknod(_parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _rdev: u32) -> ReplyEntry;
        fn mkdir(_parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32) -> ReplyEntry;
        fn unlink(_parent: INodeNo, _name: &OsStr) -> ReplyEmpty;
        fn rmdir(_parent: INodeNo, _name: &OsStr) -> ReplyEmpty;
        fn symlink(_parent: INodeNo, _link_name: &OsStr, _target: &std::path::Path) -> ReplyEntry;
        fn rename(
            _parent: INodeNo, _name: &OsStr, _newparent: INodeNo, _newname: &OsStr,
            _flags: fuser::RenameFlags
        ) -> ReplyEmpty;
        fn link(_ino: INodeNo, _newparent: INodeNo, _newname: &OsStr) -> ReplyEntry;
        fn write(
            _ino: INodeNo, _fh: FileHandle, _offset: u64, _data: &[u8], _write_flags: WriteFlags,
            _flags: OpenFlags, _lock_owner: Option<LockOwner>
        ) -> ReplyWrite;
        fn create(
            _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _flags: i32
        ) -> fuser::ReplyCreate;
        fn setxattr(
            _ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32
        ) -> ReplyEmpty;
        fn removexattr(_ino: INodeNo, _name: &OsStr) -> ReplyEmpty;
        fn fallocate(
            _ino: INodeNo, _fh: FileHandle, _offset: u64, _length: u64, _mode: i32
        ) -> ReplyEmpty;
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(errno(&FsError::NoAttribute));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}
