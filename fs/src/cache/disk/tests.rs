use super::safe_dir::OutsideFile;
use super::*;
use crate::store::FullObjectChecksum;

fn id(key: &str, size: u64) -> EntryId {
    EntryId {
        origin: "http://h:80 path-style".into(),
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
fn a_load_is_stored_whole_after_making_room_or_not_at_all() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(10 * MIB));
    let old = cache.entry(&id("old", 6 * MIB)).unwrap();
    fill(&cache, &old);
    drop(old);
    let held = cache.entry(&id("held", 3 * MIB)).unwrap();
    fill(&cache, &held);
    // 6 MiB more fit once the entry nobody has open is gone, not beside it.
    let load = cache.entry(&id("load", 6 * MIB)).unwrap();
    assert_eq!(cache.admit(&load), Admission::Stored);
    assert_eq!(cache.stats.snapshot().evictions, 1);
    assert!(held.entry.is_current(), "an entry in use stays");
    let errors = cache.stats.snapshot().errors;
    fill(&cache, &load);
    let stored = load.entry.records().unwrap().iter().flatten().count();
    assert_eq!(stored, 6, "no block of an admitted load is turned away");
    assert_eq!(cache.stats.snapshot().errors, errors);

    // With both open, another 6 MiB cannot fit: refused with the sizes, nothing evicted
    // (not even an entry nobody has open), nothing of it ever written.
    let spare = cache.entry(&id("spare", MIB / 2)).unwrap();
    fill(&cache, &spare);
    drop(spare);
    let big = cache.entry(&id("big", 6 * MIB)).unwrap();
    let Admission::TooSmall(no_room) = cache.admit(&big) else {
        panic!("admitted beside 9 MiB in use under a 10 MiB limit");
    };
    assert_eq!(no_room.limit, 10 * MIB);
    assert!(no_room.pinned >= 9 * MIB, "{no_room:?}");
    assert!(no_room.needed >= 6 * MIB, "{no_room:?}");
    assert_eq!(big.no_room(), Some(no_room));
    assert_eq!(cache.stats.snapshot().evictions, 1);
    assert!(!cache.write_block(&big, 0, &vec![1u8; MIB as usize]));
    assert!(cache.span_writer(&big, 0..2).is_none());
    assert_eq!(cache.stats.snapshot().errors, errors, "refused, not failed");
    assert_eq!(
        cache.admit(&big),
        Admission::TooSmall(no_room),
        "decided once"
    );
}

#[test]
fn a_file_loaded_again_never_evicts_what_was_used_since_its_last_load() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    // Room for one of the two models, not both.
    let cache = open(dir.path(), CacheSize::Bytes(10 * MIB));
    let load = |key: &str| {
        let entry = cache.entry(&id(key, 6 * MIB)).unwrap();
        let admission = cache.admit(&entry);
        if admission == Admission::Stored {
            fill(&cache, &entry);
        }
        admission
    };
    assert_eq!(load("a"), Admission::Stored);
    assert_eq!(load("b"), Admission::Stored, "a first load makes room");
    assert_eq!(cache.stats.snapshot().evictions, 1);
    // "b" was used after "a"'s last load: the two take turns, so "a" streams and "b" stays.
    let Admission::TooSmall(no_room) = load("a") else {
        panic!("a evicted b, used since a's last load");
    };
    assert!(no_room.kept >= 6 * MIB, "{no_room:?}");
    assert_eq!(no_room.pinned, 0, "{no_room:?}");
    assert_eq!(cache.stats.snapshot().evictions, 1);
    assert_eq!(load("b"), Admission::Stored, "b is still stored");
    assert!(
        matches!(load("a"), Admission::TooSmall(_)),
        "b was used again"
    );
    // Nothing used since "a"'s last load: the working set moved on, "a" is stored.
    assert_eq!(load("a"), Admission::Stored);
    assert_eq!(cache.stats.snapshot().evictions, 2);
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
    std::fs::write(cache.objects.path().join(&stem[..2]), b"not a dir").unwrap();
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

fn id_from(endpoint: &str, path_style: bool) -> EntryId {
    let origin = crate::store::StoreOrigin::new(endpoint, path_style, "b");
    EntryId {
        origin: origin.address(),
        ..id("models/x.safetensors", 3 << 20)
    }
}

#[test]
fn entries_are_scoped_by_normalized_origin() {
    let base = id_from("http://host", true);
    for other in [
        id_from("http://evil", true),
        id_from("http://host:8080", true),
        id_from("https://host", true),
        id_from("http://host", false),
    ] {
        assert_ne!(base.stem(), other.stem(), "{other:?}");
    }
    assert_eq!(base.stem(), id_from("http://Host:80", true).stem());
    assert_eq!(base.stem(), id_from("HTTP://HOST:80/", true).stem());

    // Bytes one endpoint served are not found for a mount of another.
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let poisoned = cache.entry(&id_from("http://evil", true)).unwrap();
    fill(&cache, &poisoned);
    let real = cache.entry(&base).unwrap();
    assert_eq!(cache.read_block(&real, 0), None);
    assert_ne!(poisoned.entry.dir, real.entry.dir);
    let same = cache.entry(&id_from("http://Host:80", true)).unwrap();
    assert!(Arc::ptr_eq(&real, &same));
}

#[test]
fn the_header_names_the_origin_so_a_mismatch_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Dir::open_path(dir.path()).unwrap();
    let real = id_from("http://host", true);
    let entry = Entry::open_or_create(&objects, &real).unwrap();
    // An entry under the real name whose header names another origin (a collision, or one
    // moved there by hand) is replaced, not served.
    let mut evil = id_from("http://evil", true);
    evil.size = real.size;
    let stem = real.stem();
    let shard = Arc::new(objects.open_dir(&stem[..2]).unwrap());
    assert!(Entry::open_existing(&shard, &stem, &evil)
        .unwrap()
        .is_none());
    let found = Entry::open_any(&shard, &stem).unwrap().expect("intact");
    assert_eq!(found.id, real);
    drop(entry);
}

#[test]
fn usage_files_that_are_links_are_replaced_not_followed() {
    let outside = OutsideFile::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    // A stale temporary record of a dead process with our name, and the record itself.
    let tmp = format!("{USAGE_RECORD}.{}-0", std::process::id());
    outside.plant_link(&cache.v1.path().join(&tmp));
    write_usage_file(&cache.v1, &tmp, 42).unwrap();
    assert_eq!(cache.v1.read_to_string(&tmp).unwrap(), "42");
    outside.plant_link(&cache.v1.path().join(USAGE_RECORD));
    assert_eq!(read_usage_record(&cache.v1), None, "a link is not read");
    cache.evict_pass().unwrap();
    assert!(
        read_usage_record(&cache.v1).is_some(),
        "a real record again"
    );
    outside.assert_untouched();
}

#[test]
fn scans_and_eviction_never_follow_or_delete_through_links() {
    let outside = tempfile::tempdir().unwrap();
    let tree = outside.path().join("tree");
    std::fs::create_dir_all(tree.join("ab")).unwrap();
    std::fs::write(tree.join("ab/map"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(tree.join("ab/data"), vec![1u8; 1 << 20]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(20 << 20));
    let e = cache.entry(&id("real", 4 << 20)).unwrap();
    fill(&cache, &e);
    let shard = e.entry.dir.parent().unwrap().to_path_buf();
    drop(e);
    // A shard, an entry and a stale-looking leftover that are links to the outside.
    std::os::unix::fs::symlink(&tree, cache.objects.path().join("zz")).unwrap();
    std::os::unix::fs::symlink(tree.join("ab"), shard.join("f".repeat(40))).unwrap();
    std::os::unix::fs::symlink(&tree, shard.join(".trash-old")).unwrap();
    let found = scan(&cache.objects).unwrap();
    assert_eq!(found.len(), 1, "only the real entry: {found:?}");
    for n in 0..8 {
        let e = cache.entry(&id(&format!("k{n}"), 4 << 20)).unwrap();
        fill(&cache, &e);
        drop(e);
        cache.evict_pass().unwrap();
    }
    assert!(cache.stats.snapshot().evictions > 0);
    assert_eq!(
        std::fs::read(tree.join("ab/map")).unwrap(),
        vec![1u8; 1 << 20]
    );
    assert_eq!(
        std::fs::read(tree.join("ab/data")).unwrap(),
        vec![1u8; 1 << 20]
    );
}

/// The whole content `fill` writes for an entry of `size` bytes.
fn filled_content(size: u64) -> Vec<u8> {
    let id = id("any", size);
    (0..id.blocks())
        .flat_map(|i| vec![i as u8; id.block_len(i) as usize])
        .collect()
}

fn checksum_of(like: FullObjectChecksum, data: &[u8]) -> FullObjectChecksum {
    let mut digest = like.digest();
    digest.update(data);
    digest.finish()
}

#[test]
fn a_complete_entry_matching_the_full_object_checksum_is_sealed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let size = (3 << 20) + 5;
    for like in [
        FullObjectChecksum::Crc64Nvme(0),
        FullObjectChecksum::Crc32c(0),
        FullObjectChecksum::Crc32(0),
    ] {
        let expected = checksum_of(like, &filled_content(size));
        let key = format!("match-{}", like.algorithm());
        let entry = cache.entry_for(&id(&key, size), Some(expected)).unwrap();
        fill(&cache, &entry);
        assert!(cache.verify_complete(&entry), "{expected}");
        assert!(entry.is_verified());
        assert!(
            entry.entry.is_sealed_for(Some(expected)),
            "the seal names it"
        );
        drop(entry);
        // Another process trusts the seal for an open that knows the checksum.
        let other = open(dir.path(), CacheSize::Bytes(1 << 30));
        let again = other.entry_for(&id(&key, size), Some(expected)).unwrap();
        assert!(again.is_verified(), "{expected}");
    }
    assert_eq!(cache.stats.snapshot().checksum_mismatch, 0);
}

#[test]
fn an_entry_written_partly_by_an_earlier_process_is_sealed_from_read_and_folded_parts() {
    let dir = tempfile::tempdir().unwrap();
    let size = (4 << 20) - 3;
    for like in [
        FullObjectChecksum::Crc64Nvme(0),
        FullObjectChecksum::Crc32(0),
    ] {
        let expected = checksum_of(like, &filled_content(size));
        let key = format!("halves-{}", like.algorithm());
        let write = |cache: &Arc<DiskCache>, entry: &CacheEntry, blocks: std::ops::Range<u64>| {
            for i in blocks {
                let len = entry.entry.id.block_len(i) as usize;
                assert!(cache.write_block(entry, i, &vec![i as u8; len]));
            }
        };
        let earlier = open(dir.path(), CacheSize::Bytes(1 << 30));
        let entry = earlier.entry_for(&id(&key, size), Some(expected)).unwrap();
        write(&earlier, &entry, 0..2);
        drop(entry);
        // This process read none of blocks 0 and 1: their parts come from reading them.
        let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
        let entry = cache.entry_for(&id(&key, size), Some(expected)).unwrap();
        write(&cache, &entry, 2..4);
        assert!(cache.verify_complete(&entry), "{expected}");
        assert!(entry.entry.is_sealed_for(Some(expected)));
    }
}

#[test]
fn a_mismatch_with_the_full_object_checksum_drops_the_entry_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let size = (2 << 20) + 7;
    let content = filled_content(size);
    for (n, like) in [
        FullObjectChecksum::Crc64Nvme(0),
        FullObjectChecksum::Crc32c(0),
    ]
    .into_iter()
    .enumerate()
    {
        // The checksum of other bytes: what S3 says was uploaded is not what we hold.
        let mut uploaded = content.clone();
        uploaded[1 << 20] ^= 1;
        let expected = checksum_of(like, &uploaded);
        let key = format!("mismatch-{}", like.algorithm());
        let entry = cache.entry_for(&id(&key, size), Some(expected)).unwrap();
        fill(&cache, &entry);
        assert!(entry.entry.is_complete().unwrap());
        assert!(!cache.verify_complete(&entry), "{expected}");
        assert!(!entry.is_verified());
        assert!(!entry.entry.is_sealed(), "never sealed");
        assert_eq!(cache.stats.snapshot().checksum_mismatch, n as u64 + 1);
        assert!(
            entry.entry.records().unwrap().iter().all(Option::is_none),
            "every block dropped"
        );
        assert!(!entry.is_checked(0), "nor trusted by this process");
        assert_eq!(cache.read_block(&entry, 0), None, "fetched again");
        assert!(
            !cache.write_block(&entry, 0, &content[..1 << 20]),
            "not stored again by this process"
        );
        // The entry goes with its last open; the next open pinned the version from a
        // listing (no checksum): this process still knows both.
        drop(entry);
        let again = cache.entry(&id(&key, size)).unwrap();
        assert_eq!(again.expected_checksum(), Some(expected));
        assert!(
            !cache.write_block(&again, 0, &content[..1 << 20]),
            "still not stored by this process"
        );
        drop(again);
        let later = open(dir.path(), CacheSize::Bytes(1 << 30));
        let fresh = later.entry_for(&id(&key, size), Some(expected)).unwrap();
        assert!(
            later.write_block(&fresh, 0, &content[..1 << 20]),
            "the next process starts over"
        );
    }
}

#[test]
fn without_a_full_object_checksum_sealing_is_unchanged_and_a_later_one_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let size = 2 << 20;
    let key = id("absent", size);
    let entry = cache.entry(&key).unwrap();
    fill(&cache, &entry);
    assert!(cache.verify_complete(&entry));
    assert!(entry.is_verified() && entry.entry.is_sealed());
    assert_eq!(entry.expected_checksum(), None);
    // An open whose HEAD brought the checksum: the seal does not name it, so it is
    // checked before the next passthrough, and sealed with it.
    let expected = checksum_of(FullObjectChecksum::Crc64Nvme(0), &filled_content(size));
    let same = cache.entry_for(&key, Some(expected)).unwrap();
    assert!(Arc::ptr_eq(&same, &entry));
    assert!(!entry.is_verified(), "not checked against the checksum yet");
    assert!(cache.verify_complete(&entry));
    assert!(entry.entry.is_sealed_for(Some(expected)));
    // Known to this process from then on, after the entry goes too.
    drop((same, entry));
    assert_eq!(
        cache.entry(&key).unwrap().expected_checksum(),
        Some(expected)
    );
    // A composite checksum never reaches the cache: it is no full-object checksum.
    let composite = FullObjectChecksum::from_headers(
        "k",
        &crate::store::ChecksumHeaders {
            crc32c: Some("3q2+7w==-4"),
            checksum_type: Some("COMPOSITE"),
            ..Default::default()
        },
    );
    assert_eq!(composite, None);
    let other = cache.entry_for(&id("composite", size), composite).unwrap();
    fill(&cache, &other);
    assert!(cache.verify_complete(&other));
    assert_eq!(cache.stats.snapshot().checksum_mismatch, 0);
}

#[test]
fn a_version_opened_without_its_checksum_is_asked_for_it_once_and_sealed_with_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), CacheSize::Bytes(1 << 30));
    let size = 2 << 20;
    let key = id("unasked", size);
    let entry = cache.entry(&key).unwrap();
    assert_eq!(cache.checksum_question(&entry), ChecksumQuestion::NotAsked);
    assert!(cache.claim_checksum_question(&entry));
    assert!(!cache.claim_checksum_question(&entry), "asked once");
    assert_eq!(cache.checksum_question(&entry), ChecksumQuestion::Asking);
    // Still asking after the entry goes and another open of the version comes.
    drop(entry);
    let entry = cache.entry(&key).unwrap();
    assert_eq!(cache.checksum_question(&entry), ChecksumQuestion::Asking);
    fill(&cache, &entry);
    let expected = checksum_of(FullObjectChecksum::Crc64Nvme(0), &filled_content(size));
    cache.checksum_answered(&entry, Some(expected));
    assert_eq!(cache.checksum_question(&entry), ChecksumQuestion::Answered);
    assert_eq!(entry.expected_checksum(), Some(expected));
    assert!(cache.verify_complete(&entry));
    assert!(entry.entry.is_sealed_for(Some(expected)));

    // No checksum to be had (S3 keeps none, or the question failed): asked once all the same,
    // then verified without one.
    let other = cache.entry(&id("none kept", size)).unwrap();
    assert!(cache.claim_checksum_question(&other));
    cache.checksum_answered(&other, None);
    assert_eq!(cache.checksum_question(&other), ChecksumQuestion::Answered);
    assert!(!cache.claim_checksum_question(&other));
    fill(&cache, &other);
    assert!(cache.verify_complete(&other));
    // A version whose open brought its checksum, or a verified one, has nothing to ask.
    let brought = cache
        .entry_for(&id("brought", size), Some(expected))
        .unwrap();
    assert!(!cache.claim_checksum_question(&brought));
    assert!(!cache.claim_checksum_question(&other));
}
