//! File locks that coordinate modelfs processes sharing one cache directory.
//!
//! - A **shared `flock`** on an entry's `map` while a process uses the entry; eviction takes
//!   it exclusively (non-blocking), so entries in use are never removed under a reader.
//! - An **exclusive OFD byte-range lock** on a block's record while a process downloads that
//!   block, so concurrent processes fetch each block once: the others wait, then find it
//!   present. The kernel drops both kinds when a process dies, so a crash never wedges the
//!   cache.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes a shared (`exclusive == false`) or exclusive `flock` on `file`, without blocking.
/// Returns false when another holder prevents it.
pub fn try_flock(file: &File, exclusive: bool) -> io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: the fd is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Takes a shared `flock` on `file`, waiting for an exclusive holder (an eviction) to finish.
pub fn flock_shared(file: &File) -> io::Result<()> {
    // SAFETY: the fd is valid for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ofd_lock(file: &File, start: u64, len: u64, kind: libc::c_short) -> io::Result<bool> {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    // SAFETY: valid fd and a valid pointer to an initialised flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Tries to take an exclusive byte-range lock; false if another open file holds it.
pub fn try_lock_range(file: &File, start: u64, len: u64) -> io::Result<bool> {
    ofd_lock(file, start, len, libc::F_WRLCK as libc::c_short)
}

/// Releases a byte-range lock taken with [`try_lock_range`].
pub fn unlock_range(file: &File, start: u64, len: u64) -> io::Result<()> {
    ofd_lock(file, start, len, libc::F_UNLCK as libc::c_short).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two independent opens (file descriptions) of one temporary file, read-write.
    fn two_opens() -> (tempfile::NamedTempFile, File, File) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let a = file.reopen().unwrap();
        let b = file.reopen().unwrap();
        (file, a, b)
    }

    #[test]
    fn range_locks_exclude_other_open_files_and_release() {
        let (_file, a, b) = two_opens();
        assert!(try_lock_range(&a, 8, 8).unwrap());
        assert!(!try_lock_range(&b, 8, 8).unwrap());
        assert!(try_lock_range(&b, 16, 8).unwrap(), "other ranges are free");
        unlock_range(&a, 8, 8).unwrap();
        assert!(try_lock_range(&b, 8, 8).unwrap());
    }

    #[test]
    fn shared_flock_blocks_exclusive() {
        let (_file, a, b) = two_opens();
        flock_shared(&a).unwrap();
        assert!(!try_flock(&b, true).unwrap());
        drop(a);
        assert!(try_flock(&b, true).unwrap());
    }
}
