//! S3's full-object checksum, end to end: the local server keeps one per object and answers
//! it on HeadObject with `x-amz-checksum-mode: ENABLED`; a mount checks a complete cache
//! entry against it before sealing the entry for passthrough, so bytes that passed our own
//! block CRCs but are not what was uploaded are never served by the kernel from the cache.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use common::mount::Mount;
use common::s3::LocalServer;
use common::suite::eventually;
use modelfs_s3local::store::ObjectChecksum;
use modelfs_s3local::{Fault, Rule};

const BUCKET: &str = "models";
const MIB: usize = 1 << 20;
const MISMATCH: &str = "does not match S3's full-object checksum";

fn seed(server: &LocalServer, key: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = common::pseudo_random(seed, len);
    server.seed(key, &data);
    data
}

fn mount(server: &LocalServer, cache: &Path) -> Mount {
    common::mount::mount_with_cache(&server.endpoint, cache, "1GiB", &[])
}

/// The cache entry directory whose map header names `key`.
fn entry_dir(cache: &Path, key: &str) -> Option<PathBuf> {
    common::residency::cache_entry_files(cache, "map")
        .into_iter()
        .find(|map| {
            let header = std::fs::read(map).unwrap_or_default();
            header
                .get(..4096.min(header.len()))
                .is_some_and(|h| h.windows(key.len()).any(|w| w == key.as_bytes()))
        })
        .and_then(|map| map.parent().map(Path::to_path_buf))
}

/// The entry's seal (`verified`), if it has one.
fn seal(cache: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(entry_dir(cache, key)?.join("verified")).ok()
}

/// Whether the daemon logged an open of `file` served by passthrough.
fn passthrough_opened(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains(" open") && l.contains("mode=Passthrough"))
}

/// Opens and reads `path` until `done` says so (each open of a complete entry starts its
/// verification), for at most 20 s.
fn reopen_until(m: &Mount, path: &Path, mut done: impl FnMut(&str) -> bool) -> bool {
    eventually(Duration::from_secs(20), || {
        let _ = std::fs::read(path);
        std::thread::sleep(Duration::from_millis(50));
        done(&m.log_text())
    })
}

#[test]
fn a_file_matching_its_full_object_checksum_is_sealed_with_it_for_passthrough() {
    let server = LocalServer::start(BUCKET);
    let key = "m/checkpoints/good.bin";
    let real = seed(&server, key, 6 * MIB + 321, 31);
    let stored = server
        .store()
        .head(BUCKET, key)
        .and_then(|meta| meta.checksum)
        .expect("the store keeps a checksum");
    assert_eq!(stored, ObjectChecksum::of(None, &real).expect("crc64nvme"));
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path());
    let path = m.join("checkpoints/good.bin");
    assert!(std::fs::read(&path).expect("read") == real);
    let sealed = reopen_until(&m, &path, passthrough_opened);
    let log = m.log_text();
    m.unmount();
    assert!(sealed, "no passthrough open within 20 s:\n{log}");
    assert!(!log.contains(MISMATCH), "{log}");
    let seal = seal(cache.path(), key).expect("sealed");
    assert_eq!(
        seal.lines().nth(1),
        Some(stored.to_string().as_str()),
        "the seal names the checksum the content matched"
    );
}

#[test]
fn a_file_whose_bytes_do_not_match_its_checksum_is_never_sealed_and_is_fetched_again() {
    let server = LocalServer::start(BUCKET);
    let key = "m/checkpoints/bad.bin";
    let real = seed(&server, key, 5 * MIB + 77, 32);
    // Every GetObject body has one byte inverted; lengths, ETags and the HEAD's checksum stay
    // true, so our own block CRCs (computed over what arrived) pass.
    server
        .server
        .faults()
        .add(Rule::get(Fault::FlipByte { at: 4321 }));
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path());
    let path = m.join("checkpoints/bad.bin");
    let served = std::fs::read(&path).expect("read");
    assert_eq!(served.len(), real.len());
    assert!(served != real, "the fault altered no byte");
    assert!(server.server.faults().stats().flipped > 0);
    let detected = reopen_until(&m, &path, |log| log.contains(MISMATCH));
    let log = m.log_text();
    assert!(detected, "no checksum mismatch within 20 s:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(MISMATCH) && l.contains("ERROR") && l.contains(key)),
        "the error names the key:\n{log}"
    );
    assert!(!passthrough_opened(&log), "never passed through:\n{log}");
    assert_eq!(seal(cache.path(), key), None, "never sealed:\n{log}");
    m.unmount();
    let log = m.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("disk cache:") && l.contains("checksum_mismatch=1")),
        "the disk tier counts the mismatch:\n{log}"
    );

    // The fault cleared, a fresh mount on the same cache reads the true bytes (the dropped
    // entry is fetched again) and seals them.
    server.server.faults().clear();
    let mut again = mount(&server, cache.path());
    let path = again.join("checkpoints/bad.bin");
    assert!(
        std::fs::read(&path).expect("read again") == real,
        "byte-exact"
    );
    let sealed = reopen_until(&again, &path, passthrough_opened);
    let log = again.log_text();
    again.unmount();
    assert!(sealed, "no passthrough open within 20 s:\n{log}");
    assert!(!log.contains(MISMATCH), "{log}");
    assert!(seal(cache.path(), key).is_some_and(|s| s.contains("crc64nvme:")));
}

#[test]
fn a_file_opened_on_a_proof_from_a_get_is_checked_against_its_checksum_before_sealing() {
    let server = LocalServer::start(BUCKET);
    let files = 6;
    let name = |i: usize| format!("loras/l{i}.safetensors");
    let sources: Vec<PathBuf> = (0..files)
        .map(|i| server.seed_safetensors(&format!("m/{}", name(i)), 3 * MIB as u64, 70 + i as u64))
        .collect();
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path());
    // Two headers in one folder are a scan: the other headers are fetched ahead, and those
    // GETs prove that this volume may read the files, so their opens send no HeadObject
    // (which is what brings S3's checksum).
    server.server.reset_stats();
    common::scan_header(&m.join(&name(0)));
    common::scan_header(&m.join(&name(1)));
    assert!(
        server.gets_settle(files as u64),
        "the scan ahead did not fetch every header"
    );
    let heads = server.server.stats().head_object;
    assert_eq!(heads, 2, "only the two files read first sent a HeadObject");
    server.server.reset_stats();
    let last = files - 1;
    let key = format!("m/{}", name(last));
    let path = m.join(&name(last));
    let real = std::fs::read(&sources[last]).expect("source");
    assert!(std::fs::read(&path).expect("read") == real);
    let sealed = reopen_until(&m, &path, passthrough_opened);
    let log = m.log_text();
    let heads = server.server.stats().head_object;
    m.unmount();
    assert!(sealed, "no passthrough open within 20 s:\n{log}");
    assert_eq!(heads, 1, "one HeadObject, for the checksum:\n{log}");
    let stored = server
        .store()
        .head(BUCKET, &key)
        .and_then(|meta| meta.checksum)
        .expect("the store keeps a checksum");
    let seal = seal(cache.path(), &key).expect("sealed");
    assert_eq!(
        seal.lines().nth(1),
        Some(stored.to_string().as_str()),
        "the seal names the checksum the content matched:\n{seal}"
    );
}

#[test]
fn the_local_server_keeps_answers_and_enforces_full_object_checksums() {
    let server = LocalServer::start(BUCKET);
    let client = common::s3::client(&server.endpoint);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data = common::pseudo_random(33, 100_000);
    let crc32c = ObjectChecksum::of(Some("crc32c"), &data).expect("crc32c");
    runtime.block_on(async {
        // A checksum the client sends is checked, and kept.
        let put = |checksum: String| {
            client
                .put_object()
                .bucket(BUCKET)
                .key("c")
                .checksum_crc32_c(checksum)
                .body(ByteStream::from(data.clone()))
                .send()
        };
        let wrong = ObjectChecksum::of(Some("crc32c"), b"other bytes").expect("crc32c");
        let refused = put(wrong.to_base64()).await.expect_err("a wrong checksum");
        assert_eq!(
            aws_sdk_s3::error::ProvideErrorMetadata::code(&refused),
            Some("BadDigest")
        );
        assert!(server.store().head(BUCKET, "c").is_none(), "nothing stored");
        put(crc32c.to_base64()).await.expect("put");
        let head = |key: &str, mode: Option<ChecksumMode>| {
            client
                .head_object()
                .bucket(BUCKET)
                .key(key)
                .set_checksum_mode(mode)
                .send()
        };
        let head_c = head("c", Some(ChecksumMode::Enabled)).await.expect("head");
        assert_eq!(head_c.checksum_crc32_c(), Some(crc32c.to_base64().as_str()));
        assert_eq!(
            head_c.checksum_type().map(|t| t.as_str()),
            Some("FULL_OBJECT")
        );

        // Without a checksum from the client, the server computes CRC64NVME.
        server.seed("d", &data);
        let crc64 = ObjectChecksum::of(None, &data).expect("crc64nvme");
        let head_d = head("d", Some(ChecksumMode::Enabled)).await.expect("head");
        assert_eq!(
            head_d.checksum_crc64_nvme(),
            Some(crc64.to_base64().as_str())
        );
        let plain = head("d", None).await.expect("head");
        assert_eq!(plain.checksum_crc64_nvme(), None, "only when asked");
        let get_d = |range: Option<&str>| {
            client
                .get_object()
                .bucket(BUCKET)
                .key("d")
                .set_range(range.map(str::to_string))
                .checksum_mode(ChecksumMode::Enabled)
                .send()
        };
        let ranged = get_d(Some("bytes=0-99")).await.expect("ranged get");
        assert_eq!(ranged.checksum_crc64_nvme(), None, "never on a ranged GET");
        let whole = get_d(None).await.expect("get");
        assert_eq!(
            whole.checksum_crc64_nvme(),
            Some(crc64.to_base64().as_str())
        );
        let body = whole.body.collect().await.expect("body").into_bytes();
        assert!(body[..] == data[..]);
    });
}
