//! End-to-end tests of the disk cache through real mounts against the local S3 server, with
//! requests counted at the server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::drop_page_cache;
use common::mount::Mount;
use common::s3::LocalServer;
use common::suite::eventually;
use common::tmpfs::Tmpfs;

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;

fn mount(server: &LocalServer, cache: &Path, extra: &[&str]) -> Mount {
    common::mount::mount_with_cache(&server.endpoint, cache, "4GiB", extra)
}

fn assert_same_file(a: &Path, b: &Path) {
    let (x, y) = (
        std::fs::read(a).expect("read a"),
        std::fs::read(b).expect("read b"),
    );
    assert_eq!(x.len(), y.len(), "sizes differ");
    assert!(
        x == y,
        "contents of {} and {} differ",
        a.display(),
        b.display()
    );
}

/// Allocated bytes under `dir` (what the cache occupies on disk).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn second_read_after_remount_makes_zero_gets() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/a.safetensors", 48 * MIB + 123, 1);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut first = mount(&server, cache.path(), &[]);
    assert_same_file(&first.join("checkpoints/a.safetensors"), &source);
    first.unmount();
    assert!(server.server.stats().get_object > 0);

    server.server.reset_stats();
    let mut second = mount(&server, cache.path(), &[]);
    assert_same_file(&second.join("checkpoints/a.safetensors"), &source);
    let stats = server.server.stats();
    assert_eq!(
        stats.get_object, 0,
        "second read must come from the disk cache"
    );
    assert_eq!(stats.bytes_sent, 0);
    second.unmount();
}

#[test]
fn two_mounts_on_one_cache_download_each_block_once() {
    let server = LocalServer::start(BUCKET);
    let size = 64 * MIB;
    let source = server.seed_pseudo_random("m/loras/shared.safetensors", size, 2);
    let cache = tempfile::tempdir().expect("cache dir");
    let a = mount(&server, cache.path(), &[]);
    let b = mount(&server, cache.path(), &[]);
    server.server.reset_stats();
    std::thread::scope(|s| {
        for m in [&a, &b] {
            let source = &source;
            s.spawn(move || assert_same_file(&m.join("loras/shared.safetensors"), source));
        }
    });
    let stats = server.server.stats();
    assert_eq!(
        stats.bytes_sent, size,
        "the two mounts together downloaded {} bytes of a {size}-byte object",
        stats.bytes_sent
    );
}

#[test]
fn kill_9_mid_download_then_restart_serves_every_byte_correctly() {
    let server = LocalServer::start(BUCKET);
    let size = 256 * MIB;
    let source = server.seed_pseudo_random("m/checkpoints/big.safetensors", size, 3);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut victim = mount(&server, cache.path(), &[]);
    let path = victim.join("checkpoints/big.safetensors");
    let pid = victim.pid().expect("daemon pid");
    let reader = std::thread::spawn(move || {
        // Reads until the daemon dies under it; any error is expected here.
        let _ = std::fs::read(&path);
    });
    assert!(
        eventually(Duration::from_secs(30), || disk_usage(cache.path())
            > 32 * MIB),
        "download did not start"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(victim.wait_exit(Duration::from_secs(10)).is_some());
    let _ = Command::new("umount").arg("-l").arg(&victim.path).status();
    reader.join().expect("reader thread");

    let mut again = mount(&server, cache.path(), &[]);
    assert_same_file(&again.join("checkpoints/big.safetensors"), &source);
    again.unmount();
    let verify = Command::new(common::mount::modelfs_bin())
        .args(["cache", "verify", "--cache-dir"])
        .arg(cache.path())
        .output()
        .expect("modelfs cache verify");
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    assert!(report.contains(" 0 damaged blocks"), "{report}");
}

#[test]
fn a_flipped_byte_on_disk_is_detected_and_fetched_again() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/vae/v.safetensors", 16 * MIB, 4);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut first = mount(&server, cache.path(), &[]);
    assert_same_file(&first.join("vae/v.safetensors"), &source);
    first.unmount();

    let data = find_files(cache.path(), "data");
    assert_eq!(data.len(), 1);
    let mut bytes = std::fs::read(&data[0]).expect("read cache file");
    bytes[5 * MIB as usize + 77] ^= 0xFF;
    std::fs::write(&data[0], &bytes).expect("corrupt cache file");

    server.server.reset_stats();
    let mut second = mount(&server, cache.path(), &[]);
    assert_same_file(&second.join("vae/v.safetensors"), &source);
    let stats = server.server.stats();
    assert_eq!(
        stats.bytes_sent, MIB,
        "exactly the damaged block is fetched again"
    );
    second.unmount();
    assert!(second.log_text().contains("failed the checksum check"));
}

#[test]
fn eviction_keeps_the_cache_under_its_limit() {
    let server = LocalServer::start(BUCKET);
    let limit = 24 * MIB;
    let sources: Vec<PathBuf> = (0..6)
        .map(|i| server.seed_pseudo_random(&format!("m/loras/l{i}.safetensors"), 8 * MIB, 10 + i))
        .collect();
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path(), &["--cache-size", "24MiB"]);
    // The limit bounds what the cache accounts for; the filesystem's own bookkeeping may add
    // a few 4 KiB blocks beyond it (seen: 36 KiB over 24 MiB, about 1 run in 5). A failing
    // eviction would overshoot by whole entries (8 MiB), which this still catches.
    let slack = limit / 256;
    for (i, source) in sources.iter().enumerate() {
        assert_same_file(&m.join(&format!("loras/l{i}.safetensors")), source);
        let used = disk_usage(cache.path());
        assert!(
            used <= limit + slack,
            "cache uses {used} bytes, limit {limit} (+{slack} slack)"
        );
    }
    m.unmount();
    assert!(m.log_text().contains("evictions="));
}

#[test]
fn a_full_cache_filesystem_still_serves_correct_bytes() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/c.safetensors", 40 * MIB, 5);
    let tiny = Tmpfs::new("8m");
    // Limit far above the filesystem's size: writes hit ENOSPC and must degrade.
    let mut m = mount(&server, &tiny.path, &["--cache-size", "1GiB"]);
    assert_same_file(&m.join("checkpoints/c.safetensors"), &source);
    assert_same_file(&m.join("checkpoints/c.safetensors"), &source);
    m.unmount();
    let log = m.log_text();
    assert!(log.contains("serving from S3 instead"), "{log}");
}

fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.file_name() == name {
                found.push(e.path());
            }
        }
    }
    found
}

/// The `reads_so_far` of the daemon's last debug "open" line with `mode`.
fn last_open(log: &str, mode: &str) -> Option<u64> {
    log.lines()
        .rev()
        .filter(|l| l.contains(" open") && l.contains(&format!("mode={mode}")))
        .filter_map(|l| l.split("reads_so_far=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse().ok())
        .next()
}

fn final_reads(log: &str) -> u64 {
    log.lines()
        .rev()
        .filter_map(|l| {
            l.split(" read requests served by the daemon")
                .next()
                .filter(|_| l.contains("served by the daemon"))
        })
        .filter_map(|head| head.rsplit(' ').next())
        .filter_map(|n| n.parse().ok())
        .next()
        .expect("final read count in log")
}

/// Opens `path` until an open passes through, for at most 20 s, and returns that open: each
/// open of a complete entry starts its verification, and once verified, opens pass through.
fn open_until_passthrough(m: &Mount, path: &Path) -> std::fs::File {
    let mut passthrough = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let f = std::fs::File::open(path).expect("open");
            let passes = last_open(&m.log_text(), "Passthrough").is_some();
            if passes {
                passthrough = Some(f);
            }
            passes
        }),
        "no passthrough open within 20 s:\n{}",
        m.log_text()
    );
    passthrough.expect("the passthrough open")
}

#[test]
fn passthrough_serves_complete_entries_without_daemon_reads() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/p.safetensors", 32 * MIB, 6);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path(), &[]);
    let path = m.join("checkpoints/p.safetensors");
    assert_same_file(&path, &source); // fills the cache
    let mut passthrough_file = open_until_passthrough(&m, &path);
    let reads_before = last_open(&m.log_text(), "Passthrough").expect("open line");
    drop_page_cache();
    let mut via_fd = Vec::new();
    std::io::Read::read_to_end(&mut passthrough_file, &mut via_fd)
        .expect("read through passthrough");
    drop(passthrough_file);
    assert!(via_fd == std::fs::read(&source).expect("source"));
    m.unmount();
    assert_eq!(
        final_reads(&m.log_text()),
        reads_before,
        "reads through a passthrough open must not reach the daemon"
    );
}

#[test]
fn without_passthrough_reads_fall_back_to_the_daemon() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/n.safetensors", 16 * MIB, 7);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path(), &["--no-passthrough"]);
    let path = m.join("checkpoints/n.safetensors");
    assert_same_file(&path, &source);
    std::thread::sleep(Duration::from_millis(200));
    drop_page_cache();
    server.server.reset_stats();
    assert_same_file(&path, &source);
    server.assert_no_gets("served from the disk cache");
    m.unmount();
    let log = m.log_text();
    assert!(last_open(&log, "Passthrough").is_none(), "{log}");
    assert!(final_reads(&log) > 0);
}

#[test]
fn cached_opens_read_past_the_mounts_page_cache_and_still_map() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/d.safetensors", 8 * MIB, 9);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path(), &["--no-passthrough"]);
    let path = m.join("checkpoints/d.safetensors");
    let want = std::fs::read(&source).expect("source");
    assert_same_file(&path, &source);
    let mut again = std::fs::File::open(&path).expect("open again");
    let reads_before = last_open(&m.log_text(), "CachedKeep").expect("open line");
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut again, &mut read).expect("read again");
    assert!(read == want, "bytes differ");
    // SAFETY: a read-only mapping of a file nobody writes while it is mapped.
    let mapped = unsafe { memmap2::Mmap::map(&again) }.expect("map a cached-mode open");
    assert!(mapped[..] == want[..], "mapped bytes differ");
    drop((mapped, again));
    m.unmount();
    let reads = final_reads(&m.log_text()) - reads_before;
    assert!(
        reads >= 8,
        "the second read of 8 MiB made {reads} daemon reads: the mount's page cache served it"
    );
}

#[test]
fn a_file_read_to_the_end_is_served_by_passthrough_after_a_remount() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/seal.safetensors", 24 * MIB, 8);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut first = mount(&server, cache.path(), &[]);
    assert_same_file(&first.join("checkpoints/seal.safetensors"), &source);
    // Unmounting waits for the verification that seals the now complete entry.
    first.unmount();
    let mut second = mount(&server, cache.path(), &[]);
    assert_same_file(&second.join("checkpoints/seal.safetensors"), &source);
    second.unmount();
    let log = second.log_text();
    assert!(
        last_open(&log, "Passthrough").is_some() && last_open(&log, "Cached").is_none(),
        "the first open after the remount should pass through:\n{log}"
    );
}

#[test]
fn concurrent_passthrough_opens_of_one_file_share_its_backing_and_read_exactly() {
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/shared.safetensors", 16 * MIB, 9);
    let cache = tempfile::tempdir().expect("cache dir");
    let mut m = mount(&server, cache.path(), &[]);
    let path = m.join("checkpoints/shared.safetensors");
    assert_same_file(&path, &source); // fills the cache
    let first = open_until_passthrough(&m, &path);
    // While one passthrough open is held, many more open and read at once (ComfyUI workers
    // loading the same model): every open must join the inode's backing file.
    let expected = std::sync::Arc::new(std::fs::read(&source).expect("source"));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (path, expected) = (path.clone(), expected.clone());
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let got = std::fs::read(&path).expect("read while shared");
                    assert!(got == *expected, "bytes differ");
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader");
    }
    drop(first);
    m.unmount();
    let log = m.log_text();
    assert!(!log.contains("open refused"), "{log}");
    assert!(
        log.matches("mode=Passthrough").count() >= 25,
        "every open passes through:\n{log}"
    );
}
