//! End-to-end: the same read/listing suite through a real FUSE mount against moto's S3
//! server, an independent implementation, to catch dialect differences.

mod common;

use common::moto::MotoServer;
use common::s3::Admin;
use common::suite::{self, Target};

const BUCKET: &str = "models";

fn with_target(check: impl FnOnce(&Target)) {
    let server = MotoServer::start();
    let admin = Admin::new(&server.endpoint);
    admin.create_bucket(BUCKET);
    let target = Target {
        endpoint: &server.endpoint,
        admin: &admin,
        bucket: BUCKET,
    };
    check(&target);
}

crate::suite_tests!(with_target;
    moto_nested_listing_and_stat: nested_listing_and_stat,
    moto_empty_objects_and_unusual_names: empty_objects_and_unusual_names,
    moto_changes_appear_after_ttl: changes_appear_after_ttl,
    moto_overwrite_during_read_errors_never_mixes: overwrite_during_read,
    moto_mutations_are_read_only: read_only,
    moto_unmount_leaves_nothing: unmount_leaves_nothing,
);

#[test]
fn moto_random_reads_are_byte_exact() {
    with_target(|t| {
        let size = 40usize << 20;
        let data = common::pseudo_random(9, size);
        t.admin.put(t.bucket, "big/model.safetensors", data.clone());
        let mut mount = t.mount("big", &[]);
        suite::random_reads(&mount, "model.safetensors", size as u64, 25, &|off, len| {
            data[off as usize..off as usize + len].to_vec()
        });
        mount.unmount();
    });
}
