//! The S3 connection flags shared by `mount` and `warm`.

use modelfs_fs::store::S3Config;

/// How to reach the bucket.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3-compatible endpoint URL (default: AWS S3 for the region).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// AWS region (default: from the environment, profile or instance metadata).
    #[arg(long)]
    pub region: Option<String>,
    /// Use path-style addressing (endpoint/bucket/key), as most S3-compatible servers need.
    #[arg(long)]
    pub force_path_style: bool,
    /// Send unsigned requests (public buckets); no credentials are looked up.
    #[arg(long)]
    pub no_sign_request: bool,
}

impl S3Args {
    /// The store configuration for `bucket`.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            force_path_style: self.force_path_style,
            no_sign_request: self.no_sign_request,
        }
    }
}
