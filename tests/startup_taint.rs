//! The plugin removes its node's startup taint (issue 21): a real `modelfs csi` and a real
//! `modelfs mounter`, and a fake Kubernetes API server on loopback that the plugin reaches
//! through a kubeconfig file (`KUBECONFIG`), as any client outside a cluster does. The fake
//! keeps one Node and its CSINode, answers GET like the API server, and applies the plugin's
//! JSON patch for real: a `test` op that does not hold is refused with 422, as the API server
//! refuses it. Every request is recorded with what the world looked like when it came.
//!
//! What is shown: no patch before the plugin can serve (its mounter answers and kubelet has
//! registered the driver); the patch removes the startup taint and nothing else; a taint list
//! changed between the plugin's read and its patch is not clobbered (the plugin reads again);
//! a failing API server is retried; without `--startup-taint` the node is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http_fake::FakeHttp;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

const NODE: &str = "ip-10-0-0-1.ec2.internal";
const TAINT: &str = "modelfs.io/not-ready";
const DRIVER: &str = "s3.modelfs.io";
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(30);

/// One request the fake API server answered.
#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
    status: u16,
    /// Whether the CSINode listed the driver when the request came.
    registered: bool,
    at: Instant,
}

/// What the fake API server holds and how it misbehaves.
struct World {
    node: Value,
    csinode: Option<Value>,
    requests: Vec<Recorded>,
    /// Answer this many node GETs with 500 first.
    failing_gets: u32,
    /// Insert this taint at the front of the list just before applying the next PATCH, as
    /// another controller would between the plugin's read and its patch.
    race: Option<Value>,
}

struct FakeApi {
    world: Arc<Mutex<World>>,
    url: String,
    _server: FakeHttp,
}

impl FakeApi {
    fn start(taints: Value) -> FakeApi {
        let world = Arc::new(Mutex::new(World {
            node: json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE, "resourceVersion": "100",
                             "labels": {"modelfs.io/gpu": "true"}},
                "spec": {"taints": taints}
            }),
            csinode: None,
            requests: Vec::new(),
            failing_gets: 0,
            race: None,
        }));
        let shared = world.clone();
        let server = FakeHttp::start(Arc::new(move |req| answer(&shared, req)));
        FakeApi {
            world,
            url: server.url.clone(),
            _server: server,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kubelet registers the driver: the CSINode lists it.
    fn register_driver(&self) {
        self.world().csinode = Some(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
            "metadata": {"name": NODE},
            "spec": {"drivers": [{"name": "ebs.csi.aws.com", "nodeID": "i-0abc"},
                                  {"name": DRIVER, "nodeID": NODE}]}
        }));
    }

    fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    fn patches(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == Method::PATCH)
            .collect()
    }

    fn taint_keys(&self) -> Vec<String> {
        self.world().node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["key"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A kubeconfig pointing at this server (no credentials: it asks for none).
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn answer(world: &Mutex<World>, req: Request<Bytes>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req.into_body();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
    let node_path = format!("/api/v1/nodes/{NODE}");
    let csinode_path = format!("/apis/storage.k8s.io/v1/csinodes/{NODE}");
    let (code, reply) = if method == Method::GET && path == csinode_path {
        match &world.csinode {
            Some(csinode) => (200, csinode.clone()),
            None => status(404, "NotFound", "csinodes.storage.k8s.io not found"),
        }
    } else if method == Method::GET && path == node_path {
        if world.failing_gets > 0 {
            world.failing_gets -= 1;
            status(500, "InternalError", "etcd is having a bad day")
        } else {
            (200, world.node.clone())
        }
    } else if method == Method::PATCH && path == node_path {
        if content_type != "application/json-patch+json" {
            status(
                415,
                "UnsupportedMediaType",
                "this test expects a JSON patch",
            )
        } else {
            if let Some(taint) = world.race.take() {
                if let Some(taints) = world.node["spec"]["taints"].as_array_mut() {
                    taints.insert(0, taint);
                }
                bump(&mut world.node);
            }
            let mut patched = world.node.clone();
            match apply_json_patch(&mut patched, &body) {
                Ok(()) => {
                    bump(&mut patched);
                    world.node = patched.clone();
                    (200, patched)
                }
                Err(why) => status(422, "Invalid", &why),
            }
        }
    } else {
        status(
            404,
            "NotFound",
            "the fake knows only this node and its CSINode",
        )
    };
    let registered = world.csinode.is_some();
    world.requests.push(Recorded {
        method,
        path,
        query,
        content_type,
        body,
        status: code,
        registered,
        at: Instant::now(),
    });
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn bump(node: &mut Value) {
    let version: u64 = node["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    node["metadata"]["resourceVersion"] = json!((version + 1).to_string());
}

/// RFC 6902 `test` and `remove`, all or nothing (the caller applies to a copy).
fn apply_json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("the patch is not a JSON array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("an op without a path")?;
        match op["op"].as_str() {
            Some("test") => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            Some("remove") => {
                let (parent, last) = path.rsplit_once('/').ok_or("a bad path")?;
                match doc.pointer_mut(parent) {
                    Some(Value::Array(items)) => {
                        let index: usize = last.parse().map_err(|_| "a bad index")?;
                        if index >= items.len() {
                            return Err(format!("{path} does not exist"));
                        }
                        items.remove(index);
                    }
                    Some(Value::Object(map)) => {
                        map.remove(last).ok_or(format!("{path} does not exist"))?;
                    }
                    _ => return Err(format!("{path} does not exist")),
                }
            }
            other => return Err(format!("op {other:?} is not expected from the plugin")),
        }
    }
    Ok(())
}

/// A child process killed (and reaped) when the test ends, pass or fail.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(args: &[String], env: &[(&str, &Path)], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
        cmd.args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (key, value) in env {
            cmd.env(key, value);
        }
        Process {
            child: cmd.spawn().expect("spawn modelfs"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("modelfs exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's two driver processes, as the two DaemonSets run them.
struct Node {
    dir: tempfile::TempDir,
    plugin: Option<Process>,
    mounter: Option<Process>,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
            plugin: None,
            mounter: None,
        }
    }

    fn mounter_socket(&self) -> String {
        format!("unix://{}/mounter/mounter.sock", self.dir.path().display())
    }

    fn start_plugin(&mut self, api: &FakeApi, startup_taint: Option<&str>) {
        let root = self.dir.path();
        std::fs::create_dir_all(root.join("pods")).expect("mkdir pods");
        let mut args: Vec<String> = vec![
            "csi".into(),
            format!("--endpoint=unix://{}/plugin/csi.sock", root.display()),
            format!("--node-id={NODE}"),
            format!("--kubelet-dir={}", root.join("pods").display()),
            format!("--state-dir={}", root.join("state").display()),
            format!("--mounter-socket={}", self.mounter_socket()),
            "--log-level=debug".into(),
        ];
        if let Some(taint) = startup_taint {
            args.push(format!("--startup-taint={taint}"));
        }
        let kubeconfig = api.kubeconfig(root);
        self.plugin = Some(Process::start(
            &args,
            &[("KUBECONFIG", &kubeconfig)],
            self.plugin_log_path(),
        ));
    }

    fn start_mounter(&mut self) {
        let args = vec![
            "mounter".to_string(),
            format!("--socket={}", self.mounter_socket()),
        ];
        self.mounter = Some(Process::start(
            &args,
            &[],
            self.dir.path().join("mounter.log"),
        ));
    }

    fn plugin_log_path(&self) -> PathBuf {
        self.dir.path().join("plugin.log")
    }

    fn plugin_log(&self) -> String {
        self.plugin.as_ref().map(Process::log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        for process in [&mut self.plugin, &mut self.mounter].into_iter().flatten() {
            process.assert_running();
        }
    }

    /// Waits until `check` holds, failing with the plugin's log after [`WAIT`].
    fn wait_for(&mut self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; plugin log:\n{}",
                self.plugin_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lets the plugin run for `time`, checking it stays up.
    fn run_for(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            self.assert_running();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn gpu_taints() -> Value {
    json!([
        {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
        {"key": TAINT, "effect": "NoSchedule"},
        {"key": "karpenter.sh/unregistered", "effect": "NoExecute"}
    ])
}

#[test]
fn the_plugin_removes_its_startup_taint_once_it_can_serve() {
    let api = FakeApi::start(gpu_taints());
    let mut node = Node::new();
    node.start_plugin(&api, Some(&format!("{TAINT}:NoSchedule")));
    let log = node.plugin_log_path();
    // The plugin serves but its mounter is not there: it may not even read the node.
    node.wait_for("the plugin to say why it keeps the taint", || {
        logged(&log, "mounter does not answer")
    });
    node.run_for(Duration::from_secs(1));
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    // The mounter answers, but kubelet has not registered the driver yet.
    let mounter_started = Instant::now();
    node.start_mounter();
    node.wait_for("the plugin to look for its registration", || {
        api.requests().iter().any(|r| r.path.contains("/csinodes/"))
    });
    node.run_for(Duration::from_secs(1));
    assert!(
        api.patches().is_empty(),
        "patched before kubelet registered the driver"
    );

    api.register_driver();
    node.wait_for("the startup taint to be removed", || {
        !api.taint_keys().iter().any(|k| k == TAINT)
    });
    let patches = api.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let patch = &patches[0];
    assert_eq!(patch.status, 200);
    assert!(patch.registered && patch.at > mounter_started);
    assert_eq!(patch.content_type, "application/json-patch+json");
    assert!(
        patch.query.contains("fieldManager=modelfs-csi"),
        "{}",
        patch.query
    );
    assert_eq!(
        patch.body,
        json!([
            {"op": "test", "path": "/spec/taints/1", "value": {"key": TAINT, "effect": "NoSchedule"}},
            {"op": "remove", "path": "/spec/taints/1"}
        ])
    );
    assert_eq!(
        api.taint_keys(),
        ["nvidia.com/gpu", "karpenter.sh/unregistered"],
        "only the startup taint goes"
    );
    node.wait_for("the plugin to log the removal", || {
        logged(&log, "removed the startup taint")
    });
    // Done once: no more patches, and the plugin keeps serving.
    node.run_for(Duration::from_secs(1));
    assert_eq!(api.patches().len(), 1);
}

/// Whether the plugin's log (at `log`) has `text`.
fn logged(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains(text))
}

#[test]
fn a_taint_list_changed_meanwhile_is_not_clobbered_and_errors_are_retried() {
    let api = FakeApi::start(gpu_taints());
    api.register_driver();
    {
        let mut world = api.world();
        world.failing_gets = 2;
        world.race = Some(json!({"key": "example.com/maintenance", "effect": "NoSchedule"}));
    }
    let mut node = Node::new();
    node.start_mounter();
    node.start_plugin(&api, Some(TAINT));
    node.wait_for("the startup taint to be removed", || {
        !api.taint_keys().iter().any(|k| k == TAINT)
    });
    let requests = api.requests();
    let node_gets: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.method == Method::GET && r.path.ends_with(&format!("/nodes/{NODE}")))
        .collect();
    assert_eq!(
        node_gets.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200, 200],
        "two failures retried, then a read after the refused patch"
    );
    let patches = api.patches();
    assert_eq!(
        patches.iter().map(|r| r.status).collect::<Vec<_>>(),
        [422, 200],
        "the first patch's test op fails on the changed list, the second names the new index"
    );
    assert_eq!(patches[1].body[0]["path"], "/spec/taints/2");
    assert_eq!(
        api.taint_keys(),
        [
            "example.com/maintenance",
            "nvidia.com/gpu",
            "karpenter.sh/unregistered"
        ],
        "the other controller's taint is kept"
    );
}

#[test]
fn without_the_flag_the_plugin_never_calls_the_api_server() {
    let api = FakeApi::start(gpu_taints());
    api.register_driver();
    let mut node = Node::new();
    node.start_mounter();
    node.start_plugin(&api, None);
    let log = node.plugin_log_path();
    node.wait_for("the plugin to serve", || logged(&log, "serving on"));
    node.run_for(Duration::from_secs(2));
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    assert!(api.taint_keys().iter().any(|k| k == TAINT));
}
