//! `authenticationSource: pod` end to end: kubelet's volume context carries the pod's
//! service-account token (as the CSIDriver's `tokenRequests` make it do), the plugin reads the
//! role on the pod's service account from a (fake) Kubernetes API, exchanges the token with
//! moto's real STS API (`AssumeRoleWithWebIdentity`), and the mounter reads the local S3
//! server with the role's temporary credentials. The server honours exactly the sessions
//! moto's STS issued (key, secret and session token), with the read rights the test gives
//! each role, as S3 honours an assumed role's policy. The mounter's own credentials, which
//! the server also knows, are never used for these volumes. A fake EKS Pod Identity agent
//! serves pods whose service account names no role.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::csi::{is_stale, mount_capability, wait_for, Node, OBJECTS};
use common::kube_api::FakeKubeApi;
use common::moto::{AssumedRole, MotoServer};
use common::pod_identity_agent::FakePodIdentityAgent;
use common::s3::LocalServer;
use modelfs_csi::proto;
use modelfs_csi::proto::volume_capability::{access_mode::Mode, MountVolume};
use modelfs_s3local::{IssuedSession, SessionIssuer};
use tonic::Code;

const BUCKET: &str = "models";
const ACCOUNT: &str = "123456789012";
/// May list the bucket and read every object.
const READER: &str = "models-reader";
/// May list the bucket, not read objects.
const LISTER: &str = "models-lister";

fn role_arn(role: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{role}")
}

/// The sessions moto's STS issued, looked up by access key, with each role's read prefixes.
struct MotoSessions {
    moto: Arc<MotoServer>,
    known: Mutex<HashMap<String, AssumedRole>>,
}

impl MotoSessions {
    /// Honours a session issued elsewhere (the Pod Identity agent's).
    fn add(&self, session: AssumedRole) {
        let mut known = self.known.lock().expect("sessions");
        known.insert(session.access_key_id.clone(), session);
    }
}

impl std::fmt::Debug for MotoSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MotoSessions")
    }
}

impl SessionIssuer for MotoSessions {
    fn session(&self, access_key: &str) -> Option<IssuedSession> {
        let mut known = self.known.lock().expect("sessions");
        if !known.contains_key(access_key) {
            for role in self.moto.assumed_roles() {
                known.insert(role.access_key_id.clone(), role);
            }
        }
        let session = known.get(access_key)?;
        let read_prefixes = if session.role_arn == role_arn(READER) {
            vec![String::new()]
        } else {
            Vec::new()
        };
        Some(IssuedSession {
            secret_key: session.secret_access_key.clone(),
            session_token: session.session_token.clone(),
            read_prefixes,
        })
    }
}

/// moto's STS; a local S3 server with the test objects that honours its sessions; a fake
/// API server with three service accounts; a node whose plugin uses both.
struct World {
    node: Node,
    kube: FakeKubeApi,
    agent: FakePodIdentityAgent,
    moto: Arc<MotoServer>,
    s3: LocalServer,
    _config: tempfile::TempDir,
}

fn world() -> World {
    let moto = Arc::new(MotoServer::start());
    let sessions = Arc::new(MotoSessions {
        moto: moto.clone(),
        known: Mutex::default(),
    });
    let s3 = LocalServer::start_with_sessions(BUCKET, sessions.clone());
    let agent = FakePodIdentityAgent::start(Arc::new(move |session| sessions.add(session)));
    for (key, seed, len) in OBJECTS {
        s3.store()
            .put_bytes(BUCKET, key, &common::pseudo_random(seed, len))
            .expect("seed object");
    }

    let kube = FakeKubeApi::start();
    kube.set_service_account("comfyui", "comfyui", Some(&role_arn(READER)));
    kube.set_service_account("guests", "guest", Some(&role_arn(LISTER)));
    kube.set_service_account("plain", "default", None);
    let config = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.kubeconfig(config.path());
    let cache = config.path().join("cache");
    let node = Node::start_configured(
        &[
            "--cache-dir",
            &cache.to_string_lossy(),
            "--cache-size",
            "1GiB",
        ],
        &[
            "--allowed-endpoints",
            &s3.endpoint.url,
            "--sts-endpoint-url",
            &moto.endpoint.url,
            "--pod-identity-agent-url",
            &agent.url,
        ],
        &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
    );
    World {
        node,
        kube,
        agent,
        moto,
        s3,
        _config: config,
    }
}

/// An inline volume's NodePublishVolume as kubelet sends it, with the pod's identity and a
/// token for the STS audience.
fn pod_request(
    world: &World,
    target: &Path,
    namespace: &str,
    account: &str,
    token: &str,
) -> proto::NodePublishVolumeRequest {
    let tokens = serde_json::json!({
        "sts.amazonaws.com": {"token": token, "expirationTimestamp": "2026-12-05T06:00:00Z"}
    });
    let context: HashMap<String, String> = [
        ("bucket", BUCKET),
        ("endpointUrl", world.s3.endpoint.url.as_str()),
        ("region", "us-east-1"),
        ("forcePathStyle", "true"),
        ("metadataTtl", "5s"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("csi.storage.k8s.io/pod.name", "pod-0"),
        ("csi.storage.k8s.io/pod.namespace", namespace),
        ("csi.storage.k8s.io/serviceAccount.name", account),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            &tokens.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    proto::NodePublishVolumeRequest {
        volume_id: format!("csi-inline-{namespace}"),
        target_path: target.to_string_lossy().into_owned(),
        // Inline volumes arrive as SINGLE_NODE_WRITER, readonly unless the pod says otherwise.
        volume_capability: Some(mount_capability(
            Mode::SingleNodeWriter,
            MountVolume::default(),
        )),
        readonly: false,
        volume_context: context,
        ..Default::default()
    }
}

/// Adds a token for the EKS Pod Identity agent's audience, as kubelet does when the
/// CSIDriver asks for one.
fn with_agent_token(
    mut req: proto::NodePublishVolumeRequest,
    token: &str,
) -> proto::NodePublishVolumeRequest {
    let key = "csi.storage.k8s.io/serviceAccount.tokens";
    let mut tokens: serde_json::Value =
        serde_json::from_str(&req.volume_context[key]).expect("tokens");
    tokens["pods.eks.amazonaws.com"] = serde_json::json!({"token": token});
    req.volume_context
        .insert(key.to_string(), tokens.to_string());
    req
}

fn open_error(path: &Path) -> Option<i32> {
    std::fs::File::open(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

const CHECKPOINT: &str = "checkpoints/sdxl.safetensors";

#[test]
fn each_pod_reads_with_the_role_on_its_service_account() {
    let w = world();
    let node = &w.node;

    // The reader's pod mounts an inline volume: read-only, byte-exact, now in the node cache.
    let reader = node.target("pod-reader", "models");
    node.publish_ok(pod_request(
        &w,
        &reader,
        "comfyui",
        "comfyui",
        "token-reader-1",
    ));
    node.assert_serves(&reader, "");
    assert!(std::fs::write(reader.join("x"), b"x").is_err());

    // The guest's role may list but not read: the listing is there, every open is EACCES
    // although the node holds the bytes.
    let guest = node.target("pod-guest", "models");
    node.publish_ok(pod_request(&w, &guest, "guests", "guest", "token-guest-1"));
    let names: Vec<String> = std::fs::read_dir(guest.join("checkpoints"))
        .expect("listing is allowed")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["sdxl.safetensors"]);
    assert_eq!(open_error(&guest.join(CHECKPOINT)), Some(libc::EACCES));
    assert!(
        std::fs::read(reader.join(CHECKPOINT)).is_ok(),
        "the reader still reads"
    );

    // A service account without a role: refused with a message that says what to add.
    let plain = node.target("pod-plain", "models");
    let status = node
        .publish(pod_request(&w, &plain, "plain", "default", "token-plain-1"))
        .expect_err("no role on the service account");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("eks.amazonaws.com/role-arn"),
        "{status:?}"
    );
    // An unknown service account: the API server's 404 is the plugin's business.
    let status = node
        .publish(pod_request(&w, &plain, "plain", "nobody", "token-plain-2"))
        .expect_err("unknown service account");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains("404"), "{status:?}");

    // No token or secret in any log line.
    let logs = format!("{}{}", node.driver_log(), node.mounter_log());
    for token in ["token-reader-1", "token-guest-1", "token-plain-1"] {
        assert!(!logs.contains(token), "{token} leaked into a log");
    }
    assert!(logs.contains("assumed arn:aws:iam::123456789012:role/models-reader"));
    let sessions = w.moto.assumed_roles();
    assert!(sessions.len() >= 2, "STS issued a session per pod");
    for session in sessions {
        assert!(
            !logs.contains(&session.secret_access_key),
            "a secret leaked into a log"
        );
        assert!(
            !logs.contains(&session.session_token),
            "a session token leaked into a log"
        );
    }

    node.unpublish("csi-inline-comfyui", &reader)
        .expect("unpublish");
    node.unpublish("csi-inline-guests", &guest)
        .expect("unpublish");
}

#[test]
fn a_republish_with_a_new_token_brings_new_credentials_and_repairs_use_them() {
    let w = world();
    let node = &w.node;
    let target = node.target("pod-r", "models");
    node.publish_ok(pod_request(&w, &target, "comfyui", "comfyui", "token-1"));
    assert!(std::fs::read(target.join(CHECKPOINT)).is_ok());

    // The service account now names the lister role. The same token is not exchanged again:
    // a file not opened before still reads.
    w.kube
        .set_service_account("comfyui", "comfyui", Some(&role_arn(LISTER)));
    node.publish_ok(pod_request(&w, &target, "comfyui", "comfyui", "token-1"));
    assert!(std::fs::read(target.join("vae/readme.txt")).is_ok());

    // Kubelet's next token brings the lister's credentials, swapped in without a remount:
    // what the reader proved is forgotten, so even the file just read is EACCES now.
    node.publish_ok(pod_request(&w, &target, "comfyui", "comfyui", "token-2"));
    assert_eq!(open_error(&target.join(CHECKPOINT)), Some(libc::EACCES));
    assert_eq!(
        open_error(&target.join("vae/readme.txt")),
        Some(libc::EACCES)
    );

    // And back to the reader with the token after that.
    w.kube
        .set_service_account("comfyui", "comfyui", Some(&role_arn(READER)));
    node.publish_ok(pod_request(&w, &target, "comfyui", "comfyui", "token-3"));
    node.assert_serves(&target, "");

    // The mounter dies (an upgrade): the plugin remounts with the credentials it holds.
    let mut node = w.node;
    node.kill_mounter();
    wait_for("the mount to go stale", || is_stale(&target));
    node.start_mounter();
    // (A stat may still be answered from the kernel's cache of the dead mount: read.)
    wait_for("the repair pass to remount", || {
        std::fs::read(target.join("vae/readme.txt")).is_ok()
    });
    node.assert_serves(&target, "");

    // Both die: the new plugin holds no credentials, so the mount stays dead (failing reads,
    // never empty) until kubelet's republish brings the token again.
    node.kill_driver();
    node.kill_mounter();
    wait_for("the mount to go stale", || is_stale(&target));
    node.start_mounter();
    node.start_driver();
    node.wait_ready();
    assert!(is_stale(&target), "repaired without the pod's token");
    let world = World { node, ..w };
    world.node.publish_ok(pod_request(
        &world, &target, "comfyui", "comfyui", "token-4",
    ));
    world.node.assert_serves(&target, "");
}

#[test]
fn a_service_account_without_a_role_reads_with_its_pod_identity_association() {
    let w = world();
    let node = &w.node;
    w.agent.associate("pod-identity-token-1", &role_arn(READER));
    let target = node.target("pod-pi", "models");
    let req = pod_request(&w, &target, "plain", "default", "sts-token-1");
    node.publish_ok(with_agent_token(req, "pod-identity-token-1"));
    node.assert_serves(&target, "");
    assert!(node
        .driver_log()
        .contains("assumed its EKS Pod Identity role"));

    // A token the agent knows no association for: the pod is told what is missing.
    let other = node.target("pod-pi-2", "models");
    let req = pod_request(&w, &other, "plain", "default", "sts-token-2");
    let status = node
        .publish(with_agent_token(req, "pod-identity-token-unknown"))
        .expect_err("no association");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("Pod Identity association"),
        "{status:?}"
    );
    let logs = format!("{}{}", node.driver_log(), node.mounter_log());
    assert!(!logs.contains("pod-identity-token-1") && !logs.contains("pod-identity-secret"));
    node.unpublish("csi-inline-plain", &target)
        .expect("unpublish");
}
