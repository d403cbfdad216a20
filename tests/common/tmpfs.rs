//! A small tmpfs for a disk cache that must run out of room, unmounted even when a test fails.

use std::path::PathBuf;
use std::process::Command;

/// A tmpfs of a given size (mode 0700) in a temporary directory; unmounted, and the directory
/// removed, on drop. Mounting needs root, as the tests that use it run.
pub struct Tmpfs {
    /// Where it is mounted.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `16m`).
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tmpfs");
        std::fs::create_dir(&path).expect("mkdir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot mount a tmpfs (tests run as root)");
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
