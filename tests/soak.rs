//! A bounded soak: many reader threads through one mount, for a fixed time, while the server
//! injects transient faults at a low rate (throttling, 500s, reset, truncated, stalled and
//! mislabelled bodies). Every byte read is compared with the source; every read has a
//! deadline and so has the whole run; the daemon's peak memory must stay within its budget;
//! afterwards a fresh mount on the same disk cache, faults off, reads every byte exactly.
//!
//! Sized for CI (about a minute on 2 cores, debug build). Larger runs:
//! `MODELFS_SOAK_SECS=600 MODELFS_SOAK_THREADS=64 cargo test --test soak -- --nocapture`
//! (`MODELFS_SOAK_SEED` changes the faults and the reads).
//!
//! The mount uses passthrough for complete cache entries, as in production (concurrent opens
//! of one complete file share its backing file); `MODELFS_SOAK_PASSTHROUGH=0` turns it off.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::check::{free_local_addr, metric, peak_rss_kib, pread_exact, read_whole, within};
use common::mount::Mount;
use common::s3::LocalServer;
use common::PseudoRandomReader;
use modelfs_s3local::models::{SafetensorsReader, SafetensorsSpec};
use modelfs_s3local::{Fault, Rule};
use rand::{Rng, SeedableRng};

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;
/// Files read: half safetensors models (swept whole once loading starts), half plain data.
const FILES: u64 = 20;
/// The longest one read may take.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// `--memory-cache-size` of the soak mount.
const MEMORY_CACHE_MIB: u64 = 32;
/// The daemon's memory budget: the memory cache, the background fetches in flight (32 slots
/// of up to one 8 MiB sweep span each), the kernel's FUSE reads in flight (up to 64 of
/// 1 MiB), plus the process itself (runtime, allocator, SDK, code).
const RSS_BUDGET_MIB: u64 = MEMORY_CACHE_MIB + 32 * 8 + 64 + 64;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// What the readers did.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    bytes: AtomicU64,
    opens: AtomicU64,
    slowest_micros: AtomicU64,
}

/// One reader: until `stop`, opens a random file, makes 1–8 preads of random sizes at random
/// offsets, each checked byte for byte, drops the file's cached pages and closes it.
fn reader(
    files: &[(String, Arc<Vec<u8>>)],
    root: &std::path::Path,
    seed: u64,
    stop: &AtomicBool,
    tally: &Tally,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lens = [4096usize, 65_536, 131_072, 1 << 20, (2 << 20) + 3];
    while !stop.load(Ordering::Relaxed) {
        let (rel, expected) = &files[rng.gen_range(0..files.len())];
        let path = root.join(rel);
        let file = File::open(&path).map_err(|e| format!("open {rel}: {e}"))?;
        tally.opens.fetch_add(1, Ordering::Relaxed);
        for _ in 0..rng.gen_range(1..=8) {
            let len = match rng.gen_range(0..4) {
                0 => rng.gen_range(1..4 << 20),
                _ => lens[rng.gen_range(0..lens.len())],
            };
            let offset = match rng.gen_range(0..10) {
                0 => (expected.len() as u64).saturating_sub(len as u64 / 2),
                1 => 0,
                _ => rng.gen_range(0..expected.len() as u64),
            };
            let started = Instant::now();
            pread_exact(&file, expected, offset, len, rel)
                .map_err(|e| format!("{rel}: read of {len} at {offset}: {e}"))?;
            let took = started.elapsed();
            if took > READ_DEADLINE {
                return Err(format!("{rel}: read of {len} at {offset} took {took:?}"));
            }
            tally
                .slowest_micros
                .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
            tally.reads.fetch_add(1, Ordering::Relaxed);
            let n = (expected.len() as u64)
                .saturating_sub(offset)
                .min(len as u64);
            tally.bytes.fetch_add(n, Ordering::Relaxed);
        }
        // Drop the file's pages from the kernel's cache, so that later reads reach the
        // daemon (and through it, often, S3) instead of being served by the kernel.
        // SAFETY: `file` is an open descriptor for the whole call.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    Ok(())
}

/// The last 40 warning and error lines of a daemon log.
fn problems(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("error"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn concurrent_readers_under_faults_get_exact_bytes_within_the_memory_budget() {
    let secs = env_or("MODELFS_SOAK_SECS", 40);
    let threads = env_or("MODELFS_SOAK_THREADS", 32) as usize;
    let seed = env_or("MODELFS_SOAK_SEED", 8);

    let server = LocalServer::start(BUCKET);
    let mut files = Vec::new();
    for i in 0..FILES {
        let (rel, size) = if i % 2 == 0 {
            (
                format!("checkpoints/c{i:02}.safetensors"),
                (2 + i % 7) * MIB,
            )
        } else {
            (format!("data/d{i:02}.dat"), (1 + i % 8) * MIB + i * 4099)
        };
        let key = format!("m/{rel}");
        let store = server.store();
        let seeded = if i % 2 == 0 {
            let spec = SafetensorsSpec::new(seed + i, size);
            store.put_from_reader(BUCKET, &key, SafetensorsReader::new(&spec))
        } else {
            store.put_from_reader(BUCKET, &key, PseudoRandomReader::new(seed + i, size))
        };
        seeded.expect("seed object");
        let bytes = Arc::new(store.get_bytes(BUCKET, &key).expect("source"));
        files.push((rel, bytes));
    }
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let files = Arc::new(files);

    // A disk cache smaller than the data, and a small memory cache: blocks keep being
    // evicted and fetched again, so faults keep being met all along.
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_arg = cache.path().to_str().expect("utf-8").to_string();
    let metrics_addr = free_local_addr();
    let memory = format!("{MEMORY_CACHE_MIB}MiB");
    let mut mount_args = [
        "--cache-dir",
        &cache_arg,
        "--cache-size",
        "64MiB",
        "--memory-cache-size",
        &memory,
        "--stall-timeout",
        "2s",
    ]
    .to_vec();
    if env_or("MODELFS_SOAK_PASSTHROUGH", 1) == 0 {
        mount_args.push("--no-passthrough");
    }
    let mut args = mount_args.clone();
    args.extend(["--metrics-addr", &metrics_addr]);
    let mut mount = Mount::new(&server.endpoint, "s3://models/m", &args);
    let pid = mount.pid().expect("daemon pid");

    let faults = server.server.faults();
    faults.set_seed(seed);
    // Rare enough that one read failing all 4 of its attempts is practically impossible
    // (1.5% of bodies fail: 5e-8 per read), frequent enough to meet hundreds of faults.
    faults.set([
        Rule::get(Fault::SlowDown).rate(0.03),
        Rule::get(Fault::InternalError).rate(0.01),
        Rule::get(Fault::Reset { after: 100_000 }).rate(0.005),
        Rule::get(Fault::Truncate { after: 500_000 }).rate(0.005),
        Rule::get(Fault::Stall {
            after: 4096,
            pause: Duration::from_millis(300),
        })
        .rate(0.005),
        Rule::get(Fault::ContentLength { delta: -512 }).rate(0.0025),
        Rule::get(Fault::ExtraBytes { extra: 512 }).rate(0.0025),
    ]);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let root = mount.path.clone();
    let (all, flag, counts) = (files.clone(), stop.clone(), tally.clone());
    // The readers run for `secs`, then finish their current file (at most 8 reads, each
    // under its deadline): a hung read fails the test here.
    let limit = Duration::from_secs(secs) + READ_DEADLINE * 2;
    let failures = within(limit, "the soak readers", move || {
        std::thread::scope(|scope| {
            let running: Vec<_> = (0..threads)
                .map(|t| {
                    let (all, root, flag, counts) = (&all, &root, &flag, &counts);
                    scope.spawn(move || reader(all, root, seed * 1000 + t as u64, flag, counts))
                })
                .collect();
            std::thread::sleep(Duration::from_secs(secs));
            flag.store(true, Ordering::Relaxed);
            running
                .into_iter()
                .enumerate()
                .filter_map(|(t, r)| match r.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("reader {t}: {e}")),
                    Err(_) => Some(format!("reader {t} panicked")),
                })
                .collect::<Vec<_>>()
        })
    });
    let elapsed = started.elapsed();
    let stats = faults.stats();
    faults.clear();
    let peak_rss_mib = peak_rss_kib(pid).expect("daemon VmHWM") / 1024;
    let retries = metric(&metrics_addr, "modelfs_s3_retries_total").unwrap_or(-1.0);
    let requests = server.server.stats();
    let reads = tally.reads.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    println!(
        "soak: {threads} threads x {secs} s over {FILES} files ({} MiB): {reads} reads \
         ({} opens), {:.0} MiB read ({:.1} MiB/s) in {:.1} s; slowest read {:.2} s; \
         {} GETs at the server, {} faults injected ({stats:?}); {retries} modelfs retries; \
         daemon peak RSS {peak_rss_mib} MiB (budget {RSS_BUDGET_MIB} MiB)",
        total / MIB,
        tally.opens.load(Ordering::Relaxed),
        bytes as f64 / MIB as f64,
        bytes as f64 / MIB as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        tally.slowest_micros.load(Ordering::Relaxed) as f64 / 1e6,
        requests.get_object,
        stats.total(),
    );
    assert!(
        failures.is_empty(),
        "{} readers failed:\n{}\nlast warnings and errors of the daemon:\n{}",
        failures.len(),
        failures.join("\n"),
        problems(&mount.log_text())
    );
    assert!(
        reads > threads as u64,
        "the readers hardly read: {reads} reads"
    );
    assert!(
        stats.total() > 0 && stats.reset + stats.truncated + stats.slow_down > 0,
        "no faults were injected: {stats:?}"
    );
    assert!(
        peak_rss_mib <= RSS_BUDGET_MIB,
        "daemon peak RSS {peak_rss_mib} MiB over its {RSS_BUDGET_MIB} MiB budget"
    );
    mount.unmount();

    // Nothing wrong entered the cache: a fresh mount on it, faults off, reads every byte.
    let mut again = Mount::new(&server.endpoint, "s3://models/m", &mount_args);
    for (rel, expected) in files.iter() {
        let (path, expected) = (again.join(rel), expected.clone());
        within(READ_DEADLINE, rel, move || {
            read_whole(&path, &expected, MIB as usize)
        })
        .unwrap_or_else(|(at, e)| panic!("{rel}: verification read at {at} failed: {e}"));
    }
    again.unmount();
}
