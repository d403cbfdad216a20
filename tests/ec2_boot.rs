//! An EC2 Auto Scaling boot, for real: a Debian rootfs (debootstrap, cached under target/) gets
//! the modelfs .deb through the AMI recipe's own install script, then boots with
//! `systemd-nspawn --boot`. Loop devices stand in for two instance-store NVMe disks, one of
//! which appears late; the user-data arrives only after multi-user.target, as cloud-init's
//! final stage runs it on Ubuntu, and overrides the bucket baked into the image. The boot must
//! end with ComfyUI/models mounted from the user-data bucket, the cache on the array, the fstab
//! entry of the README mounted after the cache disk, and the warm-up still downloading when the
//! boot has finished. The machine shares the host's loopback only: the S3 endpoint is local and
//! instance metadata is switched off for every unit.

mod common;
#[path = "common/nspawn.rs"]
mod nspawn;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::modelfs_bin;
use common::pseudo_random;
use modelfs_s3local::{LocalS3, LocalS3Config, Shaping};
use nspawn::{cached_rootfs, run, run_in, tool, LoopDisks, Machine, Overlay};

const SUITE: &str = "bookworm";
/// What a booted image needs and the .deb's dependencies (installed here, not by apt, so the
/// bake needs no network).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "ca-certificates",
    "fuse3",
    "mdadm",
    "e2fsprogs",
];
const BUCKET: &str = "models";
const NAME: &str = "comfyui";
const MOUNTPOINT: &str = "/opt/ComfyUI/models";
const FSTAB_MOUNTPOINT: &str = "/srv/models";
/// Shared between the test and the machine: user-data, the disk links, the mdadm stand-in's log.
const SHARED: &str = "/var/lib/modelfs-test";
const ARRAY: &str = "/dev/md/modelfs-cache";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_repo(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `text` with `from` replaced, insisting that it was there: a shipped example that changes
/// must fail this test rather than be tested in a shape nobody ships.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not found in:\n{text}");
    text.replace(from, to)
}

/// The target directory the test binary was built into (`target/` unless relocated).
fn target_dir() -> PathBuf {
    Path::new(modelfs_bin())
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The .deb of the binary these tests use (cargo-deb, no rebuild; stripped, light compression).
fn build_deb(out: &Path) {
    let bin = Path::new(modelfs_bin());
    let profile = match bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(repo())
        .args(["deb", "-p", "modelfs", "--no-build", "--profile", profile])
        .args(["--strip", "--fast", "--offline", "--quiet", "-o"])
        .arg(out));
}

/// The local S3 endpoint: each response body paced to 128 KiB/s, so the warm-up (many ranged
/// GETs in parallel) takes seconds whatever the machine, while every request (the mount's
/// listing included) still answers at once.
fn start_server(root: &Path) -> LocalS3 {
    let mut config = LocalS3Config::new(root);
    config.shaping = Shaping {
        per_response_bytes_per_sec: Some(128 << 10),
        ..Shaping::off()
    };
    let server = LocalS3::start(config).expect("local S3");
    server.store().create_bucket(BUCKET).expect("bucket");
    server
}

/// What the image needs besides the .deb to stand in for EC2 (all under the machine's root):
/// the AMI's baked settings (a bucket user-data must override), credentials for the local
/// endpoint, loop devices named as instance store, an mdadm stand-in, cloud-init's final stage,
/// a ComfyUI unit written as the README says, and the README's fstab line.
fn configure_image(image: &Overlay, server: &LocalS3, disks: &LoopDisks, array: &str) {
    let endpoint = format!(
        "--endpoint-url {} --region {} --force-path-style",
        server.endpoint_url(),
        server.region()
    );
    let baked = substitute(
        &read_repo("deploy/ec2/modelfs.env.example"),
        "s3://my-models-bucket/ComfyUI/models",
        "s3://baked-bucket/ComfyUI/models",
    );
    let baked = substitute(&baked, "--region us-west-2", &endpoint);
    image.write(&format!("/etc/modelfs/{NAME}.env"), &baked, 0o644);
    image.write(
        "/etc/modelfs/workflow.json",
        r#"{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}}"#,
        0o644,
    );
    image.write(
        "/etc/modelfs/instance-store.env",
        &format!(
            "MODELFS_DEVICE_GLOB={SHARED}/disks/disk*\nMODELFS_INSTANCE_STORE_DEVICES={}\nMODELFS_DEVICE_TIMEOUT=120\n",
            disks.devices.len()
        ),
        0o644,
    );
    // Every unit (mount helpers included) talks to the local endpoint only.
    image.write(
        "/etc/systemd/system.conf.d/modelfs-test.conf",
        &format!(
            "[Manager]\nDefaultEnvironment=AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null\n",
            server.access_key(),
            server.secret_key()
        ),
        0o644,
    );
    // This kernel has no md driver: the stand-in records the call and points the array name
    // at a spare loop device, where the real array would appear.
    image.write(
        "/usr/local/sbin/mdadm",
        &format!(
            "#!/bin/bash\necho \"$*\" >> {SHARED}/mdadm.log\ncase \"$1\" in\n  --create) mkdir -p \"$(dirname \"$2\")\"; ln -sf {array} \"$2\" ;;\n  *) exit 1 ;;\nesac\n"
        ),
        0o755,
    );
    // cloud-init's final stage as on Ubuntu: after multi-user.target, runs the user-data.
    image.write(
        "/usr/local/sbin/cloud-final-stand-in",
        &format!(
            "#!/bin/sh\nset -eu\nwhile [ ! -f {SHARED}/user-data ]; do sleep 0.1; done\nexec /bin/bash {SHARED}/user-data\n"
        ),
        0o755,
    );
    image.write(
        "/etc/systemd/system/cloud-final.service",
        "[Unit]\nDescription=Stand-in for cloud-init's final stage (user-data)\nAfter=multi-user.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/cloud-final-stand-in\nTimeoutStartSec=5min\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    image.write(
        "/etc/systemd/system/comfyui.service",
        &format!(
            "[Unit]\nDescription=Stand-in for ComfyUI: lists the models it would load\n\
             Requires=modelfs@{NAME}.service\nAfter=modelfs@{NAME}.service\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'ls -R {MOUNTPOINT} > {SHARED}/comfyui-saw'\n\n\
             [Install]\nWantedBy=modelfs@{NAME}.service\n"
        ),
        0o644,
    );
    let links = [
        (
            "multi-user.target.wants/cloud-final.service",
            "/etc/systemd/system/cloud-final.service",
        ),
        (
            &format!("modelfs@{NAME}.service.wants/comfyui.service") as &str,
            "/etc/systemd/system/comfyui.service",
        ),
        // Nothing may reach a network: the image's apt timers stay off.
        ("apt-daily.timer", "/dev/null"),
        ("apt-daily-upgrade.timer", "/dev/null"),
    ];
    for (link, target) in links {
        let path = image.path(&format!("/etc/systemd/system/{link}"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, &path).expect("enable link");
    }
    // The README's fstab line, pointed at the local endpoint and its own mountpoint.
    let readme = read_repo("deploy/ec2/README.md");
    let line = readme
        .split("```fstab\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("an fstab example in deploy/ec2/README.md");
    let line = substitute(
        line,
        "s3://my-models-bucket/ComfyUI/models",
        &format!("s3://{BUCKET}/ComfyUI/models"),
    );
    let line = substitute(&line, MOUNTPOINT, FSTAB_MOUNTPOINT);
    let line = substitute(
        &line,
        "region=us-west-2",
        &format!(
            "endpoint_url={},region={},force_path_style",
            server.endpoint_url(),
            server.region()
        ),
    );
    assert!(
        line.contains("x-systemd.requires=modelfs-instance-store.service"),
        "{line}"
    );
    image.write("/etc/fstab", &format!("{line}\n"), 0o644);
}

/// The launch template's user-data: the shipped example, pointed at the local endpoint.
fn user_data(server: &LocalS3) -> String {
    let text = substitute(
        &read_repo("deploy/ec2/user-data.sh"),
        "s3://my-models-bucket/ComfyUI/models",
        &format!("s3://{BUCKET}/ComfyUI/models"),
    );
    substitute(
        &text,
        "--region us-west-2",
        &format!(
            "--endpoint-url {} --region {} --force-path-style",
            server.endpoint_url(),
            server.region()
        ),
    )
}

fn link(shared: &Path, name: &str, device: &str) {
    let path = shared.join("disks").join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink(device, path).expect("disk link");
}

/// Fails with `what` unless `cond`.
fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

struct Boot<'a> {
    machine: &'a mut Machine,
    shared: &'a Path,
    server: &'a LocalS3,
    disks: &'a LoopDisks,
    array: &'a str,
    base: &'a [u8],
    started: Instant,
}

impl Boot<'_> {
    fn note(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn active(&mut self, unit: &str, timeout: Duration) -> Result<(), String> {
        let unit = unit.to_string();
        self.machine
            .wait_for(&format!("{unit} to be active"), timeout, |m| {
                match m.show(&unit, "ActiveState").as_str() {
                    "active" => Some(Ok(())),
                    "failed" => Some(Err(format!("{unit} failed"))),
                    _ => None,
                }
            })?
    }

    fn run(&mut self) -> Result<(), String> {
        let mount_unit = format!("modelfs@{NAME}.service");
        let warm_unit = format!("modelfs-warm@{NAME}.service");
        let store_unit = "modelfs-instance-store.service";

        // 1. A slow instance-store device: the unit waits for it instead of falling back.
        let waiting = format!(
            "waiting for {} instance-store device(s), 1 present",
            self.disks.devices.len()
        );
        self.machine.wait_for(
            "the instance-store unit to wait for its second disk",
            Duration::from_secs(60),
            |m| m.journal(store_unit).contains(&waiting).then_some(()),
        )?;
        link(self.shared, "disk1", &self.disks.devices[1]);
        self.note("instance-store unit waiting for disk1; disk1 attached");

        // 2. multi-user.target comes before user-data, and the mount has not started.
        self.active("multi-user.target", Duration::from_secs(120))?;
        self.note("multi-user.target active");
        ensure(
            self.machine
                .monotonic(&mount_unit, "ExecMainStartTimestampMonotonic")
                == 0,
            || format!("{mount_unit} started before user-data was written"),
        )?;

        // 3. user-data arrives late, as cloud-final runs it.
        let tmp = self.shared.join("user-data.tmp");
        std::fs::write(&tmp, user_data(self.server)).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.shared.join("user-data")).map_err(|e| e.to_string())?;
        self.note("user-data written");
        self.active(&mount_unit, Duration::from_secs(120))?;
        self.note("modelfs@comfyui active");

        // 4. The mount serves the user-data bucket, started once, after user-data.
        let m = &*self.machine;
        let mounted = m.check(&["findmnt", "-n", "-o", "FSTYPE,SOURCE", MOUNTPOINT])?;
        let source = format!("s3://{BUCKET}/ComfyUI/models");
        ensure(
            mounted.starts_with("fuse")
                && mounted
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|s| s.starts_with(&source)),
            || format!("{MOUNTPOINT}: {mounted:?}, not FUSE from {source}"),
        )?;
        let names: Vec<String> = std::fs::read_dir(m.path(&format!("{MOUNTPOINT}/checkpoints")))
            .map_err(|e| format!("listing checkpoints: {e}"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        ensure(
            names.iter().any(|n| n == "base.safetensors")
                && names.iter().any(|n| n == "sdxl.safetensors"),
            || format!("checkpoints: {names:?}"),
        )?;
        let read = std::fs::read(m.path(&format!("{MOUNTPOINT}/checkpoints/base.safetensors")))
            .map_err(|e| format!("read through the mount: {e}"))?;
        ensure(read == self.base, || {
            "the mount returned wrong bytes".into()
        })?;
        ensure(m.show(&mount_unit, "NRestarts") == "0", || {
            format!(
                "{mount_unit} restarted {} times",
                m.show(&mount_unit, "NRestarts")
            )
        })?;
        let user_data_done = m.monotonic("cloud-final.service", "ExecMainExitTimestampMonotonic");
        let mount_start = m.monotonic(&mount_unit, "ExecMainStartTimestampMonotonic");
        let multi_user = m.monotonic("multi-user.target", "ActiveEnterTimestampMonotonic");
        ensure(
            multi_user > 0 && user_data_done > multi_user && mount_start > user_data_done,
            || {
                format!("multi-user.target at {multi_user}, user-data done at {user_data_done}, mount started at {mount_start} (µs)")
            },
        )?;
        let journal = m.journal(&mount_unit);
        let override_line = format!(
            "MODELFS_SOURCE=s3://{BUCKET}/ComfyUI/models from /etc/modelfs/{NAME}.env.d/user-data.env overrides MODELFS_SOURCE=s3://baked-bucket/ComfyUI/models from /etc/modelfs/{NAME}.env"
        );
        ensure(journal.contains(&override_line), || {
            format!("no override logged:\n{journal}")
        })?;

        // 5. The cache is on the array built from both disks.
        let cache_env =
            std::fs::read_to_string(m.path("/run/modelfs/cache.env")).map_err(|e| e.to_string())?;
        let cache_dir = cache_env
            .lines()
            .find_map(|l| l.strip_prefix("MODELFS_CACHE_DIR="))
            .ok_or_else(|| format!("cache.env: {cache_env}"))?
            .to_string();
        let on = m.check(&[
            "findmnt",
            "-n",
            "-o",
            "SOURCE,FSTYPE",
            "--target",
            &cache_dir,
        ])?;
        ensure(
            on.split_whitespace().collect::<Vec<_>>() == [self.array, "ext4"],
            || {
                format!(
                    "{cache_dir} is on {on:?}, not ext4 on the array {}",
                    self.array
                )
            },
        )?;
        let mdadm = std::fs::read_to_string(self.shared.join("mdadm.log")).unwrap_or_default();
        let create = format!(
            "--create {ARRAY} --level=0 --raid-devices=2 --run --homehost=any {}",
            self.disks.devices.join(" ")
        );
        ensure(mdadm.lines().any(|l| l == create), || {
            format!("mdadm calls: {mdadm}")
        })?;
        let pid = m.show(&mount_unit, "MainPID");
        let cmdline = m
            .check(&["cat", &format!("/proc/{pid}/cmdline")])?
            .replace('\0', " ");
        ensure(
            cmdline.contains(&format!("--cache-dir {cache_dir} ")),
            || format!("modelfs runs as: {cmdline}"),
        )?;

        // 6. ComfyUI, ordered as the README says, started on the live mount.
        self.active("comfyui.service", Duration::from_secs(30))?;
        let m = &*self.machine;
        let saw = std::fs::read_to_string(self.shared.join("comfyui-saw")).unwrap_or_default();
        ensure(saw.contains("sdxl.safetensors"), || {
            format!("ComfyUI saw: {saw}")
        })?;

        // 7. The fstab line: mounted after the cache disk, its cache on the array.
        let fstab_unit = "srv-models.mount";
        let requires = m.show(fstab_unit, "Requires");
        let after = m.show(fstab_unit, "After");
        ensure(
            requires.contains(store_unit) && after.contains(store_unit),
            || format!("{fstab_unit}: Requires={requires} After={after}"),
        )?;
        self.active(fstab_unit, Duration::from_secs(60))?;
        let m = &*self.machine;
        ensure(
            m.monotonic(fstab_unit, "InactiveExitTimestampMonotonic")
                >= m.monotonic(store_unit, "ActiveEnterTimestampMonotonic"),
            || "the fstab mount started before the cache disk was ready".into(),
        )?;
        let read =
            std::fs::read(m.path(&format!("{FSTAB_MOUNTPOINT}/checkpoints/base.safetensors")))
                .map_err(|e| format!("read through the fstab mount: {e}"))?;
        ensure(read == self.base, || {
            "the fstab mount returned wrong bytes".into()
        })?;
        self.note("fstab mount checked");

        // 8. Warming ran alongside and the boot did not wait for it.
        let finished =
            self.machine
                .wait_for("the boot to finish", Duration::from_secs(60), |m| {
                    Some(m.monotonic("", "FinishTimestampMonotonic")).filter(|&t| t > 0)
                })?;
        self.note("boot finished");
        let warm_exit =
            self.machine
                .wait_for("the warm-up to end", Duration::from_secs(180), |m| {
                    Some(m.monotonic(&warm_unit, "ExecMainExitTimestampMonotonic"))
                        .filter(|&t| t > 0)
                })?;
        self.note("warm-up ended");
        let m = &*self.machine;
        let warm_start = m.monotonic(&warm_unit, "ExecMainStartTimestampMonotonic");
        let warm_journal = m.journal(&warm_unit);
        ensure(
            m.show(&warm_unit, "ExecMainStatus") == "0" && warm_journal.contains("warmed 1 files"),
            || format!("warm-up failed:\n{warm_journal}"),
        )?;
        ensure(
            warm_start < finished && finished < warm_exit && multi_user < warm_exit,
            || {
                format!("warm-up ran {warm_start}..{warm_exit}, boot finished at {finished}, multi-user.target at {multi_user} (µs)")
            },
        )?;
        let warmed = warm_journal
            .lines()
            .find(|l| l.starts_with("warmed"))
            .unwrap_or_default();
        self.note(&format!(
            "boot finished {:.1} s after the warm-up started and {:.1} s before it ended ({warmed})",
            (finished - warm_start) as f64 / 1e6,
            (warm_exit - finished) as f64 / 1e6
        ));
        let state = m
            .check(&["systemctl", "is-system-running"])
            .unwrap_or_else(|e| e);
        ensure(state.trim() == "running", || {
            format!("system state: {state}")
        })?;
        Ok(())
    }
}

#[test]
fn an_auto_scaling_boot_mounts_the_user_data_bucket_after_cloud_final_with_the_cache_on_the_array()
{
    let started = Instant::now();
    for t in ["systemd-nspawn", "nsenter", "cargo-deb", "losetup"] {
        tool(t);
    }
    let work = target_dir().join("ec2-boot");
    let rootfs_dir = std::env::var_os("MODELFS_TEST_ROOTFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.join(format!("rootfs-{SUITE}")));
    let rootfs = cached_rootfs(&rootfs_dir, SUITE, PACKAGES);
    eprintln!("rootfs ready in {:.1} s", started.elapsed().as_secs_f64());

    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&work)
        .expect("run dir");
    let bake = run_dir.path().join("bake");
    let shared = run_dir.path().join("shared");
    std::fs::create_dir_all(&bake).expect("mkdir");
    std::fs::create_dir_all(&shared).expect("mkdir");
    build_deb(&bake.join("modelfs.deb"));
    std::fs::copy(
        repo().join("deploy/ec2/packer/install.sh"),
        bake.join("install.sh"),
    )
    .expect("copy");

    let s3_root = tempfile::tempdir().expect("tmp");
    let server = start_server(s3_root.path());
    let base = pseudo_random(21, 256 << 10);
    let prefix = "ComfyUI/models";
    let store = server.store();
    store
        .put_bytes(
            BUCKET,
            &format!("{prefix}/checkpoints/base.safetensors"),
            &base,
        )
        .expect("seed");
    store
        .put_bytes(
            BUCKET,
            &format!("{prefix}/checkpoints/sdxl.safetensors"),
            &pseudo_random(22, 24 << 20),
        )
        .expect("seed");
    store
        .put_bytes(
            BUCKET,
            &format!("{prefix}/loras/ink.safetensors"),
            &pseudo_random(23, 64 << 10),
        )
        .expect("seed");

    // Bake: the AMI recipe's script installs the .deb and enables the units.
    let machine_name = format!("modelfs-ec2-{}", std::process::id());
    let image = Overlay::new(&rootfs, &run_dir.path().join("machine"));
    let out = run_in(
        &image.root,
        &machine_name,
        &[format!("--bind-ro={}:/mnt/bake", bake.display())],
        &[
            "/bin/bash",
            "/mnt/bake/install.sh",
            "/mnt/bake/modelfs.deb",
            NAME,
            "--warm",
        ],
    );
    assert!(
        out.status.success(),
        "install.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("image baked in {:.1} s", started.elapsed().as_secs_f64());

    let disks = LoopDisks::new(2, 64 << 20);
    let array = LoopDisks::new(1, 128 << 20);
    configure_image(&image, &server, &disks, &array.devices[0]);
    link(&shared, "disk0", &disks.devices[0]);

    let mut binds: Vec<String> = vec![
        "--bind=/dev/fuse".into(),
        format!("--bind={}:{SHARED}", shared.display()),
    ];
    binds.extend(
        disks
            .devices
            .iter()
            .chain(&array.devices)
            .map(|d| format!("--bind={d}")),
    );
    let boot_started = Instant::now();
    let mut machine = Machine::boot(
        &image.root,
        &machine_name,
        &binds,
        &run_dir.path().join("console.log"),
    );
    let result = Boot {
        machine: &mut machine,
        shared: &shared,
        server: &server,
        disks: &disks,
        array: &array.devices[0],
        base: &base,
        started: boot_started,
    }
    .run();
    if let Err(e) = result {
        panic!("{e}\n\n{}", machine.diagnostics());
    }
    let status = machine
        .poweroff(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", machine.diagnostics()));
    assert!(status.success(), "the machine's shutdown: {status}");
    eprintln!(
        "boot to power-off {:.1} s; whole test {:.1} s",
        boot_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
