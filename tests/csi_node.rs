//! The CSI node plugin end to end: a real `modelfs csi` process on a Unix socket, driven the
//! way kubelet drives it (gRPC over the socket, the generated CSI client), handing real FUSE
//! mounts at kubelet-style target paths to a real `modelfs mounter` that serves them from a
//! real local S3 endpoint (see `common::csi`).

mod common;

use std::path::Path;

use common::csi::{code, is_stale, modelfs_processes, mount_count, wait_for, Node, NODE_ID};
use common::mount::is_mounted;
use modelfs_csi::proto::volume_capability::{AccessType, BlockVolume};
use modelfs_csi::proto::{self, node_service_capability};
use tonic::Code;

/// Processes running `modelfs mount` below `dir`: the plugin must start none.
fn mount_processes(dir: &Path) -> usize {
    modelfs_processes("mount", dir).len()
}

#[test]
fn identity_reports_name_version_capabilities_and_readiness() {
    let node = Node::start();
    let mut identity = node.identity();
    let info = node.call(
        "GetPluginInfo",
        identity.get_plugin_info(proto::GetPluginInfoRequest {}),
    );
    assert_eq!(info.name, "s3.modelfs.io");
    let chars: Vec<char> = info.name.chars().collect();
    assert!(chars.len() <= 63 && chars[0].is_ascii_alphabetic());
    assert!(chars[chars.len() - 1].is_ascii_alphabetic());
    assert!(chars
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(*c)));
    assert!(!info.vendor_version.is_empty());

    let caps = node.call(
        "GetPluginCapabilities",
        identity.get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {}),
    );
    // Node-only: no controller service advertised.
    assert!(caps.capabilities.iter().all(|c| !matches!(
        c.r#type,
        Some(proto::plugin_capability::Type::Service(ref s))
            if s.r#type == proto::plugin_capability::service::Type::ControllerService as i32
    )));

    wait_for("Probe to report ready", || {
        node.call("Probe", identity.probe(proto::ProbeRequest {}))
            .ready
            .unwrap_or(true)
    });
}

#[test]
fn node_reports_its_id_and_no_stage_capability() {
    let node = Node::start();
    let mut client = node.node();
    let info = node.call(
        "NodeGetInfo",
        client.node_get_info(proto::NodeGetInfoRequest {}),
    );
    assert_eq!(info.node_id, NODE_ID);
    assert!(info.accessible_topology.is_none());
    let caps = node.call(
        "NodeGetCapabilities",
        client.node_get_capabilities(proto::NodeGetCapabilitiesRequest {}),
    );
    let stage = node_service_capability::rpc::Type::StageUnstageVolume as i32;
    assert!(!caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(node_service_capability::Type::Rpc(ref r)) if r.r#type == stage
    )));
}

#[test]
fn missing_required_fields_are_invalid_argument() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let good = node.request("vol-1", &target);

    let mut req = good.clone();
    req.volume_id.clear();
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);
    let mut req = good.clone();
    req.target_path.clear();
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);
    let mut req = good.clone();
    req.volume_capability = None;
    assert_eq!(code(node.publish(req)), Code::InvalidArgument);

    assert_eq!(code(node.unpublish("", &target)), Code::InvalidArgument);
    assert_eq!(
        code(node.unpublish("vol-1", Path::new(""))),
        Code::InvalidArgument
    );
    assert!(!target.exists(), "no target is created for a bad request");
    assert!(!is_mounted(&target));
}

#[test]
fn bad_attributes_mount_options_and_targets_are_rejected() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let good = node.request("vol-1", &target);
    let mut cases: Vec<(&str, proto::NodePublishVolumeRequest, &str)> = Vec::new();

    let mut req = good.clone();
    req.volume_context.insert("bukket".into(), "models".into());
    cases.push(("unknown attribute", req, "bukket"));
    let mut req = good.clone();
    req.volume_context
        .insert("bucket".into(), "Not_A_Bucket".into());
    cases.push(("malformed bucket", req, "bucket"));
    let mut req = good.clone();
    req.volume_context.remove("bucket");
    cases.push(("missing bucket", req, "bucket"));
    let mut req = good.clone();
    req.volume_context
        .insert("forcePathStyle".into(), "maybe".into());
    cases.push(("malformed boolean", req, "forcePathStyle"));
    let mut req = good.clone();
    req.volume_context
        .insert("metadataTtl".into(), "forever".into());
    cases.push(("malformed ttl", req, "metadataTtl"));
    let mut req = good.clone();
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.mount_flags.push("rw".into());
    }
    cases.push(("unsupported mount option", req, "rw"));
    let mut req = good.clone();
    if let Some(cap) = req.volume_capability.as_mut() {
        cap.access_type = Some(AccessType::Block(BlockVolume {}));
    }
    cases.push(("block access", req, "block"));
    let mut req = good.clone();
    req.target_path = node
        .root
        .path()
        .join("elsewhere/mount")
        .to_string_lossy()
        .into_owned();
    cases.push(("target outside the kubelet dir", req, "kubelet directory"));
    let mut req = good.clone();
    req.target_path = format!("{}/pod-a/../../escape/mount", node.pods().display());
    cases.push(("target with ..", req, ".."));

    for (name, req, mention) in cases {
        let status = node.publish(req).expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(mention),
            "{name}: {:?} should mention {mention:?}",
            status.message()
        );
    }
    assert!(!target.exists());
    assert!(node.mounter_log().matches("serving s3://").count() == 0);

    let outside = node.root.path().join("elsewhere/mount");
    assert_eq!(
        code(node.unpublish("vol-1", &outside)),
        Code::InvalidArgument
    );
}

#[test]
fn publish_serves_s3_data_idempotently_at_each_target_and_unpublish_cleans_up() {
    let node = Node::start();
    let a = node.target("pod-a", "models");
    let b = node.target("pod-b", "models");

    // Same volume, same target, twice: OK, one mount, served by the node's mounter.
    node.publish_ok(node.request("vol-1", &a));
    node.publish_ok(node.request("vol-1", &a));
    assert_eq!(mount_count(&a), 1);
    assert_eq!(node.mounter_log().matches("serving s3://").count(), 1);
    assert_eq!(mount_processes(node.root.path()), 0);
    node.assert_serves(&a, "");
    let meta = std::fs::metadata(a.join("vae/readme.txt")).expect("stat");
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), 1000, "mount option uid=1000 applied");
        assert_eq!(meta.mode() & 0o222, 0, "read-only modes");
    }
    let write = std::fs::write(a.join("new-file"), b"x");
    assert!(write.is_err(), "the volume must be read-only");

    // Same volume at a second target: a second mount.
    let mut req = node.request("vol-1", &b);
    req.volume_context
        .insert("prefix".into(), "checkpoints".into());
    node.publish_ok(req);
    assert_eq!(mount_count(&b), 1);
    assert_eq!(node.mounter_log().matches("serving s3://").count(), 2);
    node.assert_serves(&b, "checkpoints/");
    assert!(!b.join("loras").exists(), "the prefix is the volume's root");

    // Different arguments at a mounted target: ALREADY_EXISTS, nothing changes.
    let mut other = node.request("vol-1", &a);
    other.volume_context.insert("prefix".into(), "loras".into());
    assert_eq!(code(node.publish(other)), Code::AlreadyExists);
    assert_eq!(
        code(node.publish(node.request("vol-2", &a))),
        Code::AlreadyExists
    );
    assert_eq!(mount_count(&a), 1);
    node.assert_serves(&a, "");

    // Unpublish twice: OK both times; the target is gone and the mounter ends its session.
    node.unpublish("vol-1", &a).expect("unpublish");
    assert!(!is_mounted(&a));
    assert!(!a.exists(), "the plugin removes the target directory");
    node.unpublish("vol-1", &a).expect("unpublish again");
    let ended = format!("unmounted {}", a.display());
    wait_for(
        "the mounter to end the unpublished volume's session",
        || node.mounter_log().contains(&ended),
    );
    // The other target is untouched.
    node.assert_serves(&b, "checkpoints/");
    node.unpublish("vol-1", &b).expect("unpublish b");
    assert!(!b.exists());
    // Unpublishing a target that never existed is OK too.
    node.unpublish("vol-9", &node.target("pod-z", "models"))
        .expect("unpublish of an unknown target");
}

#[test]
fn an_inline_volume_may_not_read_with_the_drivers_credentials() {
    let node = Node::start();
    let target = node.target("pod-e", "models");
    let mut req = node.request("csi-5f3d0c1e", &target);
    req.volume_context
        .insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    let status = node
        .publish(req.clone())
        .expect_err("driver credentials for an inline volume");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("authenticationSource"),
        "{status:?}"
    );
    // Without the attribute it is a pod volume, and kubelet sent no token for it.
    req.volume_context.remove("authenticationSource");
    let status = node.publish(req).expect_err("no token");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("tokenRequests"), "{status:?}");
    assert!(!target.exists());
}

/// A mount that fails on the node's side is a summary for kubelet (the volume, its bucket,
/// where to look), never what the endpoint or the network said; that goes to the plugin's
/// log with the volume id.
#[test]
fn missing_bucket_fails_publish_with_a_summary_and_leaves_nothing() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let mut req = node.request("vol-1", &target);
    req.volume_context
        .insert("bucket".into(), "no-such-bucket".into());
    let status = node.publish(req).expect_err("publish of a missing bucket");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let message = status.message();
    assert!(message.contains("vol-1"), "{message:?}");
    assert!(message.contains("no-such-bucket"), "{message:?}");
    assert!(message.contains("plugin log"), "{message:?}");
    let endpoint = node.s3.endpoint.url.trim_start_matches("http://");
    assert!(
        !message.contains(endpoint),
        "{message:?} names the endpoint"
    );
    assert!(
        !message.contains("does not exist"),
        "{message:?} has the details"
    );
    let log = node.driver_log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("vol-1") && l.contains("does not exist")),
        "the plugin log has the details:\n{log}"
    );
    assert!(!is_mounted(&target));
    assert!(!target.exists());
}

/// Only the endpoint the plugin lists (`--allowed-endpoints`, the local S3 server here) may
/// be named; the refusal comes before anything is mounted or any request is sent, and says
/// nothing about the network. Loopback addresses only, so that even a wrong acceptance sends
/// nothing off the machine (the metadata and link-local cases are `endpoint_policy` unit tests).
#[test]
fn endpoints_not_allowed_by_the_plugin_are_refused_and_nothing_is_mounted() {
    let node = Node::start();
    let target = node.target("pod-a", "models");
    let listed = node.s3.endpoint.url.clone();
    let port = listed.rsplit(':').next().expect("a port").to_string();
    let cases = [
        ("another loopback address", "http://127.0.0.2:9".to_string()),
        (
            "https to a host not listed",
            "https://127.0.0.3".to_string(),
        ),
        (
            "the listed host on another port",
            "http://127.0.0.1:9".to_string(),
        ),
        (
            "the listed endpoint over https",
            format!("https://127.0.0.1:{port}"),
        ),
        (
            "the listed address written in hex",
            format!("http://0x7f.1:{port}"),
        ),
    ];
    for (name, url) in cases {
        let mut req = node.request("vol-1", &target);
        req.volume_context.insert("endpointUrl".into(), url.clone());
        let status = node.publish(req).expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains("endpointUrl"),
            "{name}: {:?} should name the attribute",
            status.message()
        );
    }
    let mut req = node.request("vol-1", &target);
    req.volume_context
        .insert("noSignRequest".into(), "true".into());
    let status = node.publish(req).expect_err("unsigned");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("noSignRequest"), "{status:?}");

    assert!(
        !target.exists(),
        "no target is created for a refused volume"
    );
    assert!(!is_mounted(&target));
    assert_eq!(node.mounter_log().matches("serving s3://").count(), 0);
    // The listed endpoint, as written in the fixture or with a trailing slash, works.
    let mut req = node.request("vol-1", &target);
    req.volume_context
        .insert("endpointUrl".into(), format!("{listed}/"));
    node.publish_ok(req);
    node.assert_serves(&target, "");
    node.unpublish("vol-1", &target).expect("unpublish");
}

#[test]
fn stale_mount_is_replaced_on_publish_and_removed_on_unpublish() {
    let mut node = Node::start();
    let target = node.target("pod-a", "models");
    node.publish_ok(node.request("vol-1", &target));
    node.assert_serves(&target, "");

    // The mounter dies (OOM kill, crash) and is restarted: the mount goes stale until
    // kubelet's republish (or the plugin's own repair pass) replaces it.
    node.kill_mounter();
    wait_for("the mount to go stale", || is_stale(&target));
    node.start_mounter();
    node.publish_ok(node.request("vol-1", &target));
    assert_eq!(mount_count(&target), 1);
    node.assert_serves(&target, "");

    // Stale again, then unpublished: cleaned up all the same.
    node.kill_mounter();
    wait_for("the mount to go stale", || is_stale(&target));
    node.unpublish("vol-1", &target).expect("unpublish stale");
    assert!(!is_mounted(&target));
    assert!(!target.exists());
}

#[test]
fn volumes_on_a_node_share_the_mounters_disk_cache() {
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    // An explicit limit: the default (keep 10% of the disk free) depends on the machine.
    let node = Node::start_with(&[&cache_arg, "--cache-size=1GiB"]);
    let a = node.target("pod-a", "models");
    let b = node.target("pod-b", "models");
    node.publish_ok(node.request("vol-1", &a));
    let mut req = node.request("vol-2", &b);
    req.volume_context
        .insert("prefix".into(), "checkpoints".into());
    node.publish_ok(req);
    // One process serves both.
    assert_eq!(node.mounter_pids().len(), 1);
    assert_eq!(mount_processes(node.root.path()), 0);
    // The same object read through both volumes, and the cache was filled.
    node.assert_serves(&a, "");
    node.assert_serves(&b, "checkpoints/");
    let filled = walk_size(cache.path());
    assert!(filled > 0, "nothing was written to the shared cache");
    node.unpublish("vol-1", &a).expect("unpublish a");
    node.unpublish("vol-2", &b).expect("unpublish b");
}

/// Bytes in regular files below `dir`.
fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += walk_size(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}
