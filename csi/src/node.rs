//! The CSI Node service: publish and unpublish volumes at kubelet's target paths.
//!
//! [`NodeServer`] holds the policy, in terms of validated requests and a [`Mounter`]; the
//! `proto::node_server::Node` implementation at the bottom only translates gRPC messages to
//! those requests and [`NodeError`]s to status codes (in [`NodeError::code`], the one place).
//!
//! The rules (CSI spec v1.12, "NodePublishVolume" / "NodeUnpublishVolume"):
//! - A request without `volume_id`, `target_path` or `volume_capability` (or with a block
//!   capability, or node-publish secrets) is INVALID_ARGUMENT; so are bad volume attributes
//!   or mount flags ([`crate::volume_context`]), endpoints or unsigned volumes the node does
//!   not allow ([`crate::endpoint_policy`]) and target paths outside the kubelet pods
//!   directory. These messages name the field or attribute and go back to kubelet as they are.
//! - Failures on the node's side (mounting, the mounter, the target or state directories) go
//!   back to kubelet as a summary naming the volume; the full error, which may carry what an
//!   S3 endpoint or the network said, goes to the plugin's log with the volume id
//!   ([`NodeError::status`]). A volume's author must not learn about the node's network from
//!   a failed publish.
//! - Publish is idempotent: the same volume with the same spec at a target where it is
//!   already mounted is OK without a second mount. Anything else already mounted there is
//!   ALREADY_EXISTS. A stale mount (its daemon died: `ENOTCONN`) is unmounted and replaced.
//! - Every mount is read-only, whatever `readonly` and the access mode say (inline ephemeral
//!   volumes arrive as SINGLE_NODE_WRITER).
//! - The plugin creates the target directory and removes it on unpublish. Unpublishing a
//!   target that is not mounted, or no longer exists, is OK.
//! - `authenticationSource: pod` volumes read with credentials of the pod's own role
//!   ([`crate::pod_credentials`]), exchanged at publish and again whenever kubelet's
//!   republish brings a new token; the mounter swaps them in without a remount. They live in
//!   this process's memory only: after a plugin restart, a dead pod volume is repaired at its
//!   next republish, when kubelet brings the token again.
//! - One operation per target at a time; a second concurrent one gets ABORTED, which kubelet
//!   retries.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use crate::cluster::{ClusterApi, ClusterError, PodRef};
use crate::endpoint_policy::EndpointPolicy;
use crate::handoff::{VolumeCredentials, WarmOutcome};
use crate::mounter::{MountError, MountRequest, MountState, Mounter};
use crate::pod_credentials::{CredentialError, CredentialSource};
use crate::pod_identity::PodIdentity;
use crate::proto;
use crate::state::{Record, StateError, StateStore};
use crate::volume_context::{Authentication, MountSpec, VolumeContextError};

/// At most this many mounts are peeled off one target before giving up (a target normally
/// has one; a crash loop could stack a few).
const MAX_STACKED_MOUNTS: usize = 16;

/// How often published targets are checked, and dead mounts repaired, after start-up.
pub const REPAIR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Pod credentials are exchanged again when they have less than this left, even without a
/// new token (kubelet's republish comes every minute or two).
const CREDENTIALS_MIN_VALIDITY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Why a node operation failed. Each variant is one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request is malformed (missing field, bad attribute, bad target).
    #[error("{0}")]
    InvalidArgument(String),
    /// Bad volume attributes or mount flags.
    #[error(transparent)]
    VolumeContext(#[from] VolumeContextError),
    /// Another volume, or the same one with other arguments, is mounted at the target.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same target is in progress.
    #[error("an operation on {0} is already in progress")]
    Busy(PathBuf),
    /// Mounting or unmounting failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The target directory could not be created or removed.
    #[error("{what} {path}: {source}")]
    TargetDir {
        /// "cannot create" / "cannot remove".
        what: &'static str,
        /// The target.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state directory could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The pod's credentials could not be obtained.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The API server could not be asked (a `warmWorkflow` ConfigMap).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl NodeError {
    /// The gRPC status code for this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            NodeError::InvalidArgument(_) | NodeError::VolumeContext(_) => {
                tonic::Code::InvalidArgument
            }
            NodeError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            NodeError::Busy(_) => tonic::Code::Aborted,
            NodeError::Mount(MountError::MounterUnavailable(_))
            | NodeError::Cluster(_)
            | NodeError::Credentials(CredentialError::Unavailable { .. }) => {
                tonic::Code::Unavailable
            }
            NodeError::Credentials(CredentialError::NoRole { .. }) => {
                tonic::Code::FailedPrecondition
            }
            NodeError::Credentials(CredentialError::Refused { .. }) => {
                tonic::Code::PermissionDenied
            }
            NodeError::Mount(_) | NodeError::TargetDir { .. } | NodeError::State(_) => {
                tonic::Code::Internal
            }
        }
    }

    /// Whether the message is about the request itself (a field, an attribute, the target)
    /// and so goes back to kubelet as it is.
    fn is_about_the_request(&self) -> bool {
        matches!(
            self,
            NodeError::InvalidArgument(_)
                | NodeError::VolumeContext(_)
                | NodeError::AlreadyExists(_)
                | NodeError::Busy(_)
                | NodeError::Credentials(CredentialError::NoRole { .. })
                | NodeError::Credentials(CredentialError::Refused { .. })
        )
    }

    /// What kubelet is told when `operation` ("publishing", "unpublishing") of `volume_id`
    /// (serving `source`, the request's own `s3://` source, when known) fails: errors about
    /// the request as they are; node-side failures as a summary naming the volume and the
    /// kind of failure, with the full error logged (at warn, with the volume id) for the
    /// node's operator.
    pub fn status(&self, operation: &str, volume_id: &str, source: Option<&str>) -> Status {
        if self.is_about_the_request() {
            return Status::new(self.code(), self.to_string());
        }
        tracing::warn!(volume = %volume_id, "{operation} failed: {self}");
        let source = source.map(|s| format!(" ({s})")).unwrap_or_default();
        let what = match self {
            NodeError::Mount(MountError::MounterUnavailable(_)) => {
                "the node's modelfs mounter is not available"
            }
            NodeError::Mount(MountError::MountFailed { .. }) => {
                "the node's modelfs mounter could not serve it"
            }
            NodeError::Mount(MountError::Kernel { .. }) => "the FUSE mount failed",
            NodeError::Mount(MountError::UnmountFailed { .. }) => "unmounting failed",
            NodeError::Mount(MountError::Inspect { .. }) => "the target could not be inspected",
            NodeError::TargetDir { .. } => "the target directory could not be set up",
            NodeError::State(_) => "the plugin could not record the volume",
            NodeError::Credentials(_) => "the pod's credentials could not be obtained",
            NodeError::Cluster(_) => "the Kubernetes API could not be asked",
            _ => "an internal error",
        };
        Status::new(
            self.code(),
            format!(
                "{operation} volume {volume_id}{source} failed: {what}; see the modelfs-csi \
                 plugin log on the node"
            ),
        )
    }
}

impl From<NodeError> for Status {
    /// Without a volume to name (a request too malformed to have one): see
    /// [`NodeError::status`].
    fn from(err: NodeError) -> Status {
        err.status("handling", "(unnamed)", None)
    }
}

/// Node-wide settings of the Node service.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Returned by NodeGetInfo (the Kubernetes node name).
    pub node_id: String,
    /// Target paths must lie below this directory (kubelet's pods directory).
    pub kubelet_dir: PathBuf,
    /// The endpoints volumes may name, and whether they may be unsigned.
    pub endpoints: EndpointPolicy,
}

/// A validated publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// The CSI volume id.
    pub volume_id: String,
    /// Where to mount.
    pub target: PathBuf,
    /// What to mount.
    pub spec: MountSpec,
    /// The pod, for `authenticationSource: pod` volumes.
    pub pod: Option<PodIdentity>,
    /// The pod, when kubelet names it (`podInfoOnMount`): for `warmWorkflow` and Events.
    pub pod_ref: Option<PodRef>,
}

/// What [`NodeServer::repair`] found for each recorded target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Targets whose mount was alive.
    pub alive: Vec<PathBuf>,
    /// Targets whose stale mount was replaced by a fresh one.
    pub remounted: Vec<PathBuf>,
    /// Targets with nothing mounted any more: their records were dropped.
    pub forgotten: Vec<PathBuf>,
    /// Targets that could not be remounted, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// The Node service's policy over a [`Mounter`].
pub struct NodeServer<M: Mounter> {
    config: NodeConfig,
    mounter: Arc<M>,
    state: StateStore,
    busy: Mutex<HashSet<PathBuf>>,
    ready: AtomicBool,
    /// Where pod credentials come from; `None`: every pod volume is refused.
    credentials: Option<Arc<dyn CredentialSource>>,
    /// The API server (ConfigMaps of `warmWorkflow`, Events on pods), and where to call it.
    cluster: Option<(Arc<dyn ClusterApi>, tokio::runtime::Handle)>,
    /// The pod credentials each target was last given, and the digest of the token they
    /// came from.
    issued: Mutex<HashMap<PathBuf, Issued>>,
}

/// Credentials given to one target.
struct Issued {
    token_digest: [u8; 32],
    credentials: VolumeCredentials,
}

/// Marks a target busy until dropped.
struct TargetGuard<'a> {
    busy: &'a Mutex<HashSet<PathBuf>>,
    target: PathBuf,
}

/// Whether credentials last long enough to be handed out again.
fn lasts(credentials: &VolumeCredentials) -> bool {
    credentials
        .expires()
        .duration_since(std::time::SystemTime::now())
        .is_ok_and(|left| left >= CREDENTIALS_MIN_VALIDITY)
}

impl Drop for TargetGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.target);
    }
}

impl<M: Mounter> NodeServer<M> {
    /// A Node service mounting through `mounter` and keeping records in `state`.
    pub fn new(config: NodeConfig, mounter: Arc<M>, state: StateStore) -> NodeServer<M> {
        NodeServer {
            config,
            mounter,
            state,
            busy: Mutex::new(HashSet::new()),
            ready: AtomicBool::new(false),
            credentials: None,
            cluster: None,
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// The same server, reading ConfigMaps and recording Events through `api` on `runtime`.
    pub fn with_cluster(
        mut self,
        api: Arc<dyn ClusterApi>,
        runtime: tokio::runtime::Handle,
    ) -> NodeServer<M> {
        self.cluster = Some((api, runtime));
        self
    }

    /// The model files of the volume's `warmWorkflow`, each as its candidate paths.
    fn workflow_models(&self, req: &PublishRequest) -> Result<Vec<Vec<String>>, NodeError> {
        let Some((name, key)) = &req.spec.warm.workflow else {
            return Ok(Vec::new());
        };
        let pod = req.pod_ref.as_ref().ok_or_else(|| {
            NodeError::InvalidArgument(
                "volume attribute warmWorkflow needs the pod's namespace (the CSIDriver's \
                 podInfoOnMount: true)"
                    .into(),
            )
        })?;
        let (api, runtime) = self
            .cluster
            .as_ref()
            .ok_or_else(|| ClusterError("this plugin has no Kubernetes API access".into()))?;
        let where_ = format!("ConfigMap {}/{name}, key {key}", pod.namespace);
        let text = runtime
            .block_on(api.config_map_value(&pod.namespace, name, key))?
            .ok_or_else(|| {
                NodeError::InvalidArgument(format!(
                    "volume attribute warmWorkflow: there is no {where_}"
                ))
            })?;
        modelfs_fs::warm::workflow_models(&text).map_err(|e| {
            NodeError::InvalidArgument(format!("volume attribute warmWorkflow: {where_}: {e}"))
        })
    }

    /// Tells the pod (an Event) and the log how far warming got before its volume was
    /// published; an Event that cannot be recorded is only logged.
    fn report_warm(&self, req: &PublishRequest, outcome: &WarmOutcome) {
        tracing::info!(volume = %req.volume_id, "{}", outcome.message);
        let (Some(pod), Some((api, runtime))) = (&req.pod_ref, &self.cluster) else {
            return;
        };
        let reason = if outcome.done {
            "ModelsWarm"
        } else {
            "ModelsWarming"
        };
        if let Err(e) = runtime.block_on(api.pod_event(pod, reason, &outcome.message)) {
            tracing::warn!(volume = %req.volume_id, "{e}");
        }
    }

    /// The same server, getting pod credentials from `source`.
    pub fn with_credential_source(mut self, source: Arc<dyn CredentialSource>) -> NodeServer<M> {
        self.credentials = Some(source);
        self
    }

    /// Credentials for `target`'s pod: the ones it was given, while the token is the same and
    /// they last long enough; otherwise a fresh exchange (`true`: not yet given to the mounter).
    fn pod_credentials(
        &self,
        target: &Path,
        pod: &PodIdentity,
        spec: &MountSpec,
    ) -> Result<(VolumeCredentials, bool), NodeError> {
        let digest = pod.token_digest();
        {
            let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(given) = issued.get(target) {
                if given.token_digest == digest && lasts(&given.credentials) {
                    return Ok((given.credentials.clone(), false));
                }
            }
        }
        let source = self
            .credentials
            .as_ref()
            .ok_or_else(|| CredentialError::Unavailable {
                account: pod.describe(),
                message: "this plugin has no credential source".to_string(),
            })?;
        Ok((source.exchange(pod, spec.region())?, true))
    }

    fn remember(&self, target: &Path, pod: &PodIdentity, credentials: VolumeCredentials) {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.insert(
            target.to_path_buf(),
            Issued {
                token_digest: pod.token_digest(),
                credentials,
            },
        );
    }

    /// The credentials `target` was last given, while they last.
    fn last_issued(&self, target: &Path) -> Option<VolumeCredentials> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued
            .get(target)
            .map(|given| given.credentials.clone())
            .filter(lasts)
    }

    /// The node settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Whether start-up recovery has finished (reported by Probe).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the service ready (done by [`NodeServer::repair`]).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    fn lock(&self, target: &Path) -> Result<TargetGuard<'_>, NodeError> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(target.to_path_buf()) {
            return Err(NodeError::Busy(target.to_path_buf()));
        }
        Ok(TargetGuard {
            busy: &self.busy,
            target: target.to_path_buf(),
        })
    }

    /// Checks that `target` is a plain absolute path strictly below the kubelet directory.
    pub fn check_target(&self, target: &str) -> Result<PathBuf, NodeError> {
        let path = PathBuf::from(target);
        let invalid =
            |why: &str| NodeError::InvalidArgument(format!("target path {target:?} {why}"));
        if !path.is_absolute() {
            return Err(invalid("is not absolute"));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(invalid("contains '.' or '..'"));
        }
        let kubelet_dir = &self.config.kubelet_dir;
        if !path.starts_with(kubelet_dir)
            || path.components().count() <= kubelet_dir.components().count()
        {
            return Err(invalid(&format!(
                "is not below the kubelet directory {}",
                kubelet_dir.display()
            )));
        }
        Ok(path)
    }

    /// Mounts `req.spec` at `req.target` (see the module doc for the rules).
    pub fn publish(&self, req: &PublishRequest) -> Result<(), NodeError> {
        let target = &req.target;
        let _guard = self.lock(target)?;
        let credentials = match &req.pod {
            Some(pod) => Some(self.pod_credentials(target, pod, &req.spec)?),
            None => None,
        };
        match self.mounter.mount_state(target)? {
            MountState::Healthy => {
                return match self.state.get(target) {
                    Some(r) if r.volume_id == req.volume_id && r.spec == req.spec => {
                        if let (Some(pod), Some((fresh, true))) = (&req.pod, credentials) {
                            self.mounter.refresh(target, &fresh)?;
                            tracing::info!(volume = %req.volume_id, "new credentials for {} at {}", pod.describe(), target.display());
                            self.remember(target, pod, fresh);
                        } else {
                            tracing::debug!(volume = %req.volume_id, "already published at {}", target.display());
                        }
                        Ok(())
                    }
                    Some(r) if r.volume_id == req.volume_id => Err(NodeError::AlreadyExists(format!(
                        "volume {} is already published at {} with other attributes or mount options ({} {:?}); unpublish it first",
                        r.volume_id,
                        target.display(),
                        r.spec.source,
                        r.spec.options
                    ))),
                    Some(r) => Err(NodeError::AlreadyExists(format!(
                        "volume {} is already published at {}",
                        r.volume_id,
                        target.display()
                    ))),
                    None => Err(NodeError::AlreadyExists(format!(
                        "something this plugin did not publish is mounted at {}",
                        target.display()
                    ))),
                };
            }
            MountState::Stale => {
                // Taken down only when it can be replaced: a dead mount fails reads, an empty
                // directory would look like a volume without models.
                self.mounter.check_ready()?;
                tracing::warn!(volume = %req.volume_id, "replacing the dead mount at {}", target.display());
                self.unmount_all(target)?;
            }
            MountState::NotMounted => {}
        }
        std::fs::create_dir_all(target).map_err(|source| NodeError::TargetDir {
            what: "cannot create",
            path: target.clone(),
            source,
        })?;
        let given = credentials.map(|(credentials, _)| credentials);
        let warm_any = match self.workflow_models(req) {
            Ok(models) => models,
            Err(e) => {
                let _ = std::fs::remove_dir(target);
                return Err(e);
            }
        };
        let mounted = self.mounter.mount(&MountRequest {
            volume_id: &req.volume_id,
            spec: &req.spec,
            target,
            credentials: given.as_ref(),
            warm_any: &warm_any,
        });
        let warm = match mounted {
            Ok(warm) => warm,
            Err(e) => {
                let _ = self.unmount_all(target);
                let _ = std::fs::remove_dir(target);
                return Err(e.into());
            }
        };
        if let Some(outcome) = &warm {
            self.report_warm(req, outcome);
        }
        if let (Some(pod), Some(given)) = (&req.pod, given) {
            self.remember(target, pod, given);
        }
        let record = Record {
            volume_id: req.volume_id.clone(),
            target: target.clone(),
            spec: req.spec.clone(),
        };
        if let Err(e) = self.state.put(&record) {
            // Without its record the mount could not be recognised later: undo it.
            let _ = self.unmount_all(target);
            let _ = std::fs::remove_dir(target);
            return Err(e.into());
        }
        tracing::info!(volume = %req.volume_id, "published {} at {}", req.spec.source, target.display());
        Ok(())
    }

    /// Unmounts whatever is at `target` and removes the directory (see the module doc).
    pub fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), NodeError> {
        let _guard = self.lock(target)?;
        self.unmount_all(target)?;
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                std::fs::remove_file(target).map_err(|source| NodeError::TargetDir {
                    what: "cannot remove",
                    path: target.to_path_buf(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(NodeError::TargetDir {
                    what: "cannot remove",
                    path: target.to_path_buf(),
                    source,
                })
            }
        }
        self.state.remove(target)?;
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target);
        tracing::info!(volume = %volume_id, "unpublished {}", target.display());
        Ok(())
    }

    fn unmount_all(&self, target: &Path) -> Result<(), MountError> {
        for _ in 0..MAX_STACKED_MOUNTS {
            if self.mounter.mount_state(target)? == MountState::NotMounted {
                return Ok(());
            }
            self.mounter.unmount(target)?;
        }
        Err(MountError::UnmountFailed {
            target: target.to_path_buf(),
            message: format!("still mounted after {MAX_STACKED_MOUNTS} unmounts"),
        })
    }

    /// Pass over the recorded targets, at start-up and then periodically (see
    /// [`REPAIR_INTERVAL`]): a live mount is kept; a dead one (the mounter died or was
    /// replaced) is replaced by a fresh mount of the same spec when the mounter answers, and
    /// left dead (failing reads) when it does not; a target with nothing mounted loses its
    /// record (kubelet publishes again if it still needs it). Marks the service ready.
    pub fn repair(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let records = match self.state.list() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("cannot read published volumes: {e}");
                self.set_ready();
                return report;
            }
        };
        for record in records {
            let target = record.target.clone();
            let Ok(_guard) = self.lock(&target) else {
                // Kubelet is already working on it.
                continue;
            };
            let outcome = match self.mounter.mount_state(&target) {
                Ok(MountState::Healthy) => {
                    report.alive.push(target);
                    continue;
                }
                Ok(MountState::NotMounted) => {
                    if let Err(e) = self.state.remove(&target) {
                        tracing::warn!("{e}");
                    }
                    report.forgotten.push(target);
                    continue;
                }
                Ok(MountState::Stale) => {
                    // The record was accepted under the policy of its day; the node's list
                    // may have shrunk since.
                    if let Err(e) = record.spec.check_policy(&self.config.endpoints) {
                        tracing::warn!(volume = %record.volume_id, "not remounting {}: {e}", target.display());
                        report.failed.push((target, e.to_string()));
                        continue;
                    }
                    let credentials = match record.spec.authentication {
                        Authentication::Pod => match self.last_issued(&target) {
                            Some(credentials) => Some(credentials),
                            None => {
                                let why = "no current credentials for the pod: waiting for kubelet to publish it again with the pod's token";
                                tracing::info!(volume = %record.volume_id, "not remounting {} yet: {why}", target.display());
                                report.failed.push((target, why.to_string()));
                                continue;
                            }
                        },
                        _ => None,
                    };
                    // Files to warm are mostly local already; the pass must not wait for them.
                    let mut spec = record.spec.clone();
                    spec.warm.wait_ms = 0;
                    self.mounter
                        .check_ready()
                        .and_then(|()| self.unmount_all(&target))
                        .and_then(|()| {
                            self.mounter
                                .mount(&MountRequest {
                                    volume_id: &record.volume_id,
                                    spec: &spec,
                                    target: &target,
                                    credentials: credentials.as_ref(),
                                    warm_any: &[],
                                })
                                .map(drop)
                        })
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(volume = %record.volume_id, "remounted {} at {}", record.spec.source, target.display());
                    report.remounted.push(target);
                }
                Err(e) => {
                    tracing::error!(volume = %record.volume_id, "cannot remount {}: {e}", target.display());
                    report.failed.push((target, e.to_string()));
                }
            }
        }
        self.set_ready();
        report
    }
}

/// The gRPC face of a [`NodeServer`].
pub struct NodeService<M: Mounter> {
    inner: Arc<NodeServer<M>>,
}

impl<M: Mounter> NodeService<M> {
    /// Serves `inner`.
    pub fn new(inner: Arc<NodeServer<M>>) -> NodeService<M> {
        NodeService { inner }
    }
}

/// Turns a NodePublishVolume request into a [`PublishRequest`], or INVALID_ARGUMENT.
pub fn publish_request<M: Mounter>(
    server: &NodeServer<M>,
    req: &proto::NodePublishVolumeRequest,
) -> Result<PublishRequest, NodeError> {
    use proto::volume_capability::AccessType;
    if req.volume_id.is_empty() {
        return Err(NodeError::InvalidArgument("volume_id is required".into()));
    }
    if req.target_path.is_empty() {
        return Err(NodeError::InvalidArgument("target_path is required".into()));
    }
    let capability = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| NodeError::InvalidArgument("volume_capability is required".into()))?;
    let mount_flags = match &capability.access_type {
        Some(AccessType::Mount(mount)) => &mount.mount_flags,
        Some(AccessType::Block(_)) => {
            return Err(NodeError::InvalidArgument(
                "block access is not supported: modelfs volumes are filesystems".into(),
            ))
        }
        None => {
            return Err(NodeError::InvalidArgument(
                "volume_capability needs an access type (mount)".into(),
            ))
        }
    };
    if capability.access_mode.is_none() {
        return Err(NodeError::InvalidArgument(
            "volume_capability.access_mode is required".into(),
        ));
    }
    if !req.secrets.is_empty() {
        return Err(NodeError::InvalidArgument(
            "node-publish secrets are not supported: credentials come from the pod's service account (authenticationSource: pod) or the driver's".into(),
        ));
    }
    let target = server.check_target(&req.target_path)?;
    let spec =
        MountSpec::parse_with_policy(&req.volume_context, mount_flags, &server.config.endpoints)?;
    let pod = match spec.authentication {
        Authentication::Pod => Some(PodIdentity::from_context(&req.volume_context)?),
        Authentication::Driver | Authentication::Unsigned => None,
    };
    Ok(PublishRequest {
        volume_id: req.volume_id.clone(),
        target,
        spec,
        pod,
        pod_ref: PodRef::from_context(&req.volume_context),
    })
}

/// Runs `f` off the async threads and answers with the (empty) response `R`; an error of `f`
/// becomes the status for `operation` of `volume_id` ([`NodeError::status`]).
async fn blocking<R: Default>(
    operation: &str,
    volume_id: &str,
    source: Option<&str>,
    f: impl FnOnce() -> Result<(), NodeError> + Send + 'static,
) -> Result<Response<R>, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(|e| e.status(operation, volume_id, source))?;
    Ok(Response::new(R::default()))
}

#[tonic::async_trait]
impl<M: Mounter> proto::node_server::Node for NodeService<M> {
    async fn node_publish_volume(
        &self,
        request: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let volume_id = request.get_ref().volume_id.clone();
        let req = publish_request(&self.inner, request.get_ref())
            .map_err(|e| e.status("publishing", &volume_id, None))?;
        let source = req.spec.source.clone();
        let inner = self.inner.clone();
        blocking("publishing", &volume_id, Some(&source), move || {
            inner.publish(&req)
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(NodeError::InvalidArgument("volume_id is required".into()).into());
        }
        if req.target_path.is_empty() {
            return Err(NodeError::InvalidArgument("target_path is required".into()).into());
        }
        let target = self.inner.check_target(&req.target_path)?;
        let inner = self.inner.clone();
        let volume_id = req.volume_id.clone();
        blocking("unpublishing", &volume_id, None, move || {
            inner.unpublish(&req.volume_id, &target)
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        // No staging, stats or expansion: publish/unpublish only.
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: self.inner.config().node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::mount_capability;
    use crate::mounter::fake::FakeMounter;
    use crate::pod_identity::{POD_NAMESPACE, SERVICE_ACCOUNT_NAME, SERVICE_ACCOUNT_TOKENS};
    use crate::volume_context::{
        AUTHENTICATION_SOURCE, BUCKET, ENDPOINT_URL, EPHEMERAL, NO_SIGN_REQUEST, PREFIX,
    };
    use proto::volume_capability::{access_mode::Mode, AccessType};

    struct Fixture {
        server: Arc<NodeServer<FakeMounter>>,
        mounter: Arc<FakeMounter>,
        credentials: Arc<FakeCredentials>,
        pods: PathBuf,
        state_dir: PathBuf,
        _dir: tempfile::TempDir,
    }

    /// The endpoint the unit tests' policy lists (never connected to: the mounter is fake).
    const LISTED: &str = "https://s3.example.com";

    fn policy() -> EndpointPolicy {
        EndpointPolicy::new(&[LISTED.to_string()], false).unwrap()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        std::fs::create_dir_all(&pods).unwrap();
        let state_dir = dir.path().join("state");
        let mounter = Arc::new(FakeMounter::default());
        let credentials = Arc::new(FakeCredentials::default());
        let server = Arc::new(
            NodeServer::new(
                NodeConfig {
                    node_id: "node-1".into(),
                    kubelet_dir: pods.clone(),
                    endpoints: policy(),
                },
                mounter.clone(),
                StateStore::open(&state_dir).unwrap(),
            )
            .with_credential_source(credentials.clone()),
        );
        Fixture {
            server,
            mounter,
            credentials,
            pods,
            state_dir,
            _dir: dir,
        }
    }

    fn request(volume: &str, target: &Path, bucket: &str) -> proto::NodePublishVolumeRequest {
        proto::NodePublishVolumeRequest {
            volume_id: volume.into(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(mount_capability(Mode::MultiNodeReaderOnly, Vec::new())),
            readonly: true,
            volume_context: [
                (BUCKET.to_string(), bucket.to_string()),
                (AUTHENTICATION_SOURCE.to_string(), "driver".to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    /// Volume `vol-1` of bucket `models` at `target`, read through the S3 endpoint `url`.
    fn endpoint_request(target: &Path, url: &str) -> proto::NodePublishVolumeRequest {
        let mut req = request("vol-1", target, "models");
        req.volume_context.insert(ENDPOINT_URL.into(), url.into());
        req
    }

    /// STS in a box: each exchange issues key `KEY-<token>-<n>`; the roles of service
    /// accounts named `norole` are missing and those named `refused` are refused.
    #[derive(Default)]
    struct FakeCredentials {
        exchanges: Mutex<usize>,
    }

    impl CredentialSource for FakeCredentials {
        fn exchange(
            &self,
            pod: &PodIdentity,
            _region: Option<&str>,
        ) -> Result<VolumeCredentials, CredentialError> {
            let account = pod.describe();
            match pod.service_account.as_str() {
                "norole" => return Err(CredentialError::NoRole { account }),
                "refused" => {
                    return Err(CredentialError::Refused {
                        role: "arn:aws:iam::1:role/r".into(),
                        account,
                        message: "AccessDenied: not trusted".into(),
                    })
                }
                _ => {}
            }
            let mut exchanges = self.exchanges.lock().unwrap();
            *exchanges += 1;
            Ok(VolumeCredentials {
                access_key_id: format!("KEY-{}-{}", pod.token(), *exchanges),
                secret_access_key: "secret".into(),
                session_token: "session".into(),
                expires_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 3600,
            })
        }
    }

    /// An inline volume of pod `account` in namespace `ns` with `token`.
    fn pod_request(target: &Path, account: &str, token: &str) -> proto::NodePublishVolumeRequest {
        let mut req = request("csi-inline", target, "models");
        req.volume_context.remove(AUTHENTICATION_SOURCE);
        req.volume_context.insert(EPHEMERAL.into(), "true".into());
        req.volume_context.insert(POD_NAMESPACE.into(), "ns".into());
        req.volume_context
            .insert(SERVICE_ACCOUNT_NAME.into(), account.into());
        req.volume_context.insert(
            SERVICE_ACCOUNT_TOKENS.into(),
            format!(r#"{{"sts.amazonaws.com":{{"token":"{token}"}}}}"#),
        );
        req
    }

    #[test]
    fn pod_volumes_get_their_pods_credentials_and_a_new_token_refreshes_them() {
        let f = fixture();
        let target = f.pods.join("pod-p/mount");
        publish(&f, &pod_request(&target, "sa", "tok1")).unwrap();
        let key = |f: &Fixture| f.mounter.state.lock().unwrap().credentials[&target].clone();
        assert_eq!(key(&f), "KEY-tok1-1");
        // Kubelet's republish with the same token: nothing to do.
        publish(&f, &pod_request(&target, "sa", "tok1")).unwrap();
        assert_eq!(*f.credentials.exchanges.lock().unwrap(), 1);
        assert_eq!(f.mounter.state.lock().unwrap().refresh_calls, 0);
        // A new token: a new exchange, handed to the mounter without a remount.
        publish(&f, &pod_request(&target, "sa", "tok2")).unwrap();
        assert_eq!(key(&f), "KEY-tok2-2");
        assert_eq!(f.mounter.state.lock().unwrap().refresh_calls, 1);
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 1);
        // The mounter died: the repair pass remounts with the credentials it holds.
        f.mounter.make_stale(&target);
        let report = f.server.repair();
        assert_eq!(report.remounted, vec![target.clone()]);
        assert_eq!(key(&f), "KEY-tok2-2");
        // A plugin that has not seen the pod's token since it started waits for kubelet.
        let restarted = NodeServer::new(
            f.server.config().clone(),
            f.mounter.clone(),
            StateStore::open(&f.state_dir).unwrap(),
        );
        f.mounter.make_stale(&target);
        let report = restarted.repair();
        assert!(report.remounted.is_empty());
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].1.contains("pod's token"), "{report:?}");
        // Unpublish forgets the credentials.
        f.server.unpublish("csi-inline", &target).unwrap();
        assert!(f.server.last_issued(&target).is_none());
    }

    #[test]
    fn pods_without_a_role_or_refused_by_sts_are_told_why_and_nothing_is_mounted() {
        let f = fixture();
        let target = f.pods.join("pod-n/mount");
        let err = publish(&f, &pod_request(&target, "norole", "tok1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let status = err.status("publishing", "csi-inline", None);
        assert!(
            status.message().contains("eks.amazonaws.com/role-arn"),
            "{status:?}"
        );
        let err = publish(&f, &pod_request(&target, "refused", "tok1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(f.mounter.depth(&target), 0);
        assert!(!target.exists());
        // The driver's credentials are for PersistentVolumes only.
        let mut inline_driver = pod_request(&target, "sa", "tok1");
        inline_driver
            .volume_context
            .insert(AUTHENTICATION_SOURCE.into(), "driver".into());
        let err = publish(&f, &inline_driver).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains(AUTHENTICATION_SOURCE), "{err}");
    }

    #[test]
    fn pod_volumes_are_unavailable_on_a_plugin_without_a_credential_source() {
        let f = fixture();
        let bare = NodeServer::new(
            f.server.config().clone(),
            f.mounter.clone(),
            StateStore::open(&f.state_dir).unwrap(),
        );
        let target = f.pods.join("pod-c/mount");
        let req = publish_request(&bare, &pod_request(&target, "sa", "tok1")).unwrap();
        let err = bare.publish(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.to_string().contains("no credential source"), "{err}");
        assert_eq!(f.mounter.depth(&target), 0);
        assert_eq!(*f.credentials.exchanges.lock().unwrap(), 0);
    }

    fn publish(f: &Fixture, req: &proto::NodePublishVolumeRequest) -> Result<(), NodeError> {
        let req = publish_request(&f.server, req)?;
        f.server.publish(&req)
    }

    fn code(result: Result<(), NodeError>) -> tonic::Code {
        match result {
            Ok(()) => tonic::Code::Ok,
            Err(e) => e.code(),
        }
    }

    #[test]
    fn publish_is_idempotent_and_mounts_once() {
        let f = fixture();
        let target = f.pods.join("pod-a/volumes/kubernetes.io~csi/models/mount");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let req = request("vol-1", &target, "models");
        publish(&f, &req).unwrap();
        publish(&f, &req).unwrap();
        assert!(target.is_dir());
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 1);
        assert_eq!(f.mounter.depth(&target), 1);
    }

    #[test]
    fn other_arguments_at_a_mounted_target_are_already_exists() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        publish(&f, &request("vol-1", &target, "models")).unwrap();
        assert_eq!(
            code(publish(&f, &request("vol-1", &target, "other-models"))),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(publish(&f, &request("vol-2", &target, "models"))),
            tonic::Code::AlreadyExists
        );
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 1);
    }

    #[test]
    fn unpublish_unmounts_removes_the_target_and_is_idempotent() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        publish(&f, &request("vol-1", &target, "models")).unwrap();
        f.server.unpublish("vol-1", &target).unwrap();
        assert!(!target.exists());
        assert_eq!(f.mounter.depth(&target), 0);
        f.server.unpublish("vol-1", &target).unwrap();
        assert!(std::fs::read_dir(&f.state_dir).unwrap().next().is_none());
    }

    #[test]
    fn stale_mounts_are_replaced_on_publish_and_removed_on_unpublish() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        let req = request("vol-1", &target, "models");
        publish(&f, &req).unwrap();
        f.mounter.make_stale(&target);
        publish(&f, &req).unwrap();
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 2);
        assert_eq!(f.mounter.depth(&target), 1);
        assert_eq!(f.mounter.mount_state(&target).unwrap(), MountState::Healthy);
        f.mounter.make_stale(&target);
        f.server.unpublish("vol-1", &target).unwrap();
        assert_eq!(f.mounter.depth(&target), 0);
        assert!(!target.exists());
    }

    #[test]
    fn a_failed_mount_leaves_no_directory_and_no_record() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        f.mounter.state.lock().unwrap().fail_next_mount = Some("NoSuchBucket".into());
        let err = publish(&f, &request("vol-1", &target, "models")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.to_string().contains("NoSuchBucket"), "{err}");
        assert!(!target.exists());
        assert!(f.server.state.get(&target).is_none());
    }

    /// Collects what the code under test logs, for the duration of `f`.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn kubelet_gets_a_summary_of_a_failed_mount_and_the_log_gets_the_details() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        let detail = "connect error: Connection refused (os error 111) to 10.1.2.3:9000";
        f.mounter.state.lock().unwrap().fail_next_mount = Some(detail.into());
        let err = publish(&f, &request("vol-1", &target, "models")).unwrap_err();
        let mut status = None;
        let log = logged(|| status = Some(err.status("publishing", "vol-1", Some("s3://models/"))));
        let status = status.unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);
        let message = status.message();
        assert!(message.contains("vol-1"), "{message}");
        assert!(message.contains("s3://models/"), "{message}");
        assert!(message.contains("plugin log"), "{message}");
        assert!(!message.contains("10.1.2.3"), "{message}");
        assert!(!message.contains("refused"), "{message}");
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("vol-1"), "{log}");
        assert!(log.contains(detail), "{log}");

        // The mounter being down is UNAVAILABLE (kubelet retries), summarised the same way.
        f.mounter.state.lock().unwrap().unavailable = Some("connect /run/m.sock".into());
        let err = publish(&f, &request("vol-1", &target, "models")).unwrap_err();
        let status = err.status("publishing", "vol-1", None);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let message = status.message();
        assert!(!message.contains("m.sock"), "{message}");
        assert!(message.contains("not available"), "{message}");
    }

    #[test]
    fn errors_about_the_request_reach_kubelet_as_they_are() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        let req = endpoint_request(&target, "http://127.0.0.2:9");
        let err = publish(&f, &req).unwrap_err();
        let status = err.status("publishing", "vol-1", None);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let message = status.message();
        assert_eq!(message, err.to_string());
        assert!(message.contains("endpointUrl="), "{message}");
        let status = Status::from(NodeError::InvalidArgument("volume_id is required".into()));
        assert_eq!(status.message(), "volume_id is required");
    }

    #[test]
    fn required_fields_are_invalid_argument() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        let good = request("vol-1", &target, "models");
        let mut cases = Vec::new();
        let mut r = good.clone();
        r.volume_id.clear();
        cases.push(("no volume id", r));
        let mut r = good.clone();
        r.target_path.clear();
        cases.push(("no target", r));
        let mut r = good.clone();
        r.volume_capability = None;
        cases.push(("no capability", r));
        let mut r = good.clone();
        r.volume_capability.as_mut().unwrap().access_type =
            Some(AccessType::Block(proto::volume_capability::BlockVolume {}));
        cases.push(("block", r));
        let mut r = good.clone();
        r.volume_capability.as_mut().unwrap().access_mode = None;
        cases.push(("no access mode", r));
        let mut r = good.clone();
        r.secrets.insert("key".into(), "value".into());
        cases.push(("secrets", r));
        let mut r = good.clone();
        r.volume_context.clear();
        cases.push(("no bucket", r));
        let mut r = good.clone();
        r.volume_context.insert("colour".into(), "blue".into());
        cases.push(("unknown attribute", r));
        for url in [
            "http://127.0.0.2:9",
            "https://other.example.com",
            "http://2852039166/",
        ] {
            cases.push(("endpoint not allowed", endpoint_request(&target, url)));
        }
        let mut r = good.clone();
        r.volume_context
            .insert(NO_SIGN_REQUEST.into(), "true".into());
        cases.push(("unsigned not allowed", r));
        for target in ["relative/mount", "/etc/mount", "/"] {
            let mut r = good.clone();
            r.target_path = target.into();
            cases.push(("outside kubelet dir", r));
        }
        let mut r = good.clone();
        r.target_path = format!("{}/../escape", f.pods.display());
        cases.push(("dot-dot", r));
        let mut r = good.clone();
        r.target_path = f.pods.to_string_lossy().into_owned();
        cases.push(("kubelet dir itself", r));
        for (name, req) in cases {
            assert_eq!(
                code(publish(&f, &req)),
                tonic::Code::InvalidArgument,
                "{name}"
            );
        }
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 0);
        assert!(!target.exists());
    }

    #[test]
    fn inline_ephemeral_writer_requests_are_mounted_read_only() {
        let f = fixture();
        let target = f.pods.join("pod-b/mount");
        let mut req = pod_request(&target, "sa", "tok1");
        req.readonly = false;
        req.volume_capability = Some(mount_capability(Mode::SingleNodeWriter, Vec::new()));
        req.volume_context.insert(EPHEMERAL.into(), "true".into());
        req.volume_context
            .insert(PREFIX.into(), "checkpoints".into());
        publish(&f, &req).unwrap();
        let state = f.mounter.state.lock().unwrap();
        let (spec, _) = &state.mounts[&target][0];
        assert_eq!(spec.source, "s3://models/checkpoints/");
        // Nothing in the spec can make the mount writable: modelfs has no write mode.
        assert!(!spec.options.iter().any(|o| o.contains("rw")));
    }

    #[test]
    fn concurrent_operations_on_one_target_are_aborted() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        let _guard = f.server.lock(&target).unwrap();
        assert_eq!(
            code(publish(&f, &request("vol-1", &target, "models"))),
            tonic::Code::Aborted
        );
        assert_eq!(
            code(f.server.unpublish("vol-1", &target)),
            tonic::Code::Aborted
        );
    }

    #[test]
    fn recovery_remounts_stale_targets_and_forgets_unmounted_ones() {
        let f = fixture();
        let alive = f.pods.join("pod-a/mount");
        let stale = f.pods.join("pod-b/mount");
        let gone = f.pods.join("pod-c/mount");
        for (i, target) in [&alive, &stale, &gone].into_iter().enumerate() {
            publish(&f, &request(&format!("vol-{i}"), target, "models")).unwrap();
        }
        f.mounter.make_stale(&stale);
        f.mounter.unmount(&gone).unwrap();
        assert!(!f.server.is_ready());
        let report = f.server.repair();
        assert!(f.server.is_ready());
        assert_eq!(report.alive, vec![alive.clone()]);
        assert_eq!(report.remounted, vec![stale.clone()]);
        assert_eq!(report.forgotten, vec![gone.clone()]);
        assert!(report.failed.is_empty());
        assert_eq!(f.mounter.mount_state(&stale).unwrap(), MountState::Healthy);
        assert_eq!(f.mounter.depth(&stale), 1);
        assert!(f.server.state.get(&gone).is_none());
        // The remounted target is still recognised as this volume.
        publish(&f, &request("vol-1", &stale, "models")).unwrap();
        assert_eq!(f.mounter.depth(&stale), 1);
    }

    #[test]
    fn a_dead_mount_whose_endpoint_is_no_longer_allowed_is_not_remounted() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        publish(&f, &endpoint_request(&target, LISTED)).unwrap();
        f.mounter.make_stale(&target);

        // The plugin restarts with the default policy, over the same records and mounts.
        let restarted = NodeServer::new(
            NodeConfig {
                node_id: "node-1".into(),
                kubelet_dir: f.pods.clone(),
                endpoints: EndpointPolicy::aws_only(),
            },
            f.mounter.clone(),
            StateStore::open(&f.state_dir).unwrap(),
        );
        let report = restarted.repair();
        assert!(report.remounted.is_empty(), "{report:?}");
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.failed[0].1.contains("endpointUrl="), "{report:?}");
        assert_eq!(f.mounter.state.lock().unwrap().mount_calls, 1);
        assert_eq!(f.mounter.mount_state(&target).unwrap(), MountState::Stale);

        // Under the policy it was published with, the same pass remounts it.
        let report = f.server.repair();
        assert_eq!(report.remounted, vec![target.clone()]);
    }

    #[test]
    fn a_dead_mount_is_left_dead_while_the_mounter_is_unreachable() {
        let f = fixture();
        let target = f.pods.join("pod-a/mount");
        publish(&f, &request("vol-1", &target, "models")).unwrap();
        f.mounter.make_stale(&target);
        f.mounter.state.lock().unwrap().unavailable = Some("no mounter".into());

        // Neither the periodic pass nor a republish takes the dead mount down.
        let report = f.server.repair();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert_eq!(f.mounter.mount_state(&target).unwrap(), MountState::Stale);
        assert_eq!(
            code(publish(&f, &request("vol-1", &target, "models"))),
            tonic::Code::Unavailable
        );
        assert_eq!(f.mounter.mount_state(&target).unwrap(), MountState::Stale);
        assert_eq!(f.mounter.depth(&target), 1);

        // The mounter is back: the next pass repairs it.
        f.mounter.state.lock().unwrap().unavailable = None;
        let report = f.server.repair();
        assert_eq!(report.remounted, vec![target.clone()]);
        assert_eq!(f.mounter.mount_state(&target).unwrap(), MountState::Healthy);
        assert_eq!(f.mounter.depth(&target), 1);
    }
}
