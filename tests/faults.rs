//! Reliability through a real FUSE mount: the local S3 server injects faults (error statuses,
//! broken, short, stalled or mislabelled bodies, spurious 412s, overwrites, tiny listing
//! pages) while modelfs serves reads, and every byte a read returns is compared with the
//! source. Transient faults must end in exact bytes, lasting ones in `EIO`/`ESTALE` within a
//! bounded time, never in wrong or zero-filled bytes; afterwards a fresh mount on the same
//! disk cache, with the faults off, must read every byte exactly (nothing bad was cached).

mod common;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::check::{pread_exact, read_whole, within};
use common::mount::Mount;
use common::s3::LocalServer;
use common::suite::eventually;
use common::PseudoRandomReader;
use modelfs_s3local::faults::Op;
use modelfs_s3local::models::{SafetensorsReader, SafetensorsSpec};
use modelfs_s3local::{Fault, FaultStats, Faults, Rule};
use rand::{Rng, SeedableRng};

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;
/// Requests modelfs makes for one ranged read at most: 4 rounds of the SDK's 3 attempts.
const MAX_REQUESTS_PER_READ: u64 = 12;
/// The longest a read may take, faults or not.
const READ_LIMIT: Duration = Duration::from_secs(60);
/// `--stall-timeout` of these mounts (the default, 10 s, would make the stall tests slow).
const STALL_TIMEOUT: &str = "2s";

/// The objects every test reads: a safetensors model (read whole: the model sweep fetches it
/// in 8 MiB spans), a `.bin` (swept after reads in 4 blocks) and a `.dat` (plain 1 MiB block
/// reads and readahead).
const MODEL: &str = "checkpoints/model.safetensors";
const WEIGHTS: &str = "loras/weights.bin";
const NOTES: &str = "misc/notes.dat";

/// A server with the three objects, a cache directory shared by the mounts of one test, and
/// the objects' bytes as the server has them.
struct Fixture {
    server: LocalServer,
    cache: tempfile::TempDir,
    objects: Vec<(&'static str, Arc<Vec<u8>>)>,
}

impl Fixture {
    fn new() -> Fixture {
        let server = LocalServer::start(BUCKET);
        let store = server.store();
        let spec = SafetensorsSpec::new(3, 20 * MIB);
        store
            .put_from_reader(BUCKET, &key(MODEL), SafetensorsReader::new(&spec))
            .expect("seed model");
        store
            .put_from_reader(BUCKET, &key(WEIGHTS), PseudoRandomReader::new(4, 10 * MIB))
            .expect("seed weights");
        store
            .put_from_reader(
                BUCKET,
                &key(NOTES),
                PseudoRandomReader::new(5, 8 * MIB + 77),
            )
            .expect("seed notes");
        let objects = [MODEL, WEIGHTS, NOTES]
            .into_iter()
            .map(|rel| {
                let bytes = store.get_bytes(BUCKET, &key(rel)).expect("source bytes");
                (rel, Arc::new(bytes))
            })
            .collect();
        Fixture {
            server,
            cache: tempfile::tempdir().expect("cache dir"),
            objects,
        }
    }

    fn faults(&self) -> &Arc<Faults> {
        self.server.server.faults()
    }

    fn expected(&self, rel: &str) -> Arc<Vec<u8>> {
        self.objects
            .iter()
            .find(|(r, _)| *r == rel)
            .map(|(_, b)| b.clone())
            .expect("known object")
    }

    /// Mounts `s3://models/m` on the shared cache directory, with `extra` flags.
    fn mount(&self, extra: &[&str]) -> Mount {
        let mut args = vec![
            "--cache-dir",
            self.cache.path().to_str().expect("utf-8"),
            "--cache-size",
            "1GiB",
            "--stall-timeout",
            STALL_TIMEOUT,
        ];
        args.extend_from_slice(extra);
        Mount::new(&self.server.endpoint, "s3://models/m", &args)
    }

    /// Reads every object whole through `mount`; every byte must be exact.
    fn read_all_exact(&self, mount: &Mount) {
        for (rel, expected) in &self.objects {
            let (path, expected) = (mount.join(rel), expected.clone());
            let result = within(READ_LIMIT, rel, move || {
                read_whole(&path, &expected, MIB as usize)
            });
            if let Err((offset, e)) = result {
                panic!("{rel}: read at {offset} failed: {e}\nlog:\n{}", tail(mount));
            }
        }
    }

    /// With the faults off, a fresh mount on the same cache reads every byte exactly: nothing
    /// wrong entered the disk cache during the faulty phase.
    fn verify_after_remount(&self) {
        self.faults().clear();
        let mut again = self.mount(&[]);
        self.read_all_exact(&again);
        again.unmount();
    }

    /// Ends a test: every object read exactly through `mount` (the faults are off by now),
    /// then unmounted, then verified through a fresh mount on the same cache.
    fn finish(&self, mut mount: Mount) {
        self.faults().clear();
        self.read_all_exact(&mount);
        mount.unmount();
        self.verify_after_remount();
    }

    /// The readers of the transient-fault tests, all at once (together under 2 × [`READ_LIMIT`]):
    /// the model and the weights whole, front to back, and 2 × 30 seeded random preads of
    /// the notes. Returns the first failure.
    fn concurrent_readers(&self, mount: &Mount) -> Result<(), String> {
        let mut jobs: Vec<Box<dyn FnOnce() -> Result<(), String> + Send>> = Vec::new();
        for (rel, chunk) in [(MODEL, MIB as usize), (WEIGHTS, 256 << 10)] {
            let (path, expected) = (mount.join(rel), self.expected(rel));
            jobs.push(Box::new(move || {
                read_whole(&path, &expected, chunk).map_err(|(at, e)| format!("{rel} at {at}: {e}"))
            }));
        }
        for seed in 0..2u64 {
            let (path, expected) = (mount.join(NOTES), self.expected(NOTES));
            jobs.push(Box::new(move || random_preads(&path, &expected, seed, 30)));
        }
        within(READ_LIMIT * 2, "the concurrent readers", move || {
            std::thread::scope(|scope| {
                let running: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
                running
                    .into_iter()
                    .map(|r| r.join().unwrap_or_else(|_| Err("a reader panicked".into())))
                    .collect::<Result<Vec<()>, String>>()
                    .map(drop)
            })
        })
    }
}

/// The bucket key of a path under the mount.
fn key(rel: &str) -> String {
    format!("m/{rel}")
}

/// The end of the daemon's log, for failure messages.
fn tail(mount: &Mount) -> String {
    let log = mount.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `count` preads of 1 byte to 3 MiB at seeded random offsets, each checked byte for byte.
fn random_preads(
    path: &std::path::Path,
    expected: &[u8],
    seed: u64,
    count: usize,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let what = path.display().to_string();
    for _ in 0..count {
        let offset = rng.gen_range(0..expected.len() as u64);
        let len = rng.gen_range(1..3 << 20);
        pread_exact(&file, expected, offset, len, &what)
            .map_err(|e| format!("{what}: {len} at {offset}: {e}"))?;
    }
    Ok(())
}

/// Reads `expected.len()` bytes at offset 0 of `path` with `O_DIRECT` (into an aligned
/// buffer) and checks them.
fn direct_read(path: &std::path::Path, expected: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut raw = vec![0u8; expected.len() + 4096];
    let shift = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[shift..shift + expected.len()];
    let n = file.read_at(buf, 0)?;
    assert_eq!(n, expected.len(), "short O_DIRECT read");
    assert!(buf == expected, "wrong bytes from the O_DIRECT read");
    Ok(())
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_default()
}

/// Server-side GetObject count, once it stopped moving (no retry loop left running); panics
/// if it does not settle within 30 s.
fn settled_gets(fx: &Fixture) -> u64 {
    let mut last = fx.server.server.stats().get_object;
    let mut stable_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = fx.server.server.stats().get_object;
        if now != last {
            (last, stable_since) = (now, Instant::now());
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            return now;
        }
        assert!(Instant::now() < deadline, "GETs still going on after 30 s");
    }
}

/// Mounts and makes one small `O_DIRECT` read alone under `burst` (one FUSE read of one
/// block, no readahead, no second try by the kernel: every fault of the burst hits that one
/// request's attempts in a row), then runs the concurrent readers under `rules` (seeded);
/// every read must get exact bytes. Then checks the injected-fault counters with `injected`
/// and verifies the cache.
fn transient_faults_end_in_exact_bytes(
    seed: u64,
    burst: Rule,
    rules: Vec<Rule>,
    injected: impl Fn(&FaultStats) -> bool,
) {
    let fx = Fixture::new();
    let mut mount = fx.mount(&[]);
    fx.faults().set([burst]);
    let started = Instant::now();
    let (path, expected) = (mount.join(NOTES), fx.expected(NOTES));
    let first = within(READ_LIMIT, "the first read", move || {
        direct_read(&path, &expected[..64 << 10]).map_err(|e| format!("first read: {e}"))
    });
    fx.faults().set_seed(seed);
    fx.faults().set(rules);
    let result = first.and_then(|()| fx.concurrent_readers(&mount));
    let stats = fx.faults().stats();
    fx.faults().clear();
    if let Err(e) = result {
        panic!("{e} (faults injected: {stats:?})\nlog:\n{}", tail(&mount));
    }
    eprintln!(
        "readers done in {:.1} s; {} GETs; faults injected: {stats:?}",
        started.elapsed().as_secs_f64(),
        fx.server.server.stats().get_object
    );
    assert!(injected(&stats), "the faults did not happen: {stats:?}");
    mount.unmount();
    fx.verify_after_remount();
}

/// `fault` on the next GETs, all met by one read in a row: 6 for a status fault (twice the
/// SDK's own 3 attempts, so that neither the SDK nor the kernel's second try of a failed
/// page read saves it; only modelfs' outer retries do), 3 for a body fault (the SDK does not
/// retry bodies; modelfs makes 4 attempts).
fn burst(fault: Fault) -> Rule {
    Rule::get(fault).next(if fault.is_status() { 6 } else { 3 })
}

/// A status fault on the next request and on 20% of the others (the readers make a few
/// dozen GETs, 8 MiB spans for the most part: the first fault makes sure the rate's
/// draws are not all lucky).
fn status_fault(fault: Fault) -> Vec<Rule> {
    vec![Rule::get(fault).next(1), Rule::get(fault).rate(0.2)]
}

/// A body fault on the next request and on 5% of the others. Body faults get 4 attempts
/// (the SDK cannot retry a body): at 5% a read fails with probability 6e-6.
fn body_fault(fault: Fault) -> [Rule; 2] {
    [Rule::get(fault).next(1), Rule::get(fault).rate(0.05)]
}

#[test]
fn throttling_503s_at_20_percent_end_in_exact_bytes() {
    let rules = status_fault(Fault::SlowDown);
    transient_faults_end_in_exact_bytes(1, burst(Fault::SlowDown), rules, |s| s.slow_down > 6);
}

#[test]
fn internal_errors_500_at_20_percent_end_in_exact_bytes() {
    let rules = status_fault(Fault::InternalError);
    let burst = burst(Fault::InternalError);
    transient_faults_end_in_exact_bytes(2, burst, rules, |s| s.internal_error > 6);
}

#[test]
fn connections_reset_mid_body_end_in_exact_bytes() {
    let fault = Fault::Reset { after: 300_000 };
    let mut rules = body_fault(fault).to_vec();
    rules.push(Rule::get(Fault::Reset { after: 0 }).rate(0.02));
    transient_faults_end_in_exact_bytes(3, burst(fault), rules, |s| s.reset > 3);
}

#[test]
fn truncated_bodies_end_in_exact_bytes() {
    let fault = Fault::Truncate { after: 700_000 };
    let rules = body_fault(fault).to_vec();
    transient_faults_end_in_exact_bytes(4, burst(fault), rules, |s| s.truncated > 3);
}

#[test]
fn wrong_content_lengths_and_extra_bytes_end_in_exact_bytes() {
    let short = Fault::ContentLength { delta: -4096 };
    let mut rules = body_fault(short).to_vec();
    rules.extend(body_fault(Fault::ContentLength { delta: 4096 }));
    rules.extend(body_fault(Fault::ExtraBytes { extra: 77 }));
    transient_faults_end_in_exact_bytes(5, burst(short), rules, |s| {
        s.content_length >= 5 && s.extra_bytes >= 1
    });
}

#[test]
fn a_mix_of_throttling_resets_and_short_bodies_ends_in_exact_bytes() {
    let rules = vec![
        Rule::get(Fault::SlowDown).rate(0.2),
        Rule::get(Fault::Reset { after: 65_536 }).rate(0.05),
        Rule::get(Fault::Truncate { after: 1 }).rate(0.05),
    ];
    transient_faults_end_in_exact_bytes(6, burst(Fault::SlowDown), rules, |s| {
        s.slow_down > 6 && s.reset > 0 && s.truncated > 0
    });
}

#[test]
fn every_get_failing_ends_in_eio_within_bounded_time_and_the_mount_recovers() {
    let fx = Fixture::new();
    let mount = fx.mount(&[]);
    let notes = fx.expected(NOTES);
    let model = fx.expected(MODEL);
    // Opened before the fault: opening needs no GET, reading does.
    let notes_file = Arc::new(File::open(mount.join(NOTES)).expect("open notes"));
    let model_file = Arc::new(File::open(mount.join(MODEL)).expect("open model"));
    let before = fx.server.server.stats().get_object;
    fx.faults().set([Rule::get(Fault::InternalError)]);

    // A plain block read, and a read deep in the model (which starts the model sweep).
    let reads = [
        (notes_file.clone(), notes.clone(), 3 * MIB),
        (model_file.clone(), model.clone(), 2 * MIB + 5),
    ];
    let mut took = Vec::new();
    for (file, expected, offset) in reads {
        let started = Instant::now();
        let err = within(READ_LIMIT, "read under permanent 500s", move || {
            pread_exact(&file, &expected, offset, MIB as usize, "faulty read")
        })
        .expect_err("every GET fails: the read must fail");
        assert_eq!(errno(&err), libc::EIO, "{err}");
        took.push(started.elapsed().as_secs_f64());
    }
    let gets = settled_gets(&fx) - before;
    let injected = fx.faults().stats().internal_error;
    eprintln!("EIO after {took:.1?} s; {gets} GETs answered 500 ({injected} injected)");
    assert_eq!(injected, gets, "every GET of the phase was a 500");
    // Each fetch makes at most 12 requests. Per read: the block read, the kernel's readahead
    // window (up to 4 blocks) and its second try of the failed page; for the model also the
    // sweep's spans (20 MiB in 3 spans of 8 MiB, each failing once for all its blocks). So
    // bounded, and settled above.
    let fetches = 2 * (1 + 4 + 1) + 3;
    assert!(
        gets <= MAX_REQUESTS_PER_READ * fetches,
        "{gets} GETs for at most {fetches} fetches"
    );

    // Faults off: the same handles read exact bytes again, as do new opens.
    fx.faults().clear();
    for (file, expected, offset) in [(notes_file, notes, 3 * MIB), (model_file, model, 2 * MIB)] {
        within(READ_LIMIT, "read after recovery", move || {
            pread_exact(&file, &expected, offset, MIB as usize, "recovered read")
        })
        .expect("the mount works again once S3 does");
    }
    fx.finish(mount);
}

#[test]
fn stalled_bodies_are_abandoned_after_the_stall_timeout_and_retried() {
    let fx = Fixture::new();
    let mount = fx.mount(&[]);
    let pause = Duration::from_secs(30);
    fx.faults().set([Rule::get(Fault::Stall {
        after: 65_536,
        pause,
    })
    .next(2)]);
    let (path, expected) = (mount.join(NOTES), fx.expected(NOTES));
    let started = Instant::now();
    // One O_DIRECT read: one block request, whose first two attempts stall.
    within(READ_LIMIT, "read through stalls", move || {
        direct_read(&path, &expected[..128 << 10])
    })
    .expect("the stalled requests are retried");
    let took = started.elapsed();
    let stalled = fx.faults().stats().stalled;
    eprintln!(
        "read through {stalled} stalls in {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(stalled, 2, "took {took:?}");
    assert!(
        took >= Duration::from_secs(4),
        "waited for the stall timeout, twice ({took:?})"
    );
    assert!(
        took < pause,
        "gave up on the stalled bodies instead of waiting them out ({took:?})"
    );
    fx.finish(mount);
}

#[test]
fn throttling_keeps_the_request_count_bounded_and_the_read_succeeds() {
    // Baseline: the requests of reading everything once, without faults.
    let calm = Fixture::new();
    let mut mount = calm.mount(&[]);
    let started = Instant::now();
    calm.read_all_exact(&mount);
    let calm_time = started.elapsed();
    mount.unmount();
    let calm_gets = calm.server.server.stats().get_object;

    // The same reads while 30% of GETs are answered 503 SlowDown.
    let throttled = Fixture::new();
    let mut mount = throttled.mount(&[]);
    throttled.faults().set_seed(7);
    throttled
        .faults()
        .set([Rule::get(Fault::SlowDown).rate(0.3)]);
    let started = Instant::now();
    throttled.read_all_exact(&mount);
    let throttled_time = started.elapsed();
    let gets = throttled.server.server.stats().get_object;
    let slow_downs = throttled.faults().stats().slow_down;
    eprintln!(
        "no faults: {calm_gets} GETs in {:.1} s; 30% SlowDown: {gets} GETs ({slow_downs} \
         throttled) in {:.1} s",
        calm_time.as_secs_f64(),
        throttled_time.as_secs_f64()
    );
    assert!(slow_downs > 0, "no throttling happened");
    // Each success costs 1 / 0.7 ≈ 1.4 requests on average; a retry storm would cost more.
    assert!(
        gets <= 3 * calm_gets,
        "{gets} GETs under throttling vs {calm_gets} without"
    );
    mount.unmount();
    throttled.verify_after_remount();
}

#[test]
fn spurious_412s_fail_the_read_with_estale_and_the_handle_reads_again_once_they_stop() {
    let fx = Fixture::new();
    let mount = fx.mount(&[]);
    let file = Arc::new(File::open(mount.join(NOTES)).expect("open"));
    let expected = fx.expected(NOTES);
    // Every GET says the object changed although it did not (a single 412 is masked: the
    // kernel reads a page again when its readahead fails).
    fx.faults().set([Rule::get(Fault::PreconditionFailed)]);
    let (f, e) = (file.clone(), expected.clone());
    let err = within(READ_LIMIT, "read answered 412", move || {
        pread_exact(&f, &e, 0, 64 << 10, "412 read")
    })
    .expect_err("a 412 says the object changed");
    assert_eq!(errno(&err), libc::ESTALE, "{err}");
    assert!(fx.faults().stats().precondition_failed > 0);
    // The object did not really change: once S3 agrees, the pinned version reads again.
    fx.faults().clear();
    within(READ_LIMIT, "read after the 412s", move || {
        pread_exact(&file, &expected, 0, 64 << 10, "read after 412")
    })
    .expect("the next read succeeds");
    fx.finish(mount);
}

#[test]
fn an_overwrite_mid_read_gives_estale_never_mixed_bytes_and_the_cache_stays_exact() {
    let mut fx = Fixture::new();
    let mount = fx.mount(&["--metadata-ttl", "1s"]);
    let old = fx.expected(NOTES);
    let path = mount.join(NOTES);
    let file = File::open(&path).expect("open");
    pread_exact(&file, &old, 0, MIB as usize, "before the overwrite").expect("read head");

    // The object changes under the open handle (same size, new ETag).
    let store = fx.server.store().clone();
    store
        .put_from_reader(
            BUCKET,
            &key(NOTES),
            PseudoRandomReader::new(99, old.len() as u64),
        )
        .expect("overwrite");
    let new = Arc::new(store.get_bytes(BUCKET, &key(NOTES)).expect("new bytes"));
    assert!(new.len() == old.len() && new != old);
    // Far from what was read or read ahead: needs S3, pinned to the old ETag.
    let offset = 6 * MIB;
    let mut buf = vec![0u8; MIB as usize];
    match std::os::unix::fs::FileExt::read_at(&file, &mut buf, offset) {
        Err(e) => assert!(
            matches!(errno(&e), libc::ESTALE | libc::EIO),
            "unexpected error {e}"
        ),
        Ok(n) => panic!(
            "a read after the overwrite returned {n} bytes (old: {}, new: {})",
            buf[..n] == old[offset as usize..offset as usize + n],
            buf[..n] == new[offset as usize..offset as usize + n]
        ),
    }
    assert!(fx.server.server.stats().precondition_failed > 0);
    drop(file);
    // A new open, after the TTL, pins the new version and reads it whole.
    assert!(
        eventually(Duration::from_secs(15), || {
            common::pread(&path, 0, MIB as usize).ok().as_deref() == Some(&new[..MIB as usize])
        }),
        "a new open did not see the new version"
    );
    fx.objects.retain(|(rel, _)| *rel != NOTES);
    fx.objects.push((NOTES, new));
    fx.finish(mount);
}

/// Two levels down: a mount lists the subdirectories of a listed directory ahead, and a
/// listing ahead of the root that finished before the faults were set would prove nothing.
const MANY_DIR: &str = "deep/many";

#[test]
fn a_listing_of_many_pages_under_list_and_head_faults_shows_every_name() {
    let fx = Fixture::new();
    let files: Vec<(String, Vec<u8>)> = (0..50u64)
        .map(|i| {
            let data = common::pseudo_random(1000 + i, 1000 + i as usize * 37);
            (format!("{i:03}.safetensors"), data)
        })
        .collect();
    for (name, data) in &files {
        fx.server
            .store()
            .put_bytes(BUCKET, &key(&format!("{MANY_DIR}/{name}")), data)
            .expect("seed");
    }
    let files = Arc::new(files);

    // Listed once (long TTL): 50 names in 17 pages. Bursts of 3 (the SDK's attempts), then
    // 30% of requests.
    let mut mount = fx.mount(&["--metadata-ttl", "1h"]);
    let faults = fx.faults();
    faults.set_seed(11);
    faults.set_list_page_size(Some(3));
    faults.set([
        Rule::new(Op::ListObjectsV2, Fault::SlowDown).next(3),
        Rule::new(Op::ListObjectsV2, Fault::SlowDown).rate(0.3),
        Rule::new(Op::HeadObject, Fault::InternalError).next(3),
        Rule::new(Op::HeadObject, Fault::InternalError).rate(0.3),
    ]);
    let dir: PathBuf = mount.join(MANY_DIR);
    let started = Instant::now();
    let names = within(READ_LIMIT, "list 50 names", move || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    });
    let want: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want);
    let stats = faults.stats();
    assert!(stats.short_pages >= 17, "50 names in pages of 3: {stats:?}");
    assert!(stats.slow_down > 3, "listing faults: {stats:?}");
    eprintln!(
        "50 names in {} pages listed in {:.1} s: {stats:?}",
        stats.short_pages,
        started.elapsed().as_secs_f64()
    );
    mount.unmount();

    // Nothing trusted (TTL 0): every lookup lists again (in one page now) and every open
    // asks HEAD.
    faults.set_list_page_size(None);
    let saved = faults.rules();
    faults.set([]);
    let mut mount = fx.mount(&["--metadata-ttl", "0s"]);
    faults.set(saved);
    let heads = fx.server.server.stats().head_object;
    let (root, all) = (mount.path.clone(), files.clone());
    let started = Instant::now();
    within(READ_LIMIT * 2, "open and read 50 files", move || {
        for (name, data) in all.iter().step_by(5) {
            let got = std::fs::read(root.join(MANY_DIR).join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == *data, "{name}: wrong bytes");
        }
    });
    let stats = faults.stats();
    eprintln!(
        "10 opens and reads in {:.1} s: {stats:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        fx.server.server.stats().head_object > heads,
        "no HEAD was made"
    );
    assert!(stats.internal_error > 3, "HEAD faults: {stats:?}");
    mount.unmount();
    fx.verify_after_remount();
}
