//! A node for the CSI tests: a real `modelfs mounter` and a real `modelfs csi` plugin, each
//! in a PID namespace of its own (`unshare --pid --fork --kill-child`, so killing one
//! emulates a container restart: everything in it dies), driven the way kubelet drives the
//! plugin (gRPC over its socket), mounting a real local S3 endpoint at kubelet-style target
//! paths.
//!
//! A guard kills both namespaces and unmounts everything below the test's directory, even
//! when the test fails (lazy `umount -l` as the last resort).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use modelfs_csi::proto;
use modelfs_csi::proto::identity_client::IdentityClient;
use modelfs_csi::proto::node_client::NodeClient;
use modelfs_csi::proto::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, MountVolume,
};
use tonic::transport::Channel;
use tonic::Code;

use super::mount::{modelfs_bin, s3_env};
use super::s3::LocalServer;

pub const BUCKET: &str = "models";
pub const NODE_ID: &str = "test-node";
/// Bound on every wait in these tests (mounts, stale detection, socket start-up).
pub const WAIT: Duration = Duration::from_secs(30);

/// The objects every test bucket holds: (key, seed, length).
pub const OBJECTS: [(&str, u64, usize); 3] = [
    ("checkpoints/sdxl.safetensors", 11, 3 * 1024 * 1024 + 17),
    ("loras/detail.safetensors", 12, 200_000),
    ("vae/readme.txt", 13, 42),
];

/// Waits until `check` holds, polling every 20 ms, for at most [`WAIT`].
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command lines (arguments) of every process running `modelfs SUBCOMMAND` whose
/// arguments mention `needle`, by pid.
pub fn modelfs_processes(subcommand: &str, needle: &Path) -> Vec<(i32, Vec<String>)> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
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
        let is_modelfs = args.first().is_some_and(|a| a.ends_with("modelfs"));
        if is_modelfs
            && args.get(1).is_some_and(|a| a == subcommand)
            && args.iter().any(|a| a.contains(&needle))
        {
            found.push((pid, args));
        }
    }
    found
}

/// Number of mount table entries at exactly `path`.
pub fn mount_count(path: &Path) -> usize {
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

/// Whether `path` answers `statfs` with ENOTCONN (a FUSE mount whose daemon died).
pub fn is_stale(path: &Path) -> bool {
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

/// A process in a PID namespace of its own: `unshare --pid --fork --kill-child CMD`. Killing
/// it kills CMD, the namespace's first process, and so everything in the namespace.
pub struct Container {
    child: Child,
}

impl Container {
    fn start(cmd: Command, log: &Path) -> Container {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--pid", "--fork", "--kill-child", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn unshare");
        Container { child }
    }

    /// Whether the namespace's process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGKILLs the namespace (as a container runtime does on restart) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's world: an S3 server with models, a mounter and a plugin, and kubelet's
/// directories.
pub struct Node {
    pub s3: LocalServer,
    pub root: tempfile::TempDir,
    pub mounter: Option<Container>,
    pub mounter_args: Vec<String>,
    /// Extra `modelfs csi` flags and environment.
    pub driver_args: Vec<String>,
    pub driver_env: Vec<(String, String)>,
    pub driver: Option<Container>,
    pub runtime: tokio::runtime::Runtime,
    identity: Option<IdentityClient<Channel>>,
    node: Option<NodeClient<Channel>>,
}

impl Node {
    /// A node with the test objects, a mounter without disk cache, and a plugin.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Like [`Node::start`], with extra `modelfs mounter` flags.
    pub fn start_with(mounter_args: &[&str]) -> Node {
        Node::start_configured(mounter_args, &[], &[])
    }

    /// Like [`Node::start`], with extra `modelfs mounter` flags, and extra `modelfs csi`
    /// flags and environment.
    pub fn start_configured(
        mounter_args: &[&str],
        driver_args: &[&str],
        driver_env: &[(&str, &str)],
    ) -> Node {
        Node::start_on(
            LocalServer::start(BUCKET),
            mounter_args,
            driver_args,
            driver_env,
        )
    }

    /// Like [`Node::start_configured`], on the local S3 server `s3` (which has `BUCKET`).
    pub fn start_on(
        s3: LocalServer,
        mounter_args: &[&str],
        driver_args: &[&str],
        driver_env: &[(&str, &str)],
    ) -> Node {
        for (key, seed, len) in OBJECTS {
            s3.store()
                .put_bytes(BUCKET, key, &super::pseudo_random(seed, len))
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
            mounter: None,
            mounter_args: mounter_args.iter().map(|a| a.to_string()).collect(),
            driver_args: driver_args.iter().map(|a| a.to_string()).collect(),
            driver_env: driver_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            driver: None,
            runtime,
            identity: None,
            node: None,
        };
        node.start_mounter();
        node.start_driver();
        node
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("plugin/csi.sock")
    }

    pub fn mounter_socket(&self) -> PathBuf {
        self.root.path().join("mounter/mounter.sock")
    }

    pub fn pods(&self) -> PathBuf {
        self.root.path().join("pods")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// A kubelet-style target path for `volume` in pod `pod`, with its parent created (kubelet
    /// creates the parent; the plugin creates the target).
    pub fn target(&self, pod: &str, volume: &str) -> PathBuf {
        let dir = self
            .pods()
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(volume);
        std::fs::create_dir_all(&dir).expect("mkdir target parent");
        dir.join("mount")
    }

    /// Starts `modelfs mounter` (again) and waits for its socket to answer.
    pub fn start_mounter(&mut self) {
        let socket = self.mounter_socket();
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(modelfs_bin());
        s3_env(&mut cmd, &self.s3.endpoint);
        cmd.arg("mounter")
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args(["--log-level", "debug"])
            .args(&self.mounter_args);
        let mut mounter = Container::start(cmd, &self.root.path().join("mounter.log"));
        let client = modelfs_csi::handoff::MounterClient::new(socket, Duration::from_secs(5));
        let deadline = Instant::now() + WAIT;
        while client.ping().is_err() {
            if mounter.exited() {
                panic!("modelfs mounter exited:\n{}", self.mounter_log());
            }
            assert!(
                Instant::now() < deadline,
                "the mounter socket did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.mounter = Some(mounter);
    }

    /// Kills the mounter's namespace, and with it every FUSE session it serves.
    pub fn kill_mounter(&mut self) {
        if let Some(mounter) = self.mounter.take() {
            mounter.kill();
        }
    }

    /// Pids of the mounter processes serving this node (there must be one).
    pub fn mounter_pids(&self) -> Vec<i32> {
        modelfs_processes("mounter", &self.mounter_socket())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Starts `modelfs csi` (again) and connects to it.
    pub fn start_driver(&mut self) {
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
            .arg("--mounter-socket")
            .arg(format!("unix://{}", self.mounter_socket().display()))
            // The local S3 server is the only endpoint volumes may name.
            .arg("--allowed-endpoints")
            .arg(&self.s3.endpoint.url)
            .args(&self.driver_args)
            .envs(self.driver_env.iter().map(|(k, v)| (k, v)));
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let mut driver = Container::start(cmd, &self.root.path().join("driver.log"));
        let deadline = Instant::now() + WAIT;
        let channel = loop {
            if driver.exited() {
                panic!("modelfs csi exited:\n{}", self.driver_log());
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
        self.driver = Some(driver);
        self.identity = Some(IdentityClient::new(channel.clone()));
        self.node = Some(NodeClient::new(channel));
    }

    /// Kills the plugin's namespace (not the mounts: the mounter holds them).
    pub fn kill_driver(&mut self) {
        self.identity = None;
        self.node = None;
        if let Some(driver) = self.driver.take() {
            driver.kill();
        }
    }

    /// Waits until the plugin's Probe reports ready (its first repair pass is done).
    pub fn wait_ready(&self) {
        let mut identity = self.identity();
        wait_for("Probe to report ready", || {
            self.runtime
                .block_on(identity.probe(proto::ProbeRequest {}))
                .map(|r| r.into_inner().ready.unwrap_or(true))
                .unwrap_or(false)
        });
    }

    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("driver.log")).unwrap_or_default()
    }

    pub fn mounter_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("mounter.log")).unwrap_or_default()
    }

    pub fn node(&self) -> NodeClient<Channel> {
        self.node.clone().expect("connected")
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        self.identity.clone().expect("connected")
    }

    /// Runs `call`, one RPC of a client of this node, to its answer; panics naming `what`
    /// if the plugin answers with an error status.
    pub fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        self.runtime
            .block_on(call)
            .unwrap_or_else(|status| panic!("{what}: {status:?}"))
            .into_inner()
    }

    /// The attributes of a PV for the test bucket at `prefix`, read with the mounter's
    /// credentials (`authenticationSource: driver`, as an admin's PV may choose).
    pub fn attributes(&self, prefix: &str) -> HashMap<String, String> {
        let e = &self.s3.endpoint;
        [
            ("bucket", BUCKET),
            ("prefix", prefix),
            ("endpointUrl", e.url.as_str()),
            ("region", e.region.as_str()),
            ("forcePathStyle", "true"),
            ("metadataTtl", "5s"),
            ("authenticationSource", "driver"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A NodePublishVolume request as kubelet sends it for a ROX PV.
    pub fn request(&self, volume: &str, target: &Path) -> proto::NodePublishVolumeRequest {
        proto::NodePublishVolumeRequest {
            volume_id: volume.to_string(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_capability(
                Mode::MultiNodeReaderOnly,
                MountVolume {
                    mount_flags: vec!["uid=1000".into(), "gid=1000".into()],
                    ..MountVolume::default()
                },
            )),
            readonly: true,
            volume_context: self.attributes(""),
            ..Default::default()
        }
    }

    pub fn publish(&self, req: proto::NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        let mut node = self.node();
        self.runtime
            .block_on(node.node_publish_volume(req))
            .map(drop)
    }

    pub fn unpublish(&self, volume: &str, target: &Path) -> Result<(), tonic::Status> {
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

    /// Publishes and panics with the logs on failure. ABORTED (the periodic repair pass
    /// holds the target) is retried, as kubelet does.
    pub fn publish_ok(&self, req: proto::NodePublishVolumeRequest) {
        let target = req.target_path.clone();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.publish(req.clone()) {
                Ok(()) => return,
                Err(status) if status.code() == Code::Aborted && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(status) => panic!(
                    "publish at {target} failed: {status:?}\nplugin log:\n{}\nmounter log:\n{}",
                    self.driver_log(),
                    self.mounter_log()
                ),
            }
        }
    }

    /// Asserts that `target` serves every object below `prefix` byte for byte.
    pub fn assert_serves(&self, target: &Path, prefix: &str) {
        let mut checked = 0;
        for (key, seed, len) in OBJECTS {
            let Some(rel) = key.strip_prefix(prefix) else {
                continue;
            };
            let data = std::fs::read(target.join(rel))
                .unwrap_or_else(|e| panic!("read {rel} under {}: {e}", target.display()));
            assert!(
                data == super::pseudo_random(seed, len),
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
            eprintln!("--- mounter log ---\n{}", self.mounter_log());
        }
        self.kill_driver();
        self.kill_mounter();
        let root = self.root.path().to_path_buf();
        for mount in mounts_below(&root) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A filesystem volume capability: mounted as `mount` says, accessed in `mode`.
pub fn mount_capability(mode: Mode, mount: MountVolume) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(AccessType::Mount(mount)),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// The status code of a call's result.
pub fn code(result: Result<(), tonic::Status>) -> Code {
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}
