//! Tenancy through real mounts: bytes in the node's shared cache reach only volumes whose own
//! credentials may read them. The local S3 server has two read-only users: one may read the
//! whole bucket, the other only `loras/`.

mod common;

use common::mount::Mount;
use common::s3::LocalServer;
use modelfs_s3local::ReadOnlyUser;

const BUCKET: &str = "models";
const CHECKPOINT: &str = "checkpoints/base.safetensors";
const LORA: &str = "loras/style.safetensors";

fn reader(name: &str, prefix: &str) -> ReadOnlyUser {
    ReadOnlyUser {
        access_key: name.to_string(),
        secret_key: format!("{name}-secret"),
        read_prefixes: vec![prefix.to_string()],
    }
}

#[test]
fn refused_credentials_get_eacces_even_when_the_bytes_are_cached() {
    let (allowed, refused) = (reader("alice", ""), reader("bob", "loras/"));
    let s3 = LocalServer::start_with_readers(BUCKET, vec![allowed.clone(), refused.clone()]);
    let checkpoint = common::pseudo_random(31, 8 << 20);
    let lora = common::pseudo_random(32, 1 << 20);
    s3.store()
        .put_bytes(BUCKET, CHECKPOINT, &checkpoint)
        .expect("seed");
    s3.store().put_bytes(BUCKET, LORA, &lora).expect("seed");
    let cache = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("cache dir");
    let cache_arg = cache.path().to_string_lossy().into_owned();
    let args = ["--cache-dir", cache_arg.as_str(), "--cache-size", "1GiB"];
    let source = format!("s3://{BUCKET}");

    // The allowed user loads the checkpoint: it is now in the shared disk cache.
    let mut first = Mount::new(&s3.endpoint_as(&allowed), &source, &args);
    assert!(std::fs::read(first.join(CHECKPOINT)).expect("allowed read") == checkpoint);
    first.unmount();

    // The refused user shares the cache: it may list, but opening the checkpoint is EACCES
    // and not one cached byte reaches it; its own prefix reads normally.
    let denied = Mount::new(&s3.endpoint_as(&refused), &source, &args);
    let names: Vec<String> = std::fs::read_dir(denied.join("checkpoints"))
        .expect("listing is allowed")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["base.safetensors"]);
    s3.server.reset_stats();
    let err = std::fs::File::open(denied.join(CHECKPOINT)).expect_err("the open must be refused");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert_eq!(s3.server.stats().get_object, 0, "no GET for a refused open");
    assert!(std::fs::read(denied.join(LORA)).expect("own prefix") == lora);

    // The allowed user, mounted again, is served from the cache as before.
    let again = Mount::new(&s3.endpoint_as(&allowed), &source, &args);
    assert!(std::fs::read(again.join(CHECKPOINT)).expect("allowed read") == checkpoint);
}
