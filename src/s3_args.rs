//! The S3 connection flags shared by `mount` and `warm`.

use std::time::Duration;

use modelfs_fs::store::S3Config;
use modelfs_fs::units::parse_duration;

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
    /// A request whose response headers do not arrive within this long (connecting
    /// included) is abandoned and tried again; against an endpoint that never answers, a
    /// request fails after 3 attempts (3 × this + 3 s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,
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
            first_byte_timeout: self.first_byte_timeout,
            credentials: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s3: S3Args,
    }

    #[test]
    fn the_first_byte_timeout_defaults_to_the_stores_default_and_can_be_set() {
        let default = Cli::parse_from(["modelfs"]).s3.config("b");
        assert_eq!(
            default.first_byte_timeout,
            S3Config::DEFAULT_FIRST_BYTE_TIMEOUT
        );
        assert_eq!(default.max_wait_without_answer(), Duration::from_secs(18));
        let set = Cli::parse_from(["modelfs", "--first-byte-timeout", "500ms"]).s3;
        assert_eq!(
            set.config("b").first_byte_timeout,
            Duration::from_millis(500)
        );
    }
}
