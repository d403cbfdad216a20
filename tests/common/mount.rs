//! A real `modelfs mount --foreground` process and a guard that always unmounts it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::Endpoint;

/// Path of the `modelfs` binary built for these tests.
pub fn modelfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_modelfs")
}

/// Whether `path` is a mount point right now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp.replace("\\040", " ") == wanted)
}

/// Environment for a `modelfs` process talking to `endpoint`: its credentials only, no
/// instance metadata lookups, no host profile.
pub fn s3_env(cmd: &mut Command, endpoint: &Endpoint) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", &endpoint.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &endpoint.secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

/// The `mount` arguments that point at `endpoint`.
pub fn endpoint_args(endpoint: &Endpoint) -> Vec<String> {
    vec![
        "--endpoint-url".into(),
        endpoint.url.clone(),
        "--region".into(),
        endpoint.region.clone(),
        "--force-path-style".into(),
    ]
}

/// `modelfs mount SOURCE MOUNTPOINT` against `endpoint`, with its environment; the caller adds
/// the mode (`--foreground` or not) and any other flags.
pub fn mount_command(endpoint: &Endpoint, source: &str, mountpoint: &Path) -> Command {
    let mut cmd = Command::new(modelfs_bin());
    s3_env(&mut cmd, endpoint);
    cmd.arg("mount")
        .arg(source)
        .arg(mountpoint)
        .args(endpoint_args(endpoint));
    cmd
}

/// A mounted `modelfs` in the foreground; unmounted and reaped on drop.
pub struct Mount {
    /// The mountpoint (inside `dir`).
    pub path: PathBuf,
    /// The daemon's log file.
    pub log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `s3://bucket/prefix` from `endpoint` with extra `args`, and waits until the
    /// mount is live. Panics (after cleaning up) if it does not come up.
    pub fn new(endpoint: &Endpoint, source: &str, args: &[&str]) -> Mount {
        Mount::new_with(endpoint, source, args, |_| {})
    }

    /// [`Mount::new`], with `prepare` applied to the daemon's command before it starts.
    pub fn new_with(
        endpoint: &Endpoint,
        source: &str,
        args: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mountpoint");
        let log = dir.path().join("modelfs.log");
        let mut cmd = mount_command(endpoint, source, &path);
        cmd.args(["--foreground", "--log-level", "debug", "--log-file"])
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        prepare(&mut cmd);
        let child = cmd.spawn().expect("spawn modelfs");
        let mut mount = Mount {
            path,
            log,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&mount.path) {
            if let Some(status) = mount
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut stderr = String::new();
                if let Some(mut e) = mount.child.take().and_then(|mut c| c.stderr.take()) {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                panic!(
                    "modelfs exited ({status}) before mounting: {stderr}\nlog:\n{}",
                    mount.log_text()
                );
            }
            assert!(Instant::now() < deadline, "mount did not appear in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    /// `self.path.join(rel)`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts with `fusermount3 -u` and waits for the daemon to exit; returns its status.
    /// A busy mount is tried again for a few seconds: a child another test thread forks
    /// holds this thread's open files until it execs.
    pub fn unmount(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status()
                .expect("run fusermount3");
            if status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "fusermount3 -u failed");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_exit(Duration::from_secs(20))
            .expect("modelfs did not exit after unmount")
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status();
        }
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A mount of `s3://models/m` on `endpoint` with a disk cache at `cache` limited to `size` (an
/// explicit limit: the default, keep 10% of the disk free, depends on the machine), plus
/// `extra` flags.
pub fn mount_with_cache(endpoint: &Endpoint, cache: &Path, size: &str, extra: &[&str]) -> Mount {
    let mut args = vec![
        "--cache-dir",
        cache.to_str().expect("utf-8 path"),
        "--cache-size",
        size,
    ];
    args.extend_from_slice(extra);
    Mount::new(endpoint, "s3://models/m", &args)
}
