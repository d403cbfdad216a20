//! [`DropBehind`]: the cache file's pages of bytes already copied into FUSE replies are let
//! go once the readers are a little further on.
//!
//! The reader has those bytes (in its buffer, or in its mount's page cache for a mapping).
//! Keeping the cache file's pages as well could hold every cold byte in memory twice: a model
//! half the size of the node's memory would push out everything else, and where the host
//! takes back the memory a guest leaves free, allocating the second copy is much of a cold
//! load's cost. Pages still mapped or dirty are never dropped (the kernel skips them), so
//! nothing here can lose a byte; a later read of a dropped page reads it from disk.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::CacheEntry;

/// Bytes served after a range before its pages are written back (started, not waited for).
const WRITE_BACK_LAG: u64 = 32 << 20;
/// Bytes served after a range before its pages are dropped: far enough behind that a reader
/// (or the kernel's readahead of its mount) is done with them, and that their write-back,
/// started at [`WRITE_BACK_LAG`], has finished.
const DROP_LAG: u64 = 128 << 20;
/// The largest range a run of consecutive reads is merged into (fewer syscalls).
const MERGE_MAX: u64 = 8 << 20;
/// With no read for this long, every range still held is written back and dropped: the
/// load it belonged to is over.
const IDLE: Duration = Duration::from_secs(1);

/// Bytes of a data file copied into a FUSE reply. The entry is held until its pages are let
/// go: at most until 128 MiB more were read or the reads stopped for a second (an entry held
/// is not evicted meanwhile).
#[derive(Clone, Debug)]
pub(super) struct Served<E = Arc<CacheEntry>> {
    entry: E,
    offset: u64,
    len: u64,
}

/// Whether two handles name the same file (ranges of one file merge).
trait SameFile {
    fn same_file(&self, other: &Self) -> bool;
}

impl SameFile for Arc<CacheEntry> {
    fn same_file(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// What to do with the pages of one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advice {
    /// Start writing its dirty pages back.
    WriteBack,
    /// Wait for its write-back, then drop its pages.
    Drop,
}

/// The ranges served, oldest first, and what each is due: the logic without the syscalls.
#[derive(Debug)]
struct Lag<E> {
    ranges: VecDeque<(Served<E>, u64)>,
    /// Bytes served in all, the position each range's lag is counted from.
    total: u64,
    /// Ranges at the front already written back.
    written_back: usize,
}

impl<E> Default for Lag<E> {
    fn default() -> Self {
        Lag {
            ranges: VecDeque::new(),
            total: 0,
            written_back: 0,
        }
    }
}

impl<E: SameFile + Clone> Lag<E> {
    /// Adds `served` (merged into the last range when it continues it) and returns the
    /// ranges now due for write-back or dropping, in order.
    fn push(&mut self, served: Served<E>) -> Vec<(Served<E>, Advice)> {
        self.total += served.len;
        let last_not_written_back = self.written_back < self.ranges.len();
        match self.ranges.back_mut() {
            Some((last, end))
                if last_not_written_back
                    && last.len + served.len <= MERGE_MAX
                    && last.offset + last.len == served.offset
                    && last.entry.same_file(&served.entry) =>
            {
                last.len += served.len;
                *end = self.total;
            }
            _ => self.ranges.push_back((served, self.total)),
        }
        let mut due = Vec::new();
        while let Some((_, end)) = self.ranges.get(self.written_back) {
            if self.total - end < WRITE_BACK_LAG {
                break;
            }
            let (served, _) = &self.ranges[self.written_back];
            due.push((served.clone(), Advice::WriteBack));
            self.written_back += 1;
        }
        while let Some((_, end)) = self.ranges.front() {
            if self.total - end < DROP_LAG {
                break;
            }
            due.extend(self.pop_front());
        }
        due
    }

    /// Every range still held, to drop (the readers went quiet).
    fn drain(&mut self) -> Vec<(Served<E>, Advice)> {
        let mut due = Vec::new();
        while let Some(next) = self.pop_front() {
            due.push(next);
        }
        due
    }

    fn pop_front(&mut self) -> Option<(Served<E>, Advice)> {
        let (served, _) = self.ranges.pop_front()?;
        self.written_back = self.written_back.saturating_sub(1);
        Some((served, Advice::Drop))
    }
}

impl Served {
    /// Bytes `offset..offset + len` of `entry`'s data file.
    pub(super) fn new(entry: &Arc<CacheEntry>, offset: u64, len: u64) -> Served {
        Served {
            entry: entry.clone(),
            offset,
            len,
        }
    }
}

/// Drops the cache file's pages behind the readers, on a thread of its own (started by the
/// first read), so a read only sends its range.
#[derive(Debug, Default)]
pub(super) struct DropBehind {
    ranges: OnceLock<Sender<Served>>,
}

impl DropBehind {
    /// Notes that `served` was copied into a reply.
    pub(super) fn served(&self, served: Served) {
        let sender = self.ranges.get_or_init(|| {
            let (sender, receiver) = mpsc::channel();
            let started = std::thread::Builder::new()
                .name("modelfs-drop-behind".into())
                .spawn(move || run(&receiver));
            if let Err(e) = started {
                tracing::warn!("cache: pages of served bytes are kept (no thread: {e})");
            }
            sender
        });
        // With no thread the receiver is gone and the send fails: the pages stay, as before.
        let _ = sender.send(served);
    }
}

/// Until the cache is dropped (its sender with it): takes each range served and advises the
/// kernel on those due.
fn run(ranges: &Receiver<Served>) {
    let mut lag = Lag::default();
    loop {
        let due = match ranges.recv_timeout(IDLE) {
            Ok(served) => lag.push(served),
            Err(RecvTimeoutError::Timeout) => lag.drain(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        for (served, advice) in due {
            advise(&served.entry.entry.data, served.offset, served.len, advice);
        }
    }
}

fn advise(data: &File, offset: u64, len: u64, advice: Advice) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let fd = data.as_raw_fd();
    // Failures only leave pages cached: nothing to report.
    // SAFETY: both calls take a valid descriptor and a range; neither touches our memory.
    unsafe {
        match advice {
            Advice::WriteBack => {
                libc::sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE);
            }
            Advice::Drop => {
                libc::sync_file_range(
                    fd,
                    offset,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    impl SameFile for u32 {
        fn same_file(&self, other: &Self) -> bool {
            self == other
        }
    }

    fn served(file: u32, offset: u64, len: u64) -> Served<u32> {
        Served {
            entry: file,
            offset,
            len,
        }
    }

    /// `(offset, len, advice)` of each range due.
    fn due(lag: &mut Lag<u32>, next: Served<u32>) -> Vec<(u64, u64, Advice)> {
        ranges(lag.push(next))
    }

    fn ranges(due: Vec<(Served<u32>, Advice)>) -> Vec<(u64, u64, Advice)> {
        due.iter().map(|(s, a)| (s.offset, s.len, *a)).collect()
    }

    #[test]
    fn a_sequential_reader_is_written_back_then_dropped_behind_in_merged_ranges() {
        let entry = 1;
        let mut lag = Lag::default();
        let mut all = Vec::new();
        let read = DROP_LAG + 64 * MIB;
        for at in (0..read).step_by(MIB as usize / 2) {
            let now = due(&mut lag, served(entry, at, MIB / 2));
            for &(offset, len, advice) in &now {
                let behind = at + MIB / 2 - (offset + len);
                match advice {
                    Advice::WriteBack => assert!(behind >= WRITE_BACK_LAG, "{behind}"),
                    Advice::Drop => assert!(behind >= DROP_LAG, "{behind}"),
                }
            }
            all.extend(now);
        }
        let written: Vec<_> = all.iter().filter(|r| r.2 == Advice::WriteBack).collect();
        let dropped: Vec<_> = all.iter().filter(|r| r.2 == Advice::Drop).collect();
        assert!(all.iter().all(|&(_, len, _)| len == MERGE_MAX), "{all:?}");
        // Everything more than DROP_LAG behind is dropped, each range written back first.
        assert_eq!(dropped.len() as u64, (read - DROP_LAG) / MERGE_MAX);
        for (i, d) in dropped.iter().enumerate() {
            assert_eq!(d.0, i as u64 * MERGE_MAX);
            assert!(written.iter().any(|w| w.0 == d.0));
        }
        // The rest is dropped once the reader goes quiet, exactly once each byte.
        let rest = ranges(lag.drain());
        assert!(rest.iter().all(|r| r.2 == Advice::Drop));
        let held: u64 = rest.iter().map(|r| r.1).sum();
        assert_eq!(held, DROP_LAG);
        assert_eq!(rest[0].0, read - DROP_LAG);
        assert!(lag.drain().is_empty());
    }

    #[test]
    fn interleaved_readers_and_other_files_are_not_merged() {
        let (a, b) = (1, 2);
        let mut lag = Lag::default();
        lag.push(served(a, 0, MIB));
        lag.push(served(b, MIB, MIB)); // continues the offset, but of another file
        lag.push(served(a, 4 * MIB, MIB)); // another reader of the same file
        lag.push(served(a, 5 * MIB, MIB)); // continues it
        let rest = ranges(lag.drain());
        let got: Vec<(u64, u64)> = rest.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(got, [(0, MIB), (MIB, MIB), (4 * MIB, 2 * MIB)]);
    }

    #[test]
    fn a_range_written_back_is_not_grown_afterwards() {
        let entry = 1;
        let mut lag = Lag::default();
        lag.push(served(entry, 0, MIB));
        // Another file's reads push the first range past the write-back lag.
        let now = due(&mut lag, served(2, 0, WRITE_BACK_LAG));
        assert_eq!(now, [(0, MIB, Advice::WriteBack)]);
        // The first reader continues: a new range, not one whose write-back already started.
        lag.push(served(entry, MIB, MIB));
        let rest = ranges(lag.drain());
        let got: Vec<(u64, u64)> = rest.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(got, [(0, MIB), (0, WRITE_BACK_LAG), (MIB, MIB)]);
    }
}
