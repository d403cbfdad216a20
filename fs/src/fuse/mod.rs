//! The FUSE adapter: each kernel request is one call on the [`Session`] and its reply;
//! errors become errnos through [`FsError::errno`]. Requests that may reach S3 run as tasks
//! on the tokio runtime and reply from there, so a slow GET never blocks the FUSE worker
//! threads. Every mutating operation answers `EROFS`. No policy lives here.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::error::FsError;
use crate::metrics::metrics;
use crate::namespace::{NodeAttr, NodeKind};
use crate::session::{BackingRegistrar, IoMode, Session};
pub use crate::session::{HandleTable, Ownership};

/// The `fuser::Filesystem` implementation of modelfs: the session of one volume and the
/// runtime its requests run on.
#[derive(Debug)]
pub struct ModelFs {
    session: Arc<Session<BackingId>>,
    runtime: Handle,
    /// Cached-mode opens bypass the mount's page cache for `read` (`FOPEN_DIRECT_IO`); set at
    /// `init` when the kernel still lets such files be mapped.
    direct_reads: bool,
}

/// fuser's open reply registers backing files with the kernel.
struct Registrar<'a>(&'a ReplyOpen);

impl BackingRegistrar for Registrar<'_> {
    type Backing = BackingId;

    fn register(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        self.0.open_backing(file)
    }
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
    /// An adapter over `session`, running its requests on `runtime`.
    pub fn new(session: Arc<Session<BackingId>>, runtime: Handle) -> ModelFs {
        ModelFs {
            session,
            runtime,
            direct_reads: false,
        }
    }

    fn file_attr(&self, attr: &NodeAttr) -> FileAttr {
        file_attr(attr, &self.session.ownership(), self.session.block_size())
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
        // A reply then goes straight into the reader's buffer: one copy instead of two (into
        // the mount's page cache, then out of it), and no second cached copy of bytes the
        // cache file holds. Mappings (safetensors loads) still go through the page cache,
        // which needs FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6+).
        self.direct_reads = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        if self.session.wants_passthrough() {
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
                    self.session.enable_passthrough();
                    tracing::info!("FUSE passthrough enabled for complete cache entries");
                }
                Err(why) => tracing::info!("FUSE passthrough unavailable: {why}"),
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.session.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            // Every name comes from a UTF-8 key: this one cannot exist.
            return reply.error(errno(&FsError::NotFound(
                name.to_string_lossy().into_owned(),
            )));
        };
        let session = self.session.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = session.lookup(parent.0, &name).await;
            metrics().fuse_request("lookup", started.elapsed());
            match result {
                Ok(attr) => reply.entry(
                    &session.ttl(),
                    &file_attr(&attr, &session.ownership(), session.block_size()),
                    Generation(0),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    // fuser's default `batch_forget` calls this per node (fuser 0.18 does not export
    // `ForgetOne`, so it cannot be overridden).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.session.forget(ino.0, nlookup);
        metrics().fuse_request("forget", Duration::ZERO);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.session.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.session.ttl(), &self.file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let session = self.session.clone();
        let started = std::time::Instant::now();
        let direct = if self.direct_reads {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        self.runtime.spawn(async move {
            let result = session.open(ino.0, flags.0, &Registrar(&reply)).await;
            metrics().fuse_request("open", started.elapsed());
            match result {
                Ok(opened) => match (opened.mode, opened.backing) {
                    (IoMode::Passthrough, Some(id)) => {
                        reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), &id)
                    }
                    (IoMode::CachedKeep, _) => {
                        reply.opened(FileHandle(opened.fh), FopenFlags::FOPEN_KEEP_CACHE | direct)
                    }
                    _ => reply.opened(FileHandle(opened.fh), direct),
                },
                Err(e) => reply.error(errno(&e)),
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
        let session = self.session.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = session.read(fh.0, offset, size).await;
            metrics().fuse_request("read", started.elapsed());
            tracing::trace!(
                offset,
                size,
                us = started.elapsed().as_micros() as u64,
                "fuse read"
            );
            match result {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(&e)),
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
        let _guard = self.runtime.enter();
        self.session.release(fh.0);
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
        let session = self.session.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            let result = session.opendir(ino.0).await;
            metrics().fuse_request("opendir", started.elapsed());
            match result {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
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
        let listing = match self.session.readdir(fh.0) {
            Ok(listing) => listing,
            Err(e) => return reply.error(errno(&e)),
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
        self.session.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A bucket has no capacity; report a large, full-looking read-only filesystem.
        let block_size = self.session.block_size();
        reply.statfs(0, 0, 0, 0, 0, block_size, 255, block_size);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.session.access(mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
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
