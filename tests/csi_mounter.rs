//! The node mounter end to end (issue 19): one `modelfs mounter` holds every FUSE session of
//! the node, so the plugin can be killed and restarted under a running read, a dead mounter
//! is repaired by the plugin (and a target it cannot repair fails instead of looking empty),
//! and volumes share one memory budget and one download. The plugin and the mounter each run
//! in a PID namespace of their own, as containers do (see `common::csi`).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::csi::{is_stale, modelfs_processes, mount_count, wait_for, Node, BUCKET, WAIT};
use common::mount::is_mounted;
use common::PseudoRandomReader;

const MIB: u64 = 1 << 20;

/// Stores `len` pseudo-random bytes at `key` and returns the object's file in the server's
/// store (the reference the reads are compared with).
fn seed_model(node: &Node, key: &str, seed: u64, len: u64) -> PathBuf {
    node.s3
        .store()
        .put_from_reader(BUCKET, key, PseudoRandomReader::new(seed, len))
        .expect("seed model");
    node.s3
        .store()
        .data_path(BUCKET, key)
        .expect("the object's file")
}

/// Why a streaming read stopped early.
#[derive(Debug)]
enum StreamEnd {
    /// The read failed after `at` bytes, all of them right.
    Failed { at: u64, error: std::io::Error },
}

/// Reads `path` front to back in 1 MiB reads, sleeping `pace` after each, and compares every
/// byte with `reference`; panics at the first wrong byte. `progress` counts checked bytes.
fn stream_and_compare(
    path: &Path,
    reference: &Path,
    pace: Duration,
    progress: &AtomicU64,
) -> Result<u64, StreamEnd> {
    let mut file = std::fs::File::open(path).map_err(|error| StreamEnd::Failed { at: 0, error })?;
    let expected = std::fs::File::open(reference).expect("reference file");
    let mut buf = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    let mut at = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(at),
            Ok(n) => n,
            Err(error) => return Err(StreamEnd::Failed { at, error }),
        };
        expected
            .read_exact_at(&mut want[..n], at)
            .expect("reference read");
        assert!(buf[..n] == want[..n], "wrong bytes at offset {at}");
        at += n as u64;
        progress.store(at, Ordering::Relaxed);
        std::thread::sleep(pace);
    }
}

/// A node serving a large file as `checkpoints/big.bin` of vol-1, published at pod-a's
/// target, while a thread streams it through the mount (`stream_and_compare`).
struct StreamUnderTest {
    node: Node,
    /// The server's copy of the file (the expected bytes).
    reference: PathBuf,
    /// The volume's target path.
    target: PathBuf,
    /// Bytes the reader has checked so far.
    progress: Arc<AtomicU64>,
    /// The reader: the bytes it read, or where it failed.
    reader: JoinHandle<Result<u64, StreamEnd>>,
}

/// Starts a node, seeds `len` pseudo-random bytes from `seed`, publishes them and starts a
/// reader that sleeps `pace` after each 1 MiB.
fn publish_and_stream(seed: u64, len: u64, pace: Duration) -> StreamUnderTest {
    let node = Node::start();
    let reference = seed_model(&node, "checkpoints/big.bin", seed, len);
    let target = node.target("pod-a", "models");
    node.publish_ok(node.request("vol-1", &target));
    let progress = Arc::new(AtomicU64::new(0));
    let reader = {
        let path = target.join("checkpoints/big.bin");
        let (reference, progress) = (reference.clone(), progress.clone());
        std::thread::spawn(move || stream_and_compare(&path, &reference, pace, &progress))
    };
    StreamUnderTest {
        node,
        reference,
        target,
        progress,
        reader,
    }
}

fn wait_progress(progress: &AtomicU64, at_least: u64) {
    wait_for("the reader to make progress", || {
        progress.load(Ordering::Relaxed) >= at_least
    });
}

/// Peak resident memory of `pid` in bytes (VmHWM).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[test]
fn a_stream_keeps_going_byte_exact_while_the_plugin_is_killed_and_restarted() {
    const LEN: u64 = 1 << 30;
    let StreamUnderTest {
        mut node,
        target,
        progress,
        reader,
        ..
    } = publish_and_stream(21, LEN, Duration::from_millis(10));
    wait_progress(&progress, 64 * MIB);

    // The plugin's container is killed and started again under the running read.
    node.kill_driver();
    let killed_at = progress.load(Ordering::Relaxed);
    node.start_driver();
    node.wait_ready();
    let restarted_at = progress.load(Ordering::Relaxed);
    assert!(
        restarted_at < LEN && !reader.is_finished(),
        "the read ended before the plugin was back; it proves nothing"
    );
    assert!(
        node.driver_log().contains("1 mounts alive"),
        "the restarted plugin must find the live volume:\n{}",
        node.driver_log()
    );
    let read = reader.join().expect("reader thread");
    let read = read.unwrap_or_else(|e| panic!("the read failed: {e:?}"));
    assert_eq!(read, LEN);
    eprintln!(
        "plugin killed at {} MiB, back at {} MiB of a {} MiB stream; read byte-exact to the end",
        killed_at / MIB,
        restarted_at / MIB,
        LEN / MIB
    );

    // The restarted plugin still knows the publication, and unpublish works.
    node.publish_ok(node.request("vol-1", &target));
    node.unpublish("vol-1", &target).expect("unpublish");
    assert!(!is_mounted(&target) && !target.exists());
}

#[test]
fn a_killed_mounter_fails_reads_in_flight_and_the_plugin_repairs_the_mount() {
    const LEN: u64 = 256 << 20;
    let StreamUnderTest {
        mut node,
        reference,
        target,
        progress,
        reader,
    } = publish_and_stream(22, LEN, Duration::from_millis(20));
    wait_progress(&progress, 16 * MIB);

    // The mounter dies: the read in flight fails (every byte it returned was right).
    node.kill_mounter();
    let killed = Instant::now();
    match reader.join().expect("reader thread") {
        Ok(n) => panic!("the read finished ({n} bytes) although its server was killed"),
        Err(StreamEnd::Failed { at, error }) => {
            assert!(at < LEN);
            eprintln!("read in flight failed at {} MiB: {error}", at / MIB);
        }
    }

    // A new mounter: the plugin's repair pass remounts the target on its own.
    node.start_mounter();
    let restarted = Instant::now();
    let mut first = Vec::new();
    wait_for("the plugin to repair the mount", || {
        common::pread(&target.join("vae/readme.txt"), 0, 64)
            .map(|data| first = data)
            .is_ok()
    });
    let repaired = restarted.elapsed();
    assert_eq!(first, common::pseudo_random(13, 42));
    assert!(
        repaired < Duration::from_secs(30),
        "repair took {repaired:?} (bound 30 s)"
    );
    let mut fresh = Vec::new();
    std::fs::File::open(target.join("checkpoints/big.bin"))
        .expect("open after repair")
        .read_to_end(&mut fresh)
        .expect("read after repair");
    assert!(fresh == std::fs::read(&reference).expect("reference"));
    assert_eq!(mount_count(&target), 1);
    eprintln!(
        "mounter killed; new mounter up {:.1} s later; mount repaired {:.1} s after that",
        (restarted - killed).as_secs_f64(),
        repaired.as_secs_f64()
    );

    // The mounter is gone for good: the target keeps failing, it never lists as empty.
    node.kill_mounter();
    wait_for("the mount to go stale", || is_stale(&target));
    std::thread::sleep(modelfs_csi::node::REPAIR_INTERVAL * 2 + Duration::from_secs(1));
    let stat = std::fs::metadata(&target);
    assert!(
        stat.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)),
        "stat of an unrepairable target must fail with ENOTCONN, got {stat:?}"
    );
    assert!(std::fs::read_dir(&target).is_err());
    assert!(
        node.driver_log().contains("cannot remount"),
        "the plugin says why it could not repair:\n{}",
        node.driver_log()
    );
}

#[test]
fn eight_volumes_are_served_by_one_mounter_within_one_budget_and_share_downloads() {
    const LEN: u64 = 1 << 30;
    const BUDGET: u64 = 512 * MIB;
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let node = Node::start_with(&[
        &cache_arg,
        "--cache-size=4GiB",
        "--memory-cache-size=512MiB",
    ]);
    let reference = seed_model(&node, "checkpoints/big.bin", 23, LEN);

    // Eight pods: four volumes each used by two pods, and four volumes of one pod each.
    let mut targets = Vec::new();
    for i in 0..8 {
        let target = node.target(&format!("pod-{i}"), "models");
        let mut req = node.request(&format!("vol-{}", i % 4), &target);
        if i >= 6 {
            req.volume_id = format!("vol-single-{i}");
        }
        node.publish_ok(req);
        targets.push(target);
    }
    for target in &targets {
        node.assert_serves(target, "");
    }
    let mounters = node.mounter_pids();
    assert_eq!(mounters.len(), 1, "one mounter serves the node");
    assert!(
        modelfs_processes("mount", node.root.path()).is_empty(),
        "no per-volume processes"
    );

    // Two pods load the same model at once, through two volumes.
    node.s3.server.reset_stats();
    let readers: Vec<_> = [&targets[0], &targets[5]]
        .into_iter()
        .map(|target| {
            let path = target.join("checkpoints/big.bin");
            let reference = reference.clone();
            std::thread::spawn(move || {
                stream_and_compare(&path, &reference, Duration::ZERO, &AtomicU64::new(0))
            })
        })
        .collect();
    for reader in readers {
        let read = reader.join().expect("reader thread");
        assert_eq!(read.unwrap_or_else(|e| panic!("{e:?}")), LEN);
    }
    let stats = node.s3.server.stats();
    let peak = peak_rss(mounters[0]);
    eprintln!(
        "two volumes loaded one {} MiB model at once: {} MiB from S3 in {} GETs; mounter peak RSS {} MiB (budget {} MiB + 128 MiB)",
        LEN / MIB,
        stats.bytes_sent / MIB,
        stats.get_object,
        peak / MIB,
        BUDGET / MIB
    );
    assert!(
        stats.bytes_sent <= LEN + LEN / 20,
        "{} bytes fetched for a {LEN}-byte model read by two volumes",
        stats.bytes_sent
    );
    assert!(
        peak <= BUDGET + 128 * MIB,
        "mounter peak RSS {} MiB over budget",
        peak / MIB
    );
    for (i, target) in targets.iter().enumerate() {
        let id = if i >= 4 {
            format!("csi-inline-{i}")
        } else {
            format!("vol-{}", i % 4)
        };
        node.unpublish(&id, target).expect("unpublish");
    }
    let _ = WAIT;
}
