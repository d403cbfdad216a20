//! Every manifest under `deploy/` validated offline, through `deploy/validate.py`: built-in
//! kinds against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are
//! errors), Karpenter objects against the Karpenter v1 CRD schemas committed in
//! `deploy/karpenter/schema/` plus the CRDs' rules, kustomizations against their files. Also:
//! the validator really rejects broken manifests, the committed schemas still match the CRDs
//! (when `../shared/spec` is present), the driver accepts the volumes and flags the
//! manifests use, and the two node DaemonSets fit together: the plugin (`modelfs csi`, rolled
//! out freely) hands every mount to the mounter (`modelfs mounter`, `OnDelete`) over one
//! socket on the host, and the mounter alone holds the disk cache.
//!
//! The Python tools come from `scripts/setup.sh --with-tests`; without them these tests fail
//! and say so.

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
        "PersistentVolume",
        "PersistentVolumeClaim",
        "Pod",
        "NodePool",
        "EC2NodeClass",
        "Deployment",
        "Service",
        "Kustomization",
    ] {
        assert!(text.contains(&format!(" {kind}/")), "no {kind} was checked");
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

/// One node DaemonSet of the driver, and its container that runs `modelfs COMMAND`.
struct NodeDaemonSet {
    file: String,
    daemonset: Value,
    container: Value,
}

impl NodeDaemonSet {
    /// The DaemonSet under deploy/kubernetes/ whose container runs `modelfs COMMAND`; exactly
    /// one.
    fn find(command: &str) -> Self {
        let mut found = Vec::new();
        for (file, object) in objects() {
            if !file.starts_with("deploy/kubernetes/") || object["kind"] != "DaemonSet" {
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
            "exactly one DaemonSet container under deploy/kubernetes runs `modelfs {command}`"
        );
        found.pop().unwrap()
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
fn the_plugin_hands_mounts_to_the_mounter_over_one_socket() {
    let plugin = NodeDaemonSet::find("csi");
    let mounter = NodeDaemonSet::find("mounter");
    assert_ne!(
        plugin.daemonset["metadata"]["name"], mounter.daemonset["metadata"]["name"],
        "the mounter is a DaemonSet of its own, not a container of the plugin's pod"
    );
    let from_plugin = socket_on_host(&plugin, "mounter-socket");
    let from_mounter = socket_on_host(&mounter, "socket");
    assert_eq!(
        from_plugin, from_mounter,
        "the plugin and the mounter must reach the same socket on the host"
    );
    // The socket's directory is the same hostPath volume in both pods, created by whichever
    // starts first.
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

#[test]
fn the_mounter_is_replaced_only_on_delete_and_the_plugin_rolls_freely() {
    let plugin = NodeDaemonSet::find("csi");
    let mounter = NodeDaemonSet::find("mounter");
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

#[test]
fn the_mounter_alone_holds_the_cache_within_its_memory_limit() {
    let plugin = NodeDaemonSet::find("csi");
    let mounter = NodeDaemonSet::find("mounter");
    for flag in ["cache-dir", "cache-size", "memory-cache-size"] {
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
    assert_eq!(
        on_host,
        Path::new("/mnt/k8s-disks/0/modelfs-cache"),
        "the instance store"
    );
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
    // The metrics address's port is exposed.
    let metrics = mounter.flag("metrics-addr").expect("--metrics-addr");
    let port: u64 = metrics.rsplit(':').next().unwrap().parse().expect("a port");
    assert!(
        mounter.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["containerPort"] == port),
        "{}: metrics port {port} is not exposed",
        mounter.file
    );
}

#[test]
fn both_daemonsets_run_the_same_image_on_the_same_nodes() {
    let plugin = NodeDaemonSet::find("csi");
    let mounter = NodeDaemonSet::find("mounter");
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

#[test]
fn the_mounter_takes_the_flags_in_its_manifest() {
    // Clap stops at the first unknown flag or bad value, before it prints the help; the help
    // thus comes only when every flag before it is fine.
    let mounter = NodeDaemonSet::find("mounter");
    let binary = env!("CARGO_BIN_EXE_modelfs");
    let probe = Command::new(binary)
        .args(["mounter", "--help"])
        .output()
        .expect("run modelfs");
    if !probe.status.success() {
        println!(
            "skipped: this modelfs has no `mounter` command yet ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return;
    }
    let output = Command::new(binary)
        .args(mounter.args())
        .arg("--help")
        .output()
        .expect("run modelfs");
    assert!(
        output.status.success(),
        "{}: modelfs refuses {:?}: {}",
        mounter.file,
        mounter.args(),
        report(&output)
    );
}

#[test]
fn the_csidriver_asks_kubelet_to_republish() {
    let (file, driver) = objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "CSIDriver")
        .expect("a CSIDriver");
    assert_eq!(
        driver["spec"]["requiresRepublish"], true,
        "{file}: the plugin repairs dead mounts when kubelet republishes"
    );
}

#[test]
fn the_dockerfile_builds_the_binary_onto_an_image_with_fuse3() {
    let path = repo().join("deploy/kubernetes/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read the Dockerfile");
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(stages, 2, "a build stage and a runtime stage");
    assert!(text.contains("cargo build --release --locked --bin modelfs"));
    assert!(
        text.contains("fuse3"),
        "the runtime image needs fusermount3"
    );
    assert!(
        text.contains("ENTRYPOINT [\"/usr/bin/tini\""),
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
