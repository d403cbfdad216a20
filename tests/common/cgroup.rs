//! Cgroups of the tests' own: starting a command in some, killing what is left in them, and
//! [`MemoryCgroup`], one with a memory limit for a daemon that must see less memory than the
//! machine has (the CSI mounter runs under a pod limit).

#![allow(dead_code)] // not every test binary uses it

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The cgroup; processes started with [`MemoryCgroup::enter`] run in it.
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// A new cgroup named after `name` and this process, limited to `bytes`.
    pub fn new(name: &str, bytes: u64) -> MemoryCgroup {
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (parent, file) = if v2_memory {
            (v2.to_path_buf(), "memory.max")
        } else {
            let v1 = v2.join("memory");
            assert!(
                v1.join("memory.limit_in_bytes").exists(),
                "no memory cgroup controller: neither v2 with memory enabled nor v1 at {}",
                v1.display()
            );
            (v1, "memory.limit_in_bytes")
        };
        let dir = parent.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a memory cgroup");
        let group = MemoryCgroup { dir };
        std::fs::write(group.dir.join(file), bytes.to_string()).expect("set the memory limit");
        group
    }

    /// Makes `cmd`'s process start in this cgroup.
    pub fn enter(&self, cmd: &mut Command) {
        start_in(cmd, std::slice::from_ref(&self.dir));
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        kill_until_empty(|| self.pids());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Makes `cmd`'s process start in the cgroups `dirs` (one per hierarchy).
pub fn start_in(cmd: &mut Command, dirs: &[PathBuf]) {
    let procs: Vec<std::ffi::CString> = dirs
        .iter()
        .map(|d| {
            std::ffi::CString::new(d.join("cgroup.procs").to_string_lossy().as_bytes())
                .expect("path")
        })
        .collect();
    // SAFETY: only open/write/close between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            for path in &procs {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Kills every process `pids()` names until it names none, for at most 10 s.
pub fn kill_until_empty(pids: impl Fn() -> Vec<i32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
