//! End-to-end tests of the read patterns model loaders use, through real mounts against the
//! local S3 server: every byte compared with the source, bytes counted at the server.

mod common;

use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mount::Mount;
use common::s3::LocalServer;
use common::suite::eventually;
use modelfs_s3local::models::{parse_safetensors_header, Header, TensorInfo};
use rand::seq::SliceRandom;
use rand::SeedableRng;

const BUCKET: &str = "models";
const MIB: u64 = 1 << 20;

fn seed_model(server: &LocalServer, key: &str, data_bytes: u64, seed: u64) -> (PathBuf, Header) {
    let source = server.seed_safetensors(key, data_bytes, seed);
    let bytes = std::fs::read(&source).expect("read source");
    let header = parse_safetensors_header(&bytes).expect("valid header");
    (source, header)
}

/// The path in the mount of the `i`th LoRA of a folder seeded by `seed_loras`.
fn lora(i: u64) -> String {
    format!("loras/l{i:02}.safetensors")
}

/// Seeds `files` models of `data_bytes` each as `lora(0..files)`, from seeds `first_seed..`.
fn seed_loras(server: &LocalServer, files: u64, data_bytes: u64, first_seed: u64) {
    for i in 0..files {
        seed_model(
            server,
            &format!("m/{}", lora(i)),
            data_bytes,
            first_seed + i,
        );
    }
}

/// Where tensor `t` of `header` lies in the file.
fn file_range(header: &Header, t: &TensorInfo) -> Range<u64> {
    header.data_start + t.data_offsets.0..header.data_start + t.data_offsets.1
}

fn mount(server: &LocalServer, cache: Option<&Path>) -> Mount {
    match cache {
        Some(dir) => common::mount::mount_with_cache(&server.endpoint, dir, "4GiB", &[]),
        None => Mount::new(&server.endpoint, "s3://models/m", &[]),
    }
}

#[test]
fn a_header_scan_downloads_only_headers_and_one_block_per_file() {
    let server = LocalServer::start(BUCKET);
    let files = 40;
    seed_loras(&server, files, 6 * MIB, 0);
    for cache in [None, Some(tempfile::tempdir().expect("cache"))] {
        server.server.reset_stats();
        let mut m = mount(&server, cache.as_ref().map(|d| d.path()));
        for i in 0..files {
            assert!(common::scan_header(&m.join(&lora(i))) > 1);
        }
        // Let anything that might have been started in the background run.
        std::thread::sleep(Duration::from_millis(500));
        let stats = server.server.stats();
        assert!(
            stats.bytes_sent <= files * MIB,
            "a header scan of {files} files pulled {} bytes",
            stats.bytes_sent
        );
        server.server.reset_stats();
        for i in 0..files {
            common::scan_header(&m.join(&lora(i)));
        }
        server.assert_no_gets("repeat scans need no GET");
        m.unmount();
    }
}

#[test]
fn a_folder_being_scanned_has_its_other_headers_learned_in_the_background() {
    let server = LocalServer::start(BUCKET);
    let files = 24;
    seed_loras(&server, files, 3 * MIB, 40);
    seed_model(&server, "m/vae/alone.safetensors", 3 * MIB, 99);
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    // One header in a folder is not a scan: nothing else is fetched.
    common::scan_header(&m.join("vae/alone.safetensors"));
    std::thread::sleep(Duration::from_millis(300));
    let after_one = server.server.stats().get_object;
    assert!(after_one <= 2, "one header cost {after_one} GETs");
    // The second header in one folder is: the other files' headers arrive unasked.
    server.server.reset_stats();
    common::scan_header(&m.join(&lora(0)));
    common::scan_header(&m.join(&lora(1)));
    assert!(
        server.gets_settle(files),
        "headers of the folder were not prefetched ({} GETs)",
        server.server.stats().get_object
    );
    let stats = server.server.stats();
    assert!(
        stats.bytes_sent <= files * MIB,
        "the prefetch pulled {} bytes for {files} files",
        stats.bytes_sent
    );
    server.server.reset_stats();
    for i in 0..files {
        assert!(common::scan_header(&m.join(&lora(i))) > 1);
    }
    server.assert_no_gets("the rest of the scan is served from memory");
    m.unmount();
}

#[test]
fn two_models_opened_from_a_big_folder_learn_a_bounded_number_of_headers_ahead() {
    let server = LocalServer::start(BUCKET);
    let files = 80;
    seed_loras(&server, files, 2 * MIB, 200);
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    common::scan_header(&m.join(&lora(10)));
    common::scan_header(&m.join(&lora(11)));
    assert!(server.gets_settle(0), "GETs went on");
    // Two GETs per header (the probe, then the rest of block 0): the two opened, and the 32
    // files after the second at most; never the other 46 of the folder.
    let gets = server.server.stats().get_object;
    assert!(
        (2 * 4..=2 * (2 + 32)).contains(&gets),
        "{gets} GETs for two opened models"
    );
    m.unmount();
}

#[test]
fn threaded_2mib_preads_in_shuffled_tensor_order_are_byte_exact() {
    let server = LocalServer::start(BUCKET);
    let (source, header) = seed_model(&server, "m/checkpoints/c.safetensors", 96 * MIB, 77);
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    let path = m.join("checkpoints/c.safetensors");
    let mut tensors = header.tensors.clone();
    tensors.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3));
    // ComfyUI's dynamic-VRAM loader: each tensor split into 2 MiB preads over 8 threads.
    let mut jobs = Vec::new();
    for t in &tensors {
        let Range {
            start: mut off,
            end,
        } = file_range(&header, t);
        while off < end {
            let len = (end - off).min(2 * MIB);
            jobs.push((off, len as usize));
            off += len;
        }
    }
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open");
                let src = std::fs::File::open(&source).expect("open source");
                loop {
                    let Some((off, len)) = jobs.lock().expect("jobs").next() else {
                        break;
                    };
                    let mut got = vec![0u8; len];
                    let mut want = vec![0u8; len];
                    file.read_exact_at(&mut got, off).expect("pread");
                    src.read_exact_at(&mut want, off).expect("source pread");
                    assert!(got == want, "bytes differ at {off}+{len}");
                }
            });
        }
    });
    m.unmount();
}

#[test]
fn mmap_loads_in_name_order_shared_and_private_are_byte_exact() {
    let server = LocalServer::start(BUCKET);
    let (source, header) = seed_model(&server, "m/vae/v.safetensors", 48 * MIB, 5);
    let want = std::fs::read(&source).expect("source");
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    let mut by_name = header.tensors.clone();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for shared in [true, false] {
        let file = std::fs::File::open(m.join("vae/v.safetensors")).expect("open");
        // SAFETY: the mapping is read-only and the file is not modified while mapped.
        let map = unsafe {
            if shared {
                memmap2::MmapOptions::new().map(&file)
            } else {
                memmap2::MmapOptions::new().map_copy_read_only(&file)
            }
        }
        .expect("mmap");
        assert_eq!(map.len(), want.len());
        for t in &by_name {
            let range = file_range(&header, t);
            let (b, e) = (range.start as usize, range.end as usize);
            assert!(
                map[b..e] == want[b..e],
                "tensor {} differs (shared={shared})",
                t.name
            );
        }
    }
    m.unmount();
}

#[test]
fn o_direct_reads_are_byte_exact() {
    let server = LocalServer::start(BUCKET);
    let (source, _) = seed_model(&server, "m/checkpoints/d.safetensors", 12 * MIB, 9);
    let want = std::fs::read(&source).expect("source");
    let mut m = mount(&server, None);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("checkpoints/d.safetensors"))
        .expect("open O_DIRECT");
    // O_DIRECT wants aligned buffers: take a 4 KiB-aligned window of a larger Vec.
    let mut raw = vec![0u8; (1 << 20) + 4096];
    let shift = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[shift..shift + (1 << 20)];
    let mut off = 0usize;
    while off < want.len() {
        let n = file.read_at(buf, off as u64).expect("O_DIRECT read");
        assert!(n > 0, "early EOF at {off}");
        assert!(buf[..n] == want[off..off + n], "bytes differ at {off}");
        off += n;
    }
    drop(file);
    m.unmount();
}

#[test]
fn loading_a_model_sweeps_the_whole_file_into_the_cache_once() {
    let server = LocalServer::start(BUCKET);
    let (source, header) = seed_model(&server, "m/checkpoints/s.safetensors", 64 * MIB, 11);
    let size = std::fs::metadata(&source).expect("stat").len();
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    server.server.reset_stats();
    let path = m.join("checkpoints/s.safetensors");
    let file = std::fs::File::open(&path).expect("open");
    common::scan_header(&path);
    // 8 MiB of consecutive tensors from the middle of the data: the model is being loaded.
    let mut buf = vec![0u8; 1 << 20];
    let middle = header.data_start + header.data_len() / 2;
    for i in 0..8u64 {
        file.read_exact_at(&mut buf, middle + i * MIB)
            .expect("read tensors");
    }
    assert!(
        eventually(Duration::from_secs(60), || server.server.stats().bytes_sent
            >= size),
        "the rest of the file was not fetched: {} of {size} bytes",
        server.server.stats().bytes_sent
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.server.stats().bytes_sent,
        size,
        "each block fetched once"
    );
    drop(file);
    m.unmount();
    server.server.reset_stats();
    let mut again = mount(&server, Some(cache.path()));
    let got = std::fs::read(again.join("checkpoints/s.safetensors")).expect("read");
    assert!(got == std::fs::read(&source).expect("source"));
    server.assert_no_gets("everything came from the cache");
    again.unmount();
}

#[test]
fn random_small_reads_of_a_model_fetch_only_their_blocks() {
    let server = LocalServer::start(BUCKET);
    let (source, header) = seed_model(&server, "m/checkpoints/r.safetensors", 128 * MIB, 12);
    let cache = tempfile::tempdir().expect("cache");
    let mut m = mount(&server, Some(cache.path()));
    let path = m.join("checkpoints/r.safetensors");
    server.server.reset_stats();
    let file = std::fs::File::open(&path).expect("open");
    let src = std::fs::File::open(&source).expect("source");
    let reads = 40u64;
    let span = header.data_len() - 65536;
    for i in 0..reads {
        let off = header.data_start + (i * 7_919_993) % span;
        let (mut got, mut want) = (vec![0u8; 65536], vec![0u8; 65536]);
        file.read_exact_at(&mut got, off).expect("read");
        src.read_exact_at(&mut want, off).expect("source");
        assert!(got == want, "bytes differ at {off}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = server.server.stats().bytes_sent;
    assert!(
        sent <= (2 * reads + 1) * MIB,
        "{reads} random 64 KiB reads pulled {sent} bytes of a {} byte file",
        header.file_len()
    );
    drop(file);
    m.unmount();
}

#[test]
fn warm_fills_the_cache_from_globs_and_a_workflow() {
    let server = LocalServer::start(BUCKET);
    let (ckpt, _) = seed_model(&server, "m/checkpoints/sdxl.safetensors", 24 * MIB, 21);
    let (lora, _) = seed_model(&server, "m/loras/ink.safetensors", 6 * MIB, 22);
    seed_model(&server, "m/loras/unused.safetensors", 6 * MIB, 23);
    let (vae, _) = seed_model(&server, "m/vae/v.safetensors", 4 * MIB, 24);
    let dir = tempfile::tempdir().expect("tmp");
    let workflow = dir.path().join("wf.json");
    std::fs::write(
        &workflow,
        r#"{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "ink.safetensors", "model": ["1", 0]}}}"#,
    )
    .expect("workflow");
    let cache = dir.path().join("cache");
    let mut cmd = std::process::Command::new(common::mount::modelfs_bin());
    common::mount::s3_env(&mut cmd, &server.endpoint);
    let out = cmd
        .args(["warm", "s3://models/m", "vae/*.safetensors", "--workflow"])
        .arg(&workflow)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--cache-size", "4GiB"])
        .args(common::mount::endpoint_args(&server.endpoint))
        .output()
        .expect("modelfs warm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("warmed 3 files"), "{stdout}");

    server.server.reset_stats();
    let mut m = mount(&server, Some(&cache));
    for (rel, source) in [
        ("checkpoints/sdxl.safetensors", &ckpt),
        ("loras/ink.safetensors", &lora),
        ("vae/v.safetensors", &vae),
    ] {
        assert!(std::fs::read(m.join(rel)).expect("read") == std::fs::read(source).expect("src"));
    }
    server.assert_no_gets("warmed files need no GET");
    m.unmount();
}

#[test]
fn a_scan_of_headers_another_mount_cached_asks_for_its_read_proofs_ahead() {
    let server = LocalServer::start(BUCKET);
    let files = 12;
    seed_loras(&server, files, 3 * MIB, 60);
    let cache = tempfile::tempdir().expect("cache");
    // Another volume scanned the folder: the headers are in the shared disk tier.
    let mut other = mount(&server, Some(cache.path()));
    for i in 0..files {
        common::scan_header(&other.join(&lora(i)));
    }
    other.unmount();
    // A new mount has proven nothing: each file needs a HeadObject of its own before it
    // opens, and the scan ahead asks for them, all at once, as it learns the headers.
    let mut m = mount(&server, Some(cache.path()));
    server.server.reset_stats();
    common::scan_header(&m.join(&lora(0)));
    common::scan_header(&m.join(&lora(1)));
    assert!(
        eventually(Duration::from_secs(20), || {
            server.server.stats().head_object >= files
        }),
        "the scan ahead did not ask for the read proofs ({} HEADs)",
        server.server.stats().head_object
    );
    let heads = server.server.stats().head_object;
    for i in 2..files {
        assert!(common::scan_header(&m.join(&lora(i))) > 1);
    }
    assert_eq!(
        server.server.stats().head_object,
        heads,
        "the scan's opens found their proofs"
    );
    m.unmount();
}
