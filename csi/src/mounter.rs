//! The edge between the node server and the operating system: mount a [`MountSpec`] at a
//! target, unmount a target, and tell whether a target is mounted (and whether that mount
//! still works).
//!
//! [`HandoffMounter`] mounts a FUSE connection at the target itself (the plugin has the
//! privileges and kubelet's mount namespace) and hands the connection to the node's
//! long-lived `modelfs mounter` over its socket ([`crate::handoff`]), so the mount lives as
//! long as the mounter, whatever happens to the plugin. [`fake::FakeMounter`] is the double
//! the node server's unit tests use.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::handoff::{HandoffError, MounterClient, VolumeCredentials, VolumeHandoff, WarmOutcome};
use crate::volume_context::MountSpec;

/// How long the mounter may take to serve a handed-over volume (it lists the bucket first).
/// Kubelet gives a publish call about two minutes and retries it.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(90);

/// What is at a target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// Nothing is mounted there (or the path does not exist).
    NotMounted,
    /// A mount is there and answers.
    Healthy,
    /// A mount is there but its FUSE daemon is gone (`ENOTCONN`): it must be unmounted.
    Stale,
}

/// A mount operation that failed; the message carries the target and the cause.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The node mounter cannot be reached: nothing was mounted.
    #[error("the node's modelfs mounter is not available: {0}")]
    MounterUnavailable(HandoffError),
    /// The FUSE mount itself (open `/dev/fuse`, mount(2)) failed.
    #[error("cannot mount {source_url} at {target}: {message}")]
    Kernel {
        /// The S3 source.
        source_url: String,
        /// The target.
        target: PathBuf,
        /// The cause.
        message: String,
    },
    /// The mounter did not take the volume; the mount at the target is dead (`ENOTCONN`).
    #[error("mounting {source_url} at {target} failed: {cause}")]
    MountFailed {
        /// The S3 source.
        source_url: String,
        /// The target.
        target: PathBuf,
        /// What the mounter said.
        cause: HandoffError,
    },
    /// The mounter did not take new credentials for a volume.
    #[error("new credentials for {target} were not taken: {cause}")]
    Refresh {
        /// The target.
        target: PathBuf,
        /// What the mounter said.
        cause: HandoffError,
    },
    /// Unmounting failed.
    #[error("cannot unmount {target}: {message}")]
    UnmountFailed {
        /// The target.
        target: PathBuf,
        /// The cause.
        message: String,
    },
    /// The target could not be inspected.
    #[error("cannot inspect {target}: {source}")]
    Inspect {
        /// The target.
        target: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Mounts, unmounts and inspects targets. Implementations are blocking; the node server calls
/// them from blocking threads.
pub trait Mounter: Send + Sync + 'static {
    /// Whether mounts can be made now; checked before a dead mount is taken down, so a
    /// target that cannot be repaired keeps failing reads instead of showing an empty
    /// directory.
    fn check_ready(&self) -> Result<(), MountError>;
    /// Mounts `request.spec` read-only at `request.target`, an existing directory with
    /// nothing mounted on it. Returns how far warming got, for a volume with files to warm.
    /// On [`MountError::MountFailed`] a dead mount is left there.
    fn mount(&self, request: &MountRequest<'_>) -> Result<Option<WarmOutcome>, MountError>;
    /// Makes the volume served at `target` read with `credentials` from now on.
    fn refresh(&self, target: &Path, credentials: &VolumeCredentials) -> Result<(), MountError>;
    /// Removes the topmost mount at `target` (lazily if it is busy or stale). Not being
    /// mounted is not an error.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Says what is mounted at `target`.
    fn mount_state(&self, target: &Path) -> Result<MountState, MountError>;
}

/// One volume to mount.
#[derive(Debug, Clone, Copy)]
pub struct MountRequest<'a> {
    /// The CSI volume id.
    pub volume_id: &'a str,
    /// What to mount.
    pub spec: &'a MountSpec,
    /// Where.
    pub target: &'a Path,
    /// The pod's credentials; `None`: the mounter's own.
    pub credentials: Option<&'a VolumeCredentials>,
    /// Files to warm besides `spec.warm.patterns`, each the first candidate that exists.
    pub warm_any: &'a [Vec<String>],
}

impl MountRequest<'_> {
    /// The error of a mount the mounter did not take, for `cause`.
    fn failed(&self, cause: HandoffError) -> MountError {
        MountError::MountFailed {
            source_url: self.spec.source.clone(),
            target: self.target.to_path_buf(),
            cause,
        }
    }

    /// What the node mounter is told about the volume it is to serve.
    fn handoff(&self) -> VolumeHandoff {
        VolumeHandoff {
            volume_id: self.volume_id.to_string(),
            target: self.target.to_path_buf(),
            source: self.spec.source.clone(),
            options: self.spec.options.clone(),
            credentials: self.credentials.cloned(),
            warm: self.spec.warm.patterns.clone(),
            warm_any: self.warm_any.to_vec(),
            warm_wait_ms: self.spec.warm.wait_ms,
        }
    }
}

/// Mounts FUSE connections and hands them to the node mounter.
#[derive(Debug, Clone)]
pub struct HandoffMounter {
    client: MounterClient,
}

impl HandoffMounter {
    /// A mounter handing volumes to the mounter listening at `socket`.
    pub fn new(socket: PathBuf) -> HandoffMounter {
        HandoffMounter {
            client: MounterClient::new(socket, MOUNT_TIMEOUT),
        }
    }
}

impl Mounter for HandoffMounter {
    fn check_ready(&self) -> Result<(), MountError> {
        self.client.ping().map_err(MountError::MounterUnavailable)
    }

    fn mount(&self, request: &MountRequest<'_>) -> Result<Option<WarmOutcome>, MountError> {
        self.check_ready()?;
        let target = request.target;
        let fuse = mount_fuse(&request.spec.source, target)?;
        if let Err(e) = modelfs_fs::mount::set_read_ahead(target, modelfs_fs::mount::READ_AHEAD_KIB)
        {
            tracing::info!(volume = %request.volume_id, "cannot raise read_ahead_kb of {}: {e}", target.display());
        }
        // On failure our descriptor closes here, the last one: the kernel aborts the
        // connection and the target answers ENOTCONN.
        self.client
            .serve(request.handoff(), fuse.as_fd())
            .map_err(|cause| request.failed(cause))
    }

    fn refresh(&self, target: &Path, credentials: &VolumeCredentials) -> Result<(), MountError> {
        self.client
            .refresh(target, credentials.clone())
            .map_err(|cause| match cause {
                HandoffError::Io { .. } => MountError::MounterUnavailable(cause),
                _ => MountError::Refresh {
                    target: target.to_path_buf(),
                    cause,
                },
            })
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        umount(target)
    }

    fn mount_state(&self, target: &Path) -> Result<MountState, MountError> {
        probe_mount_state(target)
    }
}

/// Opens a FUSE connection and mounts it read-only at `target`, naming `source`; returns the
/// connection, which serves nothing until a daemon takes it.
fn mount_fuse(source: &str, target: &Path) -> Result<std::fs::File, MountError> {
    use nix::mount::MsFlags;
    let kernel = |message: String| MountError::Kernel {
        source_url: source.to_string(),
        target: target.to_path_buf(),
        message,
    };
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| kernel(format!("cannot open /dev/fuse: {e}")))?;
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let data = fuse_mount_data(fuse.as_raw_fd(), uid, gid);
    nix::mount::mount(
        Some(source),
        target,
        Some("fuse.modelfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| kernel(e.desc().to_string()))?;
    Ok(fuse)
}

/// The mount(2) data of a FUSE connection on `fd` owned by `uid`/`gid`: any user may enter
/// (`allow_other`), and the kernel checks permission bits (`default_permissions`).
fn fuse_mount_data(fd: i32, uid: u32, gid: u32) -> String {
    format!("fd={fd},rootmode=40000,user_id={uid},group_id={gid},allow_other,default_permissions")
}

/// Unmounts the topmost mount at `target`: `umount2`, lazily when busy, and through
/// `fusermount3 -u -z` when this process may not call `umount2` (not root).
pub fn umount(target: &Path) -> Result<(), MountError> {
    let failed = |message: String| MountError::UnmountFailed {
        target: target.to_path_buf(),
        message,
    };
    let c_path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| failed("the path contains a NUL byte".to_string()))?;
    for flags in [0, libc::MNT_DETACH] {
        // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // Not a mount point, or already gone: nothing to do.
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            Some(libc::EBUSY) if flags == 0 => continue,
            Some(libc::EPERM) => return fusermount_lazy(target),
            _ => return Err(failed(err.to_string())),
        }
    }
    Err(failed("still busy after a lazy unmount".to_string()))
}

fn fusermount_lazy(target: &Path) -> Result<(), MountError> {
    let output = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| MountError::UnmountFailed {
            target: target.to_path_buf(),
            message: format!("cannot run fusermount3: {e}"),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(MountError::UnmountFailed {
        target: target.to_path_buf(),
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

/// Reads `/proc/self/mountinfo` to see whether `target` is a mount point, then `statfs`s it
/// to tell a live mount from one whose daemon died.
pub fn probe_mount_state(target: &Path) -> Result<MountState, MountError> {
    let inspect = |source| MountError::Inspect {
        target: target.to_path_buf(),
        source,
    };
    // Mountinfo lists resolved paths: resolve the parent (the target itself may be a dead
    // mount that cannot be resolved).
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(MountState::NotMounted);
    };
    let parent = match parent.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MountState::NotMounted),
        Err(e) => return Err(inspect(e)),
    };
    let resolved = parent.join(name);
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(inspect)?;
    if !mountinfo_has_mount_point(&info, &resolved) {
        return Ok(MountState::NotMounted);
    }
    // statfs always reaches the FUSE daemon (stat may be answered from cached attributes),
    // so a dead daemon shows as ENOTCONN at once. A daemon that is alive but does not answer
    // is an error, not "stale": it may only be overloaded, and replacing it is not ours to do.
    match statfs_within(&resolved, STATFS_TIMEOUT) {
        Ok(()) => Ok(MountState::Healthy),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            Ok(MountState::Stale)
        }
        Err(e) => Err(inspect(e)),
    }
}

/// How long a `statfs` of a mount may take before the mount counts as not answering.
pub const STATFS_TIMEOUT: Duration = Duration::from_secs(30);

/// `statfs(path)` on a helper thread, given up after `timeout` (the thread stays blocked
/// until the mount answers or is aborted; that is the price of never hanging the caller).
fn statfs_within(path: &Path, timeout: Duration) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("statfs-probe".into())
        .spawn(move || {
            let _ = tx.send(statfs(&owned));
        })?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the mount did not answer statfs within {timeout:?}"),
        ))
    })
}

fn statfs(path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: c_path is NUL-terminated and `buf` is a properly sized, writable statfs struct.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `mountinfo` (the text of `/proc/PID/mountinfo`) lists `path` as a mount point.
pub fn mountinfo_has_mount_point(mountinfo: &str, path: &Path) -> bool {
    let wanted = path.as_os_str().as_bytes();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| unescape_mountinfo(field) == wanted)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// An in-memory mounter for unit tests: records mounts per target, can be told to fail or to
/// turn a mount stale, and counts calls.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{MountError, MountRequest, MountState, Mounter};
    use crate::handoff::{HandoffError, VolumeCredentials, WarmOutcome};
    use crate::volume_context::MountSpec;

    /// State of the fake.
    #[derive(Debug, Default)]
    pub struct FakeState {
        /// Mount stack per target (last is topmost), with whether each is stale.
        pub mounts: HashMap<PathBuf, Vec<(MountSpec, bool)>>,
        /// Number of successful `mount` calls.
        pub mount_calls: usize,
        /// Number of `unmount` calls.
        pub unmount_calls: usize,
        /// When set, the next `mount` fails with this message.
        pub fail_next_mount: Option<String>,
        /// When set, the mounter is unreachable (`check_ready` and `mount` fail).
        pub unavailable: Option<String>,
        /// Access key of the credentials each target reads with now (pod volumes).
        pub credentials: HashMap<PathBuf, String>,
        /// Number of `refresh` calls.
        pub refresh_calls: usize,
        /// The workflow files the last mount was asked to warm.
        pub warm_any: Vec<Vec<String>>,
    }

    /// The fake mounter.
    #[derive(Debug, Default)]
    pub struct FakeMounter {
        /// Its state, for assertions.
        pub state: Mutex<FakeState>,
    }

    impl FakeMounter {
        /// Marks every mount at `target` stale, as if its daemon had been killed.
        pub fn make_stale(&self, target: &Path) {
            let mut state = self.state.lock().unwrap();
            for entry in state.mounts.get_mut(target).into_iter().flatten() {
                entry.1 = true;
            }
        }

        /// The number of mounts stacked at `target`.
        pub fn depth(&self, target: &Path) -> usize {
            let state = self.state.lock().unwrap();
            state.mounts.get(target).map_or(0, Vec::len)
        }
    }

    impl Mounter for FakeMounter {
        fn check_ready(&self) -> Result<(), MountError> {
            let state = self.state.lock().unwrap();
            match &state.unavailable {
                Some(message) => Err(MountError::MounterUnavailable(HandoffError::Refused(
                    message.clone(),
                ))),
                None => Ok(()),
            }
        }

        fn mount(&self, request: &MountRequest<'_>) -> Result<Option<WarmOutcome>, MountError> {
            let MountRequest {
                spec,
                target,
                credentials,
                warm_any,
                ..
            } = *request;
            self.check_ready()?;
            let mut state = self.state.lock().unwrap();
            if let Some(message) = state.fail_next_mount.take() {
                return Err(request.failed(HandoffError::Refused(message)));
            }
            assert!(
                target.is_dir(),
                "mount target {target:?} must be a directory"
            );
            state.mount_calls += 1;
            if let Some(credentials) = credentials {
                state
                    .credentials
                    .insert(target.to_path_buf(), credentials.access_key_id.clone());
            }
            state
                .mounts
                .entry(target.to_path_buf())
                .or_default()
                .push((spec.clone(), false));
            state.warm_any = warm_any.to_vec();
            let files = spec.warm.patterns.len() + warm_any.len();
            Ok((files > 0).then(|| WarmOutcome {
                done: true,
                message: format!("warmed {files} files"),
            }))
        }

        fn refresh(
            &self,
            target: &Path,
            credentials: &VolumeCredentials,
        ) -> Result<(), MountError> {
            self.check_ready()?;
            let mut state = self.state.lock().unwrap();
            state.refresh_calls += 1;
            state
                .credentials
                .insert(target.to_path_buf(), credentials.access_key_id.clone());
            Ok(())
        }

        fn unmount(&self, target: &Path) -> Result<(), MountError> {
            let mut state = self.state.lock().unwrap();
            state.unmount_calls += 1;
            if let Some(stack) = state.mounts.get_mut(target) {
                stack.pop();
                if stack.is_empty() {
                    state.mounts.remove(target);
                }
            }
            Ok(())
        }

        fn mount_state(&self, target: &Path) -> Result<MountState, MountError> {
            let state = self.state.lock().unwrap();
            Ok(match state.mounts.get(target).and_then(|s| s.last()) {
                None => MountState::NotMounted,
                Some((_, true)) => MountState::Stale,
                Some((_, false)) => MountState::Healthy,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        let info =
            "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - fuse.modelfs s3://b/ rw\n\
                    37 35 98:0 / /var/lib/kubelet/pods/x/mount rw - fuse.modelfs s3://b/ rw\n";
        assert!(mountinfo_has_mount_point(
            info,
            Path::new("/mnt/with space")
        ));
        assert!(mountinfo_has_mount_point(
            info,
            Path::new("/var/lib/kubelet/pods/x/mount")
        ));
        assert!(!mountinfo_has_mount_point(info, Path::new("/mnt/with")));
        assert!(!mountinfo_has_mount_point(
            info,
            Path::new("/var/lib/kubelet")
        ));
    }

    #[test]
    fn probing_and_unmounting_plain_directories_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        statfs_within(dir.path(), Duration::from_secs(5)).unwrap();
        assert!(dir.path().is_dir());
        umount(dir.path()).unwrap();
    }

    #[test]
    fn missing_paths_are_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            probe_mount_state(&dir.path().join("a/b")).unwrap(),
            MountState::NotMounted
        );
        assert_eq!(
            probe_mount_state(dir.path()).unwrap(),
            MountState::NotMounted
        );
    }

    #[test]
    fn fuse_mount_data_lets_everyone_in_and_checks_modes_in_the_kernel() {
        assert_eq!(
            fuse_mount_data(7, 0, 0),
            "fd=7,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
        );
    }
}
