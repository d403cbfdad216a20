//! The flags that describe one volume: its bucket's endpoint, how long metadata is trusted,
//! and how its files look. `modelfs mount` takes them on its command line; `modelfs mounter`
//! takes them per volume from the plugin, where node-wide flags (caches, logs) are refused.

use std::sync::Arc;
use std::time::Duration;

use modelfs_fs::fuse::Ownership;
use modelfs_fs::mount::check_bucket;
use modelfs_fs::store::{ProvingStore, ReplaceableCredentials, S3Config, S3Store};
use modelfs_fs::units::{parse_duration, parse_mode};
use modelfs_fs::S3Location;

use crate::s3_args::S3Args;

/// One volume's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// How long listings and attributes are trusted before S3 is asked again (new uploads
    /// appear, deleted objects disappear and new versions are opened after this).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub metadata_ttl: Duration,
    /// A GetObject body that sends nothing for this long is abandoned and the read tried
    /// again (raise it for very slow links).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Owner uid of every file (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Owner gid of every file (default: the mounting user's group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files.
    #[arg(long, default_value = "0444", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories.
    #[arg(long, default_value = "0555", value_parser = parse_mode)]
    pub dir_mode: u16,
}

impl VolumeArgs {
    /// Owner and permission bits of every node, defaulting to this process's user.
    pub fn ownership(&self) -> Ownership {
        Ownership {
            // SAFETY: geteuid/getegid have no preconditions.
            uid: self.uid.unwrap_or_else(|| unsafe { libc::geteuid() }),
            gid: self.gid.unwrap_or_else(|| unsafe { libc::getegid() }),
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
        }
    }

    /// Connects to the volume's bucket and lists one page of `location` to prove it exists
    /// and the credentials work: `credentials` when given (a pod's), the standard chain
    /// otherwise. The store remembers, for the metadata TTL, which versions these credentials
    /// were allowed to read: bytes from the shared tiers reach the volume only for those.
    pub async fn connect(
        &self,
        location: &S3Location,
        credentials: Option<ReplaceableCredentials>,
    ) -> anyhow::Result<Arc<ProvingStore>> {
        let config = S3Config {
            credentials,
            ..self.s3.config(&location.bucket)
        };
        let s3 = S3Store::connect(&config)
            .await
            .with_stall_timeout(self.stall_timeout);
        let store = Arc::new(ProvingStore::new(Arc::new(s3), self.metadata_ttl));
        check_bucket(store.as_ref(), location).await?;
        Ok(store)
    }
}
