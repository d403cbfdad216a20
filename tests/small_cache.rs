//! Disk caches smaller than the models they serve (issue 24), through real mounts against the
//! local S3 server, with every byte compared and the bytes sent counted at the server: a load
//! never costs more than streaming the file once, whether the cache makes room for it or
//! cannot hold it at all, and a mount that cannot hold a model says so once.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::check::{free_local_addr, metric};
use common::drop_page_cache;
use common::mount::{mount_with_cache, Mount};
use common::s3::LocalServer;
use common::tmpfs::Tmpfs;
use modelfs_s3local::models::{parse_safetensors_header, Header};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;
/// What one load may fetch from S3, as a multiple of the file's size.
const MAX_FETCHED: f64 = 1.05;
/// The warning a mount logs when its cache cannot hold a model being loaded.
const TOO_SMALL: &str = "disk cache too small";
/// The warning about a model streamed because the models in use do not fit together.
const TAKING_TURNS: &str = "take turns and do not fit";
/// The metric that counts such loads.
const TOO_SMALL_METRIC: &str = "modelfs_cache_too_small_loads_total";

/// A model in the bucket: its bytes and its header.
struct Model {
    rel: String,
    bytes: Vec<u8>,
    header: Header,
}

fn seed_model(server: &LocalServer, rel: &str, data_bytes: u64, seed: u64) -> Model {
    let source = server.seed_safetensors(&format!("m/{rel}"), data_bytes, seed);
    let bytes = std::fs::read(source).expect("read source");
    let header = parse_safetensors_header(&bytes).expect("valid header");
    Model {
        rel: rel.to_string(),
        bytes,
        header,
    }
}

/// A mount with a disk cache of `size` at `cache`, and the address it serves metrics at.
fn mount(server: &LocalServer, cache: &Path, size: &str) -> (Mount, String) {
    let addr = free_local_addr();
    let m = mount_with_cache(&server.endpoint, cache, size, &["--metrics-addr", &addr]);
    (m, addr)
}

/// One test at a time: a test dropping the page cache would make another's loader read its
/// pages again (counted as bytes fetched twice), and the byte counts are what they check.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// safetensors' `load_file`: the header, then every tensor of an mmap in name order, each
/// compared with the source.
fn load_by_name(m: &Mount, model: &Model) {
    let file = std::fs::File::open(m.join(&model.rel)).expect("open");
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0).expect("header length");
    // SAFETY: a read-only mapping of a file on a read-only filesystem, dropped before return.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    assert_eq!(map.len(), model.bytes.len());
    let mut by_name = model.header.tensors.clone();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let start = model.header.data_start as usize;
    for t in &by_name {
        let (b, e) = (
            start + t.data_offsets.0 as usize,
            start + t.data_offsets.1 as usize,
        );
        assert!(
            map[b..e] == model.bytes[b..e],
            "{}: tensor {} differs",
            model.rel,
            t.name
        );
    }
}

/// ComfyUI's loader: 8 threads, each with its own open, reading tensors in a shuffled order
/// in 2 MiB preads, each compared with the source.
fn load_in_threads(m: &Mount, model: &Model) {
    let mut jobs = Vec::new();
    let start = model.header.data_start;
    for t in &model.header.tensors {
        let (mut at, end) = (start + t.data_offsets.0, start + t.data_offsets.1);
        while at < end {
            let len = (end - at).min(2 * MIB);
            jobs.push((at, len as usize));
            at += len;
        }
    }
    jobs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let path = m.join(&model.rel);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open");
                loop {
                    let Some((at, len)) = jobs.lock().expect("jobs").next() else {
                        break;
                    };
                    let mut got = vec![0u8; len];
                    file.read_exact_at(&mut got, at).expect("pread");
                    let want = &model.bytes[at as usize..at as usize + len];
                    assert!(got == want, "{}: bytes differ at {at}+{len}", model.rel);
                }
            });
        }
    });
}

/// Runs `load` and returns the bytes the server sent meanwhile, checked against the bound.
fn fetched_by(server: &LocalServer, model: &Model, load: impl FnOnce()) -> u64 {
    server.server.reset_stats();
    load();
    let stats = server.server.stats();
    let (sent, size) = (stats.bytes_sent, model.bytes.len() as u64);
    eprintln!(
        "{}: {sent} bytes in {} GETs for {size} ({:.3}x)",
        model.rel,
        stats.get_object,
        sent as f64 / size as f64
    );
    assert!(
        sent as f64 <= MAX_FETCHED * size as f64,
        "loading {} ({size} bytes) fetched {sent} bytes from S3 ({:.2}x)",
        model.rel,
        sent as f64 / size as f64
    );
    sent
}

/// Waits (at most 10 s) until the daemon holds no cache entry: the kernel sends a closed
/// file's release on its own time, and an entry still held cannot make room for the next.
fn wait_released(cache: &Path) {
    let held = || {
        common::residency::cache_entry_files(cache, "map")
            .iter()
            .any(|path| {
                let Ok(map) = std::fs::File::open(path) else {
                    return false;
                };
                // SAFETY: a valid fd; the lock goes with the file at the end of the scope.
                let free = unsafe {
                    libc::flock(
                        std::os::fd::AsRawFd::as_raw_fd(&map),
                        libc::LOCK_EX | libc::LOCK_NB,
                    )
                } == 0;
                !free
            })
    };
    assert!(
        common::suite::eventually(std::time::Duration::from_secs(10), || !held()),
        "the daemon still holds a cache entry"
    );
}

/// The count of loads the cache could not hold, once it reached `want` (the cache decides
/// beside the load, which may end first) or after 10 s.
fn too_small_loads(addr: &str, want: f64) -> Option<f64> {
    common::suite::eventually(std::time::Duration::from_secs(10), || {
        metric(addr, TOO_SMALL_METRIC) >= Some(want)
    });
    metric(addr, TOO_SMALL_METRIC)
}

fn warnings(m: &Mount) -> usize {
    m.log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(TOO_SMALL))
        .count()
}

#[test]
fn models_larger_than_the_cache_stream_once_per_load_and_are_warned_about_once() {
    let _serial = serial();
    let server = LocalServer::start(BUCKET);
    let big = seed_model(&server, "checkpoints/big.safetensors", 64 * MIB, 24);
    let other = seed_model(&server, "unet/other.safetensors", 64 * MIB, 25);
    // The node: `--cache-dir` on a filesystem a quarter of the models' size, all of
    // it for the cache.
    let tmpfs = Tmpfs::new("16m");
    let (mut m, addr) = mount(&server, &tmpfs.path, "100%");

    // safetensors' load_file: streamed, fetched once, one warning naming the sizes.
    fetched_by(&server, &big, || load_by_name(&m, &big));
    assert_eq!(too_small_loads(&addr, 1.0), Some(1.0));
    assert_eq!(warnings(&m), 1, "one warning:\n{}", m.log_text());
    let log = m.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(TOO_SMALL))
        .expect("warning line");
    let size = format!("file_bytes={}", big.bytes.len());
    assert!(line.contains(&size), "the warning names the sizes: {line}");
    assert!(line.contains("cache_limit_bytes="), "{line}");

    // ComfyUI's threads on another model: the same, its own warning.
    fetched_by(&server, &other, || load_in_threads(&m, &other));
    assert_eq!(too_small_loads(&addr, 2.0), Some(2.0));
    assert_eq!(warnings(&m), 2, "{}", m.log_text());

    // The first again (the kernel's copy dropped): streamed and counted again, not warned
    // about again.
    drop_page_cache();
    fetched_by(&server, &big, || load_in_threads(&m, &big));
    assert_eq!(too_small_loads(&addr, 3.0), Some(3.0));
    m.unmount();
    assert_eq!(warnings(&m), 2, "once per model:\n{}", m.log_text());
}

#[test]
fn a_cache_filesystem_smaller_than_the_limit_streams_what_it_cannot_hold() {
    let _serial = serial();
    let server = LocalServer::start(BUCKET);
    let model = seed_model(&server, "checkpoints/big.safetensors", 48 * MIB, 26);
    // The limit allows the model; the filesystem under it (full of other files) does not.
    let tmpfs = Tmpfs::new("16m");
    let (mut m, addr) = mount(&server, &tmpfs.path, "1GiB");
    fetched_by(&server, &model, || load_by_name(&m, &model));
    assert_eq!(too_small_loads(&addr, 1.0), Some(1.0));
    m.unmount();
    assert_eq!(warnings(&m), 1, "{}", m.log_text());
}

#[test]
fn alternating_models_beyond_the_cache_keep_one_stored_and_stream_the_other() {
    let _serial = serial();
    let server = LocalServer::start(BUCKET);
    let models = [
        seed_model(&server, "checkpoints/a.safetensors", 28 * MIB, 1),
        seed_model(&server, "checkpoints/b.safetensors", 28 * MIB, 2),
    ];
    let cache = tempfile::tempdir().expect("cache");
    // Room for one of them, not both.
    let (mut m, addr) = mount(&server, cache.path(), "40MiB");
    let load = |model: &Model| {
        wait_released(cache.path());
        drop_page_cache();
        fetched_by(&server, model, || load_by_name(&m, model))
    };
    // First loads: each is stored, b by evicting a.
    for model in &models {
        assert!(load(model) > 0, "{} came from S3", model.rel);
    }
    // From then on the two take turns: a, loaded again, would evict b, used since a's last
    // load, so a streams (fetched once at most: its blocks stay in memory once read, as
    // far as the memory tier holds them) and b stays on disk.
    for round in 1..3 {
        load(&models[0]);
        assert_eq!(load(&models[1]), 0, "round {round}: b is on disk");
    }
    assert_eq!(
        metric(&addr, TOO_SMALL_METRIC),
        Some(2.0),
        "a streamed twice"
    );
    let evictions = metric(&addr, "modelfs_cache_evictions_total{tier=\"disk\"}");
    assert_eq!(evictions, Some(1.0), "only b's first load evicted");
    m.unmount();
    let log = m.log_text();
    let turns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(TAKING_TURNS));
    assert_eq!(
        turns.count(),
        1,
        "a's streaming is warned about once: {log}"
    );
}

#[test]
fn two_models_loaded_at_once_beyond_the_cache_fetch_each_byte_once() {
    let _serial = serial();
    let server = LocalServer::start(BUCKET);
    let models = [
        seed_model(&server, "checkpoints/a.safetensors", 28 * MIB, 3),
        seed_model(&server, "loras/b.safetensors", 28 * MIB, 4),
    ];
    let cache = tempfile::tempdir().expect("cache");
    let (mut m, addr) = mount(&server, cache.path(), "40MiB");
    server.server.reset_stats();
    std::thread::scope(|s| {
        s.spawn(|| load_in_threads(&m, &models[0]));
        s.spawn(|| load_by_name(&m, &models[1]));
    });
    let sent = server.server.stats().bytes_sent;
    let total: u64 = models.iter().map(|m| m.bytes.len() as u64).sum();
    assert!(
        sent as f64 <= MAX_FETCHED * total as f64,
        "two loads of {total} bytes together fetched {sent} bytes"
    );
    // The first admitted is stored and the other, which cannot fit beside it, streamed; or
    // both stream (what each wrote before its load showed leaves no room), or both are
    // stored (one load ended before the other's showed). Each streamed one is warned about.
    // Read once it holds still (the cache decides beside the loads).
    let mut streamed = metric(&addr, TOO_SMALL_METRIC).unwrap_or_default();
    common::suite::eventually(std::time::Duration::from_secs(10), || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = metric(&addr, TOO_SMALL_METRIC).unwrap_or_default();
        std::mem::replace(&mut streamed, now) == now
    });
    assert!(streamed <= 2.0, "{streamed} streamed");
    m.unmount();
    // A load that ends before the cache decides counts again, so the metric may count a
    // model twice; the warning names each streamed model once.
    let log = m.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(TOO_SMALL))
        .filter_map(|l| l.split_whitespace().find(|field| field.starts_with("key=")))
        .collect();
    let models_warned: std::collections::HashSet<_> = warned.iter().collect();
    assert_eq!(
        models_warned.len(),
        warned.len(),
        "a model warned twice: {log}"
    );
    assert_eq!(
        streamed > 0.0,
        !warned.is_empty(),
        "streamed {streamed}: {log}"
    );
    assert!(
        warned.len() as f64 <= streamed,
        "streamed {streamed}: {log}"
    );
}
