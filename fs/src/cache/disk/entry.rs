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
//! (FUSE passthrough) without checking again. Any write to the file voids the seal. A seal
//! made after the content matched S3's full-object checksum names it on a second line
//! (`crc64nvme:<base64>`); an open that knows the checksum trusts only such a seal.
//! Entries are created in a temporary directory and renamed into place, so another process
//! sees either no entry or a whole one.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::safe_dir::{is_foreign, Dir, Open};
use crate::store::FullObjectChecksum;

const MAGIC: &[u8; 8] = b"MODELFS1";
/// 2: the identity names the origin (endpoint and addressing style); entries of format 1
/// lie under other names, are never looked up again and age out by eviction.
const FORMAT_VERSION: u32 = 2;
/// Bytes before the first block record in `map`.
pub const HEADER_LEN: u64 = 4096;
/// Bytes per block record in `map`.
pub const RECORD_LEN: u64 = 8;
/// Marks a present block (not 1, so stray bytes rarely read as present).
const PRESENT: u32 = 0x5453_5250; // "PRST"

/// Which object version an entry holds, from where, and how it is cut into blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryId {
    /// The normalized endpoint and addressing style the bytes come from
    /// ([`crate::store::StoreOrigin::address`]): the same bucket, key and ETag served by
    /// another endpoint are another entry, so an endpoint cannot place bytes under the name
    /// another mount looks up.
    pub origin: String,
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
    fn parts(&self) -> [&str; 4] {
        [&self.origin, &self.bucket, &self.key, &self.etag]
    }

    /// The entry's directory name: a hash of everything that identifies the version.
    pub fn stem(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(FORMAT_VERSION.to_le_bytes());
        // Length-prefixed, so no two identities hash the same bytes.
        for part in self.parts() {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
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
        for part in self.parts() {
            h.extend_from_slice(&(part.len() as u32).to_le_bytes());
            h.extend_from_slice(part.as_bytes());
        }
        h
    }

    /// Reads the identity back from a map header.
    pub fn parse_header(bytes: &[u8]) -> Option<EntryId> {
        if bytes.len() < 28 || &bytes[..8] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
        if u32_at(8)? != FORMAT_VERSION {
            return None;
        }
        let (block_size, size) = (u64_at(12)?, u64_at(20)?);
        let mut at = 28;
        let mut part = || {
            let len = u32_at(at)? as usize;
            let text = std::str::from_utf8(bytes.get(at + 4..at + 4 + len)?).ok()?;
            at += 4 + len;
            Some(text.to_string())
        };
        let (origin, bucket, key, etag) = (part()?, part()?, part()?, part()?);
        (block_size > 0).then_some(EntryId {
            origin,
            bucket,
            key,
            etag,
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
    /// The entry's directory (for messages: files are reached through `dir_fd`).
    pub dir: PathBuf,
    /// The entry's directory, open.
    dir_fd: Dir,
    /// The shard directory holding it, to tell whether the entry is still the one there.
    shard: Arc<Dir>,
    /// The entry's name in the shard.
    stem: String,
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

/// A block's CRC-32C, the checksum its record holds (the on-disk format's, so records written
/// by any version of modelfs check).
pub(super) fn block_crc(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// Moves `name` out of the way and removes it (a link is removed, never followed).
fn discard(shard: &Dir, name: &str) {
    let trash = format!(".trash-{name}-{}", unique());
    if shard.rename(name, &trash).is_ok() {
        let _ = shard.remove_tree(&trash);
    }
}

impl Entry {
    /// Opens the entry for `id` under `objects`, creating it if it does not exist. An entry
    /// that is damaged (wrong header, wrong sizes, a link or other stranger in place of a
    /// file) is replaced.
    pub fn open_or_create(objects: &Dir, id: &EntryId) -> io::Result<Entry> {
        let stem = id.stem();
        let shard = Arc::new(objects.ensure_dir(&stem[..2])?);
        for _ in 0..4 {
            match Self::open_existing(&shard, &stem, id) {
                Ok(Some(entry)) => return Ok(entry),
                // Damaged: move it away so a fresh one can take its place.
                Ok(None) => discard(&shard, &stem),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Self::create(&shard, &stem, id)?;
        }
        Err(io::Error::other(format!(
            "cache entry {} keeps changing under us",
            shard.path().join(&stem).display()
        )))
    }

    /// Opens the entry `stem` in `shard` whatever version it holds (for `modelfs cache`
    /// commands); `Ok(None)` if it is damaged.
    pub fn open_any(shard: &Arc<Dir>, stem: &str) -> io::Result<Option<Entry>> {
        let header = match Self::read_header(shard, stem) {
            Ok(header) => header,
            Err(e) if is_foreign(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match EntryId::parse_header(&header) {
            Some(id) => Self::open_existing(shard, stem, &id),
            None => Ok(None),
        }
    }

    fn read_header(shard: &Dir, stem: &str) -> io::Result<Vec<u8>> {
        let map = shard.open_dir(stem)?.open_file("map", Open::Read)?;
        let mut header = vec![0u8; HEADER_LEN as usize];
        let n = map.read_at(&mut header, 0)?;
        header.truncate(n);
        Ok(header)
    }

    /// Opens the existing entry `stem` in `shard`; `Ok(None)` when it exists but does not
    /// match `id` or is damaged; `NotFound` when there is none.
    pub fn open_existing(shard: &Arc<Dir>, stem: &str, id: &EntryId) -> io::Result<Option<Entry>> {
        let dir_fd = match shard.open_dir(stem) {
            Ok(dir) => dir,
            Err(e) if is_foreign(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Once the directory is there its files are too (entries appear by rename, whole):
        // any of them missing or not a regular file means damage, not absence.
        let open = |name| match dir_fd.open_file(name, Open::ReadWrite) {
            Ok(file) => Ok(Some(file)),
            Err(e) if is_foreign(&e) || e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let Some(map) = open("map")? else {
            return Ok(None);
        };
        let mut header = vec![0u8; HEADER_LEN as usize];
        let n = map.read_at(&mut header, 0)?;
        if EntryId::parse_header(&header[..n]).as_ref() != Some(id) {
            return Ok(None);
        }
        let Some(data) = open("data")? else {
            return Ok(None);
        };
        let map_len = HEADER_LEN + id.blocks() * RECORD_LEN;
        if data.metadata()?.len() != id.size || map.metadata()?.len() != map_len {
            return Ok(None);
        }
        Ok(Some(Entry {
            id: id.clone(),
            dir: dir_fd.path().to_path_buf(),
            dir_fd,
            shard: shard.clone(),
            stem: stem.to_string(),
            data,
            map,
            writing: std::sync::Mutex::new(()),
        }))
    }

    fn create(shard: &Dir, stem: &str, id: &EntryId) -> io::Result<()> {
        let header = id.header();
        if header.len() as u64 > HEADER_LEN {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "object identity of {} bytes does not fit a cache entry header",
                    header.len()
                ),
            ));
        }
        let tmp = format!(".tmp-{stem}-{}", unique());
        shard.create_dir(&tmp)?;
        let result = (|| {
            let dir = shard.open_dir(&tmp)?;
            let data = dir.open_file("data", Open::CreateNew)?;
            data.set_len(id.size)?;
            let map = dir.open_file("map", Open::CreateNew)?;
            map.write_all_at(&header, 0)?;
            map.set_len(HEADER_LEN + id.blocks() * RECORD_LEN)?;
            shard.rename(&tmp, stem)
        })();
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = shard.remove_tree(&tmp);
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
        let on_disk = self
            .shard
            .open_dir(&self.stem)
            .and_then(|dir| dir.stat("map"));
        match (self.map.metadata(), on_disk) {
            (Ok(open), Ok(on_disk)) => open.ino() == on_disk.ino && open.dev() == on_disk.dev,
            _ => false,
        }
    }

    /// The entry's directory name in its shard.
    pub fn stem(&self) -> &str {
        &self.stem
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
        if block_crc(&buf) != crc {
            self.unseal();
            self.clear(index)?;
            return Err(ReadBlockError::Corrupt);
        }
        Ok(Some(buf))
    }

    /// The data file's bytes `offset..offset + len`, unchecked: the caller knows the blocks
    /// they lie in are present and intact.
    pub fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        read_at_uninit(&self.data, offset, len, false, &mut buf)?;
        Ok(buf)
    }

    /// The data file's bytes `offset..offset + len` if the page cache holds every page of
    /// them, read without waiting on the disk (`RWF_NOWAIT`), so an async task can call it;
    /// `None` otherwise (read them on a blocking thread). Unchecked, like
    /// [`Entry::read_range`]. A buffer costs a copy more than replying from a mapping of the
    /// page cache, but a mapping per reply cost more: `mmap`, page faults and `munmap` each.
    pub fn read_resident(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        matches!(
            read_at_uninit(&self.data, offset, len, true, &mut buf),
            Ok(true)
        )
        .then_some(buf)
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
        self.write_records(index, &[block_crc(bytes)])
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
        self.seal_checked(None)
    }

    /// [`Entry::seal`], also recording that the content matched S3's full-object checksum
    /// `checked` (a second line of the seal), so opens that know the checksum trust it too.
    pub fn seal_checked(&self, checked: Option<FullObjectChecksum>) -> io::Result<()> {
        let tmp = format!(".verified-{}", unique());
        let mut seal = self.data_identity()?;
        if let Some(checksum) = checked {
            seal.push('\n');
            seal.push_str(&checksum.to_string());
        }
        let written = self
            .dir_fd
            .open_file(&tmp, Open::CreateNew)
            .and_then(|mut file| std::io::Write::write_all(&mut file, seal.as_bytes()))
            .and_then(|()| self.dir_fd.rename(&tmp, "verified"));
        if written.is_err() {
            let _ = self.dir_fd.unlink(&tmp);
        }
        written
    }

    /// Whether a seal exists and the data file has not changed since it was written.
    pub fn is_sealed(&self) -> bool {
        self.is_sealed_for(None)
    }

    /// [`Entry::is_sealed`], and, when `expected` is given, the seal records that the content
    /// matched that full-object checksum (a seal made without it is checked again).
    pub fn is_sealed_for(&self, expected: Option<FullObjectChecksum>) -> bool {
        let (Ok(sealed), Ok(now)) = (self.dir_fd.read_to_string("verified"), self.data_identity())
        else {
            return false;
        };
        let mut lines = sealed.split('\n');
        lines.next() == Some(now.as_str())
            && expected.is_none_or(|checksum| lines.next() == Some(checksum.to_string().as_str()))
    }

    /// Removes the seal.
    pub fn unseal(&self) {
        let _ = self.dir_fd.unlink("verified");
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

impl Entry {
    /// [`Entry::verify_except`], also computing the content's full-object checksum of
    /// `expected`'s algorithm, combined from each block's part in block order; the third
    /// value is `None` when a block is missing or damaged (there is no whole content to
    /// check). A block's part is its record for CRC32C; for the others `folded` gives it for
    /// blocks trusted without checking (computed as they were written), and any other block
    /// is read for it.
    pub fn verify_with_checksum(
        &self,
        known_good: impl Fn(u64) -> bool,
        folded: impl Fn(u64) -> Option<u64>,
        expected: FullObjectChecksum,
    ) -> io::Result<(u64, u64, Option<FullObjectChecksum>)> {
        let (mut present, mut corrupt, mut whole) = (0, 0, true);
        let from_records = matches!(expected, FullObjectChecksum::Crc32c(_));
        let records = self.records()?;
        let mut parts = Vec::with_capacity(records.len());
        for (index, record) in (0..self.id.blocks()).zip(records.iter()) {
            let len = self.id.block_len(index);
            let read = if record.is_some() && known_good(index) {
                None
            } else {
                match self.read_block(index) {
                    Ok(Some(bytes)) => Some(bytes),
                    Ok(None) => {
                        whole = false;
                        continue;
                    }
                    Err(ReadBlockError::Corrupt) => {
                        corrupt += 1;
                        whole = false;
                        continue;
                    }
                    Err(ReadBlockError::Io(e)) => return Err(e),
                }
            };
            present += 1;
            if !whole {
                continue;
            }
            // Every record of a present block now matches it: checked here, or written by
            // this process.
            let part = match (record, read) {
                (Some(crc), _) if from_records => u64::from(*crc),
                (_, Some(bytes)) => expected.of(&bytes),
                (_, None) => match folded(index) {
                    Some(part) => part,
                    None => expected.of(&self.read_range(index * self.id.block_size, len)?),
                },
            };
            parts.push((part, len));
        }
        if !whole {
            return Ok((present, corrupt, None));
        }
        Ok((present, corrupt, Some(expected.combine(parts))))
    }
}

/// Appends `len` bytes at `offset` of `file` to `buf`, without zeroing them first (zeroing
/// a MiB costs as much as reading it from the page cache). With `nowait`, only from the page
/// cache: `Ok(false)` as soon as a page is not resident (some bytes may have been appended).
fn read_at_uninit(
    file: &File,
    offset: u64,
    len: u64,
    nowait: bool,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    let (start, end) = (buf.len(), buf.len() + len);
    buf.reserve(len);
    while buf.len() < end {
        let at =
            libc::off_t::try_from(offset + (buf.len() - start) as u64).map_err(io::Error::other)?;
        let missing = end - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..missing];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: `iov` covers `spare`, valid for writes of `spare.len()` bytes, which bounds
        // what the read writes; the descriptor is open for as long as `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, flags) };
        match n {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::Interrupted => {}
                    ErrorKind::WouldBlock if nowait => return Ok(false),
                    _ => return Err(e),
                }
            }
            // SAFETY: the read just initialised the first `n` spare bytes (n <= spare.len()).
            n => unsafe { buf.set_len(buf.len() + n as usize) },
        }
        // A short read without waiting stopped at a page that is not resident.
        if nowait && buf.len() < end {
            return Ok(false);
        }
    }
    Ok(true)
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

/// A name part no other process or thread uses at the same time.
pub(super) fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::safe_dir::OutsideFile;

    fn id(size: u64) -> EntryId {
        EntryId {
            origin: "http://h:80 path-style".into(),
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
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id).unwrap();
        assert_eq!(entry.read_block(0).unwrap(), None);
        entry.write_block(2, &[7u8; 500]).unwrap();
        assert!(
            entry.write_block(1, &[1u8; 10]).is_err(),
            "wrong length refused"
        );
        drop(entry);
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id).unwrap();
        assert_eq!(entry.read_block(2).unwrap(), Some(vec![7u8; 500]));
        assert!(!entry.is_complete().unwrap());
        entry.write_block(0, &[0u8; 1000]).unwrap();
        entry.write_block(1, &[1u8; 1000]).unwrap();
        assert!(entry.is_complete().unwrap());
        let meta = std::fs::metadata(entry.dir.join("data")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&entry.dir).unwrap().mode() & 0o777, 0o700);
    }

    /// CRC-32C bit by bit (Castagnoli, reflected): what every record ever written holds.
    fn reference_crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
            }
        }
        !crc
    }

    #[test]
    fn records_hold_the_crc32c_of_their_block() {
        assert_eq!(
            block_crc(b"123456789"),
            0xe306_9283,
            "the CRC-32C check value"
        );
        let dir = tempfile::tempdir().unwrap();
        let id = id(2500);
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id).unwrap();
        let block: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        entry.write_block(1, &block).unwrap();
        assert_eq!(entry.record(1).unwrap(), Some(reference_crc32c(&block)));
    }

    #[test]
    fn trusted_blocks_with_folded_parts_are_not_read_for_the_full_object_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let id = id(2500);
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id).unwrap();
        let blocks: [&[u8]; 3] = [&[1u8; 1000], &[2u8; 1000], &[3u8; 500]];
        for (index, bytes) in (0..).zip(blocks) {
            entry.write_block(index, bytes).unwrap();
        }
        let like = FullObjectChecksum::Crc64Nvme(0);
        let of_disk = like.combine(blocks.map(|b| (like.of(b), b.len() as u64)));
        let trusted = |_| true;
        // Parts of other bytes than those on disk: only a check that never reads block 1
        // computes what they say.
        let other = like.of(&[9u8; 1000]);
        let folded = |index| (index == 1).then_some(other);
        let (present, corrupt, computed) =
            entry.verify_with_checksum(trusted, folded, like).unwrap();
        assert_eq!((present, corrupt), (3, 0));
        let expected = like.combine([
            (like.of(blocks[0]), 1000),
            (other, 1000),
            (like.of(blocks[2]), 500),
        ]);
        assert_eq!(computed, Some(expected));
        let (_, _, computed) = entry.verify_with_checksum(trusted, |_| None, like).unwrap();
        assert_eq!(
            computed,
            Some(of_disk),
            "without parts, every block is read"
        );
    }

    #[test]
    fn resident_reads_never_wait_on_the_disk() {
        use std::os::fd::AsRawFd;
        // On the checkout's disk: a tmpfs /tmp cannot drop the pages this test drops.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut id = id(3 * 4096);
        id.block_size = 4096;
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id).unwrap();
        let blocks: Vec<Vec<u8>> = (0..2u8)
            .map(|b| (0..4096).map(|i| (i % 251) as u8 ^ b).collect())
            .collect();
        entry.write_block(1, &blocks[0]).unwrap();
        entry.write_block(2, &blocks[1]).unwrap();
        let got = entry
            .read_resident(4096 + 10, 100)
            .expect("just written: resident");
        assert_eq!(&got[..], &blocks[0][10..110]);
        // Written back, and the second block's page dropped from the page cache: a range
        // that ends in it stops there, and only the blocking path serves it.
        entry.data.sync_all().unwrap();
        let drop_pages = |offset, len| {
            // SAFETY: a valid fd; the advice only drops clean cached pages.
            let rc = unsafe {
                libc::posix_fadvise(
                    entry.data.as_raw_fd(),
                    offset,
                    len,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
            assert_eq!(rc, 0);
        };
        drop_pages(8192, 4096);
        assert!(entry.read_resident(4096, 8192).is_none(), "half resident");
        assert_eq!(entry.read_resident(4096, 4096).unwrap(), blocks[0]);
        drop_pages(0, 0);
        assert!(entry.read_resident(4096, 4096).is_none(), "not resident");
        let read = entry.read_range(4096, 8192).expect("read from disk");
        assert_eq!(read, [&blocks[0][..], &blocks[1][..]].concat());
    }

    #[test]
    fn a_flipped_byte_is_detected_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id(2000)).unwrap();
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
        let a = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id(10)).unwrap();
        let mut other = id(10);
        other.etag = "\"def\"".into();
        let b = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &other).unwrap();
        assert_ne!(a.dir, b.dir);
        a.write_block(0, &[1u8; 10]).unwrap();
        std::fs::write(a.dir.join("map"), b"garbage").unwrap();
        let again = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &id(10)).unwrap();
        assert_eq!(again.read_block(0).unwrap(), None);
        assert_eq!(EntryId::parse_header(&id(10).header()), Some(id(10)));
    }

    #[test]
    fn links_planted_for_the_files_are_replaced_not_followed() {
        let outside = OutsideFile::new();
        let dir = tempfile::tempdir().unwrap();
        let objects = Dir::open_path(dir.path()).unwrap();
        let first = Entry::open_or_create(&objects, &id(10)).unwrap();
        first.write_block(0, &[1u8; 10]).unwrap();
        let entry_dir = first.dir.clone();
        drop(first);
        for name in ["map", "data", "verified"] {
            outside.plant_link(&entry_dir.join(name));
            let entry = Entry::open_or_create(&objects, &id(10)).unwrap();
            assert!(!entry.is_sealed(), "{name}");
            entry.write_block(0, &[2u8; 10]).unwrap();
            entry.seal().unwrap();
            entry.unseal();
            assert_eq!(entry.read_block(0).unwrap(), Some(vec![2u8; 10]), "{name}");
        }
        outside.assert_untouched();
    }

    #[test]
    fn an_identity_too_long_for_the_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut long = id(10);
        long.origin = format!("http://{}", "h".repeat(5000));
        let e = Entry::open_or_create(&Dir::open_path(dir.path()).unwrap(), &long).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
}
