//! The fetch engine over an in-memory store and a disk cache in a temporary directory: no
//! FUSE, no server.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::span::runs_to_fetch;
use super::{Fetcher, Priority, SharedTiers};
use crate::cache::disk::{CacheEntry, EntryId};
use crate::cache::{CacheSize, DiskCache, DiskCacheConfig};
use crate::read::ReadConfig;
use crate::store::{ListPage, MemoryStore, ObjectInfo, ObjectStore, ObjectVersion, StoreError};

const BS: u64 = 1 << 16;
const BLOCKS: u64 = 6;

/// The bytes of `blocks`.
fn bytes_of(blocks: Range<u64>) -> Range<u64> {
    blocks.start * BS..blocks.end * BS
}

/// A store that logs the ranges asked of it, holds every GET until it is opened, and fails
/// the first `failures` GETs.
struct TestStore {
    inner: MemoryStore,
    ranges: Mutex<Vec<Range<u64>>>,
    open: tokio::sync::watch::Sender<bool>,
    failures: AtomicUsize,
}

impl TestStore {
    fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges.lock().unwrap().clone()
    }

    /// Lets held and later GETs through.
    fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` GETs have been asked for.
    async fn wait_for_gets(&self, n: usize) {
        for _ in 0..1000 {
            if self.ranges.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{n} GETs never came: {:?}", self.ranges());
    }
}

#[async_trait::async_trait]
impl ObjectStore for TestStore {
    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage, StoreError> {
        self.inner.list_page(prefix, token).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key).await
    }

    async fn get_range(
        &self,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.ranges.lock().unwrap().push(range.clone());
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        let fail = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::Other {
                operation: "get".into(),
                message: "injected failure".into(),
            });
        }
        self.inner.get_range(version, range).await
    }

    fn describe(&self) -> String {
        "test store".into()
    }
}

/// A fetch engine over a [`TestStore`] holding one object, with a disk tier of `disk_limit`
/// bytes when given.
struct Setup {
    store: Arc<TestStore>,
    fetcher: Arc<Fetcher>,
    version: ObjectVersion,
    data: Vec<u8>,
    entry: Option<Arc<CacheEntry>>,
    disk: Option<Arc<DiskCache>>,
    _dir: tempfile::TempDir,
}

fn setup(disk_limit: Option<u64>, open: bool, failures: usize) -> Setup {
    let data: Vec<u8> = (0..BLOCKS * BS).map(|i| (i * 7 + i / 251) as u8).collect();
    let inner = MemoryStore::new();
    let info = inner.put("m.bin", data.clone());
    let store = Arc::new(TestStore {
        inner,
        ranges: Mutex::new(Vec::new()),
        open: tokio::sync::watch::Sender::new(open),
        failures: AtomicUsize::new(failures),
    });
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_limit.map(|limit| {
        DiskCache::open(&DiskCacheConfig {
            dir: dir.path().to_path_buf(),
            size: CacheSize::Bytes(limit),
        })
        .unwrap()
    });
    let version = info.version();
    let entry = disk.as_ref().map(|disk| {
        disk.entry(&EntryId {
            origin: "memory://local".into(),
            bucket: "b".into(),
            key: info.key.clone(),
            etag: info.etag.clone(),
            size: info.size,
            block_size: BS,
        })
        .unwrap()
    });
    let config = ReadConfig {
        block_size: BS,
        ..ReadConfig::default()
    };
    let tiers = SharedTiers::new(&config, disk.clone());
    let fetcher = Arc::new(Fetcher::new(store.clone(), &tiers));
    Setup {
        store,
        fetcher,
        version,
        data,
        entry,
        disk,
        _dir: dir,
    }
}

impl Setup {
    fn block(&self, index: u64) -> &[u8] {
        &self.data[(index * BS) as usize..((index + 1) * BS) as usize]
    }

    /// Block `index` through the fetcher, from this setup's cache entry if it has one.
    async fn read(&self, index: u64, priority: Priority) -> Bytes {
        self.fetcher
            .block(&self.version, self.entry.as_ref(), index, priority)
            .await
            .unwrap()
    }

    /// The first `len` bytes of block `index` through the header probe's path, from this
    /// setup's cache entry if it has one.
    async fn prefix(&self, index: u64, len: u64) -> Bytes {
        self.fetcher
            .block_prefix(&self.version, self.entry.as_ref(), index, len)
            .await
            .unwrap()
    }

    fn in_memory(&self, index: u64) -> bool {
        let key = self.fetcher.block_key(&self.version, index);
        self.fetcher.tiers().memory().contains(&key)
    }
}

#[tokio::test]
async fn two_readers_of_a_missing_block_share_one_get() {
    let s = setup(None, false, 0);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (fetcher, version) = (s.fetcher.clone(), s.version.clone());
            tokio::spawn(async move { fetcher.block(&version, None, 1, Priority::Demand).await })
        })
        .collect();
    s.store.wait_for_gets(1).await;
    // Both readers are waiting now; only one asked the store.
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.store.open();
    for reader in readers {
        assert_eq!(&reader.await.unwrap().unwrap()[..], s.block(1));
    }
    assert_eq!(s.store.ranges(), [bytes_of(1..2)]);
    assert!(s.in_memory(1), "a reader's block is kept in memory");
}

#[tokio::test]
async fn a_read_goes_to_the_disk_once_when_the_block_is_there_and_twice_when_it_is_not() {
    let s = setup(Some(1 << 30), true, 0);
    let (entry, disk) = (s.entry.clone().unwrap(), s.disk.clone().unwrap());
    // Written by another process: on disk, not yet checked by this one.
    entry.entry.write_block(2, s.block(2)).unwrap();
    let got = s.read(2, Priority::Demand).await;
    assert_eq!(&got[..], s.block(2));
    let looked = disk.stats.snapshot();
    assert_eq!((looked.hits, looked.misses), (1, 0), "one disk read");
    assert!(s.store.ranges().is_empty());
    // A cold block through the header probe's path: looked for before and after taking its
    // download lock, then fetched once.
    let got = s.prefix(3, BS).await;
    assert_eq!(&got[..], s.block(3));
    assert_eq!(disk.stats.snapshot().misses, 2);
    assert_eq!(s.store.ranges(), [bytes_of(3..4)]);
    assert!(entry.is_checked(3));
}

#[tokio::test]
async fn a_background_block_fetched_to_disk_stays_out_of_memory() {
    let s = setup(Some(1 << 30), true, 0);
    let entry = s.entry.clone().unwrap();
    s.read(0, Priority::Background).await;
    assert!(entry.is_checked(0) && !s.in_memory(0));
    // Read again: from disk, no GET.
    let got = s.read(0, Priority::Demand).await;
    assert_eq!(&got[..], s.block(0));
    assert_eq!(s.store.ranges().len(), 1);
}

#[tokio::test]
async fn a_sweep_span_lands_on_disk_in_one_get() {
    let s = setup(Some(1 << 30), true, 0);
    let entry = s.entry.clone().unwrap();
    s.fetcher.span(&s.version, &entry, 1, 4).await.unwrap();
    assert_eq!(s.store.ranges(), [bytes_of(1..5)]);
    assert!(entry.all_checked(1..=4) && !entry.is_checked(0) && !entry.is_checked(5));
    assert!(
        (1..5).all(|i| !s.in_memory(i)),
        "background blocks on disk only"
    );
    // Stored blocks are not fetched again; the rest of the file is, around them.
    s.fetcher.span(&s.version, &entry, 0, 6).await.unwrap();
    assert_eq!(s.store.ranges()[1..], [bytes_of(0..1), bytes_of(5..6)]);
    let first = s.fetcher.block_key(&s.version, 0);
    let all = s
        .fetcher
        .tiers()
        .cache()
        .read_known(&entry, &first, 0, BLOCKS * BS)
        .await;
    assert!(all.is_some_and(|all| all[..] == s.data[..]));
}

#[tokio::test]
async fn a_span_the_disk_turns_away_lands_in_memory() {
    // A limit below one block: the disk takes nothing.
    let s = setup(Some(BS / 2), true, 0);
    let entry = s.entry.clone().unwrap();
    s.fetcher.span(&s.version, &entry, 0, 3).await.unwrap();
    assert_eq!(s.store.ranges(), [bytes_of(0..3)]);
    assert!((0..3).all(|i| s.in_memory(i) && !entry.is_checked(i)));
    let got = s.read(1, Priority::Demand).await;
    assert_eq!(&got[..], s.block(1));
    assert_eq!(s.store.ranges().len(), 1, "read from memory");
}

#[tokio::test]
async fn a_failed_span_lets_its_waiting_reader_fetch_its_block() {
    let s = setup(Some(1 << 30), false, 1);
    let entry = s.entry.clone().unwrap();
    let span = {
        let (fetcher, version, entry) = (s.fetcher.clone(), s.version.clone(), entry.clone());
        tokio::spawn(async move { fetcher.span(&version, &entry, 0, 4).await })
    };
    s.store.wait_for_gets(1).await;
    let reader = {
        let (fetcher, version, entry) = (s.fetcher.clone(), s.version.clone(), entry.clone());
        tokio::spawn(async move {
            fetcher
                .block(&version, Some(&entry), 2, Priority::Demand)
                .await
        })
    };
    // The reader waits for the span rather than asking the store itself.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(s.store.ranges().len(), 1);
    s.store.open();
    assert!(span.await.unwrap().is_err(), "the span's GET failed");
    assert_eq!(&reader.await.unwrap().unwrap()[..], s.block(2));
    assert_eq!(s.store.ranges(), [bytes_of(0..4), bytes_of(2..3)]);
    assert!(entry.is_checked(2) && !entry.is_checked(1));
}

#[tokio::test]
async fn a_header_probe_answers_from_the_prefix_get_and_stores_the_joined_block() {
    let s = setup(Some(1 << 30), true, 0);
    let entry = s.entry.clone().unwrap();
    let probe = 4096;
    let got = s.prefix(0, probe).await;
    assert_eq!(&got[..], &s.data[..probe as usize]);
    // The rest of the block arrives in the second GET and is stored joined.
    for _ in 0..1000 {
        if entry.is_checked(0) && s.in_memory(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(entry.is_checked(0) && s.in_memory(0));
    assert_eq!(s.store.ranges(), [0..probe, probe..BS]);
    let got = s.read(0, Priority::Demand).await;
    assert_eq!(&got[..], s.block(0));
    let again = s.prefix(0, probe).await;
    assert_eq!(&again[..], &s.data[..probe as usize]);
    assert_eq!(s.store.ranges().len(), 2, "no GET once stored");
}

#[tokio::test]
async fn a_reader_of_the_whole_block_during_a_probe_waits_for_the_joined_block() {
    let s = setup(None, false, 0);
    let probe = {
        let (fetcher, version) = (s.fetcher.clone(), s.version.clone());
        tokio::spawn(async move { fetcher.block_prefix(&version, None, 0, 100).await })
    };
    s.store.wait_for_gets(2).await;
    let reader = {
        let (fetcher, version) = (s.fetcher.clone(), s.version.clone());
        tokio::spawn(async move { fetcher.block(&version, None, 0, Priority::Demand).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.store.open();
    assert_eq!(&probe.await.unwrap().unwrap()[..], &s.data[..100]);
    assert_eq!(&reader.await.unwrap().unwrap()[..], s.block(0));
    assert_eq!(s.store.ranges(), [0..100, 100..BS]);
}

#[test]
fn runs_cover_the_missing_blocks_and_run_on_only_while_the_next_ones_are_missing() {
    let present = |i: u64| i == 2 || i == 9;
    // Up to 4: 0..2 and 3..5 (2 is there); on past 4 while 5, 6… are missing, stopped at 9.
    assert_eq!(
        runs_to_fetch(0..12, 4, present, |_| false),
        [(0, 2), (3, 9)]
    );
    // A block ahead someone else reads stops the run.
    assert_eq!(
        runs_to_fetch(0..12, 4, present, |i| i == 6),
        [(0, 2), (3, 6)]
    );
    // Ahead of a gap in the candidates: no new run starts.
    assert_eq!(
        runs_to_fetch([0, 1, 7, 8], 1, |_| false, |_| false),
        [(0, 2)]
    );
    assert!(runs_to_fetch(0..4, 3, |_| true, |_| false).is_empty());
}
