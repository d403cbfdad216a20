//! Every manifest under `deploy/` validated offline, through `deploy/validate.py`: built-in
//! kinds against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are
//! errors), Karpenter objects against the Karpenter v1 CRD schemas committed in
//! `deploy/karpenter/schema/` plus the CRDs' rules, kustomizations against their files. Also:
//! the validator really rejects broken manifests, the committed schemas still match the CRDs
//! (when `../shared/spec` is present), and the driver accepts the volumes and flags the
//! manifests use.
//!
//! The Python tools come from `scripts/setup.sh --with-tests`; without them these tests fail
//! and say so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use modelfs_csi::volume_context::MountSpec;

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
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Sub::Csi(args) = cli.command;
    assert_eq!(args.endpoint, "unix:///csi/csi.sock");
    assert_eq!(args.node_id, "ip-10-0-0-1.ec2.internal");
    assert_eq!(args.kubelet_dir, Path::new("/var/lib/kubelet/pods"));
    assert_eq!(
        args.cache_dir.as_deref(),
        Some(Path::new("/mnt/k8s-disks/0/modelfs-cache"))
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
        "PID 1 must reap the mount daemons"
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
