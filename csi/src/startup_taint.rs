//! The node's startup taint. Karpenter puts a `startupTaints` entry (`modelfs.io/not-ready`)
//! on every new GPU node, so that no pod lands there before this driver can serve it (without
//! the taint such a pod fails with "driver not found" and waits out kubelet's backoff). The
//! plugin removes the taint from its own node once it is ready: its CSI socket answers
//! Probe with "ready", the node's mounter answers a ping, and kubelet has registered the
//! driver (the node's `CSINode` lists it).
//!
//! What to patch is decided apart from how: [`removal_patch`] turns a `Node` as read into a
//! JSON patch (RFC 6902) that removes only the startup taint, each removal preceded by a
//! `test` of the very entry it removes. When the taint list changed in between (another
//! controller added or removed a taint), the API server refuses the patch and the plugin
//! reads the node again, so a concurrent change is never clobbered. [`TaintRemover`] does the
//! I/O: it retries with backoff until done and never fails the plugin, only logs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

/// The field manager the plugin's node patches are recorded under.
pub const FIELD_MANAGER: &str = "modelfs-csi";

/// Backoff between attempts, first and longest.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bound on one attempt (its API calls and readiness checks).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The taint effects Kubernetes knows.
const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A taint to remove, written `KEY` (any effect) or `KEY:EFFECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupTaint {
    /// The taint's key, e.g. `modelfs.io/not-ready`.
    pub key: String,
    /// Only taints with this effect, if set.
    pub effect: Option<String>,
}

impl FromStr for StartupTaint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, effect) = match s.rsplit_once(':') {
            Some((key, effect)) => (key, Some(effect)),
            None => (s, None),
        };
        if key.is_empty() || key.contains(['=', ' ']) {
            return Err(format!("{s:?} is not KEY or KEY:EFFECT"));
        }
        if let Some(effect) = effect {
            if !EFFECTS.contains(&effect) {
                return Err(format!(
                    "taint effect {effect:?} is not one of {}",
                    EFFECTS.join(", ")
                ));
            }
        }
        Ok(StartupTaint {
            key: key.to_string(),
            effect: effect.map(str::to_string),
        })
    }
}

impl std::fmt::Display for StartupTaint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.effect {
            Some(effect) => write!(f, "{}:{effect}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

impl StartupTaint {
    /// Whether `taint` is this startup taint.
    pub fn matches(&self, taint: &Taint) -> bool {
        taint.key == self.key && self.effect.as_ref().is_none_or(|e| *e == taint.effect)
    }
}

/// The JSON patch that removes every taint of `node` matching `taint`, or `None` when the
/// node has none. Each removed entry is first tested (`test` op with the entry as read), and
/// entries are removed from the highest index down so earlier removals shift nothing the
/// later ones name.
pub fn removal_patch(node: &Node, taint: &StartupTaint) -> Option<Value> {
    let taints = node.spec.as_ref()?.taints.as_ref()?;
    let found: Vec<(usize, &Taint)> = taints
        .iter()
        .enumerate()
        .filter(|(_, t)| taint.matches(t))
        .collect();
    if found.is_empty() {
        return None;
    }
    let mut ops: Vec<Value> = found
        .iter()
        .map(|(i, t)| json!({"op": "test", "path": format!("/spec/taints/{i}"), "value": t}))
        .collect();
    ops.extend(
        found
            .iter()
            .rev()
            .map(|(i, _)| json!({"op": "remove", "path": format!("/spec/taints/{i}")})),
    );
    Some(Value::Array(ops))
}

/// Whether kubelet has registered `driver` on the node whose `CSINode` this is.
pub fn is_registered(csinode: &CSINode, driver: &str) -> bool {
    csinode.spec.drivers.iter().any(|d| d.name == driver)
}

/// Removing the startup taint failed this time (the remover retries).
#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    /// The plugin itself is not ready yet (why).
    #[error("the plugin is not ready: {0}")]
    NotReady(String),
    /// Kubelet has not registered the driver on the node yet.
    #[error("kubelet has not registered {0} on this node yet")]
    NotRegistered(String),
    /// The node's taints changed between the read and the patch (the `test` op failed).
    #[error("the node's taints changed meanwhile; reading it again")]
    Conflict,
    /// An API call failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The attempt took longer than its bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Building the request failed.
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// How the startup taint was dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The taint was on the node and the plugin removed it.
    Removed,
    /// The node did not carry the taint (already removed, or never set).
    Absent,
}

/// Removes the startup taint from one node, through one API client.
pub struct TaintRemover {
    client: kube::Client,
    node: String,
    taint: StartupTaint,
    driver: String,
    backoff: (Duration, Duration),
}

impl TaintRemover {
    /// A remover for `taint` on node `node`, waiting for kubelet to register this driver.
    pub fn new(client: kube::Client, node: &str, taint: StartupTaint) -> TaintRemover {
        TaintRemover {
            client,
            node: node.to_string(),
            taint,
            driver: crate::identity::DRIVER_NAME.to_string(),
            backoff: (BACKOFF_MIN, BACKOFF_MAX),
        }
    }

    /// Sets the first and the longest wait between attempts (default 0.5 s and 30 s).
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> TaintRemover {
        self.backoff = (first, longest.max(first));
        self
    }

    /// Waits until `ready` says the plugin can serve (`Err(reason)` while not) and kubelet
    /// has registered the driver, then removes the taint. Retries every failure with
    /// exponential backoff, forever: a node that keeps its taint takes no pods, which is
    /// the safe side. A conflict (the taint list changed) is retried at once.
    pub async fn run<F, Fut>(&self, mut ready: F) -> Outcome
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut wait = self.backoff.0;
        let mut last_reason = String::new();
        loop {
            let attempt = async {
                ready().await.map_err(TaintError::NotReady)?;
                self.attempt().await
            };
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(result) => result,
                Err(_) => Err(TaintError::Timeout(ATTEMPT_TIMEOUT)),
            };
            match result {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Removed => tracing::info!(
                            "removed the startup taint {} from node {}: pods may land here now",
                            self.taint,
                            self.node
                        ),
                        Outcome::Absent => {
                            tracing::info!("node {} has no startup taint {}", self.node, self.taint)
                        }
                    }
                    return outcome;
                }
                Err(TaintError::Conflict) => {
                    tracing::info!("{}", TaintError::Conflict);
                    continue;
                }
                Err(e) => {
                    // Waiting is normal at start-up: say why once, not every attempt.
                    let reason = e.to_string();
                    if reason != last_reason {
                        match e {
                            TaintError::NotReady(_) | TaintError::NotRegistered(_) => {
                                tracing::info!("startup taint {} kept: {reason}", self.taint)
                            }
                            _ => tracing::warn!(
                                "cannot remove the startup taint {} yet: {reason}",
                                self.taint
                            ),
                        }
                        last_reason = reason;
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.backoff.1);
        }
    }

    /// One attempt: registration, read, patch.
    async fn attempt(&self) -> Result<Outcome, TaintError> {
        let csinodes: Api<CSINode> = Api::all(self.client.clone());
        let registered = csinodes
            .get_opt(&self.node)
            .await?
            .is_some_and(|c| is_registered(&c, &self.driver));
        if !registered {
            return Err(TaintError::NotRegistered(self.driver.clone()));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get(&self.node).await?;
        let Some(patch) = removal_patch(&node, &self.taint) else {
            return Ok(Outcome::Absent);
        };
        // kube builds the URL and query; the body is an RFC 6902 JSON patch (kube's own
        // `Patch::Json` needs the json-patch crate, which this build leaves out).
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let mut request = kube::core::Request::new("/api/v1/nodes")
            .patch(&self.node, &params, &Patch::Merge(()))
            .map_err(|e| TaintError::Request(e.to_string()))?;
        *request.body_mut() =
            serde_json::to_vec(&patch).map_err(|e| TaintError::Request(e.to_string()))?;
        request.headers_mut().insert(
            tonic::codegen::http::header::CONTENT_TYPE,
            tonic::codegen::http::HeaderValue::from_static("application/json-patch+json"),
        );
        match self.client.request::<Node>(request).await {
            Ok(patched) if removal_patch(&patched, &self.taint).is_none() => Ok(Outcome::Removed),
            // Someone put it back between our patch and its answer: go again.
            Ok(_) => Err(TaintError::Conflict),
            // A failed `test` op is 422 Unprocessable Entity; 409 a write conflict.
            Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
                Err(TaintError::Conflict)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether this plugin can serve volumes: its socket answers Probe with "ready" (the first
/// repair pass is done) and the node's mounter answers a ping.
pub async fn plugin_ready(socket: &Path, mounter_socket: &Path) -> Result<(), String> {
    use crate::proto::identity_client::IdentityClient;
    let channel = crate::client::connect(socket)
        .await
        .map_err(|e| format!("the CSI socket {} does not answer: {e}", socket.display()))?;
    let probe = IdentityClient::new(channel)
        .probe(crate::proto::ProbeRequest {})
        .await
        .map_err(|e| format!("Probe failed: {}", e.message()))?;
    // The CSI spec: an absent `ready` means ready.
    if !probe.into_inner().ready.unwrap_or(true) {
        return Err("Probe says not ready (the first repair pass is running)".to_string());
    }
    let mounter =
        crate::handoff::MounterClient::new(mounter_socket.to_path_buf(), Duration::from_secs(5));
    tokio::task::spawn_blocking(move || mounter.ping())
        .await
        .map_err(|e| format!("the mounter ping panicked: {e}"))?
        .map_err(|e| format!("the node's mounter does not answer: {e}"))
}

/// When `--startup-taint` is set, removes it from this node in the background once the
/// plugin serving on `socket` is ready. Never fails the plugin: problems are logged and
/// retried.
pub fn spawn(args: &crate::CsiArgs, socket: &Path) {
    let Some(taint) = args.startup_taint.clone() else {
        return;
    };
    let socket: PathBuf = socket.to_path_buf();
    let mounter_socket = match crate::server::socket_path(&args.mounter_socket) {
        Ok(path) => path,
        Err(e) => {
            tracing::error!("startup taint {taint} kept: {e}");
            return;
        }
    };
    let node = args.node_id.clone();
    tokio::spawn(async move {
        let mut wait = BACKOFF_MIN;
        let client = loop {
            // `KUBECONFIG` when set (tests, tools), else the pod's service account.
            match kube::Client::try_default().await {
                Ok(client) => break client,
                Err(e) => {
                    tracing::warn!("startup taint {taint} kept: no Kubernetes API client: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
            }
        };
        TaintRemover::new(client, &node, taint)
            .run(|| plugin_ready(&socket, &mounter_socket))
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(taints: Value) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7"},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    fn taint(s: &str) -> StartupTaint {
        s.parse().unwrap()
    }

    #[test]
    fn taints_are_written_key_or_key_colon_effect() {
        assert_eq!(
            taint("modelfs.io/not-ready:NoSchedule"),
            StartupTaint {
                key: "modelfs.io/not-ready".into(),
                effect: Some("NoSchedule".into())
            }
        );
        assert_eq!(taint("modelfs.io/not-ready").effect, None);
        assert_eq!(
            taint("modelfs.io/not-ready:NoExecute").to_string(),
            "modelfs.io/not-ready:NoExecute"
        );
        for bad in ["", ":NoSchedule", "k:Sometimes", "k=v:NoSchedule", "a b"] {
            assert!(bad.parse::<StartupTaint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_patch_tests_then_removes_only_the_startup_taint() {
        let n = node(json!([
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
            {"key": "modelfs.io/not-ready", "effect": "NoSchedule"},
            {"key": "other", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}
        ]));
        let patch = removal_patch(&n, &taint("modelfs.io/not-ready:NoSchedule")).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/taints/1",
                 "value": {"key": "modelfs.io/not-ready", "effect": "NoSchedule"}},
                {"op": "remove", "path": "/spec/taints/1"}
            ])
        );
    }

    #[test]
    fn several_matches_are_removed_from_the_highest_index_down() {
        let n = node(json!([
            {"key": "modelfs.io/not-ready", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"},
            {"key": "modelfs.io/not-ready", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}
        ]));
        let patch = removal_patch(&n, &taint("modelfs.io/not-ready")).unwrap();
        let ops: Vec<(String, String)> = patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| {
                (
                    op["op"].as_str().unwrap().to_string(),
                    op["path"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected = [
            ("test", "/spec/taints/0"),
            ("test", "/spec/taints/2"),
            ("remove", "/spec/taints/2"),
            ("remove", "/spec/taints/0"),
        ];
        assert_eq!(ops, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        // The NoExecute taint is tested with its timeAdded, exactly as read.
        assert_eq!(patch[1]["value"]["timeAdded"], "2026-01-01T00:00:00Z");
        // With an effect, only that one.
        let patch = removal_patch(&n, &taint("modelfs.io/not-ready:NoExecute")).unwrap();
        assert_eq!(patch.as_array().unwrap().len(), 2);
        assert_eq!(patch[1]["path"], "/spec/taints/2");
    }

    #[test]
    fn no_patch_when_the_node_has_no_such_taint() {
        let t = taint("modelfs.io/not-ready:NoSchedule");
        assert_eq!(removal_patch(&node(json!([])), &t), None);
        assert_eq!(
            removal_patch(
                &node(json!([{"key": "modelfs.io/not-ready", "effect": "NoExecute"}])),
                &t
            ),
            None
        );
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
        assert_eq!(removal_patch(&bare, &t), None);
    }

    #[test]
    fn registration_is_the_driver_listed_in_the_csinode() {
        let csinode: CSINode = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"drivers": [{"name": "ebs.csi.aws.com", "nodeID": "i-1"},
                                  {"name": "s3.modelfs.io", "nodeID": "n1"}]}
        }))
        .unwrap();
        assert!(is_registered(&csinode, "s3.modelfs.io"));
        assert!(!is_registered(&csinode, "s3.example.com"));
    }
}
