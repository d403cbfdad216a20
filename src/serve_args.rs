//! The flags of a process that serves model files, `modelfs mount` for one volume and
//! `modelfs mounter` for every volume of a node, and the pieces they configure: the memory
//! budget, the disk cache and its placement, passthrough, read-ahead and metrics.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use modelfs_fs::cache::{CacheSize, DiskCache, DiskCacheConfig};
use modelfs_fs::read::ReadConfig;
use modelfs_fs::session::WarmLimit;
use modelfs_fs::units::parse_size;

/// The serving flags shared by `modelfs mount` and `modelfs mounter`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Memory budget for block data: cached blocks plus downloads in flight (of all volumes
    /// together, for the mounter).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub memory_cache_size: u64,
    /// Directory of the persistent disk cache, shared by every modelfs process and volume on
    /// the node (e.g. the instance store). Without it, only the memory cache is used. It must
    /// be owned by modelfs's user and writable by no one else, and every directory above it
    /// changeable only by root or that user.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Disk cache limit: bytes (`50GiB`), a share of the disk (`80%`), or `free:N%` to grow
    /// while N% of the disk stays free.
    #[arg(long, default_value = "free:10%", overrides_with = "cache_size")]
    pub cache_size: CacheSize,
    #[command(flatten)]
    pub placement: crate::cache_placement::CachePlacementArgs,
    /// Never serve reads by FUSE passthrough (by default, complete disk-cache entries are
    /// read by the kernel directly when it supports passthrough and we have CAP_SYS_ADMIN).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Most bytes of a complete cached file read into the page cache ahead of the reader
    /// when it is opened for loading (passthrough, 64 MiB or more, still open after 30 ms),
    /// and never more than half of the memory available; 0 disables it. Default: half of
    /// `MemAvailable` at the time, or of the cgroup's memory limit where that is lower.
    #[arg(long, value_parser = parse_size)]
    pub warm_read_ahead: Option<u64>,
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9464`): S3 requests and
    /// latency, cache tiers, prefetching, FUSE requests and latency.
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

impl ServeArgs {
    /// Refuses a `--cache-dir` on a filesystem that `--cache-not-on` keeps it off.
    pub fn check_cache_placement(&self) -> anyhow::Result<()> {
        crate::cache_placement::check(self.cache_dir.as_deref(), &self.placement.cache_not_on)
    }

    /// The disk cache at `--cache-dir`, if one is configured.
    pub fn open_disk_cache(&self) -> anyhow::Result<Option<Arc<DiskCache>>> {
        let Some(dir) = &self.cache_dir else {
            return Ok(None);
        };
        let cache = DiskCache::open(&DiskCacheConfig {
            dir: dir.clone(),
            size: self.cache_size,
        })
        .with_context(|| format!("cannot use cache directory {}", dir.display()))?;
        Ok(Some(cache))
    }

    /// The block reader's configuration: the memory budget, the rest as by default.
    pub fn read_config(&self) -> ReadConfig {
        ReadConfig {
            memory_cache_bytes: self.memory_cache_size,
            ..ReadConfig::default()
        }
    }

    /// The read-ahead bound of `--warm-read-ahead`: the flag's bytes, else the default share.
    pub fn warm_limit(&self) -> WarmLimit {
        self.warm_read_ahead
            .map_or(WarmLimit::Auto, WarmLimit::Bytes)
    }

    /// The listener of `--metrics-addr`, bound now so that a taken address fails the start.
    pub fn bind_metrics(&self) -> anyhow::Result<Option<std::net::TcpListener>> {
        self.metrics_addr
            .as_deref()
            .map(crate::metrics_server::bind)
            .transpose()
    }
}
