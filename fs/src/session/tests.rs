//! The open policy over the in-memory store and a real disk cache, with a fake registrar:
//! no kernel, no server.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU32;

use super::*;
use crate::cache::{CacheSize, DiskCache, DiskCacheConfig};
use crate::namespace::ROOT_INO;
use crate::read::ReadConfig;
use crate::store::MemoryStore;

/// Registers nothing real: names each backing file it is asked for, or refuses.
#[derive(Default)]
struct FakeRegistrar {
    refuse: bool,
    calls: AtomicU32,
}

impl BackingRegistrar for FakeRegistrar {
    type Backing = String;

    fn register(&self, file: &std::fs::File) -> std::io::Result<String> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.refuse {
            return Err(std::io::Error::other("refused"));
        }
        Ok(format!("backing {n} of fd {}", file.as_raw_fd()))
    }
}

impl FakeRegistrar {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

struct Fixture {
    session: Arc<Session<String>>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8 ^ seed).collect()
}

/// A session over `files` with a disk cache and passthrough agreed, whose listings stay
/// fresh for a minute and which never reads ahead.
fn fixture(files: &[(&str, usize)]) -> Fixture {
    fixture_with(files, Duration::from_secs(60), WarmLimit::Bytes(0))
}

/// A session as [`fixture`]'s, with `ttl` (zero: every open asks the store for the current
/// version) and `warm` as its read-ahead bound.
fn fixture_with(files: &[(&str, usize)], ttl: Duration, warm: WarmLimit) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    for (i, (key, len)) in files.iter().enumerate() {
        store.put(key, pattern(*len, i as u8));
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::open(&DiskCacheConfig {
        dir: dir.path().to_path_buf(),
        size: CacheSize::Bytes(1 << 30),
    })
    .unwrap();
    let config = ReadConfig {
        block_size: 1 << 20,
        memory_cache_bytes: 8 << 20,
        ..ReadConfig::default()
    };
    let reader = BlockReader::new(store.clone(), "bucket", config, Some(disk));
    let namespace = Namespace::shared(store.clone(), "", ttl);
    let session = Arc::new(Session::new(
        namespace,
        reader,
        SessionConfig {
            ownership: Ownership {
                uid: 0,
                gid: 0,
                file_mode: 0o444,
                dir_mode: 0o555,
            },
            block_size: 1 << 20,
            passthrough: true,
            warm_read_ahead: warm,
        },
    ));
    assert!(session.wants_passthrough());
    session.enable_passthrough();
    Fixture {
        session,
        store,
        _dir: dir,
    }
}

impl Fixture {
    /// Opens `ino` for reading, which must succeed.
    async fn open_to_read(&self, ino: u64, registrar: &FakeRegistrar) -> Opened<String> {
        self.session
            .open(ino, libc::O_RDONLY, registrar)
            .await
            .unwrap()
    }

    async fn ino(&self, name: &str) -> u64 {
        self.session.lookup(ROOT_INO, name).await.unwrap().ino
    }

    /// Reads all of `fh`, checking it against what the store holds at `key`.
    async fn read_all(&self, fh: u64, expected: &[u8]) {
        let mut offset = 0u64;
        loop {
            let got = self.session.read(fh, offset, 1 << 20).await.unwrap();
            if got.is_empty() {
                break;
            }
            let end = offset as usize + got.len();
            assert_eq!(&got[..], &expected[offset as usize..end], "at {offset}");
            offset = end as u64;
        }
        assert_eq!(offset, expected.len() as u64);
    }

    /// Reads `ino` whole through a cached open and closes it; its entry is then complete
    /// and, once the verification the close starts has run, verified.
    /// Reads `ino` whole into the disk cache and waits until the entry is verified; returns
    /// the entry's data file (another descriptor of it).
    async fn cache_and_verify(&self, ino: u64, expected: &[u8]) -> std::fs::File {
        let registrar = FakeRegistrar::default();
        let opened = self.open_to_read(ino, &registrar).await;
        assert_ne!(opened.mode, IoMode::Passthrough, "nothing cached yet");
        self.read_all(opened.fh, expected).await;
        let file = self.session.files.get(opened.fh).unwrap();
        let data = file.object.disk.as_ref().unwrap().entry.data.try_clone();
        drop(file);
        self.session.release(opened.fh);
        self.wait_for_verifications();
        data.unwrap()
    }

    /// Blocks its thread: the tests run on a multi-threaded runtime, as the daemon does, so
    /// the checksum questions verifications wait for can run meanwhile.
    fn wait_for_verifications(&self) {
        self.session
            .reader()
            .fetcher()
            .wait_for_verifications(Duration::from_secs(10));
    }

    fn entry_verified(&self, fh: u64) -> bool {
        let file = self.session.files.get(fh).unwrap();
        file.object.disk.as_ref().unwrap().is_verified()
    }
}

const LEN: usize = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_complete_entry_opens_in_passthrough_and_later_opens_join_its_backing() {
    let f = fixture(&[("m.bin", LEN)]);
    let ino = f.ino("m.bin").await;
    f.cache_and_verify(ino, &pattern(LEN, 0)).await;
    let registrar = FakeRegistrar::default();
    let first = f.open_to_read(ino, &registrar).await;
    assert_eq!(first.mode, IoMode::Passthrough);
    let second = f.open_to_read(ino, &registrar).await;
    assert_eq!(second.mode, IoMode::Passthrough);
    assert_eq!(registrar.calls(), 1, "one backing file per inode");
    let (a, b) = (first.backing.unwrap(), second.backing.unwrap());
    assert!(
        Arc::ptr_eq(&a, &b),
        "the second open joins the first's backing"
    );
    assert_eq!(f.session.release(first.fh), Some(IoMode::Passthrough));
    assert_eq!(f.session.release(second.fh), Some(IoMode::Passthrough));
    assert_eq!(Arc::strong_count(&a), 2, "the session let the backing go");
    assert_eq!(f.session.release(second.fh), None, "a handle closes once");
    let again = f.open_to_read(ino, &registrar).await;
    assert_eq!(again.mode, IoMode::Passthrough);
    assert_eq!(registrar.calls(), 2, "a new first open registers again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_entry_not_yet_verified_is_served_cached_while_its_open_verifies_it() {
    let f = fixture(&[("m.bin", LEN)]);
    let ino = f.ino("m.bin").await;
    let registrar = FakeRegistrar::default();
    let reading = f.open_to_read(ino, &registrar).await;
    assert_eq!(
        reading.mode,
        IoMode::Cached,
        "first open of the inode drops pages"
    );
    f.read_all(reading.fh, &pattern(LEN, 0)).await;
    assert!(!f.entry_verified(reading.fh));
    // Complete now, but only the next open notices and verifies it.
    let next = f.open_to_read(ino, &registrar).await;
    assert_eq!(
        next.mode,
        IoMode::CachedKeep,
        "same version: the kernel keeps its pages"
    );
    f.wait_for_verifications();
    assert!(
        f.entry_verified(next.fh),
        "the open started the verification"
    );
    assert_eq!(registrar.calls(), 0);
    // Cached opens of the inode keep passthrough away until they close.
    let third = f.open_to_read(ino, &registrar).await;
    assert_eq!(third.mode, IoMode::CachedKeep);
    for fh in [reading.fh, next.fh, third.fh] {
        assert!(matches!(
            f.session.release(fh),
            Some(IoMode::Cached | IoMode::CachedKeep)
        ));
    }
    let passthrough = f.open_to_read(ino, &registrar).await;
    assert_eq!(passthrough.mode, IoMode::Passthrough);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_cannot_open_while_the_old_one_is_open_in_passthrough() {
    let f = fixture_with(&[("m.bin", LEN)], Duration::ZERO, WarmLimit::Bytes(0));
    let ino = f.ino("m.bin").await;
    f.cache_and_verify(ino, &pattern(LEN, 0)).await;
    let registrar = FakeRegistrar::default();
    let old = f.open_to_read(ino, &registrar).await;
    assert_eq!(old.mode, IoMode::Passthrough);
    f.store.put("m.bin", pattern(LEN, 9));
    let refused = f.session.open(ino, libc::O_RDONLY, &registrar).await;
    assert!(
        matches!(refused, Err(FsError::VersionBusy { .. })),
        "got {refused:?}"
    );
    assert_eq!(f.session.open_files(), 1, "a refused open leaves no handle");
    f.session.release(old.fh);
    let new = f.open_to_read(ino, &registrar).await;
    assert_eq!(
        new.mode,
        IoMode::Cached,
        "new version: not cached, pages dropped"
    );
    f.read_all(new.fh, &pattern(LEN, 9)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_serves_the_open_cached_and_disables_passthrough_once() {
    let f = fixture(&[("a.bin", LEN), ("b.bin", LEN)]);
    let (a, b) = (f.ino("a.bin").await, f.ino("b.bin").await);
    f.cache_and_verify(a, &pattern(LEN, 0)).await;
    f.cache_and_verify(b, &pattern(LEN, 1)).await;
    let registrar = FakeRegistrar {
        refuse: true,
        ..FakeRegistrar::default()
    };
    let opened = f.open_to_read(a, &registrar).await;
    assert_eq!(opened.mode, IoMode::CachedKeep);
    assert!(opened.backing.is_none());
    assert!(!f.session.passthrough_enabled());
    f.read_all(opened.fh, &pattern(LEN, 0)).await;
    let other = f.open_to_read(b, &registrar).await;
    assert_ne!(other.mode, IoMode::Passthrough);
    assert_eq!(registrar.calls(), 1, "passthrough is not tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_for_writing_are_refused_before_anything_is_opened() {
    let f = fixture(&[("a.bin", LEN)]);
    let ino = f.ino("a.bin").await;
    let registrar = FakeRegistrar::default();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let refused = f.session.open(ino, flags, &registrar).await;
        assert!(
            matches!(refused, Err(FsError::ReadOnly)),
            "{flags:#o}: {refused:?}"
        );
    }
    assert_eq!(f.session.open_files(), 0);
    assert!(matches!(f.session.access(true), Err(FsError::ReadOnly)));
    assert!(f.session.access(false).is_ok());
    assert!(matches!(
        f.session.read(99, 0, 10).await,
        Err(FsError::BadHandle(99))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_handles_serve_the_listing_taken_at_opendir() {
    let f = fixture_with(
        &[("a.bin", 10), ("b.bin", 10)],
        Duration::ZERO,
        WarmLimit::Bytes(0),
    );
    let fh = f.session.opendir(ROOT_INO).await.unwrap();
    f.store.put("c.bin", vec![1u8; 10]);
    let names: Vec<String> = f
        .session
        .readdir(fh)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, ["a.bin", "b.bin"]);
    f.session.releasedir(fh);
    assert!(matches!(f.session.readdir(fh), Err(FsError::BadHandle(_))));
}

/// Writes back and drops the page-cache pages of a cache data file.
fn drop_cache_pages(data: &std::fs::File) {
    data.sync_all().unwrap();
    // SAFETY: fadvise on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(data.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_held_open_is_read_ahead_and_one_closed_at_once_is_not() {
    let len = warm_read_ahead::MIN_FILE_BYTES as usize;
    let f = fixture_with(
        &[("big.bin", len)],
        Duration::from_secs(60),
        WarmLimit::Auto,
    );
    let ino = f.ino("big.bin").await;
    let data = f.cache_and_verify(ino, &pattern(len, 0)).await;
    let registrar = FakeRegistrar::default();

    // A header scan: open, close at once (the pages dropped before: writing them back can
    // take longer than the settle time).
    drop_cache_pages(&data);
    let scan = f.open_to_read(ino, &registrar).await;
    assert_eq!(scan.mode, IoMode::Passthrough);
    f.session.release(scan.fh);
    tokio::time::sleep(warm_read_ahead::SETTLE * 5).await;
    assert_eq!(
        f.session.warm_read_ahead_bytes(),
        0,
        "a closed file is not read ahead"
    );

    // A load: the open is still held after the settle time.
    drop_cache_pages(&data);
    let load = f.open_to_read(ino, &registrar).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.session.warm_read_ahead_bytes() < len as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.session.warm_read_ahead_bytes(), len as u64);
    f.session.release(load.fh);
}
