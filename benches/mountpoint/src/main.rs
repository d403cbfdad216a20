//! `mp-bench`: mountpoint-s3's engine (`mountpoint-s3-fs` 0.10, the library inside mount-s3 1.23)
//! wired the way `mount-s3` wires it, with mount-s3's defaults, for the modelfs benchmarks only.
//!
//! Usage: `mp-bench s3://BUCKET/PREFIX/ MNT --endpoint-url URL [--region R] [--cache DIR]`
//!
//! Always runs in the foreground (the bench harness owns the process and reads its peak RSS).
//! Defaults copied from mount-s3 1.23's CLI: read-only, 8 MiB parts, 16 FUSE threads, the default
//! prefetcher, metadata TTL "minimal" (1 min with `--cache`), memory limit 95% of RAM, default
//! throughput target (no IMDS here), path-style addressing, and with `--cache` a disk cache of
//! 1 MiB blocks, default size limit, wiped at mount and at exit like mount-s3's `--cache`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use mountpoint_s3_client::config::{AddressingStyle, S3ClientAuthConfig};
use mountpoint_s3_client::instance_info::InstanceInfo;
use mountpoint_s3_client::user_agent::UserAgent;
use mountpoint_s3_fs::data_cache::{
    CacheLimit, DataCacheConfig, DiskDataCacheConfig, ManagedCacheDir,
};
use mountpoint_s3_fs::fs::{CacheConfig, TimeToLive};
use mountpoint_s3_fs::fuse::config::{FuseOptions, FuseSessionConfig, MountPoint};
use mountpoint_s3_fs::memory::PagedPool;
use mountpoint_s3_fs::s3::config::{ClientConfig, PartConfig, Region, TargetThroughputSetting};
use mountpoint_s3_fs::s3::{S3Path, S3Personality};
use mountpoint_s3_fs::{
    MountpointConfig, Runtime, S3FilesystemConfig, Superblock, SuperblockConfig,
};

const PART_SIZE: usize = 8 * 1024 * 1024;
const CACHE_BLOCK_SIZE: u64 = 1024 * 1024;
const MAX_THREADS: usize = 16;

struct Args {
    uri: String,
    mount_point: PathBuf,
    endpoint_url: String,
    region: String,
    cache: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut endpoint_url = None;
    let mut region = "us-east-1".to_string();
    let mut cache = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--endpoint-url" => endpoint_url = it.next(),
            "--region" => region = it.next().ok_or_else(|| anyhow!("--region needs a value"))?,
            "--cache" => cache = it.next().map(PathBuf::from),
            "--force-path-style" | "--foreground" | "--read-only" => {}
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(a),
        }
    }
    if positional.len() != 2 {
        bail!(
            "usage: mp-bench s3://BUCKET/PREFIX/ MNT --endpoint-url URL [--region R] [--cache DIR]"
        );
    }
    Ok(Args {
        uri: positional[0].clone(),
        mount_point: PathBuf::from(&positional[1]),
        endpoint_url: endpoint_url.ok_or_else(|| anyhow!("--endpoint-url is required"))?,
        region,
        cache,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let _logging =
        mountpoint_s3_fs::logging::init_logging(mountpoint_s3_fs::logging::LoggingConfig {
            log_file: None,
            log_to_stdout: true,
            default_filter: "warn,awscrt=off,mountpoint_s3_fs::metrics=off".to_string(),
        })?;
    let _metrics = mountpoint_s3_fs::metrics::install(None).map_err(|e| anyhow!("metrics: {e}"))?;

    let s3_path = S3Path::parse_s3_uri(&args.uri).map_err(|e| anyhow!("bad S3 URI: {e}"))?;
    let instance_info = InstanceInfo::new();
    let client_config = ClientConfig {
        region: Region::new_user_specified(args.region.clone()),
        endpoint_url: Some(args.endpoint_url.clone()),
        addressing_style: AddressingStyle::Path,
        dual_stack: false,
        transfer_acceleration: false,
        auth_config: S3ClientAuthConfig::Default,
        requester_pays: false,
        expected_bucket_owner: None,
        throughput_target: TargetThroughputSetting::Default,
        bind: None,
        part_config: PartConfig::with_read_write_sizes(PART_SIZE, PART_SIZE),
        user_agent: UserAgent::new_with_instance_info(
            Some("mountpoint-s3/1.23.0-modelfs-bench".to_string()),
            &instance_info,
        ),
        tls_config: None,
    };

    let pool =
        PagedPool::new_with_candidate_sizes([CACHE_BLOCK_SIZE as usize, PART_SIZE, PART_SIZE]);
    pool.schedule_trim(Duration::from_secs(60));
    let client = client_config
        .create_client(pool.clone(), Some(&s3_path))
        .context("failed to create S3 client")?;
    let runtime = Runtime::new(client.event_loop_group());
    let personality = S3Personality::infer_from_bucket(&s3_path.bucket, &client.endpoint_config());

    let metadata_ttl = if args.cache.is_some() {
        TimeToLive::Duration(Duration::from_secs(60))
    } else {
        TimeToLive::Minimal
    };
    let mut fs_config = S3FilesystemConfig::default();
    fs_config.s3_personality = personality;
    fs_config.cache_config = CacheConfig::new(metadata_ttl);
    let default_mem =
        (mountpoint_s3_fs::mem_limiter::effective_total_memory() as f64 * 0.95) as u64;
    fs_config.mem_limit = mountpoint_s3_fs::mem_limiter::MINIMUM_MEM_LIMIT.max(default_mem);
    fs_config.upload_checksum_algorithm = None;

    let mut managed_cache_dir = None;
    let disk_cache_config = match &args.cache {
        Some(parent) => {
            let dir = ManagedCacheDir::new_from_parent_with_cache_key(parent, None, true)
                .context("failed to create cache directory")?;
            let config = DiskDataCacheConfig {
                cache_directory: dir.as_path_buf(),
                block_size: CACHE_BLOCK_SIZE,
                limit: CacheLimit::default(),
            };
            managed_cache_dir = Some(dir);
            Some(config)
        }
        None => None,
    };
    let data_cache_config = DataCacheConfig {
        disk_cache_config,
        express_cache_config: None,
    };

    let fuse_options = FuseOptions {
        read_only: true,
        auto_unmount: false,
        allow_root: false,
        allow_other: false,
        clone_fd: false,
    };
    let mount_point = MountPoint::new(&args.mount_point).context("failed to open mount point")?;
    let fuse_config = FuseSessionConfig::new(mount_point, fuse_options, MAX_THREADS)?;

    let superblock = Superblock::new(
        client.clone(),
        s3_path,
        SuperblockConfig {
            cache_config: fs_config.cache_config.clone(),
            s3_personality: fs_config.s3_personality,
        },
    );
    let mut session = MountpointConfig::new(fuse_config, fs_config, data_cache_config)
        .create_fuse_session(superblock, client, runtime, pool)?;
    if let Some(dir) = managed_cache_dir {
        session.run_on_close(Box::new(move || drop(dir)));
    }
    println!("mounted {}", args.mount_point.display());
    session.join().context("failed to join session")?;
    Ok(())
}
