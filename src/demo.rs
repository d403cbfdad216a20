//! `modelfs demo`: the whole product on one machine. Starts the project's local S3 endpoint on
//! loopback, fills it with a generated ComfyUI-like models tree (real safetensors files),
//! mounts it with `modelfs mount` exactly as a user would, scans it the way ComfyUI does
//! (walk + read every safetensors header), loads the checkpoint tensor by tensor, checks every
//! byte against the source, prints what happened, and unmounts.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use modelfs_s3local::models::{parse_safetensors_header, seed_comfy_tree};
use modelfs_s3local::{LocalS3, LocalS3Config};

use modelfs_fs::units::parse_size;

const BUCKET: &str = "models";
const PREFIX: &str = "ComfyUI/models/";
const MIB: f64 = (1 << 20) as f64;

/// Arguments of `modelfs demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of the generated checkpoint.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    checkpoint_size: u64,
    /// Working directory for the S3 data and the mountpoint (default: a new temporary one,
    /// removed afterwards).
    #[arg(long)]
    workdir: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let workdir = match &args.workdir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile_dir()?;
            temp.0.clone()
        }
    };
    let data_dir = workdir.join("s3");
    let mountpoint = workdir.join("ComfyUI-models");
    std::fs::create_dir_all(&data_dir)?;
    std::fs::create_dir_all(&mountpoint)?;

    println!("modelfs demo — everything runs on this machine, nothing leaves loopback\n");
    let server = LocalS3::start(LocalS3Config::new(&data_dir)).context("start local S3")?;
    println!(
        "1. local S3 endpoint (s3s, file-backed) at {}",
        server.endpoint_url()
    );
    let started = Instant::now();
    server
        .store()
        .create_bucket(BUCKET)
        .context("create the bucket")?;
    let objects = seed_comfy_tree(server.store(), BUCKET, PREFIX, args.checkpoint_size)
        .context("generate the models tree")?;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    println!(
        "2. generated {} objects, {:.0} MiB, under s3://{BUCKET}/{PREFIX} in {:.1} s",
        objects.len(),
        total as f64 / MIB,
        started.elapsed().as_secs_f64()
    );

    let log = workdir.join("modelfs.log");
    let started = Instant::now();
    let status = Command::new(std::env::current_exe()?)
        .env("AWS_ACCESS_KEY_ID", server.access_key())
        .env("AWS_SECRET_ACCESS_KEY", server.secret_key())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .arg("mount")
        .arg(format!("s3://{BUCKET}/{PREFIX}"))
        .arg(&mountpoint)
        .args(["--endpoint-url", &server.endpoint_url()])
        .args(["--region", server.region(), "--force-path-style"])
        .arg("--log-file")
        .arg(&log)
        .status()
        .context("run modelfs mount")?;
    if !status.success() {
        bail!("modelfs mount failed ({status}); see {}", log.display());
    }
    println!(
        "3. mounted at {} in {:.2} s (modelfs mount, background mode)",
        mountpoint.display(),
        started.elapsed().as_secs_f64()
    );
    server.reset_stats();

    let result = exercise(&mountpoint, &server);
    let unmounted = crate::unmount_cmd::unmount(&mountpoint, false);
    let report = result?;
    unmounted?;
    wait_unmounted(&mountpoint)?;
    println!("{report}");
    println!("6. unmounted cleanly; log at {}", log.display());
    Ok(())
}

fn exercise(mountpoint: &Path, server: &LocalS3) -> anyhow::Result<String> {
    // ComfyUI start-up: walk every model folder, then read every safetensors header.
    let started = Instant::now();
    let files = walk(mountpoint)?;
    let walk_time = started.elapsed();
    let started = Instant::now();
    let mut tensors = 0;
    for file in files.iter().filter(|f| is_safetensors(f)) {
        tensors += read_header(file)?.0.tensors.len();
    }
    let scan_time = started.elapsed();
    let after_scan = server.stats();
    println!(
        "4. ComfyUI-style scan: walked {} files in {:.2} s; read {} safetensors headers \
         ({} tensors) in {:.2} s",
        files.len(),
        walk_time.as_secs_f64(),
        files.iter().filter(|f| is_safetensors(f)).count(),
        tensors,
        scan_time.as_secs_f64()
    );

    // Load the checkpoint: header, then every tensor, compared with the source bytes.
    let checkpoint = files
        .iter()
        .filter(|f| f.starts_with(mountpoint.join("checkpoints")) && is_safetensors(f))
        .max_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .context("no checkpoint in the tree")?;
    let rel = checkpoint
        .strip_prefix(mountpoint)?
        .to_string_lossy()
        .to_string();
    let source = server
        .store()
        .data_path(BUCKET, &format!("{PREFIX}{rel}"))
        .context("source object missing")?;
    let source = std::fs::File::open(source)?;
    let started = Instant::now();
    let (header, data_start) = read_header(checkpoint)?;
    let file = std::fs::File::open(checkpoint)?;
    let mut loaded = 0u64;
    let mut mismatches = 0u64;
    let mut buf = Vec::new();
    let mut want = Vec::new();
    let mut by_name = header.tensors.clone();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for tensor in &by_name {
        let (begin, end) = tensor.data_offsets;
        let len = (end - begin) as usize;
        buf.resize(len, 0);
        want.resize(len, 0);
        file.read_exact_at(&mut buf, data_start + begin)
            .with_context(|| format!("read tensor {}", tensor.name))?;
        source.read_exact_at(&mut want, data_start + begin)?;
        if buf != want {
            mismatches += 1;
        }
        loaded += len as u64;
    }
    let load_time = started.elapsed();
    let stats = server.stats();
    if mismatches > 0 {
        bail!("{mismatches} tensors differ from the source: this is a bug");
    }
    println!(
        "5. loaded {rel}: {} tensors, {:.0} MiB in {:.2} s ({:.0} MiB/s), every byte \
         checked against the source",
        by_name.len(),
        loaded as f64 / MIB,
        load_time.as_secs_f64(),
        loaded as f64 / MIB / load_time.as_secs_f64().max(1e-9)
    );
    Ok(format!(
        "   S3 requests: {} LIST, {} HEAD, {} GET ({:.0} MiB sent); scan alone: {} GET, \
         {:.1} MiB",
        stats.list_objects_v2,
        stats.head_object,
        stats.get_object,
        stats.bytes_sent as f64 / MIB,
        after_scan.get_object,
        after_scan.bytes_sent as f64 / MIB,
    ))
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// Reads the 8-byte length and the JSON header, as every safetensors loader does first.
fn read_header(path: &Path) -> anyhow::Result<(modelfs_s3local::models::Header, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        bail!("{}: header length {n} is absurd", path.display());
    }
    let mut buf = vec![0u8; 8 + n as usize];
    file.read_exact_at(&mut buf, 0)?;
    let header = parse_safetensors_header(&buf)
        .with_context(|| format!("parse header of {}", path.display()))?;
    let data_start = header.data_start;
    Ok((header, data_start))
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn wait_unmounted(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let canonical = path.canonicalize()?;
    while std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*canonical.to_string_lossy()))
    {
        if Instant::now() > deadline {
            bail!("{} is still mounted", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir().join(format!("modelfs-demo-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(TempDir(base))
}
