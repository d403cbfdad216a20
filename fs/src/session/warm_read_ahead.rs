//! Warm read-ahead: a large, complete cache entry opened in passthrough mode for a load is
//! read into the page cache ahead of the reader, so the load runs at the disk's speed with
//! queue depth rather than at one stream's.
//!
//! Passthrough reads never reach the daemon, so the decision is made at open: an open of a
//! file of at least [`MIN_FILE_BYTES`] that is still held after [`SETTLE`] is a load (a
//! header scan opens, reads a few KiB and closes within milliseconds). The read-ahead then
//! asks the kernel for the data file in [`CHUNK_BYTES`] pieces from the start with
//! `readahead(2)`, skipping pieces already resident, until the file's last open closes or
//! the budget ([`WarmLimit`]) is spent. `readahead(2)` submits the I/O and returns (it
//! blocks only while the device queue is full), so one thread keeps the queue deep; it
//! keeps [`IN_FLIGHT`] pieces outstanding, waiting for the oldest to be read before asking
//! for the next, so a file closed soon after its open costs little I/O. The pages are the
//! page cache's, shared with the kernel's passthrough reads, and never the daemon's memory.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::disk::CacheEntry;

/// Smallest file read ahead: below it a load is short anyway.
pub const MIN_FILE_BYTES: u64 = 64 << 20;

/// How long an open must be held before it counts as a load.
pub const SETTLE: Duration = Duration::from_millis(30);

/// Bytes asked for per `readahead(2)` call.
pub const CHUNK_BYTES: u64 = 8 << 20;

/// Pieces asked for and not yet read, per file: the queue depth the read-ahead keeps.
pub const IN_FLIGHT: usize = 8;

/// How long the read-ahead waits for one piece before asking for the next anyway.
const PIECE_WAIT: Duration = Duration::from_secs(2);

/// How many bytes one file may have read ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WarmLimit {
    /// Half of the memory available (`MemAvailable`) when the read-ahead starts, and at most
    /// half of this process's memory limit ([`crate::memory::limit`]): `readahead(2)` charges
    /// the pages to our cgroup, which would evict them before the reader got to them.
    #[default]
    Auto,
    /// At most this many bytes, and never more than [`WarmLimit::Auto`]'s share; 0 disables
    /// the read-ahead.
    Bytes(u64),
}

impl WarmLimit {
    /// Whether read-ahead is off.
    pub fn is_disabled(self) -> bool {
        self == WarmLimit::Bytes(0)
    }

    /// The bytes one file may have read ahead now: memory must be able to hold them.
    pub fn budget(self) -> u64 {
        let available = crate::memory::meminfo("MemAvailable").unwrap_or(0);
        self.budget_with(available.min(crate::memory::limit().unwrap_or(u64::MAX)))
    }

    /// The budget when `available` bytes of memory are available to this process.
    fn budget_with(self, available: u64) -> u64 {
        let share = available / 2;
        match self {
            WarmLimit::Auto => share,
            WarmLimit::Bytes(limit) => limit.min(share),
        }
    }
}

/// The read-aheads of one session: at most one per inode at a time.
#[derive(Debug, Default)]
pub struct WarmReadAhead {
    limit: WarmLimit,
    running: Mutex<HashSet<u64>>,
    bytes: AtomicU64,
}

impl WarmReadAhead {
    /// Read-aheads bounded by `limit`.
    pub fn new(limit: WarmLimit) -> WarmReadAhead {
        WarmReadAhead {
            limit,
            ..WarmReadAhead::default()
        }
    }

    /// Bytes asked of the disk so far (pieces already resident are not counted).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether an open of a file of `size` bytes in passthrough mode may start a read-ahead.
    pub fn wanted(&self, size: u64) -> bool {
        !self.limit.is_disabled() && size >= MIN_FILE_BYTES
    }

    /// After [`SETTLE`], if `still_open` says inode `ino` is still open, reads `entry`'s data
    /// file ahead (on a blocking thread) while it stays open. Must be called on the runtime.
    pub fn schedule(
        self: &Arc<Self>,
        ino: u64,
        entry: Arc<CacheEntry>,
        still_open: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE).await;
            if !still_open() || !this.claim(ino) {
                return;
            }
            let worker = this.clone();
            let ran = tokio::task::spawn_blocking(move || {
                let budget = worker.limit.budget();
                let size = entry.entry.id.size;
                match read_ahead(&entry.entry.data, size, budget, &still_open) {
                    Ok(bytes) => {
                        worker.bytes.fetch_add(bytes, Ordering::Relaxed);
                        crate::metrics::metrics().warm_read_ahead_bytes(bytes);
                        tracing::debug!(key = %entry.entry.id.key, bytes, budget, "warm read-ahead done");
                    }
                    Err(e) => {
                        tracing::debug!(key = %entry.entry.id.key, "warm read-ahead stopped: {e}")
                    }
                }
            })
            .await;
            if let Err(e) = ran {
                tracing::debug!("warm read-ahead task failed: {e}");
            }
            this.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino);
        });
    }

    fn claim(&self, ino: u64) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino)
    }
}

/// Asks the kernel to read `file` (of `size` bytes) into the page cache from its start, in
/// [`CHUNK_BYTES`] pieces, skipping resident ones, while `go_on` holds and until `budget`
/// bytes were asked for. Returns the bytes asked for.
pub fn read_ahead(
    file: &File,
    size: u64,
    budget: u64,
    go_on: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    if size == 0 {
        return Ok(0);
    }
    // SAFETY: a shared read-only mapping of a cache data file, whose size is fixed when the
    // entry is created; it is only given to mincore(2), never read.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .len(usize::try_from(size).map_err(std::io::Error::other)?)
            .map(file)?
    };
    let mut pages = Vec::new();
    let mut outstanding = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let (mut offset, mut asked) = (0u64, 0u64);
    while offset < size && asked < budget && go_on() {
        let len = CHUNK_BYTES.min(size - offset);
        if !resident(&map, offset, len, &mut pages) {
            if outstanding.len() == IN_FLIGHT {
                if let Some((oldest, oldest_len)) = outstanding.pop_front() {
                    wait_resident(&map, oldest, oldest_len, &mut pages, go_on);
                }
            }
            // SAFETY: readahead(2) on an open descriptor; it reads nothing into our memory.
            let rc = unsafe { libc::readahead(file.as_raw_fd(), offset as i64, len as usize) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            outstanding.push_back((offset, len));
            asked += len;
        }
        offset += len;
    }
    Ok(asked)
}

/// Waits until `offset..offset + len` of `map` is resident, `go_on` turns false, or
/// [`PIECE_WAIT`] passes.
fn wait_resident(
    map: &memmap2::Mmap,
    offset: u64,
    len: u64,
    pages: &mut Vec<u8>,
    go_on: &dyn Fn() -> bool,
) {
    let deadline = std::time::Instant::now() + PIECE_WAIT;
    while !resident(map, offset, len, pages) && go_on() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether every page of `offset..offset + len` of `map` is in the page cache (`offset`
/// page-aligned); `pages` is scratch space.
fn resident(map: &memmap2::Mmap, offset: u64, len: u64, pages: &mut Vec<u8>) -> bool {
    let page = 4096u64;
    pages.clear();
    pages.resize(len.div_ceil(page) as usize, 0);
    // SAFETY: `offset..offset + len` lies inside the live mapping `map` (page-aligned start),
    // and `pages` has one byte per page of it.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(offset as usize) as *mut libc::c_void,
            len as usize,
            pages.as_mut_ptr(),
        )
    };
    rc == 0 && pages.iter().all(|p| p & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A file of `len` bytes on disk whose pages are not in the page cache.
    fn cold_file(len: usize) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
        tmp.write_all(&vec![7u8; len]).unwrap();
        tmp.as_file().sync_all().unwrap();
        let file = File::open(tmp.path()).unwrap();
        drop_pages(&file);
        (tmp, file)
    }

    fn drop_pages(file: &File) {
        // SAFETY: fadvise on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    fn resident_bytes(file: &File, size: u64) -> u64 {
        let map = unsafe { memmap2::Mmap::map(file).unwrap() };
        let mut pages = Vec::new();
        (0..size)
            .step_by(4096)
            .filter(|&off| resident(&map, off, 4096.min(size - off), &mut pages))
            .count() as u64
            * 4096
    }

    fn wait_resident(file: &File, size: u64, want: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = resident_bytes(file, size);
            if got >= want || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_cold_file_becomes_resident_and_resident_pieces_are_not_asked_again() {
        let size = 4 * CHUNK_BYTES;
        let (_tmp, file) = cold_file(size as usize);
        assert!(
            resident_bytes(&file, size) < size / 2,
            "pages dropped first"
        );
        assert_eq!(read_ahead(&file, size, u64::MAX, &|| true).unwrap(), size);
        assert_eq!(wait_resident(&file, size, size), size);
        assert_eq!(read_ahead(&file, size, u64::MAX, &|| true).unwrap(), 0);
    }

    #[test]
    fn the_budget_and_the_last_close_stop_it() {
        let size = 4 * CHUNK_BYTES;
        let (_tmp, file) = cold_file(size as usize);
        assert_eq!(
            read_ahead(&file, size, CHUNK_BYTES, &|| true).unwrap(),
            CHUNK_BYTES
        );
        let (_tmp, file) = cold_file(size as usize);
        assert_eq!(read_ahead(&file, size, u64::MAX, &|| false).unwrap(), 0);
        let calls = std::sync::atomic::AtomicU64::new(0);
        let twice = || calls.fetch_add(1, Ordering::Relaxed) < 2;
        assert_eq!(
            read_ahead(&file, size, u64::MAX, &twice).unwrap(),
            2 * CHUNK_BYTES
        );
    }

    #[test]
    fn the_limit_never_exceeds_half_the_available_memory() {
        assert!(WarmLimit::Auto.budget() > 0);
        let limit = crate::memory::limit().expect("a memory limit");
        assert!(WarmLimit::Auto.budget() <= limit / 2);
        // Fixed figures: MemAvailable moves between two reads while other tests run.
        let available = 12 << 30;
        let share = WarmLimit::Auto.budget_with(available);
        assert_eq!(share, 6 << 30);
        assert_eq!(WarmLimit::Bytes(u64::MAX).budget_with(available), share);
        assert_eq!(WarmLimit::Bytes(1 << 20).budget_with(available), 1 << 20);
        assert_eq!(WarmLimit::Bytes(1 << 20).budget_with(1 << 20), 1 << 19);
        assert_eq!(WarmLimit::Auto.budget_with(0), 0);
        assert!(WarmLimit::Bytes(0).is_disabled());
        assert!(!WarmReadAhead::new(WarmLimit::Bytes(0)).wanted(1 << 40));
        assert!(!WarmReadAhead::new(WarmLimit::Auto).wanted(MIN_FILE_BYTES - 1));
    }
}
