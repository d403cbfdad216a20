use super::*;

fn id(key: &str, size: u64) -> EntryId {
    EntryId {
        bucket: "b".into(),
        key: key.into(),
        etag: "\"e\"".into(),
        size,
        block_size: 1 << 20,
    }
}

fn open(dir: &Path, size: CacheSize) -> Arc<DiskCache> {
    DiskCache::open(&DiskCacheConfig {
        dir: dir.to_path_buf(),
        size,
    })
    .unwrap()
}

fn fill(cache: &Arc<DiskCache>, entry: &CacheEntry) {
    for i in 0..entry.entry.id.blocks() {
        let len = entry.entry.id.block_len(i) as usize;
        cache.write_block(entry, i, &vec![i as u8; len]);
    }
}

#[test]
fn size_flags_parse() {
    assert_eq!("50GiB".parse::<CacheSize>(), Ok(CacheSize::Bytes(50 << 30)));
    assert_eq!(
        "80%".parse::<CacheSize>(),
        Ok(CacheSize::PercentOfDisk(80.0))
    );
    assert_eq!(
        "free:10%".parse::<CacheSize>(),
        Ok(CacheSize::LeaveFree(10.0))
    );
    assert!("120%".parse::<CacheSize>().is_err());
    assert!("lots".parse::<CacheSize>().is_err());
}

#[test]
fn eviction_keeps_usage_under_the_limit_and_spares_entries_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 20u64 << 20;
    let cache = open(dir.path(), CacheSize::Bytes(limit));
    let pinned = cache.entry(&id("pinned", 4 << 20)).unwrap();
    fill(&cache, &pinned);
    for n in 0..12 {
        let e = cache.entry(&id(&format!("k{n}"), 4 << 20)).unwrap();
        fill(&cache, &e);
        drop(e);
        cache.evict_pass().unwrap();
        let on_disk: u64 = scan(&cache.objects).unwrap().iter().map(|e| e.bytes).sum();
        assert!(on_disk <= limit, "usage {on_disk} over limit {limit}");
    }
    assert!(cache.stats.snapshot().evictions > 0);
    assert!(
        pinned.entry.is_current(),
        "an entry in use is never evicted"
    );
    assert_eq!(cache.read_block(&pinned, 3).unwrap(), vec![3u8; 1 << 20]);
}

#[test]
fn writes_past_the_limit_are_skipped_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(2 << 20));
    let e = cache.entry(&id("big", 8 << 20)).unwrap();
    fill(&cache, &e);
    let present = e.entry.records().unwrap().iter().flatten().count();
    assert!(present <= 2, "{present} blocks stored over a 2-block limit");
    assert!(cache.stats.snapshot().errors > 0);
}

#[test]
fn a_second_cache_instance_sees_the_first_ones_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), CacheSize::Bytes(1 << 30));
    let b = open(dir.path(), CacheSize::Bytes(1 << 30));
    let ea = a.entry(&id("shared", 3 << 20)).unwrap();
    a.write_block(&ea, 1, &vec![5u8; 1 << 20]);
    let eb = b.entry(&id("shared", 3 << 20)).unwrap();
    assert_eq!(b.read_block(&eb, 1), Some(vec![5u8; 1 << 20]));
    assert_eq!(b.read_block(&eb, 0), None);
    fill(&a, &ea);
    assert!(b.verify_complete(&eb));
    assert!(eb.is_verified());
}

#[test]
fn an_unwritable_cache_degrades_to_no_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    // A file where the shard directory should be: every entry creation fails.
    let stem = id("x", 10).stem();
    std::fs::write(cache.objects.join(&stem[..2]), b"not a dir").unwrap();
    assert!(cache.entry(&id("x", 10)).is_none());
    assert_eq!(cache.stats.snapshot().errors, 1);
}

#[tokio::test]
async fn block_locks_serialize_two_holders() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), CacheSize::Bytes(1 << 30));
    let b = open(dir.path(), CacheSize::Bytes(1 << 30));
    let ea = a.entry(&id("l", 3 << 20)).unwrap();
    let eb = b.entry(&id("l", 3 << 20)).unwrap();
    let held = a.lock_block(&ea, 1, Duration::from_secs(5)).await;
    let timed_out = b.lock_block(&eb, 1, Duration::from_millis(50)).await;
    assert!(timed_out.entry.is_none(), "second holder must wait");
    drop(held);
    let got = b.lock_block(&eb, 1, Duration::from_secs(5)).await;
    assert!(got.entry.is_some());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4093) as u8).collect()
}

#[test]
fn a_span_written_piece_by_piece_reads_back_checked_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let size = (2 << 20) + 5000; // two whole blocks and a short one
    let bytes = pattern(size as usize);
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let entry = cache.entry(&id("span", size)).unwrap();
    let mut writer = cache.span_writer(&entry, 0..3).unwrap();
    assert_eq!(writer.range(), 0..size);
    // A first attempt that breaks off part-way, then a retry from the start in odd pieces.
    writer.push(0, &bytes[..700_000]).unwrap();
    for piece in bytes.chunks(123_457).scan(0u64, |at, piece| {
        let here = *at;
        *at += piece.len() as u64;
        Some((here, piece))
    }) {
        writer.push(piece.0, piece.1).unwrap();
    }
    assert!(writer.finish());
    drop(entry);

    // Another process (no blocks known to it) checks every CRC.
    let other = open(dir.path(), CacheSize::Bytes(1 << 30));
    let entry = other.entry(&id("span", size)).unwrap();
    let mut read = Vec::new();
    for index in 0..3 {
        read.extend(other.read_block(&entry, index).expect("block intact"));
    }
    assert!(read == bytes, "bytes differ");
    assert_eq!(other.stats.snapshot().corrupt, 0);
}

#[test]
fn a_span_that_breaks_off_keeps_only_its_complete_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 3 << 20;
    let bytes = pattern(size as usize);
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let entry = cache.entry(&id("torn", size)).unwrap();
    let mut writer = cache.span_writer(&entry, 0..3).unwrap();
    writer.push(0, &bytes[..(1 << 20) + 10]).unwrap();
    assert!(
        writer.push((2 << 20) as u64, &bytes[2 << 20..]).is_err(),
        "a gap is refused"
    );
    assert_eq!(writer.blocks_stored(), 1);
    assert!(!writer.finish(), "an incomplete span is not all stored");
    let records = entry.entry.records().unwrap();
    assert!(records[0].is_some(), "the complete block is visible");
    assert!(
        records[1..].iter().all(Option::is_none),
        "the torn one is not"
    );
    assert_eq!(
        cache.read_block(&entry, 0).as_deref(),
        Some(&bytes[..1 << 20]),
        "and intact"
    );
    assert!(
        cache.span_writer(&entry, 0..1).is_some()
            && open(dir.path(), CacheSize::Bytes(1 << 20))
                .span_writer(&entry, 0..3)
                .is_none(),
        "a span that would cross the limit is not started"
    );
}

#[test]
fn a_scan_while_a_span_is_being_written_still_counts_the_span() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let size = 8 << 20;
    let entry = cache.entry(&id("span", size)).unwrap();
    let mut writer = cache.span_writer(&entry, 0..8).unwrap();
    // The pass scans the disk before the span's bytes are there.
    cache.evict_pass().unwrap();
    let bytes = pattern(size as usize);
    writer.push(0, &bytes).unwrap();
    assert!(writer.finish());
    let on_disk: u64 = scan(&cache.objects).unwrap().iter().map(|e| e.bytes).sum();
    assert!(
        cache.usage() >= on_disk,
        "usage {} under what is on disk ({on_disk})",
        cache.usage()
    );
    // Once written, the next pass counts the span once.
    cache.evict_pass().unwrap();
    assert!(cache.usage() < on_disk + (1 << 20), "{}", cache.usage());
}
