//! Security properties visible from outside: secrets never reach the logs (even at trace
//! level), `allow_other` only when asked, cache files private to their owner, links planted
//! in the cache directory or at the log file never followed, cache directories others own
//! or may write refused.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mount::{is_mounted, mount_command, mount_with_cache, Mount};
use common::process::output_within;
use common::s3::LocalServer;

const BUCKET: &str = "models";

fn mount_options(path: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let wanted = path.to_string_lossy();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(&*wanted))
        .map(str::to_string)
        .unwrap_or_default()
}

#[test]
fn credentials_and_signatures_never_reach_the_trace_log() {
    let server = LocalServer::start(BUCKET);
    server.seed("m/loras/a.safetensors", &common::pseudo_random(1, 3 << 20));
    let mut m = Mount::new(&server.endpoint, "s3://models/m", &["--log-level", "trace"]);
    std::fs::read(m.join("loras/a.safetensors")).expect("read");
    m.unmount();
    let log = m.log_text();
    assert!(
        log.contains("GetObject"),
        "the trace log should show requests"
    );
    let secret = &server.endpoint.secret_key;
    assert!(
        !log.contains(secret.as_str()),
        "the secret key is in the log"
    );
    for needle in [
        "X-Amz-Signature=",
        "Signature=",
        "AWS4-HMAC-SHA256 Credential",
    ] {
        assert!(!log.contains(needle), "{needle:?} is in the log");
    }
}

#[test]
fn allow_other_only_when_asked_and_cache_files_are_private() {
    let server = LocalServer::start(BUCKET);
    server.seed("m/vae/v.safetensors", &[7u8; 4096]);
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().join("c");
    let mut private = mount_with_cache(&server.endpoint, &cache_dir, "1GiB", &[]);
    std::fs::read(private.join("vae/v.safetensors")).expect("read");
    let options = mount_options(&private.path);
    private.unmount();
    assert!(
        options.contains(" ro,") || options.contains(" ro "),
        "{options}"
    );
    assert!(!options.contains("allow_other"), "{options}");

    let mut shared = Mount::new(&server.endpoint, "s3://models/m", &["--allow-other"]);
    let options = mount_options(&shared.path);
    shared.unmount();
    assert!(options.contains("allow_other"), "{options}");

    let mut stack = vec![cache_dir.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).expect("readdir").flatten() {
            let meta = entry.metadata().expect("meta");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                assert_eq!(
                    meta.mode() & 0o077,
                    0,
                    "{} is readable by others",
                    entry.path().display()
                );
            }
        }
    }
    assert!(files >= 2, "the cache holds a data and a map file");
}

/// The entry directory in `cache_dir` whose map header names `key`.
fn entry_dir_of(cache_dir: &Path, key: &str) -> PathBuf {
    let objects = cache_dir.join("v1/objects");
    for shard in std::fs::read_dir(&objects).expect("objects").flatten() {
        for entry in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            let map = std::fs::read(entry.path().join("map")).unwrap_or_default();
            let header = &map[..map.len().min(4096)];
            if header.windows(key.len()).any(|w| w == key.as_bytes()) {
                return entry.path();
            }
        }
    }
    panic!("no cache entry for {key}");
}

/// Replaces `at` with a link to `to`.
fn plant(at: &Path, to: &Path) {
    std::fs::remove_file(at).unwrap_or_else(|e| panic!("remove {}: {e}", at.display()));
    symlink(to, at).expect("symlink");
}

#[test]
fn links_planted_in_the_cache_are_never_followed() {
    let server = LocalServer::start(BUCKET);
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            let data = common::pseudo_random(40 + i, (2 << 20) + 777 * i as usize);
            (format!("m/vae/f{i}.safetensors"), data)
        })
        .collect();
    for (key, data) in &files {
        server.seed(key, data);
    }
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().join("c");
    let mut first = mount_with_cache(&server.endpoint, &cache_dir, "1GiB", &[]);
    for (key, data) in &files {
        let got = std::fs::read(first.join(key.trim_start_matches("m/"))).expect("read");
        assert!(&got == data, "{key}");
    }
    first.unmount();

    // Files elsewhere that a privileged process must never write, truncate or remove. The
    // map and data victims look like the entry's own files (a valid header, the right
    // size, no block present), so a process that followed the links would fill them in.
    let outside = tempfile::tempdir().expect("outside");
    let victim = |name: &str, bytes: Vec<u8>| {
        let path = outside.path().join(format!("victim-{name}"));
        std::fs::write(&path, &bytes).expect("victim");
        (path, bytes)
    };
    let no_blocks = |map: &Path| {
        let mut bytes = std::fs::read(map).expect("map");
        bytes[4096..].fill(0);
        bytes
    };
    let entry0 = entry_dir_of(&cache_dir, &files[0].0);
    let entry1 = entry_dir_of(&cache_dir, &files[1].0);
    let entry2 = entry_dir_of(&cache_dir, &files[2].0);
    let victims = [
        victim("map", no_blocks(&entry0.join("map"))),
        victim("data", vec![0u8; files[1].1.len()]),
        victim("usage", b"12345".to_vec()),
        victim("verified", b"precious".to_vec()),
    ];
    plant(&entry0.join("map"), &victims[0].0);
    std::fs::write(entry1.join("map"), no_blocks(&entry1.join("map"))).expect("clear map");
    plant(&entry1.join("data"), &victims[1].0);
    plant(&cache_dir.join("v1/usage"), &victims[2].0);
    let sealed = entry2.join("verified");
    let _ = std::fs::remove_file(&sealed);
    symlink(&victims[3].0, &sealed).expect("symlink");

    let mut second = mount_with_cache(&server.endpoint, &cache_dir, "1GiB", &[]);
    for (key, data) in &files {
        let got = std::fs::read(second.join(key.trim_start_matches("m/"))).expect("read");
        assert!(&got == data, "{key}: wrong bytes");
    }
    second.unmount();
    for (path, bytes) in &victims {
        let now = std::fs::read(path).expect("victim still there");
        assert!(
            &now == bytes,
            "{} was written through a link",
            path.display()
        );
    }
}

/// Runs `modelfs mount` with `args` to completion (killed after 60 s); (success, stderr).
fn mount_expecting_failure(server: &LocalServer, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).expect("mkdir");
    let mut cmd = mount_command(&server.endpoint, "s3://models/m", &mountpoint);
    cmd.arg("--foreground").args(args);
    let out = output_within(
        &mut cmd,
        Duration::from_secs(60),
        || is_mounted(&mountpoint),
        || {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&mountpoint)
                .status();
        },
    );
    let (status, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!is_mounted(&mountpoint));
    (status.success(), stderr)
}

#[test]
fn cache_directories_others_own_or_may_write_are_refused_and_left_alone() {
    let server = LocalServer::start(BUCKET);
    let base = tempfile::tempdir().expect("base");
    let mut cases = vec![
        ("world-writable", 0o777, None),
        ("group-writable", 0o770, None),
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cases.push(("owned by uid 65534", 0o755, Some(65534)));
    } else {
        eprintln!("not root: the foreign-owner case needs chown and is skipped");
    }
    for (what, mode, owner) in cases {
        let dir = base.path().join(what.replace(' ', "-"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown");
        }
        let (ok, stderr) =
            mount_expecting_failure(&server, &["--cache-dir", dir.to_str().expect("utf-8")]);
        assert!(!ok, "{what}: the mount should fail");
        let expected = match owner {
            Some(uid) => format!("owned by uid {uid}"),
            None => "writable by group or others".to_string(),
        };
        assert!(stderr.contains(&expected), "{what}: {stderr}");
        assert!(
            stderr.contains(dir.to_str().expect("utf-8")),
            "{what}: {stderr}"
        );
        let meta = std::fs::metadata(&dir).expect("meta");
        assert_eq!(meta.mode() & 0o7777, mode, "{what}: mode changed");
        assert_eq!(
            meta.uid(),
            owner.unwrap_or(meta.uid()),
            "{what}: owner changed"
        );
        assert_eq!(
            std::fs::read_dir(&dir).expect("readdir").count(),
            0,
            "{what}"
        );
    }
}

#[test]
fn a_log_file_that_is_a_link_is_refused() {
    let server = LocalServer::start(BUCKET);
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    let link = dir.path().join("modelfs.log");
    symlink(&victim, &link).expect("symlink");
    let (ok, stderr) =
        mount_expecting_failure(&server, &["--log-file", link.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
}
