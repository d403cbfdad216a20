//! [`Dir`]: a directory held open by descriptor, and file operations relative to it that
//! never follow a symbolic link.
//!
//! modelfs usually runs as root, and its cache directory may sit on a disk others can reach.
//! The cache directory's path is resolved once, when it is opened and checked (owned by this
//! user, writable by no one else: [`Dir::open_cache_root`]); everything inside is reached
//! one name at a time with `openat`/`mkdirat`/`renameat`/`unlinkat` and `O_NOFOLLOW`, so a
//! link planted anywhere in the cache is an error or a damaged entry, never a way out of it.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How [`Dir::open_file`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// An existing file, read-only.
    Read,
    /// An existing file, read-write.
    ReadWrite,
    /// A new file (0600), read-write; fails if the name exists in any form.
    CreateNew,
}

/// What `fstatat` says about one name, without following it.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Owner.
    pub uid: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last modification.
    pub mtime: SystemTime,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        let mtime = u64::try_from(st.st_mtime)
            .ok()
            .map(|s| Duration::new(s, st.st_mtime_nsec.clamp(0, 999_999_999) as u32))
            .map_or(SystemTime::UNIX_EPOCH, |d| SystemTime::UNIX_EPOCH + d);
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            uid: st.st_uid,
            mode: st.st_mode,
            blocks: st.st_blocks as u64,
            mtime,
        }
    }

    /// A regular file (not a link, directory, FIFO or device).
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// A symbolic link.
    pub fn is_link(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// An open directory; its path is kept for messages only.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A single path component as a C string: no `/`, no NUL, not `.` or `..`.
fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    CString::new(name).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether `e` means a name is there but is not what the cache put there (a link, a file
/// where a directory belongs, a FIFO…), as opposed to a failing disk.
pub fn is_foreign(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
        || e.kind() == ErrorKind::InvalidData
}

impl Dir {
    /// Opens the directory at `path`, refusing a symbolic link as its last component.
    pub fn open_path(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid NUL-terminated path; the returned fd is owned below.
        let fd = check(unsafe { libc::open(c.as_ptr(), flags) })?;
        Ok(Dir {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// Opens the cache directory at `path`, creating it (0700, parents too) if missing, and
    /// checks it is a directory (not a link to one) owned by this process's user and
    /// writable by no one else, reached through directories only root or this user can
    /// change (see `trusted_path`). Refuses it otherwise, and never changes its mode.
    pub fn open_cache_root(path: &Path) -> io::Result<Dir> {
        let dir = super::trusted_path::open_checked_path(path, true).map_err(|e| {
            if is_foreign(&e) {
                io::Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cache directory {} is a symbolic link or not a directory; give the \
                         real directory's path",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
        dir.check_private()?;
        Ok(dir)
    }

    /// Checks this directory is owned by the effective user and not writable by group or
    /// others: anyone else who could write in it could plant links or entries.
    pub fn check_private(&self) -> io::Result<()> {
        let st = self.metadata()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.uid != me {
            return Err(io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cache directory {} is owned by uid {}, not by this process's uid {me}: \
                     refusing to use it (chown it, or choose another directory)",
                    self.path.display(),
                    st.uid
                ),
            ));
        }
        if st.mode & 0o022 != 0 {
            return Err(io::Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cache directory {} has mode {:o}: writable by group or others, refusing \
                     to use it (chmod 700 it, or choose another directory)",
                    self.path.display(),
                    st.mode & 0o7777
                ),
            ));
        }
        Ok(())
    }

    /// The directory's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory itself.
    pub fn metadata(&self) -> io::Result<Stat> {
        // SAFETY: zeroed stat is valid plain old data; the fd is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok(Stat::from_raw(&st))
    }

    /// `(total, available)` bytes of the filesystem holding the directory.
    pub fn fs_space(&self) -> io::Result<(u64, u64)> {
        // SAFETY: statvfs is plain old data; zeroed is valid; the fd is open.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut st) })?;
        let frsize = st.f_frsize as u64;
        Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
    }

    /// Opens the subdirectory `name`; a link there is an error (`ELOOP`/`ENOTDIR`).
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        self.open_dir_at(&component(name)?, self.path.join(name))
    }

    /// Opens the directory `name` names here, not following a link; `path` is for messages.
    fn open_dir_at(&self, name: &CStr, path: PathBuf) -> io::Result<Dir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid dirfd and NUL-terminated name; the returned fd is owned below.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Dir {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path,
        })
    }

    /// Opens this directory's parent (`..`, as the kernel resolves it: the physical one).
    pub fn open_parent(&self) -> io::Result<Dir> {
        let path = self.path.parent().unwrap_or(&self.path).to_path_buf();
        self.open_dir_at(c"..", path)
    }

    /// The target of the symbolic link `name`.
    pub fn read_link(&self, name: &str) -> io::Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let c = component(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: valid dirfd and name; `buf` is writable for its whole length.
        let len = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
        buf.truncate(len);
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&buf)))
    }

    /// Creates the subdirectory `name` (0700); fails if the name exists in any form.
    pub fn create_dir(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) }).map(drop)
    }

    /// Opens the subdirectory `name`, creating it (0700) first if missing.
    pub fn ensure_dir(&self, name: &str) -> io::Result<Dir> {
        match self.create_dir(name) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        self.open_dir(name)
    }

    /// Opens the file `name` without following a link, and only if it is a regular file
    /// (`InvalidData` otherwise: a FIFO or device is never read or written).
    pub fn open_file(&self, name: &str, how: Open) -> io::Result<File> {
        let c = component(name)?;
        // O_NONBLOCK: opening a planted FIFO must not wait for a writer.
        let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        flags |= match how {
            Open::Read => libc::O_RDONLY,
            Open::ReadWrite => libc::O_RDWR,
            Open::CreateNew => libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        };
        // SAFETY: valid dirfd and NUL-terminated name; the returned fd is owned below.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600) })?;
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: zeroed stat is valid plain old data; the fd is open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(fd, &mut st) })?;
        if !Stat::from_raw(&st).is_file() {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("{} is not a regular file", self.path.join(name).display()),
            ));
        }
        // Back to blocking I/O for the regular file (where the flag has no effect anyway).
        // SAFETY: fcntl on an open fd with plain integer arguments.
        let status = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, status & !libc::O_NONBLOCK) })?;
        Ok(file)
    }

    /// Reads the whole (small) file `name` as text.
    pub fn read_to_string(&self, name: &str) -> io::Result<String> {
        let mut text = String::new();
        io::Read::read_to_string(&mut self.open_file(name, Open::Read)?, &mut text)?;
        Ok(text)
    }

    /// `fstatat` of `name`, not following a link.
    pub fn stat(&self, name: &str) -> io::Result<Stat> {
        let c = component(name)?;
        // SAFETY: zeroed stat is valid plain old data; valid dirfd and name.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Stat::from_raw(&st))
    }

    /// Renames `from` to `to`, both in this directory (a link is moved, never followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (component(from)?, component(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid dirfds and NUL-terminated names.
        check(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) }).map(drop)
    }

    /// Removes the file or link `name` (never what a link points to).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Removes `name` and, if it is a directory, everything in it; links are removed, never
    /// followed.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        self.remove_tree_at(name, 8)
    }

    fn remove_tree_at(&self, name: &str, depth: u32) -> io::Result<()> {
        if !self.stat(name)?.is_dir() {
            return self.unlink(name);
        }
        if depth == 0 {
            return Err(io::Error::other(format!(
                "{} is nested deeper than a cache entry",
                self.path.join(name).display()
            )));
        }
        let sub = self.open_dir(name)?;
        for child in sub.names()? {
            sub.remove_tree_at(&child, depth - 1)?;
        }
        let c = component(name)?;
        // SAFETY: valid dirfd and NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    /// The names in the directory (not `.` and `..`; names that are not UTF-8 are never the
    /// cache's and are left out).
    pub fn names(&self) -> io::Result<Vec<String>> {
        // readdir consumes the descriptor it is given: hand it a fresh one of this directory.
        let dot = c".";
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = check(unsafe { libc::openat(self.fd.as_raw_fd(), dot.as_ptr(), flags) })?;
        // SAFETY: `fd` is an open directory descriptor; fdopendir takes ownership of it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; clearing it tells end of stream from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a valid open directory stream.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if let Ok(name) = name.to_str() {
                if name != "." && name != ".." {
                    names.push(name.to_string());
                }
            }
        };
        // SAFETY: `stream` is valid and closed exactly once (closing its descriptor too).
        unsafe { libc::closedir(stream) };
        result.map(|()| names)
    }
}

/// A file outside any cache directory, for tests that plant links to it: whatever the cache
/// does through such a link, the file must come through unchanged and undeleted.
#[cfg(test)]
pub(crate) struct OutsideFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

#[cfg(test)]
impl OutsideFile {
    const CONTENT: &'static [u8] = b"precious";

    pub(crate) fn new() -> OutsideFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        std::fs::write(&path, Self::CONTENT).unwrap();
        OutsideFile { dir, path }
    }

    /// The directory holding the file, for tests that put more outside.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces whatever is at `at` by a symbolic link to the file.
    pub(crate) fn plant_link(&self, at: &Path) {
        let _ = std::fs::remove_file(at);
        std::os::unix::fs::symlink(&self.path, at).unwrap();
    }

    /// Panics unless the file still holds what it was created with.
    pub(crate) fn assert_untouched(&self) {
        assert_eq!(std::fs::read(&self.path).unwrap(), Self::CONTENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn links_are_never_followed_and_removed_not_deleted_through() {
        let outside = OutsideFile::new();
        std::fs::create_dir(outside.dir().join("tree")).unwrap();
        std::fs::write(outside.dir().join("tree/f"), b"also").unwrap();

        let cache = tempfile::tempdir().unwrap();
        let dir = Dir::open_path(cache.path()).unwrap();
        outside.plant_link(&cache.path().join("file-link"));
        symlink(outside.dir().join("tree"), cache.path().join("dir-link")).unwrap();
        for how in [Open::Read, Open::ReadWrite, Open::CreateNew] {
            assert!(dir.open_file("file-link", how).is_err(), "{how:?}");
        }
        assert!(is_foreign(&dir.open_dir("dir-link").unwrap_err()));
        assert!(!dir.stat("file-link").unwrap().is_file());
        dir.remove_tree("dir-link").unwrap();
        dir.remove_tree("file-link").unwrap();
        // A tree holding a link to the outside: the link goes, the outside stays.
        std::fs::create_dir(cache.path().join("t")).unwrap();
        symlink(outside.dir().join("tree"), cache.path().join("t/l")).unwrap();
        dir.remove_tree("t").unwrap();
        assert_eq!(dir.names().unwrap(), Vec::<String>::new());
        outside.assert_untouched();
        assert_eq!(
            std::fs::read(outside.dir().join("tree/f")).unwrap(),
            b"also"
        );
        assert!(dir.open_file("../x", Open::CreateNew).is_err());
    }

    #[test]
    fn a_fifo_is_not_a_cache_file() {
        let cache = tempfile::tempdir().unwrap();
        let fifo =
            CString::new(cache.path().join("p").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = Dir::open_path(cache.path()).unwrap();
        let e = dir.open_file("p", Open::Read).unwrap_err();
        assert!(is_foreign(&e), "{e}");
    }

    #[test]
    fn a_cache_root_others_can_write_or_own_is_refused_and_left_alone() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Dir::open_cache_root(&open).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        let mode = std::fs::metadata(&open).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o777, "mode unchanged");

        let link = base.path().join("link");
        symlink(&open, &link).unwrap();
        let e = Dir::open_cache_root(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        let fresh = base.path().join("a/b/fresh");
        Dir::open_cache_root(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = Dir::open_cache_root(&theirs).unwrap_err();
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        }
    }
}
