//! Loads under S3 throttling through a real mount (issue 22): once S3 answers `503 SlowDown`,
//! a mount's sweeps ask for larger spans, so the next loads cost fewer requests for the same
//! bytes (a fleet cold-starting on one prefix backs off in requests, not only in time). Bytes
//! stay exact.

mod common;

use std::path::Path;

use common::mount::{mount_with_cache, Mount};
use common::s3::LocalServer;
use modelfs_s3local::{Fault, Rule};

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;
/// The loads compared: each 32 sweep spans at the default 8 MiB.
const MODEL_BYTES: u64 = 256 * MIB;

/// Loads `rel` through `mount` (read whole, in order) and checks it byte for byte; returns
/// the GETs and bytes the server answered meanwhile.
fn load(server: &LocalServer, mount: &Mount, rel: &str, expected: &Path) -> (u64, u64) {
    server.server.reset_stats();
    let read = std::fs::read(mount.join(rel)).expect("read through the mount");
    let stats = server.server.stats();
    let want = std::fs::read(expected).expect("read the stored copy");
    assert!(read == want, "{rel}: bytes differ from S3's");
    (stats.get_object, stats.bytes_sent)
}

#[test]
fn after_throttling_a_load_takes_fewer_gets_for_the_same_exact_bytes() {
    let server = LocalServer::start(BUCKET);
    let before = server.seed_safetensors("m/checkpoints/before.safetensors", MODEL_BYTES, 1);
    let during = [
        server.seed_safetensors("m/checkpoints/during-1.safetensors", 96 * MIB, 2),
        server.seed_safetensors("m/checkpoints/during-2.safetensors", 96 * MIB, 4),
        server.seed_safetensors("m/checkpoints/during-3.safetensors", 96 * MIB, 5),
    ];
    let after = server.seed_safetensors("m/checkpoints/after.safetensors", MODEL_BYTES, 3);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut mount = mount_with_cache(&server.endpoint, cache.path(), "4GiB", &[]);

    let (gets_before, _) = load(&server, &mount, "checkpoints/before.safetensors", &before);
    // A fifth of the GETs answered 503 SlowDown for three loads, more than a second apart:
    // the span doubles at most once a second, so the growth does not hang on how fast one
    // load is, nor on one load seeing its 503s only after its last span started.
    let faults = server.server.faults();
    faults.set([Rule::get(Fault::SlowDown).rate(0.2)]);
    for (i, expected) in during.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let rel = format!("checkpoints/during-{}.safetensors", i + 1);
        load(&server, &mount, &rel, expected);
    }
    assert!(faults.stats().slow_down > 0, "S3 throttled");
    faults.clear();
    let (gets_after, bytes_after) = load(&server, &mount, "checkpoints/after.safetensors", &after);

    eprintln!("GETs for {MODEL_BYTES} bytes: {gets_before} before throttling, {gets_after} after");
    assert!(
        gets_after * 4 <= gets_before * 3,
        "spans did not grow: {gets_after} GETs after throttling, {gets_before} before"
    );
    assert!(
        bytes_after as f64 <= 1.05 * MODEL_BYTES as f64, // the header adds a few KiB
        "larger spans fetched {bytes_after} bytes for {MODEL_BYTES}"
    );
    mount.unmount();
}
