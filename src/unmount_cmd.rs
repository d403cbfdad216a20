//! `modelfs unmount`: detach a mount, like `fusermount3 -u`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Arguments of `modelfs unmount`.
#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// The mountpoint to unmount.
    mountpoint: PathBuf,
    /// Detach now even if files are open (they are released when closed).
    #[arg(long, short = 'z')]
    lazy: bool,
}

/// Runs `modelfs unmount`.
pub fn run(args: UnmountArgs) -> anyhow::Result<()> {
    unmount(&args.mountpoint, args.lazy)
}

/// Unmounts `path`: `umount2` when running as root, else `fusermount3 -u`.
pub fn unmount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .context("mountpoint contains a NUL byte")?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        bail!("cannot unmount {}: {err}", path.display());
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let status = cmd
        .arg(path)
        .status()
        .context("cannot run fusermount3 (install the fuse3 package)")?;
    if !status.success() {
        bail!("fusermount3 -u {} failed ({status})", path.display());
    }
    Ok(())
}
