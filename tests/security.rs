//! Security properties visible from outside: secrets never reach the logs (even at trace
//! level), `allow_other` only when asked, cache files private to their owner.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::mount::Mount;
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
    server
        .store()
        .put_bytes(
            BUCKET,
            "m/loras/a.safetensors",
            &common::pseudo_random(1, 3 << 20),
        )
        .expect("seed");
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
    server
        .store()
        .put_bytes(BUCKET, "m/vae/v.safetensors", &[7u8; 4096])
        .expect("seed");
    let cache = tempfile::tempdir().expect("cache");
    let cache_dir = cache.path().join("c");
    let mut private = Mount::new(
        &server.endpoint,
        "s3://models/m",
        &[
            "--cache-dir",
            cache_dir.to_str().expect("utf-8"),
            "--cache-size",
            "1GiB",
        ],
    );
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
