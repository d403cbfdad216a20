//! The read/listing suite that every S3 implementation must pass through a real mount.
//! Each check works under its own key prefix, so checks can share a bucket.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, SeedableRng};

use super::mount::Mount;
use super::pseudo_random;
use super::s3::{Admin, Endpoint};

/// A bucket on some S3 implementation, and a client to change it.
pub struct Target<'a> {
    /// The endpoint.
    pub endpoint: &'a Endpoint,
    /// A client for uploads and deletes.
    pub admin: &'a Admin,
    /// The bucket.
    pub bucket: &'a str,
}

impl Target<'_> {
    /// `s3://bucket/prefix`.
    pub fn source(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Mounts `prefix` with `args`.
    pub fn mount(&self, prefix: &str, args: &[&str]) -> Mount {
        Mount::new(self.endpoint, &self.source(prefix), args)
    }
}

/// Declares one `#[test]` per named check of this suite, each handed to `$run` (a function
/// that runs a `fn(&Target)` on a fresh target):
/// `suite_tests!(run; test_name: check, ...)`.
#[macro_export]
macro_rules! suite_tests {
    ($run:ident; $($test:ident: $check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $test() {
                $run($crate::common::suite::$check);
            }
        )+
    };
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Polls `cond` every 100 ms for at most `limit`; true if it became true.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nested directories, sizes, modes, owners and mtimes as `stat` shows them.
pub fn nested_listing_and_stat(t: &Target) {
    let files = [
        ("nested/models/checkpoints/sd15.safetensors", 300_001usize),
        ("nested/models/checkpoints/sdxl.safetensors", 70_000),
        ("nested/models/loras/style/ink.safetensors", 1234),
        ("nested/models/loras/top.safetensors", 10),
        ("nested/models/vae/vae.safetensors", 4096),
    ];
    let before = SystemTime::now() - Duration::from_secs(120);
    for (i, (key, size)) in files.iter().enumerate() {
        t.admin.put(t.bucket, key, pseudo_random(i as u64, *size));
    }
    let mut mount = t.mount("nested/models", &["--uid", "1234", "--gid", "4321"]);
    assert_eq!(names(&mount.path), ["checkpoints", "loras", "vae"]);
    assert_eq!(names(&mount.join("loras")), ["style", "top.safetensors"]);
    assert_eq!(names(&mount.join("loras/style")), ["ink.safetensors"]);
    for (key, size) in files {
        let rel = key.strip_prefix("nested/models/").expect("prefix");
        let meta = std::fs::metadata(mount.join(rel)).expect("stat file");
        assert!(meta.is_file(), "{rel}");
        assert_eq!(meta.len(), size as u64, "{rel}");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o444, "{rel}");
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
        let mtime = meta.modified().expect("mtime");
        assert!(mtime > before && mtime < SystemTime::now() + Duration::from_secs(120));
    }
    let dir = std::fs::metadata(mount.join("loras")).expect("stat dir");
    assert!(dir.is_dir());
    assert_eq!(dir.permissions().mode() & 0o7777, 0o555);
    assert!(std::fs::metadata(mount.join("missing")).is_err());
    assert!(std::fs::metadata(mount.join("loras/nothing.safetensors")).is_err());
    mount.unmount();
}

/// Byte-exact reads at random offsets and sizes (several threads at once) of `rel` in
/// `mount`, compared with `expected(offset, len)`.
pub fn random_reads(
    mount: &Mount,
    rel: &str,
    size: u64,
    reads_per_thread: usize,
    expected: &(dyn Fn(u64, usize) -> Vec<u8> + Sync),
) {
    let path = mount.join(rel);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let path = &path;
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE + thread);
                let file = std::fs::File::open(path).expect("open");
                let lens = [
                    1usize,
                    7,
                    4095,
                    4096,
                    65536,
                    131_072,
                    (1 << 20) + 3,
                    4 << 20,
                ];
                for i in 0..reads_per_thread {
                    let len = if i % 3 == 0 {
                        rng.gen_range(1..3 << 20)
                    } else {
                        lens[rng.gen_range(0..lens.len())]
                    };
                    let offset = match i % 10 {
                        0 => size.saturating_sub(len as u64 / 2), // straddles the end
                        1 => size - 1,
                        _ => rng.gen_range(0..size),
                    };
                    let mut buf = vec![0u8; len];
                    let mut done = 0;
                    while done < len {
                        let n = file
                            .read_at(&mut buf[done..], offset + done as u64)
                            .unwrap_or_else(|e| panic!("read {len} at {offset}: {e}"));
                        if n == 0 {
                            break;
                        }
                        done += n;
                    }
                    let want_len = (size - offset).min(len as u64) as usize;
                    assert_eq!(done, want_len, "short read of {len} at {offset}");
                    buf.truncate(done);
                    assert!(
                        buf == expected(offset, done),
                        "bytes differ reading {len} at {offset} of {rel}"
                    );
                }
                let mut past_end = [0u8; 16];
                assert_eq!(file.read_at(&mut past_end, size).expect("read at end"), 0);
            });
        }
    });
}

/// Zero-byte objects and legal names with spaces and unicode.
pub fn empty_objects_and_unusual_names(t: &Target) {
    let data = pseudo_random(7, 5000);
    let keys = [
        "names/empty.safetensors",
        "names/with space/my model (v2).safetensors",
        "names/ünïcødé/模型-ß.safetensors",
        "names/.hidden",
        "names/semi;colon&amp=+%.bin",
    ];
    t.admin.put(t.bucket, keys[0], Vec::new());
    for key in &keys[1..] {
        t.admin.put(t.bucket, key, data.clone());
    }
    let mut mount = t.mount("names", &[]);
    assert_eq!(
        names(&mount.path),
        [
            ".hidden",
            "empty.safetensors",
            "semi;colon&amp=+%.bin",
            "with space",
            "ünïcødé"
        ]
    );
    let empty = mount.join("empty.safetensors");
    assert_eq!(std::fs::metadata(&empty).expect("stat").len(), 0);
    assert!(std::fs::read(&empty).expect("read empty").is_empty());
    for key in &keys[1..] {
        let rel = key.strip_prefix("names/").expect("prefix");
        assert_eq!(std::fs::read(mount.join(rel)).expect("read"), data, "{rel}");
    }
    mount.unmount();
}

/// Uploads appear and deletes disappear after the metadata TTL, with no sync job; within
/// the TTL the cached listing is served.
pub fn changes_appear_after_ttl(t: &Target) {
    t.admin
        .put(t.bucket, "ttl/loras/old.safetensors", b"old".to_vec());
    let mut short = t.mount("ttl", &["--metadata-ttl", "1s"]);
    let mut long = t.mount("ttl", &["--metadata-ttl", "1h"]);
    assert_eq!(names(&short.join("loras")), ["old.safetensors"]);
    assert_eq!(names(&long.join("loras")), ["old.safetensors"]);

    t.admin
        .put(t.bucket, "ttl/loras/new.safetensors", b"new!".to_vec());
    t.admin.delete(t.bucket, "ttl/loras/old.safetensors");
    t.admin
        .put(t.bucket, "ttl/controlnet/cn.safetensors", b"cn".to_vec());

    assert!(
        eventually(Duration::from_secs(15), || {
            names(&short.join("loras")) == ["new.safetensors"]
        }),
        "the upload and the delete did not show after the TTL"
    );
    assert_eq!(
        std::fs::read(short.join("loras/new.safetensors")).expect("read new"),
        b"new!"
    );
    assert!(std::fs::metadata(short.join("loras/old.safetensors")).is_err());
    assert!(eventually(Duration::from_secs(15), || {
        short.join("controlnet/cn.safetensors").exists()
    }));
    assert_eq!(
        names(&long.join("loras")),
        ["old.safetensors"],
        "within the TTL the cached listing is served"
    );
    short.unmount();
    long.unmount();
}

/// An object overwritten while open: the open handle errors out (ESTALE or EIO) and never
/// returns bytes of the new version; a new open after the TTL reads the new version.
pub fn overwrite_during_read(t: &Target) {
    let size = 24usize << 20;
    let old = pseudo_random(100, size);
    let new = pseudo_random(200, size);
    t.admin
        .put(t.bucket, "overwrite/model.safetensors", old.clone());
    let mut mount = t.mount("overwrite", &["--metadata-ttl", "1s"]);
    let path = mount.join("model.safetensors");
    let file = std::fs::File::open(&path).expect("open");
    let mut head = vec![0u8; 1 << 20];
    file.read_exact_at(&mut head, 0).expect("read head");
    assert!(head == old[..1 << 20]);

    t.admin
        .put(t.bucket, "overwrite/model.safetensors", new.clone());
    // Far from anything read or read ahead so far: must come from S3, pinned to the old ETag.
    let offset = size - (2 << 20);
    let mut tail = vec![0u8; 1 << 20];
    match file.read_at(&mut tail, offset as u64) {
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::ESTALE) | Some(libc::EIO)),
            "unexpected error {e}"
        ),
        Ok(n) => panic!(
            "read after overwrite returned {n} bytes (old version: {}, new version: {})",
            tail[..n] == old[offset..offset + n],
            tail[..n] == new[offset..offset + n]
        ),
    }
    drop(file);
    assert!(
        eventually(Duration::from_secs(15), || {
            crate::common::pread(&path, offset as u64, 1 << 20)
                .ok()
                .as_deref()
                == Some(&new[offset..offset + (1 << 20)])
        }),
        "a new open did not see the new version"
    );
    mount.unmount();
}

/// Every mutating operation fails with EROFS.
pub fn read_only(t: &Target) {
    t.admin.put(t.bucket, "ro/dir/file.bin", b"data".to_vec());
    let mut mount = t.mount("ro", &[]);
    let file = mount.join("dir/file.bin");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        std::fs::write(mount.join("dir/new.bin"), b"x").map(drop),
        "create",
    );
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map(drop),
        "open for write",
    );
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .map(drop),
        "open for append",
    );
    erofs(std::fs::create_dir(mount.join("newdir")), "mkdir");
    erofs(std::fs::remove_file(&file), "unlink");
    erofs(std::fs::remove_dir(mount.join("dir")), "rmdir");
    erofs(std::fs::rename(&file, mount.join("dir/renamed")), "rename");
    erofs(
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(
        std::os::unix::fs::symlink("x", mount.join("link")),
        "symlink",
    );
    erofs(std::fs::hard_link(&file, mount.join("hard")), "link");
    let c_path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: c_path is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c_path.as_ptr(), 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS),
        "truncate"
    );
    assert_eq!(std::fs::read(&file).expect("still readable"), b"data");
    mount.unmount();
}

/// After unmount: no mount entry, the daemon exited cleanly, the mountpoint is an empty
/// directory again.
pub fn unmount_leaves_nothing(t: &Target) {
    t.admin.put(t.bucket, "unmount/a.bin", b"a".to_vec());
    let mut mount = t.mount("unmount", &[]);
    let path = mount.path.clone();
    assert_eq!(names(&path), ["a.bin"]);
    let status = mount.unmount();
    assert!(status.success(), "daemon exit status {status}");
    assert!(!super::mount::is_mounted(&path));
    assert!(names(&path).is_empty());
}
