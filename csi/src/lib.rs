//! The modelfs CSI node plugin: Kubernetes pods mount an S3 models prefix as a read-only
//! volume, served by `modelfs mount`, without copying the models first.
//!
//! Kubelet talks to the plugin over a Unix socket (registered by node-driver-registrar) with
//! the CSI v1 gRPC protocol. The plugin is node-only: there is no controller, volumes are
//! either static PVs (`ReadOnlyMany`) or inline ephemeral volumes, both described entirely by
//! their volume attributes.
//!
//! How the pieces fit:
//! - [`identity`]: GetPluginInfo / GetPluginCapabilities / Probe.
//! - [`node`]: NodeGetInfo, NodeGetCapabilities, and the publish/unpublish policy (validation,
//!   idempotency, stale mounts, target directories) over a [`mounter::Mounter`].
//! - [`volume_context`]: the volume attributes and mount flags a volume may carry, validated in
//!   one place and turned into `modelfs mount` arguments.
//! - [`endpoint_policy`]: which S3 endpoints a volume may name (`--allowed-endpoints`) and
//!   whether it may be unsigned (`--allow-unsigned`).
//! - [`mounter`]: the edge to the OS: mounts a FUSE connection at the target and hands it to
//!   the node's `modelfs mounter` ([`handoff`] is that socket's protocol), unmounts, and
//!   reads mountinfo; plus a fake for unit tests.
//! - [`cluster`]: the Kubernetes API calls (service accounts, `warmWorkflow` ConfigMaps, Events
//!   on pods).
//! - [`pod_identity`] and [`pod_credentials`]: the pod's service-account token in a volume's
//!   context, exchanged with STS for the role its service account names
//!   (`authenticationSource: pod`, the default).
//! - [`state`]: one record per published target, so publish stays idempotent across plugin
//!   restarts and dead mounts can be repaired (at start-up and every few seconds).
//! - [`server`]: the socket and the tonic server; [`client`]: a channel to it (tests, tools).
//! - [`startup_taint`]: removes the node's startup taint once the plugin can serve.
//! - [`proto`]: the generated CSI types (`csi/proto/csi.proto`, a wire-compatible subset of the
//!   CSI v1.12 spec).
//!
//! Every volume of a node is served by one long-lived `modelfs mounter` process, which holds
//! the FUSE sessions, one memory budget and the disk cache: the plugin can be restarted or
//! upgraded without touching a mount, and pods on the same node share each other's
//! downloads. A volume reads with its pod's credentials, handed to the mounter with the
//! volume, or, where a PersistentVolume says `authenticationSource: driver`, with the
//! mounter's own (its service account through IRSA or EKS Pod Identity).

#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod endpoint_policy;
pub mod handoff;
pub mod identity;
pub mod mounter;
pub mod node;
pub mod pod_credentials;
pub mod pod_identity;
pub mod proto;
pub mod server;
pub mod startup_taint;
pub mod state;
pub mod volume_context;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

/// Flags of `modelfs csi`.
#[derive(Debug, Clone, clap::Args)]
pub struct CsiArgs {
    /// CSI endpoint to listen on (a Unix socket).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's id, reported by NodeGetInfo (use the Kubernetes node name).
    #[arg(long)]
    pub node_id: String,
    /// Kubelet's pods directory: target paths outside it are refused.
    #[arg(long, default_value = "/var/lib/kubelet/pods")]
    pub kubelet_dir: PathBuf,
    /// The node mounter's socket (`modelfs mounter --socket`), which serves every volume.
    #[arg(long, default_value = "unix:///var/lib/modelfs/mounter/mounter.sock")]
    pub mounter_socket: String,
    /// Where published volumes are recorded (default: a `volumes` directory beside the
    /// socket).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// S3 endpoints a volume's `endpointUrl` may name, comma-separated. Default: none, i.e.
    /// AWS S3 only: a volume without `endpointUrl` uses AWS's regional endpoint and any
    /// `endpointUrl` is refused. An entry matches when scheme, host and port are equal
    /// (default ports implied, host case ignored) and the path too (a trailing `/` ignored);
    /// plain `http://` only where an `http://` entry names it. Link-local, instance metadata
    /// and unspecified addresses can never be listed.
    #[arg(long, value_name = "URL,...", value_delimiter = ',')]
    pub allowed_endpoints: Vec<String>,
    /// Allow volumes with `noSignRequest: "true"` (unsigned requests, for public buckets).
    /// Default: refused.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// STS endpoint for `authenticationSource: pod` volumes (default: AWS STS in the
    /// volume's region, else `AWS_REGION`).
    #[arg(long, value_name = "URL")]
    pub sts_endpoint_url: Option<String>,
    /// The node's EKS Pod Identity agent, asked for the credentials of pods whose service
    /// account names no IRSA role (`none`: never asked).
    #[arg(long, value_name = "URL", default_value = pod_credentials::DEFAULT_POD_IDENTITY_AGENT_URL)]
    pub pod_identity_agent_url: String,
    /// Remove this taint (`KEY` or `KEY:EFFECT`) from this node once the plugin can serve:
    /// its socket answers Probe, the mounter answers, kubelet has registered the driver.
    /// Default: none. Needs `get`/`patch` on nodes and `get` on csinodes (the API server from
    /// `KUBECONFIG`, else the in-cluster configuration).
    #[arg(long, value_name = "KEY[:EFFECT]")]
    pub startup_taint: Option<startup_taint::StartupTaint>,
    /// Log filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Runs the plugin until SIGTERM/SIGINT. Mounts are left in place when it stops.
pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    // Another subscriber may already be installed by the caller; keep it then.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();

    if args.node_id.trim().is_empty() {
        anyhow::bail!("--node-id must not be empty");
    }
    if !args.kubelet_dir.is_absolute() {
        anyhow::bail!("--kubelet-dir must be an absolute path");
    }
    let endpoints =
        endpoint_policy::EndpointPolicy::new(&args.allowed_endpoints, args.allow_unsigned)?;
    let socket = server::socket_path(&args.endpoint)?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => socket
            .parent()
            .context("the socket path has no directory")?
            .join("volumes"),
    };
    let state = state::StateStore::open(&state_dir)?;
    let mounter = mounter::HandoffMounter::new(server::socket_path(&args.mounter_socket)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("modelfs-csi")
        .build()
        .context("cannot start the async runtime")?;
    let cluster: Arc<dyn cluster::ClusterApi> = Arc::new(cluster::KubeApi::default());
    let credentials = pod_credentials::StsWebIdentity::new(
        runtime.handle().clone(),
        cluster.clone(),
        args.sts_endpoint_url.clone(),
    )
    .with_pod_identity_agent(Some(args.pod_identity_agent_url.clone()).filter(|url| url != "none"));
    let node = Arc::new(
        node::NodeServer::new(
            node::NodeConfig {
                node_id: args.node_id.clone(),
                kubelet_dir: args.kubelet_dir.clone(),
                endpoints: endpoints.clone(),
            },
            Arc::new(mounter),
            state,
        )
        .with_credential_source(Arc::new(credentials))
        .with_cluster(cluster, runtime.handle().clone()),
    );
    runtime.block_on(async {
        let listener = server::bind(&socket)?;
        startup_taint::spawn(&args, &socket);
        tracing::info!(
            "{} {} serving on {} (node {})",
            identity::DRIVER_NAME,
            identity::DRIVER_VERSION,
            socket.display(),
            args.node_id
        );
        let allowed: Vec<String> = endpoints.allowed().iter().map(|e| e.to_string()).collect();
        tracing::info!(
            "allowed endpoints: {}; unsigned volumes {}",
            if allowed.is_empty() {
                "none (AWS S3 only)".to_string()
            } else {
                allowed.join(", ")
            },
            if endpoints.allows_unsigned() {
                "allowed"
            } else {
                "refused"
            }
        );
        // Repair what the previous run published while already answering kubelet (Probe
        // says "not ready" until the first pass is done), then keep checking.
        let repairing = node.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let node = repairing.clone();
                let Ok(report) = tokio::task::spawn_blocking(move || node.repair()).await else {
                    tracing::error!("the repair pass panicked");
                    break;
                };
                if first || !report.remounted.is_empty() || !report.failed.is_empty() {
                    tracing::info!(
                        "repair pass: {} mounts alive, {} remounted, {} forgotten, {} failed",
                        report.alive.len(),
                        report.remounted.len(),
                        report.forgotten.len(),
                        report.failed.len()
                    );
                }
                first = false;
                tokio::time::sleep(node::REPAIR_INTERVAL).await;
            }
        });
        let result = server::serve(listener, node, server::shutdown_signal()).await;
        let _ = std::fs::remove_file(&socket);
        result
    })?;
    Ok(())
}
