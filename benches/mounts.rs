//! Benchmarks of modelfs against mountpoint-s3 over real FUSE mounts of a shaped local S3
//! endpoint (issue 5). Two ways to run it:
//!
//! * `scripts/bench.sh`: sets `MODELFS_BENCH_JSON=FILE`, and this binary runs every case once
//!   (a fresh mount per cold case; runs longer than the deadline are cut and reported as such)
//!   and writes the results as JSON for `scripts/bench_report.py`, which writes
//!   `docs/benchmarks.md`.
//! * `cargo bench --bench mounts`: the same cases as criterion benchmarks (`iter_custom`, ten
//!   samples, each sample on a fresh mount for cold cases). Slow: filter with criterion's usual
//!   name argument, e.g. `cargo bench --bench mounts -- cold/modelfs`.
//!
//! Needs root (mounts, `drop_caches`), `target/release/modelfs` (`MODELFS_BIN`), and the
//! mountpoint-s3 wrapper from `benches/mountpoint` (`MOUNT_S3`); without the latter every
//! mountpoint-s3 case is reported as NOT MEASURED, loudly. Environment:
//! `MODELFS_BENCH_MODEL_MIB` (big model, default 2048), `MODELFS_BENCH_COST_MIB` (default
//! `2048,8192`), `MODELFS_BENCH_FLEET_MIB` (default 512), `MODELFS_BENCH_DEADLINE_S` (per run,
//! default 60), `MODELFS_BENCH_WORKDIR` (default `/tmp/modelfs-bench`; the seeded store is
//! reused).
//!
//! The endpoint runs on the first half of the CPUs this process may use, everything measured
//! (daemons, reader threads, the link-limit client) on the other half ([`CpuSplit`]): on two
//! cores, the server on CPU 0 and the rest on CPU 1, so a system's time and CPU are its own,
//! not its contention with the server.
//!
//! `MODELFS_BENCH_ONLY=small_cache,alternate` runs only the caches-smaller-than-the-models
//! scenarios (issue 24), sized from a 1 GiB model: a 2 GiB model through a 256 MiB cache, no
//! cache and a large one; two 1 GiB models alternated through a 1.5 GiB cache, and no cache,
//! with the bytes S3 sent. `MODELFS_BENCH_ONLY=fleet`: 16 modelfs mounts on separate caches
//! cold-load one model at once (issue 22), with the GETs that took and their peak rate.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use criterion::{criterion_group, Criterion};
use modelfs_fs::memory::meminfo;
use modelfs_s3local::models::{parse_safetensors_header, SafetensorsReader};
use modelfs_s3local::{LocalS3, LocalS3Config, SafetensorsSpec, Shaping};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const BUCKET: &str = "models";
const PREFIX: &str = "bench";
const MIB: u64 = 1024 * 1024;
const HEADER_FILES: usize = 40;
const HEADER_FILE_BYTES: u64 = 32 * MIB;
const LIST_OBJECTS: usize = 10_000;
const RANDOM_READS: usize = 200;
const RANDOM_READ_BYTES: u64 = 64 * 1024;
const PREAD_THREADS: usize = 8;
const PREAD_CHUNK: u64 = 2 * MIB;
const LIMIT_PART: u64 = 8 * MIB;
const LIMIT_CONCURRENCY: usize = 16;
/// modelfs' memory budget in the bench (its default).
const MODELFS_MEMORY_MIB: u64 = 512;
/// Where the bench's modelfs mounts serve their metrics (saved after each measurement).
const MODELFS_METRICS_ADDR: &str = "127.0.0.1:19473";
/// Seconds every measurement waits after `sync` before dropping the page cache.
const DISK_SETTLE_S: u64 = 2;
/// Mounts of the fleet case: 16 nodes cold-starting one model (issue 22).
const FLEET_MOUNTS: usize = 16;
/// How often the fleet case samples the endpoint's GET counter.
const FLEET_SAMPLE: Duration = Duration::from_millis(100);
/// The model size the caches-smaller-than-the-models scenarios are sized from (issue 24's node).
const SMALL_CACHE_BASE_MIB: u64 = 1024;
/// Room left free besides what a cost cell writes, so a full disk never decides a result.
const DISK_MARGIN: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// Configuration and fixture

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Config {
    model_mib: u64,
    cost_mib: Vec<u64>,
    /// The model the fleet case loads (`MODELFS_BENCH_FLEET_MIB`).
    fleet_mib: u64,
    deadline: Duration,
    /// Runs per workload case; the report shows the median (`MODELFS_BENCH_REPEAT`).
    repeat: usize,
    workdir: PathBuf,
    modelfs_bin: PathBuf,
    mount_s3: Option<PathBuf>,
    mount_s3_missing: String,
    /// The cases to run (`MODELFS_BENCH_ONLY`), all when `None`.
    only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> Config {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cost_mib = std::env::var("MODELFS_BENCH_COST_MIB")
            .unwrap_or_else(|_| "2048,8192".to_string())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let mount_s3 = std::env::var_os("MOUNT_S3")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("benches/mountpoint/target/release/mp-bench"));
        let (mount_s3, mount_s3_missing) = if mount_s3.is_file() {
            (Some(mount_s3), String::new())
        } else {
            let why = format!(
                "mountpoint-s3 binary not found at {} (build benches/mountpoint or set MOUNT_S3)",
                mount_s3.display()
            );
            eprintln!("\n!!!!!!!! {why}: every mountpoint-s3 case is NOT MEASURED !!!!!!!!\n");
            (None, why)
        };
        Config {
            model_mib: env_u64("MODELFS_BENCH_MODEL_MIB", 2048),
            cost_mib,
            fleet_mib: env_u64("MODELFS_BENCH_FLEET_MIB", 512),
            deadline: Duration::from_secs(env_u64("MODELFS_BENCH_DEADLINE_S", 60)),
            repeat: env_u64("MODELFS_BENCH_REPEAT", 3) as usize,
            workdir: std::env::var_os("MODELFS_BENCH_WORKDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp/modelfs-bench")),
            modelfs_bin: std::env::var_os("MODELFS_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/release/modelfs")),
            mount_s3,
            mount_s3_missing,
            only: std::env::var("MODELFS_BENCH_ONLY")
                .ok()
                .map(|s| s.split(',').map(|x| x.trim().to_string()).collect()),
        }
    }

    /// Whether the run includes `case` (a workload id, `cost`, `small_cache`, `alternate`,
    /// `fleet`).
    fn chosen(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|x| x == case))
    }
}

// ---------------------------------------------------------------------------------------------
// Which CPUs run what

/// The endpoint on one half of the CPUs, the measured systems on the other: a system timed on
/// the server's cores measures its contention with the server, not itself (issue 22).
#[derive(Clone, Debug)]
struct CpuSplit {
    /// The local S3 server's threads.
    server: Vec<usize>,
    /// The bench's own threads (readers, the link-limit client) and every daemon it starts.
    client: Vec<usize>,
}

impl CpuSplit {
    /// The CPUs this process may use (as many as `available_parallelism`), the first half for
    /// the server, the rest for the client; with one CPU both share it.
    fn detect() -> CpuSplit {
        let allowed = allowed_cpus();
        if allowed.len() < 2 {
            return CpuSplit {
                server: allowed.clone(),
                client: allowed,
            };
        }
        let (server, client) = allowed.split_at(allowed.len() / 2);
        CpuSplit {
            server: server.to_vec(),
            client: client.to_vec(),
        }
    }

    /// How many CPUs the bench had (the bench's own thread is pinned by now, so
    /// `available_parallelism` would count only the client's).
    fn count(&self) -> usize {
        let mut all: Vec<usize> = self.server.iter().chain(&self.client).copied().collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }

    /// For the report's Endpoint line.
    fn describe(&self) -> String {
        if self.server == self.client {
            return format!(
                "server, daemons and readers share CPU {} (one CPU: no split)",
                cpu_list(&self.client)
            );
        }
        format!(
            "the server pinned to CPU {}; each daemon (modelfs, mountpoint-s3), the reader threads \
             and the link-limit client to CPU {} (`sched_setaffinity`)",
            cpu_list(&self.server),
            cpu_list(&self.client)
        )
    }
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: an all-zero `cpu_set_t` is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&cpu| cpu < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set, filled by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Keeps the calling thread, and every thread and process it starts from now on, on `cpus`.
fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `cmd`'s process on `cpus`, whatever thread spawns it.
fn pin_command(cmd: &mut Command, cpus: &[usize]) {
    use std::os::unix::process::CommandExt;
    let set = cpu_set(cpus);
    // SAFETY: the hook only makes one system call on memory it owns (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Bytes free for this process under `path` (`statvfs`).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated; `st` is a valid statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn big_rel(mib: u64) -> String {
    format!("big/model-{mib}.safetensors")
}

fn scan_rel(i: usize) -> String {
    format!("scan/lora-{i:02}.safetensors")
}

fn many_rel(i: usize) -> String {
    format!("many/d{:03}/obj-{i:05}.bin", i / 100)
}

/// The shaped server, the seeded bucket and a local copy of the same bytes.
struct Fixture {
    config: Config,
    cpus: CpuSplit,
    /// When the fixture started: the report gives the total run time.
    started: Instant,
    server: LocalS3,
    local: PathBuf,
    shaping: Shaping,
    s3: aws_sdk_s3::Client,
    rt: tokio::runtime::Runtime,
}

fn big_spec(mib: u64) -> SafetensorsSpec {
    SafetensorsSpec::new(1000 + mib, mib * MIB)
}

/// Seeds the big model of `mib` MiB in the store, and its local copy under `local` when given
/// (only the workload tables' warm runs read one).
fn seed_big(server: &LocalS3, local: Option<&Path>, mib: u64) {
    let spec = big_spec(mib);
    let key = format!("{PREFIX}/{}", big_rel(mib));
    if server.store().head(BUCKET, &key).is_none() {
        eprintln!("seeding {key}");
        server
            .store()
            .put_from_reader(BUCKET, &key, SafetensorsReader::new(&spec))
            .expect("seed big model");
    }
    let Some(local) = local else {
        return;
    };
    let path = local.join(big_rel(mib));
    if !path.exists() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(File::create(&tmp).expect("create"));
        std::io::copy(&mut SafetensorsReader::new(&spec), &mut f).expect("write local");
        f.flush().expect("flush");
        std::fs::rename(tmp, &path).expect("rename");
    }
}

impl Fixture {
    /// Locks the objects workload `w` fetches in memory, read from the endpoint's disk after
    /// `drop_caches`, until the returned guard is dropped: S3's disks are not on the client's
    /// machine, so no system measured may pay the endpoint's disk reads, nor compete with them
    /// for the disk its cache writes to (at 8 GiB, reclaim evicted the copy and the endpoint
    /// read it back at 1 GB/s during the run).
    fn endpoint_resident(&self, w: Workload, mib: u64) -> Resident {
        let rels: Vec<String> = match w {
            Workload::MmapLoad | Workload::Pread8 | Workload::Seq1M | Workload::Random64K => {
                vec![big_rel(mib)]
            }
            Workload::HeaderScan => (0..HEADER_FILES).map(scan_rel).collect(),
            Workload::LsLR => Vec::new(),
        };
        self.resident(&rels)
    }

    /// The deadline of a run starting now: past it, a workload stops where it is.
    fn deadline(&self) -> Deadline {
        Deadline(Instant::now() + self.config.deadline)
    }

    /// Locks the objects at `rels` in memory (see [`Fixture::endpoint_resident`]).
    fn resident(&self, rels: &[String]) -> Resident {
        let mut locked = Vec::new();
        for rel in rels {
            let key = format!("{PREFIX}/{rel}");
            let Some(path) = self.server.store().data_path(BUCKET, &key) else {
                continue;
            };
            match lock_in_memory(&path) {
                Ok(Some(map)) => locked.push(map),
                Ok(None) => {}
                Err(err) => eprintln!("warning: cannot lock {} in memory: {err}", path.display()),
            }
        }
        Resident { _locked: locked }
    }

    fn start(config: Config) -> Fixture {
        let started = Instant::now();
        // First this thread, so every thread and process the bench starts later (the client
        // runtime, readers, daemons) is on the client's CPUs; the server pins its own threads.
        let cpus = CpuSplit::detect();
        if let Err(err) = pin_current_thread(&cpus.client) {
            eprintln!(
                "warning: cannot pin the bench to CPU {:?}: {err}",
                cpus.client
            );
        }
        eprintln!("CPUs: {}", cpus.describe());
        eprintln!(
            "estimated duration: ~{:.0} min",
            estimate_seconds(&config) / 60.0
        );
        let store_dir = config.workdir.join("store");
        let local = config.workdir.join("local");
        std::fs::create_dir_all(&store_dir).expect("workdir");
        let shaping = Shaping {
            first_byte_latency: Some(Duration::from_millis(env_u64(
                "MODELFS_BENCH_LATENCY_MS",
                20,
            ))),
            per_response_bytes_per_sec: Some(env_u64("MODELFS_BENCH_PER_RESPONSE_MIBPS", 90) * MIB),
            aggregate_bytes_per_sec: match env_u64("MODELFS_BENCH_AGGREGATE_MIBPS", 0) {
                0 => None,
                n => Some(n * MIB),
            },
        };
        let mut server_config = LocalS3Config::new(&store_dir);
        server_config.shaping = shaping;
        server_config.cpus = cpus.server.clone();
        let server = LocalS3::start(server_config).expect("start local S3");
        if !server.store().bucket_exists(BUCKET) {
            server.store().create_bucket(BUCKET).expect("bucket");
        }
        // Only what the chosen cases read is seeded (the store is kept for later runs); the
        // cost and fleet sections seed their models when they run, after checking the disk.
        if WORKLOADS.iter().any(|w| config.chosen(w.id())) {
            seed_big(&server, Some(&local), config.model_mib);
        }
        for i in (0..HEADER_FILES).filter(|_| config.chosen("header_scan")) {
            let spec = SafetensorsSpec::new(i as u64, HEADER_FILE_BYTES);
            let key = format!("{PREFIX}/{}", scan_rel(i));
            if server.store().head(BUCKET, &key).is_none() {
                server
                    .store()
                    .put_from_reader(BUCKET, &key, SafetensorsReader::new(&spec))
                    .expect("seed scan file");
            }
            let path = local.join(scan_rel(i));
            if !path.exists() {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                let mut f = File::create(&path).expect("create");
                std::io::copy(&mut SafetensorsReader::new(&spec), &mut f).expect("write");
            }
        }
        let marker = config.workdir.join("many.done");
        if !marker.exists() && config.chosen("ls_lR") {
            eprintln!("seeding {LIST_OBJECTS} small objects");
            for i in 0..LIST_OBJECTS {
                let body = format!("object {i}\n");
                let rel = many_rel(i);
                server
                    .store()
                    .put_bytes(BUCKET, &format!("{PREFIX}/{rel}"), body.as_bytes())
                    .expect("seed small object");
                let path = local.join(&rel);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, body).expect("write");
            }
            std::fs::write(&marker, b"").expect("marker");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let s3_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(server.endpoint_url())
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                server.access_key(),
                server.secret_key(),
                None,
                None,
                "bench",
            ))
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(s3_config);
        Fixture {
            config,
            cpus,
            started,
            server,
            local,
            shaping,
            s3,
            rt,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Systems and mounts

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Modelfs,
    Mountpoint,
    MountpointCache,
    Limit,
    Local,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Modelfs => "modelfs",
            System::Mountpoint => "mountpoint-s3",
            System::MountpointCache => "mountpoint-s3 --cache",
            System::Limit => "link limit",
            System::Local => "local file",
        }
    }
}

/// Writes back dirty pages, lets the disk settle, then drops the page cache: a measurement
/// that follows a fill (warm cases write a GiB into the cache just before) must not pay for
/// that fill's writeback, which on a virtual disk goes on for a while after `sync` returns.
fn drop_caches() {
    let _ = Command::new("sync").status();
    let dirty = || {
        ["Dirty", "Writeback"]
            .iter()
            .filter_map(|field| meminfo(field))
            .sum::<u64>()
    };
    let started = Instant::now();
    while dirty() > 4 * MIB && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(env_u64(
        "MODELFS_BENCH_SETTLE_S",
        DISK_SETTLE_S,
    )));
    if let Err(err) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot drop the page cache: {err}");
    }
}

/// The endpoint's copies of the objects a run fetches, locked in memory while it is held.
struct Resident {
    _locked: Vec<memmap2::Mmap>,
}

/// A read-only mapping of `path`, its pages read in and locked (`None` for an empty file).
fn lock_in_memory(path: &Path) -> std::io::Result<Option<memmap2::Mmap>> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the endpoint replaces objects by renaming new files over them and never
    // truncates a published file, so the mapping stays valid while it is held.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }?;
    map.lock()?;
    Ok(Some(map))
}

/// Makes the guest's free memory backed by the host before a measured run. These machines are
/// virtual: memory the guest has freed for a few seconds is handed back to the host, and the
/// first touch of it again costs the host's fault (writing 3 GiB into fresh pages: 6.8 s;
/// into pages just freed: 1.3 s; after 8 s idle: 4.4 s). A cold load allocates page cache
/// for the reader's pages, a cache's and the server's; without this, a run pays 1.5-2 s per
/// GiB it allocates beyond what an earlier run left backed (the 2 and 4 GiB loads fell to
/// 300-400 MiB/s, and the first run of a series was slow), which real instances never pay.
/// Touches up to three times the model plus 512 MiB of anonymous memory, then frees it for
/// the run to reuse; only free memory, so no page cache (the endpoint's copy) is evicted.
fn back_memory(model_mib: u64) {
    let free = meminfo("MemFree").unwrap_or(0);
    let len = ((3 * model_mib + 512) * MIB).min(free.saturating_sub(2 << 30));
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if len == 0 {
        return;
    }
    match memmap2::MmapOptions::new().len(len).populate().map_anon() {
        Ok(map) => drop(map),
        Err(err) => eprintln!("warning: cannot back {len} bytes of memory: {err}"),
    }
}

fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
        })
        .unwrap_or(false)
}

/// A mount owned by the bench: the daemon runs in the foreground as our child.
struct Mount {
    path: PathBuf,
    child: Child,
    system: System,
}

impl Mount {
    fn start(
        fx: &Fixture,
        system: System,
        cache: Option<&Path>,
        tag: &str,
    ) -> Result<Mount, String> {
        // A fixed limit for modelfs: the default (keep 10% of the disk free) would make the
        // results depend on how full this machine's disk is.
        let cache = cache.map(|dir| (dir, "16GiB"));
        Mount::start_sized(fx, system, cache, tag, Some(MODELFS_METRICS_ADDR))
    }

    /// [`Mount::start`] with a cache directory and limit of the case's own; modelfs without
    /// one runs with no disk cache at all, and without `metrics` serves no metrics (mounts
    /// running side by side cannot share the address).
    fn start_sized(
        fx: &Fixture,
        system: System,
        cache: Option<(&Path, &str)>,
        tag: &str,
        metrics: Option<&str>,
    ) -> Result<Mount, String> {
        let path = fx.config.workdir.join(format!("mnt-{tag}"));
        if is_mounted(&path) {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        let log = fx.config.workdir.join(format!("{tag}.log"));
        let mut cmd = match system {
            System::Modelfs => {
                let mut cmd = Command::new(&fx.config.modelfs_bin);
                cmd.arg("mount")
                    .arg(format!("s3://{BUCKET}/{PREFIX}"))
                    .arg(&path)
                    .args(["--endpoint-url", &fx.server.endpoint_url()])
                    .args([
                        "--region",
                        "us-east-1",
                        "--force-path-style",
                        "--foreground",
                    ])
                    .args(["--memory-cache-size", &format!("{MODELFS_MEMORY_MIB}MiB")])
                    .arg("--log-file")
                    .arg(&log)
                    .args([
                        "--log-level",
                        &std::env::var("MODELFS_BENCH_LOG").unwrap_or_else(|_| "info".into()),
                    ]);
                if let Some((dir, size)) = cache {
                    cmd.arg("--cache-dir").arg(dir).args(["--cache-size", size]);
                }
                if let Some(addr) = metrics {
                    cmd.args(["--metrics-addr", addr]);
                }
                cmd
            }
            System::Mountpoint | System::MountpointCache => {
                let bin = fx
                    .config
                    .mount_s3
                    .as_ref()
                    .ok_or_else(|| fx.config.mount_s3_missing.clone())?;
                let mut cmd = Command::new(bin);
                cmd.arg(format!("s3://{BUCKET}/{PREFIX}/"))
                    .arg(&path)
                    .args(["--endpoint-url", &fx.server.endpoint_url()]);
                if let Some((cache, _)) = cache {
                    cmd.arg("--cache").arg(cache);
                }
                cmd
            }
            System::Limit | System::Local => unreachable!("not a mount"),
        };
        let out = File::create(fx.config.workdir.join(format!("{tag}.out")))
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.env("AWS_ACCESS_KEY_ID", fx.server.access_key())
            .env("AWS_SECRET_ACCESS_KEY", fx.server.secret_key())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "us-east-1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        pin_command(&mut cmd, &fx.cpus.client);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {system:?}: {e}"))?;
        let started = Instant::now();
        while !is_mounted(&path) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited before mounting: {status}",
                    system.name()
                ));
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err(format!("{} did not mount within 30 s", system.name()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Mount {
            path,
            child,
            system,
        })
    }

    /// CPU seconds (user + system) the daemon has used so far: steadier than wall time on a
    /// shared machine, and what a cold load costs on a node where the CPU is not free.
    fn cpu_seconds(&self) -> Option<f64> {
        modelfs_s3local::cpu::process_cpu_seconds(self.child.id())
    }

    /// Peak resident memory of the daemon so far (VmHWM), KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// Saves the daemon's metrics (GETs, cache hits per tier, …) as `<workdir>/<name>.metrics`
    /// so a run can be explained afterwards; a failure only loses the file.
    fn save_metrics(&self, fx: &Fixture, name: &str) {
        use std::io::{Read, Write};
        let fetch = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(MODELFS_METRICS_ADDR)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        };
        let path = fx.config.workdir.join(format!("{name}.metrics"));
        match fetch() {
            Ok(text) => {
                let _ = std::fs::write(&path, text);
            }
            Err(e) => eprintln!("warning: no metrics for {name}: {e}"),
        }
    }

    fn stop(mut self) {
        let _ = match self.system {
            System::Modelfs => Command::new(self.child_bin_hint())
                .arg("unmount")
                .arg(&self.path)
                .status(),
            _ => Command::new("umount").arg(&self.path).status(),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_bin_hint(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.child.id()))
            .unwrap_or_else(|_| PathBuf::from("modelfs"))
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    MmapLoad,
    Pread8,
    Seq1M,
    HeaderScan,
    Random64K,
    LsLR,
}

const WORKLOADS: [Workload; 6] = [
    Workload::MmapLoad,
    Workload::Pread8,
    Workload::Seq1M,
    Workload::HeaderScan,
    Workload::Random64K,
    Workload::LsLR,
];

impl Workload {
    fn id(self) -> &'static str {
        match self {
            Workload::MmapLoad => "mmap_load",
            Workload::Pread8 => "pread8x2m",
            Workload::Seq1M => "seq_1m",
            Workload::HeaderScan => "header_scan",
            Workload::Random64K => "random_64k",
            Workload::LsLR => "ls_lR",
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default)]
struct Outcome {
    bytes: u64,
    items: u64,
    completed: bool,
}

struct Deadline(Instant);

impl Deadline {
    fn passed(&self) -> bool {
        Instant::now() > self.0
    }
}

fn read_header(file: &File) -> std::io::Result<modelfs_s3local::models::Header> {
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)?;
    let n = u64::from_le_bytes(len);
    let mut buf = vec![0u8; 8 + n as usize];
    buf[..8].copy_from_slice(&len);
    file.read_exact_at(&mut buf[8..], 8)?;
    parse_safetensors_header(&buf).map_err(|e| std::io::Error::other(format!("{e:?}")))
}

/// safetensors `load_file`-style: mmap, then touch every page of each tensor, in name order.
fn mmap_load(path: &Path, dl: &Deadline) -> std::io::Result<Outcome> {
    let file = File::open(path)?;
    let header = read_header(&file)?;
    // SAFETY: read-only mapping of a read-only filesystem's file, unmapped before returning.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let mut tensors = header.tensors.clone();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Outcome::default();
    let mut sum = 0u64;
    for t in &tensors {
        let Range { start: a, end: b } = header.file_range(t);
        let mut off = a;
        while off < b {
            sum = sum.wrapping_add(map[off as usize] as u64);
            off += 4096;
            if (off - a) % (16 * MIB) == 0 && dl.passed() {
                out.bytes += off - a;
                std::hint::black_box(sum);
                return Ok(out);
            }
        }
        out.bytes += b - a;
        out.items += 1;
        if dl.passed() {
            std::hint::black_box(sum);
            return Ok(out);
        }
    }
    std::hint::black_box(sum);
    out.completed = true;
    Ok(out)
}

/// ComfyUI's dynamic loader: header, then 8 threads of 2 MiB preads over tensors in a
/// shuffled (model, not file) order.
fn pread8(path: &Path, dl: &Deadline) -> std::io::Result<Outcome> {
    let file = Arc::new(File::open(path)?);
    let header = read_header(&file)?;
    let mut ranges: Vec<Range<u64>> = header
        .tensors
        .iter()
        .map(|t| header.file_range(t))
        .collect();
    ranges.shuffle(&mut StdRng::seed_from_u64(42));
    let ranges = Arc::new(ranges);
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = dl.0;
    let threads: Vec<_> = (0..PREAD_THREADS)
        .map(|_| {
            let (file, ranges, next, bytes, stop) = (
                Arc::clone(&file),
                Arc::clone(&ranges),
                Arc::clone(&next),
                Arc::clone(&bytes),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = vec![0u8; PREAD_CHUNK as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(range) = ranges.get(i) else {
                        return Ok(());
                    };
                    let mut off = range.start;
                    while off < range.end {
                        let n = (range.end - off).min(PREAD_CHUNK) as usize;
                        file.read_exact_at(&mut buf[..n], off)?;
                        off += n as u64;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        if Instant::now() > deadline {
                            stop.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| std::io::Error::other("reader panicked"))??;
    }
    Ok(Outcome {
        bytes: bytes.load(Ordering::Relaxed),
        items: ranges.len() as u64,
        completed: !stop.load(Ordering::Relaxed),
    })
}

fn seq_1m(path: &Path, dl: &Deadline) -> std::io::Result<Outcome> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut out = Outcome::default();
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            out.completed = true;
            return Ok(out);
        }
        out.bytes += n as u64;
        if dl.passed() {
            return Ok(out);
        }
    }
}

fn header_scan(root: &Path, dl: &Deadline) -> std::io::Result<Outcome> {
    let mut out = Outcome::default();
    for i in 0..HEADER_FILES {
        let file = File::open(root.join(scan_rel(i)))?;
        let header = read_header(&file)?;
        out.bytes += header.data_start;
        out.items += 1;
        if dl.passed() {
            return Ok(out);
        }
    }
    out.completed = true;
    Ok(out)
}

fn random_ranges(file_len: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..RANDOM_READS)
        .map(|_| rng.gen_range(0..(file_len - RANDOM_READ_BYTES) / 4096) * 4096)
        .collect()
}

fn random_64k(path: &Path, dl: &Deadline) -> std::io::Result<Outcome> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; RANDOM_READ_BYTES as usize];
    let mut out = Outcome::default();
    for off in random_ranges(len) {
        file.read_exact_at(&mut buf, off)?;
        out.bytes += RANDOM_READ_BYTES;
        out.items += 1;
        if dl.passed() {
            return Ok(out);
        }
    }
    out.completed = true;
    Ok(out)
}

fn ls_lr(root: &Path) -> std::io::Result<Outcome> {
    let output = Command::new("ls")
        .arg("-lR")
        .arg(root.join("many"))
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "ls -lR failed: {}",
            output.status
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let items = text.lines().filter(|l| l.contains("obj-")).count() as u64;
    Ok(Outcome {
        bytes: 0,
        items,
        completed: items == LIST_OBJECTS as u64,
    })
}

fn run_workload(
    w: Workload,
    root: &Path,
    model_mib: u64,
    dl: &Deadline,
) -> std::io::Result<Outcome> {
    let big = root.join(big_rel(model_mib));
    match w {
        Workload::MmapLoad => mmap_load(&big, dl),
        Workload::Pread8 => pread8(&big, dl),
        Workload::Seq1M => seq_1m(&big, dl),
        Workload::HeaderScan => header_scan(root, dl),
        Workload::Random64K => random_64k(&big, dl),
        Workload::LsLR => ls_lr(root),
    }
}

// ---------------------------------------------------------------------------------------------
// The link limit: the same bytes straight from the endpoint into memory.

async fn get_range(s3: &aws_sdk_s3::Client, key: &str, a: u64, b: u64) -> Result<u64, String> {
    let resp = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .range(format!("bytes={a}-{}", b - 1))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let body = resp.body.collect().await.map_err(|e| format!("{e:?}"))?;
    Ok(body.into_bytes().len() as u64)
}

async fn parallel_gets(s3: &aws_sdk_s3::Client, key: &str, len: u64) -> Result<u64, String> {
    use futures::StreamExt;
    let parts: Vec<(u64, u64)> = (0..len.div_ceil(LIMIT_PART))
        .map(|i| (i * LIMIT_PART, ((i + 1) * LIMIT_PART).min(len)))
        .collect();
    let results: Vec<Result<u64, String>> = futures::stream::iter(parts)
        .map(|(a, b)| get_range(s3, key, a, b))
        .buffer_unordered(LIMIT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().sum()
}

fn run_limit(fx: &Fixture, w: Workload, model_mib: u64) -> Result<Outcome, String> {
    let s3 = &fx.s3;
    let big_key = format!("{PREFIX}/{}", big_rel(model_mib));
    let big_len = fx
        .server
        .store()
        .head(BUCKET, &big_key)
        .ok_or("big model missing")?
        .size;
    fx.rt.block_on(async {
        match w {
            Workload::MmapLoad | Workload::Pread8 | Workload::Seq1M => {
                let bytes = parallel_gets(s3, &big_key, big_len).await?;
                Ok(Outcome {
                    bytes,
                    items: 1,
                    completed: bytes == big_len,
                })
            }
            Workload::HeaderScan => {
                // One GET per file of exactly the header, one file after the other.
                let mut out = Outcome::default();
                for i in 0..HEADER_FILES {
                    let key = format!("{PREFIX}/{}", scan_rel(i));
                    let path = fx.local.join(scan_rel(i));
                    let header = read_header(&File::open(path).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                    out.bytes += get_range(s3, &key, 0, header.data_start).await?;
                    out.items += 1;
                }
                out.completed = true;
                Ok(out)
            }
            Workload::Random64K => {
                let mut out = Outcome::default();
                for off in random_ranges(big_len) {
                    out.bytes += get_range(s3, &big_key, off, off + RANDOM_READ_BYTES).await?;
                    out.items += 1;
                }
                out.completed = true;
                Ok(out)
            }
            Workload::LsLR => {
                let mut items = 0u64;
                let mut token = None;
                loop {
                    let resp = s3
                        .list_objects_v2()
                        .bucket(BUCKET)
                        .prefix(format!("{PREFIX}/many/"))
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    items += resp.contents().len() as u64;
                    token = resp.next_continuation_token().map(str::to_string);
                    if token.is_none() {
                        break;
                    }
                }
                Ok(Outcome {
                    bytes: 0,
                    items,
                    completed: items == LIST_OBJECTS as u64,
                })
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cold,
    Warm,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug)]
struct Measured {
    seconds: f64,
    outcome: Outcome,
    peak_rss_kib: Option<u64>,
    /// CPU seconds the daemon spent in the measured run (mounts only).
    daemon_cpu_s: Option<f64>,
    /// CPU seconds the endpoint's threads spent in the measured run.
    endpoint_cpu_s: Option<f64>,
    /// Seconds of every run when the case was repeated (this one is their median).
    runs: Vec<f64>,
    /// The endpoint's CPU seconds in each of those runs, in the same order: a run that met
    /// a busy endpoint shows here.
    endpoint_runs: Vec<Option<f64>>,
}

impl Measured {
    /// A run of no daemon (the link limit, the local file): its time and outcome only.
    fn without_daemon(run: Timed) -> Measured {
        Measured {
            seconds: run.seconds,
            outcome: run.outcome,
            peak_rss_kib: None,
            daemon_cpu_s: None,
            endpoint_cpu_s: run.endpoint_cpu_s,
            runs: Vec::new(),
            endpoint_runs: Vec::new(),
        }
    }
}

/// One measured run's time and outcome, and what serving it cost the endpoint.
struct Timed {
    seconds: f64,
    outcome: Outcome,
    /// CPU seconds of the endpoint's threads during the run: near `seconds`, its core was
    /// saturated and the run measured the endpoint.
    endpoint_cpu_s: Option<f64>,
}

/// Times one measured run against `fx`'s endpoint. With `MODELFS_BENCH_MARKS` set, prints the
/// run's start and end as Unix times to stderr, so a system-wide profile (`perf record -k
/// CLOCK_REALTIME`) can be cut to the measured window.
fn timed(fx: &Fixture, f: impl FnOnce() -> Result<Outcome, String>) -> Result<Timed, String> {
    let marks = std::env::var_os("MODELFS_BENCH_MARKS").is_some();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let endpoint_before = fx.server.cpu_seconds();
    let (started, unix_start) = (Instant::now(), unix_now());
    let outcome = f();
    let seconds = started.elapsed().as_secs_f64();
    let endpoint_cpu_s = fx
        .server
        .cpu_seconds()
        .zip(endpoint_before)
        .map(|(a, b)| a - b);
    if marks {
        eprintln!("measured window: {unix_start:.6} {:.6}", unix_now());
    }
    Ok(Timed {
        seconds,
        outcome: outcome?,
        endpoint_cpu_s,
    })
}

fn fresh_dir(fx: &Fixture, name: &str) -> PathBuf {
    let dir = fx.config.workdir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cache dir");
    dir
}

/// `MODELFS_BENCH_HOLD_S=N`: keep each modelfs mount for N seconds after its measurement, to
/// look at it from another shell while tuning.
fn hold_for_inspection(path: &Path) {
    let seconds = env_u64("MODELFS_BENCH_HOLD_S", 0);
    if seconds > 0 {
        eprintln!("holding {} for {seconds} s", path.display());
        std::thread::sleep(Duration::from_secs(seconds));
    }
}

/// Runs one case once: mounts as the case needs, measures, unmounts.
fn run_case(
    fx: &Fixture,
    system: System,
    mode: Mode,
    w: Workload,
    mib: u64,
) -> Result<Measured, String> {
    let io = |e: std::io::Error| e.to_string();
    match (system, mode) {
        (System::Limit, _) => {
            let _resident = fx.endpoint_resident(w, mib);
            back_memory(mib);
            timed(fx, || run_limit(fx, w, mib)).map(Measured::without_daemon)
        }
        (System::Local, _) => {
            if mode == Mode::Warm {
                // Warm: the page cache dropped, the bytes on local disk.
                drop_caches();
            }
            back_memory(mib);
            timed(fx, || {
                run_workload(w, &fx.local, mib, &fx.deadline()).map_err(io)
            })
            .map(Measured::without_daemon)
        }
        (System::Modelfs, _) => {
            let cache = fresh_dir(fx, "cache-modelfs");
            let mut mount = Mount::start(fx, system, Some(&cache), "modelfs")?;
            if mode == Mode::Warm {
                // Fill the cache with the same pattern, then remount on the kept cache.
                let fill = run_workload(w, &mount.path, mib, &fx.deadline());
                mount.stop();
                fill.map_err(io)?;
                mount = Mount::start(fx, system, Some(&cache), "modelfs")?;
            }
            measure_mount(fx, mount, w, mib, |mount| {
                mount.save_metrics(fx, &format!("modelfs-{}-{}-{mib}", w.id(), mode.name()));
                hold_for_inspection(&mount.path);
            })
        }
        (System::Mountpoint | System::MountpointCache, _) => {
            let cache = (system == System::MountpointCache).then(|| fresh_dir(fx, "cache-mp"));
            let mount = Mount::start(fx, system, cache.as_deref(), "mountpoint")?;
            if mode == Mode::Warm {
                // mount-s3 wipes its cache at mount and exit: warm means the same mount, after
                // one pass that filled its cache (a sequential read for whole-file patterns).
                let fill_w = match w {
                    Workload::MmapLoad | Workload::Pread8 => Workload::Seq1M,
                    other => other,
                };
                let fill = run_workload(fill_w, &mount.path, mib, &fx.deadline());
                if let Err(e) = fill {
                    mount.stop();
                    return Err(e.to_string());
                }
            }
            measure_mount(fx, mount, w, mib, |_| {})
        }
    }
}

/// Measures `w` on `mount` from a dropped page cache, with the daemon's CPU time and peak
/// memory, then unmounts; `before_unmount` sees the mount after the measured run.
fn measure_mount(
    fx: &Fixture,
    mount: Mount,
    w: Workload,
    mib: u64,
    before_unmount: impl FnOnce(&Mount),
) -> Result<Measured, String> {
    drop_caches();
    let resident = fx.endpoint_resident(w, mib);
    back_memory(mib);
    let cpu_before = mount.cpu_seconds();
    let result = timed(fx, || {
        run_workload(w, &mount.path, mib, &fx.deadline()).map_err(|e| e.to_string())
    });
    let daemon_cpu_s = mount.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let peak_rss_kib = mount.peak_rss_kib();
    drop(resident);
    before_unmount(&mount);
    mount.stop();
    let run = result?;
    Ok(Measured {
        seconds: run.seconds,
        outcome: run.outcome,
        peak_rss_kib,
        daemon_cpu_s,
        endpoint_cpu_s: run.endpoint_cpu_s,
        runs: Vec::new(),
        endpoint_runs: Vec::new(),
    })
}

/// The systems a workload case compares. Cold `cat` also runs mountpoint-s3 `--cache`: the
/// daemon CPU of filling a disk cache, beside modelfs filling its own.
fn systems_for(mode: Mode, w: Workload) -> Vec<System> {
    match mode {
        Mode::Cold if w == Workload::Seq1M => vec![
            System::Modelfs,
            System::Mountpoint,
            System::MountpointCache,
            System::Limit,
        ],
        Mode::Cold => vec![System::Modelfs, System::Mountpoint, System::Limit],
        Mode::Warm => vec![System::Modelfs, System::MountpointCache, System::Local],
    }
}

// ---------------------------------------------------------------------------------------------
// Caches smaller than the models (issue 24)

/// Each model of the alternation is loaded this often.
const ALTERNATE_LOADS: usize = 4;

/// The sizes of the small-cache scenarios, in MiB, from a model of `mib` (issue 24's node at
/// [`SMALL_CACHE_BASE_MIB`]: a 2 GiB checkpoint, `--cache-dir` with 256 MiB; two 1 GiB models
/// through 1.5 GiB).
struct SmallCacheSizes {
    /// The model a small cache cannot hold, and that cache.
    model: u64,
    cache: u64,
    /// The two alternated models' size, and the cache that holds one of them.
    alternate_model: u64,
    alternate_cache: u64,
}

impl SmallCacheSizes {
    fn new(mib: u64) -> SmallCacheSizes {
        SmallCacheSizes {
            model: 2 * mib,
            cache: (mib / 4).max(1),
            alternate_model: mib,
            alternate_cache: mib * 3 / 2,
        }
    }
}

/// The second model of the alternation (the first is the big model).
fn alternate_rel(mib: u64) -> String {
    format!("alt/model-b-{mib}.safetensors")
}

/// Seeds the models these scenarios load that the fixture does not hold yet (in the store
/// only: no case reads a local copy of them).
fn seed_small_cache_models(fx: &Fixture) {
    let sizes = SmallCacheSizes::new(SMALL_CACHE_BASE_MIB);
    let alternate = sizes.alternate_model;
    for (rel, spec) in [
        (big_rel(sizes.model), big_spec(sizes.model)),
        (big_rel(alternate), big_spec(alternate)),
        (
            alternate_rel(alternate),
            SafetensorsSpec::new(2000 + alternate, alternate * MIB),
        ),
    ] {
        let key = format!("{PREFIX}/{rel}");
        if fx.server.store().head(BUCKET, &key).is_none() {
            eprintln!("seeding {key}");
            fx.server
                .store()
                .put_from_reader(BUCKET, &key, SafetensorsReader::new(&spec))
                .expect("seed a model");
        }
    }
}

/// What a run of loads did, summed over its loads.
#[derive(Clone, Debug, Default)]
struct Loads {
    seconds: f64,
    /// Bytes the endpoint sent during the loads.
    s3_bytes: u64,
    /// Sizes of the files loaded.
    file_bytes: u64,
    outcome: Outcome,
    loads: u64,
}

/// Mounts modelfs with a disk cache limited to `cache_size` (`None`: no `--cache-dir`), then
/// loads `rels` one after the other as safetensors' `load_file` does (mmap, name order), each
/// cold: page cache dropped, the objects resident at the endpoint, memory backed. Time and S3
/// bytes are summed over the loads, not the settling between them. A load cut at the deadline
/// ends the run.
fn modelfs_loads(fx: &Fixture, cache_size: Option<&str>, rels: &[String]) -> Result<Loads, String> {
    let dir = fresh_dir(fx, "cache-small");
    let cache = cache_size.map(|size| (dir.as_path(), size));
    let mount = Mount::start_sized(
        fx,
        System::Modelfs,
        cache,
        "modelfs",
        Some(MODELFS_METRICS_ADDR),
    )?;
    let mut run = Loads {
        outcome: Outcome {
            completed: true,
            ..Outcome::default()
        },
        ..Loads::default()
    };
    for rel in rels {
        let path = mount.path.join(rel);
        let file_bytes = std::fs::metadata(&path)
            .map(|meta| meta.len())
            .map_err(|e| e.to_string());
        drop_caches();
        let resident = fx.resident(std::slice::from_ref(rel));
        back_memory(file_bytes.as_ref().map_or(0, |len| len / MIB));
        fx.server.reset_stats();
        let deadline = fx.deadline();
        let result = file_bytes.and_then(|len| {
            let run = timed(fx, || {
                mmap_load(&path, &deadline).map_err(|e| e.to_string())
            })?;
            Ok((len, run.seconds, run.outcome))
        });
        drop(resident);
        run.s3_bytes += fx.server.stats().bytes_sent;
        match result {
            Ok((len, seconds, outcome)) => {
                run.seconds += seconds;
                run.file_bytes += len;
                run.outcome.bytes += outcome.bytes;
                run.outcome.items += outcome.items;
                run.loads += 1;
                if !outcome.completed {
                    run.outcome.completed = false;
                    break;
                }
            }
            Err(e) => {
                mount.stop();
                return Err(e);
            }
        }
    }
    let tag = cache_size.unwrap_or("none");
    mount.save_metrics(fx, &format!("modelfs-small-cache-{tag}-{}", rels.len()));
    mount.stop();
    Ok(run)
}

fn json_loads(
    section: &str,
    system: &str,
    mib: u64,
    r: &Result<Loads, String>,
) -> serde_json::Value {
    match r {
        Ok(m) => serde_json::json!({
            "section": section, "workload": "mmap_load", "mode": "cold", "system": system,
            "model_mib": mib, "seconds": m.seconds, "bytes": m.outcome.bytes,
            "items": m.outcome.items, "completed": m.outcome.completed,
            "s3_bytes": m.s3_bytes, "file_bytes": m.file_bytes, "loads": m.loads,
        }),
        Err(e) => serde_json::json!({
            "section": section, "workload": "mmap_load", "mode": "cold", "system": system,
            "model_mib": mib, "error": e,
        }),
    }
}

/// A cold `load_file` of a model with a cache an eighth of its size, no cache and a large
/// cache; `repeat` runs each, interleaved, the run of median time kept.
fn small_cache_cases(fx: &Fixture, record: &mut dyn FnMut(serde_json::Value)) {
    let sizes = SmallCacheSizes::new(SMALL_CACHE_BASE_MIB);
    let rels = [big_rel(sizes.model)];
    let small = format!("{}MiB", sizes.cache);
    let systems: [(String, Option<&str>); 3] = [
        (format!("modelfs, {} MiB cache", sizes.cache), Some(&small)),
        ("modelfs, no cache".to_string(), None),
        ("modelfs, 16 GiB cache".to_string(), Some("16GiB")),
    ];
    let mut runs: Vec<Vec<Loads>> = systems.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<Option<String>> = systems.iter().map(|_| None).collect();
    for _ in 0..fx.config.repeat.max(1) {
        for (i, (_, size)) in systems.iter().enumerate() {
            if failed[i].is_none() {
                match modelfs_loads(fx, *size, &rels) {
                    Ok(run) => runs[i].push(run),
                    Err(e) => failed[i] = Some(e),
                }
            }
        }
    }
    for (((name, _), mut done), failed) in systems.iter().zip(runs).zip(failed) {
        let result = match failed {
            Some(e) => Err(e),
            None => {
                done.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
                Ok(done.swap_remove(done.len() / 2))
            }
        };
        record(json_loads("small_cache", name, sizes.model, &result));
    }
}

/// Two models loaded alternately, `ALTERNATE_LOADS` times each, through a cache that holds
/// one of them and through no cache: total time and S3 bytes.
fn alternate_cases(fx: &Fixture, record: &mut dyn FnMut(serde_json::Value)) {
    let sizes = SmallCacheSizes::new(SMALL_CACHE_BASE_MIB);
    let mib = sizes.alternate_model;
    let pair = [big_rel(mib), alternate_rel(mib)];
    let rels: Vec<String> = (0..ALTERNATE_LOADS).flat_map(|_| pair.clone()).collect();
    let cache = format!("{}MiB", sizes.alternate_cache);
    for (name, size) in [
        (
            format!("modelfs, {} MiB cache", sizes.alternate_cache),
            Some(cache.as_str()),
        ),
        ("modelfs, no cache".to_string(), None),
    ] {
        let result = modelfs_loads(fx, size, &rels);
        record(json_loads("alternate", &name, mib, &result));
    }
}

// ---------------------------------------------------------------------------------------------
// How cost grows: whole-model loads at larger sizes (issue 22)

/// The workloads of the cost section: the three ways a model is loaded whole.
const COST_WORKLOADS: [Workload; 3] = [Workload::Seq1M, Workload::MmapLoad, Workload::Pread8];

/// Disk a cold cost cell of `mib` MiB writes: the model in the store unless seeded already,
/// and modelfs' cache of it (mountpoint-s3 runs without a cache here, and no cell reads a
/// local copy).
fn cost_disk_need(fx: &Fixture, mib: u64) -> u64 {
    let key = format!("{PREFIX}/{}", big_rel(mib));
    let seeded = fx.server.store().head(BUCKET, &key).is_some();
    let store = if seeded { 0 } else { mib * MIB };
    store + mib * MIB + DISK_MARGIN
}

/// One unmeasured link-limit `cat` of the `mib` MiB model: the first run after the object is
/// seeded met the endpoint's slow copies (4-5x its CPU per GiB) in about half the tries, and
/// never a later run.
fn warm_up_endpoint(fx: &Fixture, mib: u64, section: &str) {
    if let Err(e) = run_case(fx, System::Limit, Mode::Cold, Workload::Seq1M, mib) {
        eprintln!("{section}, {mib} MiB: warm-up run failed: {e}");
    }
}

/// Caches earlier cases left behind, removed before a size that needs the room.
fn remove_leftover_caches(fx: &Fixture) {
    for dir in ["cache-modelfs", "cache-mp", "cache-small"] {
        let _ = std::fs::remove_dir_all(fx.config.workdir.join(dir));
    }
}

/// Cold `cat`, `load_file` and 8 x 2 MiB preads at each cost size, one run per cell, after one
/// unmeasured link-limit `cat` of the size's model. A cell the
/// workload tables measured in this run (same size, same cold case, median of their runs) is
/// not run again: the report takes it from there. A size the disk cannot hold is skipped with
/// the reason.
fn cost_cases(
    fx: &Fixture,
    wanted: &dyn Fn(System) -> bool,
    record: &mut dyn FnMut(serde_json::Value),
) {
    for &mib in &fx.config.cost_mib {
        let todo: Vec<Workload> = COST_WORKLOADS
            .into_iter()
            .filter(|w| mib != fx.config.model_mib || !fx.config.chosen(w.id()))
            .collect();
        if todo.is_empty() {
            continue;
        }
        remove_leftover_caches(fx);
        let need = cost_disk_need(fx, mib);
        let free = free_bytes(&fx.config.workdir).unwrap_or(0);
        if free < need {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            let why = format!(
                "not run: needs {:.1} GiB free in {}, had {:.1}",
                gib(need),
                fx.config.workdir.display(),
                gib(free)
            );
            eprintln!("cost, {mib} MiB: {why}");
            record(serde_json::json!({
                "section": "cost", "workload": "all", "mode": "cold", "system": "all",
                "model_mib": mib, "skipped": why,
            }));
            continue;
        }
        seed_big(&fx.server, None, mib);
        warm_up_endpoint(fx, mib, "cost");
        for w in todo {
            for system in [System::Modelfs, System::Mountpoint, System::Limit]
                .into_iter()
                .filter(|&s| wanted(s))
            {
                let r = run_case(fx, system, Mode::Cold, w, mib);
                record(json_case("cost", w.id(), Mode::Cold, system, mib, &r));
            }
        }
        // An 8 GiB cache left behind would take the next size's room.
        remove_leftover_caches(fx);
    }
}

// ---------------------------------------------------------------------------------------------
// Request economics at fleet scale (issue 22)

/// What one fleet run did: every mount cold-loads the same model at the same time.
#[derive(Clone, Debug, Default)]
struct FleetRun {
    /// Until the last load ended.
    seconds: f64,
    /// Bytes the loaders read, all mounts together.
    delivered: u64,
    /// Whether every load finished before the deadline.
    completed: bool,
    /// Requests the endpoint answered during the loads.
    gets: u64,
    heads: u64,
    lists: u64,
    /// Body bytes the endpoint sent.
    s3_bytes: u64,
    /// The most GETs counted between two samples at most 1 s apart, per second.
    peak_gets_per_s: f64,
    /// CPU seconds of all the daemons together.
    daemon_cpu_s: f64,
    /// The largest daemon's peak RSS.
    peak_rss_kib: Option<u64>,
}

/// The highest count of events within any window of `window`, from `(time, running count)`
/// samples, as a rate per `window`.
fn peak_in_window(samples: &[(Instant, u64)], window: Duration) -> f64 {
    let mut peak = 0;
    let mut end = 0;
    for (start, &(t0, c0)) in samples.iter().enumerate() {
        end = end.max(start);
        while end + 1 < samples.len() && samples[end + 1].0 - t0 <= window {
            end += 1;
        }
        peak = peak.max(samples[end].1 - c0);
    }
    peak as f64
}

/// Mounts `system` [`FLEET_MOUNTS`] times (modelfs each on a cache directory of its own) and
/// cold-loads the model of `mib` MiB through every mount at once, the way safetensors'
/// `load_file` does, while a thread samples the endpoint's GET counter. Unmounts and removes
/// the caches whatever happened.
fn fleet_case(fx: &Fixture, system: System, mib: u64) -> Result<FleetRun, String> {
    let cache_dir = |i: usize| fx.config.workdir.join(format!("fleet-cache-{i}"));
    let mut mounts = Vec::new();
    let mut started = Ok(());
    for i in 0..FLEET_MOUNTS {
        let cache = (system == System::Modelfs).then(|| fresh_dir(fx, &format!("fleet-cache-{i}")));
        let cache = cache.as_deref().map(|dir| (dir, "16GiB"));
        match Mount::start_sized(fx, system, cache, &format!("fleet-{i}"), None) {
            Ok(mount) => mounts.push(mount),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = started.and_then(|()| fleet_load(fx, &mounts, &big_rel(mib), mib));
    for mount in mounts {
        mount.stop();
    }
    for i in 0..FLEET_MOUNTS {
        let _ = std::fs::remove_dir_all(cache_dir(i));
    }
    result
}

fn fleet_load(fx: &Fixture, mounts: &[Mount], rel: &str, mib: u64) -> Result<FleetRun, String> {
    drop_caches();
    let _resident = fx.resident(&[rel.to_string()]);
    back_memory(mib * mounts.len() as u64);
    let cpu_before: Vec<Option<f64>> = mounts.iter().map(Mount::cpu_seconds).collect();
    let before = fx.server.stats();
    let deadline = Instant::now() + fx.config.deadline;
    let done = AtomicBool::new(false);
    let server = &fx.server;
    let (samples, loads, seconds) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = vec![(Instant::now(), server.stats().get_object)];
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(FLEET_SAMPLE);
                samples.push((Instant::now(), server.stats().get_object));
            }
            samples
        });
        let started = Instant::now();
        let loaders: Vec<_> = mounts
            .iter()
            .map(|mount| {
                let path = mount.path.join(rel);
                scope.spawn(move || mmap_load(&path, &Deadline(deadline)))
            })
            .collect();
        let loads: Vec<std::io::Result<Outcome>> = loaders
            .into_iter()
            .map(|loader| {
                loader
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("loader panicked")))
            })
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap_or_default(), loads, seconds)
    });
    let after = fx.server.stats();
    let mut run = FleetRun {
        seconds,
        completed: true,
        gets: after.get_object - before.get_object,
        heads: after.head_object - before.head_object,
        lists: after.list_objects_v2 - before.list_objects_v2,
        s3_bytes: after.bytes_sent - before.bytes_sent,
        peak_gets_per_s: peak_in_window(&samples, Duration::from_secs(1)),
        peak_rss_kib: mounts.iter().filter_map(Mount::peak_rss_kib).max(),
        ..FleetRun::default()
    };
    for (mount, before) in mounts.iter().zip(cpu_before) {
        if let Some((now, before)) = mount.cpu_seconds().zip(before) {
            run.daemon_cpu_s += now - before;
        }
    }
    for load in loads {
        let outcome = load.map_err(|e| e.to_string())?;
        run.delivered += outcome.bytes;
        run.completed &= outcome.completed;
    }
    Ok(run)
}

/// The fleet for modelfs and, when it is there, mountpoint-s3 (no cache: its cache is per
/// node like ours, and changes no request of a cold load).
fn fleet_cases(
    fx: &Fixture,
    wanted: &dyn Fn(System) -> bool,
    record: &mut dyn FnMut(serde_json::Value),
) {
    let mib = fx.config.fleet_mib;
    seed_big(&fx.server, None, mib);
    for system in [System::Modelfs, System::Mountpoint]
        .into_iter()
        .filter(|&s| wanted(s))
    {
        let mut case = serde_json::json!({
            "section": "fleet", "workload": "mmap_load", "mode": "cold",
            "system": system.name(), "model_mib": mib, "mounts": FLEET_MOUNTS,
        });
        let measured = match fleet_case(fx, system, mib) {
            Ok(f) => serde_json::json!({
                "seconds": f.seconds, "bytes": f.delivered, "items": FLEET_MOUNTS,
                "completed": f.completed, "gets": f.gets, "heads": f.heads, "lists": f.lists,
                "s3_bytes": f.s3_bytes, "peak_gets_per_s": f.peak_gets_per_s,
                "daemon_cpu_s": f.daemon_cpu_s, "peak_rss_kib": f.peak_rss_kib,
            }),
            Err(e) => serde_json::json!({ "error": e }),
        };
        if let (Some(case), serde_json::Value::Object(measured)) = (case.as_object_mut(), measured)
        {
            case.extend(measured);
        }
        record(case);
    }
}

// ---------------------------------------------------------------------------------------------
// How long a run takes

/// A rough duration of the run `config` asks for, printed at the start: for every measured
/// run, the preparation before it (sync and settle, the endpoint's copy read back, memory
/// backed, a mount) and the run itself, at rates seen on a 2-core VM (GiB/s; a run is cut at
/// the deadline).
fn estimate_seconds(config: &Config) -> f64 {
    let gib = |mib: u64| mib as f64 / 1024.0;
    let cap = config.deadline.as_secs_f64();
    let prepare = |mib: u64| DISK_SETTLE_S as f64 + 6.0 + 0.7 * gib(mib) + 0.3 * (3.0 * gib(mib));
    let read = |system: System, w: Workload, mode: Mode, mib: u64| -> f64 {
        let rate = match (system, mode, w) {
            (System::Mountpoint | System::MountpointCache, Mode::Cold, Workload::MmapLoad) => 0.08,
            (System::Mountpoint | System::MountpointCache, Mode::Cold, Workload::Pread8) => 0.01,
            (System::Mountpoint | System::MountpointCache, Mode::Cold, _) => 0.5,
            (System::MountpointCache, Mode::Warm, Workload::Pread8) => 0.3,
            (_, Mode::Cold, _) => 0.9,
            (_, Mode::Warm, _) => 0.6,
        };
        let seconds = match w {
            Workload::HeaderScan => 1.0,
            Workload::Random64K if mode == Mode::Cold => 6.0,
            Workload::Random64K => 0.5,
            Workload::LsLR => 4.0,
            _ => gib(mib) / rate,
        };
        seconds.min(cap)
    };
    let mut total = 0.0;
    let mib = config.model_mib;
    for w in WORKLOADS.into_iter().filter(|w| config.chosen(w.id())) {
        let resident = match w {
            Workload::HeaderScan => HEADER_FILES as u64 * HEADER_FILE_BYTES / MIB,
            Workload::LsLR => 0,
            _ => mib,
        };
        for mode in [Mode::Cold, Mode::Warm] {
            for system in systems_for(mode, w) {
                let fill = match (mode, system) {
                    (Mode::Warm, System::Modelfs) => read(system, w, Mode::Cold, mib) + 2.0,
                    (Mode::Warm, System::MountpointCache) => {
                        read(system, Workload::Seq1M, Mode::Cold, mib)
                    }
                    _ => 0.0,
                };
                let run = read(system, w, mode, mib);
                // A run cut at the deadline ends its system's repetitions.
                let runs = if run >= cap { 1 } else { config.repeat.max(1) };
                total += (prepare(resident) + fill + run) * runs as f64;
            }
        }
    }
    if config.chosen("cost") {
        // Sizes the disk cannot hold are skipped (`cost_cases`).
        let free = free_bytes(&config.workdir)
            .or_else(|| free_bytes(Path::new("/tmp")))
            .unwrap_or(0);
        for &size in config.cost_mib.iter().filter(|&&mib| 2 * mib * MIB < free) {
            for w in COST_WORKLOADS {
                if size == mib && config.chosen(w.id()) {
                    continue;
                }
                for system in [System::Modelfs, System::Mountpoint, System::Limit] {
                    total += prepare(size) + read(system, w, Mode::Cold, size);
                }
            }
        }
    }
    let small = SmallCacheSizes::new(SMALL_CACHE_BASE_MIB);
    if config.chosen("small_cache") {
        total +=
            3.0 * config.repeat.max(1) as f64 * (prepare(small.model) + gib(small.model) / 0.5);
    }
    if config.chosen("alternate") {
        let loads = 2.0 * 2.0 * ALTERNATE_LOADS as f64;
        total += loads * (prepare(small.alternate_model) + gib(small.alternate_model) / 0.5);
    }
    if config.chosen("fleet") {
        let fleet = config.fleet_mib * FLEET_MOUNTS as u64;
        total += 2.0 * (prepare(fleet) + 10.0 + (gib(fleet) / 0.3).min(cap));
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Report mode: every case once, JSON out.

fn json_case(
    section: &str,
    w: &str,
    mode: Mode,
    system: System,
    mib: u64,
    r: &Result<Measured, String>,
) -> serde_json::Value {
    let mode = mode.name();
    match r {
        Ok(m) => serde_json::json!({
            "section": section, "workload": w, "mode": mode, "system": system.name(),
            "model_mib": mib, "seconds": m.seconds, "bytes": m.outcome.bytes,
            "items": m.outcome.items, "completed": m.outcome.completed,
            "peak_rss_kib": m.peak_rss_kib, "daemon_cpu_s": m.daemon_cpu_s,
            "endpoint_cpu_s": m.endpoint_cpu_s, "runs": m.runs,
            "endpoint_runs": m.endpoint_runs,
        }),
        Err(e) => serde_json::json!({
            "section": section, "workload": w, "mode": mode, "system": system.name(),
            "model_mib": mib, "error": e,
        }),
    }
}

/// Runs one workload case for each of `systems`, `repeat` times, interleaved (A B A B …, so
/// a shared machine's drift hits every system alike), and keeps each system's run of median
/// time, with the highest peak RSS of its runs and every run's time. A failed run, or one cut
/// at the deadline, ends that system's repetitions and is its result.
fn run_interleaved(
    fx: &Fixture,
    systems: &[System],
    mode: Mode,
    w: Workload,
    mib: u64,
    repeat: usize,
) -> Vec<(System, Result<Measured, String>)> {
    let mut runs: Vec<Vec<Measured>> = systems.iter().map(|_| Vec::new()).collect();
    let mut last: Vec<Option<Result<Measured, String>>> = systems.iter().map(|_| None).collect();
    for _ in 0..repeat.max(1) {
        for (i, &system) in systems.iter().enumerate() {
            if last[i].is_some() {
                continue;
            }
            match run_case(fx, system, mode, w, mib) {
                Ok(m) if m.outcome.completed => runs[i].push(m),
                other => last[i] = Some(other),
            }
        }
    }
    systems
        .iter()
        .zip(runs.into_iter().zip(last))
        .map(|(&system, (mut done, last))| {
            let result = match last {
                Some(result) => result,
                None => {
                    let times: Vec<f64> = done.iter().map(|m| m.seconds).collect();
                    let endpoint: Vec<Option<f64>> =
                        done.iter().map(|m| m.endpoint_cpu_s).collect();
                    let peak = done.iter().filter_map(|m| m.peak_rss_kib).max();
                    done.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
                    let mut median = done.swap_remove(done.len() / 2);
                    median.peak_rss_kib = peak;
                    median.runs = times;
                    median.endpoint_runs = endpoint;
                    Ok(median)
                }
            };
            (system, result)
        })
        .collect()
}

fn cmd_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn report_mode(out_path: &Path) {
    let fx = Fixture::start(Config::from_env());
    let mut cases = Vec::new();
    let mut record = |v: serde_json::Value| {
        eprintln!("{v}");
        cases.push(v);
        let doc = serde_json::json!({ "meta": meta(&fx), "cases": cases.clone() });
        std::fs::write(out_path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write json");
    };
    // MODELFS_BENCH_SYSTEMS=modelfs,link limit: only those systems (quick comparisons while
    // tuning; a report for the docs runs them all).
    let systems: Option<Vec<String>> = std::env::var("MODELFS_BENCH_SYSTEMS")
        .ok()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let wanted = |system: System| {
        systems
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == system.name()))
    };
    let mib = fx.config.model_mib;
    if WORKLOADS.iter().any(|w| fx.config.chosen(w.id())) {
        warm_up_endpoint(&fx, mib, "workloads");
    }
    for w in WORKLOADS {
        if !fx.config.chosen(w.id()) {
            continue;
        }
        for mode in [Mode::Cold, Mode::Warm] {
            let chosen: Vec<System> = systems_for(mode, w)
                .into_iter()
                .filter(|&s| wanted(s))
                .collect();
            for (system, r) in run_interleaved(&fx, &chosen, mode, w, mib, fx.config.repeat) {
                record(json_case("workloads", w.id(), mode, system, mib, &r));
            }
        }
    }
    let chosen = |case: &str| fx.config.chosen(case);
    if wanted(System::Modelfs) && (chosen("small_cache") || chosen("alternate")) {
        seed_small_cache_models(&fx);
        if chosen("small_cache") {
            small_cache_cases(&fx, &mut record);
        }
        if chosen("alternate") {
            alternate_cases(&fx, &mut record);
        }
    }
    if chosen("cost") {
        cost_cases(&fx, &wanted, &mut record);
    }
    if chosen("fleet") {
        fleet_cases(&fx, &wanted, &mut record);
    }
}

fn meta(fx: &Fixture) -> serde_json::Value {
    let modelfs_version = cmd_output(&fx.config.modelfs_bin.to_string_lossy(), &["--version"]);
    serde_json::json!({
        "date": cmd_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "kernel": cmd_output("uname", &["-r"]),
        "cores": fx.cpus.count(),
        "cpu": cmd_output("sh", &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]),
        "memory": cmd_output("sh", &["-c", "grep MemTotal /proc/meminfo | awk '{print $2\" kB\"}'"]),
        "shaping": fx.shaping.describe(),
        "modelfs": modelfs_version,
        "git": cmd_output("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]),
        "mountpoint": match &fx.config.mount_s3 {
            Some(p) => format!("mountpoint-s3-fs 0.10.0 (mount-s3 1.23 engine) via {}", p.display()),
            None => format!("NOT MEASURED: {}", fx.config.mount_s3_missing),
        },
        "model_mib": fx.config.model_mib,
        "pinning": fx.cpus.describe(),
        "estimate_s": estimate_seconds(&fx.config),
        "elapsed_s": fx.started.elapsed().as_secs_f64(),
        "fleet_mounts": FLEET_MOUNTS,
        "cost_mib": if fx.config.chosen("cost") { fx.config.cost_mib.clone() } else { Vec::new() },
        "modelfs_memory_mib": MODELFS_MEMORY_MIB,
        "deadline_s": fx.config.deadline.as_secs(), "repeat": fx.config.repeat,
        "limit": format!("{LIMIT_CONCURRENCY} parallel ranged GETs of {} MiB into memory (aws-sdk-s3); header scan, random reads and listing: the same requests, one after the other", LIMIT_PART / MIB),
        "header_files": HEADER_FILES, "header_file_mib": HEADER_FILE_BYTES / MIB,
        "list_objects": LIST_OBJECTS, "random_reads": RANDOM_READS,
    })
}

// ---------------------------------------------------------------------------------------------
// Criterion mode

fn criterion_benches(c: &mut Criterion) {
    let fx = Fixture::start(Config::from_env());
    let mib = fx.config.model_mib;
    for w in WORKLOADS {
        let mut group = c.benchmark_group(w.id());
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(5));
        for mode in [Mode::Cold, Mode::Warm] {
            for system in systems_for(mode, w) {
                let label = format!(
                    "{}/{}",
                    if mode == Mode::Cold { "cold" } else { "warm" },
                    system.name()
                );
                group.bench_function(label, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            match run_case(&fx, system, mode, w, mib) {
                                Ok(m) => total += Duration::from_secs_f64(m.seconds),
                                Err(e) => panic!("{} {:?}: NOT MEASURED: {e}", system.name(), w),
                            }
                        }
                        total
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, criterion_benches);

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) just checks.
    if let Some(path) = std::env::var_os("MODELFS_BENCH_JSON") {
        report_mode(Path::new(&path));
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
