//! `modelfs warm`: fill the shared disk cache with chosen models before pods need them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use modelfs_fs::cache::{CacheSize, DiskCache, DiskCacheConfig};
use modelfs_fs::mount::check_bucket;
use modelfs_fs::namespace::Namespace;
use modelfs_fs::read::{BlockReader, ReadConfig};
use modelfs_fs::store::{ObjectStore, S3Store};
use modelfs_fs::warm::{resolve, warm, workflow_models};
use modelfs_fs::S3Location;

use crate::s3_args::S3Args;

/// Arguments of `modelfs warm`.
#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// The models location: s3://BUCKET or s3://BUCKET/PREFIX (as mounted).
    source: String,
    /// Files to warm, relative to the models root: paths, directories or globs
    /// (`checkpoints/*.safetensors`, `loras`).
    paths: Vec<String>,
    /// Also warm every model a ComfyUI API-format workflow JSON names.
    #[arg(long)]
    workflow: Vec<PathBuf>,
    /// The disk cache directory the mounts use.
    #[arg(long)]
    cache_dir: PathBuf,
    /// Disk cache limit (as for `modelfs mount`).
    #[arg(long, default_value = "free:10%")]
    cache_size: CacheSize,
    /// Blocks downloaded in parallel.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(flatten)]
    s3: S3Args,
    /// Log filter.
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// Runs `modelfs warm`.
pub fn run(args: WarmArgs) -> anyhow::Result<()> {
    crate::logging::init(&args.log_level, None)?;
    let location: S3Location = args.source.parse()?;
    let mut patterns = args.paths.clone();
    let mut alternatives: Vec<Vec<String>> = Vec::new();
    for file in &args.workflow {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read workflow {}", file.display()))?;
        alternatives.extend(
            workflow_models(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        );
    }
    if patterns.is_empty() && alternatives.is_empty() {
        bail!("nothing to warm: give paths/globs or --workflow FILE");
    }
    let disk = DiskCache::open(&DiskCacheConfig {
        dir: args.cache_dir.clone(),
        size: args.cache_size,
    })
    .with_context(|| format!("cannot use cache directory {}", args.cache_dir.display()))?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store: Arc<dyn ObjectStore> =
            Arc::new(S3Store::connect(&args.s3.config(&location.bucket)).await);
        check_bucket(store.as_ref(), &location).await?;
        let namespace = Namespace::new(store.clone(), &location.prefix, Duration::from_secs(300));
        let reader = BlockReader::new(
            store,
            &location.bucket,
            ReadConfig {
                prefetch_concurrency: args.concurrency,
                ..ReadConfig::default()
            },
            Some(disk.clone()),
        );
        // A workflow's model may live in one of several folders: take the first that exists.
        for candidates in alternatives {
            let (found, _) = resolve(&namespace, &candidates).await?;
            match found.first() {
                Some(target) => patterns.push(target.path.clone()),
                None => eprintln!("warning: workflow model not found: {}", candidates.join(" or ")),
            }
        }
        let (targets, unmatched) = resolve(&namespace, &patterns).await?;
        for pattern in &unmatched {
            eprintln!("warning: nothing matches {pattern:?}");
        }
        let total: u64 = targets.iter().map(|t| t.size).sum();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let report = warm(&namespace, &reader, &targets, args.concurrency, &|n| bar.inc(n)).await?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "warmed {} files, {:.1} MiB in {:.1} s ({:.0} MiB/s) into {}",
            report.files,
            report.bytes as f64 / 1048576.0,
            secs,
            report.bytes as f64 / 1048576.0 / secs.max(1e-9),
            args.cache_dir.display()
        );
        println!("disk cache: {}", disk.stats.snapshot());
        if report.failed_blocks > 0 {
            bail!("{} blocks could not be downloaded; run again to retry", report.failed_blocks);
        }
        Ok(())
    })
}
