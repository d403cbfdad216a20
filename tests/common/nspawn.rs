//! Machines for the EC2 boot test: a Debian rootfs made once with debootstrap and cached, an
//! overlay per run so the cache stays pristine, loop devices standing in for instance-store
//! disks, and a `systemd-nspawn --boot` machine whose commands run through `nsenter`. Every
//! guard undoes what it made (machine killed, overlay unmounted, loop devices detached,
//! cgroups removed) even when the test panics.

#![allow(dead_code)] // tests/ec2.rs uses the loop devices only

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Panics with a hint unless `name` is on `PATH`.
pub fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is missing: run scripts/setup.sh --with-tests"
    );
    name.to_string()
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Loop devices over sparse files, detached on drop.
pub struct LoopDisks {
    /// `/dev/loopN`, one per disk.
    pub devices: Vec<String>,
    _dir: tempfile::TempDir,
}

impl LoopDisks {
    /// `count` disks of `size` bytes each.
    pub fn new(count: usize, size: u64) -> LoopDisks {
        tool("losetup");
        let dir = tempfile::tempdir().expect("tmp");
        let mut disks = LoopDisks {
            devices: Vec::new(),
            _dir: dir,
        };
        for i in 0..count {
            let file = disks._dir.path().join(format!("disk{i}.img"));
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(size))
                .expect("sparse disk image");
            let out = run(Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file));
            disks
                .devices
                .push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        disks
    }
}

impl Drop for LoopDisks {
    fn drop(&mut self) {
        for dev in &self.devices {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// A Debian `suite` rootfs with `packages`, made by debootstrap at `dir` unless a previous run
/// left one there with the same suite and packages. Built beside `dir` and renamed into place,
/// so an interrupted run never leaves a half-made cache. `MODELFS_TEST_DEBIAN_MIRROR` picks a
/// mirror (default: debootstrap's own).
pub fn cached_rootfs(dir: &Path, suite: &str, packages: &[&str]) -> PathBuf {
    let stamp = format!("{suite} {}\n", packages.join(","));
    let stamp_file = dir.join(".modelfs-rootfs");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return dir.to_path_buf();
    }
    tool("debootstrap");
    let tmp = dir.with_extension("tmp");
    for stale in [&tmp, &dir.to_path_buf()] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).expect("remove a stale rootfs");
        }
    }
    std::fs::create_dir_all(dir.parent().expect("parent")).expect("mkdir");
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(suite)
        .arg(&tmp);
    if let Ok(mirror) = std::env::var("MODELFS_TEST_DEBIAN_MIRROR") {
        cmd.arg(mirror);
    }
    run(cmd.stdin(Stdio::null()));
    std::fs::write(tmp.join(".modelfs-rootfs"), &stamp).expect("stamp");
    std::fs::rename(&tmp, dir).expect("rootfs into place");
    dir.to_path_buf()
}

/// An overlay of `lower` at `<dir>/root`: the machine writes to `<dir>/upper` only.
pub struct Overlay {
    /// The merged tree, the machine's root.
    pub root: PathBuf,
    dir: PathBuf,
}

impl Overlay {
    /// Mounts it; `dir` must not exist yet (it is removed on drop).
    pub fn new(lower: &Path, dir: &Path) -> Overlay {
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir_all(dir.join(sub)).expect("overlay dirs");
        }
        let overlay = Overlay {
            root: dir.join("root"),
            dir: dir.to_path_buf(),
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&overlay.root));
        overlay
    }

    /// `rel` (absolute inside the machine) on the host.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Writes `text` at `rel` inside the machine with `mode`, creating parent directories.
    pub fn write(&self, rel: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write into the rootfs");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if Command::new("umount")
            .arg(&self.root)
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the host runs systemd: then nspawn gets its scope from it over D-Bus. Elsewhere
/// (containers, sandboxes) nspawn runs in a cgroup this module makes (`--keep-unit`).
fn host_has_systemd() -> bool {
    Path::new("/run/systemd/system").exists()
}

/// Cgroups of our own in every hierarchy nspawn uses, for hosts without systemd: the machine's
/// processes live below them, so they can all be found and killed, and nothing is left behind.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn new(name: &str) -> Cgroups {
        let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            ["systemd", "unified"]
                .iter()
                .map(|h| Path::new("/sys/fs/cgroup").join(h))
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        };
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join(name)).collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir).expect("create a cgroup for the machine");
        }
        Cgroups(dirs)
    }

    /// Makes `cmd`'s process start in these cgroups.
    fn enter(&self, cmd: &mut Command) {
        crate::common::cgroup::start_in(cmd, &self.0);
    }

    /// Every process below these cgroups.
    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in self.0.iter().flat_map(|dir| cgroup_tree(dir)) {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// `root` and every cgroup below it, each before its children.
fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
        dirs.push(d);
    }
    dirs
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        crate::common::cgroup::kill_until_empty(|| self.pids());
        for dir in &self.0 {
            // Children first: a cgroup directory goes only once it has none.
            for d in cgroup_tree(dir).iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// The nspawn options every run here shares: no registration with machined (none may run), no
/// changes to the rootfs's resolv.conf, timezone or journal links.
fn nspawn_command(root: &Path, name: &str, cgroups: &Option<Cgroups>) -> Command {
    let mut cmd = Command::new(tool("systemd-nspawn"));
    cmd.arg("--quiet")
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine={name}"))
        .args([
            "--register=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ])
        .env("SYSTEMD_LOG_LEVEL", "warning");
    if let Some(cgroups) = cgroups {
        cmd.arg("--keep-unit");
        cgroups.enter(&mut cmd);
    }
    cmd
}

/// `/run/systemd/nspawn/propagate/NAME`, which nspawn makes and (outside systemd) leaves behind.
fn remove_propagate_dir(name: &str) {
    let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(name));
}

/// Runs `args` in `root` with systemd-nspawn (no boot), as an image build step does.
pub fn run_in(root: &Path, name: &str, binds: &[String], args: &[&str]) -> Output {
    let cgroups = (!host_has_systemd()).then(|| Cgroups::new(&format!("{name}-run")));
    let mut cmd = nspawn_command(root, name, &cgroups);
    cmd.arg("--pipe").args(binds).arg("--").args(args);
    let out = cmd.stdin(Stdio::null()).output().expect("systemd-nspawn");
    drop(cgroups);
    remove_propagate_dir(name);
    out
}

/// A machine booted with `systemd-nspawn --boot`: killed on drop if still running.
pub struct Machine {
    name: String,
    child: Option<Child>,
    leader: i32,
    console: PathBuf,
    cgroups: Option<Cgroups>,
}

impl Machine {
    /// Boots `root` with the extra nspawn `args` (binds); console output goes to `console`.
    /// Returns once the machine's systemd answers.
    pub fn boot(root: &Path, name: &str, args: &[String], console: &Path) -> Machine {
        tool("nsenter");
        let cgroups = (!host_has_systemd()).then(|| Cgroups::new(name));
        let mut cmd = nspawn_command(root, name, &cgroups);
        let log = std::fs::File::create(console).expect("console log");
        cmd.args(["--boot", "--console=read-only"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn systemd-nspawn");
        let mut machine = Machine {
            name: name.to_string(),
            child: Some(child),
            leader: 0,
            console: console.to_path_buf(),
            cgroups,
        };
        let nspawn = machine.child.as_ref().map(|c| c.id() as i32).unwrap_or(0);
        machine.leader = machine
            .wait_for("the machine's init", Duration::from_secs(30), |m| {
                m.exited();
                find_init(nspawn)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        machine
            .wait_for("the machine's systemd", Duration::from_secs(30), |m| {
                let out = m.exec(&["systemctl", "is-system-running"]);
                // Anything but no answer: initializing, starting, running, degraded.
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (!state.is_empty() && state != "offline").then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        machine
    }

    /// Panics (with the console) if nspawn has exited.
    fn exited(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            panic!("systemd-nspawn exited ({status}):\n{}", self.console_text());
        }
    }

    /// Runs `args` inside the machine (all its namespaces, a clean environment).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "--"])
            .args([
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Runs `args` inside the machine; its stdout, or an error with both outputs.
    pub fn check(&self, args: &[&str]) -> Result<String, String> {
        let out = self.exec(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{args:?} in the machine failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `systemctl show -P PROPERTY UNIT` (the manager's own with `unit` empty).
    pub fn show(&self, unit: &str, property: &str) -> String {
        let mut args = vec!["systemctl", "show", "-P", property];
        if !unit.is_empty() {
            args.push(unit);
        }
        String::from_utf8_lossy(&self.exec(&args).stdout)
            .trim()
            .to_string()
    }

    /// A monotonic timestamp property in µs (0 when it has not happened).
    pub fn monotonic(&self, unit: &str, property: &str) -> u64 {
        self.show(unit, property).parse().unwrap_or(0)
    }

    /// One unit's journal, message text only.
    pub fn journal(&self, unit: &str) -> String {
        String::from_utf8_lossy(
            &self
                .exec(&["journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit])
                .stdout,
        )
        .to_string()
    }

    /// What went on in the machine: failed units, modelfs journals, the console.
    pub fn diagnostics(&self) -> String {
        let units = String::from_utf8_lossy(
            &self
                .exec(&[
                    "systemctl",
                    "list-units",
                    "--all",
                    "--no-pager",
                    "*modelfs*",
                    "cloud-final*",
                    "comfyui*",
                    "*.mount",
                ])
                .stdout,
        )
        .to_string();
        let journal = String::from_utf8_lossy(
            &self
                .exec(&["journalctl", "-b", "--no-pager", "-n", "300"])
                .stdout,
        )
        .to_string();
        format!(
            "units:\n{units}\njournal (last 300 lines):\n{journal}\nconsole:\n{}",
            self.console_text()
        )
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `path` inside the machine, seen from the host (through its init's root).
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader)).join(path.trim_start_matches('/'))
    }

    /// Polls `probe` until it returns a value, or fails naming `what` after `timeout`.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&mut Machine) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `systemctl poweroff` and waits for nspawn to exit: its status.
    pub fn poweroff(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let _ = self.exec(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().ok_or("the machine is not running")?;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                remove_propagate_dir(&self.name);
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("the machine did not power off in {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything the machine left running (outside systemd hosts) dies with its cgroups.
        self.cgroups.take();
        remove_propagate_dir(&self.name);
    }
}

/// The machine's init: the first process below `nspawn` that is systemd in another PID
/// namespace.
fn find_init(nspawn: i32) -> Option<i32> {
    let own_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let mut stack = vec![nspawn];
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                let ns = std::fs::read_link(format!("/proc/{child}/ns/pid")).ok();
                if comm.trim() == "systemd" && ns.as_ref() != Some(&own_ns) {
                    return Some(child);
                }
                stack.push(child);
            }
        }
    }
    None
}
