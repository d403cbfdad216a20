//! `modelfs mount`: flags, pre-flight checks, the FUSE session, and a clean unmount on
//! SIGTERM/SIGINT.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use modelfs_fs::mount::{check_fuse_device, check_mountpoint, mount, MountConfig};
use modelfs_fs::S3Location;

use crate::daemon::{self, ReadyPipe};
use crate::serve_args::ServeArgs;
use crate::volume_args::VolumeArgs;

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
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Internal: fd on which a background child reports readiness.
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
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
    args.serve.check_cache_placement()?;
    check_mountpoint(&args.mountpoint)?;
    check_fuse_device()?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.mountpoint.display()))?;

    let metrics = args.serve.bind_metrics()?;
    let runtime = io_runtime()?;
    let store = runtime.block_on(args.volume.connect(&location, None))?;

    let config = MountConfig {
        location: location.clone(),
        mountpoint: mountpoint.clone(),
        metadata_ttl: args.volume.metadata_ttl,
        ownership: args.volume.ownership(),
        allow_other: args.allow_other,
        read: args.serve.read_config(),
        passthrough: !args.serve.no_passthrough,
        fuse_threads: 4,
        warm_read_ahead: args.serve.warm_limit(),
    };
    let disk_cache = args.serve.open_disk_cache()?;
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
