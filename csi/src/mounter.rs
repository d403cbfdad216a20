//! The edge between the node server and the operating system: mount a [`MountSpec`] at a
//! target, unmount a target, and tell whether a target is mounted (and whether that mount
//! still works).
//!
//! [`ModelfsMounter`] runs `modelfs mount` in its background mode: the command returns once
//! the mount is ready and the FUSE daemon it leaves behind runs in its own session, so it
//! does not depend on the plugin process staying alive (see `deploy/README.md` for what that
//! does and does not buy inside a container). [`fake::FakeMounter`] is the double the node
//! server's unit tests use.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::state::target_key;
use crate::volume_context::MountSpec;

/// How long one `modelfs mount` may take to report ready before it is killed. Kubelet gives a
/// publish call about two minutes and retries it; a mount that hangs longer would otherwise
/// hold the target's lock forever.
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
    /// The `modelfs` binary could not be started.
    #[error("cannot run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `modelfs mount` reported an error.
    #[error("mounting {source_url} at {target} failed: {message}")]
    MountFailed {
        /// The S3 source.
        source_url: String,
        /// The target.
        target: PathBuf,
        /// What `modelfs mount` printed.
        message: String,
    },
    /// `modelfs mount` did not report within [`MOUNT_TIMEOUT`].
    #[error("mounting {source_url} at {target} did not finish within {timeout:?}")]
    MountTimedOut {
        /// The S3 source.
        source_url: String,
        /// The target.
        target: PathBuf,
        /// The limit.
        timeout: Duration,
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
    /// Mounts `spec` read-only at `target`, an existing directory with nothing mounted on it.
    fn mount(&self, spec: &MountSpec, target: &Path) -> Result<(), MountError>;
    /// Removes the topmost mount at `target` (lazily if it is busy or stale). Not being
    /// mounted is not an error.
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// Says what is mounted at `target`.
    fn mount_state(&self, target: &Path) -> Result<MountState, MountError>;
}

/// Runs the `modelfs` binary: `modelfs mount SOURCE TARGET OPTIONS --allow-other` plus the
/// node-wide options, in background mode.
#[derive(Debug, Clone)]
pub struct ModelfsMounter {
    binary: PathBuf,
    node_options: Vec<String>,
    log_dir: Option<PathBuf>,
}

impl ModelfsMounter {
    /// A mounter running `binary`. `cache_dir`/`cache_size` are passed to every mount when
    /// set, so all volumes on the node share one disk cache; each mount logs to
    /// `LOG_DIR/<target key>.log` when `log_dir` is set.
    pub fn new(
        binary: PathBuf,
        cache_dir: Option<&Path>,
        cache_size: Option<&str>,
        log_dir: Option<PathBuf>,
    ) -> ModelfsMounter {
        let mut node_options = vec!["--allow-other".to_string()];
        if let Some(dir) = cache_dir {
            node_options.push("--cache-dir".to_string());
            node_options.push(dir.to_string_lossy().into_owned());
            if let Some(size) = cache_size {
                node_options.push("--cache-size".to_string());
                node_options.push(size.to_string());
            }
        }
        ModelfsMounter {
            binary,
            node_options,
            log_dir,
        }
    }

    /// The full `modelfs` command line (after the binary) for mounting `spec` at `target`.
    pub fn command_args(&self, spec: &MountSpec, target: &Path) -> Vec<String> {
        let mut args = vec![
            "mount".to_string(),
            spec.source.clone(),
            target.to_string_lossy().into_owned(),
        ];
        args.extend(spec.options.iter().cloned());
        args.extend(self.node_options.iter().cloned());
        if let Some(log) = self.log_file(target) {
            args.push("--log-file".to_string());
            args.push(log.to_string_lossy().into_owned());
        }
        args
    }

    /// Where the mount at `target` logs, if mounts log to files.
    pub fn log_file(&self, target: &Path) -> Option<PathBuf> {
        self.log_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.log", target_key(target))))
    }
}

impl Mounter for ModelfsMounter {
    fn mount(&self, spec: &MountSpec, target: &Path) -> Result<(), MountError> {
        let mut child = Command::new(&self.binary)
            .args(self.command_args(spec, target))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| MountError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        // Read stderr on a thread so a chatty child can never block on a full pipe.
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = stderr {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) | Err(_) => break None,
            }
        };
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            // The detached daemon may have mounted and then hung: do not leave that mount
            // behind, and do not ask it anything (that would hang too).
            abort_and_detach(target);
            return Err(MountError::MountTimedOut {
                source_url: spec.source.clone(),
                target: target.to_path_buf(),
                timeout: MOUNT_TIMEOUT,
            });
        };
        let stderr = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let message = stderr.trim();
        let message = message.strip_prefix("modelfs: error: ").unwrap_or(message);
        Err(MountError::MountFailed {
            source_url: spec.source.clone(),
            target: target.to_path_buf(),
            message: if message.is_empty() {
                format!("modelfs mount exited with {status}")
            } else {
                message.to_string()
            },
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let result = umount(target);
        if result.is_ok() {
            if let Some(log) = self.log_file(target) {
                let _ = std::fs::remove_file(log);
            }
        }
        result
    }

    fn mount_state(&self, target: &Path) -> Result<MountState, MountError> {
        probe_mount_state(target)
    }
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

/// Aborts the FUSE connection behind `target` (through fusectl, when it is mounted at
/// `/sys/fs/fuse/connections`) and detaches the mount lazily; both best effort, and neither
/// sends a request to the daemon.
pub fn abort_and_detach(target: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let wanted = target.as_os_str().as_bytes();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || unescape_mountinfo(fields[4]) != wanted {
            continue;
        }
        if let Some(("0", minor)) = fields[2].split_once(':') {
            let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
            let _ = std::fs::write(abort, b"1");
        }
    }
    if let Ok(c_path) = CString::new(wanted) {
        // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
        unsafe {
            libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
        }
    }
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

    use super::{MountError, MountState, Mounter};
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
        fn mount(&self, spec: &MountSpec, target: &Path) -> Result<(), MountError> {
            let mut state = self.state.lock().unwrap();
            if let Some(message) = state.fail_next_mount.take() {
                return Err(MountError::MountFailed {
                    source_url: spec.source.clone(),
                    target: target.to_path_buf(),
                    message,
                });
            }
            assert!(
                target.is_dir(),
                "mount target {target:?} must be a directory"
            );
            state.mount_calls += 1;
            state
                .mounts
                .entry(target.to_path_buf())
                .or_default()
                .push((spec.clone(), false));
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
    fn probing_and_detaching_plain_directories_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        statfs_within(dir.path(), Duration::from_secs(5)).unwrap();
        abort_and_detach(dir.path());
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
    fn command_line_has_volume_then_node_options() {
        let mounter = ModelfsMounter::new(
            PathBuf::from("/bin/modelfs"),
            Some(Path::new("/mnt/k8s-disks/0/modelfs-cache")),
            None,
            Some(PathBuf::from("/state")),
        );
        let spec = MountSpec {
            source: "s3://models/".to_string(),
            options: vec!["--region".to_string(), "us-east-1".to_string()],
        };
        let target = Path::new("/var/lib/kubelet/pods/p/volumes/v/mount");
        let args = mounter.command_args(&spec, target);
        let log = format!("/state/{}.log", target_key(target));
        assert_eq!(
            args,
            [
                "mount",
                "s3://models/",
                "/var/lib/kubelet/pods/p/volumes/v/mount",
                "--region",
                "us-east-1",
                "--allow-other",
                "--cache-dir",
                "/mnt/k8s-disks/0/modelfs-cache",
                "--log-file",
                log.as_str(),
            ]
        );
        let no_cache = ModelfsMounter::new(PathBuf::from("modelfs"), None, Some("10GiB"), None);
        assert!(!no_cache
            .command_args(&spec, target)
            .iter()
            .any(|a| a.starts_with("--cache")));
    }
}
