//! One cache entry on disk: one object version as a directory holding
//!
//! - `data`: a sparse file with the object's bytes at the object's own offsets (a complete
//!   entry is an ordinary local copy of the object, usable as a FUSE passthrough backing file);
//! - `map`: a 4 KiB header naming the object version, then one 8-byte record per block:
//!   CRC32C of the block and a presence marker.
//!
//! Crash safety: a block's bytes are written before its record, and every read checks the
//! CRC, so a block torn by a crash or flipped on disk is detected, dropped and fetched again.
//! A complete entry whose every block was verified gets a `verified` seal naming the data
//! file's inode, size, ctime and mtime; while those are unchanged it may be read directly
//! (FUSE passthrough) without checking again. Any write to the file voids the seal.
//! Entries are created in a temporary directory and renamed into place, so another process
//! sees either no entry or a whole one.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MODELFS1";
const FORMAT_VERSION: u32 = 1;
/// Bytes before the first block record in `map`.
pub const HEADER_LEN: u64 = 4096;
/// Bytes per block record in `map`.
pub const RECORD_LEN: u64 = 8;
/// Marks a present block (not 1, so stray bytes rarely read as present).
const PRESENT: u32 = 0x5453_5250; // "PRST"

/// Which object version an entry holds, and how it is cut into blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryId {
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The object's ETag.
    pub etag: String,
    /// The object's size.
    pub size: u64,
    /// Bytes per block.
    pub block_size: u64,
}

impl EntryId {
    /// The entry's directory name: a hash of everything that identifies the version.
    pub fn stem(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.bucket, &self.key, &self.etag] {
            hash.update(part.as_bytes());
            hash.update([0u8]);
        }
        hash.update(self.size.to_le_bytes());
        hash.update(self.block_size.to_le_bytes());
        hash.finalize()[..20]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Length of block `index`.
    pub fn block_len(&self, index: u64) -> u64 {
        let start = index * self.block_size;
        self.size.saturating_sub(start).min(self.block_size)
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        h.extend_from_slice(&self.block_size.to_le_bytes());
        h.extend_from_slice(&self.size.to_le_bytes());
        let ident = format!("{}\0{}\0{}", self.bucket, self.key, self.etag);
        h.extend_from_slice(&(ident.len() as u32).to_le_bytes());
        h.extend_from_slice(ident.as_bytes());
        h
    }

    /// Reads the identity back from a map header.
    pub fn parse_header(bytes: &[u8]) -> Option<EntryId> {
        if bytes.len() < 32 || &bytes[..8] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
        if u32_at(8) != FORMAT_VERSION {
            return None;
        }
        let (block_size, size, len) = (u64_at(12), u64_at(20), u32_at(28) as usize);
        let ident = std::str::from_utf8(bytes.get(32..32 + len)?).ok()?;
        let mut parts = ident.splitn(3, '\0');
        let (bucket, key, etag) = (parts.next()?, parts.next()?, parts.next()?);
        (block_size > 0).then(|| EntryId {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            block_size,
        })
    }
}

/// An open cache entry.
#[derive(Debug)]
pub struct Entry {
    /// Identity of the version held.
    pub id: EntryId,
    /// The entry's directory.
    pub dir: PathBuf,
    /// The data file (object bytes at object offsets).
    pub data: File,
    /// The map file (header + block records).
    pub map: File,
    /// Writers of this entry in this process take turns here rather than on the kernel's
    /// inode lock, where a waiting writer spins on the CPU for as long as the writer holding
    /// it copies (measured: a quarter of a cold load's daemon CPU on 2 cores).
    writing: std::sync::Mutex<()>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o600);
    o
}

impl Entry {
    /// Opens the entry for `id` under `objects`, creating it if it does not exist. An entry
    /// that is damaged (wrong header, wrong sizes) is replaced.
    pub fn open_or_create(objects: &Path, id: &EntryId) -> io::Result<Entry> {
        let stem = id.stem();
        let shard = objects.join(&stem[..2]);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&shard)?;
        let dir = shard.join(&stem);
        for _ in 0..4 {
            match Self::open_existing(&dir, id) {
                Ok(Some(entry)) => return Ok(entry),
                Ok(None) => {
                    // Damaged: move it away so a fresh one can take its place.
                    let trash = shard.join(format!(".trash-{stem}-{}", unique()));
                    if std::fs::rename(&dir, &trash).is_ok() {
                        let _ = std::fs::remove_dir_all(&trash);
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Self::create(&shard, &dir, id)?;
        }
        Err(io::Error::other(format!(
            "cache entry {} keeps changing under us",
            dir.display()
        )))
    }

    /// Opens the entry in `dir` whatever version it holds (for `modelfs cache` commands);
    /// `Ok(None)` if it is damaged.
    pub fn open_dir(dir: &Path) -> io::Result<Option<Entry>> {
        let map = options().open(dir.join("map"))?;
        let mut header = vec![0u8; HEADER_LEN as usize];
        let n = map.read_at(&mut header, 0)?;
        match EntryId::parse_header(&header[..n]) {
            Some(id) => Self::open_existing(dir, &id),
            None => Ok(None),
        }
    }

    /// Opens an existing entry; `Ok(None)` when it exists but does not match `id`.
    pub fn open_existing(dir: &Path, id: &EntryId) -> io::Result<Option<Entry>> {
        let map = options().open(dir.join("map"))?;
        let mut header = vec![0u8; HEADER_LEN as usize];
        let n = map.read_at(&mut header, 0)?;
        if EntryId::parse_header(&header[..n]).as_ref() != Some(id) {
            return Ok(None);
        }
        let data = match options().open(dir.join("data")) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let map_len = HEADER_LEN + id.blocks() * RECORD_LEN;
        if data.metadata()?.len() != id.size || map.metadata()?.len() != map_len {
            return Ok(None);
        }
        Ok(Some(Entry {
            id: id.clone(),
            dir: dir.to_path_buf(),
            data,
            map,
            writing: std::sync::Mutex::new(()),
        }))
    }

    fn create(shard: &Path, dir: &Path, id: &EntryId) -> io::Result<()> {
        let tmp = shard.join(format!(".tmp-{}-{}", id.stem(), unique()));
        std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        let result = (|| {
            let data = options().create_new(true).open(tmp.join("data"))?;
            data.set_len(id.size)?;
            let map = options().create_new(true).open(tmp.join("map"))?;
            map.write_all_at(&id.header(), 0)?;
            map.set_len(HEADER_LEN + id.blocks() * RECORD_LEN)?;
            std::fs::rename(&tmp, dir)
        })();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another process created it first: use theirs.
                if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Whether this open entry is still the one at its path (not evicted and replaced).
    pub fn is_current(&self) -> bool {
        match (self.map.metadata(), std::fs::metadata(self.dir.join("map"))) {
            (Ok(open), Ok(on_disk)) => open.ino() == on_disk.ino() && open.dev() == on_disk.dev(),
            _ => false,
        }
    }

    fn record_offset(&self, index: u64) -> u64 {
        HEADER_LEN + index * RECORD_LEN
    }

    /// The CRC recorded for block `index`, if the block is present.
    pub fn record(&self, index: u64) -> io::Result<Option<u32>> {
        let mut rec = [0u8; RECORD_LEN as usize];
        self.map
            .read_exact_at(&mut rec, self.record_offset(index))?;
        let crc = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let state = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        Ok((state == PRESENT).then_some(crc))
    }

    /// All records at once: `Some(crc)` per present block.
    pub fn records(&self) -> io::Result<Vec<Option<u32>>> {
        let blocks = self.id.blocks() as usize;
        let mut raw = vec![0u8; blocks * RECORD_LEN as usize];
        self.map.read_exact_at(&mut raw, HEADER_LEN)?;
        Ok(raw
            .chunks_exact(RECORD_LEN as usize)
            .map(|r| {
                let crc = u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
                let state = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                (state == PRESENT).then_some(crc)
            })
            .collect())
    }

    /// Reads block `index` if present and intact. A block whose CRC does not match is
    /// dropped (its record cleared) and reported as `Err(Corrupt)`.
    pub fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>, ReadBlockError> {
        let Some(crc) = self.record(index)? else {
            return Ok(None);
        };
        let buf = self.read_range(index * self.id.block_size, self.id.block_len(index))?;
        if crc32c::crc32c(&buf) != crc {
            self.unseal();
            self.clear(index)?;
            return Err(ReadBlockError::Corrupt);
        }
        Ok(Some(buf))
    }

    /// The data file's bytes `offset..offset + len`, unchecked: the caller knows the blocks
    /// they lie in are present and intact.
    pub fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        read_exact_at_uninit(&self.data, offset, len)
    }

    /// The data file's bytes `offset..offset + len` as a read-only mapping of its page cache,
    /// populated (pages not resident are read from disk: call it where blocking is fine).
    /// `None` when a page is still not resident after that (read into a buffer instead), so
    /// a reply never waits on (or fails in) a disk read it cannot report. Unchecked, like
    /// [`Entry::read_range`].
    pub fn map_range(&self, offset: u64, len: u64) -> Option<bytes::Bytes> {
        self.map(offset, len, true)
    }

    /// [`Entry::map_range`] without reading anything from disk: `Some` only when every page
    /// is resident already, so a caller that must not block (an async task) can serve from
    /// it. A FUSE reply written from the mapping costs one copy, where reading into a buffer
    /// first costs two; the kernel maps the pages as it copies them.
    pub fn map_resident(&self, offset: u64, len: u64) -> Option<bytes::Bytes> {
        self.map(offset, len, false)
    }

    fn map(&self, offset: u64, len: u64, populate: bool) -> Option<bytes::Bytes> {
        let page = page_size();
        let start = offset - offset % page;
        let map_len = usize::try_from(offset + len - start).ok()?;
        let mut options = memmap2::MmapOptions::new();
        options.offset(start).len(map_len);
        if populate {
            options.populate();
        }
        // SAFETY: a shared read-only mapping of the data file, whose size is fixed when the
        // entry is created (never truncated: eviction unlinks whole entries, which leaves the
        // open file and its pages valid); the bytes of present blocks are never rewritten
        // with other bytes (writers only fill blocks that are absent).
        let map = unsafe { options.map(&self.data) }.ok()?;
        let pages = map_len.div_ceil(page as usize);
        let mut resident = vec![0u8; pages];
        // SAFETY: `map` is a live mapping of `map_len` bytes at a page-aligned address, and
        // `resident` has one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                map_len,
                resident.as_mut_ptr(),
            )
        };
        if rc != 0 || resident.iter().any(|r| r & 1 == 0) {
            return None;
        }
        let from = (offset - start) as usize;
        Some(bytes::Bytes::from_owner(map).slice(from..from + len as usize))
    }

    /// Writes block `index`: bytes first, then the record that makes them visible.
    pub fn write_block(&self, index: u64, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 != self.id.block_len(index) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "block {index} has {} bytes, expected {}",
                    bytes.len(),
                    self.id.block_len(index)
                ),
            ));
        }
        self.write_data(index * self.id.block_size, bytes)?;
        self.write_records(index, &[crc32c::crc32c(bytes)])
    }

    /// Writes `bytes` into the data file at `offset`, visible to no reader until
    /// [`Entry::write_records`] names the blocks they fill.
    pub fn write_data(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let _turn = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.data.write_all_at(bytes, offset)
    }

    /// Marks the blocks from `first` present with these CRCs (their bytes written before).
    pub fn write_records(&self, first: u64, crcs: &[u32]) -> io::Result<()> {
        let mut records = Vec::with_capacity(crcs.len() * RECORD_LEN as usize);
        for crc in crcs {
            records.extend_from_slice(&crc.to_le_bytes());
            records.extend_from_slice(&PRESENT.to_le_bytes());
        }
        self.map.write_all_at(&records, self.record_offset(first))
    }

    /// Forgets block `index`.
    pub fn clear(&self, index: u64) -> io::Result<()> {
        self.map
            .write_all_at(&[0u8; RECORD_LEN as usize], self.record_offset(index))
    }

    /// Whether every block is present (CRCs not checked).
    pub fn is_complete(&self) -> io::Result<bool> {
        Ok(self.records()?.iter().all(Option::is_some))
    }

    /// The identity of the data file as it is now: device, inode, size, ctime, mtime (any
    /// write to the file changes it).
    fn data_identity(&self) -> io::Result<String> {
        let m = self.data.metadata()?;
        Ok(format!(
            "{} {} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime(),
            m.ctime_nsec(),
            m.mtime(),
            m.mtime_nsec()
        ))
    }

    /// Records that every block passed its checksum, for the data file exactly as it is now.
    pub fn seal(&self) -> io::Result<()> {
        let tmp = self.dir.join(format!(".verified-{}", unique()));
        let mut file = options().create_new(true).open(&tmp)?;
        std::io::Write::write_all(&mut file, self.data_identity()?.as_bytes())?;
        std::fs::rename(&tmp, self.dir.join("verified"))
    }

    /// Whether a seal exists and the data file has not changed since it was written.
    pub fn is_sealed(&self) -> bool {
        match (
            std::fs::read_to_string(self.dir.join("verified")),
            self.data_identity(),
        ) {
            (Ok(sealed), Ok(now)) => sealed == now,
            _ => false,
        }
    }

    /// Removes the seal.
    pub fn unseal(&self) {
        let _ = std::fs::remove_file(self.dir.join("verified"));
    }

    /// Checks every present block's CRC; drops bad ones. Returns (present, corrupt).
    pub fn verify(&self) -> io::Result<(u64, u64)> {
        self.verify_except(|_| false)
    }

    /// [`Entry::verify`], trusting the present blocks for which `known_good` says so (blocks
    /// the caller wrote or checked itself) without reading them.
    pub fn verify_except(&self, known_good: impl Fn(u64) -> bool) -> io::Result<(u64, u64)> {
        let (mut present, mut corrupt) = (0, 0);
        let records = self.records()?;
        for (index, record) in (0..self.id.blocks()).zip(records) {
            if record.is_some() && known_good(index) {
                present += 1;
                continue;
            }
            match self.read_block(index) {
                Ok(Some(_)) => present += 1,
                Ok(None) => {}
                Err(ReadBlockError::Corrupt) => corrupt += 1,
                Err(ReadBlockError::Io(e)) => return Err(e),
            }
        }
        Ok((present, corrupt))
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Reads exactly `len` bytes of `file` at `offset` into a new buffer that is not zeroed first
/// (zeroing a MiB costs as much as reading it from the page cache).
fn read_exact_at_uninit(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = libc::off_t::try_from(offset + buf.len() as u64).map_err(io::Error::other)?;
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is valid for writes of `spare.len()` bytes, which bounds what pread
        // writes; the descriptor is open for as long as `file` is borrowed.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: pread just initialised the first `n` spare bytes (n <= spare.len()).
            n => unsafe { buf.set_len(buf.len() + n as usize) },
        }
    }
    Ok(buf)
}

/// Why a block could not be read from disk.
#[derive(Debug, thiserror::Error)]
pub enum ReadBlockError {
    /// Its CRC did not match; the block was dropped.
    #[error("block checksum mismatch")]
    Corrupt,
    /// The disk failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(size: u64) -> EntryId {
        EntryId {
            bucket: "b".into(),
            key: "models/x.safetensors".into(),
            etag: "\"abc\"".into(),
            size,
            block_size: 1000,
        }
    }

    #[test]
    fn blocks_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = id(2500);
        let entry = Entry::open_or_create(dir.path(), &id).unwrap();
        assert_eq!(entry.read_block(0).unwrap(), None);
        entry.write_block(2, &[7u8; 500]).unwrap();
        assert!(
            entry.write_block(1, &[1u8; 10]).is_err(),
            "wrong length refused"
        );
        drop(entry);
        let entry = Entry::open_or_create(dir.path(), &id).unwrap();
        assert_eq!(entry.read_block(2).unwrap(), Some(vec![7u8; 500]));
        assert!(!entry.is_complete().unwrap());
        entry.write_block(0, &[0u8; 1000]).unwrap();
        entry.write_block(1, &[1u8; 1000]).unwrap();
        assert!(entry.is_complete().unwrap());
        let meta = std::fs::metadata(entry.dir.join("data")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&entry.dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn resident_mappings_never_read_from_disk() {
        use std::os::fd::AsRawFd;
        // On the checkout's disk: a tmpfs /tmp cannot drop the pages this test drops.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut id = id(3 * 4096);
        id.block_size = 4096;
        let entry = Entry::open_or_create(dir.path(), &id).unwrap();
        let block: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        entry.write_block(1, &block).unwrap();
        let got = entry
            .map_resident(4096 + 10, 100)
            .expect("just written: resident");
        assert_eq!(&got[..], &block[10..110]);
        drop(got);
        // Written back and dropped from the page cache: only the blocking path may serve it.
        entry.data.sync_all().unwrap();
        // SAFETY: a valid fd; the advice only drops clean cached pages.
        let rc =
            unsafe { libc::posix_fadvise(entry.data.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert!(entry.map_resident(4096, 4096).is_none(), "not resident");
        let read = entry.map_range(4096, 4096).expect("populated from disk");
        assert_eq!(&read[..], &block[..]);
    }

    #[test]
    fn a_flipped_byte_is_detected_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::open_or_create(dir.path(), &id(2000)).unwrap();
        entry.write_block(1, &[9u8; 1000]).unwrap();
        entry.seal().unwrap();
        assert!(entry.is_sealed());
        // Filesystems with coarse timestamps need a tick between the seal and the write.
        std::thread::sleep(std::time::Duration::from_millis(20));
        entry.data.write_all_at(&[8u8], 1500).unwrap();
        assert!(!entry.is_sealed(), "a write after the seal voids it");
        entry.seal().unwrap(); // as if a verification had wrongly sealed the damaged file
        assert!(matches!(entry.read_block(1), Err(ReadBlockError::Corrupt)));
        assert!(!entry.is_sealed(), "a damaged block removes the seal");
        assert_eq!(
            entry.read_block(1).unwrap(),
            None,
            "dropped after detection"
        );
    }

    #[test]
    fn a_new_etag_is_a_different_entry_and_damage_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let a = Entry::open_or_create(dir.path(), &id(10)).unwrap();
        let mut other = id(10);
        other.etag = "\"def\"".into();
        let b = Entry::open_or_create(dir.path(), &other).unwrap();
        assert_ne!(a.dir, b.dir);
        a.write_block(0, &[1u8; 10]).unwrap();
        std::fs::write(a.dir.join("map"), b"garbage").unwrap();
        let again = Entry::open_or_create(dir.path(), &id(10)).unwrap();
        assert_eq!(again.read_block(0).unwrap(), None);
        assert_eq!(EntryId::parse_header(&id(10).header()), Some(id(10)));
    }
}
