//! Mounting: pre-flight checks that turn the usual mistakes into clear messages before
//! anything is mounted, and the FUSE session itself.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use tokio::runtime::Handle;

use crate::cache::DiskCache;
use crate::fuse::{ModelFs, Ownership};
use crate::namespace::Namespace;
use crate::read::{BlockReader, ReadConfig, SharedTiers};
use crate::session::{Session as VolumeSession, SessionConfig, WarmLimit};
use crate::store::{ObjectStore, StoreError};
use crate::S3Location;

/// Everything a mount needs besides the object store.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The bucket and prefix shown as the root directory.
    pub location: S3Location,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// How long listings and attributes are trusted before S3 is asked again.
    pub metadata_ttl: Duration,
    /// Owner and permission bits shown for every node.
    pub ownership: Ownership,
    /// Let users other than the mounting one access the mount (`allow_other`).
    pub allow_other: bool,
    /// Read-path tunables.
    pub read: ReadConfig,
    /// Serve complete disk-cache entries with FUSE passthrough when the kernel allows it.
    pub passthrough: bool,
    /// Threads reading requests from `/dev/fuse`.
    pub fuse_threads: usize,
    /// How much of a complete cached file opened for loading is read into the page cache
    /// ahead of the reader.
    pub warm_read_ahead: WarmLimit,
}

/// Why a mount did not happen. Nothing is left mounted after any of these.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint does not exist.
    #[error("mountpoint {0} does not exist")]
    MountpointMissing(PathBuf),
    /// The mountpoint is not a directory.
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDirectory(PathBuf),
    /// Something is already mounted there.
    #[error("mountpoint {0} is already a mount point (unmount it first)")]
    MountpointBusy(PathBuf),
    /// The mountpoint could not be inspected.
    #[error("cannot inspect mountpoint {path}: {source}")]
    MountpointUnreadable {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `/dev/fuse` cannot be opened.
    #[error(
        "/dev/fuse is not available ({0}); install fuse3 and load the fuse module, or run the \
         container with --device /dev/fuse and CAP_SYS_ADMIN"
    )]
    FuseUnavailable(std::io::Error),
    /// The bucket or prefix cannot be listed.
    #[error("cannot list {location} at {endpoint}")]
    Bucket {
        /// The location that was checked.
        location: String,
        /// The endpoint description.
        endpoint: String,
        /// What S3 said.
        source: StoreError,
    },
    /// The kernel mount failed.
    #[error("mounting {path} failed: {source}")]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Checks that `path` is an existing directory with nothing mounted on it.
pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MountError::MountpointMissing(path.to_path_buf()),
        std::io::ErrorKind::NotConnected => MountError::MountpointBusy(path.to_path_buf()),
        _ => MountError::MountpointUnreadable {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_dir() {
        return Err(MountError::MountpointNotDirectory(path.to_path_buf()));
    }
    let parent = path.join("..");
    if let Ok(parent_meta) = std::fs::metadata(&parent) {
        if parent_meta.dev() != meta.dev() {
            return Err(MountError::MountpointBusy(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Checks that `/dev/fuse` can be opened for reading and writing.
pub fn check_fuse_device() -> Result<(), MountError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(MountError::FuseUnavailable)
}

/// Lists one page under the prefix to prove the bucket exists and the credentials work.
pub async fn check_bucket(
    store: &dyn ObjectStore,
    location: &S3Location,
) -> Result<(), MountError> {
    store
        .list_page(&location.prefix, None)
        .await
        .map(drop)
        .map_err(|source| MountError::Bucket {
            location: location.to_string(),
            endpoint: store.describe(),
            source,
        })
}

/// Mounts the filesystem and returns the session once the kernel has completed the FUSE
/// handshake, i.e. once the mount is ready. Run it with [`Session::run`]; S3 work runs on
/// `runtime`.
pub fn mount(
    config: &MountConfig,
    store: Arc<dyn ObjectStore>,
    disk_cache: Option<Arc<DiskCache>>,
    runtime: Handle,
) -> Result<Session<ModelFs>, MountError> {
    let tiers = SharedTiers::new(&config.read, disk_cache);
    let fs = volume_fs(config, store, &tiers, runtime);
    let mut fuse_config = session_config(config);
    fuse_config.mount_options = vec![
        MountOption::FSName(config.location.to_string()),
        MountOption::Subtype("modelfs".to_string()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    let session =
        Session::new(fs, &config.mountpoint, &fuse_config).map_err(|source| MountError::Mount {
            path: config.mountpoint.clone(),
            source,
        })?;
    if let Err(e) = set_read_ahead(&config.mountpoint, READ_AHEAD_KIB) {
        tracing::info!(
            "cannot raise the mount's read_ahead_kb ({e}); keeping the kernel's default"
        );
    }
    Ok(session)
}

/// Serves a FUSE connection that another process mounted (`fd` is its `/dev/fuse` file):
/// completes the handshake and returns the session. The volume reads through `tiers`, shared
/// with every other volume of this process.
pub fn serve_fd(
    config: &MountConfig,
    store: Arc<dyn ObjectStore>,
    tiers: &SharedTiers,
    runtime: Handle,
    fd: OwnedFd,
) -> Result<Session<ModelFs>, MountError> {
    let fs = volume_fs(config, store, tiers, runtime);
    let fuse_config = session_config(config);
    let acl = fuse_config.acl;
    Session::from_fd(fs, fd, acl, fuse_config).map_err(|source| MountError::Mount {
        path: config.mountpoint.clone(),
        source,
    })
}

/// The filesystem of one volume: its namespace (whose root is listed ahead, in the
/// background) and its reader over `tiers`.
fn volume_fs(
    config: &MountConfig,
    store: Arc<dyn ObjectStore>,
    tiers: &SharedTiers,
    runtime: Handle,
) -> ModelFs {
    let namespace = Namespace::shared(store.clone(), &config.location.prefix, config.metadata_ttl);
    let root = namespace.clone();
    runtime.spawn(async move {
        if let Err(e) = root.listing(crate::namespace::ROOT_INO).await {
            tracing::debug!("listing the root ahead failed: {e}");
        }
    });
    let reader =
        BlockReader::with_tiers(store, &config.location.bucket, config.read.clone(), tiers);
    let block_size = u32::try_from(config.read.block_size).unwrap_or(1 << 20);
    let session = VolumeSession::new(
        namespace,
        reader,
        SessionConfig {
            ownership: config.ownership,
            block_size,
            passthrough: config.passthrough,
            warm_read_ahead: config.warm_read_ahead,
        },
    );
    ModelFs::new(Arc::new(session), runtime)
}

/// The session settings shared by both ways of starting one.
fn session_config(config: &MountConfig) -> Config {
    let mut fuse_config = Config::default();
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.fuse_threads.max(1));
    fuse_config.clone_fd = config.fuse_threads > 1;
    fuse_config
}

/// Kernel readahead for the mount, in KiB: four 1 MiB FUSE requests in flight per sequential
/// reader. The kernel starts FUSE mounts at 128 KiB, and the FUSE handshake can only lower it.
pub const READ_AHEAD_KIB: u32 = 4096;

/// Sets the `read_ahead_kb` of the backing device info of the filesystem mounted at `path`.
/// The device number comes from `/proc/self/mountinfo`: a `stat` of the mountpoint would be
/// a request to the filesystem itself, which is not serving yet.
pub fn set_read_ahead(path: &Path, kib: u32) -> std::io::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    let device = mountinfo
        .lines()
        .rev()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let mountpoint = fields.nth(1)?;
            (mountpoint == wanted).then_some(device)
        })
        .next()
        .ok_or_else(|| std::io::Error::other("mount not found in /proc/self/mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        kib.to_string(),
    )
}
