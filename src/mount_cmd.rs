//! `modelfs mount`: flags, pre-flight checks, the FUSE session, and a clean unmount on
//! SIGTERM/SIGINT.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use modelfs_fs::cache::{CacheSize, DiskCache, DiskCacheConfig};
use modelfs_fs::mount::{check_fuse_device, check_mountpoint, mount, MountConfig};
use modelfs_fs::read::ReadConfig;
use modelfs_fs::session::WarmLimit;
use modelfs_fs::S3Location;

use crate::daemon::{self, ReadyPipe};
use crate::volume_args::VolumeArgs;
use modelfs_fs::units::parse_size;

/// How long SIGTERM waits for open files to close before detaching the mount lazily.
const UNMOUNT_GRACE: Duration = Duration::from_secs(30);

/// Arguments of `modelfs mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// The models location: s3://BUCKET or s3://BUCKET/PREFIX.
    pub source: String,
    /// An existing empty directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub volume: VolumeArgs,
    /// Allow users other than the mounting user (needs user_allow_other in /etc/fuse.conf
    /// when not root).
    #[arg(long)]
    pub allow_other: bool,
    /// Stay in the foreground until unmounted (default: return once the mount is ready).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Log filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, default_value = "info", overrides_with = "log_level")]
    pub log_level: String,
    /// Append logs to this file (default: stderr, which a background mount discards).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Memory budget for block data: cached blocks plus downloads in flight.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub memory_cache_size: u64,
    /// Directory of the persistent disk cache, shared by every modelfs process on the node
    /// (e.g. the instance store). Without it, only the memory cache is used.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Disk cache limit: bytes (`50GiB`), a share of the disk (`80%`), or `free:N%` to grow
    /// while N% of the disk stays free.
    #[arg(long, default_value = "free:10%", overrides_with = "cache_size")]
    pub cache_size: CacheSize,
    #[command(flatten)]
    pub placement: crate::cache_placement::CachePlacementArgs,
    /// Never serve reads by FUSE passthrough (by default, complete disk-cache entries are
    /// read by the kernel directly when it supports passthrough and we have CAP_SYS_ADMIN).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Most bytes of a complete cached file read into the page cache ahead of the reader
    /// when it is opened for loading (passthrough, 64 MiB or more, still open after 30 ms),
    /// and never more than half of the memory available; 0 disables it. Default: half of
    /// `MemAvailable` at the time.
    #[arg(long, value_parser = parse_size)]
    pub warm_read_ahead: Option<u64>,
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9464`): S3 requests and
    /// latency, cache tiers, prefetching, FUSE requests and latency.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Internal: fd on which a background child reports readiness.
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

/// The read-ahead bound of `--warm-read-ahead`: the flag's bytes, else the default share.
pub fn warm_limit(flag: Option<u64>) -> WarmLimit {
    flag.map_or(WarmLimit::Auto, WarmLimit::Bytes)
}

/// Runs `modelfs mount`; `argv` is the command line after the program name (re-used to
/// start the background child).
pub fn run(args: MountArgs, argv: &[OsString]) -> anyhow::Result<()> {
    let location: S3Location = args.source.parse()?;
    if !args.foreground {
        // Obvious mistakes fail here, in the caller's terminal; the rest in the child.
        check_mountpoint(&args.mountpoint)?;
        return daemon::spawn_background(argv.to_vec());
    }
    let mut ready = args.ready_fd.map(ReadyPipe::from_fd);
    let result = serve(&args, location, &mut ready);
    if let (Err(e), Some(pipe)) = (&result, ready.take()) {
        pipe.failed(&format!("{e:#}"));
    }
    result
}

fn serve(
    args: &MountArgs,
    location: S3Location,
    ready: &mut Option<ReadyPipe>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    limit_malloc_arenas();
    crate::logging::init(&args.log_level, args.log_file.as_deref())?;
    crate::cache_placement::check(args.cache_dir.as_deref(), &args.placement.cache_not_on)?;
    check_mountpoint(&args.mountpoint)?;
    check_fuse_device()?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.mountpoint.display()))?;

    let metrics = args
        .metrics_addr
        .as_deref()
        .map(crate::metrics_server::bind)
        .transpose()?;
    let runtime = io_runtime()?;
    let store = runtime.block_on(args.volume.connect(&location, None))?;

    let config = MountConfig {
        location: location.clone(),
        mountpoint: mountpoint.clone(),
        metadata_ttl: args.volume.metadata_ttl,
        ownership: args.volume.ownership(),
        allow_other: args.allow_other,
        read: ReadConfig {
            memory_cache_bytes: args.memory_cache_size,
            ..ReadConfig::default()
        },
        passthrough: !args.no_passthrough,
        fuse_threads: 4,
        warm_read_ahead: warm_limit(args.warm_read_ahead),
    };
    let disk_cache = open_disk_cache(args.cache_dir.as_deref(), args.cache_size)?;
    let session = mount(&config, store, disk_cache.clone(), runtime.handle().clone())?;
    tracing::info!(
        "mounted {location} at {} in {:.0} ms (metadata TTL {:?})",
        mountpoint.display(),
        started.elapsed().as_secs_f64() * 1000.0,
        args.volume.metadata_ttl
    );
    if let Some(pipe) = ready.take() {
        pipe.ready();
    }
    crate::sd_notify::notify("READY=1");

    runtime.spawn(unmount_on_signal(mountpoint.clone()));
    if let Some(listener) = metrics {
        runtime.spawn(crate::metrics_server::serve(listener));
    }
    session
        .run()
        .with_context(|| format!("serving {} failed", mountpoint.display()))?;
    tracing::info!("unmounted {}", mountpoint.display());

    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The runtime S3 work and background fetches run on.
pub(crate) fn io_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("modelfs-io")
        .build()
        .context("cannot start the async runtime")
}

/// The disk cache at `dir`, if one is configured.
pub(crate) fn open_disk_cache(
    dir: Option<&Path>,
    size: CacheSize,
) -> anyhow::Result<Option<Arc<DiskCache>>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let cache = DiskCache::open(&DiskCacheConfig {
        dir: dir.to_path_buf(),
        size,
    })
    .with_context(|| format!("cannot use cache directory {}", dir.display()))?;
    Ok(Some(cache))
}

/// glibc gives every thread that allocates its own arena (up to 8 per core); with 1 MiB blocks
/// passing between tokio workers, FUSE threads and blocking threads, freed memory stays spread
/// over many arenas and the daemon's RSS grows far past its caches. Two arenas keep it close
/// to the configured budgets. (A fixed `M_MMAP_THRESHOLD` of 2 MiB, which maps every 8 MiB
/// sweep buffer, cut the peak RSS of a 2 GiB load from ~700 to ~430 MiB but made cold loads
/// 15-25 % slower, the kernel zeroing every fresh buffer; not used.)
pub(crate) fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before the runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// On SIGTERM or SIGINT: unmount once no file is open, or detach lazily after a grace period.
async fn unmount_on_signal(mountpoint: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; unmount with `modelfs unmount`");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: unmounting {}", mountpoint.display());
    crate::sd_notify::notify("STOPPING=1");
    graceful_unmount(&mountpoint, UNMOUNT_GRACE).await;
}

async fn graceful_unmount(mountpoint: &Path, grace: Duration) {
    let started = Instant::now();
    loop {
        match crate::unmount_cmd::unmount(mountpoint, false) {
            Ok(()) => return,
            Err(e) if started.elapsed() < grace => {
                tracing::debug!("unmount not possible yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!("{e:#}; detaching lazily after {grace:?}");
                if let Err(e) = crate::unmount_cmd::unmount(mountpoint, true) {
                    tracing::error!("lazy unmount failed: {e:#}");
                }
                return;
            }
        }
    }
}
