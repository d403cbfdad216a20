//! Mount-time failures give a clear message and a non-zero exit, and leave nothing mounted;
//! the default (background) mode returns once the mount is ready.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::{endpoint_args, is_mounted, modelfs_bin, mount_command, s3_env};
use common::process::{output_within, unmount_lazily};
use common::s3::{Endpoint, LocalServer};

const BUCKET: &str = "models";

/// Runs `cmd` to completion (killing it after 60 s); returns (success, stderr).
fn run(mut cmd: Command, mountpoint: &Path) -> (bool, String) {
    let out = output_within(
        &mut cmd,
        Duration::from_secs(60),
        || false,
        || unmount_lazily(mountpoint),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mount_cmd(endpoint: &Endpoint, source: &str, mountpoint: &Path, foreground: bool) -> Command {
    let mut cmd = mount_command(endpoint, source, mountpoint);
    if foreground {
        cmd.arg("--foreground");
    }
    cmd
}

/// Runs `cmd`, which must fail saying one of `expected` and leave nothing mounted; its stderr.
fn assert_fails(cmd: Command, mountpoint: &Path, expected: &[&str]) -> String {
    let (ok, stderr) = run(cmd, mountpoint);
    assert!(!ok, "mount should fail; stderr: {stderr}");
    let lower = stderr.to_lowercase();
    assert!(
        expected.iter().any(|e| lower.contains(&e.to_lowercase())),
        "stderr should mention one of {expected:?}: {stderr}"
    );
    assert!(!is_mounted(mountpoint), "nothing may stay mounted");
    stderr
}

#[test]
fn missing_bucket_is_reported_in_foreground_and_background() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    for foreground in [true, false] {
        let cmd = mount_cmd(
            &server.endpoint,
            "s3://no-such-bucket",
            dir.path(),
            foreground,
        );
        let stderr = assert_fails(cmd, dir.path(), &["no-such-bucket does not exist"]);
        // The cause is said once, not repeated by each layer of the error chain.
        assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
    }
}

#[test]
fn unreachable_endpoint_is_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let endpoint = Endpoint {
        url: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: "k".into(),
        secret_key: "s".into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = mount_cmd(&endpoint, "s3://models", dir.path(), true);
    assert_fails(cmd, dir.path(), &["cannot reach"]);
}

#[test]
fn bad_credentials_are_reported() {
    let server = LocalServer::start(BUCKET);
    let mut endpoint = server.endpoint.clone();
    endpoint.secret_key = "wrong-secret".into();
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = mount_cmd(&endpoint, "s3://models", dir.path(), true);
    let stderr = assert_fails(cmd, dir.path(), &["access denied", "SignatureDoesNotMatch"]);
    assert_eq!(
        stderr.matches("SignatureDoesNotMatch").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn missing_credentials_are_reported() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = mount_cmd(&server.endpoint, "s3://models", dir.path(), true);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    assert_fails(cmd, dir.path(), &["no AWS credentials found"]);
}

#[test]
fn bad_mountpoints_and_urls_are_reported() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    for (source, mountpoint, foreground, expected) in [
        ("s3://models", missing.as_path(), true, "does not exist"),
        ("s3://models", file.as_path(), false, "not a directory"),
        ("models", dir.path(), true, "expected s3://"),
        ("s3://Bad_Bucket", dir.path(), true, "invalid bucket name"),
    ] {
        let cmd = mount_cmd(&server.endpoint, source, mountpoint, foreground);
        assert_fails(cmd, mountpoint, &[expected]);
    }
}

#[test]
fn unusable_cache_dir_and_busy_mountpoint_are_reported() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    let not_a_dir = dir.path().join("cache-file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let mut cmd = mount_cmd(&server.endpoint, "s3://models", &mountpoint, true);
    cmd.arg("--cache-dir").arg(&not_a_dir);
    assert_fails(cmd, &mountpoint, &["cannot use cache directory"]);

    // A cache directory inside one that others may write: they could swap it for a link.
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("cache")).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut cmd = mount_cmd(&server.endpoint, "s3://models", &mountpoint, true);
    cmd.arg("--cache-dir").arg(shared.join("cache"));
    assert_fails(
        cmd,
        &mountpoint,
        &[
            "is on the way to the cache directory",
            "writable by group or others",
        ],
    );

    let first = common::mount::Mount::new(&server.endpoint, "s3://models", &[]);
    let cmd = mount_cmd(&server.endpoint, "s3://models", &first.path, true);
    let (ok, stderr) = run(cmd, &first.path);
    assert!(!ok, "a second mount on a busy mountpoint must fail");
    assert!(stderr.contains("already a mount point"), "{stderr}");
    assert!(is_mounted(&first.path), "the first mount is untouched");
}

#[test]
fn missing_dev_fuse_is_reported() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    // A private mount namespace whose /dev is an empty tmpfs: no /dev/fuse.
    let script = format!(
        "mount -t tmpfs tmpfs /dev && exec {} mount s3://models {} {} --foreground",
        modelfs_bin(),
        dir.path().display(),
        endpoint_args(&server.endpoint).join(" ")
    );
    let mut cmd = Command::new("unshare");
    s3_env(&mut cmd, &server.endpoint);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    assert_fails(cmd, dir.path(), &["/dev/fuse is not available"]);
}

#[test]
fn background_mount_returns_when_ready_and_unmount_command_works() {
    let server = LocalServer::start(BUCKET);
    server.seed("m/checkpoints/a.safetensors", b"hello");
    let dir = tempfile::tempdir().expect("tempdir");
    let mp = dir.path();
    let (ok, stderr) = run(mount_cmd(&server.endpoint, "s3://models/m", mp, false), mp);
    assert!(ok, "background mount failed: {stderr}");
    assert!(is_mounted(mp), "mounted when the command returns");
    let read = std::fs::read(mp.join("checkpoints/a.safetensors"));
    let status = Command::new(modelfs_bin())
        .arg("unmount")
        .arg(mp)
        .status()
        .expect("modelfs unmount");
    if !status.success() {
        let _ = Command::new("umount").arg("-l").arg(mp).status();
    }
    assert_eq!(read.expect("read through background mount"), b"hello");
    assert!(status.success());
    assert!(!is_mounted(mp));
}
