//! The standalone EC2 deployment (deploy/ec2): systemd units verified by systemd itself, the
//! fstab helper doing a real `mount -t fuse.modelfs`, the instance-store script on loop
//! devices standing in for NVMe disks (late ones included), the settings layers, the Packer
//! template, and a clean SIGTERM with a reader active. tests/ec2_boot.rs boots all of it.

mod common;
#[path = "common/nspawn.rs"]
mod nspawn;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, modelfs_bin, s3_env, Mount};
use common::s3::LocalServer;
use nspawn::{run, tool, LoopDisks};

const BUCKET: &str = "models";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let systemd_analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tmp");
    let script = repo().join("deploy/ec2/modelfs-instance-store.sh");
    let settings = repo().join("deploy/ec2/modelfs-settings.sh");
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
            .replace("/usr/bin/modelfs", modelfs_bin())
            .replace(
                "/usr/sbin/modelfs-instance-store",
                &script.to_string_lossy(),
            )
            .replace(
                "/usr/lib/modelfs/modelfs-settings",
                &settings.to_string_lossy(),
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
fn shell_scripts_pass_shellcheck() {
    let shellcheck = tool("shellcheck");
    for script in [
        "modelfs-instance-store.sh",
        "modelfs-settings.sh",
        "user-data.sh",
        "packer/install.sh",
        "debian/postinst",
        "debian/prerm",
        "debian/postrm",
    ] {
        run(Command::new(&shellcheck).arg(repo().join("deploy/ec2").join(script)));
    }
}

#[test]
fn packer_template_validates_offline_and_is_formatted() {
    let packer = tool("packer");
    let template = repo().join("deploy/ec2/packer/modelfs.pkr.hcl");
    run(Command::new(&packer)
        .args(["fmt", "-check"])
        .arg(template.parent().expect("dir")));
    // In a namespace without a network: validation must not need AWS (nor reach it).
    run(Command::new("unshare")
        .args(["--net", &packer, "validate", "-var", "deb=Cargo.toml"])
        .arg(&template)
        .current_dir(repo()));
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

    /// The script with its paths in the sandbox.
    fn command(&self) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("deploy/ec2/modelfs-instance-store.sh"))
            .env("MODELFS_CACHE_MOUNT", self.path("mnt"))
            .env("MODELFS_FALLBACK_DIR", self.path("fallback"))
            .env("MODELFS_CACHE_ENV", self.path("etc/cache.env"))
            .env("MODELFS_MD_DEVICE", self.path("md-modelfs"));
        cmd
    }

    /// Runs it on exactly `devices` (none: an instance type without instance store).
    fn run(&self, devices: &[String], path_prefix: Option<&Path>) -> Output {
        let mut cmd = self.command();
        if devices.is_empty() {
            cmd.env("MODELFS_INSTANCE_STORE_DEVICES", "0")
                .env("MODELFS_DEVICE_GLOB", self.path("no-disks/*"));
        } else {
            cmd.env("MODELFS_DEVICES", devices.join(" "));
        }
        if let Some(prefix) = path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", prefix.display()));
        }
        run(&mut cmd)
    }

    /// Links `device` as instance-store disk `name` where `command_waiting` looks.
    fn attach(&self, name: &str, device: &str) {
        std::fs::create_dir_all(self.path("disks")).expect("mkdir");
        std::os::unix::fs::symlink(device, self.path("disks").join(name)).expect("link");
    }

    /// The script waiting up to `timeout_s` for `expected` disks linked with `attach`.
    fn command_waiting(&self, expected: usize, timeout_s: u64) -> Command {
        let mut cmd = self.command();
        cmd.env("MODELFS_DEVICE_GLOB", self.path("disks/disk*"))
            .env("MODELFS_INSTANCE_STORE_DEVICES", expected.to_string())
            .env("MODELFS_DEVICE_TIMEOUT", timeout_s.to_string());
        cmd
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
fn instance_store_missing_a_device_fails_instead_of_using_the_root_volume() {
    let disks = LoopDisks::new(1, 64 << 20);
    let sandbox = ScriptRun::new();
    sandbox.attach("disk0", &disks.devices[0]);
    let out = sandbox
        .command_waiting(2, 2)
        .output()
        .expect("run the script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("expected 2 instance-store device(s), found 1")
            && stderr.contains("refusing to put the cache on the root volume"),
        "{stderr}"
    );
    assert!(!sandbox.path("etc/cache.env").exists());
    assert!(!sandbox.path("fallback").exists());
    assert!(!is_mounted(&sandbox.path("mnt")));
}

#[test]
fn instance_store_waits_for_a_device_that_appears_late() {
    tool("mkfs.ext4");
    let disks = LoopDisks::new(1, 64 << 20);
    let sandbox = ScriptRun::new();
    let mut child = sandbox
        .command_waiting(1, 60)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the script");
    // Attach the disk only once the script says it is waiting for it.
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen)
        .contains("waiting for 1 instance-store device(s), 0 present")
    {
        let n = std::io::Read::read(&mut stderr, &mut byte).expect("read stderr");
        assert!(
            n == 1,
            "the script ended without waiting: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    sandbox.attach("disk0", &disks.devices[0]);
    std::io::Read::read_to_end(&mut stderr, &mut seen).expect("read stderr");
    let status = child.wait().expect("wait");
    let log = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{log}");
    assert!(log.contains("found 1 instance-store device(s)"), "{log}");
    assert!(is_mounted(&sandbox.path("mnt")), "{log}");
    assert!(sandbox.env_file().contains(&format!(
        "MODELFS_CACHE_DIR={}",
        sandbox.path("mnt/cache").display()
    )));
}

/// Runs modelfs-settings.sh on `etc`; its status, the settings it wrote and its log.
fn settings(etc: &Path, mode: &str) -> (bool, Option<String>, String) {
    let run_dir = etc.join("run");
    let out = Command::new("bash")
        .arg(repo().join("deploy/ec2/modelfs-settings.sh"))
        .args([mode, "comfyui"])
        .env("MODELFS_ETC", etc)
        .env("MODELFS_RUN", &run_dir)
        .output()
        .expect("run modelfs-settings");
    (
        out.status.success(),
        std::fs::read_to_string(run_dir.join("comfyui.env")).ok(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn user_data_drop_in_overrides_baked_settings_key_by_key_and_says_so() {
    let etc = tempfile::tempdir().expect("tmp");
    std::fs::write(
        etc.path().join("comfyui.env"),
        "# baked\nMODELFS_SOURCE=s3://baked/m\nMODELFS_MOUNTPOINT=/opt/m\nAWS_SECRET_ACCESS_KEY=baked-secret\n",
    )
    .expect("write");
    std::fs::create_dir(etc.path().join("comfyui.env.d")).expect("mkdir");
    std::fs::write(
        etc.path().join("comfyui.env.d/user-data.env"),
        "MODELFS_SOURCE=s3://launch/m\nMODELFS_OPTIONS=--region eu-west-1\nAWS_SECRET_ACCESS_KEY=launch-secret\n",
    )
    .expect("write");
    let (ok, out, log) = settings(etc.path(), "mount");
    assert!(ok, "{log}");
    assert_eq!(
        out.as_deref(),
        Some("MODELFS_SOURCE=s3://launch/m\nMODELFS_MOUNTPOINT=/opt/m\nAWS_SECRET_ACCESS_KEY=launch-secret\nMODELFS_OPTIONS=--region eu-west-1\n")
    );
    let drop_in = etc.path().join("comfyui.env.d/user-data.env");
    let baked = etc.path().join("comfyui.env");
    assert!(
        log.contains(&format!(
            "MODELFS_SOURCE=s3://launch/m from {} overrides MODELFS_SOURCE=s3://baked/m from {}",
            drop_in.display(),
            baked.display()
        )),
        "{log}"
    );
    // Other keys' values never reach the log (they may be credentials).
    assert!(!log.contains("secret"), "{log}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(etc.path().join("run/comfyui.env"))
        .expect("settings")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "settings readable by others");
    // Warming needs MODELFS_WARM: refused with the reason.
    let (ok, _, log) = settings(etc.path(), "warm");
    assert!(!ok && log.contains("MODELFS_WARM is not set"), "{log}");
}

#[test]
fn settings_that_are_missing_or_malformed_fail_loudly() {
    let etc = tempfile::tempdir().expect("tmp");
    let (ok, out, log) = settings(etc.path(), "mount");
    assert!(!ok && out.is_none() && log.contains("no settings"), "{log}");
    std::fs::write(etc.path().join("comfyui.env"), "MODELFS_SOURCE=s3://b/m\n").expect("write");
    let (ok, _, log) = settings(etc.path(), "mount");
    assert!(
        !ok && log.contains("MODELFS_MOUNTPOINT is not set"),
        "{log}"
    );
    std::fs::write(
        etc.path().join("comfyui.env"),
        "MODELFS_SOURCE=s3://b/m\nMODELFS_MOUNTPOINT=/m\nexport X=1\n",
    )
    .expect("write");
    let (ok, _, log) = settings(etc.path(), "mount");
    assert!(
        !ok && log.contains("comfyui.env:3 is not a one-line KEY=VALUE"),
        "{log}"
    );
}

#[test]
fn instance_store_with_one_disk_formats_once_and_mounts() {
    tool("mkfs.ext4");
    let disks = LoopDisks::new(1, 64 << 20);
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
    let disks = LoopDisks::new(2, 64 << 20);
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
    server.seed("m/checkpoints/a.safetensors", b"fstab works");
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
    server.seed("m/loras/big.safetensors", &data);
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
