//! Warming through volume attributes, over the real socket: NodePublishVolume returns once
//! the files `warm` names are in the node's disk cache (the first read of them sends no GET),
//! or after `warmTimeout` with the download going on behind the published volume.

mod common;

use std::time::{Duration, Instant};

use common::csi::{wait_for, Node, BUCKET, OBJECTS};
use common::kube_api::FakeKubeApi;
use common::s3::LocalServer;
use modelfs_s3local::Shaping;

const MIB: u64 = 1 << 20;

fn cache_args(cache: &tempfile::TempDir) -> Vec<String> {
    vec![
        "--cache-dir".into(),
        cache.path().to_string_lossy().into_owned(),
        "--cache-size".into(),
        "1GiB".into(),
    ]
}

#[test]
fn publish_returns_with_the_warm_files_in_the_disk_cache() {
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let args = cache_args(&cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start_with(&args);
    let target = node.target("pod-w", "models");
    let mut req = node.request("vol-w", &target);
    req.volume_context.insert(
        "warm".into(),
        "checkpoints/*.safetensors, loras/detail.safetensors, missing/*".into(),
    );
    node.s3.server.reset_stats();
    node.publish_ok(req);
    let warmed = node.s3.server.stats();
    assert!(warmed.get_object > 0, "publishing downloaded the files");

    // Everything named is local: reading it sends no GET.
    node.s3.server.reset_stats();
    for (key, seed, len) in OBJECTS.iter().filter(|(key, ..)| !key.starts_with("vae/")) {
        let data = std::fs::read(target.join(key)).expect("read a warm file");
        assert!(data == common::pseudo_random(*seed, *len), "{key} differs");
    }
    assert_eq!(
        node.s3.server.stats().get_object,
        0,
        "the warm files were read from S3"
    );
    let log = node.mounter_log();
    assert!(log.contains("warming 2 files"), "{log}");
    assert!(log.contains("nothing matches \"missing/*\""), "{log}");
    node.unpublish("vol-w", &target).expect("unpublish");
}

#[test]
fn publish_stops_waiting_at_the_timeout_and_warming_goes_on() {
    const LEN: u64 = 48 * MIB;
    // 16 MiB/s for all responses together: warming the model takes about 3 s.
    let s3 = LocalServer::start_configured(BUCKET, |config| {
        config.shaping = Shaping {
            aggregate_bytes_per_sec: Some(16 * MIB),
            ..Shaping::off()
        }
    });
    let model = common::pseudo_random(41, LEN as usize);
    s3.store()
        .put_bytes(BUCKET, "checkpoints/big.safetensors", &model)
        .expect("seed");
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let args = cache_args(&cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start_on(s3, &args, &[], &[]);
    let target = node.target("pod-t", "models");
    let mut req = node.request("vol-t", &target);
    req.volume_context
        .insert("warm".into(), "checkpoints/big.safetensors".into());
    req.volume_context.insert("warmTimeout".into(), "1s".into());
    let started = Instant::now();
    node.publish_ok(req);
    let published = started.elapsed();
    assert!(
        published < Duration::from_millis(2500),
        "publish waited {published:?}, past its 1 s warm timeout"
    );
    assert!(
        node.mounter_log().contains("warming goes on"),
        "{}",
        node.mounter_log()
    );

    // The download finishes behind the published volume; then the model reads locally.
    wait_for("warming to finish", || {
        node.mounter_log().contains("warmed 1 files")
    });
    node.s3.server.reset_stats();
    let data = std::fs::read(target.join("checkpoints/big.safetensors")).expect("read");
    assert!(data == model, "the warmed model differs");
    assert_eq!(
        node.s3.server.stats().get_object,
        0,
        "the model was read from S3"
    );
    node.unpublish("vol-t", &target).expect("unpublish");
}

#[test]
fn a_workflow_from_a_configmap_is_warmed_and_the_pod_hears_about_it() {
    let kube = FakeKubeApi::start();
    let workflow = serde_json::json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "model": ["4", 0]}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": "absent.safetensors"}}
    });
    kube.set_config_map(
        "comfyui",
        "sdxl",
        &[("workflow.json", &workflow.to_string())],
    );
    let config = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.kubeconfig(config.path());
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let args = cache_args(&cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start_configured(&args, &[], &[("KUBECONFIG", &kubeconfig.to_string_lossy())]);
    let target = node.target("pod-f", "models");
    let mut req = node.request("vol-f", &target);
    for (key, value) in [
        ("warmWorkflow", "sdxl"),
        ("csi.storage.k8s.io/pod.namespace", "comfyui"),
        ("csi.storage.k8s.io/pod.name", "comfyui-0"),
        ("csi.storage.k8s.io/pod.uid", "uid-0"),
    ] {
        req.volume_context.insert(key.into(), value.into());
    }

    // A ConfigMap that is not there: the pod is told which.
    let mut missing = req.clone();
    missing
        .volume_context
        .insert("warmWorkflow".into(), "other/flow.json".into());
    let status = node.publish(missing).expect_err("no such ConfigMap");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("comfyui/other"), "{status:?}");

    node.publish_ok(req);
    node.s3.server.reset_stats();
    for key in ["checkpoints/sdxl.safetensors", "loras/detail.safetensors"] {
        std::fs::read(target.join(key)).expect("read a workflow model");
    }
    assert_eq!(
        node.s3.server.stats().get_object,
        0,
        "the workflow's models were read from S3"
    );
    assert!(node
        .mounter_log()
        .contains("absent.safetensors is not in the bucket"));

    let events = kube.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["involvedObject"]["name"], "comfyui-0");
    assert_eq!(event["involvedObject"]["uid"], "uid-0");
    assert_eq!(event["reason"], "ModelsWarm");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("warmed 2 files"), "{message}");
    node.unpublish("vol-f", &target).expect("unpublish");
}
