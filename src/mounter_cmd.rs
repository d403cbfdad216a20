//! `modelfs mounter`: the node's long-lived FUSE server. The CSI plugin mounts each volume's
//! FUSE connection at its target and hands the connection over this process's socket
//! ([`modelfs_csi::handoff`]); every volume is then served from one memory budget, one disk
//! cache handle and one table of downloads in flight, so the plugin can restart freely and
//! two pods reading the same model share one download.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use modelfs_csi::handoff::{
    self, Listener, Reply, Request, VolumeCredentials, VolumeHandoff, WarmOutcome,
};
use modelfs_fs::metrics::metrics;
use modelfs_fs::mount::{serve_fd, MountConfig};
use modelfs_fs::namespace::Namespace;
use modelfs_fs::read::{BlockReader, ReadConfig, SharedTiers};
use modelfs_fs::store::{ProvingStore, ReplaceableCredentials};
use modelfs_fs::warm::{resolve, warm};
use modelfs_fs::S3Location;
use tokio::runtime::Handle;

use crate::serve_args::ServeArgs;
use crate::volume_args::VolumeArgs;

/// What one volume's handoff asked to warm.
struct WarmWork {
    /// Paths or globs.
    patterns: Vec<String>,
    /// Files given as candidate paths, the first that exists.
    any: Vec<Vec<String>>,
    /// How long the reply waits.
    wait: Duration,
}

/// Blocks one volume's warm-up downloads at a time (background priority: reads go first).
const WARM_CONCURRENCY: usize = 8;

/// Arguments of `modelfs mounter`.
#[derive(Debug, Clone, clap::Args)]
pub struct MounterArgs {
    /// The socket the CSI plugin hands volumes over (its directory must be owned by this
    /// user and writable by no one else; it is created, mode 0700, when missing).
    #[arg(long, default_value = "unix:///var/lib/modelfs/mounter/mounter.sock")]
    pub socket: String,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// A volume's options as the plugin sends them: the per-volume flags of `modelfs mount`
/// and nothing else (node-wide flags are this process's).
#[derive(Debug, Parser)]
#[command(name = "volume options", no_binary_name = true)]
struct VolumeOptions {
    #[command(flatten)]
    volume: VolumeArgs,
}

/// What every connection handler needs.
struct Mounter {
    args: MounterArgs,
    tiers: SharedTiers,
    read: ReadConfig,
    runtime: Handle,
    /// Sessions started so far (names their threads).
    started: AtomicU64,
    /// Sessions running now.
    serving: AtomicUsize,
    /// The volumes reading with a pod's credentials, by target: where a refresh goes.
    pod_volumes: Mutex<HashMap<PathBuf, PodVolume>>,
}

/// A volume reading with credentials the plugin gave it.
struct PodVolume {
    /// The session serving it (a remount at the same target is another one).
    session: u64,
    credentials: ReplaceableCredentials,
    store: Arc<ProvingStore>,
}

/// Runs the mounter until it is killed.
pub fn run(args: MounterArgs) -> anyhow::Result<()> {
    crate::mount_cmd::limit_malloc_arenas();
    crate::logging::init_stdout(&args.log_level)?;
    let socket = modelfs_csi::server::socket_path(&args.socket)?;
    if let Some(dir) = socket.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = Listener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let metrics = args.serve.bind_metrics()?;
    let runtime = crate::mount_cmd::io_runtime()?;
    args.serve.check_cache_placement()?;
    let disk = args.serve.open_disk_cache()?;
    let read = args.serve.read_config();
    let tiers = SharedTiers::new(&read, disk);
    if let Some(listener) = metrics {
        runtime.spawn(crate::metrics_server::serve(listener));
    }
    let mounter = Arc::new(Mounter {
        args,
        tiers,
        read,
        runtime: runtime.handle().clone(),
        started: AtomicU64::new(0),
        serving: AtomicUsize::new(0),
        pod_volumes: Mutex::new(HashMap::new()),
    });
    tracing::info!(
        "mounter ready on {} (memory budget {} MiB, disk cache {})",
        socket.display(),
        mounter.args.serve.memory_cache_size >> 20,
        mounter
            .args
            .serve
            .cache_dir
            .as_ref()
            .map_or("none".to_string(), |d| d.display().to_string())
    );
    crate::sd_notify::notify("READY=1");
    loop {
        let conn = listener.accept().context("cannot accept a connection")?;
        let mounter = mounter.clone();
        std::thread::Builder::new()
            .name("handoff".into())
            .spawn(move || mounter.answer(conn))
            .context("cannot start a connection thread")?;
    }
}

impl Mounter {
    /// Answers one connection: a ping, or a volume to serve.
    fn answer(self: Arc<Self>, conn: OwnedFd) {
        let (request, fd) = match handoff::read_request(conn.as_fd()) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("unreadable request: {e}");
                return;
            }
        };
        let reply = match request {
            Request::Ping => Reply::Ok,
            Request::Serve(volume) => {
                let id = volume.volume_id.clone();
                match self.serve(volume, fd) {
                    Ok(None) => Reply::Ok,
                    Ok(Some(warm)) => Reply::Warm(warm),
                    Err(e) => {
                        tracing::warn!(volume = %id, "not served: {e:#}");
                        Reply::Failed(format!("{e:#}"))
                    }
                }
            }
            Request::Refresh {
                target,
                credentials,
            } => match self.refresh(&target, &credentials) {
                Ok(()) => Reply::Ok,
                Err(e) => {
                    tracing::warn!("new credentials for {} not taken: {e:#}", target.display());
                    Reply::Failed(format!("{e:#}"))
                }
            },
        };
        if let Err(e) = handoff::write_reply(conn.as_fd(), &reply) {
            tracing::warn!("cannot answer the plugin: {e}");
        }
    }

    /// Checks the volume, completes its FUSE handshake and serves it on threads of its own.
    /// Says how far warming got, for a volume with files to warm.
    fn serve(
        self: &Arc<Self>,
        handoff: VolumeHandoff,
        fd: Option<OwnedFd>,
    ) -> anyhow::Result<Option<WarmOutcome>> {
        let fd = fd.context("no FUSE connection came with the request")?;
        check_is_fuse_device(&fd)?;
        let location: S3Location = handoff.source.parse()?;
        let options = VolumeOptions::try_parse_from(&handoff.options)
            .map_err(|e| anyhow::anyhow!("bad volume options: {}", first_line(&e.to_string())))?;
        let volume = options.volume;
        let credentials = handoff
            .credentials
            .as_ref()
            .map(|given| ReplaceableCredentials::new(&given.to_session()));
        let store = self
            .runtime
            .block_on(volume.connect(&location, credentials.clone()))?;
        let config = MountConfig {
            location: location.clone(),
            mountpoint: handoff.target.clone(),
            metadata_ttl: volume.metadata_ttl,
            ownership: volume.ownership(),
            allow_other: true,
            read: self.read.clone(),
            passthrough: !self.args.serve.no_passthrough,
            fuse_threads: 4,
            warm_read_ahead: self.args.serve.warm_limit(),
        };
        let warm_store = store.clone();
        let warming = (
            handoff.volume_id.clone(),
            WarmWork {
                patterns: handoff.warm.clone(),
                any: handoff.warm_any.clone(),
                wait: Duration::from_millis(handoff.warm_wait_ms),
            },
        );
        let session = serve_fd(
            &config,
            store.clone(),
            &self.tiers,
            self.runtime.clone(),
            fd,
        )?;
        let number = self.started.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(credentials) = credentials {
            self.pod_volumes().insert(
                handoff.target.clone(),
                PodVolume {
                    session: number,
                    credentials,
                    store,
                },
            );
        }
        let serving = self.serving.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            volume = %handoff.volume_id,
            "serving {location} at {} ({serving} volumes)",
            handoff.target.display()
        );
        let this = self.clone();
        std::thread::Builder::new()
            .name(format!("volume-{number}"))
            .spawn(move || {
                let span = tracing::info_span!("volume", id = %handoff.volume_id);
                let result = span.in_scope(|| session.run());
                let serving = this.serving.fetch_sub(1, Ordering::Relaxed) - 1;
                {
                    let mut pod_volumes = this.pod_volumes();
                    if pod_volumes
                        .get(&handoff.target)
                        .is_some_and(|v| v.session == number)
                    {
                        pod_volumes.remove(&handoff.target);
                    }
                }
                match result {
                    Ok(()) => tracing::info!(
                        volume = %handoff.volume_id,
                        "unmounted {} ({serving} volumes)",
                        handoff.target.display()
                    ),
                    Err(e) => tracing::error!(
                        volume = %handoff.volume_id,
                        "serving {} failed: {e}",
                        handoff.target.display()
                    ),
                }
            })
            .context("cannot start the volume's thread")?;
        let (volume_id, work) = warming;
        if work.patterns.is_empty() && work.any.is_empty() {
            return Ok(None);
        }
        let outcome = self.warm(&volume_id, work, &location, warm_store, volume.metadata_ttl);
        Ok(Some(outcome))
    }

    /// Downloads the files `work` names into the shared tiers, waiting at most `wait` for
    /// them; the download goes on after that. Says how far it got.
    fn warm(
        &self,
        volume: &str,
        work: WarmWork,
        location: &S3Location,
        store: Arc<ProvingStore>,
        metadata_ttl: Duration,
    ) -> WarmOutcome {
        let volume = volume.to_string();
        if self.args.serve.cache_dir.is_none() {
            let message = "not warming: the node's mounter has no disk cache".to_string();
            tracing::warn!(volume = %volume, "{message}");
            return WarmOutcome {
                done: false,
                message,
            };
        }
        let namespace = Namespace::shared(store.clone(), &location.prefix, metadata_ttl);
        let reader =
            BlockReader::with_tiers(store, &location.bucket, self.read.clone(), &self.tiers);
        let done = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let (done_here, total_here) = (done.clone(), total.clone());
        let task_volume = volume.clone();
        let wait = work.wait;
        metrics().warming(1);
        let mut task = self.runtime.spawn(async move {
            let volume = task_volume;
            let started = Instant::now();
            let outcome = async {
                let mut patterns = work.patterns;
                // A workflow's model may live in one of several folders: the first that has it.
                for candidates in &work.any {
                    match resolve(&namespace, candidates).await?.0.first() {
                        Some(found) => patterns.push(found.path.clone()),
                        None => tracing::warn!(
                            volume = %volume,
                            "warm: the workflow's {} is not in the bucket",
                            candidates.join(" or ")
                        ),
                    }
                }
                let (targets, unmatched) = resolve(&namespace, &patterns).await?;
                for pattern in unmatched {
                    tracing::warn!(volume = %volume, "warm: nothing matches {pattern:?}");
                }
                let bytes: u64 = targets.iter().map(|t| t.size).sum();
                total_here.store(bytes, Ordering::Relaxed);
                tracing::info!(volume = %volume, "warming {} files, {} MiB", targets.len(), bytes >> 20);
                let progress = |n: u64| {
                    done_here.fetch_add(n, Ordering::Relaxed);
                    metrics().warm_bytes(n);
                };
                warm(&namespace, &reader, &targets, WARM_CONCURRENCY, &progress).await
            };
            let outcome = match outcome.await {
                Ok(report) if report.failed_blocks == 0 => WarmOutcome {
                    done: true,
                    message: format!(
                        "warmed {} files, {} MiB in {:.1} s",
                        report.files,
                        report.bytes >> 20,
                        started.elapsed().as_secs_f64()
                    ),
                },
                Ok(report) => WarmOutcome {
                    done: false,
                    message: format!(
                        "warmed {} files with {} blocks failed (they download on first read)",
                        report.files, report.failed_blocks
                    ),
                },
                Err(e) => WarmOutcome {
                    done: false,
                    message: format!("warming stopped: {e}"),
                },
            };
            if outcome.done {
                tracing::info!(volume = %volume, "{}", outcome.message);
            } else {
                tracing::warn!(volume = %volume, "{}", outcome.message);
            }
            metrics().warming(-1);
            outcome
        });
        match self
            .runtime
            .block_on(async { tokio::time::timeout(wait, &mut task).await })
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => WarmOutcome {
                done: false,
                message: format!("warming failed: {e}"),
            },
            Err(_) => {
                let message = format!(
                    "published after {:.0} s with {} of {} MiB warm; warming goes on",
                    wait.as_secs_f64(),
                    done.load(Ordering::Relaxed) >> 20,
                    total.load(Ordering::Relaxed) >> 20
                );
                tracing::info!(volume = %volume, "{message}");
                WarmOutcome {
                    done: false,
                    message,
                }
            }
        }
    }
}

impl Mounter {
    fn pod_volumes(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, PodVolume>> {
        self.pod_volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs the requests of the pod volume at `target` with `credentials` from now on. What
    /// the old ones proved is forgotten: the new ones may belong to another role.
    fn refresh(&self, target: &Path, credentials: &VolumeCredentials) -> anyhow::Result<()> {
        let pod_volumes = self.pod_volumes();
        let volume = pod_volumes.get(target).with_context(|| {
            format!(
                "no volume with pod credentials is served at {}",
                target.display()
            )
        })?;
        volume.credentials.replace(&credentials.to_session());
        volume.store.forget_proofs();
        tracing::info!(
            "volume at {} now reads with key {}",
            target.display(),
            credentials.access_key_id
        );
        Ok(())
    }
}

/// Refuses a descriptor that is not the FUSE device (`/dev/fuse` is char 10:229).
fn check_is_fuse_device(fd: &OwnedFd) -> anyhow::Result<()> {
    let file = std::fs::File::from(fd.try_clone()?);
    let meta = file.metadata()?;
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    if !meta.file_type().is_char_device() || libc::major(rdev) != 10 || libc::minor(rdev) != 229 {
        bail!("the descriptor handed over is not a /dev/fuse connection");
    }
    Ok(())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_options_take_the_volume_flags_and_refuse_node_wide_ones() {
        let ok = VolumeOptions::try_parse_from([
            "--region",
            "us-east-1",
            "--uid",
            "1000",
            "--metadata-ttl",
            "5s",
        ])
        .unwrap();
        assert_eq!(ok.volume.uid, Some(1000));
        assert_eq!(ok.volume.metadata_ttl, std::time::Duration::from_secs(5));
        for node_wide in [
            ["--cache-dir", "/tmp"],
            ["--memory-cache-size", "1GiB"],
            ["--log-file", "/etc/passwd"],
            ["--metrics-addr", "0.0.0.0:1"],
        ] {
            assert!(
                VolumeOptions::try_parse_from(node_wide).is_err(),
                "{node_wide:?} must be refused"
            );
        }
    }

    #[test]
    fn only_the_fuse_device_is_served() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = check_is_fuse_device(&OwnedFd::from(file)).unwrap_err();
        assert!(err.to_string().contains("not a /dev/fuse"), "{err}");
    }
}
