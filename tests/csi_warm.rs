//! Warming through volume attributes, over the real socket: NodePublishVolume returns once
//! the files `warm` names are in the node's disk cache (the first read of them sends no GET),
//! or after `warmTimeout` with the download going on behind the published volume.

mod common;

use std::time::{Duration, Instant};

use common::csi::{wait_for, Node, BUCKET, OBJECTS};
use common::s3::LocalServer;
use modelfs_s3local::Shaping;

const MIB: u64 = 1 << 20;

fn cache_args(cache: &tempfile::TempDir) -> Vec<String> {
    vec![
        "--cache-dir".into(),
        cache.path().to_string_lossy().into_owned(),
        "--cache-size".into(),
        "1GiB".into(),
    ]
}

#[test]
fn publish_returns_with_the_warm_files_in_the_disk_cache() {
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let args = cache_args(&cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start_with(&args);
    let target = node.target("pod-w", "models");
    let mut req = node.request("vol-w", &target);
    req.volume_context.insert(
        "warm".into(),
        "checkpoints/*.safetensors, loras/detail.safetensors, missing/*".into(),
    );
    node.s3.server.reset_stats();
    node.publish_ok(req);
    let warmed = node.s3.server.stats();
    assert!(warmed.get_object > 0, "publishing downloaded the files");

    // Everything named is local: reading it sends no GET.
    node.s3.server.reset_stats();
    for (key, seed, len) in OBJECTS.iter().filter(|(key, ..)| !key.starts_with("vae/")) {
        let data = std::fs::read(target.join(key)).expect("read a warm file");
        assert!(data == common::pseudo_random(*seed, *len), "{key} differs");
    }
    assert_eq!(
        node.s3.server.stats().get_object,
        0,
        "the warm files were read from S3"
    );
    let log = node.mounter_log();
    assert!(log.contains("warming 2 files"), "{log}");
    assert!(log.contains("nothing matches \"missing/*\""), "{log}");
    node.unpublish("vol-w", &target).expect("unpublish");
}

#[test]
fn publish_stops_waiting_at_the_timeout_and_warming_goes_on() {
    const LEN: u64 = 48 * MIB;
    // 16 MiB/s for all responses together: warming the model takes about 3 s.
    let s3 = LocalServer::start_configured(BUCKET, |config| {
        config.shaping = Shaping {
            aggregate_bytes_per_sec: Some(16 * MIB),
            ..Shaping::off()
        }
    });
    let model = common::pseudo_random(41, LEN as usize);
    s3.store()
        .put_bytes(BUCKET, "checkpoints/big.safetensors", &model)
        .expect("seed");
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let args = cache_args(&cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start_on(s3, &args, &[], &[]);
    let target = node.target("pod-t", "models");
    let mut req = node.request("vol-t", &target);
    req.volume_context
        .insert("warm".into(), "checkpoints/big.safetensors".into());
    req.volume_context.insert("warmTimeout".into(), "1s".into());
    let started = Instant::now();
    node.publish_ok(req);
    let published = started.elapsed();
    assert!(
        published < Duration::from_millis(2500),
        "publish waited {published:?}, past its 1 s warm timeout"
    );
    assert!(
        node.mounter_log().contains("warming goes on"),
        "{}",
        node.mounter_log()
    );

    // The download finishes behind the published volume; then the model reads locally.
    wait_for("warming to finish", || {
        node.mounter_log().contains("warmed 1 files")
    });
    node.s3.server.reset_stats();
    let data = std::fs::read(target.join("checkpoints/big.safetensors")).expect("read");
    assert!(data == model, "the warmed model differs");
    assert_eq!(
        node.s3.server.stats().get_object,
        0,
        "the model was read from S3"
    );
    node.unpublish("vol-t", &target).expect("unpublish");
}
