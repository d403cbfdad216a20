//! End-to-end: the read/listing suite through a real FUSE mount against the project's own
//! S3 server (s3s over a file store), plus what only that server lets us set up: a 1 GiB
//! object and keys that cannot be file names.

mod common;

use common::s3::{Admin, LocalServer};
use common::suite::{self, Target};

const BUCKET: &str = "models";

fn with_target(check: impl FnOnce(&Target, &LocalServer)) {
    let server = LocalServer::start(BUCKET);
    let admin = Admin::new(&server.endpoint);
    let target = Target {
        endpoint: &server.endpoint,
        admin: &admin,
        bucket: BUCKET,
    };
    check(&target, &server);
}

/// Runs a check of the shared suite against a fresh server.
fn run_check(check: fn(&Target)) {
    with_target(|t, _| check(t));
}

crate::suite_tests!(run_check;
    nested_listing_and_stat: nested_listing_and_stat,
    empty_objects_and_unusual_names: empty_objects_and_unusual_names,
    changes_appear_after_ttl: changes_appear_after_ttl,
    overwrite_during_read_errors_never_mixes: overwrite_during_read,
    mutations_are_read_only: read_only,
    unmount_leaves_nothing: unmount_leaves_nothing,
);

#[test]
fn random_reads_over_a_1gib_object_are_byte_exact() {
    with_target(|t, server| {
        let size: u64 = 1 << 30;
        let key = "big/checkpoints/huge.safetensors";
        server
            .store()
            .put_from_reader(BUCKET, key, common::PseudoRandomReader::new(42, size))
            .expect("seed 1 GiB object");
        let source = server.store().data_path(BUCKET, key).expect("source file");
        let mut mount = t.mount("big", &[]);
        suite::random_reads(
            &mount,
            "checkpoints/huge.safetensors",
            size,
            60,
            &|off, len| common::pread(&source, off, len).expect("read source"),
        );
        mount.unmount();
    });
}

#[test]
fn keys_that_cannot_be_names_are_skipped_not_escaped() {
    with_target(|t, server| {
        let store = server.store();
        let long = format!("odd/{}.bin", "n".repeat(300));
        for key in [
            "odd/fine.bin",
            "odd/a//b.bin",
            "odd/../escape.bin",
            "odd/./dot.bin",
            "odd/sub/..",
            "odd/sub/ok.bin",
            long.as_str(),
            "odd/both",
            "odd/both/inner.bin",
        ] {
            store.put_bytes(BUCKET, key, b"x").expect("seed");
        }
        let mut mount = t.mount("odd", &[]);
        let mut names: Vec<String> = std::fs::read_dir(&mount.path)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "both", "fine.bin", "sub"]);
        assert!(
            mount.join("both").is_dir(),
            "directory wins over the object"
        );
        assert!(mount.join("both/inner.bin").is_file());
        assert_eq!(std::fs::read_dir(mount.join("a")).expect("a").count(), 0);
        let sub: Vec<_> = std::fs::read_dir(mount.join("sub"))
            .expect("sub")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(sub, ["ok.bin"]);
        let log = mount.log_text();
        for skipped in ["odd/a//", "odd/../", "odd/./", "odd/sub/..", "odd/both"] {
            assert_eq!(
                log.matches("skipping S3 key")
                    .zip(log.split("skipping S3 key").skip(1))
                    .filter(|(_, rest)| rest.lines().next().unwrap_or("").contains(skipped))
                    .count(),
                1,
                "one warning for {skipped}\n{log}"
            );
        }
        mount.unmount();
    });
}
