//! The CSI node plugin end to end: a real `modelfs csi` process on a Unix socket, driven the
//! way kubelet drives it (gRPC over the socket, the generated CSI client), mounting a real
//! local S3 endpoint with real FUSE mounts at kubelet-style target paths.
//!
//! Every test owns its own S3 server, plugin process and directories; a guard kills the
//! plugin and every FUSE daemon it started and unmounts everything below the test's directory,
//! even when the test fails (lazy `umount -l` as the last resort).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, modelfs_bin, s3_env};
use common::s3::LocalServer;
use modelfs_csi::proto::identity_client::IdentityClient;
use modelfs_csi::proto::node_client::NodeClient;
use modelfs_csi::proto::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use modelfs_csi::proto::{self, node_service_capability};
use tonic::transport::Channel;
use tonic::Code;

const BUCKET: &str = "models";
const NODE_ID: &str = "test-node";
/// Bound on every wait in these tests (mounts, stale detection, socket start-up).
const WAIT: Duration = Duration::from_secs(30);

/// The objects every test bucket holds: (key, seed, length).
const OBJECTS: [(&str, u64, usize); 3] = [
    ("checkpoints/sdxl.safetensors", 11, 3 * 1024 * 1024 + 17),
    ("loras/detail.safetensors", 12, 200_000),
    ("vae/readme.txt", 13, 42),
];

/// Waits until `check` holds, polling every 20 ms, for at most [`WAIT`].
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of processes whose command line contains `needle` as one argument and `mount`.
fn modelfs_daemons(needle: &Path) -> Vec<i32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount") && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Number of mount table entries at exactly `path`.
fn mount_count(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.replace("\\040", " ") == wanted)
        .count()
}

/// Every mount point at or below `root`, deepest first.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(mp.replace("\\040", " ")))
        .filter(|mp| mp.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
}

fn kill(pid: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Whether `path` answers `statfs` with ENOTCONN (a FUSE mount whose daemon died).
fn is_stale(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is NUL-terminated and `buf` is a writable statfs struct.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf)
    };
    rc != 0
        && matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        )
}

/// One test's world: an S3 server with models, a plugin process, and kubelet's directories.
struct Node {
    s3: LocalServer,
    root: tempfile::TempDir,
    driver: Option<Child>,
    driver_args: Vec<String>,
    runtime: tokio::runtime::Runtime,
    identity: Option<IdentityClient<Channel>>,
    node: Option<NodeClient<Channel>>,
}

impl Node {
    fn start() -> Node {
        Node::start_with(&[])
    }

    /// Like [`Node::start`], with extra `modelfs csi` flags.
    fn start_with(driver_args: &[&str]) -> Node {
        let s3 = LocalServer::start(BUCKET);
        for (key, seed, len) in OBJECTS {
            s3.store()
                .put_bytes(BUCKET, key, &common::pseudo_random(seed, len))
                .expect("seed object");
        }
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("pods")).expect("mkdir pods");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut node = Node {
            s3,
            root,
            driver: None,
            driver_args: driver_args.iter().map(|a| a.to_string()).collect(),
            runtime,
            identity: None,
            node: None,
        };
        node.start_driver();
        node
    }

    fn socket(&self) -> PathBuf {
        self.root.path().join("plugin/csi.sock")
    }

    fn pods(&self) -> PathBuf {
        self.root.path().join("pods")
    }

    fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// A kubelet-style target path for `volume` in pod `pod`, with its parent created (kubelet
    /// creates the parent; the plugin creates the target).
    fn target(&self, pod: &str, volume: &str) -> PathBuf {
        let dir = self
            .pods()
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(volume);
        std::fs::create_dir_all(&dir).expect("mkdir target parent");
        dir.join("mount")
    }

    /// Starts `modelfs csi` (again) and connects to it.
    fn start_driver(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("driver.log"))
            .expect("driver log");
        let mut cmd = Command::new(modelfs_bin());
        s3_env(&mut cmd, &self.s3.endpoint);
        cmd.arg("csi")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--node-id", NODE_ID, "--log-level", "debug"])
            .arg("--kubelet-dir")
            .arg(self.pods())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.driver_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.driver = Some(cmd.spawn().expect("spawn modelfs csi"));
        let socket = self.socket();
        let deadline = Instant::now() + WAIT;
        let channel = loop {
            if let Some(status) = self
                .driver
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("modelfs csi exited ({status}):\n{}", self.driver_log());
            }
            if socket.exists() {
                if let Ok(channel) = self.runtime.block_on(modelfs_csi::client::connect(&socket)) {
                    break channel;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the plugin socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.identity = Some(IdentityClient::new(channel.clone()));
        self.node = Some(NodeClient::new(channel));
    }

    /// Kills the plugin process (not its mounts).
    fn kill_driver(&mut self) {
        self.identity = None;
        self.node = None;
        if let Some(mut child) = self.driver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("driver.log")).unwrap_or_default()
    }

    fn node(&self) -> NodeClient<Channel> {
        self.node.clone().expect("connected")
    }

    fn identity(&self) -> IdentityClient<Channel> {
        self.identity.clone().expect("connected")
    }

    /// The attributes of a PV for the test bucket at `prefix`.
    fn attributes(&self, prefix: &str) -> HashMap<String, String> {
        let e = &self.s3.endpoint;
        [
            ("bucket", BUCKET),
            ("prefix", prefix),
            ("endpointUrl", e.url.as_str()),
            ("region", e.region.as_str()),
            ("forcePathStyle", "true"),
            ("metadataTtl", "5s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A NodePublishVolume request as kubelet sends it for a ROX PV.
    fn request(&self, volume: &str, target: &Path) -> proto::NodePublishVolumeRequest {
        proto::NodePublishVolumeRequest {
            volume_id: volume.to_string(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(proto::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume {
                    fs_type: String::new(),
                    mount_flags: vec!["uid=1000".into(), "gid=1000".into()],
                    volume_mount_group: String::new(),
                })),
                access_mode: Some(AccessMode {
                    mode: Mode::MultiNodeReaderOnly as i32,
                }),
            }),
            readonly: true,
            volume_context: self.attributes(""),
            ..Default::default()
        }
    }

    fn publish(&self, req: proto::NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        let mut node = self.node();
        self.runtime
            .block_on(node.node_publish_volume(req))
            .map(drop)
    }

    fn unpublish(&self, volume: &str, target: &Path) -> Result<(), tonic::Status> {
        let mut node = self.node();
        self.runtime
            .block_on(
                node.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
                    volume_id: volume.to_string(),
                    target_path: target.to_string_lossy().into_owned(),
                }),
            )
            .map(drop)
    }

    /// Publishes and panics with the plugin's log on failure.
    fn publish_ok(&self, req: proto::NodePublishVolumeRequest) {
        let target = req.target_path.clone();
        if let Err(status) = self.publish(req) {
            panic!(
                "publish at {target} failed: {status:?}\nplugin log:\n{}",
                self.driver_log()
            );
        }
    }

    /// Asserts that `target` serves every object below `prefix` byte for byte.
    fn assert_serves(&self, target: &Path, prefix: &str) {
        let mut checked = 0;
        for (key, seed, len) in OBJECTS {
            let Some(rel) = key.strip_prefix(prefix) else {
                continue;
            };
            let data = std::fs::read(target.join(rel))
                .unwrap_or_else(|e| panic!("read {rel} under {}: {e}", target.display()));
            assert!(
                data == common::pseudo_random(seed, len),
                "{rel} differs from the object {key}"
            );
            checked += 1;
        }
        assert!(checked > 0, "no object below {prefix:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- plugin log ---\n{}", self.driver_log());
            for entry in std::fs::read_dir(self.state_dir())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    eprintln!("--- {} ---\n{text}", entry.path().display());
                }
            }
        }
        self.kill_driver();
        let root = self.root.path().to_path_buf();
        for mount in mounts_below(&root) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
            if is_mounted(&mount) {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&mount)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for pid in modelfs_daemons(&root) {
            kill(pid);
        }
    }
}

fn code(result: Result<(), tonic::Status>) -> Code {
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[test]
fn identity_reports_name_version_capabilities_and_readiness() {
    let node = Node::start();
    let mut identity = node.identity();
    let info = node
        .runtime
        .block_on(identity.get_plugin_info(proto::GetPluginInfoRequest {}))
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, "s3.modelfs.io");
    let chars: Vec<char> = info.name.chars().collect();
    assert!(chars.len() <= 63 && chars[0].is_ascii_alphabetic());
    assert!(chars[chars.len() - 1].is_ascii_alphabetic());
    assert!(chars
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(*c)));
    assert!(!info.vendor_version.is_empty());

    let caps = node
        .runtime
        .block_on(identity.get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {}))
        .expect("GetPluginCapabilities")
        .into_inner();
    // Node-only: no controller service advertised.
    assert!(caps.capabilities.iter().all(|c| !matches!(
        c.r#type,
        Some(proto::plugin_capability::Type::Service(ref s))
            if s.r#type == proto::plugin_capability::service::Type::ControllerService as i32
    )));

    wait_for("Probe to report ready", || {
        node.runtime
            .block_on(identity.probe(proto::ProbeRequest {}))
            .expect("Probe")
            .into_inner()
            .ready
            .unwrap_or(true)
    });
}

#[test]
fn node_reports_its_id_and_no_stage_capability() {
    let node = Node::start();
    let mut client = node.node();
    let info = node
        .runtime
        .block_on(client.node_get_info(proto::NodeGetInfoRequest {}))
        .expect("NodeGetInfo")
        .into_inner();
    assert_eq!(info.node_id, NODE_ID);
    assert!(info.accessible_topology.is_none());
    let caps = node
        .runtime
        .block_on(client.node_get_capabilities(proto::NodeGetCapabilitiesRequest {}))
        .expect("NodeGetCapabilities")
        .into_inner();
    let stage = node_service_capability::rpc::Type::StageUnstageVolume as i32;
    assert!(!caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(node_service_capability::Type::Rpc(ref r)) if r.r#type == stage
    )));
}

#[test]
fn missing_required_fields_are_invalid_argument() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let good = node.request("vol-1", &target);

    let mut req = good.clone();
    req.volume_id.clear();
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);
    let mut req = good.clone();
    req.target_path.clear();
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);
    let mut req = good.clone();
    req.volume_capability = None;
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);

    assert_eq!(code(node.unpublish("", &target)), Code::InvalidArgument);
    assert_eq!(
        code(node.unpublish("vol-1", Path::new(""))),
        Code::InvalidArgument
    );
    assert!(!target.exists(), "no target is created for a bad request");
    assert!(!is_mounted(&target));
}

#[test]
fn bad_attributes_mount_options_and_targets_are_rejected() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let good = node.request("vol-1", &target);
    let mut cases: Vec<(&str, proto::NodePublishVolumeRequest, &str)> = Vec::new();

    let mut req = good.clone();
    req.volume_context.insert("bukket".into(), "models".into());
    cases.push(("unknown attribute", req, "bukket"));
    let mut req = good.clone();
    req.volume_context
        .insert("bucket".into(), "Not_A_Bucket".into());
    cases.push(("malformed bucket", req, "bucket"));
    let mut req = good.clone();
    req.volume_context.remove("bucket");
    cases.push(("missing bucket", req, "bucket"));
    let mut req = good.clone();
    req.volume_context
        .insert("forcePathStyle".into(), "maybe".into());
    cases.push(("malformed boolean", req, "forcePathStyle"));
    let mut req = good.clone();
    req.volume_context
        .insert("metadataTtl".into(), "forever".into());
    cases.push(("malformed ttl", req, "metadataTtl"));
    let mut req = good.clone();
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.mount_flags.push("rw".into());
    }
    cases.push(("unsupported mount option", req, "rw"));
    let mut req = good.clone();
    if let Some(cap) = req.volume_capability.as_mut() {
        cap.access_type = Some(AccessType::Block(BlockVolume {}));
    }
    cases.push(("block access", req, "block"));
    let mut req = good.clone();
    req.target_path = node
        .root
        .path()
        .join("elsewhere/mount")
        .to_string_lossy()
        .into_owned();
    cases.push(("target outside the kubelet dir", req, "kubelet directory"));
    let mut req = good.clone();
    req.target_path = format!("{}/pod-a/../../escape/mount", node.pods().display());
    cases.push(("target with ..", req, ".."));

    for (name, req, mention) in cases {
        let status = node.publish(req).expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(mention),
            "{name}: {:?} should mention {mention:?}",
            status.message()
        );
    }
    assert!(!target.exists());
    assert!(modelfs_daemons(node.root.path()).is_empty());

    let outside = node.root.path().join("elsewhere/mount");
    assert_eq!(
        code(node.unpublish("vol-1", &outside)),
        Code::InvalidArgument
    );
}

#[test]
fn publish_serves_s3_data_idempotently_at_each_target_and_unpublish_cleans_up() {
    let node = Node::start();
    let a = node.target("pod-a", "models");
    let b = node.target("pod-b", "models");

    // Same volume, same target, twice: OK, one mount, one daemon.
    node.publish_ok(node.request("vol-1", &a));
    node.publish_ok(node.request("vol-1", &a));
    assert_eq!(mount_count(&a), 1);
    assert_eq!(modelfs_daemons(&a).len(), 1);
    node.assert_serves(&a, "");
    let meta = std::fs::metadata(a.join("vae/readme.txt")).expect("stat");
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), 1000, "mount option uid=1000 applied");
        assert_eq!(meta.mode() & 0o222, 0, "read-only modes");
    }
    let write = std::fs::write(a.join("new-file"), b"x");
    assert!(write.is_err(), "the volume must be read-only");

    // Same volume at a second target: a second mount.
    let mut req = node.request("vol-1", &b);
    req.volume_context
        .insert("prefix".into(), "checkpoints".into());
    node.publish_ok(req);
    assert_eq!(mount_count(&b), 1);
    assert_eq!(modelfs_daemons(&b).len(), 1);
    node.assert_serves(&b, "checkpoints/");
    assert!(!b.join("loras").exists(), "the prefix is the volume's root");

    // Different arguments at a mounted target: ALREADY_EXISTS, nothing changes.
    let mut other = node.request("vol-1", &a);
    other.volume_context.insert("prefix".into(), "loras".into());
    assert_eq!(code(node.publish(other)), Code::AlreadyExists);
    assert_eq!(
        code(node.publish(node.request("vol-2", &a))),
        Code::AlreadyExists
    );
    assert_eq!(mount_count(&a), 1);
    node.assert_serves(&a, "");

    // Unpublish twice: OK both times; the target is gone and its daemon exits.
    node.unpublish("vol-1", &a).expect("unpublish");
    assert!(!is_mounted(&a));
    assert!(!a.exists(), "the plugin removes the target directory");
    node.unpublish("vol-1", &a).expect("unpublish again");
    wait_for("the daemon of the unpublished target to exit", || {
        modelfs_daemons(&a).is_empty()
    });
    // The other target is untouched.
    node.assert_serves(&b, "checkpoints/");
    node.unpublish("vol-1", &b).expect("unpublish b");
    assert!(!b.exists());
    // Unpublishing a target that never existed is OK too.
    node.unpublish("vol-9", &node.target("pod-z", "models"))
        .expect("unpublish of an unknown target");
}

#[test]
fn inline_ephemeral_volume_is_mounted_read_only() {
    let node = Node::start();
    let target = node.target("pod-e", "models");
    let mut req = node.request(
        "csi-5f3d0c1e9a7b4e2f8c6d1a0b9e8f7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a",
        &target,
    );
    // Inline volumes arrive as SINGLE_NODE_WRITER, readonly unless the pod says otherwise.
    req.readonly = false;
    if let Some(cap) = req.volume_capability.as_mut() {
        cap.access_mode = Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        });
        cap.access_type = Some(AccessType::Mount(MountVolume::default()));
    }
    req.volume_context
        .insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    req.volume_context
        .insert("csi.storage.k8s.io/pod.name".into(), "comfyui-0".into());
    req.volume_context.insert("prefix".into(), "loras/".into());
    node.publish_ok(req);
    node.assert_serves(&target, "loras/");
    assert!(std::fs::write(target.join("x"), b"x").is_err());
    assert!(std::fs::remove_file(target.join("detail.safetensors")).is_err());
    node.unpublish("csi-5f3d", &target).expect("unpublish");
    assert!(!target.exists());
}

#[test]
fn missing_bucket_fails_publish_with_the_reason_and_leaves_nothing() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let mut req = node.request("vol-1", &target);
    req.volume_context
        .insert("bucket".into(), "no-such-bucket".into());
    let status = node.publish(req).expect_err("publish of a missing bucket");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("no-such-bucket"),
        "{:?}",
        status.message()
    );
    assert!(!is_mounted(&target));
    assert!(!target.exists());
}

#[test]
fn stale_mount_is_replaced_on_publish_and_removed_on_unpublish() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    node.publish_ok(node.request("vol-1", &target));
    node.assert_serves(&target, "");

    // The daemon dies (OOM kill, crash): the mount goes stale.
    let pids = modelfs_daemons(&target);
    assert_eq!(pids.len(), 1);
    kill(pids[0]);
    wait_for("the mount to go stale", || is_stale(&target));

    // Kubelet publishes again: the plugin replaces the stale mount.
    node.publish_ok(node.request("vol-1", &target));
    assert_eq!(mount_count(&target), 1);
    node.assert_serves(&target, "");

    // Stale again, then unpublished: cleaned up all the same.
    let pids = modelfs_daemons(&target);
    assert_eq!(pids.len(), 1);
    kill(pids[0]);
    wait_for("the mount to go stale", || is_stale(&target));
    node.unpublish("vol-1", &target).expect("unpublish stale");
    assert!(!is_mounted(&target));
    assert!(!target.exists());
}

#[test]
fn mounts_outlive_the_plugin_and_a_restarted_plugin_heals_dead_ones() {
    let mut node = Node::start();
    let alive = node.target("pod-a", "models");
    let dead = node.target("pod-b", "models");
    node.publish_ok(node.request("vol-1", &alive));
    node.publish_ok(node.request("vol-1", &dead));

    // The plugin process dies: its mounts keep serving.
    node.kill_driver();
    node.assert_serves(&alive, "");

    // One daemon dies too (as when the plugin's container is killed with its processes).
    let pids = modelfs_daemons(&dead);
    assert_eq!(pids.len(), 1);
    kill(pids[0]);
    wait_for("the mount to go stale", || is_stale(&dead));

    // A new plugin remounts the dead target from its records, leaves the live one alone.
    node.start_driver();
    let mut identity = node.identity();
    wait_for("Probe to report ready after recovery", || {
        node.runtime
            .block_on(identity.probe(proto::ProbeRequest {}))
            .map(|r| r.into_inner().ready.unwrap_or(true))
            .unwrap_or(false)
    });
    node.assert_serves(&dead, "");
    node.assert_serves(&alive, "");
    assert_eq!(mount_count(&dead), 1);
    assert_eq!(mount_count(&alive), 1);
    assert_eq!(modelfs_daemons(&alive).len(), 1);

    // It still recognises both publications.
    node.publish_ok(node.request("vol-1", &alive));
    node.publish_ok(node.request("vol-1", &dead));
    node.unpublish("vol-1", &alive).expect("unpublish");
    node.unpublish("vol-1", &dead).expect("unpublish");
    assert!(!alive.exists() && !dead.exists());
}

#[test]
fn volumes_on_a_node_share_the_plugins_disk_cache() {
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    // An explicit limit: the default (keep 10% of the disk free) depends on the machine.
    let node = Node::start_with(&[&cache_arg, "--cache-size=1GiB"]);
    let a = node.target("pod-a", "models");
    let b = node.target("pod-b", "models");
    node.publish_ok(node.request("vol-1", &a));
    let mut req = node.request("vol-2", &b);
    req.volume_context
        .insert("prefix".into(), "checkpoints".into());
    node.publish_ok(req);
    // Both mount daemons were given the node's one cache directory.
    let wanted = cache.path().to_string_lossy().into_owned();
    for target in [&a, &b] {
        let pids = modelfs_daemons(target);
        assert_eq!(pids.len(), 1);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--cache-dir");
        assert_eq!(at.and_then(|i| args.get(i + 1)), Some(&wanted), "{args:?}");
    }
    // The same object read through both volumes, and the cache was filled.
    node.assert_serves(&a, "");
    node.assert_serves(&b, "checkpoints/");
    let filled = walk_size(cache.path());
    assert!(filled > 0, "nothing was written to the shared cache");
    node.unpublish("vol-1", &a).expect("unpublish a");
    node.unpublish("vol-2", &b).expect("unpublish b");
}

/// Bytes in regular files below `dir`.
fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += walk_size(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}
