use std::io::{Cursor, Read, Write};

use super::*;

fn store() -> (tempfile::TempDir, FileStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("open");
    store.create_bucket("b").expect("bucket");
    (dir, store)
}

const WEIRD_KEYS: &[&str] = &[
    "a",
    "a/b",
    "a//b",
    "../x",
    "./y",
    "/leading",
    "trailing/",
    "sp ace/ü.safetensors",
    "模型/ß",
];

#[test]
fn etag_is_quoted_md5() {
    let (_dir, store) = store();
    let meta = store.put_bytes("b", "k", b"hello").expect("put");
    assert_eq!(meta.etag, "\"5d41402abc4b2a76b9719d911017c592\"");
    assert_eq!(meta.size, 5);
    let empty = store.put_bytes("b", "e", b"").expect("put");
    assert_eq!(empty.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
    assert_eq!(store.get_bytes("b", "e").expect("get"), b"");
}

#[test]
fn any_key_round_trips_and_survives_reopen() {
    let (dir, store) = store();
    let long = format!("seg/{}/end", "x".repeat(600));
    let mut keys: Vec<String> = WEIRD_KEYS.iter().map(|k| k.to_string()).collect();
    keys.push(long);
    for (i, key) in keys.iter().enumerate() {
        store
            .put_bytes("b", key, format!("content {i}").as_bytes())
            .expect("put");
    }
    let check = |store: &FileStore| {
        let listed: Vec<String> = store.list("b").into_iter().map(|m| m.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                store.get_bytes("b", key).expect("get"),
                format!("content {i}").as_bytes()
            );
            let path = store.data_path("b", key).expect("path");
            assert_eq!(
                std::fs::read(path).expect("read"),
                format!("content {i}").as_bytes()
            );
        }
    };
    check(&store);
    let before = store.list("b");
    drop(store);
    let reopened = FileStore::open(dir.path()).expect("reopen");
    assert!(reopened.bucket_exists("b"));
    check(&reopened);
    assert_eq!(reopened.list("b"), before, "metadata survives reopening");
}

#[test]
fn overwrite_keeps_open_readers_whole() {
    let (_dir, store) = store();
    store.put_bytes("b", "k", &[1u8; 1000]).expect("put");
    let (meta, mut file) = store.open_object("b", "k").expect("open");
    let new = store.put_bytes("b", "k", &[2u8; 10]).expect("overwrite");
    assert_ne!(meta.etag, new.etag);
    let mut old = Vec::new();
    file.read_to_end(&mut old).expect("read");
    assert_eq!(
        old,
        vec![1u8; 1000],
        "the open file still has the old version"
    );
    assert_eq!(store.get_bytes("b", "k").expect("get"), vec![2u8; 10]);
    assert_eq!(store.head("b", "k"), Some(new));
}

#[test]
fn delete_is_idempotent() {
    let (_dir, store) = store();
    store.put_bytes("b", "k", b"x").expect("put");
    let path = store.data_path("b", "k").expect("path");
    store.delete("b", "k").expect("delete");
    store.delete("b", "k").expect("delete again");
    assert!(store.head("b", "k").is_none());
    assert!(store.data_path("b", "k").is_none());
    assert!(!path.exists());
    assert!(matches!(
        store.open_object("b", "k"),
        Err(StoreError::NoSuchKey { .. })
    ));
    assert!(matches!(
        store.delete("nope", "k"),
        Err(StoreError::NoSuchBucket { .. })
    ));
}

#[test]
fn streaming_writes_and_aborts() {
    let (dir, store) = store();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let meta = store
        .put_from_reader("b", "big", Cursor::new(&data))
        .expect("put");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(store.get_bytes("b", "big").expect("get"), data);

    let mut writer = store.writer("b", "aborted").expect("writer");
    writer.write_all(b"partial").expect("write");
    drop(writer);
    assert!(store.head("b", "aborted").is_none());
    let leftovers = std::fs::read_dir(dir.path().join("b/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(leftovers, 0, "aborted writes leave nothing behind");
}

#[test]
fn failing_reader_publishes_nothing() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("boom"))
        }
    }
    let (_dir, store) = store();
    let err = store.put_from_reader("b", "k", Failing).expect_err("fails");
    assert!(matches!(err, StoreError::Body { .. }), "{err}");
    assert!(store.head("b", "k").is_none());
}

#[test]
fn buckets() {
    let (_dir, store) = store();
    store.create_bucket("b").expect("idempotent");
    assert!(store.create_bucket("../evil").is_err());
    assert!(matches!(
        store.put_bytes("missing", "k", b""),
        Err(StoreError::NoSuchBucket { .. })
    ));
    store.put_bytes("b", "k", b"x").expect("put");
    assert!(matches!(
        store.delete_bucket("b"),
        Err(StoreError::BucketNotEmpty { .. })
    ));
    store.delete("b", "k").expect("delete");
    store.delete_bucket("b").expect("delete bucket");
    assert!(!store.bucket_exists("b"));
    assert!(store.buckets().is_empty());
}

#[test]
fn inconsistent_objects_are_skipped_on_reopen() {
    let (dir, store) = store();
    store.put_bytes("b", "good", b"good").expect("put");
    store.put_bytes("b", "torn", b"torn").expect("put");
    let torn = store.data_path("b", "torn").expect("path");
    drop(store);
    std::fs::write(&torn, b"a different length").expect("corrupt");
    let reopened = FileStore::open(dir.path()).expect("reopen");
    assert!(reopened.head("b", "good").is_some());
    assert!(reopened.head("b", "torn").is_none());
}

#[test]
fn concurrent_overwrites_never_tear() {
    use md5::{Digest, Md5};

    let (_dir, store) = store();
    let store = std::sync::Arc::new(store);
    let size = 300_000;
    store.put_bytes("b", "k", &vec![0u8; size]).expect("seed");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut version = 1u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .put_bytes("b", "k", &vec![version; size])
                    .expect("overwrite");
                version = version.wrapping_add(1);
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let (meta, mut file) = store.open_object("b", "k").expect("open");
                    let mut data = Vec::new();
                    file.read_to_end(&mut data).expect("read");
                    assert_eq!(data.len() as u64, meta.size);
                    assert!(data.iter().all(|&b| b == data[0]), "torn read");
                    let etag = format!("\"{}\"", crate::encoding::hex(&Md5::digest(&data)));
                    assert_eq!(etag, meta.etag, "metadata matches the bytes");
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().expect("reader");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
}

#[test]
fn objects_keep_a_full_object_checksum_across_reopen_and_claims_are_checked() {
    let (dir, store) = store();
    let meta = store.put_bytes("b", "k", b"123456789").expect("put");
    let crc64 = ObjectChecksum::Crc64Nvme(0xae8b_1486_0a79_9888);
    assert_eq!(meta.checksum, Some(crc64), "CRC64NVME by default");
    let crc32c = ObjectChecksum::Crc32c(0xe306_9283);
    let mut claiming = store.writer_claiming("b", "c", crc32c).expect("writer");
    claiming.append(b"123456789").expect("append");
    assert_eq!(claiming.commit().expect("commit").checksum, Some(crc32c));
    let mut lying = store
        .writer_claiming("b", "c", ObjectChecksum::Crc32c(1))
        .expect("writer");
    lying.append(b"other").expect("append");
    assert!(matches!(
        lying.commit(),
        Err(StoreError::BadDigest {
            algorithm: "crc32c",
            ..
        })
    ));
    assert_eq!(
        store.get_bytes("b", "c").expect("get"),
        b"123456789",
        "kept"
    );
    drop(store);
    let reopened = FileStore::open(dir.path()).expect("reopen");
    assert_eq!(
        reopened.head("b", "k").and_then(|m| m.checksum),
        Some(crc64)
    );
    assert_eq!(
        reopened.head("b", "c").and_then(|m| m.checksum),
        Some(crc32c)
    );
}
