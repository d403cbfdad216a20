//! `--cache-not-on` through the binary (issue 21): `modelfs mount` refuses a disk cache on the
//! filesystem it is told to keep clear, before it mounts or creates anything; a cache on
//! another filesystem passes the check. No S3 endpoint is needed: the check comes first.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::process::output_within;

/// Runs `modelfs ARGS`, killed after 30 s if it has not exited (it should at once).
fn modelfs(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
    cmd.args(args).env("AWS_EC2_METADATA_DISABLED", "true");
    output_within(&mut cmd, Duration::from_secs(30), || false, || {})
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// `modelfs mount` at `mountpoint` with a disk cache at `cache` that must not be on the
/// filesystem of `keep_clear`; the endpoint is a closed port, never reached.
fn mount_keeping_clear(mountpoint: &Path, cache: &Path, keep_clear: &str) -> Output {
    modelfs(&[
        "mount",
        "s3://models/ComfyUI/models",
        path(mountpoint),
        "--foreground",
        "--cache-dir",
        path(cache),
        "--cache-not-on",
        keep_clear,
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--region",
        "us-east-1",
    ])
}

#[test]
fn mount_refuses_a_cache_on_the_filesystem_it_must_keep_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("models");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let cache = dir.path().join("cache");
    let output = mount_keeping_clear(&mountpoint, &cache, path(dir.path()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("is on the same filesystem as") && stderr.contains("--cache-not-on"),
        "{stderr}"
    );
    assert!(!cache.exists(), "nothing is created for a refused cache");
    assert_eq!(
        std::fs::read_dir(&mountpoint).expect("mountpoint").count(),
        0,
        "nothing is mounted"
    );
}

#[test]
fn a_cache_on_another_filesystem_passes_the_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A missing mountpoint fails the next check, which proves this one passed.
    let output = mount_keeping_clear(
        &dir.path().join("missing"),
        &dir.path().join("cache"),
        "/proc",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!stderr.contains("same filesystem"), "{stderr}");
    assert!(
        stderr.contains("missing"),
        "the mountpoint check ran: {stderr}"
    );
}
