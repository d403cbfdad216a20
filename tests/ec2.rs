//! The standalone EC2 deployment (deploy/ec2): systemd units verified by systemd itself, the
//! fstab helper doing a real `mount -t fuse.modelfs`, the instance-store script on loop
//! devices standing in for NVMe disks, and a clean SIGTERM with a reader active.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, modelfs_bin, s3_env, Mount};
use common::s3::LocalServer;

const BUCKET: &str = "models";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> String {
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

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let systemd_analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tmp");
    let script = repo().join("deploy/ec2/modelfs-instance-store.sh");
    let units = [
        ("modelfs@.service", "modelfs@comfyui.service"),
        ("modelfs-warm@.service", "modelfs-warm@comfyui.service"),
        (
            "modelfs-instance-store.service",
            "modelfs-instance-store.service",
        ),
    ];
    let mut paths = Vec::new();
    for (template, instance) in units {
        let text = std::fs::read_to_string(repo().join("deploy/ec2").join(template))
            .expect("unit file")
            .replace("/usr/local/bin/modelfs", modelfs_bin())
            .replace(
                "/usr/local/sbin/modelfs-instance-store",
                &script.to_string_lossy(),
            );
        let path = dir.path().join(instance);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    let out = Command::new(systemd_analyze)
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Units that order after network-online.target etc. are fine; anything about our units
    // (bad keys, missing executables, syntax) is not.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("modelfs")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn instance_store_script_passes_shellcheck() {
    let shellcheck = tool("shellcheck");
    for script in ["modelfs-instance-store.sh", "user-data.sh"] {
        run(Command::new(&shellcheck).arg(repo().join("deploy/ec2").join(script)));
    }
}

/// Loop devices over sparse files, detached on drop.
struct LoopDisks {
    devices: Vec<String>,
    _dir: tempfile::TempDir,
}

impl LoopDisks {
    fn new(count: usize) -> LoopDisks {
        tool("losetup");
        let dir = tempfile::tempdir().expect("tmp");
        let mut devices = Vec::new();
        for i in 0..count {
            let file = dir.path().join(format!("disk{i}.img"));
            std::fs::File::create(&file)
                .and_then(|f| f.set_len(64 << 20))
                .expect("sparse disk image");
            let out = run(Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file));
            devices.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        LoopDisks { devices, _dir: dir }
    }
}

impl Drop for LoopDisks {
    fn drop(&mut self) {
        for dev in &self.devices {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Runs the instance-store script in a sandbox: its mount point, env file and fallback dir
/// live in `root`; `PATH` may put a stand-in `mdadm` first.
struct ScriptRun {
    root: tempfile::TempDir,
}

impl ScriptRun {
    fn new() -> ScriptRun {
        ScriptRun {
            root: tempfile::tempdir().expect("tmp"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn run(&self, devices: &[String], path_prefix: Option<&Path>) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/ec2/modelfs-instance-store.sh"))
            .env("MODELFS_DEVICES", devices.join(" "))
            .env("MODELFS_CACHE_MOUNT", self.path("mnt"))
            .env("MODELFS_FALLBACK_DIR", self.path("fallback"))
            .env("MODELFS_CACHE_ENV", self.path("etc/cache.env"))
            .env("MODELFS_MD_DEVICE", self.path("md-modelfs"));
        if let Some(prefix) = path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", prefix.display()));
        }
        run(&mut cmd)
    }

    fn env_file(&self) -> String {
        std::fs::read_to_string(self.path("etc/cache.env")).expect("env file written")
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        let mnt = self.path("mnt");
        if is_mounted(&mnt) {
            let _ = Command::new("umount").arg(&mnt).status();
        }
    }
}

#[test]
fn instance_store_without_disks_falls_back_to_the_root_volume() {
    let sandbox = ScriptRun::new();
    for _ in 0..2 {
        sandbox.run(&[], None);
        let env = sandbox.env_file();
        assert!(
            env.contains(&format!(
                "MODELFS_CACHE_DIR={}",
                sandbox.path("fallback").display()
            )),
            "{env}"
        );
        assert!(env.contains("MODELFS_CACHE_SIZE=20GiB"), "{env}");
        assert!(sandbox.path("fallback").is_dir());
        assert!(!is_mounted(&sandbox.path("mnt")));
    }
}

#[test]
fn instance_store_with_one_disk_formats_once_and_mounts() {
    tool("mkfs.ext4");
    let disks = LoopDisks::new(1);
    let sandbox = ScriptRun::new();
    sandbox.run(&disks.devices, None);
    let mnt = sandbox.path("mnt");
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("cache/marker"), b"keep me").expect("write marker");
    assert!(sandbox.env_file().contains("MODELFS_CACHE_SIZE=free:10%"));
    // Second boot, still mounted: nothing changes.
    sandbox.run(&disks.devices, None);
    // Reboot: unmounted, disk intact: mounted again, never reformatted.
    run(Command::new("umount").arg(&mnt));
    sandbox.run(&disks.devices, None);
    assert!(is_mounted(&mnt));
    assert_eq!(
        std::fs::read(mnt.join("cache/marker")).expect("marker"),
        b"keep me"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mnt.join("cache"))
        .expect("cache dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn instance_store_with_two_disks_builds_raid0_once() {
    tool("mkfs.ext4");
    let disks = LoopDisks::new(2);
    let sandbox = ScriptRun::new();
    // This kernel has no md driver, so RAID0 creation is exercised with a stand-in mdadm that
    // records its arguments and backs the array device with a loop device.
    let bin = sandbox.path("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let log = sandbox.path("mdadm.log");
    let md_image = sandbox.path("md.img");
    let fake = format!(
        "#!/bin/bash\necho \"$*\" >> {log}\ncase \"$1\" in\n  --assemble) exit 1 ;;\n  --create)\n    truncate -s 128M {img}\n    ln -sf \"$(losetup --find --show {img})\" \"$2\" ;;\nesac\n",
        log = log.display(),
        img = md_image.display()
    );
    std::fs::write(bin.join("mdadm"), fake).expect("fake mdadm");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("mdadm"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");

    let md = sandbox.path("md-modelfs");
    let cleanup = |md: &Path| {
        if let Ok(target) = std::fs::read_link(md) {
            let _ = Command::new("losetup").arg("-d").arg(target).status();
        }
    };
    sandbox.run(&disks.devices, Some(&bin));
    let mnt = sandbox.path("mnt");
    let mounted = is_mounted(&mnt);
    std::fs::write(mnt.join("cache/marker"), b"x").ok();
    run(Command::new("umount").arg(&mnt));
    sandbox.run(&disks.devices, Some(&bin)); // reboot: the array exists, nothing recreated
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let remounted = is_mounted(&mnt);
    let marker = std::fs::read(mnt.join("cache/marker")).ok();
    let _ = Command::new("umount").arg(&mnt).status();
    cleanup(&md);
    assert!(mounted && remounted);
    assert_eq!(
        marker.as_deref(),
        Some(&b"x"[..]),
        "not reformatted on reboot"
    );
    let creates: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("--create"))
        .collect();
    assert_eq!(creates.len(), 1, "{calls}");
    assert!(
        creates[0].contains("--level=0")
            && creates[0].contains("--raid-devices=2")
            && creates[0].ends_with(&disks.devices.join(" ")),
        "{calls}"
    );
}

/// `/sbin/mount.fuse.modelfs` pointing at the built binary, removed on drop.
struct HelperLink(PathBuf);

impl HelperLink {
    fn install() -> HelperLink {
        let link = PathBuf::from("/sbin/mount.fuse.modelfs");
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            assert!(
                meta.file_type().is_symlink(),
                "{} exists and is not a symlink: a real install is present; not touching it",
                link.display()
            );
            std::fs::remove_file(&link).expect("remove stale helper link");
        }
        std::os::unix::fs::symlink(modelfs_bin(), &link).expect("install helper link");
        HelperLink(link)
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn fstab_style_mount_t_fuse_modelfs_mounts_and_umount_removes_it() {
    let server = LocalServer::start(BUCKET);
    server
        .store()
        .put_bytes(BUCKET, "m/checkpoints/a.safetensors", b"fstab works")
        .expect("seed");
    let _helper = HelperLink::install();
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("models");
    std::fs::create_dir(&mnt).expect("mkdir");
    let options = format!(
        "ro,nodev,_netdev,nofail,endpoint_url={},region={},force_path_style,metadata_ttl=5s",
        server.endpoint.url, server.endpoint.region
    );
    let mut cmd = Command::new("mount");
    s3_env(&mut cmd, &server.endpoint);
    cmd.args(["-t", "fuse.modelfs", "-o", &options, "s3://models/m"])
        .arg(&mnt)
        .stdin(Stdio::null());
    let out = cmd.output().expect("mount");
    let mounted = is_mounted(&mnt);
    let read = std::fs::read(mnt.join("checkpoints/a.safetensors"));
    let unmounted = Command::new("umount").arg(&mnt).status();
    if is_mounted(&mnt) {
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    }
    assert!(
        out.status.success() && mounted,
        "mount -t fuse.modelfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read.expect("read through the fstab mount"), b"fstab works");
    assert!(unmounted.expect("umount").success());
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigterm_with_an_active_reader_lets_it_finish_and_releases_the_mountpoint() {
    let server = LocalServer::start(BUCKET);
    let size = 32usize << 20;
    let data = common::pseudo_random(5, size);
    server
        .store()
        .put_bytes(BUCKET, "m/loras/big.safetensors", &data)
        .expect("seed");
    let mut mount = Mount::new(&server.endpoint, "s3://models/m", &[]);
    let path = mount.join("loras/big.safetensors");
    let pid = mount.pid().expect("pid") as i32;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let mut out = vec![0u8; size];
        for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
            file.read_exact_at(chunk, (i as u64) << 20)?;
            if i == 0 {
                let _ = started_tx.send(());
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        Ok(out)
    });
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("reader started");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let result = reader.join().expect("reader thread");
    match result {
        Ok(bytes) => assert!(bytes == data, "the reader got wrong bytes"),
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::EIO)),
            "unclean error {e}"
        ),
    }
    let start = Instant::now();
    let status = mount
        .wait_exit(Duration::from_secs(45))
        .expect("daemon exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&mount.path));
    assert!(start.elapsed() < Duration::from_secs(45));
}
