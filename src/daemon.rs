//! Background mounts: `modelfs mount` without `--foreground` starts itself again as a detached
//! child that mounts in the foreground, and returns once that child says the mount is ready
//! (or prints the child's error and fails). The child reports through a pipe on fd 3.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The fd number the child finds the readiness pipe on.
const READY_FD: i32 = 3;
const READY: &str = "ready";

/// The child's end of the readiness pipe.
#[derive(Debug)]
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Takes ownership of the inherited fd.
    pub fn from_fd(fd: i32) -> ReadyPipe {
        // SAFETY: the parent passed this fd to us for exactly this purpose and nothing else
        // in the process owns it.
        ReadyPipe(unsafe { File::from_raw_fd(fd) })
    }

    /// Tells the parent the mount is ready.
    pub fn ready(mut self) {
        let _ = writeln!(self.0, "{READY}");
    }

    /// Tells the parent why the mount failed.
    pub fn failed(mut self, message: &str) {
        let _ = write!(self.0, "{message}");
    }
}

/// Starts `modelfs <args> --foreground --ready-fd 3` detached from this session and waits
/// until it reports.
pub fn spawn_background(args: Vec<OsString>) -> anyhow::Result<()> {
    let (mut reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    let writer_fd = writer.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find the modelfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(["--foreground", "--ready-fd", &READY_FD.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if writer_fd == READY_FD {
                libc::fcntl(READY_FD, libc::F_SETFD, 0);
            } else if libc::dup2(writer_fd, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    drop(writer);
    let mut report = String::new();
    reader
        .read_to_string(&mut report)
        .context("cannot read the mount process's report")?;
    if report.trim() == READY {
        return Ok(());
    }
    if report.trim().is_empty() {
        let status = child.wait().context("cannot wait for the mount process")?;
        bail!("the mount process exited ({status}) before the mount was ready; rerun with --foreground to see its log");
    }
    let _ = child.wait();
    bail!("{}", report.trim())
}
