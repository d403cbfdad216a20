//! The cache files in the page cache, through real mounts. Warm read-ahead: a complete,
//! verified cache entry opened in passthrough mode and held (a load) is read into the page
//! cache ahead of the reader; one opened, read at its header and closed at once (a header
//! scan) is not. Drop-behind: a cold load of a large file leaves its bytes in the reader's
//! mount only, not in the cache file's pages too. Page-cache
//! residency of the cache's data files is asked with `mincore(2)`. Needs root (drop_caches).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::cgroup::MemoryCgroup;
use common::drop_page_cache;
use common::mount::Mount;
use common::residency::{cache_data_file_of_size, resident_bytes};
use common::s3::LocalServer;
use common::suite::eventually;

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;

/// Held by each test: they drop the page cache and count what is resident, so one's
/// `drop_caches` must not land in another's count.
static PAGE_CACHE: Mutex<()> = Mutex::new(());

fn page_cache_to_myself() -> MutexGuard<'static, ()> {
    PAGE_CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

fn mount(server: &LocalServer, cache: &Path, extra: &[&str]) -> Mount {
    common::mount::mount_with_cache(&server.endpoint, cache, "4GiB", extra)
}

/// [`mount`] with the daemon in `group`.
fn mount_in(server: &LocalServer, cache: &Path, group: &MemoryCgroup) -> Mount {
    let cache = cache.to_str().expect("utf-8 path");
    let args = ["--cache-dir", cache, "--cache-size", "4GiB"];
    Mount::new_with(&server.endpoint, "s3://models/m", &args, |cmd| {
        group.enter(cmd)
    })
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut x, mut y) = (
        std::fs::File::open(a).expect("open a"),
        std::fs::File::open(b).expect("open b"),
    );
    let (mut bx, mut by) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = read_full(&mut x, &mut bx);
        let m = read_full(&mut y, &mut by);
        if n != m || bx[..n] != by[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).expect("read") {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

/// Reads both files whole through a first mount and unmounts it: the unmount waits for the
/// verifications that seal the entries, so the next mount opens them in passthrough.
fn fill_cache(server: &LocalServer, cache: &Path, files: &[(&str, &Path)]) {
    let mut first = mount(server, cache, &[]);
    for (rel, source) in files {
        assert!(same_bytes(&first.join(rel), source), "{rel} differs");
    }
    first.unmount();
}

fn passthrough_opens(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" open") && l.contains("mode=Passthrough"))
        .count()
}

#[test]
fn a_file_held_open_is_read_ahead_and_a_header_scan_is_not() {
    let _page_cache = page_cache_to_myself();
    let server = LocalServer::start(BUCKET);
    let (load_size, scan_size) = (96 * MIB, 96 * MIB + 4096);
    let load_src = server.seed_pseudo_random("m/checkpoints/load.safetensors", load_size, 31);
    let scan_src = server.seed_pseudo_random("m/checkpoints/scan.safetensors", scan_size, 32);
    let cache = tempfile::tempdir().expect("cache dir");
    let (load_rel, scan_rel) = (
        "checkpoints/load.safetensors",
        "checkpoints/scan.safetensors",
    );
    fill_cache(
        &server,
        cache.path(),
        &[(load_rel, &load_src), (scan_rel, &scan_src)],
    );
    let load_data = cache_data_file_of_size(cache.path(), load_size).expect("load entry");
    let scan_data = cache_data_file_of_size(cache.path(), scan_size).expect("scan entry");

    let mut m = mount(&server, cache.path(), &[]);
    drop_page_cache();
    let resident = |p: &Path| resident_bytes(p).expect("mincore");
    assert!(resident(&load_data) < 8 * MIB && resident(&scan_data) < 8 * MIB);

    // A header scan: open, read the header's pages, close.
    {
        let mut f = std::fs::File::open(m.join(scan_rel)).expect("open scan");
        let mut header = vec![0u8; 64 << 10];
        f.read_exact(&mut header).expect("header");
    }
    std::thread::sleep(Duration::from_millis(500));
    let scanned = resident(&scan_data);
    assert!(
        scanned < 8 * MIB,
        "a header scan must not read ahead: {} MiB resident",
        scanned / MIB
    );

    // A load: the file is held open; its data file fills the page cache without a read.
    let held = std::fs::File::open(m.join(load_rel)).expect("open load");
    assert!(
        eventually(Duration::from_secs(20), || resident(&load_data)
            == load_size),
        "held open, only {} of {} MiB became resident",
        resident(&load_data) / MIB,
        load_size / MIB
    );
    drop(held);
    assert!(same_bytes(&m.join(load_rel), &load_src));

    // Byte-exact while the read-ahead runs: drop the pages and read at once.
    drop_page_cache();
    assert!(same_bytes(&m.join(scan_rel), &scan_src));
    m.unmount();
    let log = m.log_text();
    assert!(
        passthrough_opens(&log) >= 3,
        "opens were not passthrough:\n{log}"
    );
}

#[test]
fn warm_read_ahead_0_turns_it_off() {
    let _page_cache = page_cache_to_myself();
    let server = LocalServer::start(BUCKET);
    let size = 80 * MIB;
    let source = server.seed_pseudo_random("m/checkpoints/off.safetensors", size, 33);
    let cache = tempfile::tempdir().expect("cache dir");
    let rel = "checkpoints/off.safetensors";
    fill_cache(&server, cache.path(), &[(rel, &source)]);
    let data = cache_data_file_of_size(cache.path(), size).expect("entry");

    let mut m = mount(&server, cache.path(), &["--warm-read-ahead", "0"]);
    drop_page_cache();
    let mut held = std::fs::File::open(m.join(rel)).expect("open");
    std::thread::sleep(Duration::from_secs(1));
    let resident = resident_bytes(&data).expect("mincore");
    assert!(
        resident < 8 * MIB,
        "read ahead although disabled: {} MiB",
        resident / MIB
    );
    held.seek(SeekFrom::Start(size - 10)).expect("seek");
    let mut tail = Vec::new();
    held.read_to_end(&mut tail).expect("tail");
    assert_eq!(tail.len(), 10);
    drop(held);
    m.unmount();
    assert!(passthrough_opens(&m.log_text()) >= 1);
}

/// Under a 1 GiB memory limit (the CSI mounter runs under a pod's), a file of a quarter of it
/// or more leaves the cache file's pages behind its reader, so the load holds one copy in
/// memory, not two; a smaller file keeps them (its write-back waits until after the load).
#[test]
fn a_cold_load_of_a_large_file_leaves_the_cache_file_out_of_the_page_cache() {
    let _page_cache = page_cache_to_myself();
    let server = LocalServer::start(BUCKET);
    let (large, small) = (320 * MIB, 64 * MIB);
    let large_src = server.seed_pseudo_random("m/checkpoints/large.safetensors", large, 35);
    let small_src = server.seed_pseudo_random("m/checkpoints/small.safetensors", small, 36);
    let (large_rel, small_rel) = (
        "checkpoints/large.safetensors",
        "checkpoints/small.safetensors",
    );
    let cache = tempfile::tempdir().expect("cache dir");
    let group = MemoryCgroup::new("modelfs-drop-behind", 1 << 30);
    let mut m = mount_in(&server, cache.path(), &group);
    assert!(same_bytes(&m.join(large_rel), &large_src));
    assert!(same_bytes(&m.join(small_rel), &small_src));
    let large_data = cache_data_file_of_size(cache.path(), large).expect("large entry");
    let small_data = cache_data_file_of_size(cache.path(), small).expect("small entry");
    let resident = |p: &Path| resident_bytes(p).expect("mincore");
    // The last pages are let go once the reads stop.
    assert!(
        eventually(Duration::from_secs(10), || resident(&large_data) < 32 * MIB),
        "{} of {} MiB of the large file's cache file still resident",
        resident(&large_data) / MIB,
        large / MIB
    );
    let kept = resident(&small_data);
    assert_eq!(
        kept,
        small,
        "the small file's pages were let go: {} MiB kept",
        kept / MIB
    );
    m.unmount();
    // Nothing was lost: a new mount serves every byte from the cache, none from S3.
    server.server.reset_stats();
    let mut again = mount(&server, cache.path(), &[]);
    drop_page_cache();
    assert!(same_bytes(&again.join(large_rel), &large_src));
    assert!(same_bytes(&again.join(small_rel), &small_src));
    again.unmount();
    server.assert_no_gets("bytes were fetched again");
}

/// Under a 512 MiB memory limit (the CSI mounter runs under a pod's), a held-open warm file
/// is read ahead by at most half of the limit: `readahead(2)` charges the pages to the
/// daemon's cgroup, which would evict the first before the reader got to them.
#[test]
fn warm_read_ahead_stays_within_half_of_the_daemons_memory_limit() {
    let _page_cache = page_cache_to_myself();
    let server = LocalServer::start(BUCKET);
    let (size, limit) = (400 * MIB, 512 * MIB);
    let source = server.seed_pseudo_random("m/checkpoints/held.safetensors", size, 37);
    let rel = "checkpoints/held.safetensors";
    let cache = tempfile::tempdir().expect("cache dir");
    fill_cache(&server, cache.path(), &[(rel, &source)]);
    let data = cache_data_file_of_size(cache.path(), size).expect("entry");

    let group = MemoryCgroup::new("modelfs-warm-limit", limit);
    let mut m = mount_in(&server, cache.path(), &group);
    drop_page_cache();
    let held = std::fs::File::open(m.join(rel)).expect("open");
    assert!(
        eventually(Duration::from_secs(20), || read_ahead_bytes(&m.log_text())
            .is_some()),
        "the read-ahead did not finish:\n{}",
        m.log_text()
    );
    let asked = read_ahead_bytes(&m.log_text()).unwrap_or(0);
    let resident = resident_bytes(&data).expect("mincore");
    drop(held);
    assert!(
        (limit / 4..=limit / 2).contains(&asked),
        "read ahead {} MiB of {} MiB under a {} MiB limit",
        asked / MIB,
        size / MIB,
        limit / MIB
    );
    assert!(resident <= limit / 2, "{} MiB resident", resident / MIB);
    assert!(same_bytes(&m.join(rel), &source));
    m.unmount();
}

/// The bytes of the first finished warm read-ahead in a daemon's log.
fn read_ahead_bytes(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("warm read-ahead done"))?;
    let value = line.split("bytes=").nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}

/// Timings for docs/benchmarks.md, not a check: a warm `cat` (1 MiB reads) of a large file
/// through the mount after a remount and `drop_caches`, with and without warm read-ahead,
/// and a single-stream read of a copy of the cache file on the same disk.
/// `MODELFS_WARM_BENCH_MIB` (default 1024) sets the size; run with
/// `cargo test --test warm_read_ahead -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; writes the file three times"]
fn measure_warm_cat() {
    let _page_cache = page_cache_to_myself();
    let mib: u64 = std::env::var("MODELFS_WARM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib * MIB;
    let server = LocalServer::start(BUCKET);
    let source = server.seed_pseudo_random("m/checkpoints/big.safetensors", size, 34);
    let cache = tempfile::tempdir().expect("cache dir");
    let rel = "checkpoints/big.safetensors";
    fill_cache(&server, cache.path(), &[(rel, &source)]);
    let data = cache_data_file_of_size(cache.path(), size).expect("entry");
    let local = cache.path().join("local-copy");
    std::fs::copy(&data, &local).expect("local copy");

    let cat = |path: &Path| {
        drop_page_cache();
        let started = Instant::now();
        let mut f = std::fs::File::open(path).expect("open");
        let mut buf = vec![0u8; MIB as usize];
        let mut total = 0u64;
        while let n @ 1.. = f.read(&mut buf).expect("read") {
            total += n as u64;
        }
        assert_eq!(total, size);
        started.elapsed().as_secs_f64()
    };
    for run in 1..=3 {
        let local_s = cat(&local);
        let mut with = mount(&server, cache.path(), &[]);
        let with_s = cat(&with.join(rel));
        with.unmount();
        let log = with.log_text();
        assert!(passthrough_opens(&log) >= 1, "not passthrough:\n{log}");
        if let Some(line) = log.lines().find(|l| l.contains("warm read-ahead:")) {
            println!("{line}");
        }
        let mut without = mount(&server, cache.path(), &["--warm-read-ahead", "0"]);
        let without_s = cat(&without.join(rel));
        without.unmount();
        let gib = size as f64 / (1u64 << 30) as f64;
        println!(
            "run {run}: {mib} MiB  local single stream {local_s:.2} s ({:.2} GiB/s)  \
             mount, read-ahead {with_s:.2} s ({:.2} GiB/s)  mount, no read-ahead \
             {without_s:.2} s ({:.2} GiB/s)",
            gib / local_s,
            gib / with_s,
            gib / without_s
        );
    }
    std::fs::remove_file(&local).expect("remove copy");
}
