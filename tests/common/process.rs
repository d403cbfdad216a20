//! Commands the tests expect to end by themselves, killed (and their mess cleaned up) when they
//! do not.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` (stdin closed, stdout and stderr captured) until it exits and returns its output.
/// If it is still running after `limit`, or `give_up()` turns true first (e.g. a mount that
/// should have failed appeared), it is killed, `clean_up` runs (unmount what it may have
/// mounted) and the test panics.
pub fn output_within(
    cmd: &mut Command,
    limit: Duration,
    give_up: impl Fn() -> bool,
    clean_up: impl FnOnce(),
) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > limit || give_up() {
            let _ = child.kill();
            let _ = child.wait();
            clean_up();
            panic!("{cmd:?} did not end as expected within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Unmounts `mountpoint` lazily, ignoring errors (a test's last resort).
pub fn unmount_lazily(mountpoint: &std::path::Path) {
    let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
}
